"""`python -m bench.traced_worker`: the orders' worker (worker.py) with a timeline of what it
does for each workflow task, for bench/placement_timeline.py.

It wraps a few of the Python SDK's internals (temporalio 1.35; private names, which a later SDK
may rename: this is a measuring tool, never run in production) and appends one JSON line per
event to TIMELINE_FILE: an activation handled (`act`, with its jobs), the sandbox built for a new
workflow (`create`), the workflow code run (`activate`), the completion handed to the SDK's core
(`complete`: for the last activation of a task, the RespondWorkflowTaskCompleted round trip), an
activity run (`activity`), a garbage collection (`gc`, with its generation), the event loop late
by more than LAG_MS to wake a task (`lag`: what ran before it held the loop, or the process waited
for a core; the 5 ms ticker that sees it costs a little itself). Times are
time.perf_counter() (CLOCK_MONOTONIC: one clock for every process of the host).

INSTANT_RESERVATION=1 makes the simulated warehouse's reservation answer at once, without its
database: what a placement costs when the reservation itself costs nothing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import temporalio.bridge.worker as bridge_worker
from temporalio.worker import _activity, _workflow

import worker
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import Reservation, WarehouseOrder
from logs import configure_logging

_OUT = open(os.environ["TIMELINE_FILE"], "a", buffering=1)


def _log(kind: str, run_id: str, started: float, **more: Any) -> None:
    _OUT.write(
        json.dumps({"k": kind, "run": run_id, "t0": started, "t1": time.perf_counter(), **more})
        + "\n"
    )


# A wake-up later than this is logged as `lag`.
LAG_MS = 15
_TICK = 0.005
_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _log("gc", "", _gc_started, generation=info["generation"], collected=info["collected"])


async def _watch_loop() -> None:
    """Sleep a tick, again and again: a wake-up late by more than LAG_MS is the loop held."""
    while True:
        asleep = time.perf_counter()
        await asyncio.sleep(_TICK)
        late = time.perf_counter() - asleep - _TICK
        if late * 1000 > LAG_MS:
            _log("lag", "", asleep + _TICK)


async def _main() -> None:
    watcher = asyncio.create_task(_watch_loop())
    try:
        await worker.main()
    finally:
        watcher.cancel()


def _install() -> None:
    handle_activation = _workflow._WorkflowWorker._handle_activation

    async def traced_handle_activation(self: Any, act: Any) -> None:
        started = time.perf_counter()
        await handle_activation(self, act)
        jobs = [job.WhichOneof("variant") for job in act.jobs]
        _log("act", act.run_id, started, jobs=jobs)

    create_instance = _workflow._WorkflowWorker._create_workflow_instance

    def traced_create_instance(self: Any, act: Any, init: Any) -> Any:
        started = time.perf_counter()
        instance = create_instance(self, act, init)
        _log("create", act.run_id, started, workflow_id=init.workflow_id)
        return instance

    activate = _workflow._RunningWorkflow.activate

    def traced_activate(self: Any, act: Any) -> Any:
        started = time.perf_counter()
        completion = activate(self, act)
        _log("activate", act.run_id, started)
        return completion

    complete = bridge_worker.Worker.complete_workflow_activation

    async def traced_complete(self: Any, completion: Any) -> None:
        started = time.perf_counter()
        await complete(self, completion)
        _log("complete", completion.run_id, started)

    start_activity = _activity._ActivityWorker._handle_start_activity_task

    async def traced_start_activity(self: Any, token: Any, start: Any, running: Any) -> None:
        started = time.perf_counter()
        await start_activity(self, token, start, running)
        run_id = start.workflow_execution.run_id
        _log("activity", run_id, started, type=start.activity_type, local=start.is_local)

    patches: list[tuple[Any, str, Any]] = [
        (_workflow._WorkflowWorker, "_handle_activation", traced_handle_activation),
        (_workflow._WorkflowWorker, "_create_workflow_instance", traced_create_instance),
        (_workflow._RunningWorkflow, "activate", traced_activate),
        (bridge_worker.Worker, "complete_workflow_activation", traced_complete),
        (_activity._ActivityWorker, "_handle_start_activity_task", traced_start_activity),
    ]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    gc.callbacks.append(_on_gc)

    if os.environ.get("INSTANT_RESERVATION") == "1":

        async def instant_reserve(self: SimulatedWarehouse, order: WarehouseOrder) -> Reservation:
            return Reservation(
                order_id=order.order_id, lines=order.lines, reserved_at=datetime.now(UTC)
            )

        setattr(SimulatedWarehouse, "reserve", instant_reserve)  # noqa: B010


if __name__ == "__main__":
    configure_logging()
    _install()
    asyncio.run(_main())
