"""The seller cancels: the simulated warehouse, told to refuse (WAREHOUSE_DAMAGED_SKUS,
CARRIER_REFUSED_POSTAL_CODES), fails a step for good; the order is compensated, ends canceled
with the reason, and the marketplace is told with `POST .../pvt/orders/{id}/cancel`. On the real
stack, the calls checked against VTEX's marketplace OpenAPI file by the fake marketplace."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.stack import new_order_id, placement_example, running_stack


async def test_a_sku_found_damaged_at_pick_cancels_the_order_and_tells_the_marketplace(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, warehouse_damaged_skus="damaged-shoe, other"
    ) as stack:
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        body["items"][0]["id"] = "damaged-shoe"
        assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
        assert (await stack.dispatch(order_id)).status_code == 200

        order = await stack.wait_for(order_id, lambda o: o["status"] == "canceled")
        (told,) = await stack.marketplace.wait_for_calls(
            1, kind="cancel", marketplace_order_id=order_id
        )

    assert "found damaged at pick" in order["cancellation"]["reason"]
    assert order["cancellation"]["requestedBy"] == "seller"
    assert [(s["name"], s["status"]) for s in order["steps"]] == [("pick", "failed")]
    assert order["compensations"] == ["release_stock"]
    assert told.valid, told.body
    assert "found damaged at pick" in told.body["reason"]
    level = await stack.warehouse.stock_level("damaged-shoe")
    assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)


async def test_a_postal_code_the_carrier_refuses_cancels_the_order_at_ship(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, carrier_refused_postal_codes="12345, 99"
    ) as stack:
        refused, delivered = new_order_id(), new_order_id()
        for order_id, postal_code in ((refused, "12345-000"), (delivered, "22250-040")):
            body = placement_example(order_id, stack.endpoint)
            body["shippingData"]["address"]["postalCode"] = postal_code
            assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
            assert (await stack.dispatch(order_id)).status_code == 200

        order = await stack.wait_for(refused, lambda o: o["status"] == "canceled")
        other = await stack.wait_for(delivered, lambda o: o["status"] == "invoiced")
        await stack.marketplace.wait_for_calls(1, kind="cancel", marketplace_order_id=refused)

    assert "does not deliver to postal code 12345-000" in order["cancellation"]["reason"]
    assert [s["status"] for s in order["steps"]] == ["completed", "completed", "failed"]
    # The ship step ran, so its label is voided: there was none.
    assert order["compensations"] == ["release_stock", "void_label (nothing to undo)"]
    assert other["invoice"]["invoiceNumber"]
