"""GET /pvt/orders/{orderId} while no worker is up: answered within seconds from what Temporal
keeps without one (`live: false`), never a 503 that lasts; live again once a worker is back.

Real processes (devtools/processes.py): the dev server, a worker, the API and the fake
marketplace, the worker killed with `kill -9` and started again.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from devtools.processes import ProcessStack
from tests.stack import new_order_id, placement_example
from tests.test_crashes import connect, dispatch, order, place, placement_path, processes, until
from workflows import ids
from workflows.messages import OrderInput, OrderLine
from workflows.order import OrderWorkflow

# ORDER_QUERY_TIMEOUT_SECONDS's default: how long GET waits for a worker before it answers
# without one. The answer must come well within a second after it.
QUERY_SECONDS = 2.0
ANSWER_WITHIN = QUERY_SECONDS + 1.0
# What the order last published: the memo and search attributes carry these exactly.
PUBLISHED = (
    "orderId",
    "marketplaceOrderId",
    "workflowId",
    "status",
    "placedAt",
    "reservedAt",
    "lockExpiresAt",
    "dispatchedAt",
    "invoicedAt",
    "closesAt",
    "items",
)
# Only a view no worker answered differs in these.
MARKS = ("live", "workflowStatus", "pendingCalls")


async def timed_get(http: httpx.AsyncClient, order_id: str) -> tuple[httpx.Response, float]:
    """GET /pvt/orders/{orderId} once (no retry), and how long it took."""
    started = time.monotonic()
    response = await http.get(f"/pvt/orders/{ids.seller_order_id(order_id)}")
    return response, time.monotonic() - started


async def read_without_worker(http: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    """The order as GET answers it with no worker: 200, not live, within ANSWER_WITHIN."""
    response, took = await timed_get(http, order_id)
    assert response.status_code == 200, response.text
    assert took < ANSWER_WITHIN, f"{order_id} took {took:.1f}s"
    body: dict[str, Any] = response.json()
    assert body["live"] is False, body
    return body


async def place_once(http: httpx.AsyncClient, stack: ProcessStack, order_id: str) -> httpx.Response:
    """The placement, sent once (no retry on 503)."""
    return await http.post(placement_path(), json=placement_example(order_id, stack.endpoint))


def invoice_sent(order: dict[str, Any]) -> bool:
    """Whether the order's invoice and tracking reached the marketplace."""
    return bool(order["invoice"] and order["invoice"].get("trackingSentAt"))


async def never_ran(client: Client, task_queue: str) -> str:
    """An order started on a task queue no worker polls, then terminated before its first
    workflow task, as an operator may: its workflow never ran."""
    order_id = new_order_id()
    order = OrderInput(
        marketplace_order_id=order_id,
        order_id=ids.seller_order_id(order_id),
        marketplace_services_endpoint="http://127.0.0.1:9/api/oms",
        lines=[OrderLine(sku="never-ran", quantity=2, price=100)],
        placed_at=datetime.now(UTC),
        lock_ttl_seconds=3600,
        late_call_window_seconds=0,
    )
    handle = await client.start_workflow(
        OrderWorkflow.run, order, id=ids.workflow_id(order_id), task_queue=task_queue
    )
    await handle.terminate("closed by an operator before it ran")
    return order_id


