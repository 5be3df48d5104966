"""Recorded histories replay without non-determinism: the order's, its parcel's, a SKU's change
notifications'.

Two sources: histories recorded now, from the main scenarios, and those of every release, under
tests/histories/<version>/, recorded by that release's code (CHANGELOG.md). A change to a workflow
that would break an order in flight fails here; guard it with `workflow.patched()`
(docs/upgrades.md).

When a release is cut: `RECORD_HISTORIES=<version> make test` writes today's histories under
tests/histories/<version>/ (a history already there is never overwritten: proving that the orders
it stands for still replay is its whole point).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from tests.stack import Stack, new_order_id, placement_example, running_stack
from workflows import ids
from workflows.order import OrderWorkflow
from workflows.parcel import ParcelWorkflow
from workflows.sku_changes import SkuChangesWorkflow

HISTORY_DIR = Path(__file__).resolve().parent / "histories"


def replayer() -> Replayer:
    """A replayer of the service's workflows with its data converter."""
    return Replayer(
        workflows=[OrderWorkflow, ParcelWorkflow, SkuChangesWorkflow],
        data_converter=pydantic_data_converter,
    )


async def _invoiced_then_refused(stack: Stack) -> str:
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
    assert (await stack.cancel(order_id)).status_code == 409
    return order_id


# Where a cancellation is mid-step: pack, or ship if two reads straddled the 0.5 s pack (either
# history is one canceled mid-step; waiting for pack alone would then wait for nothing).
MID_STEPS = ("pack", "ship")


async def _canceled_mid_step(stack: Stack) -> str:
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["currentStep"] in MID_STEPS)
    assert (await stack.cancel(order_id)).status_code == 200
    return order_id


async def _canceled_before_dispatch(stack: Stack) -> str:
    order_id = new_order_id()
    await stack.place(order_id)
    assert (await stack.cancel(order_id)).status_code == 200
    await stack.handle(order_id).result()
    return order_id


async def _expired_then_canceled(stack: Stack) -> str:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["shippingData"]["logisticsInfo"][0]["lockTTL"] = "1s"
    await stack.http.post("/pvt/orders", json=body)
    await stack.wait_for(order_id, lambda o: o["status"] == "expired")
    assert (await stack.cancel(order_id)).status_code == 200
    return order_id


async def _step_failed_for_good(stack: Stack) -> str:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["items"][0]["id"] = f"damaged-{order_id}"  # tests/scripted_warehouse.py refuses at pick
    await stack.http.post("/pvt/orders", json=body)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["status"] == "canceled")
    return order_id


async def _operator_canceled_mid_step(stack: Stack) -> str:
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["currentStep"] in MID_STEPS)
    await stack.handle(order_id).cancel()
    await stack.wait_for(order_id, lambda o: o["status"] == "canceled")
    return order_id


async def _invoice_resent_by_an_operator(stack: Stack) -> str:
    # Not taken within MARKETPLACE_RETRY_FOR (2 s here): the order waits for an operator's resend.
    order_id = new_order_id()
    stack.marketplace.fail_next("invoice", 1000, status=400)
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["sendError"], within=20)
    stack.marketplace.clear()
    await stack.handle(order_id).execute_update(
        "resend_invoice", {"by": "replay test"}, id="resend-1"
    )
    await stack.wait_for(order_id, lambda o: o["invoice"]["trackingSentAt"], within=20)
    return order_id


async def _invoiced_then_refused_later(stack: Stack) -> str:
    # The refusal answered before the resend, which the marketplace refuses once.
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
    stack.marketplace.fail_next("invoice", 1, status=409)
    assert (await stack.cancel(order_id)).status_code == 409
    await stack.wait_for(order_id, lambda o: o["invoice"]["resentCount"] == 1, within=20)
    return order_id


async def _refused_for_stock(stack: Stack) -> str:
    # The release after a failed reservation.
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["items"][0]["quantity"] = 5000  # more than the default stock
    assert (await stack.http.post("/pvt/orders", json=body)).status_code == 409
    await stack.wait_for(order_id, lambda o: o["status"] == "canceled")
    return order_id


async def _delivered_then_refused(stack: Stack) -> str:
    # The parcel followed to delivery, in its own workflow.
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["status"] == "delivered", within=30)
    assert (await stack.cancel(order_id)).status_code == 409
    return order_id


