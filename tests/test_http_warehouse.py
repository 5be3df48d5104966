"""The warehouse over HTTP (WAREHOUSE=http): the adapter (activities/http_warehouse.py) against
the reference server (devtools/reference_warehouse.py), both real, on loopback.

Each method is one signed call with its Idempotency-Key; the server refuses what is not signed
right; every answer becomes what the contract says (a result, a refusal, WarehouseUnavailable
retried, a fault that ends the step); a call cancelled mid-way is undone by the release; the
server reports stock to the connector; the OpenAPI file is the server's; and an order placed,
dispatched and canceled through the real stack with WAREHOUSE=http is what it is with the
simulated warehouse.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from temporalio.testing import WorkflowEnvironment

from activities import warehouse_store as store
from activities.fulfillment import TRANSIENT_ERRORS
from activities.http_warehouse import (
    IDEMPOTENCY_HEADER,
    MAX_ANSWER_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HttpWarehouse,
    UnreadableAnswer,
    signature,
)
from activities.simulated_warehouse import Refusals, SimulatedWarehouse
from activities.warehouse import (
    AlreadyInvoiced,
    OrderReleased,
    OutOfStock,
    Reservation,
    UnknownOrder,
    Warehouse,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
    load_warehouse,
)
from activities.warehouse_kit.pytest_plugin import KitTarget, warehouse_kit_tests
from config import Settings
from devtools import reference_warehouse
from devtools.processes import free_ports
from devtools.reference_warehouse import OPENAPI_FILE, StockReporter, create_app, openapi_text
from devtools.serving import serve_asgi
from tests.stack import Stack, activity_events, new_order_id, placement_example, running_stack
from workflows.messages import OrderLine

pytest_plugins = ["activities.warehouse_kit.pytest_plugin"]

SECRET = "test-secret-0123456789abcdef"
DOC = Path(__file__).resolve().parent.parent / "docs" / "plugging-in-your-warehouse.md"


def an_order(order_id: str, *lines: tuple[str, int]) -> WarehouseOrder:
    return WarehouseOrder(
        order_id=order_id,
        marketplace_order_id=order_id.removeprefix("SLR-"),
        lines=[OrderLine(sku=sku, quantity=quantity, price=1000) for sku, quantity in lines],
        freight_value=500,
        shipping_address={"city": "Rio de Janeiro", "state": "RJ", "postalCode": "22250-040"},
    )


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    async with serve_asgi(app, port=free_ports(1)[0]) as url:
        yield url


class Recorded:
    """Every request an app received: method, path, headers, body."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.requests: list[tuple[str, str, Headers, bytes]] = []

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            body = await request.body()
            self.requests.append((request.method, request.url.path, request.headers, body))
            return await call_next(request)


@pytest.fixture
async def reference(tmp_path: Path) -> AsyncIterator[tuple[SimulatedWarehouse, Recorded, str]]:
    """The reference server on a warehouse of its own (10 of any SKU; `DAMAGED` is found
    damaged at pick), every request it gets recorded."""
    books = SimulatedWarehouse(
        tmp_path / "reference.db",
        default_stock=10,
        step_seconds=0,
        refusals=Refusals(damaged_skus=frozenset({"DAMAGED"})),
    )
    recorded = Recorded(create_app(books, SECRET))
    async with serving(recorded.app) as url:
        yield books, recorded, url


@asynccontextmanager
async def adapter(
    url: str, secret: str = SECRET, call_seconds: float = 5.0
) -> AsyncIterator[HttpWarehouse]:
    warehouse = HttpWarehouse(url, secret, timeout_seconds=call_seconds)
    keeps_the_protocol: Warehouse = warehouse  # mypy checks it, method by method
    assert keeps_the_protocol is warehouse
    try:
        yield warehouse
    finally:
        await warehouse.close()


async def levels(books: SimulatedWarehouse, sku: str) -> tuple[int, int, int]:
    level = await books.stock_level(sku)
    return level.available, level.reserved, level.shipped


# ── Each method, signed and keyed ───────────────────────────────────────────────────────────


