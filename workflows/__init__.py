"""Preset workflows (editor format here, API format in api/): package data of shotline_controller."""
