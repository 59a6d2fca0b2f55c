"""What a render farm's dashboards and alerts read: `/metrics` in Prometheus text format (prometheus-client).

Process metrics (claim latency, attempt durations, outcomes) are observed by the dispatcher as it works. Farm-wide
ones (shots per status, verdict pass rates) are read from PostgreSQL at scrape time, so every controller of a
farm reports the same numbers for them; backend gauges come from this controller's own backends.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shotline_controller.store.status import ShotStatus

FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ControllerMetrics:
    """One registry per controller process (tests run many apps in one process: no global registry)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.claim_seconds = Histogram("shotline_claim_duration_seconds", "Time to claim the next shot (one "
                                       "statement: lease + new attempt), per claim that found one",
                                       buckets=FAST, registry=registry)
        self.attempt_seconds = Histogram("shotline_attempt_duration_seconds", "Attempts from submission to their "
                                         "result, by outcome", ["outcome"], buckets=SLOW, registry=registry)
        self.outcomes = Counter("shotline_attempts", "Attempts this controller ended, by outcome", ["outcome"],
                                registry=registry)
        self.shots = Gauge("shotline_shots", "Shots in the database by status", ["status"], registry=registry)
        self.verdicts = Gauge("shotline_verdicts", "Verdicts recorded, by check", ["check"], registry=registry)
        self.verdicts_passed = Gauge("shotline_verdicts_passed", "Verdicts that passed, by check", ["check"],
                                     registry=registry)
        self.verdict_pass_rate = Gauge("shotline_verdict_pass_rate", "Share of verdicts that passed, by check",
                                       ["check"], registry=registry)
        self.backend_connected = Gauge("shotline_backend_connected", "1 when the websocket to the backend is up",
                                       ["backend"], registry=registry)
        self.backend_queue = Gauge("shotline_backend_queue_depth", "Prompts queued or running on the backend (as "
                                   "it last reported)", ["backend"], registry=registry)
        self.backend_restarts = Gauge("shotline_backend_restarts", "Times this controller restarted the backend "
                                      "it started", ["backend"], registry=registry)
        self.event_streams = Gauge("shotline_event_streams_open", "Open server-sent event streams",
                                   registry=registry)
        self.webhooks = Counter("shotline_webhook_deliveries", "Webhook deliveries by result", ["result"],
                                registry=registry)

    def observe_farm(self, gauges: dict) -> None:
        """Set the farm-wide gauges from AnalyticsStore.gauges()."""
        for status in ShotStatus:
            self.shots.labels(status.value).set(gauges["shots"].get(status.value, 0))
        for check, (total, passed) in gauges["verdicts"].items():
            self.verdicts.labels(check).set(total)
            self.verdicts_passed.labels(check).set(passed)
            self.verdict_pass_rate.labels(check).set(passed / total if total else 0.0)

    def observe_backend(self, url: str, connected: bool, queue: int | None, restarts: int) -> None:
        self.backend_connected.labels(url).set(1 if connected else 0)
        self.backend_queue.labels(url).set(queue or 0)
        self.backend_restarts.labels(url).set(restarts)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
