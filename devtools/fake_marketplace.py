"""A fake VTEX marketplace that listens for the seller's callbacks and checks them against VTEX's
own OpenAPI file.

The seller calls the marketplace back under `marketplaceServicesEndpoint`, a URL that VTEX sends
with every order and that can carry a path and a query string
(`http://127.0.0.1:8900/api/oms?an=store`). So the routes below match the tail
`.../pvt/orders/{marketplaceOrderId}/...` under any prefix and keep the query string only as a
record.

Every call is recorded, valid or not, so that a test (or a person with curl on `GET /calls`) can
see exactly what the seller sent. Failures can be injected to exercise the seller's retries.

Run it by hand: `python -m devtools.fake_marketplace --port 8900`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from openapi_schema_validator import OAS30Validator

from devtools.serving import serve_asgi

logger = logging.getLogger(__name__)

_CONTRACT_DIR = Path(__file__).resolve().parent.parent / "contract"
SPEC_PATH = _CONTRACT_DIR / "vtex-external-seller-marketplace.openapi.json"

CallKind = Literal[
    "invoice",
    "tracking",
    "tracking_status",
    "cancel",
    "price_change",
    "inventory_change",
    "unknown",
]

# The change notifications (vtex-marketplace-change-notification.openapi.json): no body, 202.
NOTIFICATION_KINDS = ("price_change", "inventory_change")

# The request body schema of each marketplace endpoint, by call kind.
SCHEMA_BY_KIND: dict[str, str] = {
    "invoice": "requestSendInvoice",
    "tracking": "requestSendTracking",
    "tracking_status": "requestUpdateTrackingStatus",
    "cancel": "requestCancelOrderMarketplace",
}

# A change notification, under the account API's base (e.g. `/api`).
_NOTIFICATION_ROUTE = re.compile(
    r"/notificator/(?P<seller>[^/]+)/changenotification/(?P<sku>[^/]+)/(?P<kind>price|inventory)/?$"
)

# The tail of every marketplace route; whatever comes before it is the endpoint's own path.
_ROUTE = re.compile(
    r"/pvt/orders/(?P<order>[^/]+)/"
    r"(?:(?P<cancel>cancel)|invoice(?:/(?P<invoice>[^/]+)(?P<tracking>/tracking)?)?)/?$"
)


@dataclass
class RecordedCall:
    """One call the marketplace received, as it was received and as it was answered."""

    kind: CallKind
    marketplace_order_id: str | None
    # From the path; for an invoice (whose path has none), from its body.
    invoice_number: str | None
    method: str
    path: str
    query: str
    # Header names in lower case, as HTTP/2 and Starlette have them.
    headers: dict[str, str]
    # The parsed JSON body, or the raw text when it is not JSON.
    body: Any
    valid: bool
    errors: list[str]
    status: int
    received_at: datetime
    # A change notification's seller and SKU, from its path.
    seller_id: str | None = None
    sku_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The call as `GET /calls` shows it."""
        return {
            "kind": self.kind,
            "marketplaceOrderId": self.marketplace_order_id,
            "invoiceNumber": self.invoice_number,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "valid": self.valid,
            "errors": self.errors,
            "status": self.status,
            "receivedAt": self.received_at.isoformat(),
            "sellerId": self.seller_id,
            "skuId": self.sku_id,
        }


