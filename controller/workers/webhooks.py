"""Webhooks: when a batch with a `webhook_url` finishes, POST {batch_id, counts, total}, signed.

`X-Shotline-Signature: sha256=<HMAC-SHA256 of the body>` with SHOTLINE_WEBHOOK_SECRET (else the service token).
WEBHOOK_TRIES tries with doubling backoff; delivery is at least once (a receiver dedupes by batch_id). Every
delivery goes through the webhook policy (webhook_policy.py): its resolver refuses non-public addresses, and
redirects are not followed.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging

import aiohttp

from shotline_controller.metrics import ControllerMetrics
from shotline_controller.store.shots import ShotStore
from shotline_controller.webhook_policy import CheckedResolver, WebhookPolicy, WebhookRefused

log = logging.getLogger("shotline.webhooks")

WEBHOOK_INTERVAL_SECONDS = 1.0
WEBHOOK_TRIES = 3
WEBHOOK_BACKOFF_SECONDS = 1.0     # doubled after each failed try
WEBHOOK_TIMEOUT_SECONDS = 10.0


def sign(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, store: ShotStore, secret: bytes, policy: WebhookPolicy, metrics: ControllerMetrics):
        self.store = store
        self.secret = secret
        self.policy = policy
        self.metrics = metrics

    async def deliver(self, session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", "X-Shotline-Signature": sign(body, self.secret)}
        delay = WEBHOOK_BACKOFF_SECONDS
        for attempt in range(1, WEBHOOK_TRIES + 1):
            try:
                await self.policy.check(url)  # again: what resolved at submission may resolve elsewhere now
                async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)) as answer:
                    if 200 <= answer.status < 300:
                        self.metrics.webhooks.labels("delivered").inc()
                        return True
                    problem = f"HTTP {answer.status}"
            except WebhookRefused as refused:
                log.warning("webhook %s refused: %s", url, refused)
                self.metrics.webhooks.labels("refused").inc()
                return False
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                problem = f"{type(error).__name__}: {error}"
            log.warning("webhook %s, try %d of %d: %s", url, attempt, WEBHOOK_TRIES, problem)
            if attempt < WEBHOOK_TRIES:
                await asyncio.sleep(delay)
                delay *= 2
        self.metrics.webhooks.labels("failed").inc()
        return False

    async def round(self, session: aiohttp.ClientSession) -> int:
        """Mark newly finished batches, then deliver the webhooks due; returns how many were due."""
        await self.store.mark_finished_batches()
        async with self.store.webhooks_due() as due:
            async def deliver(url: str, body: dict) -> None:
                data = json.dumps(body).encode()
                if not await self.deliver(session, url, data):
                    log.error("webhook to %s failed %d times: giving up on %s", url, WEBHOOK_TRIES, data.decode())
            await asyncio.gather(*(deliver(url, body) for _, url, body in due))
            return len(due)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.policy))
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    await self.round(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the database restarting must not end the loop
                    log.exception("webhook round failed")
                await asyncio.sleep(WEBHOOK_INTERVAL_SECONDS)
