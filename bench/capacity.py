"""`python -m bench.capacity` (run by `make bench`): the capacity of this machine in whole orders.

An open loop of whole orders at a fixed rate: order i is placed over HTTP when due (start + i /
rate, whatever happened to the ones before), dispatched as soon as its placement answers, and
awaited until invoiced. A rate holds when under 1 % of the calls were answered 503, the placement's
p99 (counted from when it was due) is under 1 s, every order is invoiced within `--order-bound`
seconds of when it was due (at a rate the machine does not sustain, orders queue up and the later
ones miss it), and no call failed otherwise (another status, a dropped connection, no answer in
30 s). Before the next rate, the late orders of the last one get `--drain` seconds to end. The
sweep raises the rate by `--step` until one fails, then tries the middle of the last that held and
the first that failed; the capacity is the highest rate that held (`capacity_orders_per_second`
in bench/results.json). `make soak` starts its orders at 60 % of it by default
(devtools/soak.py).

The stack is the soak's (devtools/soak.py: two workers, steps of 0.5 s, the API's default
timeouts), every process on this machine, the load generator this process.

    python -m bench.capacity [--seconds 20] [--start 2] [--step 2] [--max 40] [--order-bound 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.calls import STOCK, Http, new_id, percentile, placement_body, settings_for
from devtools.processes import ProcessStack
from worker import connect
from workflows import ids
from workflows.order import OrderWorkflow

MAX_503_SHARE = 0.01
# A call not answered within this has hung: counted as a failure.
CALL_DEADLINE = 30.0
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


async def one_order(
    http: Http, client: Client, endpoint: str, order_id: str, due: float, bound: float, tally: Tally
) -> bool | None:
    """Place (latency from `due`), then dispatch, then wait for the order: whether it was invoiced
    within `bound` s of `due`; None if a call failed. 503s and any other failure (another status,
    a refused or dropped connection, no answer within CALL_DEADLINE) are counted."""
    body = placement_body(order_id, endpoint)
    fulfil = {"marketplaceOrderId": order_id}
    for name, raw in (
        ("placement", http.raw("POST", "/pvt/orders", body)),
        ("dispatch", http.raw("POST", f"/pvt/orders/SLR-{order_id}/fulfill", fulfil)),
    ):
        tally.calls += 1
        try:
            status, answer = await asyncio.wait_for(http.request(raw), CALL_DEADLINE)
        except Exception as err:  # counted: a failing call is what the sweep looks for
            tally.other_failures.append(f"{name}: {type(err).__name__}: {err}"[:200])
            return None
        finally:
            if name == "placement":
                tally.placement_ms.append((time.perf_counter() - due) * 1000)
        if status != 200:
            if status == 503:
                tally.unavailable += 1
            else:
                tally.other_failures.append(f"{name} {status}: {answer[:200]!r}")
            return None
    return await served(client, order_id, due + bound)


async def served(client: Client, order_id: str, by: float) -> bool:
    """Whether the order's workflow ended `invoiced` by `by` (perf_counter)."""
    handle = client.get_workflow_handle_for(OrderWorkflow.run, ids.workflow_id(order_id))
    try:
        view = await asyncio.wait_for(handle.result(), max(0.01, by - time.perf_counter()))
    except Exception:  # not ended in time, or failed: not served
        return False
    return str(view.status) == "invoiced"


