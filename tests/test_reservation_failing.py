"""A reservation the warehouse keeps failing (issue 16, item 5), on the real stack: the placement
is answered 503 with `Retry-After` and why; the order shows the retries (`pendingCalls`, its
`attention`, the Temporal UI's current details); the same placement retried once the warehouse is
back is answered 200; a cancellation meanwhile ends the retries, is confirmed, and holds nothing.

The warehouse is tests/scripted_warehouse.py's `failreserve-*`, failing until the test says it is
back. Each test failed on the code before: the reservation retried inside the workflow task,
unseen, and the placement's 503 only said that no worker answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.testing import WorkflowEnvironment

from tests import scripted_warehouse
from tests.stack import Stack, activity_events, new_order_id, running_stack
from tests.test_races import SCRIPTED, cancel_until_answered, final, place

# Above the workflow's quick local tries (OrderWorkflow.RESERVE_LOCALLY_FOR, 5 s), as the
# default (10 s) is: the 503 then finds the reservation retried as an activity.
UPDATE_TIMEOUT_SECONDS = 6.0


@pytest.fixture
async def stack(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    """The real stack with the scripted warehouse and a 6 s update timeout."""
    async with running_stack(
        temporal_env,
        tmp_path,
        warehouse=SCRIPTED,
        update_timeout_seconds=UPDATE_TIMEOUT_SECONDS,
        late_call_window="1h",
    ) as running:
        try:
            yield running
        finally:
            # The warehouse comes back for every order before the worker stops: a reservation
            # still retrying inside a workflow task (the code before) would hold its shutdown.
            scripted_warehouse.recovered.update(scripted_warehouse.reserve_attempts)


async def placed_while_failing(stack: Stack) -> tuple[str, str]:
    """Place an order whose reservation fails; assert its 503; its id and SKU."""
    order_id, sku = new_order_id(), f"failreserve-{new_order_id()}"

    answer = await place(stack, order_id, sku)

    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    error = answer.json()["error"]
    assert error["code"] == "ServiceUnavailable"
    message = error["message"]
    assert message.startswith(f"order SLR-{order_id}: the stock is not reserved yet ("), message
    assert "reserve_stock attempt " in message, message
    assert f"warehouse unavailable: the reservation of SLR-{order_id} timed out" in message
    assert message.endswith("retry the same placement: it joins the same request"), message
    return order_id, sku


async def place_until_answered(
    stack: Stack, order_id: str, sku: str, within: float = 30.0
) -> httpx.Response:
    """The same placement again, as VTEX retries a 503, until it is answered otherwise."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        answer = await place(stack, order_id, sku)
        if answer.status_code != 503:
            return answer
        assert asyncio.get_running_loop().time() < deadline, answer.text
        await asyncio.sleep(0.5)


async def test_a_failing_reservation_is_shown_and_the_retried_placement_is_placed(
    stack: Stack,
) -> None:
    order_id, sku = await placed_while_failing(stack)

    order = await stack.order(order_id)
    assert order["status"] == "reserving"
    (call,) = order["pendingCalls"]
    assert call["activity"] == "reserve_stock"
    assert call["attempt"] >= 2, call
    assert "warehouse unavailable" in call["lastError"], call
    attention = order["attention"]
    assert attention.startswith("reserving: WarehouseUnavailable: warehouse unavailable"), attention
    assert attention.endswith("; retrying"), attention
    # The Temporal UI's current details of the workflow.
    shown = await stack.handle(order_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    assert f"attention: {attention}" in shown.current_details, shown.current_details

    scripted_warehouse.recovered.add(f"SLR-{order_id}")
    placed = await place_until_answered(stack, order_id, sku)

    assert placed.status_code == 200, placed.text
    assert placed.json()["orderId"] == f"SLR-{order_id}"
    order = await stack.order(order_id)
    assert order["status"] == "placed"
    assert order["reservedAt"] is not None
    assert order["pendingCalls"] == []
    assert order["attention"] is None
    level = await stack.warehouse.stock_level(sku)
    assert (level.available, level.reserved) == (999, 1)
    # The quick tries (a local activity's marker), then the activity retried until it took.
    assert await activity_events(stack.handle(order_id)) == [
        ("reserve_stock", "failed"),
        ("reserve_stock", "completed"),
    ]
    assert [e.movement for e in await stack.warehouse.ledger(f"SLR-{order_id}")] == ["reserve"]
    # The order goes on as any other.
    assert (await stack.dispatch(order_id)).status_code == 200
    assert (await final(stack, order_id))["status"] == "invoiced"


async def test_a_cancellation_during_a_failing_reservation_is_confirmed_and_holds_nothing(
    stack: Stack,
) -> None:
    order_id, sku = await placed_while_failing(stack)

    confirmed = await cancel_until_answered(stack, order_id)

    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["orderId"] == f"SLR-{order_id}"
    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    assert order["cancellation"]["outcome"] == "confirmed"
    assert order["compensations"] == ["release_stock (nothing to undo)"]
    assert order["pendingCalls"] == []  # the reservation is not retried any more
    assert order["attention"] is None
    assert (await stack.warehouse.stock_level(sku)).reserved == 0
    # The reservation ended (its cancellation is a request: an attempt failing as it arrived ends
    # the activity failed, on a busy machine), and only then was the stock released.
    reservation, release = (await activity_events(stack.handle(order_id)))[-2:]
    assert reservation in [("reserve_stock", "canceled"), ("reserve_stock", "failed")]
    assert release == ("release_stock", "completed")
    # The placement retried is refused: the order was canceled before it had its stock.
    refused = await place(stack, order_id, sku)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "OrderCanceled"
    # A warehouse back later reserves nothing for it.
    scripted_warehouse.recovered.add(f"SLR-{order_id}")
    assert (await stack.warehouse.stock_level(sku)).reserved == 0


async def test_an_operator_cancel_during_a_failing_reservation_holds_nothing(
    stack: Stack,
) -> None:
    order_id, sku = await placed_while_failing(stack)

    await stack.handle(order_id).cancel()

    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    assert "operator" in order["statusReason"], order["statusReason"]
    assert order["pendingCalls"] == []
    assert (await stack.warehouse.stock_level(sku)).reserved == 0
    refused = await place(stack, order_id, sku)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "OrderCanceled"
    # The marketplace never had the order placed: it is not told of a seller cancellation.
    assert stack.marketplace.calls(kind="cancel", marketplace_order_id=order_id) == []