async def test_each_method_is_one_signed_call_with_its_idempotency_key(
    reference: tuple[SimulatedWarehouse, Recorded, str],
) -> None:
    books, recorded, url = reference
    order = an_order("SLR-A1-01", ("1", 2), ("2", 1))
    async with adapter(url) as warehouse:
        reservation = await warehouse.reserve(order)
        assert await warehouse.reserve(order) == reservation  # a retry: the first answer
        assert await levels(books, "1") == (8, 2, 0)
        await warehouse.pick(order.order_id)
        await warehouse.pack(order.order_id)
        label = await warehouse.create_label(order)
        invoice = await warehouse.issue_invoice(order)
        parcel = await warehouse.track(order)
        released = await warehouse.release("SLR-NEVER-01")  # never reserved: nothing to release
        voided = await warehouse.void_label(order.order_id)

    assert reservation.lines == order.lines
    record = await books.order_record(order.order_id)
    assert record is not None
    assert set(record["steps"]) == {"picked", "packed"}
    assert (label.label_id, label.tracking_number) == (
        record["label"]["label_id"],
        record["label"]["tracking_number"],
    )
    assert (invoice.invoice_number, invoice.invoice_value) == ("NFe-000001", 3500)
    assert await levels(books, "1") == (8, 0, 2)
    assert [event.description for event in parcel.events] == ["Collected by Simulated Carrier"]
    assert (released, voided) == (False, True)

    calls = [
        (method, path, headers[IDEMPOTENCY_HEADER])
        for method, path, headers, _ in recorded.requests
    ]
    key = order.order_id
    timestamp = recorded.requests[-3][2][TIMESTAMP_HEADER]
    assert calls == [
        ("PUT", f"/orders/{key}/reservation", f"{key}:reserve"),
        ("PUT", f"/orders/{key}/reservation", f"{key}:reserve"),
        ("PUT", f"/orders/{key}/picking", f"{key}:pick"),
        ("PUT", f"/orders/{key}/packing", f"{key}:pack"),
        ("PUT", f"/orders/{key}/label", f"{key}:label"),
        ("PUT", f"/orders/{key}/invoice", f"{key}:invoice"),
        ("POST", f"/orders/{key}/tracking", f"{key}:track:{timestamp}"),
        ("DELETE", "/orders/SLR-NEVER-01/reservation", "SLR-NEVER-01:release"),
        ("DELETE", f"/orders/{key}/label", f"{key}:void-label"),
    ]
    for method, path, headers, body in recorded.requests:
        assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 5
        assert headers[SIGNATURE_HEADER] == signature(
            SECRET, headers[TIMESTAMP_HEADER], method, path, body
        )
    # The order travels as the contract's camelCase JSON; pick, pack and the DELETEs send none.
    bodies = [json.loads(body)["orderId"] if body else None for *_, body in recorded.requests]
    assert bodies == [key, key, None, None, key, key, key, None, None]


async def test_the_server_refuses_what_is_not_signed_right_and_the_adapter_retries_it(
    reference: tuple[SimulatedWarehouse, Recorded, str],
) -> None:
    books, _, url = reference
    path = "/orders/SLR-B1-01/reservation"
    body = an_order("SLR-B1-01", ("1", 1)).model_dump_json().encode()

    def signed(
        secret: str = SECRET,
        stamp: int | None = None,
        key: str = "SLR-B1-01:reserve",
        sent: bytes = body,
    ) -> dict[str, str]:
        timestamp = str(int(time.time()) if stamp is None else stamp)
        return {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, "PUT", path, sent),
            IDEMPOTENCY_HEADER: key,
            "Content-Type": "application/json",
        }

    async with httpx.AsyncClient(base_url=url) as http:
        cases: dict[str, tuple[Any, bytes, int, str]] = {
            "unsigned": ({"Content-Type": "application/json"}, body, 401, "BadSignature"),
            # The signature is checked on the bytes before anything parses them.
            "unsigned, a body that is no JSON": (
                {"Content-Type": "application/json"},
                b'{"orderId": ',
                401,
                "BadSignature",
            ),
            "signed, a body that is no JSON": (
                signed(sent=b'{"orderId": '),
                b'{"orderId": ',
                422,
                "InvalidRequest",
            ),
            "another secret": (signed("another-secret-0123456789"), body, 401, "BadSignature"),
            "altered body": (
                signed(),
                body.replace(b'"quantity":1', b'"quantity":9'),
                401,
                "BadSignature",
            ),
            "six minutes old": (signed(stamp=int(time.time()) - 360), body, 401, "StaleTimestamp"),
            "another step's key": (
                signed(key="SLR-B1-01:pick"),
                body,
                400,
                "IdempotencyKeyMismatch",
            ),
            "a timestamp not in unix seconds": (
                {**signed(), TIMESTAMP_HEADER: "1.7e9"},
                body,
                401,
                "BadSignature",
            ),
            "a signature not in ASCII": (
                {k.encode(): v.encode() for k, v in signed().items()}
                | {SIGNATURE_HEADER.encode(): b"v1=\xe9t\xe9"},
                body,
                401,
                "BadSignature",
            ),
            "another order in the body": (
                signed(sent=(other := an_order("SLR-B2-01", ("1", 1)).model_dump_json().encode())),
                other,
                422,
                "OrderIdMismatch",
            ),
        }
        for case, (headers, sent, status, code) in cases.items():
            response = await http.put(path, content=sent, headers=headers)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), case
            assert set(response.json()) == {"error"} and response.json()["error"]["message"], case
        # Several signatures (a secret being rotated): one that matches is enough.
        rotating = signed()
        rotating[SIGNATURE_HEADER] = f"v1={'0' * 64}, {rotating[SIGNATURE_HEADER]}"
        assert (await http.put(path, content=body, headers=rotating)).status_code == 200

    # A secret that differs is a configuration to fix, not the order's fault: retried.
    async with adapter(url, secret="not-the-servers-secret") as warehouse:
        with pytest.raises(WarehouseUnavailable, match="401: BadSignature") as refused:
            await warehouse.reserve(an_order("SLR-B3-01", ("1", 1)))
    assert isinstance(refused.value, TRANSIENT_ERRORS)
    assert await levels(books, "1") == (9, 1, 0)  # only the one signed right


