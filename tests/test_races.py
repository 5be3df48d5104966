"""One test per finding of the review "Correctness under races, retries and crashes" (issue 6),
each named after it, each failing on the code before the fix. The races are made certain, not
likely: a warehouse (tests/scripted_warehouse.py) that finishes a step despite its cancellation,
releases slowly, or refuses, chosen per order by the SKU it orders.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests import scripted_warehouse
from tests.stack import Stack, activity_events, new_order_id, placement_example, running_stack
from workflows.durations import lock_deadline

SCRIPTED = "tests.scripted_warehouse:ScriptedWarehouse.from_settings"


@pytest.fixture
async def stack(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    """The real stack with the scripted warehouse, 1 s steps, orders open for late calls."""
    async with running_stack(
        temporal_env,
        tmp_path,
        warehouse=SCRIPTED,
        fulfillment_step_seconds=1.0,
        late_call_window="1h",
    ) as running:
        yield running


async def place(stack: Stack, order_id: str, sku: str, **changes: Any) -> httpx.Response:
    """Place one unit of `sku`, with `changes` on top of the spec's example body."""
    body = placement_example(order_id, stack.endpoint, **changes)
    body["items"][0]["id"] = sku
    return await stack.http.post("/pvt/orders", json=body)


async def cancel_until_answered(
    stack: Stack, order_id: str, within: float = 20.0
) -> httpx.Response:
    """Call cancel as VTEX does: again while the answer is the empty "evaluating" 200."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await stack.cancel(order_id)
        if response.status_code != 200 or response.content:
            return response
        assert asyncio.get_running_loop().time() < deadline, "the cancellation never settled"
        await asyncio.sleep(0.2)


async def final(stack: Stack, order_id: str, within: float = 30.0) -> dict[str, Any]:
    """The order once it has ended."""
    return await stack.wait_for(
        order_id, lambda o: o["status"] in ("invoiced", "canceled", "expired"), within=within
    )


async def picking_stubbornly(stack: Stack) -> tuple[str, str]:
    """An order dispatched and picking, whose pick finishes even when cancelled; its id and
    SKU."""
    order_id, sku = new_order_id(), f"stubborn-{new_order_id()}"
    assert (await place(stack, order_id, sku)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200
    await scripted_warehouse.started["pick", f"SLR-{order_id}"].wait()
    return order_id, sku


async def test_1_a_step_that_finishes_despite_the_cancel_does_not_ship_the_order(
    stack: Stack,
) -> None:
    order_id, sku = await picking_stubbornly(stack)

    response = await cancel_until_answered(stack, order_id)

    assert response.status_code == 200, response.text
    assert response.json()["receipt"]
    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    # The pick completed anyway; nothing after it started.
    assert [(s["name"], s["status"]) for s in order["steps"]] == [("pick", "completed")]
    assert stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id) == []
    level = await stack.warehouse.stock_level(sku)
    assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)


async def test_1_an_operator_cancel_during_a_step_that_finishes_anyway_is_not_lost(
    stack: Stack,
) -> None:
    order_id, sku = await picking_stubbornly(stack)

    await stack.handle(order_id).cancel()

    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    assert order["cancellation"]["requestedBy"] == "seller"
    assert stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id) == []
    await stack.marketplace.wait_for_calls(1, kind="cancel", marketplace_order_id=order_id)
    assert (await stack.warehouse.stock_level(sku)).reserved == 0


async def test_2_a_dispatch_while_the_expiry_releases_the_stock_is_refused(stack: Stack) -> None:
    order_id, sku = new_order_id(), f"slowrelease-{new_order_id()}"
    body_changes = {"shippingData": {"logisticsInfo": [_logistics(lock_ttl="1s")]}}
    assert (await place(stack, order_id, sku, **body_changes)).status_code == 200
    await scripted_warehouse.started["release", f"SLR-{order_id}"].wait()

    dispatch = await stack.dispatch(order_id)

    assert dispatch.status_code == 409, dispatch.text
    assert dispatch.json()["error"]["code"] == "OrderExpired"
    order = await final(stack, order_id)
    assert order["status"] == "expired"
    assert order["dispatch"] is None
    assert (await stack.warehouse.stock_level(sku)).available == 1000


async def test_3_an_operator_cancel_during_a_slow_reservation_leaks_no_stock(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"slowreserve-{new_order_id()}"
    placement = asyncio.create_task(place(stack, order_id, sku))
    await scripted_warehouse.started["reserve", f"SLR-{order_id}"].wait()

    await stack.handle(order_id).cancel()

    # The stock existed and was reserved: the placement is answered as placed, then canceled.
    assert (await placement).status_code == 200
    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    assert order["compensations"] == ["release_stock"]
    level = await stack.warehouse.stock_level(sku)
    assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)


async def test_4_a_placement_repeated_with_other_items_is_a_conflict(stack: Stack) -> None:
    order_id = new_order_id()
    assert (await place(stack, order_id, "sku-first")).status_code == 200

    again = await place(stack, order_id, "sku-other")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "PlacementConflict"
    assert (await stack.order(order_id))["items"][0]["sku"] == "sku-first"
    # The same placement again is still the same answer.
    assert (await place(stack, order_id, "sku-first")).status_code == 200
    assert (await stack.warehouse.stock_level("sku-other")).reserved == 0


async def test_5_a_body_naming_another_order_is_a_conflict_whatever_came_before(
    stack: Stack,
) -> None:
    order_id, other_id = new_order_id(), new_order_id()
    assert (await place(stack, order_id, "sku-5")).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200

    path = f"/pvt/orders/SLR-{order_id}"
    wrong_dispatch = await stack.http.post(f"{path}/fulfill", json={"marketplaceOrderId": other_id})
    assert (await cancel_until_answered(stack, order_id)).status_code in (200, 409)
    wrong_cancel = await stack.http.post(f"{path}/cancel", json={"marketplaceOrderId": other_id})

    for response in (wrong_dispatch, wrong_cancel):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "MarketplaceOrderIdMismatch"


@pytest.mark.parametrize("late_call_window", ["1h", "0s"])
async def test_6_a_cancellation_of_an_expired_order_is_confirmed_open_or_closed(
    temporal_env: WorkflowEnvironment, tmp_path: Path, late_call_window: str
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window=late_call_window) as stack:
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        body["shippingData"]["logisticsInfo"][0]["lockTTL"] = "1s"
        assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
        assert (await final(stack, order_id))["status"] == "expired"
        if late_call_window == "0s":
            await stack.handle(order_id).result()  # closed

        first = await stack.cancel(order_id)
        again = await stack.cancel(order_id)

        assert first.status_code == 200, first.text
        assert first.json()["orderId"] == f"SLR-{order_id}"
        assert again.json() == first.json()


@pytest.mark.parametrize("late_call_window", ["1h", "0s"])
async def test_6_a_cancellation_of_an_order_refused_for_stock_is_confirmed(
    temporal_env: WorkflowEnvironment, tmp_path: Path, late_call_window: str
) -> None:
    async with running_stack(
        temporal_env, tmp_path, late_call_window=late_call_window, default_stock=0
    ) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 409
        if late_call_window == "0s":
            await stack.handle(order_id).result()

        first = await stack.cancel(order_id)
        again = await stack.cancel(order_id)

        assert first.status_code == 200, first.text
        assert first.json()["receipt"]
        assert again.json() == first.json()


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("items[0].price", 10**19),
        ("items[0].quantity", 10**19),
        ("marketplacePaymentValue", 10**19),
    ],
)
async def test_7_numbers_beyond_what_the_system_holds_are_a_400(
    stack: Stack, where: str, value: int
) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    if where.startswith("items"):
        body["items"][0][where.split(".")[1]] = value
    else:
        body[where] = value

    response = await stack.http.post("/pvt/orders", json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["field"] == where
    assert (await stack.http.get(f"/pvt/orders/SLR-{order_id}")).status_code == 404


async def test_7_an_order_whose_value_overflows_is_a_400(stack: Stack) -> None:
    body = placement_example(new_order_id(), stack.endpoint)
    body["items"][0] |= {"price": 10**12, "quantity": 1_000_000}

    response = await stack.http.post("/pvt/orders", json=body)

    assert response.status_code == 400
    assert "value" in response.json()["error"]["message"]


async def test_7_a_warehouse_fault_ends_the_step_and_cancels_the_order(stack: Stack) -> None:
    order_id, sku = new_order_id(), f"brokeninvoice-{new_order_id()}"
    assert (await place(stack, order_id, sku)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200

    order = await final(stack, order_id)

    assert order["status"] == "canceled"
    assert "invoice failed: WarehouseFailure: OverflowError" in order["statusReason"]
    assert order["steps"][-1] == order["steps"][-1] | {"name": "invoice", "status": "failed"}
    assert order["compensations"] == ["release_stock", "void_label"]
    cancels = await stack.marketplace.wait_for_calls(
        1, kind="cancel", marketplace_order_id=order_id
    )
    assert cancels[0].valid
    assert "OverflowError" in cancels[0].body["reason"]
    assert (await stack.warehouse.stock_level(sku)).reserved == 0
    # One attempt: a fault retrying cannot fix is not retried.
    attempts = [e for e in await activity_events(stack.handle(order_id)) if e[0] == "issue_invoice"]
    assert attempts == [("issue_invoice", "failed")]


async def test_8_a_placement_retried_after_its_workflow_was_terminated_is_a_409(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"slowreserve-{new_order_id()}"
    placement = asyncio.create_task(place(stack, order_id, sku))
    await scripted_warehouse.started["reserve", f"SLR-{order_id}"].wait()

    await stack.handle(order_id).terminate("an operator's mistake")

    in_flight = await placement
    retried = await place(stack, order_id, sku)
    for response in (in_flight, retried):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "OrderClosed"


async def test_8_a_placement_retried_after_a_normal_end_answers_the_same(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window="0s") as stack:
        order_id = new_order_id()
        first = await stack.place(order_id)
        assert (await stack.cancel(order_id)).status_code == 200
        await stack.handle(order_id).result()

        again = await stack.place(order_id)

        assert again.status_code == 200, again.text
        assert again.json()["orderId"] == first.json()["orderId"]


async def test_9_an_operator_cancel_during_a_marketplace_cancellation_tells_it_nothing(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"slowrelease-{new_order_id()}"
    assert (await place(stack, order_id, sku)).status_code == 200
    cancel = asyncio.create_task(cancel_until_answered(stack, order_id))
    await scripted_warehouse.started["release", f"SLR-{order_id}"].wait()

    await stack.handle(order_id).cancel()

    assert (await cancel).status_code == 200
    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    assert order["cancellation"]["requestedBy"] == "marketplace"
    await asyncio.sleep(1)  # A seller cancellation would be sent right after the release.
    assert stack.marketplace.calls(kind="cancel", marketplace_order_id=order_id) == []


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, b"[" * 40 + b"]" * 40],
    ids=["100k-brackets", "5k-objects", "40-levels"],
)
async def test_11_deeply_nested_bodies_are_a_400(stack: Stack, body: bytes) -> None:
    for path in ("/pvt/orders", "/pvt/orders/SLR-1/fulfill", "/pvt/orders/SLR-1/cancel"):
        response = await stack.http.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "MalformedJson"


async def test_12_a_step_refused_for_good_compensates_and_tells_the_marketplace(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"damaged-{new_order_id()}"
    assert (await place(stack, order_id, sku)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200

    order = await final(stack, order_id)

    assert order["status"] == "canceled"
    assert order["statusReason"] == (
        f"canceled by the seller: pick failed: DamagedItem: order SLR-{order_id}: an item was "
        "found damaged at pick"
    )
    assert order["compensations"] == ["release_stock"]
    cancels = await stack.marketplace.wait_for_calls(
        1, kind="cancel", marketplace_order_id=order_id
    )
    assert "damaged" in cancels[0].body["reason"]
    assert (await stack.warehouse.stock_level(sku)).available == 1000
    # A later marketplace cancellation is confirmed with the seller's receipt.
    assert (await stack.cancel(order_id)).json()["receipt"] == order["cancellation"]["receipt"][
        "receipt"
    ]


@pytest.mark.parametrize("statuses", [(401, 403), (404, 409)])
async def test_12_a_marketplace_refusal_that_ops_can_fix_is_retried_visibly(
    temporal_env: WorkflowEnvironment, tmp_path: Path, statuses: tuple[int, int]
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        for status in statuses:
            stack.marketplace.fail_next("invoice", 1, status=status)
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)

        retrying = await stack.wait_for(
            order_id,
            lambda o: any(
                c["activity"] == "send_invoice" and c["attempt"] >= 2 for c in o["pendingCalls"]
            ),
        )
        delivered = await stack.wait_for(order_id, lambda o: o["invoice"]["sentAt"], within=30)

        pending = [c for c in retrying["pendingCalls"] if c["activity"] == "send_invoice"]
        assert f"answered {statuses[0]}" in pending[0]["lastError"]
        assert delivered["invoice"]["sendError"] is None
        invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
        assert [c.status for c in invoices] == [*statuses, 200]
        assert len({c.invoice_number for c in invoices}) == 1


def test_12_lock_ttl_in_business_days_skips_weekends() -> None:
    friday_noon = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert lock_deadline("1bd", friday_noon) == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert lock_deadline("3bd", friday_noon) == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert lock_deadline("3d", friday_noon) == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def test_12_a_placement_lock_ttl_in_business_days_counts_them(stack: Stack) -> None:
    order_id = new_order_id()
    body_changes = {"shippingData": {"logisticsInfo": [_logistics(lock_ttl="5bd")]}}
    assert (await place(stack, order_id, "sku-bd", **body_changes)).status_code == 200

    order = await stack.order(order_id)

    placed = datetime.fromisoformat(order["placedAt"])
    assert datetime.fromisoformat(order["lockExpiresAt"]) == lock_deadline("5bd", placed)


def _logistics(lock_ttl: str) -> dict[str, Any]:
    return {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": lock_ttl, "price": 0}
