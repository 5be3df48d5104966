"""`python -m bench.trivial_worker`: runs bench/trivial_workflow.py's TrivialWorkflow and
bench/order_floor.py's OrderFloorWorkflow (with its activities) on BENCH_TASK_QUEUE against
TEMPORAL_ADDRESS, with the client the orders' worker builds (worker.connect: same data converter)
and the same sandbox, until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

from temporalio.worker import Worker

from bench.order_floor import FLOOR_ACTIVITIES, OrderFloorWorkflow
from bench.trivial_workflow import TrivialWorkflow
from config import get_settings
from logs import configure_logging
from worker import connect, workflow_runner

READY_TEXT = "bench worker polling"

log = logging.getLogger("bench_worker")


async def main() -> None:
    """Serve the trivial workflow until interrupted."""
    settings = get_settings()
    task_queue = os.environ.get("BENCH_TASK_QUEUE", f"{settings.task_queue}-trivial")
    stop = asyncio.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(stop_signal, stop.set)
    client = await connect(settings)
    # The orders' workers' sandbox (WORKFLOW_SANDBOX): the floor is the same SDK, set up alike.
    runner = workflow_runner(settings)
    # As worker.py does: what is built before polling stays out of the collector's reach.
    gc.collect()
    gc.freeze()
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[TrivialWorkflow, OrderFloorWorkflow],
        activities=list(FLOOR_ACTIVITIES),
        workflow_runner=runner,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
    ):
        log.info("%s %s", READY_TEXT, task_queue)
        await stop.wait()


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())
