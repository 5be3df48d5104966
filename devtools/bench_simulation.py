"""The fulfillment simulation under a fixed open-loop load: the API as `python -m api` runs it, in
its own process, and this load generator in another, on loopback.

VTEX treats a SKU as unavailable when the simulation takes over 2.5 s; the goal here is a p99 of
at most 20 ms at 200 requests/s on the 2-core machine. Open loop: request i is due at
`start + i / rate`, whatever happened to the ones before, and its latency counts from when it was
due (a slow answer delays no later request, and a backlog shows in the figures). Bounded: `count`
requests, then it stops.

    python -m devtools.bench_simulation [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from activities.catalog import Catalog, CatalogEntry
from devtools.processes import ProcessStack

CART = {
    "items": [
        {"id": "bench-shoe", "quantity": 1, "seller": "1"},
        {"id": "bench-sock", "quantity": 2, "seller": "1"},
        {"id": "bench-cap", "quantity": 1, "seller": "1"},
    ],
    "postalCode": "01310-100",
    "country": "BRA",
}


def percentile(ordered: list[float], share: float) -> float:
    """The `share` percentile of sorted samples (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def open_loop(url: str, rate: float, count: int) -> dict[str, Any]:
    """`count` simulations due at `rate` per second; their latencies from when each was due."""
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
        for _ in range(20):  # warm-up: connections, the catalog's engine, the shipping table
            (await http.post("/pvt/orderForms/simulation", json=CART)).raise_for_status()

        async def one(due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                response = await http.post("/pvt/orderForms/simulation", json=CART)
                if response.status_code != 200:
                    failures.append(str(response.status_code))
            except httpx.HTTPError as err:
                failures.append(type(err).__name__)
            latencies.append((time.monotonic() - due) * 1000)

        start = time.monotonic() + 0.1
        await asyncio.gather(*(one(start + i / rate) for i in range(count)))
        elapsed = time.monotonic() - start
    ordered = sorted(latencies)
    return {
        "rate_rps": rate,
        "requests": count,
        "achieved_rps": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "failures": len(failures),
    }


def measure(rate: float, seconds: float) -> dict[str, Any]:
    """Start the API (and what it needs) as processes, load a catalog, run the load."""
    with tempfile.TemporaryDirectory(prefix="bench-simulation-") as folder:
        stack = ProcessStack(Path(folder), workers=0)
        with stack:
            Catalog(stack.warehouse_store).load(
                [
                    CatalogEntry(sku="bench-shoe", name="Shoe", price=2499, stock=1000),
                    CatalogEntry(sku="bench-sock", name="Sock", price=990, stock=1000),
                    CatalogEntry(sku="bench-cap", name="Cap", price=1990, stock=0),
                ]
            )
            return asyncio.run(open_loop(stack.api_url, rate, round(rate * seconds)))


def main() -> None:
    """Print (and optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10, help="how long the load lasts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure(args.rate, args.seconds)
    print(f"fulfillment simulation, open loop: {figures}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
