"""Prometheus metrics of the gateway (`GET /metrics`): HTTP requests, the queue, plans run.

Request counts and latencies come from an ASGI middleware; the queue length and state from
the status events; plans and their durations from the history items that appear after
the gateway started (fetched when `items_in_history` grows, at most once a second: with
back-to-back short plans a fetch per plan was a request to the history service each).
Each gateway replica counts for itself: aggregate with `max` across replicas, not `sum`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast, get_args

import msgspec
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from qserver.protocol.status import ManagerState
from services.gateway.bridge import Bridge

logger = logging.getLogger(__name__)

PLAN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
MANAGER_STATES: tuple[str, ...] = get_args(ManagerState)
# New history items are fetched at most this often; a scrape (every 15 s or so) sees them.
HISTORY_FETCH_EVERY_S = 1.0


class Metrics:
    """The gateway's metrics, in a registry of its own (no process-wide state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qserver_http_requests", "HTTP requests answered, by route and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "qserver_http_request_duration_seconds", "Time to answer an HTTP request, by route",
            ["method", "route"], registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "qserver_http_failures", "HTTP requests answered with a 5xx status (NATS or a "
            "service unavailable, internal errors), by route", ["route"], registry=r,
        )  # fmt: skip
        self.queue_length = Gauge("qserver_queue_length", "Items in the queue", registry=r)
        self.history_length = Gauge("qserver_history_length", "Items in the history", registry=r)
        self.manager_state = Gauge(
            "qserver_manager_state", "1 for the manager's current state", ["state"], registry=r
        )
        self.plans = Counter(
            "qserver_plans_finished", "Plans finished since the gateway started, by exit status",
            ["exit_status"], registry=r,
        )  # fmt: skip
        self.plan_duration = Histogram(
            "qserver_plan_duration_seconds", "Run time of finished plans (time_stop - time_start)",
            buckets=PLAN_BUCKETS, registry=r,
        )  # fmt: skip
        self._history_seen: int | None = None
        self._task: asyncio.Task[None] | None = None  # fetching new history items
        self._again = False  # the history grew while a fetch was under way
        self._fetched_at = -HISTORY_FETCH_EVERY_S  # time.monotonic() of the last fetch
        self._bridge: Bridge | None = None

    # ----- HTTP -----

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 500:
            self.failures.labels(route).inc()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Litestar middleware: time each HTTP request and count it by its route template."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            method = cast("HTTPScope", scope)["method"]
            status = 500  # an exception that escapes is answered with 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                # Unrouted paths share one label: each odd path would be a series of its own.
                route = str(scope.get("path_template") or "(no route)")
                self.observe_request(method, route, status, time.perf_counter() - started)

        return timed

    # ----- the queue, from NATS -----

    def observe_status(self, status: dict[str, Any]) -> bool:
        """Update the gauges; True if the history grew since the last status seen."""
        self.queue_length.set(status.get("items_in_queue", 0))
        history = int(status.get("items_in_history", 0))
        self.history_length.set(history)
        current = status.get("manager_state")
        for state in {*MANAGER_STATES, current} - {None}:
            self.manager_state.labels(state).set(1 if state == current else 0)
        if self._history_seen is None or history < self._history_seen:
            self._history_seen = history  # the start, or the history was cleared
            return False
        return history > self._history_seen

    def observe_history(self, items: list[dict[str, Any]], total: int) -> None:
        """Count the plans in `items`, the history items after the last ones counted."""
        for item in items:
            result = item.get("result") or {}
            self.plans.labels(str(result.get("exit_status", "unknown"))).inc()
            start, stop = result.get("time_start"), result.get("time_stop")
            if isinstance(start, int | float) and isinstance(stop, int | float) and stop >= start:
                self.plan_duration.observe(stop - start)
        self._history_seen = total

    def start(self, bridge: Bridge) -> None:
        """Take the status events the bridge gets (one subscription for the gateway's copy
        of the status and these gauges); fetch new history when it grows."""
        self._bridge = bridge
        bridge.status_listeners.append(self._on_status)

    async def _on_status(self, data: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            if not self.observe_status(msgspec.json.decode(data)):
                return
        # Not awaited here: the bridge hands its events over one after another.
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._fetch_history())
        else:
            self._again = True

    async def _fetch_history(self) -> None:
        """Count the new history items; again while statuses said it grew meanwhile. One
        fetch at a time, so that no item is counted twice, and one a second at most: the
        items of the plans that end meanwhile come in the next fetch together."""
        bridge = self._bridge
        while bridge is not None and bridge.client is not None:
            wait = self._fetched_at + HISTORY_FETCH_EVERY_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._fetched_at = time.monotonic()
            self._again = False
            seen = self._history_seen or 0
            try:
                reply = await bridge.client.request("history_get", {"offset": seen})
            except Exception as e:  # a service restarting: the next status retries
                logger.warning("metrics: history not read: %r", e)
                return
            if reply.get("success") and self._history_seen == seen:
                self.observe_history(reply.get("items", []), seen + len(reply["items"]))
            if not self._again:
                return

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_handler(
    metrics: Metrics, authorize: Callable[[Request[Any, Any, Any]], Awaitable[object]]
) -> HTTPRouteHandler:
    """`GET /metrics` in the Prometheus text format, for a key with `read:status`."""

    @get("/metrics", status_code=200, include_in_schema=False)
    async def scrape(request: Request[Any, Any, Any]) -> Response[bytes]:
        await authorize(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return scrape
