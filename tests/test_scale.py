"""Horizontal scale, proven on real processes: three workers on one task queue, each with its own
DATA_DIR, sharing nothing but the Temporal server and a real PostgreSQL warehouse (as workers on
three hosts would); one is killed with `kill -9` mid-step, and every order still ends invoiced
with its stock conserved."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from devtools.postgres import TemporaryPostgres
from tests.stack import new_order_id
from tests.test_crashes import (
    STEPS,
    all_final,
    assert_stock,
    check_invariants,
    connect,
    dispatch,
    place,
    processes,
    steps_run_again,
)
from workflows import ids

ORDERS = 30


async def activity_workers(client: Client, order_id: str) -> set[str]:
    """The identities of the workers that started the order's activities."""
    handle = client.get_workflow_handle(ids.workflow_id(order_id))
    return {
        event.activity_task_started_event_attributes.identity
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


async def a_worker_running_a_step(client: Client, order_ids: list[str]) -> str:
    """The identity of a worker running a fulfillment step of one of the orders, now."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for order_id in reversed(order_ids):  # the last dispatched first: likeliest mid-step
            description = await client.get_workflow_handle(ids.workflow_id(order_id)).describe()
            for pending in description.raw_description.pending_activities:
                if pending.last_worker_identity and pending.activity_type.name in STEPS:
                    return pending.last_worker_identity
        await asyncio.sleep(0.05)
    raise AssertionError("no order had a step running")


async def test_three_workers_share_the_orders_and_survive_one_killed(
    tmp_path: Path, postgres: TemporaryPostgres
) -> None:
    warehouse_url = postgres.create_database("scale")
    async with (
        processes(tmp_path, workers=3, step_seconds=1.0, warehouse_url=warehouse_url) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        client = await connect(stack)
        order_ids = [new_order_id() for _ in range(ORDERS)]
        slots = asyncio.Semaphore(10)

        async def place_and_dispatch(order_id: str) -> None:
            async with slots:
                assert (await place(http, stack, order_id)).status_code == 200
                assert (await dispatch(http, order_id)).status_code == 200

        first, rest = order_ids[: ORDERS // 2], order_ids[ORDERS // 2 :]
        await asyncio.gather(*(place_and_dispatch(order_id) for order_id in first))
        # Mid-flight: kill the worker running one of the orders' steps.
        identity = await a_worker_running_a_step(client, first)
        victim = next(w for w in stack.workers if identity.startswith(f"{w.pid}@"))
        victim.kill9()
        await asyncio.gather(*(place_and_dispatch(order_id) for order_id in rest))

        assert await all_final(http, order_ids, within=120) == dict.fromkeys(order_ids, "invoiced")
        by_worker: Counter[str] = Counter()
        for order_id in order_ids:
            by_worker.update(await activity_workers(client, order_id))
        assert len(by_worker) > 1, by_worker
        # What the killed worker was running ran again, after its heartbeat timeout, elsewhere.
        rerun = [step for oid in first for step in await steps_run_again(client, oid)]
        assert rerun, "no step was running on the killed worker"
        assert all(who != identity for _, who in rerun), rerun
        await assert_stock(stack, shipped=ORDERS)
        await check_invariants(stack, client, ORDERS)
