"""The second adversarial review of the order's life: what a compensation meets when the
warehouse or the marketplace misbehaves in the middle of it. Each race is made certain by the
scripted warehouse (tests/scripted_warehouse.py) or the fake marketplace's injected answers, and
each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.warehouse import OrderReleased
from tests import scripted_warehouse
from tests.stack import Stack, new_order_id, running_stack
from tests.test_races import SCRIPTED, final, place


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


async def test_an_invoice_committed_during_its_cancel_whose_fetch_fails_never_fails_the_order(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"committedanyway-{new_order_id()}"
    assert (await place(stack, order_id, sku)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200
    await scripted_warehouse.started["invoice", f"SLR-{order_id}"].wait()

    # The cancel stops the invoice step, which commits anyway and reports the cancellation; the
    # release is refused (invoiced), and fetching the committed invoice fails for good.
    assert (await stack.cancel(order_id)).status_code in (200, 409)
    order = await stack.wait_for(order_id, lambda o: o["attention"], within=20)

    assert "issue_invoice" in order["attention"], order["attention"]
    assert order["status"] == "canceling"
    description = await stack.handle(order_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING  # not FAILED
    level = await stack.warehouse.stock_level(sku)
    assert (level.reserved, level.shipped) == (0, 1)  # Sold: shipped, not released.
    await stack.handle(order_id).terminate("test over: the ERP stays broken")


async def test_a_refusal_is_answered_before_the_invoice_resend_is_taken(stack: Stack) -> None:
    order_id = new_order_id()
    # The marketplace refuses every invoice for now: the order's own send is being retried when
    # the cancellation comes, and the resend that refuses it is refused too.
    stack.marketplace.fail_next("invoice", 1000, status=409)
    assert (await place(stack, order_id, f"sku-{new_order_id()}")).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200
    await stack.wait_for(
        order_id,
        lambda o: any(
            c["activity"] == "send_invoice" and c["attempt"] >= 2 for c in o["pendingCalls"]
        ),
        30,
    )

    started = time.monotonic()
    refusal = await stack.cancel(order_id)

    # Refused at once, not "still evaluating" while the marketplace refuses the invoice.
    assert refusal.status_code == 409, refusal.text
    assert refusal.json()["error"]["code"] == "OrderInvoiced"
    assert time.monotonic() - started < 2.0
    stack.marketplace.clear()
    # Both sends are taken at last: the invoice is delivered, and the resend counted.
    order = await stack.wait_for(order_id, lambda o: o["invoice"]["resentCount"] == 1, 30)
    assert order["invoice"]["sendError"] is None
    assert order["invoice"]["sentAt"] is not None
    statuses = [
        c.status for c in stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
    ]
    assert statuses == [200, 200]


async def test_a_reservation_that_commits_after_its_order_gave_up_holds_nothing(
    stack: Stack,
) -> None:
    order_id, sku = new_order_id(), f"zombiereserve-{new_order_id()}"

    refused = await place(stack, order_id, sku)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "OutOfStock"
    order = await final(stack, order_id)
    assert order["status"] == "canceled"
    deadline = time.monotonic() + scripted_warehouse.ZOMBIE_SECONDS + 10
    while ("zombie reserve", f"SLR-{order_id}") not in scripted_warehouse.finished:
        assert time.monotonic() < deadline, "the late reservation never ran"
        await asyncio.sleep(0.05)
    # The late reservation was refused: the order had been released first.
    late = scripted_warehouse.finished["zombie reserve", f"SLR-{order_id}"]
    assert isinstance(late, OrderReleased), late
    level = await stack.warehouse.stock_level(sku)
    assert (level.available, level.reserved) == (0, 0)  # Nothing was ever taken.
