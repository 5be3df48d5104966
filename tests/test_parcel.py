"""The parcel's own workflow under the interleavings an adversarial review tried: an order closed,
terminated or given up while its parcel's workflow had continued as new, that workflow terminated
or cancelled by hand, a resend in flight when the parcel is delivered, an order id made to collide
with a parcel's, and what GET shows of a parcel being followed (its attention and retries)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

import workflows.parcel
from tests.stack import Stack, new_order_id
from tests.test_delivery import following, placed_and_dispatched, runs_of
from workflows.parcel import ParcelOutcome


class ShortRuns(workflows.parcel.ParcelToFollow):
    """The order's parcel continues as new after a couple of polls."""

    events_per_run: int = 30


async def continued_as_new(temporal_env: WorkflowEnvironment, stack: Stack, order_id: str) -> str:
    """The order's parcel's workflow id, once that workflow has continued as new at least once."""
    view = await stack.wait_for(order_id, lambda o: o["parcelWorkflowId"] is not None)
    parcel_id: str = view["parcelWorkflowId"]
    for _ in range(60):
        if await runs_of(temporal_env, parcel_id) >= 2:
            return parcel_id
        await asyncio.sleep(0.5)
    raise AssertionError(f"{parcel_id} never continued as new")


async def test_an_operator_closes_an_order_whose_parcel_continued_as_new(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflows.parcel, "ParcelToFollow", ShortRuns)
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        parcel_id = await continued_as_new(temporal_env, stack, order_id)
        handle = stack.handle(order_id)
        await handle.cancel()  # an operator closes the order in Temporal
        closed = await asyncio.wait_for(handle.result(), 20)
        parcel = await temporal_env.client.get_workflow_handle(parcel_id).describe()

    assert closed.delivery is not None
    assert closed.delivery.stopped == "an operator closed the order in Temporal"
    assert parcel.status != WorkflowExecutionStatus.RUNNING


