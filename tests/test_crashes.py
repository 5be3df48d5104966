"""Crashes, for real: the worker, the Temporal dev server, the API and the marketplace run as their
own processes (devtools/processes.py) and are killed with `kill -9` mid-flight, then started again.

Every test talks to the API over HTTP as the marketplace does (retrying on 503 and on a closed
connection), and ends with the invariant checker over every order (devtools/invariants.py):
stock conserved per SKU, each order agreeing with the warehouse and with what the marketplace
received (read from the fake marketplace's journal, which survives its restarts).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from activities.simulated_warehouse import SimulatedWarehouse
from devtools.invariants import find_violations, load_marketplace_calls
from devtools.processes import ProcessStack
from tests.stack import new_order_id, placement_example
from workflows import ids

FINAL = ("invoiced", "canceled", "expired")
SKU = "123456789abc"  # the SKU of the spec's placement example, quantity 1
STEPS = ("pick_items", "pack_items", "ship_order", "issue_invoice")


@asynccontextmanager
async def processes(tmp_path: Path, **options: Any) -> AsyncIterator[ProcessStack]:
    """A ProcessStack, started and stopped off the event loop; no process of it outlives the
    test."""
    stack = ProcessStack(tmp_path, **options)
    await asyncio.to_thread(stack.__enter__)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)
        assert stack.leftovers() == [], stack.logs()


async def connect(stack: ProcessStack) -> Client:
    """A Temporal client of the stack's dev server, as ops would use."""
    return await Client.connect(stack.temporal_address, data_converter=pydantic_data_converter)


async def call(
    http: httpx.AsyncClient, method: str, path: str, body: Any = None, within: float = 120
) -> httpx.Response:
    """A call as the marketplace makes it: again while the API is down or answers 503."""
    deadline = time.monotonic() + within
    while True:
        try:
            response = await http.request(method, path, json=body)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code != 503:
            return response
        assert time.monotonic() < deadline, f"{method} {path} never answered"
        await asyncio.sleep(0.2)


def placement_path() -> str:
    return "/pvt/orders"


def dispatch_path(order_id: str) -> str:
    return f"/pvt/orders/{ids.seller_order_id(order_id)}/fulfill"


async def place(http: httpx.AsyncClient, stack: ProcessStack, order_id: str) -> httpx.Response:
    """Place the spec's example order under `order_id`."""
    return await call(http, "POST", placement_path(), placement_example(order_id, stack.endpoint))


async def dispatch(http: httpx.AsyncClient, order_id: str) -> httpx.Response:
    """Order Dispatching."""
    return await call(http, "POST", dispatch_path(order_id), {"marketplaceOrderId": order_id})