async def _tracking_stopped_by_an_operator(stack: Stack) -> str:
    # The carrier never delivers: an operator retries the poll now, then gives the parcel up (both
    # forwarded by the order to its parcel's workflow).
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["items"][0]["id"] = f"neverdelivered-{order_id}"
    await stack.http.post("/pvt/orders", json=body)
    await stack.dispatch(order_id)
    await stack.wait_for(order_id, lambda o: o["delivery"] and o["delivery"]["eventsReported"])
    handle = stack.handle(order_id)
    await handle.execute_update("retry_now", {"by": "replay test"}, id="retry-1")
    await handle.execute_update("stop_tracking", {"by": "replay test"}, id="stop-1")
    return order_id


async def _sku_changes_burst(stack: Stack) -> str:
    # A SKU's change notifications: a burst, coalesced, one notification of each kind.
    sku = f"replay-{new_order_id()}"
    for _ in range(3):
        await stack.warehouse.restock(sku, 1)
    for _ in range(400):  # 20 s
        if [c for c in stack.marketplace.calls(kind="inventory_change") if c.sku_id == sku]:
            return sku
        await asyncio.sleep(0.05)
    raise AssertionError(f"no inventory notification of {sku}")


async def test_todays_histories_replay(temporal_env: WorkflowEnvironment, tmp_path: Path) -> None:
    histories: dict[str, WorkflowHistory] = {}
    async with running_stack(
        temporal_env,
        tmp_path,
        fulfillment_step_seconds=0.5,
        late_call_window="2s",
        warehouse="tests.scripted_warehouse:ScriptedWarehouse.from_settings",
        tracking_poll_interval="1s",
        carrier_delivery_time="1s",
        seller_id="seller1",
        change_notification_debounce="1s",
        marketplace_retry_for="2s",
    ) as stack:
        # At once, those that leave the marketplace alone; then, one by one, those that make it
        # fail (its failures are injected for every order).
        together = {
            "invoiced_then_refused": _invoiced_then_refused,
            "canceled_mid_step": _canceled_mid_step,
            "canceled_before_dispatch": _canceled_before_dispatch,
            "expired_then_canceled": _expired_then_canceled,
            "step_failed_for_good": _step_failed_for_good,
            "operator_canceled_mid_step": _operator_canceled_mid_step,
            "refused_for_stock": _refused_for_stock,
            "delivered_then_refused": _delivered_then_refused,
            "tracking_stopped_by_an_operator": _tracking_stopped_by_an_operator,
        }
        one_by_one = {
            "invoice_resent_by_an_operator": _invoice_resent_by_an_operator,
            "refused_while_the_resend_is_refused": _invoiced_then_refused_later,
        }

        async def record(name: str, scenario: Callable[[Stack], Awaitable[str]]) -> None:
            order_id = await scenario(stack)
            handle = stack.handle(order_id)
            view = await handle.result()  # the whole life, late-call window included
            histories[name] = await handle.fetch_history()
            if view.parcel_workflow_id:
                parcel = stack.client.get_workflow_handle(view.parcel_workflow_id)
                histories[f"{name}.parcel"] = await parcel.fetch_history()

        await asyncio.gather(*(record(name, scenario) for name, scenario in together.items()))
        for name, scenario in one_by_one.items():
            await record(name, scenario)
        sku = await _sku_changes_burst(stack)
        sku_handle = stack.client.get_workflow_handle(
            ids.sku_changes_workflow_id(stack.settings.task_queue, sku)
        )
        await sku_handle.result()
        histories["sku_changes_burst"] = await sku_handle.fetch_history()

    for name, history in histories.items():
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{name}: {result.replay_failure}"

    version = os.environ.get("RECORD_HISTORIES")
    if version:
        release = HISTORY_DIR / version
        release.mkdir(parents=True, exist_ok=True)
        for name, history in histories.items():
            if (release / f"{name}.json").exists():
                continue
            (release / f"{name}.json").write_text(
                json.dumps(history.to_json_dict(), indent=1) + "\n"
            )


async def test_committed_histories_replay() -> None:
    releases = sorted(path for path in HISTORY_DIR.iterdir() if path.is_dir())
    assert releases, f"expected the releases' histories in {HISTORY_DIR}/<version>/"
    files = sorted(file for release in releases for file in release.glob("*.json"))
    assert len(files) >= 3 * len(releases), f"expected each release's histories: {files}"

    for file in files:
        history = WorkflowHistory.from_json(file.stem, file.read_text())
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{file.name}: {result.replay_failure}"
