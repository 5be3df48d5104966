"""`python -m bench.capacity` (run by `make bench`): the capacity of this machine in whole orders.

An open loop of whole orders at a fixed rate: order i is placed over HTTP when due (start + i /
rate, whatever happened to the ones before), dispatched as soon as its placement answers, and
awaited until invoiced. A rate holds when under 1 % of the calls were answered 503, the placement's
p99 (counted from when it was due) is under 1 s, and every order placed is invoiced within
`--drain` seconds of the last one's due time. The sweep raises the rate by `--step` until one
fails, then tries the middle of the last that held and the first that failed; the capacity is the
highest rate that held (`capacity_orders_per_second` in bench/results.json). `make soak` starts its
orders at 60 % of it by default (devtools/soak.py).

The stack is the soak's (devtools/soak.py: two workers, steps of 0.5 s, the API's default
timeouts), every process on this machine, the load generator this process.

    python -m bench.capacity [--seconds 20] [--start 2] [--step 2] [--max 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.calls import STOCK, Http, new_id, percentile, settings_for
from devtools.processes import ProcessStack
from worker import connect
from workflows import ids
from workflows.order import OrderWorkflow

MAX_503_SHARE = 0.01
MAX_PLACEMENT_P99_MS = 1000.0
# The soak's shape (devtools/soak.py's defaults).
WORKERS = 2
STEP_SECONDS = 0.5


@dataclass
class Tally:
    """What one rate's orders met."""

    calls: int = 0
    unavailable: int = 0  # answered 503
    other_failures: list[str] = field(default_factory=list)
    placement_ms: list[float] = field(default_factory=list)
    placed: list[str] = field(default_factory=list)


def placement_body(order_id: str, endpoint: str) -> dict[str, Any]:
    """A small valid orderPlacement (bench/calls.py's)."""
    return {
        "marketplaceOrderId": order_id,
        "marketplaceServicesEndpoint": endpoint,
        "items": [{"id": "bench-sku", "quantity": 1, "seller": "1", "price": 1000}],
        "shippingData": {
            "logisticsInfo": [
                {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": "1d", "price": 500}
            ]
        },
    }


async def one_order(http: Http, endpoint: str, order_id: str, due: float, tally: Tally) -> None:
    """Place (latency from `due`), then dispatch; 503s and other failures counted."""
    body = placement_body(order_id, endpoint)
    status, answer = await http.request(http.raw("POST", "/pvt/orders", body))
    tally.placement_ms.append((time.perf_counter() - due) * 1000)
    tally.calls += 1
    if status != 200:
        if status == 503:
            tally.unavailable += 1
        else:
            tally.other_failures.append(f"placement {status}: {answer[:200]!r}")
        return
    tally.placed.append(order_id)
    fulfil = {"marketplaceOrderId": order_id}
    status, answer = await http.request(
        http.raw("POST", f"/pvt/orders/SLR-{order_id}/fulfill", fulfil)
    )
    tally.calls += 1
    if status == 503:
        tally.unavailable += 1
    elif status != 200:
        tally.other_failures.append(f"dispatch {status}: {answer[:200]!r}")


async def at_rate(
    stack: ProcessStack, http: Http, rate: float, seconds: float, drain: float
) -> dict[str, Any]:
    """`rate` orders a second for `seconds`: the rate's figures and whether it held."""
    client = await connect(settings_for(stack))
    tally = Tally()
    count = max(1, round(rate * seconds))
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one_order(http, stack.endpoint, new_id(), due, tally)))
    await asyncio.gather(*tasks)
    last_due = start + (count - 1) / rate

    async def invoiced(order_id: str) -> bool:
        handle = client.get_workflow_handle_for(OrderWorkflow.run, ids.workflow_id(order_id))
        try:
            within = max(0.1, last_due + drain - time.perf_counter())
            view = await asyncio.wait_for(handle.result(), within)
        except Exception:  # not ended in time, or failed: not served
            return False
        return view.status.value == "invoiced"

    done = await asyncio.gather(*(invoiced(i) for i in tally.placed))
    share = tally.unavailable / max(tally.calls, 1)
    p99 = percentile(tally.placement_ms, 0.99)
    held = (
        share < MAX_503_SHARE
        and p99 < MAX_PLACEMENT_P99_MS
        and all(done)
        and not tally.other_failures
        and len(tally.placed) == count
    )
    return {
        "rate": rate,
        "orders": count,
        "calls": tally.calls,
        "answered_503": tally.unavailable,
        "share_503": round(share, 4),
        "placement_p99_ms": round(p99, 1),
        "placement_p50_ms": round(percentile(tally.placement_ms, 0.5), 1),
        "invoiced": sum(done),
        "other_failures": tally.other_failures[:3],
        "held": held,
    }


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Rates from `--start` up by `--step` until one fails, then the middle of the last two."""
    with tempfile.TemporaryDirectory(prefix="capacity-") as folder:
        stack = ProcessStack(
            Path(folder),
            workers=WORKERS,
            step_seconds=STEP_SECONDS,
            env={"DEFAULT_STOCK": str(STOCK), "WORKER_SHUTDOWN_GRACE_SECONDS": "1"},
        )
        with stack:
            http = Http(stack.api_url)
            try:
                await at_rate(stack, http, args.start, 5, args.drain)  # warm-up
                tried: list[dict[str, Any]] = []
                rate, held, failed = args.start, 0.0, 0.0
                while rate <= args.max:
                    figures = await at_rate(stack, http, rate, args.seconds, args.drain)
                    print(f"capacity: {json.dumps(figures)}", flush=True)
                    tried.append(figures)
                    if not figures["held"]:
                        failed = rate
                        break
                    held, rate = rate, rate + args.step
                if failed and failed - held > 1:
                    middle = round((held + failed) / 2, 1)
                    figures = await at_rate(stack, http, middle, args.seconds, args.drain)
                    print(f"capacity: {json.dumps(figures)}", flush=True)
                    tried.append(figures)
                    if figures["held"]:
                        held = middle
            finally:
                http.close()
    return {
        "capacity_orders_per_second": held,
        "criteria": f"under {MAX_503_SHARE:.0%} of calls answered 503, placement p99 under "
        f"{MAX_PLACEMENT_P99_MS:g} ms, every order invoiced within {args.drain:g} s of the last "
        "one's due time",
        "stack": f"{WORKERS} workers, FULFILLMENT_STEP_SECONDS={STEP_SECONDS}",
        "seconds_per_rate": args.seconds,
        "rates": tried,
    }


def parser() -> argparse.ArgumentParser:
    """The sweep's options."""
    options = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.splitlines()[0]
    )
    options.add_argument("--seconds", type=float, default=20, help="how long each rate runs")
    options.add_argument("--start", type=float, default=2, help="the first rate, orders/s")
    options.add_argument("--step", type=float, default=2, help="added to the rate each time")
    options.add_argument("--max", type=float, default=40, help="the highest rate tried")
    options.add_argument("--drain", type=float, default=15, help="s to finish after the last")
    return options


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    """The sweep, with `argv`'s options (make bench passes its own)."""
    return asyncio.run(sweep(parser().parse_args(argv or [])))


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