async def order(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    """GET /pvt/orders/{orderId}, asserting 200."""
    response = await call(http, "GET", f"/pvt/orders/{ids.seller_order_id(order_id)}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(
    http: httpx.AsyncClient,
    order_id: str,
    predicate: Callable[[dict[str, Any]], Any],
    within: float = 60,
) -> dict[str, Any]:
    """Poll the order until `predicate(order)`."""
    deadline = time.monotonic() + within
    while True:
        current = await order(http, order_id)
        if predicate(current):
            return current
        assert time.monotonic() < deadline, f"timed out: {current}"
        await asyncio.sleep(0.2)


async def all_final(
    http: httpx.AsyncClient, order_ids: list[str], within: float = 90
) -> dict[str, str]:
    """Wait until every order has ended; their final statuses."""
    return {
        order_id: (await until(http, order_id, lambda o: o["status"] in FINAL, within))["status"]
        for order_id in order_ids
    }


def journal(stack: ProcessStack) -> list[dict[str, Any]]:
    """Every call the marketplace received, across its restarts."""
    if not stack.journal.exists():
        return []
    lines = stack.journal.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def invoice_numbers(stack: ProcessStack, order_id: str) -> set[str | None]:
    """The invoiceNumbers of every invoice call the marketplace received for the order."""
    return {
        c["invoiceNumber"]
        for c in journal(stack)
        if c["kind"] == "invoice" and c["marketplaceOrderId"] == order_id
    }


async def assert_stock(stack: ProcessStack, shipped: int, reserved: int = 0) -> None:
    """available + reserved + shipped is still the initial stock, split as expected."""
    level = await SimulatedWarehouse(stack.warehouse_store).stock_level(SKU)
    assert (level.available + level.reserved + level.shipped, level.reserved, level.shipped) == (
        1000,
        reserved,
        shipped,
    )


async def check_invariants(stack: ProcessStack, client: Client, order_count: int) -> None:
    """The invariant checker finds nothing over every order of this stack, all of them final."""
    query = f'TaskQueue="{stack.task_queue}"'
    for _ in range(100):  # Visibility is eventually consistent.
        listed = [w async for w in client.list_workflows(query)]
        if len(listed) >= order_count:
            break
        await asyncio.sleep(0.2)
    assert len(listed) == order_count, [w.id for w in listed]
    violations = await find_violations(
        client,
        SimulatedWarehouse(stack.warehouse_store),
        lambda: load_marketplace_calls(str(stack.journal)),
        query=query,
        require_final=True,
    )
    assert violations == [], "\n".join(map(str, violations)) + "\n" + stack.logs()


async def worker_running_a_step(client: Client, order_id: str) -> str:
    """The identity (pid@host) of the worker running one of the order's fulfillment steps."""
    handle = client.get_workflow_handle(ids.workflow_id(order_id))
    for _ in range(300):
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.last_worker_identity and pending.activity_type.name in STEPS:
                return pending.last_worker_identity
        await asyncio.sleep(0.05)
    raise AssertionError(f"no step of {order_id} started")


async def steps_run_again(client: Client, order_id: str) -> list[tuple[str, str]]:
    """(step, identity of the worker that ran it last) for each step of the order that ran
    again after its first attempt missed its heartbeat (its worker died)."""
    again = []
    handle = client.get_workflow_handle(ids.workflow_id(order_id))
    scheduled: dict[int, str] = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = name
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            timeout = started.last_failure.timeout_failure_info.timeout_type
            name = scheduled[started.scheduled_event_id]
            if started.attempt > 1 and timeout == TimeoutType.TIMEOUT_TYPE_HEARTBEAT:
                again.append((name, started.identity))
    return again


async def test_a_worker_killed_mid_step_the_orders_finish_elsewhere(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=2, step_seconds=1.5) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        order_ids = [new_order_id() for _ in range(4)]
        for order_id in order_ids:
            assert (await place(http, stack, order_id)).status_code == 200
            assert (await dispatch(http, order_id)).status_code == 200
        identity = await worker_running_a_step(client, order_ids[0])
        victim = next(w for w in stack.workers if identity.startswith(f"{w.pid}@"))

        victim.kill9()

        # The dead worker's steps time out on their heartbeat (10 s) and run on the other one.
        assert await all_final(http, order_ids) == dict.fromkeys(order_ids, "invoiced")
        rerun = [step for oid in order_ids for step in await steps_run_again(client, oid)]
        assert rerun, "no step was running on the killed worker"
        assert all(who != identity for _, who in rerun), rerun
        await assert_stock(stack, shipped=len(order_ids))
        for order_id in order_ids:
            final = await order(http, order_id)
            assert invoice_numbers(stack, order_id) == {final["invoice"]["invoiceNumber"]}
        await check_invariants(stack, client, len(order_ids))


async def test_the_temporal_server_killed_and_restarted_every_open_order_goes_on(
    tmp_path: Path,
) -> None:
    async with (
        processes(
            tmp_path, workers=1, step_seconds=1.0, env={"UPDATE_TIMEOUT_SECONDS": "3"}
        ) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        placed_only, fulfilling, new = new_order_id(), new_order_id(), new_order_id()
        for order_id in (placed_only, fulfilling):
            assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, fulfilling)).status_code == 200
        await until(http, fulfilling, lambda o: o["currentStep"] in ("pack", "ship"))

        stack.temporal.kill9()
        # While Temporal is down, every call answers 503 with a JSON error, never a 500: the
        # marketplace retries.
        during = [
            await http.post(dispatch_path(placed_only), json={"marketplaceOrderId": placed_only}),
            await http.post(placement_path(), json=placement_example(new, stack.endpoint)),
            await http.get(f"/pvt/orders/{ids.seller_order_id(fulfilling)}"),
        ]
        for answer in during:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "ServiceUnavailable", answer.text
            assert answer.headers.get("retry-after"), answer.headers
        await asyncio.to_thread(stack.temporal.restart)

        # The marketplace's retries go through once the worker is back on the server (503s
        # until then), answered normally; every order ends.
        retried = await dispatch(http, placed_only)
        assert retried.status_code == 200, retried.text
        assert retried.json()["orderId"] == ids.seller_order_id(placed_only)
        assert (await place(http, stack, new)).status_code == 200
        assert (await dispatch(http, new)).status_code == 200
        everything = [placed_only, fulfilling, new]
        assert await all_final(http, everything) == dict.fromkeys(everything, "invoiced")
        await assert_stock(stack, shipped=3)
        await check_invariants(stack, await connect(stack), 3)


