"""The reference server of the warehouse HTTP API (the other side of
activities/http_warehouse.py), on the simulated warehouse's books: what a seller's system
implements, runnable, and the source of docs/warehouse-api.openapi.json.

    python -m devtools.reference_warehouse --port 8950 --catalog catalog/sample.csv
    python -m devtools.reference_warehouse --report-to http://127.0.0.1:8001/catalog/changes
    python -m devtools.reference_warehouse --openapi docs/warehouse-api.openapi.json

Its books are a `SimulatedWarehouse` of its own (a SQLite file, by default
$DATA_DIR/reference-warehouse.db, or a SQLAlchemy URL), with the simulated warehouse's pace,
refusals and carrier, read from the same settings (FULFILLMENT_STEP_SECONDS, DEFAULT_STOCK,
WAREHOUSE_DAMAGED_SKUS, CARRIER_REFUSED_POSTAL_CODES, CARRIER_DELIVERY_TIME). It checks every
request's signature against WAREHOUSE_HTTP_SECRET and its Idempotency-Key against the call, and
answers refusals in the error shape. With `--report-to`, it tells the connector the available
stock of every SKU whose stock moved (`POST /catalog/changes` on the ops listener, with OPS_TOKEN),
as a seller's ERP would.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from starlette.exceptions import HTTPException as StarletteHTTPException

from activities import warehouse_store as store
from activities.catalog import Catalog, read_catalog_file
from activities.http_warehouse import (
    IDEMPOTENCY_HEADER,
    INVOICE,
    LABEL,
    MAX_ANSWER_BYTES,
    MIN_SECRET_LENGTH,
    PACK,
    PICK,
    RELEASE,
    RESERVE,
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE_SECONDS,
    TIMESTAMP_HEADER,
    TRACK,
    VOID_LABEL,
    Endpoint,
    ReleaseAnswer,
    VoidAnswer,
    WarehouseErrorBody,
    idempotency_key,
    signature,
)
from activities.simulated_warehouse import Refusals, SimulatedWarehouse
from activities.warehouse import (
    Invoice,
    OutOfStock,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    Warehouse,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)
from config import get_settings
from logs import configure_logging

log = logging.getLogger("reference_warehouse")

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_FILE = ROOT / "docs" / "warehouse-api.openapi.json"
DEFAULT_PORT = 8950

# What the refusals of the contract answer; any other refusal (the simulated warehouse's
# DamagedItem, CarrierRefused) is a 422 under its own name.
REFUSAL_STATUS = {
    "OutOfStock": 409,
    "AlreadyInvoiced": 409,
    "OrderReleased": 409,
    "UnknownOrder": 404,
}

DESCRIPTION = f"""\
What the seller's system serves so that the connector (`WAREHOUSE=http`,
`activities/http_warehouse.py`) reserves, picks, packs, ships, invoices and tracks each order
through it. One call per step; every call may be retried and may be abandoned mid-way (the
marketplace canceled the order): see *Idempotency* and *Cancellation*. Generated from the
reference server, `devtools/reference_warehouse.py`; the guide is
`docs/plugging-in-your-warehouse.md`.

## Signature

Every call carries `{TIMESTAMP_HEADER}` (unix seconds) and
`{SIGNATURE_HEADER}: v1=<hex>`, the HMAC-SHA256, keyed by the secret both sides share
(`WAREHOUSE_HTTP_SECRET`), of

    {{timestamp}}.{{METHOD}}.{{path}}.{{body}}