async def at_rate(
    stack: ProcessStack, client: Client, http: Http, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """`rate` orders a second for `args.seconds`: the rate's figures and whether it held. Each
    order must be invoiced within `args.order_bound` seconds of when it was due: at a rate the
    machine does not sustain the orders queue up, and the later ones miss it."""
    tally = Tally()
    count = max(1, round(rate * args.seconds))
    start = time.perf_counter() + 0.05
    tasks = []
    names = [new_id() for _ in range(count)]
    for i, order_id in enumerate(names):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        one = one_order(http, client, stack.endpoint, order_id, due, args.order_bound, tally)
        tasks.append(asyncio.create_task(one))
    outcomes = await asyncio.gather(*tasks)
    done = [ok for ok in outcomes if ok is not None]
    # What is still running ends before the next rate starts, so that none inherits a backlog.
    late = [o for o, ok in zip(names, outcomes, strict=True) if ok is False]
    deadline = time.perf_counter() + args.drain
    await asyncio.gather(*(served(client, o, deadline) for o in late))
    share = tally.unavailable / max(tally.calls, 1)
    p99 = percentile(tally.placement_ms, 0.99)
    held = (
        share < MAX_503_SHARE
        and p99 < MAX_PLACEMENT_P99_MS
        and all(done)
        and len(done) == count
        and not tally.other_failures
    )
    return {
        "rate": rate,
        "orders": count,
        "calls": tally.calls,
        "answered_503": tally.unavailable,
        "share_503": round(share, 4),
        "placement_p99_ms": round(p99, 1),
        "placement_p50_ms": round(percentile(tally.placement_ms, 0.5), 1),
        "invoiced_in_time": sum(done),
        "other_failures": tally.other_failures[:3],
        "held": held,
    }


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Rates from `--start` up by `--step` until one fails, then the middle of the last two."""
    tried: list[dict[str, Any]] = []
    held = 0.0
    with tempfile.TemporaryDirectory(prefix="capacity-") as folder:
        stack = ProcessStack(
            Path(folder),
            workers=WORKERS,
            step_seconds=STEP_SECONDS,
            env={"DEFAULT_STOCK": str(STOCK), "WORKER_SHUTDOWN_GRACE_SECONDS": "1"},
        )
        with stack:
            client = await connect(settings_for(stack))
            http = Http(stack.api_url)
            try:
                await at_rate(stack, client, http, args.start, warm_up(args))

                async def attempt(rate: float) -> bool:
                    figures = await at_rate(stack, client, http, rate, args)
                    print(f"capacity: {json.dumps(figures)}", flush=True)
                    tried.append(figures)
                    return bool(figures["held"])

                rate, failed = args.start, 0.0
                while rate <= args.max:
                    if not await attempt(rate):
                        failed = rate
                        break
                    held, rate = rate, rate + args.step
                if failed and failed - held > 1 and await attempt(round((held + failed) / 2, 1)):
                    held = round((held + failed) / 2, 1)
            finally:
                http.close()
    return {
        "capacity_orders_per_second": held,
        "criteria": f"under {MAX_503_SHARE:.0%} of calls answered 503, placement p99 under "
        f"{MAX_PLACEMENT_P99_MS:g} ms, every order invoiced within {args.order_bound:g} s of "
        "when it was due, no other failure",
        "stack": f"{WORKERS} workers, FULFILLMENT_STEP_SECONDS={STEP_SECONDS}",
        "seconds_per_rate": args.seconds,
        "rates": tried,
    }


def warm_up(args: argparse.Namespace) -> argparse.Namespace:
    """The sweep's options for a 5-second warm-up at the first rate."""
    return argparse.Namespace(**{**vars(args), "seconds": min(5.0, args.seconds)})


def parser() -> argparse.ArgumentParser:
    """The sweep's options."""
    options = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.splitlines()[0]
    )
    options.add_argument("--seconds", type=float, default=20, help="how long each rate runs")
    options.add_argument("--start", type=float, default=2, help="the first rate, orders/s")
    options.add_argument("--step", type=float, default=2, help="added to the rate each time")
    options.add_argument("--max", type=float, default=40, help="the highest rate tried")
    options.add_argument(
        "--order-bound",
        type=float,
        default=10,
        help="s within which each order must be invoiced, from when it was due",
    )
    options.add_argument(
        "--drain", type=float, default=60, help="s a rate's late orders get to end before the next"
    )
    return options


def options(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed and checked (make bench checks them before its run, not after)."""
    parsed = parser().parse_args(argv)
    if min(parsed.seconds, parsed.start, parsed.step, parsed.order_bound) <= 0:
        parser().error("--seconds, --start, --step and --order-bound must be positive")
    return parsed


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    """The sweep, with `argv`'s options (make bench passes its own)."""
    return asyncio.run(sweep(options(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
