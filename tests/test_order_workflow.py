"""The order workflow on a real Temporal dev server: its states, its cancellations, its retries.

Each test asserts what ops would see: the workflow history, the warehouse ledger, what reached
the marketplace.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.stack import activity_events, new_order_id, placement_example, running_stack

SKU = "123456789abc"  # the SKU of the spec's placement example


async def test_happy_path_reaches_invoiced(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 200
        assert (await stack.dispatch(order_id)).status_code == 200

        order = await stack.wait_for(
            order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"]
        )

        assert order["status"] == "invoiced"
        assert [step["name"] for step in order["steps"]] == ["pick", "pack", "ship", "invoice"]
        assert all(step["status"] == "completed" for step in order["steps"])
        assert order["invoice"]["invoiceValue"] == 2499 + 1099  # item + freight, in cents
        invoice_number = order["invoice"]["invoiceNumber"]
        invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
        trackings = stack.marketplace.calls(kind="tracking", marketplace_order_id=order_id)
        assert [(c.invoice_number, c.valid) for c in invoices] == [(invoice_number, True)]
        assert [(c.invoice_number, c.valid) for c in trackings] == [(invoice_number, True)]
        assert trackings[0].body["trackingNumber"] == order["tracking"]["trackingNumber"]
        assert invoices[0].query == "an=teststore"
        assert invoices[0].path == f"/api/oms/pvt/orders/{order_id}/invoice"

        assert await activity_events(stack.handle(order_id)) == [
            ("reserve_stock", "completed"),
            ("pick_items", "completed"),
            ("pack_items", "completed"),
            ("ship_order", "completed"),
            ("issue_invoice", "completed"),
            ("send_invoice", "completed"),
            ("send_tracking", "completed"),
        ]
        level = await stack.warehouse.stock_level(SKU)
        assert (level.available, level.reserved, level.shipped) == (999, 0, 1)
        # late_call_window is 0s here: the workflow closes once the order is invoiced.
        result = await stack.handle(order_id).result()
        assert result.status == "invoiced"
        # The search attributes given at the start, one upsert per status change, 4 memo upserts
        # (placed, fulfilling, invoiced, closesAt) for GET while no worker answers. 61, measured
        # once the release folded the patches (65 before: the operators-in-control marker and
        # its TemporalChangeVersion upsert, and the older ones' `fewer-events`).
        events = [event async for event in stack.handle(order_id).fetch_history_events()]
        assert len(events) <= 61, [EventType.Name(event.event_type) for event in events]


async def test_cancel_before_dispatch_releases_the_stock(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 200
        assert (await stack.warehouse.stock_level(SKU)).reserved == 1

        response = await stack.cancel(order_id, reason="payment denied")

        assert response.status_code == 200
        assert response.json()["orderId"] == f"SLR-{order_id}"
        order = await stack.order(order_id)
        assert order["status"] == "canceled"
        assert order["cancellation"]["reason"] == "payment denied"
        assert order["cancellation"]["outcome"] == "confirmed"
        assert order["steps"] == []
        assert await activity_events(stack.handle(order_id)) == [
            ("reserve_stock", "completed"),
            ("release_stock", "completed"),
        ]
        level = await stack.warehouse.stock_level(SKU)
        assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)
        assert stack.marketplace.calls(marketplace_order_id=order_id) == []


async def test_cancel_mid_step_aborts_the_running_activity(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # A 30 s pick: the cancellation must stop it mid-way, not wait for its end.
    async with running_stack(temporal_env, tmp_path, fulfillment_step_seconds=30) as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        await stack.wait_for(order_id, lambda o: o["currentStep"] == "pick")
        await asyncio.sleep(0.5)  # well into the step

        started = time.monotonic()
        response = await stack.cancel(order_id, cancellationRequestId="req-1")
        elapsed = time.monotonic() - started

        assert response.status_code == 200, response.text
        assert response.json()["receipt"]
        assert elapsed < 5, f"the cancellation took {elapsed:.1f}s: the step was not aborted"
        order = await stack.order(order_id)
        assert order["status"] == "canceled"
        assert order["steps"][0]["name"] == "pick"
        assert order["steps"][0]["status"] == "cancelled"
        assert order["cancellation"]["cancellationRequestId"] == "req-1"
        # The history shows the activity cancelled, not completed, then the compensation.
        assert await activity_events(stack.handle(order_id)) == [
            ("reserve_stock", "completed"),
            ("pick_items", "canceled"),
            ("release_stock", "completed"),
        ]
        level = await stack.warehouse.stock_level(SKU)
        assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)
        movements = [
            (e.movement, e.quantity) for e in await stack.warehouse.ledger(f"SLR-{order_id}")
        ]
        assert movements == [("reserve", 1), ("release", 1)]


async def test_cancel_during_invoice_voids_the_label(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, fulfillment_step_seconds=2.5) as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        await stack.wait_for(order_id, lambda o: o["currentStep"] == "invoice")

        response = await stack.cancel(order_id)

        assert response.status_code == 200, response.text
        order = await stack.order(order_id)
        assert order["status"] == "canceled"
        assert order["invoice"] is None
        assert order["compensations"] == ["release_stock", "void_label"]
        assert await activity_events(stack.handle(order_id)) == [
            ("reserve_stock", "completed"),
            ("pick_items", "completed"),
            ("pack_items", "completed"),
            ("ship_order", "completed"),
            ("issue_invoice", "canceled"),
            ("release_stock", "completed"),
            ("void_label", "completed"),
        ]
        record = await stack.warehouse.order_record(f"SLR-{order_id}")
        assert record is not None
        assert record["label"]["voided"] is True
        assert record["invoice"] is None
        assert (await stack.warehouse.stock_level(SKU)).available == 1000
        assert stack.marketplace.calls(marketplace_order_id=order_id) == []


async def test_cancel_after_the_invoice_is_refused_and_the_invoice_resent(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window="1h") as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        order = await stack.wait_for(
            order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"]
        )

        response = await stack.cancel(order_id)

        assert response.status_code == 409
        assert response.json()["error"]["code"] == "OrderInvoiced"
        invoice_number = order["invoice"]["invoiceNumber"]
        assert response.json()["error"]["message"].count(invoice_number) == 1
        # The invoice goes out again beside the refusal.
        invoices = await stack.marketplace.wait_for_calls(
            2, kind="invoice", marketplace_order_id=order_id
        )
        assert [c.invoice_number for c in invoices] == [invoice_number, invoice_number]
        order = await stack.wait_for(order_id, lambda o: o["invoice"]["resentCount"] == 1)
        assert order["status"] == "invoiced"
        # The refused request is kept on the order, for ops.
        assert order["cancellation"]["outcome"] == "refused"
        assert order["closesAt"] is not None
        # A retried cancellation gets the same refusal from Temporal, without a third send.
        again = await stack.cancel(order_id)
        assert again.status_code == 409
        assert len(stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)) == 2
        assert (await stack.warehouse.stock_level(SKU)).shipped == 1


async def test_a_closed_invoiced_order_still_refuses(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window="0s") as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        await stack.handle(order_id).result()  # closed

        response = await stack.cancel(order_id)

        assert response.status_code == 409
        assert response.json()["error"]["code"] == "OrderInvoiced"
        # The order's state still answers; dispatch retries still get their receipt.
        assert (await stack.order(order_id))["status"] == "invoiced"
        assert (await stack.dispatch(order_id)).status_code == 200


async def test_retried_calls_are_deduplicated_by_temporal(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, fulfillment_step_seconds=30) as stack:
        order_id = new_order_id()
        placements = await asyncio.gather(*(stack.place(order_id) for _ in range(3)))
        assert {r.status_code for r in placements} == {200}
        assert {r.json()["orderId"] for r in placements} == {f"SLR-{order_id}"}

        dispatches = await asyncio.gather(*(stack.dispatch(order_id) for _ in range(3)))
        # Either id in the path reaches the same order.
        dispatches.append(await stack.dispatch(order_id, path_id=order_id))
        assert {r.status_code for r in dispatches} == {200}
        assert len({(r.json()["receipt"], r.json()["date"]) for r in dispatches}) == 1

        cancels = await asyncio.gather(*(stack.cancel(order_id) for _ in range(3)))
        assert {r.status_code for r in cancels} == {200}
        assert len({r.json()["receipt"] for r in cancels}) == 1
        later = await stack.cancel(order_id, path_id=order_id)
        assert later.json() == cancels[0].json()

        handle = stack.handle(order_id)
        history = await handle.fetch_history()
        types = [event.event_type for event in history.events]
        assert types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED) == 1
        assert types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) == 3
        assert [name for name, _ in await activity_events(handle)].count("reserve_stock") == 1
        assert [name for name, _ in await activity_events(handle)].count("pick_items") == 1
        assert (await stack.warehouse.stock_level(SKU)).available == 1000


async def test_invoice_retries_carry_the_same_invoice_number(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        stack.marketplace.fail_next("invoice", 2, status=503)
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)

        order = await stack.wait_for(
            order_id, lambda o: o["invoice"] and o["invoice"]["sentAt"], within=30
        )

        invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
        assert [c.status for c in invoices] == [503, 503, 200]
        assert {c.invoice_number for c in invoices} == {order["invoice"]["invoiceNumber"]}


async def test_a_marketplace_400_is_a_failed_delivery_retried_until_a_200(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        stack.marketplace.fail_next("invoice", 1, status=400)
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)

        order = await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["sentAt"])

        assert order["status"] == "invoiced"
        assert order["invoice"]["sendError"] is None and order["attention"] is None
        invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
        assert [c.status for c in invoices] == [400, 200]


async def test_out_of_stock_placement_is_refused(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, default_stock=1) as stack:
        order_id = new_order_id()
        body_items = [{"id": "sku-scarce", "quantity": 2, "seller": "1", "price": 100}]

        response = await stack.place(order_id, items=body_items)

        assert response.status_code == 409
        assert response.json()["error"]["code"] == "OutOfStock"
        assert "sku-scarce" in response.json()["error"]["message"]
        # Answered at once; then the order releases what a late attempt might hold, and ends.
        order = await stack.wait_for(order_id, lambda o: o["status"] == "canceled")
        assert order["statusReason"].startswith("OutOfStock")
        dispatch = await stack.dispatch(order_id)
        assert dispatch.status_code == 409
        assert dispatch.json()["error"]["code"] == "OrderCanceled"
        assert (await stack.warehouse.stock_level("sku-scarce")).reserved == 0
        assert await stack.warehouse.ledger(f"SLR-{order_id}") == []


async def test_cancel_answers_empty_while_evaluating_then_confirms(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # The compensation takes 2 s and the API waits 0.5 s: the first answer is "evaluating".
    async with running_stack(
        temporal_env,
        tmp_path,
        warehouse="tests.slow_warehouse:SlowReleaseWarehouse.from_settings",
        fulfillment_step_seconds=30,
        cancel_confirm_seconds=0.5,
    ) as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        await stack.wait_for(order_id, lambda o: o["currentStep"] == "pick")

        first = await stack.cancel(order_id)

        assert first.status_code == 200
        assert first.content == b""
        assert (await stack.order(order_id))["cancellation"]["outcome"] == "pending"
        deadline = time.monotonic() + 10
        while True:
            again = await stack.cancel(order_id)
            assert again.status_code == 200
            if again.content:
                break
            assert time.monotonic() < deadline, "the cancellation was never confirmed"
        confirmed = again.json()
        assert set(confirmed) == {"date", "marketplaceOrderId", "orderId", "receipt"}
        assert (await stack.cancel(order_id)).json() == confirmed
        order = await stack.order(order_id)
        assert order["status"] == "canceled"
        assert order["cancellation"]["receipt"] == confirmed
        assert order["cancellation"]["outcome"] == "confirmed"


async def test_dispatch_of_a_canceled_order_is_a_conflict(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window="1h") as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        assert (await stack.cancel(order_id)).status_code == 200

        response = await stack.dispatch(order_id)

        assert response.status_code == 409
        assert response.json()["error"]["code"] == "OrderCanceled"


async def test_an_operator_cancelling_the_workflow_cancels_the_order(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, fulfillment_step_seconds=30) as stack:
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)
        await stack.wait_for(order_id, lambda o: o["currentStep"] == "pick")

        await stack.handle(order_id).cancel()  # what "Cancel" in the Temporal UI does

        order = await stack.wait_for(
            order_id,
            lambda o: o["cancellation"] and o["cancellation"]["marketplaceNotifiedAt"],
        )
        assert order["status"] == "canceled"
        assert order["statusReason"].startswith("canceled by the seller")
        assert order["cancellation"]["requestedBy"] == "seller"
        assert await activity_events(stack.handle(order_id)) == [
            ("reserve_stock", "completed"),
            ("pick_items", "canceled"),
            ("release_stock", "completed"),
            ("send_cancellation", "completed"),
        ]
        cancels = stack.marketplace.calls(kind="cancel", marketplace_order_id=order_id)
        assert [(c.valid, c.path) for c in cancels] == [
            (True, f"/api/oms/pvt/orders/{order_id}/cancel")
        ]
        assert "operator" in cancels[0].body["reason"]
        assert (await stack.warehouse.stock_level(SKU)).available == 1000
        # The order ended as the seller decided: the workflow completes, it is not left cancelled.
        assert (await stack.handle(order_id).result()).status == "canceled"


async def test_an_expired_order_refuses_dispatch_and_confirms_cancel(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # A real 2 s lockTTL (the 8-day one is in test_lock_ttl.py, on the time-skipping server).
    async with running_stack(temporal_env, tmp_path, late_call_window="1h") as stack:
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        body["shippingData"]["logisticsInfo"][0]["lockTTL"] = "2s"
        assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200

        order = await stack.wait_for(order_id, lambda o: o["status"] == "expired", within=15)

        assert order["compensations"] == ["release_stock"]
        assert (await stack.warehouse.stock_level(SKU)).available == 1000
        dispatch = await stack.dispatch(order_id)
        assert dispatch.status_code == 409
        assert dispatch.json()["error"]["code"] == "OrderExpired"
        cancel = await stack.cancel(order_id)
        assert cancel.status_code == 200
        assert cancel.json()["orderId"] == f"SLR-{order_id}"
        assert (await stack.order(order_id))["status"] == "expired"