async def test_the_parcels_workflow_terminated_keeps_what_the_marketplace_has(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        view = await stack.wait_for(
            order_id, lambda o: o["delivery"] and o["delivery"]["eventsReported"] >= 1
        )
        parcel = temporal_env.client.get_workflow_handle(view["parcelWorkflowId"])
        await parcel.terminate(reason="by hand in the UI")
        closed = await asyncio.wait_for(stack.handle(order_id).result(), 20)
        order = await stack.order(order_id)  # its delivery read from the parcel's history

    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    taken = [p for p in posts if p.status == 200]
    assert taken, posts
    assert closed.status == "invoiced" and closed.attention
    assert "not followed any more" in closed.attention and "terminated" in closed.attention
    # What the order says the marketplace has, against what it has.
    assert order["delivery"]["eventsReported"] == len(taken[-1].body["events"]), order


async def test_the_parcels_workflow_cancelled_by_hand_says_so(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        view = await stack.wait_for(
            order_id, lambda o: o["delivery"] and o["delivery"]["eventsReported"] >= 1
        )
        parcel = temporal_env.client.get_workflow_handle(view["parcelWorkflowId"])
        await parcel.cancel()  # the parcel's workflow, not the order, cancelled in the UI
        closed = await asyncio.wait_for(stack.handle(order_id).result(), 20)

    assert closed.delivery is not None
    assert closed.delivery.stopped == (
        "its workflow was cancelled in Temporal (by hand, or its order terminated)"
    ), closed.delivery


async def test_an_undelivered_invoice_keeps_its_attention_once_the_parcel_is_delivered(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(
        temporal_env, tmp_path, carrier_delivery_time="8s", marketplace_retry_for="2s"
    ) as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(order_id, lambda o: o["delivery"] is not None)
        # In transit, the marketplace asks to cancel: refused, the invoice goes again, and the
        # marketplace now refuses it for longer than MARKETPLACE_RETRY_FOR.
        stack.marketplace.fail_next("invoice", 1000, status=503)
        refused = await stack.cancel(order_id)
        assert refused.status_code == 409, refused.text
        waiting = await stack.wait_for(
            order_id, lambda o: "resend_invoice" in (o["attention"] or ""), within=20
        )
        assert waiting["status"] == "invoiced"
        delivered = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)
        await stack.handle(order_id).terminate()

    # The marketplace still lacks the invoice it was sent again: the order must still say so.
    assert delivered["attention"] is not None, delivered


async def test_stop_tracking_and_retry_now_reach_a_parcel_that_continued_as_new(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflows.parcel, "ParcelToFollow", ShortRuns)
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        await continued_as_new(temporal_env, stack, order_id)
        retry = await stack.ops.post(f"/orders/SLR-{order_id}/retry-now", json={"by": "ana"})
        call = {"by": "carla", "reason": "picked up"}
        stopped = await stack.ops.post(f"/orders/SLR-{order_id}/stop-tracking", json=call)
        again = await stack.ops.post(f"/orders/SLR-{order_id}/stop-tracking", json=call)
        closed = await asyncio.wait_for(stack.handle(order_id).result(), 20)

    assert retry.status_code == 200, retry.text
    assert stopped.status_code == 200, stopped.text
    assert again.status_code != 200, again.text
    assert closed.delivery is not None
    assert closed.delivery.stopped == "given up by carla: picked up"


async def test_an_order_terminated_stops_a_parcel_that_continued_as_new(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflows.parcel, "ParcelToFollow", ShortRuns)
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        parcel_id = await continued_as_new(temporal_env, stack, order_id)
        await stack.handle(order_id).terminate(reason="by hand")
        parcel = temporal_env.client.get_workflow_handle(parcel_id, result_type=ParcelOutcome)
        outcome = await asyncio.wait_for(parcel.result(), 20)

    assert outcome.delivery.stopped == (
        "its workflow was cancelled in Temporal (by hand, or its order terminated)"
    )


async def test_a_tracking_post_being_retried_is_listed_among_the_orders_pending_calls(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        stack.marketplace.fail_next("tracking_status", 1000, status=503)
        order_id = await placed_and_dispatched(stack)
        await stack.marketplace.wait_for_calls(
            3, kind="tracking_status", marketplace_order_id=order_id
        )
        order = await stack.order(order_id)
        await stack.handle(order_id).terminate()

    # What GET /pvt/orders/{orderId} showed when the order itself posted (pendingCalls: each
    # attempt and its last error, the docs' promise in workflows/calls.py).
    summaries = [call["activity"] for call in order["pendingCalls"]]
    assert "send_tracking_status" in summaries, order["pendingCalls"]


async def test_an_order_whose_id_ends_in_parcel_does_not_take_another_orders_parcel_id(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="2s") as stack:
        order_id = new_order_id()
        # Valid marketplaceOrderIds (letters, digits, . _ : -), placed and left waiting: were the
        # parcel's workflow id `order-{id}-parcel`, the first would hold it.
        squatter = f"{order_id}-parcel"
        assert (await stack.place(f"parcel-{order_id}")).status_code == 200
        assert (await stack.place(squatter)).status_code == 200
        assert (await stack.place(order_id)).status_code == 200
        assert (await stack.dispatch(order_id)).status_code == 200
        try:
            view = await asyncio.wait_for(stack.handle(order_id).result(), 30)
        finally:
            await stack.handle(squatter).terminate()
            await stack.handle(f"parcel-{order_id}").terminate()
            described = await stack.handle(order_id).describe()

    assert described.status == WorkflowExecutionStatus.COMPLETED, described.status
    assert view.status == "delivered", view


async def test_a_resend_in_flight_when_the_parcel_is_delivered_lets_the_order_close(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="3s") as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(order_id, lambda o: o["delivery"] is not None)
        # A refused cancellation sends the invoice again, beside the following; the marketplace
        # takes it at the 5th attempt (about 15 s), after the parcel is delivered.
        stack.marketplace.fail_next("invoice", 4, status=503)
        refused = await stack.cancel(order_id)
        assert refused.status_code == 409, refused.text
        handle = stack.handle(order_id)
        try:
            view = await asyncio.wait_for(handle.result(), 40)
        finally:
            failed_tasks = [
                event.workflow_task_failed_event_attributes.failure.message
                async for event in handle.fetch_history_events()
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            ]

    invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
    assert [call.status for call in invoices][-1] == 200
    assert not failed_tasks, failed_tasks
    assert view.status == "delivered" and view.invoice is not None
    assert view.invoice.resent_count == 1