where `path` is the request's path after the base URL's own (`/orders/SLR-1138342255790-01/picking`:
order ids are `[A-Za-z0-9._:-]`, nothing is escaped) and `body` the exact bytes received (empty
when there is none). Refuse, with 401, a signature that does not match (compare in constant
time) and a timestamp more than {SIGNATURE_TOLERANCE_SECONDS} seconds from your clock. The header
may list several signatures, comma-separated: accept the call if one matches (a secret being
rotated). Check it on the bytes received, before parsing them. The connector retries a 401 and a
403 (a secret or a clock to fix, not the order's fault), showing the error on each order
meanwhile.

## Idempotency

Every call carries `{IDEMPOTENCY_HEADER}: {{orderId}}:{{step}}` (steps: `reserve`, `pick`, `pack`,
`label`, `invoice`, `release`, `void-label`), the same on every retry of the step: a call
repeated must answer what the first did (the same reservation, label, invoice number) without
doing the work twice. Tracking, a read whose answer changes as the parcel moves, has a key per
poll: `{{orderId}}:track:{{timestamp}}`.

## Errors

A refusal is a 409 or a 422 with `{{"error": {{"code": "...", "message": "..."}}}}`:
`OutOfStock` (with `sku`, `requested`, `available`), `AlreadyInvoiced`, `OrderReleased` (409), or
a code of your own (`[A-Za-z][A-Za-z0-9]*`, e.g. `DamagedItem`: 422); or a 404 in that shape with
the code `UnknownOrder`. It ends the step: a reservation refused refuses the placement; a later
step refused cancels the order as the seller (compensated, the marketplace told), the code and
message in its `statusReason`.

The connector retries everything else that is not a success: 408, 425, 429, every 5xx, no whole
answer within `WAREHOUSE_HTTP_TIMEOUT_SECONDS` (from connecting to the last byte), and 202
Accepted (a step under way that takes long: it asks again, backing off up to 30 s); and, logging
an error that says what to fix, a 401 or a 403, a redirect (never followed), a 404 without
`UnknownOrder` (a base URL whose path is off), a 405, any other 4xx, and a 4xx not in the error
shape (a proxy's page): a configuration mistake is not the order's fault. A success whose body is
not what the call answers, or larger than {MAX_ANSWER_BYTES >> 20} MiB decoded (`gzip` is the
one encoding accepted), ends the step as a fault. The connector's messages quote a refusal's
code and message, never the text of another body.

## Cancellation

The connector may drop a call mid-way (a marketplace cancellation stops the running step). Finish
it or not, but the `DELETE` calls that follow (release the stock, void the label) must undo
whatever it did; a release of an order never reserved must make a later reservation of it reserve
nothing.
"""

# ── The API ─────────────────────────────────────────────────────────────────────────────────


class Refused(Exception):
    """An answer in the error shape: the status, the code, the message and any other fields."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def response(self) -> JSONResponse:
        """The JSON answer."""
        error = {"code": self.code, "message": self.message, **self.fields}
        return JSONResponse({"error": error}, status_code=self.status)


def _header(name: str, description: str) -> Any:
    return Header(alias=name, description=description)


async def check_signature(request: Request) -> None:
    """Refuse (401) a call whose signature does not match, or signed too long ago: on the bytes
    received, before anything reads them."""
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    signed = request.headers.get(SIGNATURE_HEADER)
    if not timestamp or not signed:
        raise Refused(
            401, "BadSignature", f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are both required"
        )
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        raise Refused(401, "BadSignature", f"{TIMESTAMP_HEADER} must be unix seconds")
    state: ReferenceState = request.app.state.reference
    skew = abs(state.clock() - int(timestamp))
    if skew > SIGNATURE_TOLERANCE_SECONDS:
        raise Refused(
            401,
            "StaleTimestamp",
            f"{TIMESTAMP_HEADER} is {skew:.0f} s from this server's clock "
            f"({SIGNATURE_TOLERANCE_SECONDS} at most): a replay, or a clock to set right",
        )
    # The path as sent (raw_path keeps any escapes), after where the app is mounted.
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").removeprefix(request.scope.get("root_path", ""))
    expected = signature(state.secret, timestamp, request.method, path, await request.body())
    # As bytes: compare_digest refuses str with other than ASCII, which a header may hold.
    given = [part.strip().encode("latin-1") for part in signed.split(",")]
    if not any(hmac.compare_digest(expected.encode(), part) for part in given):
        raise Refused(
            401,
            "BadSignature",
            "the signature does not match this call: is WAREHOUSE_HTTP_SECRET the same on both "
            "sides, and the body signed as sent?",
        )


class SignedRoute(APIRoute):
    """A route that checks the call's signature before FastAPI reads its body: a dependency
    would run after, and an unsigned body that is not JSON would be answered 422 with the
    parser's words instead of 401. FastAPI's handler reads the body again from the request's
    cache."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, behind the signature's check."""
        handler = super().get_route_handler()

        async def signed_first(request: Request) -> Response:
            await check_signature(request)
            return await handler(request)

        return signed_first


def signature_headers(
    timestamp: Annotated[
        str | None, _header(TIMESTAMP_HEADER, "When the call was signed, in unix seconds.")
    ] = None,
    signed: Annotated[
        str | None,
        _header(SIGNATURE_HEADER, "`v1=` and the hex HMAC-SHA256 (see *Signature*)."),
    ] = None,
) -> None:
    """The signature's headers, declared for the OpenAPI description: `SignedRoute` has checked
    them by the time this runs."""


OrderId = Annotated[
    str,
    PathParam(
        alias="orderId",
        pattern=r"^[A-Za-z0-9._:\-]{1,128}$",
        description="The seller's order id, `SLR-{marketplaceOrderId}`.",
        examples=["SLR-1138342255790-01"],
    ),
]


def idempotent(endpoint: Endpoint) -> Any:
    """The dependency that refuses (400) a call whose Idempotency-Key is not the step's."""

    async def check_key(
        request: Request,
        order_id: OrderId,
        key: Annotated[
            str | None,
            _header(
                IDEMPOTENCY_HEADER,
                "`{orderId}:{step}`, the same on every retry of the step; tracking: "
                "`{orderId}:track:{timestamp}` (see *Idempotency*).",
            ),
        ] = None,
    ) -> None:
        expected = idempotency_key(order_id, endpoint.step, request.headers.get(TIMESTAMP_HEADER))
        if key != expected:
            raise Refused(
                400,
                "IdempotencyKeyMismatch",
                f"{IDEMPOTENCY_HEADER} must be {expected!r} for this call, not {key!r}",
            )

    return Depends(check_key)


def _refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    said = {
        400: "The Idempotency-Key is not this call's (retried by the connector: not a refusal).",
        401: "The signature is missing, does not match, or is too old (retried by the connector).",
        404: "`UnknownOrder`: no reservation for this order. Any other 404 is no refusal: the "
        "connector retries it (its URL is off).",
        409: "A refusal of the contract (see its `code`).",
        422: "A refusal of the seller's own (`DamagedItem`, `CarrierRefused`...), or a body that "
        "is not what the call takes (`InvalidRequest`).",
        503: "The warehouse cannot answer now: retried.",
    }
    # Every call may meet a 422 (FastAPI's own schema for it, replaced by the error shape).
    return {
        status: {"model": WarehouseErrorBody, "description": said[status]}
        for status in sorted({400, 401, 422, 503, *statuses})
    }


router = APIRouter(
    prefix="/orders",
    tags=["orders"],
    route_class=SignedRoute,
    dependencies=[Depends(signature_headers)],
)


def _warehouse(request: Request) -> Warehouse:
    state: ReferenceState = request.app.state.reference
    return state.warehouse


WarehouseDep = Annotated[Warehouse, Depends(_warehouse)]


def _the_order(order_id: str, order: WarehouseOrder) -> WarehouseOrder:
    if order.order_id != order_id:
        raise Refused(
            422, "OrderIdMismatch", f"the body is order {order.order_id}, the path {order_id}"
        )
    if any(line.quantity < 1 for line in order.lines):
        raise Refused(422, "InvalidRequest", "every line needs a quantity of at least 1")
    return order


def _stock_moved(request: Request) -> None:
    state: ReferenceState = request.app.state.reference
    if state.reporter is not None:
        state.reporter.poke()


@router.put(
    "/{orderId}/reservation",
    summary="Reserve the order's stock",
    response_description="The reservation (a repeat: the first one).",
    description="All lines or none. A repeat answers the first reservation; an order released "
    "before (even never reserved) is refused with `OrderReleased`.",
    dependencies=[idempotent(RESERVE)],
    responses=_refusals(409, 422),
)
async def reserve(
    request: Request, order_id: OrderId, order: WarehouseOrder, warehouse: WarehouseDep
) -> Reservation:
    """PUT /orders/{orderId}/reservation."""
    reservation = await warehouse.reserve(_the_order(order_id, order))
    _stock_moved(request)
    return reservation


@router.put(
    "/{orderId}/picking",
    response_description="Picked.",
    status_code=204,
    summary="Pick the order's items",
    dependencies=[idempotent(PICK)],
    responses=_refusals(404, 409, 422),
)
async def pick(order_id: OrderId, warehouse: WarehouseDep) -> Response:
    """PUT /orders/{orderId}/picking."""
    await warehouse.pick(order_id)
    return Response(status_code=204)


@router.put(
    "/{orderId}/packing",
    response_description="Packed.",
    status_code=204,
    summary="Pack the picked items",
    dependencies=[idempotent(PACK)],
    responses=_refusals(404, 409, 422),
)
async def pack(order_id: OrderId, warehouse: WarehouseDep) -> Response:
    """PUT /orders/{orderId}/packing."""
    await warehouse.pack(order_id)
    return Response(status_code=204)


@router.put(
    "/{orderId}/label",
    summary="Buy the carrier's label",
    response_description="The label.",
    description="A repeat answers the same label, even if it was voided since.",
    dependencies=[idempotent(LABEL)],
    responses=_refusals(404, 409, 422),
)
async def create_label(
    order_id: OrderId, order: WarehouseOrder, warehouse: WarehouseDep
) -> ShippingLabel:
    """PUT /orders/{orderId}/label."""
    return await warehouse.create_label(_the_order(order_id, order))


@router.put(
    "/{orderId}/invoice",
    response_description="The invoice.",
    summary="Issue the invoice: the point of no return",
    description="Commits the reserved stock as shipped. It races with the release: whichever "
    "commits first wins (`OrderReleased` here, `AlreadyInvoiced` there). A repeat answers the "
    "same invoice.",
    dependencies=[idempotent(INVOICE)],
    responses=_refusals(404, 409, 422),
)
async def issue_invoice(
    request: Request, order_id: OrderId, order: WarehouseOrder, warehouse: WarehouseDep
) -> Invoice:
    """PUT /orders/{orderId}/invoice."""
    invoice = await warehouse.issue_invoice(_the_order(order_id, order))
    _stock_moved(request)
    return invoice


@router.delete(
    "/{orderId}/reservation",
    summary="Release the reserved stock (a compensation)",
    response_description="Whether stock was released.",
    description="`released: false` when there was nothing left to release. An order never "
    "reserved is remembered as released: a reservation arriving later reserves nothing.",
    dependencies=[idempotent(RELEASE)],
    responses=_refusals(409),
)
async def release(request: Request, order_id: OrderId, warehouse: WarehouseDep) -> ReleaseAnswer:
    """DELETE /orders/{orderId}/reservation."""
    released = await warehouse.release(order_id)
    _stock_moved(request)
    return ReleaseAnswer(released=released)


@router.delete(
    "/{orderId}/label",
    summary="Void the label (a compensation)",
    response_description="Whether a label was voided.",
    description="`voided: false` when the order has no label, or it was voided already.",
    dependencies=[idempotent(VOID_LABEL)],
    responses=_refusals(),
)
async def void_label(order_id: OrderId, warehouse: WarehouseDep) -> VoidAnswer:
    """DELETE /orders/{orderId}/label."""
    return VoidAnswer(voided=await warehouse.void_label(order_id))


@router.post(
    "/{orderId}/tracking",
    response_description="Where the parcel is.",
    summary="Where the parcel is: its events, oldest first, and whether it is delivered",
    description="A read, asked every `TRACKING_POLL_INTERVAL` until delivered.",
    dependencies=[idempotent(TRACK)],
    responses=_refusals(404, 422),
)
async def track(order_id: OrderId, order: WarehouseOrder, warehouse: WarehouseDep) -> ParcelStatus:
    """POST /orders/{orderId}/tracking."""
    return await warehouse.track(_the_order(order_id, order))


# ── The app ─────────────────────────────────────────────────────────────────────────────────


class ReferenceState:
    """What the routes reach through `app.state.reference`."""

    def __init__(
        self,
        warehouse: Warehouse,
        secret: str,
        reporter: StockReporter | None,
        clock: Callable[[], float],
    ) -> None:
        self.warehouse = warehouse
        self.secret = secret
        self.reporter = reporter
        self.clock = clock


def _refusal(err: WarehouseError) -> Refused:
    code = type(err).__name__
    fields = {}
    if isinstance(err, OutOfStock):
        fields = {"sku": err.sku, "requested": err.requested, "available": err.available}
    return Refused(REFUSAL_STATUS.get(code, 422), code, str(err), **fields)


def _described_app(lifespan: Any = None) -> FastAPI:
    """The API with its routes and its description, no state: what the OpenAPI file is of."""
    app = FastAPI(
        title="Warehouse API",
        version="1",
        summary="What a seller's system serves for WAREHOUSE=http",
        description=DESCRIPTION,
        lifespan=lifespan,
        # One schema per model (an order line is the same read or written), operations named
        # after their functions (`reserve`, `pick`...): what a client generator names them.
        separate_input_output_schemas=False,
        generate_unique_id_function=lambda route: route.name,
    )
    app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for path in schema["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        # Optional in code, so that their absence is a 401 (or 400) in the error
                        # shape rather than a validation error; required all the same.
                        if parameter["in"] == "header":
                            parameter["required"] = True
                            parameter["schema"] = {"type": "string"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app(
    warehouse: Warehouse,
    secret: str,
    reporter: StockReporter | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The reference server on `warehouse`, checking signatures with `secret`; `reporter`, if
    given, runs as long as the app and is told when stock moved."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(reporter.run()) if reporter is not None else None
        if task is not None:
            # Said when it happens, not at shutdown: the server goes on serving without it.
            task.add_done_callback(_log_if_crashed)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app = _described_app(lifespan)
    app.state.reference = ReferenceState(warehouse, secret, reporter, clock)

    @app.exception_handler(Refused)
    async def refused(_: Request, err: Refused) -> JSONResponse:
        return err.response()

    @app.exception_handler(WarehouseError)
    async def warehouse_refused(_: Request, err: WarehouseError) -> JSONResponse:
        return _refusal(err).response()

    @app.exception_handler(WarehouseUnavailable)
    async def unavailable(_: Request, err: WarehouseUnavailable) -> JSONResponse:
        return Refused(503, "WarehouseUnavailable", str(err)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        return Refused(422, "InvalidRequest", message).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(err.status_code, "HttpError")
        message = str(err.detail)
        if err.status_code in (404, 405):
            # Not a refusal (the connector retries it): the URL it calls is off.
            message = f"this API has no {request.method} {request.url.path}"
        return Refused(err.status_code, code, message).response()

    return app


def _log_if_crashed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (crash := task.exception()) is not None:
        log.error(
            "the stock reporter stopped: no stock is reported to the connector any more",
            exc_info=crash,
        )


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI description, as docs/warehouse-api.openapi.json holds it."""
    return _described_app().openapi()


def openapi_text() -> str:
    """That description as the file's text."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


# ── Reporting stock to the connector ────────────────────────────────────────────────────────

# Movements that change a SKU's available units (a shipment moves reserved units only).
AVAILABLE_MOVES = ("restock", "writeoff", "reserve", "release")
# The most changes the connector takes in one call.
MAX_BATCH = 1000


class ReportFailed(Exception):
    """The connector did not take a batch of changes: sent again later."""


class StockReporter:
    """Tells the connector the available units of each SKU whose stock moved in these books, as
    absolute levels (`POST /catalog/changes`), as a seller's ERP reports to it.

    Read from the ledger: each SKU's last movement of its available units, and those units, in
    one snapshot; a SKU whose last movement is not the one reported last is reported, the change
    named after these books and that movement (`{prefix}-{books}-{ledger id}`). A name always
    comes with the same level, so a change sent twice (a lost answer, a restart, which reports
    every SKU again) is applied once: the connector skips the change ids it applied before. Per
    SKU rather than from a cursor over the ledger: on PostgreSQL, ids are handed out before
    their transactions commit, and a cursor would pass over one that commits late (a SKU's own
    movements are in order: each holds the SKU's stock row until it commits).
    """

    def __init__(
        self,
        store_url: URL,
        endpoint: str,
        ops_token: str = "",
        change_id_prefix: str = "reference-warehouse",
        every_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        """Report to `endpoint` (the connector's `.../catalog/changes`), with `ops_token` when
        set, when poked and every `every_seconds` (stock moved by another process: a catalog
        load)."""
        self.store_url = store_url
        self.endpoint = endpoint
        self.change_id_prefix = change_id_prefix
        self.every_seconds = every_seconds
        self._headers = {"Authorization": f"Bearer {ops_token}"} if ops_token else {}
        self._timeout = timeout_seconds
        # SKU -> the ledger id of the last movement reported (or refused for good).
        self._reported: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._last_problem = ""

    def poke(self) -> None:
        """Stock moved: report it now."""
        self._wake.set()

    async def run(self) -> None:
        """Report until cancelled; a batch not taken, or books that cannot be read, is tried
        again, backing off to 30 s. Nothing else ends it: a reporter gone, no stock would ever
        be reported again while the server goes on serving."""
        # No slower than it polls: a reporter told to report every 0.1 s retries as often.
        first_backoff = min(1.0, self.every_seconds)
        backoff = first_backoff
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
            while True:
                self._wake.clear()
                try:
                    await self.report(http)
                except Exception as err:
                    self._tell_problem(err)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if self._last_problem:
                    log.info("stock reported to %s again", self.endpoint)
                    self._last_problem = ""
                backoff = first_backoff
                try:
                    await asyncio.wait_for(self._wake.wait(), self.every_seconds)
                except TimeoutError:
                    pass

    def _tell_problem(self, err: Exception) -> None:
        """Log a problem once, until it changes or is over: the connector not taking a batch as a
        warning; anything else (the books unreadable: a database restarting, locked, missing)
        as an error, with its traceback."""
        problem = f"{type(err).__name__}: {err}"
        if problem == self._last_problem:
            return
        self._last_problem = problem
        if isinstance(err, ReportFailed):
            log.warning("stock not reported to %s yet: %s", self.endpoint, err)
        else:
            log.error(
                "stock not reported to %s yet: %s; tried again",
                self.endpoint,
                problem,
                exc_info=err,
            )

    async def report(self, http: httpx.AsyncClient) -> int:
        """Send what moved since the last report; how many changes were sent.

        Raises:
            ReportFailed: the connector did not take them (sent again by the next report).
        """
        books, levels = await asyncio.to_thread(self._levels)
        moved = [
            (sku, last_id, available)
            for sku, last_id, available in levels
            if self._reported.get(sku) != last_id
        ]
        prefix = f"{self.change_id_prefix}-{books}"
        for start in range(0, len(moved), MAX_BATCH):
            batch = moved[start : start + MAX_BATCH]
            await self._send(
                http,
                [
                    {"changeId": f"{prefix}-{last_id}", "sku": sku, "stock": level}
                    for sku, last_id, level in batch
                ],
            )
            self._reported.update((sku, last_id) for sku, last_id, _ in batch)
        return len(moved)

    def _levels(self) -> tuple[str, list[tuple[str, int, int]]]:
        """Which books these are (the digits of their first movement's time: books made again
        count their ledger ids from 1 again, and their changes must not take the names of the
        old ones, which the connector would skip or refuse), and (SKU, the ledger id of its last
        movement of available units, its available units) in the order they last moved, read in
        one snapshot."""
        ledger, stock = store.ledger, store.stock
        engine = store.engine_for(self.store_url)
        options: dict[str, Any] = {store.READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        last_moves = (
            select(ledger.c.sku, func.max(ledger.c.id).label("last_id"))
            .where(ledger.c.movement.in_(AVAILABLE_MOVES))
            .group_by(ledger.c.sku)
            .subquery()
        )
        with engine.connect().execution_options(**options) as connection:
            first_at = connection.execute(
                select(ledger.c.at).order_by(ledger.c.id).limit(1)
            ).scalar()
            rows = connection.execute(
                select(last_moves.c.sku, last_moves.c.last_id, stock.c.available)
                .join(stock, stock.c.sku == last_moves.c.sku)
                .order_by(last_moves.c.last_id)
            ).all()
        books = re.sub(r"\D", "", first_at or "")[:20]
        return books, [(row.sku, row.last_id, row.available) for row in rows]

    async def _send(self, http: httpx.AsyncClient, changes: list[dict[str, Any]]) -> None:
        """POST one batch. A batch the connector refuses (409, 422: one change it cannot take
        refuses the whole batch) is sent again change by change, and a change refused alone is
        logged and left: retrying it would refuse it again and hold every report behind it."""
        try:
            response = await http.post(
                self.endpoint, json={"changes": changes}, headers=self._headers
            )
        except httpx.HTTPError as err:
            raise ReportFailed(f"{type(err).__name__}: {err}") from None
        if response.is_success:
            return
        if response.status_code not in (409, 422):  # the connector, not the changes
            raise ReportFailed(f"answered {response.status_code}: {response.text[:300]}")
        if len(changes) > 1:
            for change in changes:
                await self._send(http, [change])
            return
        log.error(
            "the connector refused change %s (SKU %s): %d %s",
            changes[0]["changeId"],
            changes[0]["sku"],
            response.status_code,
            response.text[:300],
        )


# ── The command ─────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    """Serve the reference warehouse until interrupted, or write its OpenAPI file."""
    try:
        settings = get_settings()
    except ValidationError as err:
        error = err.errors()[0]
        where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        print(f"reference warehouse: {where}{error['msg']}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m devtools.reference_warehouse",
        description="The reference server of the warehouse HTTP API (WAREHOUSE=http), on the "
        "simulated warehouse's books. Requests are checked against WAREHOUSE_HTTP_SECRET (the "
        "environment, or the file warehouse_http_secret in SECRETS_DIR). The pace, refusals and "
        "carrier are the simulated warehouse's settings (FULFILLMENT_STEP_SECONDS, "
        "WAREHOUSE_DAMAGED_SKUS, CARRIER_REFUSED_POSTAL_CODES, CARRIER_DELIVERY_TIME).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--store",
        default=str(settings.data_dir / "reference-warehouse.db"),
        help="its books: a SQLite file or a SQLAlchemy URL (default: %(default)s)",
    )
    parser.add_argument(
        "--catalog", type=Path, help="a catalog file (.csv, .json) loaded when its books have none"
    )
    parser.add_argument(
        "--default-stock",
        type=int,
        default=settings.default_stock,
        help="sell any SKU, starting with this stock (default: DEFAULT_STOCK, else only the "
        "catalog's)",
    )
    parser.add_argument(
        "--report-to",
        metavar="URL",
        help="report stock changes to this endpoint, the connector's ops listener's "
        "/catalog/changes (e.g. http://127.0.0.1:8001/catalog/changes)",
    )
    parser.add_argument(
        "--ops-token",
        default=settings.ops_token,
        help="the bearer token --report-to requires (default: OPS_TOKEN)",
    )
    parser.add_argument(
        "--openapi",
        type=Path,
        metavar="FILE",
        help=f"write the API's OpenAPI description to FILE and exit (the repository's is "
        f"{OPENAPI_FILE.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if args.openapi:
        args.openapi.write_text(openapi_text(), encoding="utf-8")
        print(f"reference warehouse: OpenAPI description written to {args.openapi}")
        return 0
    secret = settings.warehouse_http_secret
    if len(secret) < MIN_SECRET_LENGTH:
        print(
            f"reference warehouse: WAREHOUSE_HTTP_SECRET must be set, {MIN_SECRET_LENGTH} "
            "characters at least (the environment, or warehouse_http_secret in SECRETS_DIR)",
            file=sys.stderr,
        )
        return 2
    configure_logging()
    warehouse = SimulatedWarehouse(
        args.store,
        default_stock=args.default_stock,
        step_seconds=settings.fulfillment_step_seconds,
        refusals=Refusals.parse(
            settings.warehouse_damaged_skus, settings.carrier_refused_postal_codes
        ),
        delivery_seconds=settings.carrier_delivery_seconds,
    )
    if args.catalog:
        catalog = Catalog(args.store, args.default_stock)
        if catalog.count() == 0:
            report = catalog.load(read_catalog_file(args.catalog))
            log.info("catalog %s loaded: %s", args.catalog, report.lines()[0])
    reporter = (
        StockReporter(warehouse.url, args.report_to, args.ops_token) if args.report_to else None
    )
    log.info(
        "reference warehouse listening on http://%s:%d (books: %s%s)",
        args.host,
        args.port,
        warehouse.url.render_as_string(hide_password=True),
        f"; stock reported to {args.report_to}" if args.report_to else "",
    )
    app = create_app(warehouse, secret, reporter)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
