"""Crashes, for real: the worker, the Temporal dev server, the API and the marketplace run as their
own processes (devtools/processes.py) and are killed with `kill -9` mid-flight, then started again.
Each test ends with the invariant checker over every order (devtools/invariants.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.simulated_warehouse import SimulatedWarehouse
from devtools.invariants import find_violations, load_marketplace_calls
from devtools.processes import ProcessStack
from tests.stack import new_order_id, placement_example
from workflows import ids

FINAL = ("invoiced", "canceled", "expired")


@asynccontextmanager
async def processes(tmp_path: Path, **options: Any) -> AsyncIterator[ProcessStack]:
    """A ProcessStack, started and stopped off the event loop."""
    stack = ProcessStack(tmp_path, **options)
    await asyncio.to_thread(stack.__enter__)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def connect(stack: ProcessStack) -> Client:
    """A Temporal client of the stack's dev server, as ops would use."""
    return await Client.connect(stack.temporal_address, data_converter=pydantic_data_converter)


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST as the marketplace does: again while the API is down or answers 503."""
    for _ in range(600):
        try:
            response = await http.post(path, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code != 503:
            return response
        await asyncio.sleep(0.2)
    raise AssertionError(f"POST {path} never answered")


async def place(http: httpx.AsyncClient, stack: ProcessStack, order_id: str) -> httpx.Response:
    """Place the spec's example order under `order_id`."""
    return await post(http, "/pvt/orders", placement_example(order_id, stack.endpoint))


async def dispatch(http: httpx.AsyncClient, order_id: str) -> httpx.Response:
    """Order Dispatching."""
    path = f"/pvt/orders/{ids.seller_order_id(order_id)}/fulfill"
    return await post(http, path, {"marketplaceOrderId": order_id})


async def order(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    """GET the order (again while the API is down)."""
    response = await post_get(http, f"/pvt/orders/{ids.seller_order_id(order_id)}")
    body: dict[str, Any] = response.json()
    return body


async def post_get(http: httpx.AsyncClient, path: str) -> httpx.Response:
    for _ in range(600):
        try:
            response = await http.get(path)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 200:
            return response
        await asyncio.sleep(0.2)
    raise AssertionError(f"GET {path} never answered")


async def until(
    http: httpx.AsyncClient, order_id: str, predicate: Any, within: float = 60
) -> dict[str, Any]:
    """Poll the order until `predicate(order)`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        current = await order(http, order_id)
        if predicate(current):
            return current
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {current}"
        await asyncio.sleep(0.2)


async def all_final(http: httpx.AsyncClient, order_ids: list[str], within: float = 90) -> None:
    """Every order has ended."""
    for order_id in order_ids:
        await until(http, order_id, lambda o: o["status"] in FINAL, within)


async def check_invariants(stack: ProcessStack, client: Client, order_count: int) -> None:
    """The invariant checker finds nothing, over every order of this stack."""
    query = f'TaskQueue="{stack.task_queue}"'
    for _ in range(100):  # Visibility is eventually consistent.
        listed = [w async for w in client.list_workflows(query)]
        if len(listed) >= order_count:
            break
        await asyncio.sleep(0.2)
    warehouse = SimulatedWarehouse(stack.warehouse_db)
    violations = await find_violations(
        client,
        warehouse,
        lambda: load_marketplace_calls(str(stack.journal)),
        query=query,
        require_final=True,
    )
    assert violations == [], "\n".join(map(str, violations)) + "\n" + stack.logs()


async def worker_running_a_step(client: Client, order_id: str) -> str:
    """The identity (pid@host) of the worker running the order's current step."""
    handle = client.get_workflow_handle(ids.workflow_id(order_id))
    for _ in range(300):
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.last_worker_identity and pending.activity_type.name.endswith(
                ("_items", "_order", "_invoice")
            ):
                return pending.last_worker_identity
        await asyncio.sleep(0.05)
    raise AssertionError(f"no step of {order_id} started")


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

        # The step times out on its heartbeat (10 s) and runs again on the other worker.
        await all_final(http, order_ids)
        for order_id in order_ids:
            assert (await order(http, order_id))["status"] == "invoiced"
        level = await SimulatedWarehouse(stack.warehouse_db).stock_level("123456789abc")
        assert (level.total, level.reserved, level.shipped) == (1000, 0, 4)
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
        placed_only, fulfilling = new_order_id(), new_order_id()
        for order_id in (placed_only, fulfilling):
            assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, fulfilling)).status_code == 200
        await until(http, fulfilling, lambda o: o["currentStep"] in ("pack", "ship"))

        stack.temporal.kill9()
        # While Temporal is down, the API answers 503 with a JSON error: the marketplace retries.
        during = await http.post(
            f"/pvt/orders/{ids.seller_order_id(placed_only)}/fulfill",
            json={"marketplaceOrderId": placed_only},
        )
        assert during.status_code == 503, during.text
        assert during.json()["error"]["code"] == "ServiceUnavailable"
        assert "retry-after" in during.headers
        await asyncio.to_thread(stack.temporal.start)

        # The marketplace's retry of the same dispatch now goes through; both orders end.
        assert (await dispatch(http, placed_only)).status_code == 200
        await all_final(http, [placed_only, fulfilling])
        for order_id in (placed_only, fulfilling):
            assert (await order(http, order_id))["status"] == "invoiced"
        await check_invariants(stack, await connect(stack), 2)


