"""Orders are findable by state in Temporal's list: every attribute of workflows/search.py, as
`temporal workflow list --query` finds them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from api import order_calls
from api.errors import ApiError
from api.models import OrderPlacement
from config import Settings
from tests.conftest import BIN_DIR, dev_server_ports
from tests.stack import Stack, new_order_id, placement_example, running_stack, temporal_cli_json
from workflows import ids


async def listed(env: WorkflowEnvironment, query: str) -> set[str]:
    """The workflow ids `temporal workflow list --query` prints."""
    rows: list[dict[str, Any]] = (
        await temporal_cli_json(env, "workflow", "list", "--query", query) or []
    )
    return {row["execution"]["workflowId"] for row in rows}


async def finds(env: WorkflowEnvironment, query: str, workflow_id: str) -> bool:
    """Whether the query lists the workflow, allowing visibility its few hundred ms."""
    for _ in range(50):
        if workflow_id in await listed(env, query):
            return True
        await asyncio.sleep(0.2)
    return False


async def place(stack: Stack, lock_ttl: str = "8d", sku: str = "sa-sku") -> str:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["items"][0]["id"] = sku
    body["shippingData"]["logisticsInfo"][0]["lockTTL"] = lock_ttl
    assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
    return order_id


async def test_orders_in_every_state_are_found_by_each_attribute(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env,
        tmp_path,
        fulfillment_step_seconds=1.5,
        late_call_window="1h",
        marketplace_retry_for="2s",
    ) as stack:
        queue = f'TaskQueue="{stack.settings.task_queue}"'
        # The one invoice of this test is refused past its bound: flagged InvoiceNotDelivered.
        stack.marketplace.fail_next("invoice", 1000, status=400)
        packing, canceled, expired, placed = (
            await place(stack),
            await place(stack),
            await place(stack, lock_ttl="1s"),
            await place(stack),
        )
        await stack.dispatch(packing)
        await stack.cancel(canceled)
        await stack.wait_for(packing, lambda o: o["currentStep"] == "pack")
        await stack.wait_for(expired, lambda o: o["status"] == "expired")

        expectations = {
            f'OrderStatus="fulfilling" AND FulfillmentStep="pack" AND {queue}': packing,
            f'OrderStatus="canceled" AND {queue}': canceled,
            f'OrderStatus="expired" AND {queue}': expired,
            f'OrderStatus="placed" AND {queue}': placed,
            f'MarketplaceOrderId="{placed}"': placed,
            f'SellerOrderId="SLR-{canceled}"': canceled,
        }
        for query, order_id in expectations.items():
            assert await finds(temporal_env, query, f"order-{order_id}"), query
        # A query finds only what it says: the canceled order is not among the fulfilling ones.
        fulfilling = await listed(temporal_env, f'OrderStatus="fulfilling" AND {queue}')
        assert f"order-{canceled}" not in fulfilling

        # An invoice the marketplace refuses for good is flagged.
        await stack.wait_for(packing, lambda o: o["invoice"] and o["invoice"]["sendError"], 30)
        query = f"InvoiceNotDelivered=true AND {queue}"
        assert await finds(temporal_env, query, f"order-{packing}"), query
        assert await finds(temporal_env, f'OrderStatus="invoiced" AND {queue}', f"order-{packing}")


async def test_a_namespace_without_the_attributes_refuses_the_placement_visibly(
    tmp_path: Path,
) -> None:
    # A server whose namespace never had them registered (no worker has started against it): the
    # API's update-with-start, which carries them, is refused before anything starts.
    ports = dev_server_ports()
    env = await WorkflowEnvironment.start_local(
        port=ports["port"],
        dev_server_existing_path=str(BIN_DIR / "temporal"),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.enableServerVersionCheck=false",
            *ports["dev_server_extra_args"],
        ],
        data_converter=pydantic_data_converter,
    )
    try:
        order_id = new_order_id()
        placement = OrderPlacement.model_validate(
            placement_example(order_id, "https://teststore.vtexcommercestable.com.br/api")
        )
        settings = Settings(task_queue=f"test-{uuid.uuid4()}", data_dir=tmp_path)
        with pytest.raises(ApiError) as refused:
            await order_calls.place_order(env.client, settings, placement, datetime.now(UTC))
        assert refused.value.status == 503, refused.value
        # e.g. "Temporal: Namespace default has no mapping defined for search attribute
        # InvoiceNotDelivered": ops see what to register.
        assert "no mapping defined for search attribute" in refused.value.message
        handle = env.client.get_workflow_handle(ids.workflow_id(order_id))
        with pytest.raises(RPCError):
            await handle.describe()  # nothing was started
    finally:
        await env.shutdown()