async def test_the_api_killed_mid_request_leaves_no_half_applied_order(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.3) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        to_dispatch = [new_order_id() for _ in range(4)]  # placed first, dispatched at the crash
        to_place = [new_order_id() for _ in range(6)]  # placed at the crash
        for order_id in to_dispatch:
            assert (await place(http, stack, order_id)).status_code == 200
        bodies = {oid: placement_example(oid, stack.endpoint) for oid in to_place}
        first: dict[str, httpx.Response | httpx.TransportError] = {}

        async def once(order_id: str, path: str, body: dict[str, Any]) -> None:
            try:
                first[order_id] = await http.post(path, json=body)
            except httpx.TransportError as err:
                first[order_id] = err

        sending = [
            *(
                asyncio.create_task(once(oid, dispatch_path(oid), {"marketplaceOrderId": oid}))
                for oid in to_dispatch
            ),
            *(asyncio.create_task(once(oid, placement_path(), bodies[oid])) for oid in to_place),
        ]
        # Killed once a placement reached Temporal: the API is mid-request.
        await any_workflow_started(client, to_place)
        stack.api.kill9()
        await asyncio.gather(*sending)
        cut = [oid for oid, answer in first.items() if isinstance(answer, httpx.TransportError)]
        assert cut, f"every call was answered before the API died: {first}"
        await asyncio.to_thread(stack.api.restart)

        # Each call got an error or an answer; the retries answer what was answered before (the
        # same orderId, the same dispatch receipt and date), never a second order.
        for order_id in to_place:
            retried = await call(http, "POST", placement_path(), bodies[order_id])
            assert retried.status_code == 200, retried.text
            assert retried.json()["orderId"] == ids.seller_order_id(order_id)
            answer = first[order_id]
            if isinstance(answer, httpx.Response):
                assert answer.status_code in (200, 503), answer.text
                if answer.status_code == 200:
                    assert answer.json() == retried.json()
        for order_id in to_dispatch:
            retried = await dispatch(http, order_id)
            assert retried.status_code == 200, retried.text
            answer = first[order_id]
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                assert answer.json() == retried.json()
        receipts = [(await dispatch(http, oid)).json() for oid in to_place]
        again = [(await dispatch(http, oid)).json() for oid in to_place]
        assert receipts == again
        everything = to_dispatch + to_place
        assert await all_final(http, everything) == dict.fromkeys(everything, "invoiced")
        # One reservation per order, whatever the crash cut.
        warehouse = SimulatedWarehouse(stack.warehouse_store)
        for order_id in everything:
            ledger = await warehouse.ledger(ids.seller_order_id(order_id))
            assert [e.movement for e in ledger].count("reserve") == 1, ledger
        await assert_stock(stack, shipped=len(everything))
        await check_invariants(stack, client, len(everything))


