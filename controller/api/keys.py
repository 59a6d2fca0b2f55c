"""What the app holds (aiohttp AppKeys): one name per shared part, set in api/app.py."""
from __future__ import annotations

from aiohttp import web

from shotline_controller.metrics import ControllerMetrics
from shotline_controller.settings import Settings
from shotline_controller.store.notifications import Notifications
from shotline_controller.webhook_policy import WebhookPolicy

POOL = web.AppKey("pool", object)
SETTINGS = web.AppKey("settings", Settings)
TOKEN = web.AppKey("token", str)
BACKENDS = web.AppKey("backends", list)
SUPERVISORS = web.AppKey("supervisors", dict)
NOTIFICATIONS = web.AppKey("notifications", Notifications)
METRICS = web.AppKey("metrics", ControllerMetrics)
WEBHOOKS = web.AppKey("webhooks", WebhookPolicy)
STREAMS = web.AppKey("streams", set)        # the tasks serving open event streams, ended at shutdown
