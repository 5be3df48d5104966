"""`make bench`'s whole orders: the order from placement to invoice against its floor
(bench/order_floor.py), with the same count at the same concurrency.

The order is placed and dispatched over HTTP, as the marketplace does, and awaited until its
workflow ends (`invoiced`: the bench's stack has no tracking). The floor is placed with an
update-with-start and dispatched with an update from this process, and awaited alike. The two take
turns (order, floor, floor, order: each runs half its orders in each half of the stretch), so that
a drift of the machine favours neither. For each: orders per second; CPU seconds per order of each
process (`worker` is the one that ran that variant's workflows: the orders' worker or the floor's);
and from the histories of the first orders, the events, the workflow tasks and Temporal Cloud's
billable actions per order (bench/billable_actions.py), each the mean, with its kinds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHistory
from temporalio.common import WorkflowIDConflictPolicy

from bench.billable_actions import billable_actions, workflow_tasks
from bench.calls import Bench, new_id, ratio
from bench.order_floor import FloorOrder, OrderFloorWorkflow
from workflows import ids
from workflows.order import OrderWorkflow

VARIANTS = ("order", "floor")
# Histories read per variant for the per-order counts: half from each of its turns.
SAMPLED = 20
# A call, or an order's whole life, that takes longer has hung: the run stops and says so.
CALL_DEADLINE = 60.0
ORDER_DEADLINE = 120.0


def floor_workflow_id(name: str) -> str:
    """The floor's workflow id."""
    return f"floor-{name}"


async def whole_order(bench: Bench, order_id: str) -> str:
    """One order, placed and dispatched over HTTP, until its workflow ends: its status."""
    await asyncio.wait_for(
        bench.http.call("POST", "/pvt/orders", bench.placement_body(order_id)), CALL_DEADLINE
    )
    dispatch = {"marketplaceOrderId": order_id}
    await asyncio.wait_for(
        bench.http.call("POST", f"/pvt/orders/SLR-{order_id}/fulfill", dispatch), CALL_DEADLINE
    )
    handle = bench.client.get_workflow_handle_for(OrderWorkflow.run, ids.workflow_id(order_id))
    view = await asyncio.wait_for(handle.result(), ORDER_DEADLINE)
    return str(view.status)


async def whole_floor(bench: Bench, name: str) -> str:
    """One floor order, placed and dispatched, until its workflow ends: its status."""
    return await asyncio.wait_for(_floor(bench, name), ORDER_DEADLINE)


async def _floor(bench: Bench, name: str) -> str:
    order = FloorOrder(name=name, marketplace_url=bench.stack.marketplace_url)
    workflow_id = floor_workflow_id(name)
    await bench.client.execute_update_with_start_workflow(
        OrderFloorWorkflow.place,
        order,
        start_workflow_operation=WithStartWorkflowOperation(
            OrderFloorWorkflow.run,
            order,
            id=workflow_id,
            task_queue=bench.trivial_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        ),
        id="place",
    )
    handle = bench.client.get_workflow_handle_for(OrderFloorWorkflow.run, workflow_id)
    await handle.execute_update(OrderFloorWorkflow.dispatch, order, id="dispatch")
    return (await handle.result()).status


