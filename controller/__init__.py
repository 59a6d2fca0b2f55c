"""Shotline controller: renders shot lists through ComfyUI servers and records them in PostgreSQL."""