async def test_refusals_become_the_contracts_exceptions(
    reference: tuple[SimulatedWarehouse, Recorded, str],
) -> None:
    books, _, url = reference
    async with adapter(url) as warehouse:
        with pytest.raises(OutOfStock) as short:
            await warehouse.reserve(an_order("SLR-C1-01", ("1", 4), ("1", 7)))
        assert (short.value.sku, short.value.requested, short.value.available) == ("1", 11, 10)

        invoiced = an_order("SLR-C2-01", ("1", 1))
        await warehouse.reserve(invoiced)
        await warehouse.issue_invoice(invoiced)
        with pytest.raises(AlreadyInvoiced):
            await warehouse.release(invoiced.order_id)

        released = an_order("SLR-C3-01", ("1", 1))
        await warehouse.reserve(released)
        assert await warehouse.release(released.order_id) is True
        with pytest.raises(OrderReleased):
            await warehouse.issue_invoice(released)

        with pytest.raises(UnknownOrder):
            await warehouse.pick("SLR-C4-01")

        # A code of the seller's own: a WarehouseError of that name, as the simulated one's.
        damaged = an_order("SLR-C5-01", ("DAMAGED", 1))
        await warehouse.reserve(damaged)
        with pytest.raises(WarehouseError, match="SKU DAMAGED found damaged at pick") as refused:
            await warehouse.pick(damaged.order_id)
    assert type(refused.value).__name__ == "DamagedItem"
    assert not isinstance(refused.value, TRANSIENT_ERRORS)
    assert await levels(books, "1") == (9, 0, 1)


# ── Answers that are not the API's ──────────────────────────────────────────────────────────


def misbehaving_app() -> FastAPI:
    """A warehouse that answers each order id's call its own wrong way."""
    app = FastAPI()

    @app.api_route("/orders/{order_id}/{resource}", methods=["PUT", "POST", "DELETE"])
    async def answer(request: Request, order_id: str, resource: str) -> Response:
        error = {"error": {"code": "Busy", "message": "try later"}}
        match order_id:
            case "SLR-500":
                return JSONResponse(error, status_code=500)
            case "SLR-503":
                return Response("<html>Bad gateway</html>", status_code=503)
            case "SLR-429":
                return JSONResponse(error, status_code=429)
            case "SLR-202":
                return Response(status_code=202)
            case "SLR-SLOW":
                await asyncio.sleep(1)
            case "SLR-403":
                return JSONResponse(
                    {"error": {"code": "Forbidden", "message": "no"}}, status_code=403
                )
            case "SLR-GARBAGE":
                return Response("reserved!", status_code=200)
            case "SLR-WRONG-SHAPE":
                return JSONResponse({"orderId": "SLR-WRONG-SHAPE"}, status_code=200)
            case "SLR-OTHER-ORDER":
                other = Reservation(order_id="SLR-X", lines=[], reserved_at="2026-01-01T00:00:00Z")  # type: ignore[arg-type]
                return Response(other.model_dump_json(), media_type="application/json")
            case "SLR-ECHO":  # the order sent back: a common first bug
                return Response(await request.body(), media_type="application/json")
            case "SLR-BARE-OUT-OF-STOCK":
                return JSONResponse({"error": {"code": "OutOfStock", "message": "none"}}, 409)
        return JSONResponse({"error": {"code": "Unexpected", "message": order_id}}, status_code=400)

    return app


async def test_failures_a_retry_may_not_meet_are_unavailable_and_unreadable_answers_faults() -> (
    None
):
    closed_port = free_ports(1)[0]
    async with serving(misbehaving_app()) as url, adapter(url, call_seconds=0.3) as warehouse:
        retried = {
            "SLR-500": "answered 500: Busy: try later",
            "SLR-503": "answered 503: no content type, 24 bytes",
            "SLR-429": "answered 429",
            "SLR-202": "202 Accepted, under way",
            "SLR-SLOW": "no answer within 0.3 s",
            "SLR-403": "answered 403: Forbidden: no; a configuration to fix: check that "
            "WAREHOUSE_HTTP_SECRET is the same on both sides",
        }
        for order_id, said in retried.items():
            with pytest.raises(WarehouseUnavailable, match=re.escape(said)) as failed:
                await warehouse.reserve(an_order(order_id, ("1", 1)))
            assert isinstance(failed.value, TRANSIENT_ERRORS), order_id

        # What a fault says of the answer is its type and length, never its text: the order
        # sent back would put the customer's address into Temporal's failure, stored in clear.
        faults = {
            "SLR-GARBAGE": "answered 200 with no content type, 9 bytes, not a "
            "Reservation (the body: Invalid JSON",
            "SLR-WRONG-SHAPE": "not a Reservation (lines: Field required)",
            "SLR-OTHER-ORDER": "the reservation of another order, SLR-X",
            "SLR-ECHO": "answered 200 with application/json, 199 bytes, not a Reservation "
            "(reservedAt: Field required)",
            "SLR-BARE-OUT-OF-STOCK": "must name its sku, requested and available",
        }
        for order_id, said in faults.items():
            with pytest.raises(UnreadableAnswer, match=re.escape(said)) as fault:
                await warehouse.reserve(an_order(order_id, ("1", 1)))
            # Neither transient nor a refusal: the activity ends the step (WarehouseFailure).
            assert not isinstance(fault.value, (*TRANSIENT_ERRORS, WarehouseError)), order_id
            assert "Rio de Janeiro" not in str(fault.value), order_id

    async with adapter(f"http://127.0.0.1:{closed_port}") as nowhere:
        with pytest.raises(WarehouseUnavailable, match="ConnectError") as refused:
            await nowhere.pick("SLR-1")
    assert isinstance(refused.value, TRANSIENT_ERRORS)


