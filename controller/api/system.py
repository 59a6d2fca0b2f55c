"""The service itself: liveness, its OpenAPI document, its ComfyUI backends, analytics and /metrics."""
from __future__ import annotations

import asyncio

from aiohttp import web

from shotline_controller.api.keys import BACKENDS, METRICS, POOL, SUPERVISORS
from shotline_controller.api.learning import learning_summary
from shotline_controller.api.requests import answer
from shotline_controller.comfy.client import ComfyUnavailable
from shotline_controller.contract import Analytics, Backends, Health
from shotline_controller.store.analytics import AnalyticsStore

BACKEND_STATS_TIMEOUT_SECONDS = 5.0


async def health(request: web.Request) -> web.Response:
    return await answer(Health, {"ok": True})


def _restarts(request: web.Request, url: str) -> int:
    supervisor = request.app[SUPERVISORS].get(url)
    return supervisor.restarts if supervisor is not None else 0


async def _backend_status(request: web.Request, backend) -> dict:
    status = {"base_url": backend.base_url, "connected": bool(backend.connected),
              "managed": backend.base_url in request.app[SUPERVISORS],
              "restarts": _restarts(request, backend.base_url),
              "queue_remaining": backend.queue_remaining, "loaded_checkpoint": backend.loaded_checkpoint}
    try:
        status["system_stats"] = await asyncio.wait_for(backend.system_stats(), BACKEND_STATS_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        status["error"] = f"system_stats: no answer in {BACKEND_STATS_TIMEOUT_SECONDS:g} s"
    except ComfyUnavailable as error:  # a backend down is a status to report, not a failure here
        status["error"] = f"system_stats: {error}"
    return status


async def list_backends(request: web.Request) -> web.Response:
    backends = request.app[BACKENDS]
    return await answer(Backends, {"backends": list(await asyncio.gather(
        *(_backend_status(request, backend) for backend in backends)))})


async def analytics(request: web.Request) -> web.Response:
    summary = await AnalyticsStore(request.app[POOL]).summary()
    return await answer(Analytics, {**summary, "learning": await learning_summary(request.app[POOL])})


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    registry.observe_farm(await AnalyticsStore(request.app[POOL]).gauges())
    for backend in request.app[BACKENDS]:
        registry.observe_backend(backend.base_url, bool(backend.connected), backend.queue_remaining,
                                 _restarts(request, backend.base_url))
    body, content_type = registry.render()
    return web.Response(body=body, headers={"Content-Type": content_type})