class FakeMarketplaceState:
    """What the fake marketplace has received, and how it should answer the next calls.

    Mutations happen without an `await` in between, so one event loop cannot interleave them; the
    lock is for a test that reads the state from another thread.
    """

    def __init__(self, delay_seconds: float = 0.0, journal: Path | None = None) -> None:
        """Start with no calls, no injected failures and the given answer delay.

        With a `journal`, every call is also appended to that file as one JSON line (the shape of
        `GET /calls`), so the record survives a restart: `GET /calls` then lists the journal,
        earlier runs' calls included.
        """
        # Waited before answering each marketplace call, e.g. to make the seller's client time out.
        self.delay_seconds = delay_seconds
        self.journal = journal
        self._calls: list[RecordedCall] = []
        self._failures: defaultdict[str, deque[int]] = defaultdict(deque)
        self._lock = threading.Lock()

    def fail_next(self, kind: str, times: int, status: int = 503) -> None:
        """Make the next `times` calls of `kind` answer `status` (after being recorded)."""
        kinds = sorted([*SCHEMA_BY_KIND, *NOTIFICATION_KINDS])
        if kind not in kinds:
            raise ValueError(f"unknown call kind {kind!r}; one of {kinds}")
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            self._failures[kind].extend([status] * times)

    def calls(
        self, *, kind: str | None = None, marketplace_order_id: str | None = None
    ) -> list[RecordedCall]:
        """The recorded calls, oldest first, optionally only those of a kind or an order."""
        with self._lock:
            calls = list(self._calls)
        return [
            call
            for call in calls
            if (kind is None or call.kind == kind)
            and (marketplace_order_id is None or call.marketplace_order_id == marketplace_order_id)
        ]

    async def wait_for_calls(
        self,
        count: int,
        *,
        kind: str | None = None,
        marketplace_order_id: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> list[RecordedCall]:
        """Wait until at least `count` matching calls were recorded, and return them all.

        Raises:
            TimeoutError: fewer calls arrived within `timeout_seconds`.
        """
        # Polling keeps the state free of event-loop objects, so it can be built anywhere.
        async with asyncio.timeout(timeout_seconds):
            while True:
                calls = self.calls(kind=kind, marketplace_order_id=marketplace_order_id)
                if len(calls) >= count:
                    return calls
                await asyncio.sleep(0.02)

    def journaled(self, marketplace_order_id: str | None = None) -> list[dict[str, Any]]:
        """Every call in the journal, this run's and earlier runs', as `GET /calls` shows them."""
        assert self.journal is not None
        if not self.journal.exists():
            return []
        with self._lock:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        calls = [json.loads(line) for line in lines if line.strip()]
        if marketplace_order_id is None:
            return calls
        return [call for call in calls if call["marketplaceOrderId"] == marketplace_order_id]

    def clear(self) -> None:
        """Forget the recorded calls and any pending injected failures."""
        with self._lock:
            self._calls.clear()
            self._failures.clear()

    def _take_failure(self, kind: str) -> int | None:
        with self._lock:
            pending = self._failures.get(kind)
            return pending.popleft() if pending else None

    def _record(self, call: RecordedCall) -> None:
        with self._lock:
            self._calls.append(call)
            if self.journal is not None:
                with self.journal.open("a", encoding="utf-8") as journal:
                    journal.write(json.dumps(call.to_json()) + "\n")


@lru_cache
def _validators() -> dict[str, OAS30Validator]:
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    # A root document with the spec's components, so that nested `$ref`s resolve.
    return {
        kind: OAS30Validator(
            {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        )
        for kind, name in SCHEMA_BY_KIND.items()
    }


def validate_body(kind: str, body: Any) -> list[str]:
    """The schema violations of a request body of that kind as readable lines; empty if valid."""
    # Every body of this API is a JSON object; requestSendTracking's schema forgets to say so.
    if not isinstance(body, dict):
        return [f"<body>: expected a JSON object, got {type(body).__name__}"]
    errors = sorted(_validators()[kind].iter_errors(body), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in errors]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _log_line(call: RecordedCall) -> str:
    target = call.path + (f"?{call.query}" if call.query else "")
    detail: str = call.kind
    if call.invoice_number:
        detail += f" {call.invoice_number}"
    detail += ", valid" if call.valid else f", invalid: {'; '.join(call.errors)}"
    return f"fake marketplace: {call.method} {target} -> {call.status} ({detail})"


def create_app(state: FakeMarketplaceState | None = None) -> FastAPI:
    """Build the fake marketplace app; `app.state.marketplace` is its `FakeMarketplaceState`."""
    state = state if state is not None else FakeMarketplaceState()
    _validators()  # Fail at start-up, not on the first call, if the OpenAPI file is missing.
    app = FastAPI(title="Fake VTEX marketplace", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.marketplace = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/calls")
    async def list_calls(marketplaceOrderId: str | None = None) -> list[dict[str, Any]]:
        calls = [call.to_json() for call in state.calls(marketplace_order_id=marketplaceOrderId)]
        return state.journaled(marketplaceOrderId) if state.journal else calls

    @app.delete("/calls", status_code=204)
    async def clear_calls() -> Response:
        state.clear()
        return Response(status_code=204)

    @app.post("/fail-next", status_code=204)
    async def fail_next(kind: str, times: int = 1, status: int = 503) -> Response:
        # The same failure injection as `state.fail_next`, for trying the seller's retries by hand.
        try:
            state.fail_next(kind, times, status)
        except ValueError as exc:
            return _error(400, "InvalidRequest", str(exc))
        return Response(status_code=204)

    @app.post("/{tail:path}")
    async def marketplace_call(request: Request) -> Response:
        return await _handle(state, request)

    return app


async def _handle(state: FakeMarketplaceState, request: Request) -> Response:
    received_at = datetime.now(UTC)
    # Match on the raw (still percent-encoded) path so that an encoded "/" in an id stays in it.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    match = _ROUTE.search(raw_path.decode("latin-1"))
    raw = await request.body()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", errors="replace")
        parsed = False
    else:
        parsed = True

    kind: CallKind = "unknown"
    order_id = invoice_number = injected = None
    notification = _NOTIFICATION_ROUTE.search(raw_path.decode("latin-1"))
    if notification is not None:
        return _notification(state, request, notification, raw, received_at)
    if match is None:
        errors = ["no marketplace route ends this path (.../pvt/orders/{marketplaceOrderId}/...)"]
        status = 404
    else:
        kind = "cancel" if match["cancel"] else "invoice"
        if match["invoice"]:
            kind = "tracking_status" if match["tracking"] else "tracking"
        order_id = unquote(match["order"])
        invoice_number = unquote(match["invoice"]) if match["invoice"] else None
        if kind == "invoice" and isinstance(body, dict):
            number = body.get("invoiceNumber")
            invoice_number = number if isinstance(number, str) else None
        content_type = request.headers.get("content-type", "")
        errors = []
        if content_type.split(";")[0].strip().lower() != "application/json":
            errors.append(f"Content-Type must be application/json, got {content_type!r}")
        errors += validate_body(kind, body) if parsed else [f"<body>: not JSON: {body[:200]!r}"]
        # An injected failure is used up by any call of its kind, valid or not, like a real outage.
        injected = state._take_failure(kind)
        status = injected or (400 if errors else 200)

    call = RecordedCall(
        kind=kind,
        marketplace_order_id=order_id,
        invoice_number=invoice_number,
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers=dict(request.headers),
        body=body,
        valid=not errors,
        errors=errors,
        status=status,
        received_at=received_at,
    )
    # Recorded before the delay, so a test sees a call its client gave up waiting for.
    state._record(call)
    logger.info(_log_line(call))
    if state.delay_seconds > 0:
        await asyncio.sleep(state.delay_seconds)

    if injected is not None:
        return _error(status, "InjectedFailure", f"fail_next({kind!r}) answered {status}")
    if match is None:
        return _error(404, "NotFound", errors[0])
    if errors:
        return _error(400, "InvalidRequest", "; ".join(errors))
    return JSONResponse(
        {"date": datetime.now(UTC).isoformat(), "orderId": order_id, "receipt": uuid.uuid4().hex}
    )


def _notification(
    state: FakeMarketplaceState,
    request: Request,
    match: re.Match[str],
    raw: bytes,
    received_at: datetime,
) -> Response:
    """A change notification: recorded, answered 202 with no body (after any injected
    failure)."""
    kind: CallKind = "price_change" if match["kind"] == "price" else "inventory_change"
    errors = []
    if raw.strip():
        errors.append(f"<body>: a change notification has no body, got {raw[:200]!r}")
    injected = state._take_failure(kind)
    status = injected or (400 if errors else 202)
    call = RecordedCall(
        kind=kind,
        marketplace_order_id=None,
        invoice_number=None,
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers=dict(request.headers),
        body=raw.decode("utf-8", errors="replace"),
        valid=not errors,
        errors=errors,
        status=status,
        received_at=received_at,
        seller_id=unquote(match["seller"]),
        sku_id=unquote(match["sku"]),
    )
    state._record(call)
    logger.info(_log_line(call) + f" SKU {call.sku_id}")
    if injected is not None:
        return _error(status, "InjectedFailure", f"fail_next({kind!r}) answered {status}")
    if errors:
        return _error(400, "InvalidRequest", "; ".join(errors))
    return Response(status_code=202)


@dataclass
class RunningFakeMarketplace:
    """A fake marketplace serving in the current event loop."""

    url: str
    state: FakeMarketplaceState
    app: FastAPI


@asynccontextmanager
async def serve_fake_marketplace(
    host: str = "127.0.0.1",
    port: int = 0,
    state: FakeMarketplaceState | None = None,
) -> AsyncIterator[RunningFakeMarketplace]:
    """Serve a fake marketplace in the running event loop until the block exits.

    Port 0 picks a free port; the socket is bound before serving so the URL is known at once.
    """
    state = state if state is not None else FakeMarketplaceState()
    app = create_app(state)
    async with serve_asgi(app, host, port, lifespan="off") as url:
        yield RunningFakeMarketplace(url=url, state=state, app=app)


def main(argv: list[str] | None = None) -> None:
    """Serve the fake marketplace until interrupted, one log line per call on stdout."""
    parser = argparse.ArgumentParser(description="A fake VTEX marketplace for the seller.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument(
        "--journal", type=Path, help="append every call to this JSON-lines file (kept across runs)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logger.info(
        "fake marketplace: listening on http://%s:%d (calls: GET /calls)", args.host, args.port
    )
    state = FakeMarketplaceState(journal=args.journal)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
