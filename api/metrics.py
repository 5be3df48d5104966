"""The API's Prometheus metrics (prometheus-client): requests by route and status, and their
latency, counted on the VTEX-facing app and served at `GET /metrics` on the ops listener (one
process, one registry)."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("seller_api_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "seller_api_request_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Measured:
    """Pure ASGI middleware: count and time every request by its route's template (not its path:
    ids would explode the label set). Not `@app.middleware("http")`, whose task group and body
    re-streaming cost more than the fulfillment simulation itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)
            REQUESTS.labels(scope["method"], template, str(status)).inc()


def install_metrics(app: FastAPI) -> None:
    """Measure every request the app answers."""
    app.add_middleware(Measured)


router = APIRouter(tags=["Operations"], include_in_schema=False)


@router.get("/metrics")
async def metrics() -> Response:
    """Every metric of this process, in Prometheus's text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
