"""The service in one event loop: a fake marketplace, a worker and the API (its VTEX-facing app
and its ops listener) on loopback, for the tests and the benchmark."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from temporalio.client import Client

from api.app import create_app
from api.ops import create_ops_app
from config import Settings
from devtools.fake_marketplace import RunningFakeMarketplace, serve_fake_marketplace
from devtools.serving import serve_asgi
from worker import run_worker

# How long a worker may take to poll its task queue before the stack gives up on it.
WORKER_START_SECONDS = 30.0


async def _polling(worker: asyncio.Task[None], ready: asyncio.Event, seconds: float) -> None:
    """Return once the worker polls; raise at once the error that stopped it first (e.g. a
    warehouse it could not build), or TimeoutError after `seconds`."""
    polling = asyncio.ensure_future(ready.wait())
    try:
        done, _ = await asyncio.wait(
            {polling, worker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        polling.cancel()
    if polling in done:
        return
    if worker in done:
        worker.result()  # its error
        raise RuntimeError("the worker stopped before it polled its task queue")
    raise TimeoutError(f"the worker did not poll its task queue within {seconds:g} s")


@dataclass
class LocalStack:
    """Where the running pieces are."""

    api_url: str
    # The ops listener: /metrics, /docs, /openapi.json, the codec (api/ops.py).
    ops_url: str
    marketplace: RunningFakeMarketplace


@asynccontextmanager
async def local_stack(client: Client, settings: Settings) -> AsyncIterator[LocalStack]:
    """Serve the API and run a worker with `settings` (its own task queue, data dir) until the
    block exits.

    With a SELLER_ID and no CHANGE_NOTIFICATION_URL, change notifications go to the fake
    marketplace's account API (`{its url}/api`)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    async with serve_fake_marketplace() as marketplace:
        if settings.seller_id and not settings.change_notification_url:
            settings = settings.model_copy(
                update={"change_notification_url": f"{marketplace.url}/api"}
            )
        worker = asyncio.create_task(run_worker(settings, client, stop, ready))
        try:
            await _polling(worker, ready, WORKER_START_SECONDS)
            api = create_app(settings, client=client)
            async with serve_asgi(api) as api_url, serve_asgi(create_ops_app(api)) as ops_url:
                yield LocalStack(api_url=api_url, ops_url=ops_url, marketplace=marketplace)
        finally:
            stop.set()
            await worker
