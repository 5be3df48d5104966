"""Tracking to delivery: after the invoice, the order asks the (simulated) carrier where the parcel
is, with a durable timer between polls, posts each new event to the marketplace
(`POST .../invoice/{invoiceNumber}/tracking`, VTEX's `requestUpdateTrackingStatus`, checked by the
fake marketplace) with `isDelivered` false, then true, and ends `delivered`; a cancellation after
the invoice is refused all along."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import WarehouseOrder
from tests.stack import Stack, new_order_id, running_stack
from workflows.parcel import ParcelToFollow, ParcelWorkflow


class NoTrackingWarehouse(SimulatedWarehouse):
    """A warehouse written before tracking existed: it has no `track`."""

    track = None  # type: ignore[assignment]


async def placed_and_dispatched(stack: Stack) -> str:
    """A new order of the spec's example, placed and dispatched; its marketplaceOrderId."""
    order_id = new_order_id()
    assert (await stack.place(order_id)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200
    return order_id


def following(temporal_env: WorkflowEnvironment, tmp_path: Path, **overrides: Any) -> Any:
    # The carrier: collected at once, in transit after 1 s, delivered after 2 s; polled every 1 s.
    values = {"tracking_poll_interval": "1s", "carrier_delivery_time": "2s"}
    return running_stack(temporal_env, tmp_path, **(values | overrides))


async def test_an_invoiced_order_follows_its_parcel_to_delivered(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 200
        assert (await stack.dispatch(order_id)).status_code == 200
        invoiced = await stack.wait_for(order_id, lambda o: o["status"] == "invoiced")

        # In transit: a cancellation is refused as after the invoice (the invoice goes again).
        refused = await stack.cancel(order_id)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "OrderInvoiced"

        order = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)
        after = await stack.cancel(order_id)
        parcel = temporal_env.client.get_workflow_handle(order["parcelWorkflowId"])
        history = [event async for event in parcel.fetch_history_events()]

    # The cancellation's update id is fixed: its retry gets the first answer.
    assert after.status_code == 409 and after.json() == refused.json()
    number = invoiced["invoice"]["invoiceNumber"]
    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    assert posts and all(post.valid for post in posts), [post.errors for post in posts]
    assert all(post.invoice_number == number for post in posts)
    assert all(post.path.endswith(f"/invoice/{number}/tracking") for post in posts)
    delivered = [post.body["isDelivered"] for post in posts]
    assert delivered[-1] is True and not any(delivered[:-1])
    # Each post has more events than the one before: a poll with nothing new posts nothing.
    counts = [len(post.body["events"]) for post in posts]
    assert counts == sorted(set(counts)) and counts[-1] == 3, counts
    last = posts[-1].body["events"]
    assert [event["description"] for event in last] == [
        "Collected by Simulated Carrier",
        "In transit to Rio de Janeiro",
        "Delivered",
    ]
    assert last[-1]["city"] == "Rio de Janeiro" and len(last[-1]["date"]) == len("2021-03-16")

    assert order["delivery"]["delivered"] is True
    assert order["delivery"]["eventsReported"] == 3
    assert order["invoicedAt"] < order["deliveredAt"]
    assert order["cancellation"]["outcome"] == "refused"
    # The parcel is followed in a workflow of its own, with durable timers between the polls.
    assert order["parcelWorkflowId"] == f"parcel-{order_id}"
    fired = [e for e in history if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
    assert fired, "no timer between polls"


async def test_a_tracking_status_the_marketplace_refuses_for_now_is_sent_again(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(
        temporal_env, tmp_path, carrier_delivery_time="1s", late_call_window="1m"
    ) as stack:
        stack.marketplace.fail_next("tracking_status", 2, status=503)
        order_id = await placed_and_dispatched(stack)
        order = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)
        # Delivered: a first cancellation is refused as after the invoice.
        refused = await stack.cancel(order_id)
        await stack.marketplace.wait_for_calls(2, kind="invoice", marketplace_order_id=order_id)

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "OrderInvoiced"
    assert "is delivered" in refused.json()["error"]["message"]
    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    assert [post.status for post in posts[:2]] == [503, 503]
    assert posts[-1].status == 200 and posts[-1].body["isDelivered"] is True
    assert order["delivery"]["reportError"] is None


async def test_an_operator_closing_the_order_stops_following_the_parcel(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(
            order_id, lambda o: o["delivery"] and o["delivery"]["eventsReported"] == 1
        )
        await stack.handle(order_id).cancel()
        view = await stack.handle(order_id).result()

    assert view.status == "invoiced"
    assert view.delivery is not None and view.delivery.stopped
    assert "operator" in view.delivery.stopped


async def test_with_no_tracking_interval_the_order_ends_invoiced(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:  # TRACKING_POLL_INTERVAL=0s
        order_id = await placed_and_dispatched(stack)
        view = await stack.handle(order_id).result()

    assert view.status == "invoiced" and view.delivery is None
    assert stack.marketplace.calls(kind="tracking_status") == []


async def test_a_delivered_status_the_marketplace_refuses_once_is_posted_again(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path, carrier_delivery_time="0s") as stack:
        stack.marketplace.fail_next("tracking_status", 1, status=400)
        order_id = await placed_and_dispatched(stack)
        order = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)

    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    assert [(post.status, post.body["isDelivered"]) for post in posts] == [(400, True), (200, True)]
    assert order["delivery"]["eventsReported"] == 3 and order["attention"] is None


async def test_a_delivered_status_not_taken_within_its_bound_3_times_is_delivered_with_attention(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Each post retried for MARKETPLACE_RETRY_FOR (2 s here), once a poll.
    async with following(
        temporal_env, tmp_path, carrier_delivery_time="0s", marketplace_retry_for="2s"
    ) as stack:
        stack.marketplace.fail_next("tracking_status", 1000, status=400)
        order_id = await placed_and_dispatched(stack)
        order = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=40)

    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    assert len(posts) >= 6 and {post.status for post in posts} == {400}
    assert order["delivery"]["reportRefusals"] == 3
    assert "refused the delivered status" in order["attention"]


async def test_an_operator_closing_the_order_stops_a_post_being_retried(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with following(temporal_env, tmp_path) as stack:
        stack.marketplace.fail_next("tracking_status", 1000, status=503)
        order_id = await placed_and_dispatched(stack)
        await stack.marketplace.wait_for_calls(
            2, kind="tracking_status", marketplace_order_id=order_id
        )
        await stack.handle(order_id).cancel()
        view = await asyncio.wait_for(stack.handle(order_id).result(), 10)

    assert view.status == "invoiced"
    assert view.delivery is not None and "operator" in (view.delivery.stopped or "")


async def test_a_warehouse_without_tracking_stops_following_visibly(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    factory = "tests.test_delivery:NoTrackingWarehouse.from_settings"
    async with following(temporal_env, tmp_path, warehouse=factory) as stack:
        order_id = await placed_and_dispatched(stack)
        view = await asyncio.wait_for(stack.handle(order_id).result(), 20)

    assert view.status == "invoiced"
    assert view.delivery is not None and "TrackingUnsupported" in (view.delivery.stopped or "")
    assert view.attention and "not followed" in view.attention


async def test_an_in_transit_status_refused_once_is_retried(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Refused once while in transit: a failed delivery, retried (the same post); not counted
    # against the delivered status, which goes through.
    async with following(temporal_env, tmp_path, carrier_delivery_time="4s") as stack:
        stack.marketplace.fail_next("tracking_status", 1, status=400)
        order_id = await placed_and_dispatched(stack)
        order = await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)

    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    counts = [(post.status, len(post.body["events"])) for post in posts]
    assert counts == [(400, 1), (200, 1), (200, 2), (200, 3)], counts
    assert order["attention"] is None and order["delivery"]["reportRefusals"] == 0


async def order_events(stack: Stack, order_id: str) -> int:
    return len([event async for event in stack.handle(order_id).fetch_history_events()])


async def test_the_orders_history_does_not_grow_with_polls(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # The same order, delivered after 2 s and after 6 s (about 3 and 7 polls): the polls are the
    # parcel's workflow's, and the order's history is the same length either way.
    counted = {}
    for delivery_time in ("2s", "6s"):
        async with following(
            temporal_env, tmp_path / delivery_time, carrier_delivery_time=delivery_time
        ) as stack:
            order_id = await placed_and_dispatched(stack)
            view = await asyncio.wait_for(stack.handle(order_id).result(), 30)
            assert view.status == "delivered"
            parcel = temporal_env.client.get_workflow_handle(view.parcel_workflow_id or "")
            polls = [
                event
                async for event in parcel.fetch_history_events()
                if event.event_type == EventType.EVENT_TYPE_TIMER_FIRED
            ]
            counted[delivery_time] = (await order_events(stack, order_id), len(polls))

    (quick, quick_polls), (slow, slow_polls) = counted["2s"], counted["6s"]
    assert slow_polls > quick_polls, counted
    assert quick == slow, counted
    # 72 on this code; 113 and 201 when the order polled itself (before issue 17).
    assert slow <= 75, counted


async def runs_of(temporal_env: WorkflowEnvironment, workflow_id: str) -> int:
    """How many runs a workflow has had, the last one included (each continued as new from the
    one before, as the first event of its history says)."""
    runs, run_id = 0, None
    while True:
        handle = temporal_env.client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        runs += 1
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id
        if not run_id:
            return runs


async def test_the_parcels_workflow_continues_as_new_keeping_what_the_marketplace_has(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # The carrier delivers after 6 s; the parcel's workflow, started here on its own with a run of
    # at most 30 events (a poll costs about 11), continues as new several times on the way.
    async with running_stack(
        temporal_env, tmp_path, carrier_delivery_time="6s", late_call_window="0s"
    ) as stack:
        order_id = await placed_and_dispatched(stack)
        invoiced = await stack.handle(order_id).result()  # tracking off: ends invoiced
        assert invoiced.invoice is not None
        job = ParcelToFollow(
            order_id=invoiced.order_id,
            marketplace_order_id=order_id,
            marketplace_services_endpoint=stack.endpoint,
            invoice_number=invoiced.invoice.invoice_number,
            warehouse_order=WarehouseOrder(
                order_id=invoiced.order_id, marketplace_order_id=order_id, lines=invoiced.items
            ),
            poll_seconds=1,
            send_bound_seconds=10,
            give_up_at=datetime.now(UTC) + timedelta(days=1),
            events_per_run=30,
        )
        handle = await temporal_env.client.start_workflow(
            ParcelWorkflow.run,
            job,
            id=f"parcel-test-{order_id}",
            task_queue=stack.settings.task_queue,
        )
        outcome = await asyncio.wait_for(handle.result(), 30)
        runs = await runs_of(temporal_env, handle.id)
        last_run = [event async for event in handle.fetch_history_events()]

    assert outcome.delivery.delivered and outcome.attention is None
    assert outcome.delivery.events_reported == 3
    assert runs >= 3, f"{runs} runs"
    assert len(last_run) <= 45, len(last_run)
    # Each post carried more events than the one before, across the runs: what the marketplace
    # had went with each continue-as-new.
    posts = stack.marketplace.calls(kind="tracking_status", marketplace_order_id=order_id)
    counts = [len(post.body["events"]) for post in posts]
    assert counts == [1, 2, 3], counts
