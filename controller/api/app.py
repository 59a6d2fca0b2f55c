"""The HTTP service behind `shotline serve`: the app, its middlewares and what it holds.

JSON everywhere under /api/v1, plus /openapi.json (generated from the route table and the contract), /metrics and
/health. Reads are open; writes and event streams need `Authorization: Bearer <token>`. A refusal is
`{"error", "field"}` with a 4xx status naming the offending value (`shots[1].seed`), never a traceback and never a
server path; a database that is down or out of connections is a 503 to retry. Rendering is the workers' job
(workers/runner.py): this app only reads and writes the PostgreSQL queue, whose NOTIFYs drive its event streams.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from aiohttp import web

from shotline_controller.api.keys import (
    BACKENDS,
    METRICS,
    NOTIFICATIONS,
    POOL,
    SETTINGS,
    STREAMS,
    SUPERVISORS,
    TOKEN,
    WEBHOOKS,
)
from shotline_controller.api.openapi import openapi_document
from shotline_controller.api.requests import DATABASE_TROUBLE, MAX_BODY_BYTES, ApiError, error_response
from shotline_controller.api.routes import ROUTES
from shotline_controller.contract import InputError
from shotline_controller.metrics import ControllerMetrics
from shotline_controller.parsing import stop_yaml_process
from shotline_controller.store.notifications import Notifications
from shotline_controller.webhook_policy import WebhookPolicy

log = logging.getLogger("shotline.service")
TOKEN_FILE = "service_token"


def load_or_create_token(state_dir: Path) -> tuple[str, bool]:
    """The service's bearer token: SHOTLINE_TOKEN, else state_dir/service_token, else a new one written there
    (mode 0600). Returns (token, created) so the CLI prints a new token once."""
    token = os.environ.get("SHOTLINE_TOKEN", "").strip()
    if token:
        return token, False
    path = Path(state_dir) / TOKEN_FILE
    if path.exists() and path.read_text().strip():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:  # O_EXCL: two services starting together agree on the first token written
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every failure becomes a JSON answer: no HTML error pages, no tracebacks, no 500 for a client's mistake."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.message, error.field, headers=error.headers)
    except InputError as error:
        return error_response(400, error.message, error.field)
    except DATABASE_TROUBLE as error:
        log.warning("%s %s: the database is unavailable: %s", request.method, request.path, error)
        return error_response(503, "the database is unavailable or busy: try again", headers={"Retry-After": "2"})
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 413:
            return error_response(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", "body")
        return error_response(error.status, error.reason, headers={
            k: v for k, v in error.headers.items() if k.lower() == "allow"})
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error: see the service log")


def auth_middleware(token: str):
    expected = token.encode()
    guarded = {(route.method, route.path) for route in ROUTES if route.token}

    @web.middleware
    async def check_token(request: web.Request, handler):
        resource = request.match_info.route.resource
        if resource is not None and (request.method, resource.canonical) in guarded:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return error_response(401, "missing or wrong bearer token" if header else
                                      "this route needs 'Authorization: Bearer <token>'",
                                      headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_token


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def create_app(pool, settings, token: str, *, backends: list = (), supervisors: dict | None = None,
               notifications: Notifications | None = None, metrics: ControllerMetrics | None = None,
               webhook_policy: WebhookPolicy | None = None, max_streams: int = 256) -> web.Application:
    """The service. `notifications`, `metrics` and `backends` are shared with the workers when the CLI runs both
    (workers/runner.py); without them the app starts a notification listener of its own."""
    if not token:
        raise ValueError("the service needs a token")
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware(token)])
    app[POOL] = pool
    app[SETTINGS] = settings
    app[TOKEN] = token
    app[BACKENDS] = list(backends)
    app[SUPERVISORS] = dict(supervisors or {})
    app[METRICS] = metrics or ControllerMetrics()
    app[WEBHOOKS] = webhook_policy or WebhookPolicy.from_environment()
    app[NOTIFICATIONS] = notifications or Notifications.for_pool(pool, max_streams=max_streams)
    if notifications is None:
        async def listen(app: web.Application):
            await app[NOTIFICATIONS].start()
            yield
            await app[NOTIFICATIONS].stop()
        app.cleanup_ctx.append(listen)
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.on_cleanup.append(_stop_parsing)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler or openapi)
    return app


async def _stop_parsing(app: web.Application) -> None:
    stop_yaml_process()


async def _end_streams(app: web.Application) -> None:
    """Open event streams end at shutdown, so the service stops in seconds, not when their batches finish."""
    for task in list(app[STREAMS]):
        task.cancel()