async def test_the_api_killed_mid_request_leaves_no_half_applied_order(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.3) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_ids = [new_order_id() for _ in range(8)]
        body = {oid: placement_example(oid, stack.endpoint) for oid in order_ids}
        first: dict[str, httpx.Response | Exception] = {}

        async def place_once(order_id: str) -> None:
            try:
                first[order_id] = await http.post("/pvt/orders", json=body[order_id])
            except httpx.TransportError as err:
                first[order_id] = err

        sending = [asyncio.create_task(place_once(oid)) for oid in order_ids]
        await asyncio.sleep(0.05)
        stack.api.kill9()
        await asyncio.gather(*sending)
        await asyncio.to_thread(stack.api.start)

        # Each call got an answer or an error, never a half-applied order: the retries answer
        # the same seller orderId, and the dispatches (sent twice) the same receipt.
        for order_id in order_ids:
            answer = first[order_id]
            if isinstance(answer, httpx.Response):
                assert answer.status_code in (200, 503), answer.text
            retried = await post(http, "/pvt/orders", body[order_id])
            assert retried.status_code == 200, retried.text
            assert retried.json()["orderId"] == ids.seller_order_id(order_id)
        receipts = [await dispatch(http, oid) for oid in order_ids]
        again = [await dispatch(http, oid) for oid in order_ids]
        assert [r.json() for r in receipts] == [r.json() for r in again]
        await all_final(http, order_ids)
        level = await SimulatedWarehouse(stack.warehouse_db).stock_level("123456789abc")
        assert (level.total, level.reserved, level.shipped) == (1000, 0, len(order_ids))
        await check_invariants(stack, await connect(stack), len(order_ids))


async def test_a_marketplace_failing_then_gone_gets_the_invoice_once_back(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.2) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_id = new_order_id()
        async with httpx.AsyncClient(base_url=stack.marketplace_url) as marketplace:
            failing = await marketplace.post("/fail-next?kind=invoice&times=1&status=503")
            assert failing.status_code == 204
        assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        retrying = await until(
            http,
            order_id,
            # A failed attempt behind it (a pending call is listed while its first one runs).
            lambda o: any(
                c["activity"] == "send_invoice" and c["attempt"] >= 2 for c in o["pendingCalls"]
            ),
        )
        assert retrying["invoice"]["sentAt"] is None

        stack.marketplace.kill9()
        await asyncio.sleep(4)  # Down: the sends meet a closed port.
        await asyncio.to_thread(stack.marketplace.start)

        delivered = await until(http, order_id, lambda o: o["invoice"]["sentAt"], within=90)
        calls = await load_marketplace_calls(str(stack.journal))
        invoices = [c for c in calls if c["kind"] == "invoice"]
        # The first send met a 503; the ones while it was down met a closed port (not received);
        # the first one after its restart was taken.
        assert invoices[0]["status"] == 503
        assert [c["status"] for c in invoices[1:]] == [200]
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
        await asyncio.to_thread(stack.workers[0].start)

        # The dead step ends by its heartbeat timeout, not by a cancellation: decided from the
        # recorded intent all the same.
        final = await until(http, order_id, lambda o: o["status"] in FINAL, within=60)
        assert final["status"] == "canceled", final
        assert final["compensations"] == ["release_stock"]
        level = await SimulatedWarehouse(stack.warehouse_db).stock_level("123456789abc")
        assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)
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
        placing = asyncio.create_task(post(http, "/pvt/orders", body))
        handle = client.get_workflow_handle(ids.workflow_id(order_id))
        identity = ""
        while not identity:
            try:
                pending = (await handle.describe()).raw_description.pending_activities
                identity = next((p.last_worker_identity for p in pending), "")
            except Exception:  # Not started yet.
                pass
            await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()

        next(w for w in stack.workers if identity.startswith(f"{w.pid}@")).kill9()

        # The reservation heartbeats: the other worker runs it again after the 10 s heartbeat
        # timeout, not after its 5-minute start-to-close timeout.
        answer = await asyncio.wait_for(placing, 60)
        elapsed = asyncio.get_running_loop().time() - started
        assert answer.status_code == 200, answer.text
        assert elapsed < 60, f"the placement took {elapsed:.0f} s after the worker died"
        assert (await dispatch(http, order_id)).status_code == 200
        await all_final(http, [order_id])
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
        await all_final(http, [order_id])
        assert (await order(http, order_id))["status"] == "invoiced"
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
