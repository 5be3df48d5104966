"""`python -m bench.stall_trace`: where the open loop's slow placements lose their time, traced
across the processes.

On make bench's stack (bench/suite.py `running`) with the orders' worker replaced by
bench/traced_worker.py (its timeline: each activation, the sandbox built, the local activity, the
completion's round trip, every garbage collection, the event loop late to wake a task: held by
what ran, or waiting for a core), placements are sent over HTTP in an open loop (call i due at
start + i / rate, its latency counted from then), while a thread of this process samples every
SAMPLE_SECONDS the CPU time of the dev server, the worker and the API and the machine's runnable
threads (/proc). For the slowest calls it prints where the time went: the segments of the worker's
timeline (bench/placement_timeline.py's), the collections and late wake-ups of the worker's loop
during the call, each process's share of a core during it, and the most runnable threads seen.
Then over every call slower than 3x the median: how many met a collection or a late loop in the
worker, a busy server (over 0.9 of a core), a full machine (more runnable threads than cores).

    python -m bench.stall_trace [--rate 20] [--seconds 30] [--slowest 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import calls, suite
from bench.placement_timeline import WORKER_READY, segments
from workflows import ids

SAMPLE_SECONDS = 0.01
SLOW_FACTOR = 3


class CpuSampler(threading.Thread):
    """CPU seconds of each process, and the runnable threads, every SAMPLE_SECONDS."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float], int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            taken = {role: calls.cpu_seconds(pid) for role, pid in self.pids.items()}
            # This thread is running as it reads: it is not one of the others.
            runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1
            self.samples.append((time.perf_counter(), taken, runnable))

    def during(self, start: float, end: float) -> dict[str, Any]:
        """Each process's share of a core between `start` and `end`, the most runnable threads."""
        inside = [s for s in self.samples if start - SAMPLE_SECONDS <= s[0] <= end + SAMPLE_SECONDS]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        span = max(last[0] - first[0], 1e-9)
        return {
            "core_share": {r: round((last[1][r] - first[1][r]) / span, 2) for r in self.pids},
            "most_runnable_threads": max(s[2] for s in inside),
        }


def worker_events(rows: list[dict[str, Any]], kind: str, start: float, end: float) -> list[Any]:
    """The worker's `kind` events (gc, lag) overlapping [start, end], as [ms into the call, ms]."""
    return [
        [round((r["t0"] - start) * 1000, 1), round((r["t1"] - r["t0"]) * 1000, 1)]
        + ([r["generation"]] if kind == "gc" else [])
        for r in rows
        if r["k"] == kind and r["t1"] >= start and r["t0"] <= end
    ]


def explain(
    call: tuple[str, float, float],
    rows: list[dict[str, Any]],
    by_run: dict[str, list[dict[str, Any]]],
    run_of: dict[str, str],
    sampler: CpuSampler,
) -> dict[str, Any]:
    """One call's trace."""
    workflow_id, due, answered = call
    run = run_of.get(workflow_id)
    timeline = {}
    if run is not None:
        timeline = {k: round(v, 1) for k, v in segments(by_run[run], due, answered).items()}
    return {
        "order": workflow_id,
        "ms": round((answered - due) * 1000, 1),
        "segments_ms": timeline,
        "worker_gc_ms": worker_events(rows, "gc", due, answered),
        "worker_loop_late_ms": worker_events(rows, "lag", due, answered),
        **sampler.during(due, answered),
    }


async def open_loop(
    b: calls.Bench, rate: float, count: int, failures: list[str] | None = None
) -> list[tuple[str, float, float]]:
    """`count` placements over HTTP at `rate`: (workflow id, due, answered) of each answered 200
    within 30 s; the others' errors go to `failures`."""
    op = b.op("placement", "http")
    done: list[tuple[str, float, float]] = []

    async def one(item: tuple[str, bytes], due: float) -> None:
        try:
            await asyncio.wait_for(op(item), 30)
        except Exception as err:  # not a latency: listed apart
            if failures is not None:
                failures.append(f"{type(err).__name__}: {err}"[:200])
            return
        done.append((ids.workflow_id(item[0]), due, time.perf_counter()))

    tasks = []
    start = time.perf_counter() + 0.05
    for i, item in enumerate(b.items("placement", "http", count)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(item, due)))
    await asyncio.gather(*tasks, return_exceptions=True)
    return done


async def trace(args: argparse.Namespace) -> dict[str, Any]:
    """The stack, the traced worker, the open loop, the slowest calls explained."""
    sys.argv = [sys.argv[0], "--rounds", "1"]
    bench_args = suite.parse_args()
    with tempfile.TemporaryDirectory(prefix="stall-") as folder:
        workdir = Path(folder)
        async with suite.running(workdir, bench_args) as b:
            b.stack.retire_workers()
            timeline = workdir / "timeline.jsonl"
            worker = b.stack.add_process(
                "traced-worker",
                [sys.executable, "-m", "bench.traced_worker"],
                {"TIMELINE_FILE": str(timeline)},
                ready_text=WORKER_READY,
            )
            await open_loop(b, args.rate, max(20, int(args.rate * 3)))  # warm-up
            await b.settle()
            pids = {"temporal": b.stack.temporal.pid, "worker": worker.pid, "api": b.stack.api.pid}
            sampler = CpuSampler(
                {r: p for r, p in pids.items() if p is not None} | {"load generator": os.getpid()}
            )
            sampler.start()
            failures: list[str] = []
            made = await open_loop(b, args.rate, int(args.rate * args.seconds), failures)
            await asyncio.sleep(0.5)
            sampler.stopped.set()
            rows = [json.loads(line) for line in timeline.read_text().splitlines()]
    run_of = {r["workflow_id"]: r["run"] for r in rows if r["k"] == "create"}
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    latencies = [(answered - due) * 1000 for _, due, answered in made]
    median = statistics.median(latencies)
    ordered = sorted(made, key=lambda c: c[1] - c[2])
    slow = [c for c in made if (c[2] - c[1]) * 1000 > SLOW_FACTOR * median]
    traces = [explain(c, rows, by_run, run_of, sampler) for c in slow]
    cores = os.cpu_count() or 1
    return {
        "rate": args.rate,
        "calls": len(made),
        "failed_calls": len(failures),
        "first_failures": failures[:3],
        "p50_ms": round(median, 1),
        "p99_ms": round(calls.percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "slower_than": f"{SLOW_FACTOR}x the median",
        "slow_calls": len(slow),
        "slow_calls_meeting": {
            "a collection in the worker": sum(1 for t in traces if t["worker_gc_ms"]),
            "the worker's loop late": sum(1 for t in traces if t["worker_loop_late_ms"]),
            "the server over 0.9 of a core": sum(
                1 for t in traces if t.get("core_share", {}).get("temporal", 0) > 0.9
            ),
            f"more runnable threads than the {cores} cores": sum(
                1 for t in traces if t.get("most_runnable_threads", 0) > cores
            ),
        },
        "slowest": [explain(c, rows, by_run, run_of, sampler) for c in ordered[: args.slowest]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="placements a second")
    parser.add_argument("--seconds", type=float, default=30, help="how long the loop runs")
    parser.add_argument("--slowest", type=int, default=3, help="calls traced in full")
    parser.add_argument("--json", type=Path, help="also write the results there")
    args = parser.parse_args()
    results = asyncio.run(trace(args))
    text = json.dumps(results, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