async def any_workflow_started(client: Client, order_ids: list[str], within: float = 30) -> None:
    """Wait until the workflow of one of the orders exists."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for order_id in order_ids:
            try:
                await client.get_workflow_handle(ids.workflow_id(order_id)).describe()
                return
            except RPCError:
                pass
        await asyncio.sleep(0.01)
    raise AssertionError("no placement reached Temporal")


async def test_a_marketplace_failing_then_gone_gets_the_invoice_once_back(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.2) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_id = new_order_id()
        async with httpx.AsyncClient(base_url=stack.marketplace_url) as marketplace:
            failing = await marketplace.post("/fail-next?kind=invoice&times=2&status=503")
            assert failing.status_code == 204
        assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200

        # The first two sends are answered 503 (1 s apart); then the marketplace goes away.
        deadline = time.monotonic() + 30
        while [c["status"] for c in journal(stack) if c["kind"] == "invoice"] != [503, 503]:
            assert time.monotonic() < deadline, journal(stack)
            await asyncio.sleep(0.05)
        stack.marketplace.kill9()
        down_since = time.monotonic()
        # The next send (2 s later) meets a closed port: the order shows it retrying.
        retrying = await until(
            http,
            order_id,
            lambda o: any(
                c["activity"] == "send_invoice" and c["attempt"] >= 4 and c["lastError"]
                for c in o["pendingCalls"]
            ),
            within=20,
        )
        assert retrying["invoice"]["sentAt"] is None
        # Back about 4.5 s after it went (it takes a second or so to listen), before the next
        # send, 4 s after the one that met the closed port.
        await asyncio.sleep(max(0.0, 3 - (time.monotonic() - down_since)))
        await asyncio.to_thread(stack.marketplace.restart)

        delivered = await until(
            http, order_id, lambda o: o["invoice"]["sentAt"] and not o["pendingCalls"], within=60
        )
        assert delivered["status"] == "invoiced"
        invoices = [c for c in journal(stack) if c["kind"] == "invoice"]
        # Two 503s; the sends while it was down were not received; the first one after its
        # restart was taken, and nothing after it.
        assert [c["status"] for c in invoices] == [503, 503, 200]
        assert {c["invoiceNumber"] for c in invoices} == {delivered["invoice"]["invoiceNumber"]}
        await check_invariants(stack, await connect(stack), 1)


async def test_an_operator_cancel_while_the_steps_worker_is_dead_compensates(
    tmp_path: Path,
) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=5) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        order_id = new_order_id()
        assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        await worker_running_a_step(client, order_id)

        stack.workers[0].kill9()
        await client.get_workflow_handle(ids.workflow_id(order_id)).cancel()
        await asyncio.to_thread(stack.workers[0].restart)

        # The dead step ends by its heartbeat timeout, not by a cancellation: decided from the
        # recorded intent all the same.
        final = await until(http, order_id, lambda o: o["status"] in FINAL, within=60)
        assert final["status"] == "canceled", final
        assert final["compensations"] == ["release_stock"]
        await assert_stock(stack, shipped=0)
        await check_invariants(stack, client, 1)


async def test_a_worker_killed_mid_reservation_the_placement_is_answered_soon(
    tmp_path: Path,
) -> None:
    scripted = {"WAREHOUSE": "tests.scripted_warehouse:ScriptedWarehouse.from_settings"}
    async with (
        processes(tmp_path, workers=2, step_seconds=0.1, env=scripted) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        body["items"][0]["id"] = "slowreserve-crash"  # A reservation that takes 1.5 s.
        placing = asyncio.create_task(call(http, "POST", placement_path(), body))
        # The reservation is a local activity, inside a workflow task: the worker running it is
        # the one whose log says it started.
        started_line = f"reserve started for order SLR-{order_id}"
        deadline = time.monotonic() + 30
        reserving = None
        while reserving is None:
            assert time.monotonic() < deadline, "no worker started the reservation"
            reserving = next(
                (w for w in stack.workers if started_line in w.log_path.read_text()), None
            )
            await asyncio.sleep(0.05)
        started = time.monotonic()

        reserving.kill9()

        # Its workflow task times out (10 s) and runs on the other worker, the reservation with
        # it, long before the reservation's 5-minute start-to-close timeout.
        answer = await asyncio.wait_for(placing, 60)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert elapsed < 60, f"the placement took {elapsed:.0f} s after the worker died"
        assert (await dispatch(http, order_id)).status_code == 200
        assert await all_final(http, [order_id]) == {order_id: "invoiced"}
        await check_invariants(stack, client, 1)


async def test_a_worker_stopped_with_sigterm_lets_its_step_finish(tmp_path: Path) -> None:
    async with (
        processes(
            tmp_path, workers=2, step_seconds=2, env={"WORKER_SHUTDOWN_GRACE_SECONDS": "20"}
        ) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        order_id = new_order_id()
        assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        identity = await worker_running_a_step(client, order_id)
        stopping = next(w for w in stack.workers if identity.startswith(f"{w.pid}@"))

        await asyncio.to_thread(stopping.terminate, 30)  # SIGTERM, as an orchestrator does

        assert stopping.popen is not None and stopping.popen.returncode == 0
        assert await all_final(http, [order_id]) == {order_id: "invoiced"}
        # The step it ran finished there, on its first attempt: nothing ran twice. (An attempt
        # that failed and was retried shows only as the next one's attempt number.)
        handle = client.get_workflow_handle(ids.workflow_id(order_id))
        attempts = [
            event.activity_task_started_event_attributes.attempt
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert attempts and set(attempts) == {1}, attempts
        await check_invariants(stack, client, 1)