def in_front_of_the_api() -> FastAPI:
    """What stands in front of many ERPs: a web server that answers a path it does not route
    with its own 404 page, plain http with a redirect to https, a method it does not allow."""
    app = FastAPI()

    @app.api_route("/erp/{rest:path}", methods=["PUT", "POST", "DELETE"])
    async def not_routed(rest: str) -> Response:
        return Response("<html><h1>404 Not Found</h1>nginx</html>", status_code=404)

    @app.api_route("/plain/{rest:path}", methods=["PUT", "POST", "DELETE"])
    async def to_https(rest: str) -> Response:
        return Response(status_code=301, headers={"Location": f"https://erp.example/vtex/{rest}"})

    @app.api_route("/read-only/{rest:path}", methods=["PUT", "POST", "DELETE"])
    async def not_allowed(rest: str) -> Response:
        return Response("Method Not Allowed", status_code=405)

    return app


async def test_a_base_url_or_a_proxy_that_is_off_is_retried_and_logged_never_a_refusal(
    reference: tuple[SimulatedWarehouse, Recorded, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A base URL or a proxy that is off is a configuration to fix, as a secret that differs
    is: taken for a refusal (or a fault), every order dispatched meanwhile would be canceled
    and its customer told."""
    books, _, url = reference
    async with serving(in_front_of_the_api()) as proxy:
        cases = {
            # The reference server's own 404, in the error shape, but not UnknownOrder.
            f"{url}/vtex": "answered 404: NotFound: this API has no PUT "
            "/vtex/orders/SLR-CONF-1/reservation; a configuration to fix: not an answer the "
            f"warehouse API defines: check that WAREHOUSE_HTTP_URL is its base URL (calls go "
            f"to {url}/vtex/orders/...)",
            f"{proxy}/erp": "answered 404: no content type, 40 bytes; a configuration",
            f"{proxy}/plain": "answered 301: an empty body; a configuration to fix: a redirect "
            "to https://erp.example/vtex/orders/SLR-CONF-1/reservation, not followed: set "
            "WAREHOUSE_HTTP_URL to where the API answers",
            f"{proxy}/read-only": "answered 405: no content type, 18 bytes; a configuration to fix",
        }
        for base, said in cases.items():
            caplog.clear()
            async with adapter(base) as warehouse:
                with pytest.raises(WarehouseUnavailable, match=re.escape(said)) as failed:
                    await warehouse.reserve(an_order("SLR-CONF-1", ("1", 1)))
            assert isinstance(failed.value, TRANSIENT_ERRORS), base
            assert "nginx" not in str(failed.value)
            (logged,) = [r for r in caplog.records if r.name == "activities.http_warehouse"]
            assert logged.levelname == "ERROR", base
            assert "the call is retried" in logged.getMessage(), base
    assert await books.ledger("SLR-CONF-1") == []  # none reached the API
    # A 404 with UnknownOrder is the API's refusal: test_refusals_become_the_contracts_exceptions.


async def test_an_answer_that_trickles_in_is_cut_at_the_call_timeout() -> None:
    """WAREHOUSE_HTTP_TIMEOUT_SECONDS bounds the whole call: a server (or a half-dead proxy)
    sending a byte now and then would otherwise hold the step, its heartbeats going on, for as
    long as it likes."""
    app = FastAPI()

    @app.put("/orders/{order_id}/picking")
    async def trickle(order_id: str) -> StreamingResponse:
        async def one_byte_at_a_time() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b" "
                await asyncio.sleep(0.2)

        return StreamingResponse(one_byte_at_a_time(), media_type="application/json")

    async with serving(app) as url, adapter(url, call_seconds=0.3) as warehouse:
        started = time.monotonic()
        with pytest.raises(WarehouseUnavailable, match=re.escape("no answer within 0.3 s")):
            await warehouse.pick("SLR-TRICKLE-1")
        took = time.monotonic() - started
    assert took < 1, f"a call with a 0.3 s timeout took {took:.1f} s"


async def test_an_answer_larger_than_the_api_allows_is_a_fault_read_no_further() -> None:
    """A 16 MB answer gzipped into 16 KB (the adapter asks for gzip): read whole, a megabyte on the
    wire would be a gigabyte in the worker. A failure is told by its status, whatever its body."""
    bomb = gzip.compress(b" " * (16 * 1024 * 1024), compresslevel=9)
    app = FastAPI()

    @app.api_route("/orders/{order_id}/reservation", methods=["PUT", "DELETE"])
    async def inflating(request: Request, order_id: str) -> Response:
        status = 200 if request.method == "PUT" else 503
        headers = {"Content-Encoding": "gzip"}
        return Response(bomb, status, headers=headers, media_type="application/json")

    @app.put("/orders/{order_id}/label")
    async def large(order_id: str) -> Response:
        return Response(b" " * (MAX_ANSWER_BYTES + 1), media_type="application/json")

    async with serving(app) as url, adapter(url) as warehouse:
        tracemalloc.start()
        try:
            with pytest.raises(UnreadableAnswer, match=f"more than {MAX_ANSWER_BYTES} bytes"):
                await warehouse.reserve(an_order("SLR-BOMB-1", ("1", 1)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        with pytest.raises(UnreadableAnswer, match=f"more than {MAX_ANSWER_BYTES} bytes"):
            await warehouse.create_label(an_order("SLR-BOMB-1", ("1", 1)))
        with pytest.raises(WarehouseUnavailable, match="answered 503: an empty body"):
            await warehouse.release("SLR-BOMB-1")
    assert peak < 8 * 1024 * 1024, f"{len(bomb)} bytes on the wire, {peak >> 20} MB in memory"


# ── Cancellation ────────────────────────────────────────────────────────────────────────────


class SlowToReserve(SimulatedWarehouse):
    """Reserves after a pause, then says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started, self.reserved = asyncio.Event(), asyncio.Event()

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        self.started.set()
        await asyncio.sleep(0.5)
        try:
            return await super().reserve(order)
        finally:
            self.reserved.set()


async def test_a_call_cancelled_mid_way_is_undone_by_the_release(tmp_path: Path) -> None:
    books = SlowToReserve(tmp_path / "reference.db", default_stock=10, step_seconds=0)
    order = an_order("SLR-D1-01", ("1", 3))
    async with serving(create_app(books, SECRET)) as url, adapter(url) as warehouse:
        call = asyncio.create_task(warehouse.reserve(order))
        await books.started.wait()
        cancelled_at = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - cancelled_at < 0.3  # the call stopped; the server did not
        await asyncio.wait_for(books.reserved.wait(), 5)
        assert await levels(books, "1") == (7, 3, 0)  # it reserved after the caller left

        assert await warehouse.release(order.order_id) is True

    assert await levels(books, "1") == (10, 0, 0)
    assert [(e.movement, e.quantity) for e in await books.ledger(order.order_id)] == [
        ("reserve", 3),
        ("release", 3),
    ]


# ── Stock reported to the connector ─────────────────────────────────────────────────────────


class ChangesEndpoint:
    """A stand-in for the connector's `POST /catalog/changes`: records what it receives and
    refuses, as the connector does, a batch that names a SKU its catalog does not list."""

    def __init__(self, unlisted: set[str]) -> None:
        self.received: list[tuple[str | None, list[dict[str, Any]]]] = []
        self.app = FastAPI()

        @self.app.post("/catalog/changes")
        async def changes(request: Request) -> JSONResponse:
            batch = (await request.json())["changes"]
            self.received.append((request.headers.get("authorization"), batch))
            unknown = sorted({c["sku"] for c in batch} & unlisted)
            if unknown:
                error = {"code": "UnknownSku", "message": f"not in the catalog: {unknown}"}
                return JSONResponse({"error": error}, status_code=422)
            taken = [{"changeId": c["changeId"], "sku": c["sku"], "applied": True} for c in batch]
            return JSONResponse({"changes": taken})

    async def wait_for(self, count: int) -> list[tuple[str | None, list[dict[str, Any]]]]:
        deadline = time.monotonic() + 5
        while len(self.received) < count:
            assert time.monotonic() < deadline, self.received
            await asyncio.sleep(0.02)
        return self.received


async def test_stock_moves_are_reported_to_the_connector_as_available_levels(
    tmp_path: Path,
) -> None:
    books = SimulatedWarehouse(tmp_path / "reference.db", default_stock=10, step_seconds=0)
    connector = ChangesEndpoint(unlisted={"unlisted"})
    async with serving(connector.app) as connector_url:
        endpoint = f"{connector_url}/catalog/changes"
        reporter = StockReporter(books.url, endpoint, ops_token="ops-secret", every_seconds=30)
        async with serving(create_app(books, SECRET, reporter)) as url, adapter(url) as warehouse:
            order = an_order("SLR-E1-01", ("1", 3))
            await warehouse.reserve(order)
            ((token, [reserved]),) = await connector.wait_for(1)
            await warehouse.release(order.order_id)
            (_, [back]) = (await connector.wait_for(2))[1]
            # A SKU the connector does not list refuses the batch: sent again change by change,
            # the unlisted one left (logged), the others taken.
            await warehouse.reserve(an_order("SLR-E2-01", ("2", 1), ("unlisted", 1)))
            received = await connector.wait_for(5)

        # Started again (a restart reports from the start): the same change ids, the same levels.
        before = len(connector.received)
        # Books made again count their ledger from 1 again: their changes are named apart.
        made_again = SimulatedWarehouse(tmp_path / "again.db", default_stock=10, step_seconds=0)
        await made_again.reserve(an_order("SLR-E1-01", ("1", 3)))
        async with httpx.AsyncClient() as http:
            await StockReporter(books.url, endpoint, every_seconds=30).report(http)
            await StockReporter(made_again.url, endpoint, every_seconds=30).report(http)

    assert token == "Bearer ops-secret"
    assert {k: reserved[k] for k in ("sku", "stock")} == {"sku": "1", "stock": 7}
    assert {k: back[k] for k in ("sku", "stock")} == {"sku": "1", "stock": 10}
    assert reserved["changeId"] != back["changeId"]
    batch, alone_2, alone_unlisted = (batch for _, batch in received[2:5])
    assert {c["sku"] for c in batch} == {"2", "unlisted"}
    assert [(c["sku"], c["stock"]) for c in alone_2 + alone_unlisted] == [("2", 9), ("unlisted", 9)]
    _, again = connector.received[before]
    assert {(c["changeId"], c["sku"], c["stock"]) for c in again} == {
        (back["changeId"], "1", 10),
        *((c["changeId"], c["sku"], c["stock"]) for c in batch),
    }
    assert re.fullmatch(r"reference-warehouse-\d{20}-2", reserved["changeId"])
    (_, [from_new_books]) = connector.received[-1]
    assert from_new_books["changeId"].endswith("-2")
    assert from_new_books["changeId"] != reserved["changeId"]


class BrokenReporter(StockReporter):
    """A reporter with a bug that ends it."""

    async def run(self) -> None:
        raise RuntimeError("a bug in the reporter")


async def wait_for_log(caplog: pytest.LogCaptureFixture, words: str) -> logging.LogRecord:
    deadline = time.monotonic() + 5
    while not (found := [r for r in caplog.records if words in r.getMessage()]):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.02)
    return found[0]


async def test_the_stock_reporter_outlives_books_it_cannot_read_and_never_stops_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One error reading its books (a database restarting, locked, missing) is logged with its
    traceback and tried again: ended by it, the reporter would never report stock again while
    the server goes on serving. And if the reporter ends all the same, it is said at once."""
    path = tmp_path / "books.db"
    path.mkdir()  # a database SQLite cannot open, as one that is down
    connector = ChangesEndpoint(unlisted=set())
    async with serving(connector.app) as connector_url:
        endpoint = f"{connector_url}/catalog/changes"
        reporter = StockReporter(store.store_url(path), endpoint, every_seconds=0.1)
        task = asyncio.create_task(reporter.run())
        try:
            failed = await wait_for_log(caplog, "stock not reported")
            assert (failed.levelname, failed.exc_info is not None) == ("ERROR", True)
            assert "OperationalError" in failed.getMessage()
            path.rmdir()  # back
            books = SimulatedWarehouse(path, default_stock=10, step_seconds=0)
            await books.reserve(an_order("SLR-F1-01", ("1", 3)))
            ((_, [reported]),) = await connector.wait_for(1)
            assert (reported["sku"], reported["stock"]) == ("1", 7)
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        async with serving(create_app(books, SECRET, BrokenReporter(books.url, endpoint))):
            stopped = await wait_for_log(caplog, "the stock reporter stopped")
    assert (stopped.levelname, stopped.exc_info is not None) == ("ERROR", True)
    await books.close()


# ── The description, the settings, the command ─────────────────────────────────────────────


def test_the_openapi_file_is_the_reference_servers_and_says_how_to_call_it() -> None:
    assert OPENAPI_FILE.read_text(encoding="utf-8") == openapi_text(), (
        "docs/warehouse-api.openapi.json is not the reference server's any more: "
        "python -m devtools.reference_warehouse --openapi docs/warehouse-api.openapi.json"
    )
    document = json.loads(openapi_text())
    description = document["info"]["description"]
    for words in (SIGNATURE_HEADER, "HMAC-SHA256", IDEMPOTENCY_HEADER, '{"error": {"code"', "401"):
        assert words in description, words
    operations = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert len(operations) == 8


def test_the_guides_signature_example_is_what_the_adapter_signs() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = re.search(
        r"printf '%s' '(\d+)\.(\w+)\.(\S+?)\.' \| openssl dgst -sha256 -hmac '([^']+)'.*\n"
        r"([0-9a-f]{64})\n",
        text,
    )
    assert example, "the guide's openssl example is missing"
    timestamp, method, path, secret, digest = example.groups()
    assert signature(secret, timestamp, method, path, b"") == f"v1={digest}"


def test_the_warehouse_setting_takes_short_names_and_keeps_the_secret_out_of_sight(
    tmp_path: Path,
) -> None:
    over_http = Settings(
        warehouse="http",
        warehouse_http_url="http://127.0.0.1:1",
        warehouse_http_secret=SECRET,
        data_dir=tmp_path,
    )
    simulated = Settings(warehouse="simulated", data_dir=tmp_path)
    assert simulated.warehouse == Settings(data_dir=tmp_path).warehouse  # the default, named
    assert isinstance(load_warehouse(simulated), SimulatedWarehouse)
    warehouse = load_warehouse(over_http)
    assert isinstance(warehouse, HttpWarehouse)
    assert SECRET not in repr(over_http) + repr(warehouse)
    for missing, match in (
        ({"warehouse_http_url": ""}, "WAREHOUSE_HTTP_URL"),
        ({"warehouse_http_secret": ""}, "WAREHOUSE_HTTP_SECRET is not set"),
        ({"warehouse_http_secret": "short"}, "shorter than 16"),
        ({"warehouse_http_url": "ftp://host"}, "not an http"),
    ):
        with pytest.raises(ValueError, match=match):
            load_warehouse(over_http.model_copy(update=missing))


async def test_the_adapter_never_shows_the_password_of_its_url(
    reference: tuple[SimulatedWarehouse, Recorded, str],
) -> None:
    """WAREHOUSE_HTTP_URL may carry basic-auth credentials, which httpx sends: what a log, a
    traceback or an order's error shows of the adapter is without the password."""
    _, recorded, url = reference
    with_password = url.replace("http://", "http://connector:erp-password@")
    shown: list[str] = []
    async with adapter(with_password) as warehouse:
        shown += [repr(warehouse), str(warehouse), warehouse.base_url]
        await warehouse.release("SLR-G1-01")
    with pytest.raises(ValueError, match="is not an http") as invalid:
        HttpWarehouse(f"{with_password}?query", SECRET)
    (closed,) = free_ports(1)
    async with adapter(f"http://connector:erp-password@127.0.0.1:{closed}") as nowhere:
        with pytest.raises(WarehouseUnavailable) as down:
            await nowhere.pick("SLR-G1-01")
    shown += [str(invalid.value), str(down.value)]

    assert not [text for text in shown if "erp-password" in text], shown
    assert repr(warehouse) == f"HttpWarehouse({url.replace('http://', 'http://connector:***@')!r})"
    # And the credentials are sent all the same.
    (_, _, headers, _) = recorded.requests[-1]
    assert headers["authorization"] == "Basic Y29ubmVjdG9yOmVycC1wYXNzd29yZA=="


def test_the_reference_servers_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as helped:
        reference_warehouse.main(["--help"])
    assert helped.value.code == 0
    assert "--report-to" in capsys.readouterr().out
    written = tmp_path / "api.json"
    assert reference_warehouse.main(["--openapi", str(written)]) == 0
    assert written.read_text() == openapi_text()
    monkeypatch.setenv("WAREHOUSE_HTTP_SECRET", "short")
    reference_warehouse.get_settings.cache_clear()
    try:
        assert reference_warehouse.main(["--store", str(tmp_path / "books.db")]) == 2
    finally:
        reference_warehouse.get_settings.cache_clear()
    assert "WAREHOUSE_HTTP_SECRET must be set" in capsys.readouterr().err


# ── The whole stack ─────────────────────────────────────────────────────────────────────────

SKU = "123456789abc"  # the spec's placement example's
# Long enough for the mid-pick cancellation to land in the pick under the suite's load (with
# 0.6 s, a run of `make test` on eight pytest-xdist workers saw it land too late).
STEP_SECONDS = 1.0


async def _what_a_user_sees(stack: Stack, books: SimulatedWarehouse) -> dict[str, Any]:
    """An order invoiced, one canceled before dispatch, one canceled mid-pick, one whose SKU is
    found damaged: what the API, the history, the marketplace and the warehouse show of each,
    ids made alike."""
    invoiced, canceled, mid_step, damaged = (new_order_id() for _ in range(4))

    async def seen(order_id: str, order: dict[str, Any]) -> dict[str, Any]:
        shown = {
            "status": order["status"],
            "steps": [(s["name"], s["status"]) for s in order["steps"]],
            "compensations": order["compensations"],
            "reason": (order["cancellation"] or {}).get("reason"),
            "invoice": order["invoice"]
            and (order["invoice"]["invoiceNumber"], order["invoice"]["invoiceValue"]),
            "activities": await activity_events(stack.handle(order_id)),
            "marketplace": [c.kind for c in stack.marketplace.calls(marketplace_order_id=order_id)],
            "ledger": [
                (e.movement, e.sku, e.quantity) for e in await books.ledger(f"SLR-{order_id}")
            ],
        }
        return json.loads(json.dumps(shown).replace(order_id, "<order>"))

    async def invoice() -> dict[str, Any]:
        assert (await stack.place(invoiced)).status_code == 200
        assert (await stack.dispatch(invoiced)).status_code == 200
        order = await stack.wait_for(
            invoiced, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"]
        )
        return await seen(invoiced, order)

    async def cancel_before_dispatch() -> dict[str, Any]:
        assert (await stack.place(canceled)).status_code == 200
        assert (await stack.cancel(canceled, reason="payment denied")).status_code == 200
        return await seen(canceled, await stack.order(canceled))

    async def cancel_mid_step() -> dict[str, Any]:
        assert (await stack.place(mid_step)).status_code == 200
        assert (await stack.dispatch(mid_step)).status_code == 200
        await stack.wait_for(mid_step, lambda o: o["currentStep"] == "pick")
        assert (await stack.cancel(mid_step, reason="changed my mind")).status_code == 200
        return await seen(mid_step, await stack.order(mid_step))

    async def damaged_at_pick() -> dict[str, Any]:
        body = placement_example(damaged, stack.endpoint)
        body["items"][0]["id"] = "DAMAGED"
        assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
        assert (await stack.dispatch(damaged)).status_code == 200
        order = await stack.wait_for(damaged, lambda o: o["status"] == "canceled")
        await stack.marketplace.wait_for_calls(1, kind="cancel", marketplace_order_id=damaged)
        return await seen(damaged, order)

    orders = await asyncio.gather(
        invoice(), cancel_before_dispatch(), cancel_mid_step(), damaged_at_pick()
    )
    return {
        "orders": orders,
        "stock": await levels(books, SKU),
        "damaged stock": await levels(books, "DAMAGED"),
    }


async def test_an_order_through_the_real_stack_behaves_as_with_the_simulated_warehouse(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    refusals = Refusals(damaged_skus=frozenset({"DAMAGED"}))
    books = SimulatedWarehouse(
        tmp_path / "reference.db", default_stock=1000, step_seconds=STEP_SECONDS, refusals=refusals
    )
    common: dict[str, Any] = {
        "fulfillment_step_seconds": STEP_SECONDS,
        "warehouse_damaged_skus": "DAMAGED",
    }
    async with (
        serving(create_app(books, SECRET)) as url,
        running_stack(temporal_env, tmp_path / "simulated", **common) as simulated,
        running_stack(
            temporal_env,
            tmp_path / "http",
            warehouse="http",
            warehouse_http_url=url,
            warehouse_http_secret=SECRET,
            **common,
        ) as over_http,
    ):
        seen_simulated, seen_over_http = await asyncio.gather(
            _what_a_user_sees(simulated, simulated.warehouse), _what_a_user_sees(over_http, books)
        )

    assert seen_over_http == seen_simulated
    # And what that is: an invoiced order, two canceled by the marketplace, one by the seller.
    invoiced, canceled, mid_step, damaged = seen_over_http["orders"]
    assert (invoiced["status"], invoiced["invoice"]) == ("invoiced", ["NFe-000001", 2499 + 1099])
    assert invoiced["marketplace"] == ["invoice", "tracking"]
    assert canceled["activities"] == [
        ["reserve_stock", "completed"],
        ["release_stock", "completed"],
    ]
    assert mid_step["steps"] == [["pick", "cancelled"]]
    assert mid_step["ledger"] == [["reserve", SKU, 1], ["release", SKU, 1]]
    assert damaged["marketplace"] == ["cancel"]
    # The seller's refusal under its own name, as the simulated warehouse's.
    assert damaged["reason"] == (
        "pick failed: DamagedItem: order SLR-<order>: SKU DAMAGED found damaged at pick"
    )
    assert seen_over_http["stock"] == (999, 0, 1)


async def test_a_base_path_that_is_off_makes_placements_wait_not_refused(
    temporal_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """WAREHOUSE_HTTP_URL one path segment off (the reference server answers its own 404): the
    placement is answered 503 while the reservation is retried, as when the warehouse is down,
    never 409 (the marketplace cancels the order); the worker's log says what to fix."""
    books = SimulatedWarehouse(tmp_path / "reference.db", default_stock=1000, step_seconds=0)
    async with (
        serving(create_app(books, SECRET)) as url,
        running_stack(
            temporal_env,
            tmp_path / "http",
            warehouse="http",
            warehouse_http_url=f"{url}/vtex",
            warehouse_http_secret=SECRET,
            update_timeout_seconds=0.5,
        ) as stack,
    ):
        order_id = new_order_id()
        placed = await stack.place(order_id)
        # Shown once the reservation's first, quick attempts (inside the workflow task) are over.
        order = await stack.wait_for(order_id, lambda o: o["attention"])
        canceled = stack.marketplace.calls(kind="cancel", marketplace_order_id=order_id)
    await books.close()

    assert placed.status_code == 503, placed.text
    assert placed.json()["error"]["message"].startswith(
        f"order SLR-{order_id}: the stock is not reserved yet"
    )
    assert (order["status"], canceled) == ("reserving", [])
    # What to fix, on the order (as the next 503 says) and in the worker's log.
    to_fix = f"check that WAREHOUSE_HTTP_URL is its base URL (calls go to {url}/vtex/orders/...)"
    assert "answered 404: NotFound: this API has no PUT /vtex/orders/" in order["attention"]
    assert to_fix in order["attention"]
    logged = [r for r in caplog.records if r.name == "activities.http_warehouse"]
    assert logged and logged[0].levelname == "ERROR" and to_fix in logged[0].getMessage()


# ── The conformance kit, through the adapter ────────────────────────────────────────────────


@pytest.fixture
async def warehouse_kit_target(tmp_path: Path) -> AsyncIterator[KitTarget]:
    """The adapter over the reference server (its books on a fresh SQLite file), and over a port
    nothing listens on for the unreachable system."""
    books = SimulatedWarehouse(
        tmp_path / "reference.db", default_stock=1000, step_seconds=0, delivery_seconds=0.3
    )
    (down,) = free_ports(1)
    async with serving(create_app(books, SECRET)) as url:
        yield KitTarget(
            lambda: HttpWarehouse(url, SECRET, timeout_seconds=5.0),
            ["KIT-A", "KIT-B"],
            unreachable=lambda: HttpWarehouse(
                f"http://127.0.0.1:{down}", SECRET, timeout_seconds=2.0
            ),
        )
    await books.close()


# Every clause of activities/warehouse_kit, one test each, on the HTTP adapter and the
# reference server together: what a seller's system behind the API must also keep.
test_the_http_adapter_over_the_reference_server_keeps_the_clause = warehouse_kit_tests()
