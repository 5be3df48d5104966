"""Change notifications: a SKU's price or stock changes, the marketplace is told, once per burst,
until it takes it (vtex-marketplace-change-notification.openapi.json). The outbox on SQLite and
PostgreSQL; the relay and the per-SKU workflow on the real stack, the fake marketplace checking
each call's path and answering 202."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.catalog import Catalog, CatalogEntry
from activities.change_notifications import notification_settings_problem
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import WarehouseOrder
from change_relay import ChangeOutbox
from config import Settings
from devtools.fake_marketplace import RecordedCall
from tests.stack import Stack, new_order_id, placement_example, running_stack
from worker import run_worker
from workflows import ids
from workflows.messages import OrderLine
from workflows.sku_changes import SkuChangesWorkflow

SPEC = Path(__file__).resolve().parent.parent / "contract"
NOTIFICATION_PATHS = json.loads(
    (SPEC / "vtex-marketplace-change-notification.openapi.json").read_text()
)["paths"]


def new_sku() -> str:
    """A SKU no other test notifies (SKU workflows are per namespace)."""
    return f"sku-{uuid.uuid4().hex[:10]}"


def order_of(sku: str, quantity: int, order_id: str | None = None) -> WarehouseOrder:
    order_id = order_id or f"SLR-{uuid.uuid4().hex[:8]}"
    return WarehouseOrder(
        order_id=order_id,
        marketplace_order_id=order_id,
        lines=[OrderLine(sku=sku, quantity=quantity)],
    )


def pending(store: str | Path) -> set[tuple[str, str]]:
    return {(change.sku, change.kind) for change in ChangeOutbox(store).pending()}


async def test_the_outbox_notes_loads_restocks_sell_outs_and_comebacks(
    warehouse_store: str | Path,
) -> None:
    outbox = ChangeOutbox(warehouse_store)
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    catalog = Catalog(warehouse_store)

    catalog.load([CatalogEntry(sku="A", name="A", price=100, stock=2)])
    assert pending(warehouse_store) == {("A", "price"), ("A", "inventory")}
    outbox.mark_relayed(outbox.pending())
    assert pending(warehouse_store) == set()

    # Unchanged: nothing; a new name only: nothing the marketplace reads; a new price: price.
    catalog.load([CatalogEntry(sku="A", name="A", price=100, stock=2)])
    catalog.load([CatalogEntry(sku="A", name="A, renamed", price=100, stock=2)])
    assert pending(warehouse_store) == set()
    catalog.load([CatalogEntry(sku="A", name="A", price=90, stock=2)])
    assert pending(warehouse_store) == {("A", "price")}
    outbox.mark_relayed(outbox.pending())

    # A reservation that leaves stock: nothing; the one that sells out: inventory.
    await warehouse.reserve(order_of("A", 1, "first"))
    assert pending(warehouse_store) == set()
    await warehouse.reserve(order_of("A", 1, "second"))
    assert pending(warehouse_store) == {("A", "inventory")}
    outbox.mark_relayed(outbox.pending())
    # Back on sale: inventory; a restock: inventory.
    assert await warehouse.release("first")
    assert pending(warehouse_store) == {("A", "inventory")}
    outbox.mark_relayed(outbox.pending())
    await warehouse.restock("A", 3)
    assert pending(warehouse_store) == {("A", "inventory")}


async def test_a_change_after_the_relay_read_it_stays_in_the_outbox(
    warehouse_store: str | Path,
) -> None:
    outbox = ChangeOutbox(warehouse_store)
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    await warehouse.restock("B", 1)
    read = outbox.pending()
    await warehouse.restock("B", 1)  # while the relay passes the first on
    assert outbox.mark_relayed(read) == 0
    assert pending(warehouse_store) == {("B", "inventory")}
    assert outbox.mark_relayed(outbox.pending()) == 1
    assert pending(warehouse_store) == set()


async def test_a_slow_relay_cannot_mark_a_newer_change_as_passed_on(
    warehouse_store: str | Path,
) -> None:
    # Two relays read the same change; one marks it, a new change comes, then the slow one
    # marks what it read: the new change must stay pending (its version is new).
    outbox = ChangeOutbox(warehouse_store)
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    await warehouse.restock("C", 1)
    fast, slow = outbox.pending(), outbox.pending()
    assert outbox.mark_relayed(fast) == 1
    await warehouse.restock("C", 1)
    assert outbox.mark_relayed(slow) == 0
    assert pending(warehouse_store) == {("C", "inventory")}


def notifications(stack: Stack, sku: str, kind: str) -> list[RecordedCall]:
    return [call for call in stack.marketplace.calls(kind=f"{kind}_change") if call.sku_id == sku]


async def wait_for_notifications(
    stack: Stack, sku: str, kind: str, count: int, within: float = 20.0
) -> list[RecordedCall]:
    deadline = asyncio.get_running_loop().time() + within
    while len(calls := notifications(stack, sku, kind)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(calls)} of {count} came"
        await asyncio.sleep(0.05)
    return calls


def assert_is_vtex_notification(call: RecordedCall, sku: str, kind: str) -> None:
    assert call.valid, call.errors
    assert call.path == f"/api/notificator/seller1/changenotification/{sku}/{kind}"
    assert f"/notificator/{{sellerId}}/changenotification/{{skuId}}/{kind}" in NOTIFICATION_PATHS
    assert call.method == "POST" and call.body == ""
    assert call.headers["content-type"] == "application/json"
    assert call.headers["accept"] == "application/json"


def notifying(temporal_env: WorkflowEnvironment, tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "seller_id": "seller1",
        "default_stock": None,
        "change_notification_debounce": "1s",
    }
    return running_stack(temporal_env, tmp_path, **(values | overrides))


async def test_a_catalog_load_notifies_price_and_inventory_once_each(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    sku = new_sku()
    async with notifying(temporal_env, tmp_path) as stack:
        catalog = Catalog.from_settings(stack.settings)
        catalog.load([CatalogEntry(sku=sku, name="Shoe", price=1000, stock=5)])
        (price,) = await wait_for_notifications(stack, sku, "price", 1)
        (inventory,) = await wait_for_notifications(stack, sku, "inventory", 1)
        assert_is_vtex_notification(price, sku, "price")
        assert_is_vtex_notification(inventory, sku, "inventory")

        catalog.load([CatalogEntry(sku=sku, name="Shoe", price=900, stock=5)])
        await wait_for_notifications(stack, sku, "price", 2)
        await asyncio.sleep(2.5)  # past the debounce: nothing else comes
        assert len(notifications(stack, sku, "price")) == 2
        assert len(notifications(stack, sku, "inventory")) == 1


async def test_a_burst_of_changes_to_one_sku_is_one_notification(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    sku = new_sku()
    async with notifying(temporal_env, tmp_path, change_notification_debounce="2s") as stack:
        for _ in range(25):
            await stack.warehouse.restock(sku, 1)
            await asyncio.sleep(0.02)  # a burst over half a second: the relay sees it in parts
        (call,) = await wait_for_notifications(stack, sku, "inventory", 1)
        assert_is_vtex_notification(call, sku, "inventory")
        handle = stack.client.get_workflow_handle_for(
            SkuChangesWorkflow.run, ids.sku_changes_workflow_id(stack.settings.task_queue, sku)
        )
        result = await handle.result()
        assert result.sent[0].kind == "inventory" and result.sent[0].error is None
        # Beside the orders' task queue, not on it: notifications never take an order's slot.
        description = await handle.describe()
        assert description.task_queue == f"{stack.settings.task_queue}-sku-changes"
        await asyncio.sleep(1)
        assert len(notifications(stack, sku, "inventory")) == 1
        assert pending(stack.settings.warehouse_store) == set()


async def test_selling_out_and_coming_back_through_orders_notifies_inventory(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    sku = new_sku()
    async with notifying(temporal_env, tmp_path, change_notification_debounce="0s") as stack:
        Catalog.from_settings(stack.settings).load(
            [CatalogEntry(sku=sku, name="Last ones", price=500, stock=2)]
        )
        await wait_for_notifications(stack, sku, "inventory", 1)
        first, last = new_order_id(), new_order_id()
        for order_id in (first, last):
            body = placement_example(order_id, stack.endpoint)
            body["items"][0].update(id=sku, quantity=1)
            assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
        await wait_for_notifications(stack, sku, "inventory", 2)  # sold out

        assert (await stack.cancel(first)).status_code == 200
        await stack.wait_for(first, lambda o: o["status"] == "canceled")
        calls = await wait_for_notifications(stack, sku, "inventory", 3)  # back on sale
        assert all(call.valid for call in calls)
        assert (await stack.warehouse.stock_level(sku)).available == 1


async def test_a_notification_the_marketplace_refuses_for_now_is_retried_until_taken(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    sku = new_sku()
    async with notifying(temporal_env, tmp_path, change_notification_debounce="0s") as stack:
        stack.marketplace.fail_next("price_change", 2, status=503)
        Catalog.from_settings(stack.settings).load(
            [CatalogEntry(sku=sku, name="Shoe", price=1000, stock=1)]
        )
        calls = await wait_for_notifications(stack, sku, "price", 3)
        assert [call.status for call in calls] == [503, 503, 202]
        handle = stack.client.get_workflow_handle_for(
            SkuChangesWorkflow.run, ids.sku_changes_workflow_id(stack.settings.task_queue, sku)
        )
        result = await handle.result()
        assert {(sent.kind, sent.error) for sent in result.sent} == {
            ("price", None),
            ("inventory", None),
        }


async def test_without_a_seller_id_nothing_is_notified(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    sku = new_sku()
    async with running_stack(temporal_env, tmp_path, default_stock=None) as stack:
        Catalog.from_settings(stack.settings).load(
            [CatalogEntry(sku=sku, name="Shoe", price=1000, stock=1)]
        )
        await asyncio.sleep(1.5)
        assert stack.marketplace.calls(kind="price_change") == []
        # Kept (one row per SKU and kind) for when notifications are configured.
        assert (sku, "price") in pending(stack.settings.warehouse_store)


async def test_a_sku_the_marketplace_does_not_know_is_not_notified_again_and_again(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # VTEX answers 404 for a SKU it has not approved: lasting, not worth another try.
    sku = new_sku()
    async with notifying(temporal_env, tmp_path, change_notification_debounce="0s") as stack:
        stack.marketplace.fail_next("price_change", 1, status=404)
        Catalog.from_settings(stack.settings).load(
            [CatalogEntry(sku=sku, name="Shoe", price=1000, stock=1)]
        )
        await wait_for_notifications(stack, sku, "price", 1)
        handle = stack.client.get_workflow_handle_for(
            SkuChangesWorkflow.run, ids.sku_changes_workflow_id(stack.settings.task_queue, sku)
        )
        result = await asyncio.wait_for(handle.result(), 20)

    assert [call.status for call in notifications(stack, sku, "price")] == [404]
    errors = {sent.kind: sent.error for sent in result.sent}
    assert errors["inventory"] is None
    assert errors["price"] and "404" in errors["price"]


def test_settings_no_notification_could_be_sent_with_are_named() -> None:
    def problem(**values: Any) -> str | None:
        return notification_settings_problem(
            Settings(marketplace_allowed_hosts="127.0.0.1", **values)
        )

    assert problem() == "CHANGE_NOTIFICATION_URL and SELLER_ID are not both set"
    assert problem(change_notification_url="http://127.0.0.1:8900/api", seller_id="s") is None
    without_api = problem(change_notification_url="http://127.0.0.1:8900", seller_id="s")
    assert without_api and "account API" in without_api
    elsewhere = problem(change_notification_url="https://evil.example/api", seller_id="s")
    assert elsewhere and "not an allowed marketplace host" in elsewhere


async def test_a_worker_without_the_settings_leaves_the_notifications_to_one_with_them(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # A rolling deploy: one worker has SELLER_ID, one not yet. The one without does not take the
    # SKU workflows' tasks (it would fail them for good): every change is notified.
    skus = [new_sku() for _ in range(8)]
    async with notifying(temporal_env, tmp_path, change_notification_debounce="0s") as stack:
        bare = stack.settings.model_copy(
            update={"seller_id": "", "change_notification_url": "", "data_dir": tmp_path / "b"}
        )
        # Its own connection, as another process would have (the SDK refuses two workers of one
        # task queue on one client).
        client = await Client.connect(
            stack.client.service_client.config.target_host,
            data_converter=stack.client.data_converter,
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        other = asyncio.create_task(run_worker(bare, client, stop, ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            Catalog.from_settings(stack.settings).load(
                [CatalogEntry(sku=sku, name=sku, price=100, stock=1) for sku in skus]
            )
            for sku in skus:
                await wait_for_notifications(stack, sku, "price", 1)
                await wait_for_notifications(stack, sku, "inventory", 1)
        finally:
            stop.set()
            await other
    assert all(call.valid for call in stack.marketplace.calls(kind="price_change"))
