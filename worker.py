"""One worker: runs order workflows and their activities from the task queue.

Start as many as the load needs, on as many machines, all against the same Temporal cluster:
    TEMPORAL_ADDRESS=temporal.example:7233 python worker.py
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.fulfillment import FulfillmentActivities
from activities.marketplace import MarketplaceClient
from activities.warehouse import load_warehouse
from codec import data_converter
from config import Settings, get_settings
from logs import configure_logging
from workflows.order import OrderWorkflow

# A cancellation reaches a running activity in the answer to its next heartbeat. The SDK holds
# heartbeats back for 0.8 x the heartbeat timeout unless told otherwise; 200 ms makes a
# cancellation stop a step within a few hundred milliseconds.
HEARTBEAT_THROTTLE = timedelta(milliseconds=200)

log = logging.getLogger("worker")


async def connect(settings: Settings) -> Client:
    """The Temporal client, with the data converter the API uses too (pydantic, and the payload
    encryption when PAYLOAD_ENCRYPTION_KEY is set)."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings.encryption_key),
    )


async def run_worker(
    settings: Settings,
    client: Client,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a worker until `stop` is set; sets `ready` once it polls the task queue."""
    async with AsyncExitStack() as stack:
        warehouse = load_warehouse(settings)
        stack.push_async_callback(warehouse.close)
        marketplace = MarketplaceClient.from_settings(settings)
        stack.push_async_callback(marketplace.close)
        activities = FulfillmentActivities(warehouse, marketplace)
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[OrderWorkflow],
            activities=activities.all(),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        async with worker:
            log.info(
                "worker polling task queue %r on %s (warehouse %s)",
                settings.task_queue,
                settings.temporal_address,
                settings.warehouse,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("worker stopping")


async def main() -> None:
    """Connect (retrying while Temporal starts) and run until interrupted."""
    settings = get_settings()
    stop = asyncio.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(stop_signal, stop.set)
    while not stop.is_set():
        try:
            client = await connect(settings)
            break
        except RuntimeError as err:
            log.warning(
                "Temporal at %s not reachable yet (%s); retrying", settings.temporal_address, err
            )
            await asyncio.sleep(2)
    else:
        return
    await run_worker(settings, client, stop)


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())