async def test_orders_are_read_while_the_workers_are_down(tmp_path: Path) -> None:
    async with (
        processes(
            tmp_path,
            workers=1,
            step_seconds=1.0,
            late_call_window="1h",
            env={"UPDATE_TIMEOUT_SECONDS": "3"},
        ) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        invoiced, placed, completed, fulfilling = (new_order_id() for _ in range(4))
        for order_id in (invoiced, placed, completed, fulfilling):
            assert (await place(http, stack, order_id)).status_code == 200
        for order_id in (invoiced, completed):
            assert (await dispatch(http, order_id)).status_code == 200
        live_invoiced = await until(http, invoiced, invoice_sent)
        await until(http, completed, invoice_sent)
        # An operator closes its late-call window: the workflow completes, its result the view.
        completed_handle = client.get_workflow_handle_for(
            OrderWorkflow.run, ids.workflow_id(completed)
        )
        await completed_handle.cancel()
        await completed_handle.result()
        live_completed = await order(http, completed)
        live_placed = await order(http, placed)
        assert live_invoiced["live"] is True and live_invoiced["workflowStatus"] == "Running"
        assert live_completed["live"] is True and live_completed["workflowStatus"] == "Completed"
        assert (await dispatch(http, fulfilling)).status_code == 200
        live_fulfilling = await until(http, fulfilling, lambda o: o["currentStep"] == "pack")

        stack.workers[0].kill9()  # mid-pack: no worker left on the task queue

        body = await read_without_worker(http, invoiced)
        assert body["workflowStatus"] == "Running"
        assert {k: body.get(k) for k in PUBLISHED} == {k: live_invoiced.get(k) for k in PUBLISHED}
        assert (body["status"], body["currentStep"]) == ("invoiced", None), body
        number = live_invoiced["invoice"]["invoiceNumber"]
        assert body["invoice"]["invoiceNumber"] == number, body
        assert body["invoice"]["invoiceValue"] == live_invoiced["invoice"]["invoiceValue"]

        body = await read_without_worker(http, fulfilling)
        assert (body["status"], body["currentStep"]) == ("fulfilling", "pack"), body
        assert body["dispatchedAt"] == live_fulfilling["dispatchedAt"]
        assert body["workflowStatus"] == "Running"

        body = await read_without_worker(http, placed)
        assert {k: body.get(k) for k in PUBLISHED} == {k: live_placed.get(k) for k in PUBLISHED}
        assert (body["dispatchedAt"], body["invoice"]) == (None, None), body

        # Completed: its result is the final view, whole (steps, receipts, invoice, tracking).
        body = await read_without_worker(http, completed)
        assert body["workflowStatus"] == "Completed"
        assert {k: v for k, v in body.items() if k not in MARKS} == {
            k: v for k, v in live_completed.items() if k not in MARKS
        }

        # Closed before its first workflow task: the query can never be answered (no history
        # to replay), with or without a worker; answered at once from its start.
        never = await never_ran(client, f"{stack.task_queue}-nobody")
        response, took = await timed_get(http, never)
        assert response.status_code == 200, response.text
        assert took < QUERY_SECONDS, f"took {took:.1f}s"
        body = response.json()
        assert (body["live"], body["workflowStatus"], body["status"]) == (
            False,
            "Terminated",
            "reserving",
        )
        assert body["items"] == [{"sku": "never-ran", "quantity": 2, "price": 100}]
        # Placed through the API while no worker runs (503 after UPDATE_TIMEOUT_SECONDS), then
        # terminated: what the API started it with.
        stranded = new_order_id()
        assert (await place_once(http, stack, stranded)).status_code == 503
        await client.get_workflow_handle(ids.workflow_id(stranded)).terminate("given up")
        body = await read_without_worker(http, stranded)
        assert (body["workflowStatus"], body["status"]) == ("Terminated", "reserving"), body
        assert body["placedAt"] and body["items"], body
        # No such order: 404, not a wait.
        response, took = await timed_get(http, new_order_id())
        assert response.status_code == 404 and took < QUERY_SECONDS, (response.text, took)

        # A worker again: the orders answer live, and go on.
        await asyncio.to_thread(stack.workers[0].start)
        body = await until(http, invoiced, lambda o: o["live"], within=60)
        assert body["workflowStatus"] == "Running" and body["invoice"] == live_invoiced["invoice"]
        body = await until(http, fulfilling, lambda o: o["live"] and o["status"] == "invoiced")
        assert [step["status"] for step in body["steps"]] == ["completed"] * 4, body

        # Temporal itself down: 503, and soon (the query and the reads without a worker are
        # bounded), not a hang.
        stack.temporal.kill9()
        response, took = await timed_get(http, invoiced)
        assert response.status_code == 503, response.text
        assert took < 2 * QUERY_SECONDS + 1.5, f"took {took:.1f}s"