async def with_children(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run's history of the workflow (a continue-as-new starts another), and its child
    workflows' (a parcel followed), recursively."""
    histories = []
    async for run in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        handle = client.get_workflow_handle(workflow_id, run_id=run.run_id)
        histories.append(await handle.fetch_history())
    for history in list(histories):
        for event in history.events:
            if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
                child = event.start_child_workflow_execution_initiated_event_attributes.workflow_id
                histories += await with_children(client, child)
    return histories


async def counts(client: Client, workflow_ids: list[str]) -> dict[str, Any]:
    """Events, workflow tasks and billable actions per order (the mean over `workflow_ids`), the
    actions by kind (their sum over the sample, divided likewise)."""
    per_order = await asyncio.gather(*(with_children(client, w) for w in workflow_ids))
    kinds: Counter[str] = Counter()
    events, tasks, actions = [], [], []
    for histories in per_order:
        mine: Counter[str] = Counter()
        for history in histories:
            mine += billable_actions(history)
        kinds += mine
        events.append(sum(len(h.events) for h in histories))
        tasks.append(sum(workflow_tasks(h) for h in histories))
        actions.append(sum(mine.values()))
    n = len(per_order)
    return {
        "history_events": round(statistics.mean(events), 1),
        "workflow_tasks": round(statistics.mean(tasks), 1),
        "billable_actions_per_order": round(statistics.mean(actions), 2),
        "billable_actions_by_kind": {k: round(v / n, 2) for k, v in sorted(kinds.items())},
    }


async def run_turn(
    bench: Bench,
    one: Callable[[Bench, str], Awaitable[str]],
    names: list[str],
    profile: tuple[str, dict[str, int]],
) -> tuple[float, dict[str, float], Counter[str]]:
    """`names` run at `--concurrency` at once: seconds, CPU seconds per process, the statuses
    they ended in (with --profile, py-spy on `profile`'s processes, the file named after it)."""
    gate = asyncio.Semaphore(bench.args.concurrency)

    async def gated(name: str) -> str:
        async with gate:
            return await one(bench, name)

    await bench.settle()
    with bench.profiling(*profile):
        before = bench.meter.snapshot()
        started = time.perf_counter()
        statuses = Counter(await asyncio.gather(*(gated(n) for n in names)))
        seconds = time.perf_counter() - started
        after = bench.meter.snapshot()
    return seconds, {role: after[role] - before[role] for role in after}, statuses


async def end_to_end(bench: Bench, count: int) -> tuple[dict[str, dict[str, Any]], str]:
    """`count` orders and `count` floor orders, in turns: the figures of each (results.json's
    `end_to_end` and `end_to_end_floor`), and one order's marketplaceOrderId."""
    runs = {"order": whole_order, "floor": whole_floor}
    names = {variant: [new_id() for _ in range(count)] for variant in VARIANTS}
    seconds = dict.fromkeys(VARIANTS, 0.0)
    cpu: dict[str, Counter[str]] = {variant: Counter() for variant in VARIANTS}
    statuses: dict[str, Counter[str]] = {variant: Counter() for variant in VARIANTS}
    half = count // 2
    worker_pid = {"order": bench.stack.workers[0].pid, "floor": bench.trivial_worker.pid}
    for turn, (variant, part) in enumerate(
        (
            ("order", slice(0, half)),
            ("floor", slice(0, half)),
            ("floor", slice(half, count)),
            ("order", slice(half, count)),
        )
    ):
        pid = worker_pid[variant]
        profile = (f"whole-{variant}-{turn}", {"worker": pid} if pid else {})
        taken, used, ended = await run_turn(bench, runs[variant], names[variant][part], profile)
        seconds[variant] += taken
        cpu[variant].update(used)
        statuses[variant] += ended
    for variant, ended in statuses.items():
        if set(ended) != {"invoiced"}:
            raise RuntimeError(f"{variant}s ended otherwise than invoiced: {dict(ended)}")
    sampled = {v: n[: SAMPLED // 2] + n[half : half + SAMPLED // 2] for v, n in names.items()}
    workflow_ids = {
        "order": [ids.workflow_id(n) for n in sampled["order"]],
        "floor": [floor_workflow_id(n) for n in sampled["floor"]],
    }
    # The process that ran the variant's workflows is its `worker`; the other worker idled.
    worker_role = {"order": "worker", "floor": "trivial worker"}
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        spent = cpu[variant]
        per_order = {
            "worker": spent[worker_role[variant]] / count,
            "temporal": spent["temporal"] / count,
        }
        per_order |= {
            role: taken / count
            for role, taken in spent.items()
            if role not in ("worker", "trivial worker", "temporal")
        }
        results[variant] = {
            "orders": count,
            "seconds": round(seconds[variant], 2),
            "orders_per_second": round(count / seconds[variant], 2),
            "statuses": dict(statuses[variant]),
            "cpu_seconds_per_order": {role: round(v, 4) for role, v in per_order.items()},
            **await counts(bench.client, workflow_ids[variant]),
        }
    return results, names["order"][0]


def targets(order: dict[str, Any], floor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The whole order's targets against its floor, as measured in one run."""
    checks: dict[str, dict[str, Any]] = {}
    for role in ("worker", "temporal"):
        value = ratio(order["cpu_seconds_per_order"][role], floor["cpu_seconds_per_order"][role])
        checks[f"order_{role}_cpu_over_floor"] = {
            "value": value,
            "target": "<= 1.5",
            "met": value is not None and value <= 1.5,
        }
    extra = round(order["billable_actions_per_order"] - floor["billable_actions_per_order"], 2)
    checks["order_billable_actions_minus_floor"] = {
        "value": extra,
        "target": "<= 3",
        "met": extra <= 3,
    }
    speed = ratio(order["orders_per_second"], floor["orders_per_second"])
    checks["order_orders_per_second_over_floor"] = {
        "value": speed,
        "target": ">= 0.7",
        "met": speed is not None and speed >= 0.7,
    }
    return checks


def table_lines(order: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    """The two variants side by side."""
    lines = [f"{'whole orders':<28} {'order':>10} {'floor':>10}"]
    rows = [
        ("orders/s", "orders_per_second"),
        ("history events", "history_events"),
        ("workflow tasks", "workflow_tasks"),
        ("billable actions", "billable_actions_per_order"),
    ]
    for label, key in rows:
        lines.append(f"{label:<28} {order[key]:>10} {floor[key]:>10}")
    for role in ("worker", "temporal"):
        mine, theirs = order["cpu_seconds_per_order"][role], floor["cpu_seconds_per_order"][role]
        lines.append(f"{'CPU s/order, ' + role:<28} {mine:>10} {theirs:>10}")
    kinds = sorted(set(order["billable_actions_by_kind"]) | set(floor["billable_actions_by_kind"]))
    for kind in kinds:
        mine = order["billable_actions_by_kind"].get(kind, 0)
        theirs = floor["billable_actions_by_kind"].get(kind, 0)
        lines.append(f"  {kind[:26]:<26} {mine:>10} {theirs:>10}")
    return lines
