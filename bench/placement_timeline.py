"""`python -m bench.placement_timeline`: where a placement's time goes, one at a time.

On make bench's stack (bench/suite.py `running`), the orders' worker is replaced by
bench/traced_worker.py, and placements are made one at a time from Python (the floor:
api.order_calls.place_order), each right after the previous one's answer. For each, the worker's
timeline: from the call to the first activation (the server and the task's dispatch), the sandbox
built for the new workflow, the first activation's code, the local activity (the reservation),
the second activation and its completion (the RespondWorkflowTaskCompleted round trip), and what
is left until the answer. Then the same with INSTANT_RESERVATION=1 (a reservation that costs
nothing), and the trivial workflow's update-with-start for comparison. It prints the medians, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import calls, suite
from workflows import ids

WORKER_READY = "worker polling task queue"


def segments(events: list[dict[str, Any]], sent: float, answered: float) -> dict[str, float]:
    """One placement's timeline, in ms from its call."""
    mine = sorted((e for e in events if e["t0"] <= answered), key=lambda e: e["t0"])
    acts = [e for e in mine if e["k"] == "act"]
    create = next(e for e in mine if e["k"] == "create")
    activity = next((e for e in mine if e["k"] == "activity"), None)
    completes = [e for e in mine if e["k"] == "complete"]
    ms = 1000
    figures = {
        "to first activation": (acts[0]["t0"] - sent) * ms,
        "sandbox (new workflow)": (create["t1"] - create["t0"]) * ms,
        "first activation, rest": (acts[0]["t1"] - acts[0]["t0"] - (create["t1"] - create["t0"]))
        * ms,
        "last completion (round trip)": (completes[-1]["t1"] - completes[-1]["t0"]) * ms,
        "after the worker, to the answer": (answered - acts[-1]["t1"]) * ms,
        "total": (answered - sent) * ms,
    }
    if activity is not None and len(acts) > 1:
        figures["local activity"] = (activity["t1"] - activity["t0"]) * ms
        figures["second activation, before its completion"] = (
            acts[-1]["t1"] - acts[-1]["t0"] - (completes[-1]["t1"] - completes[-1]["t0"])
        ) * ms
    return figures


async def traced_placements(b: calls.Bench, timeline: Path, count: int) -> dict[str, float]:
    """`count` placements one at a time; the medians of their segments."""
    await asyncio.to_thread(timeline.write_text, "")
    calls: list[tuple[str, float, float]] = []
    place = b.op("placement", "floor")
    for item in b.items("placement", "floor", count):
        sent = time.perf_counter()
        await place(item)
        calls.append((ids.workflow_id(item[0]), sent, time.perf_counter()))
    await asyncio.sleep(0.5)
    return medians(await asyncio.to_thread(timeline.read_text), calls)


def medians(timeline: str, calls: list[tuple[str, float, float]]) -> dict[str, float]:
    """The median of each segment over the placements `calls` made (workflow id, sent, answered),
    from the traced worker's `timeline`."""
    rows = [json.loads(line) for line in timeline.splitlines()]
    run_of = {r["workflow_id"]: r["run"] for r in rows if r["k"] == "create"}
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    measured = [
        segments(by_run[run_of[wid]], sent, answered)
        for wid, sent, answered in calls
        if wid in run_of
    ]
    names = list(dict.fromkeys(name for m in measured for name in m))
    return {n: round(statistics.median(m[n] for m in measured if n in m), 2) for n in names}


async def trivial_placements(b: calls.Bench, count: int) -> float:
    """The trivial workflow's update-with-start, one at a time: its median, ms."""
    sample = calls.Sample()
    await calls.one_at_a_time(
        b.op("placement", "trivial"), b.items("placement", "trivial", count), sample
    )
    return float(sample.figures()["p50_ms"])


async def run(count: int) -> dict[str, Any]:
    """Traced placements with the real reservation, then an instant one; the trivial's."""
    sys.argv = [sys.argv[0], "--rounds", "1"]
    args = suite.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="timeline-") as folder:
        workdir = Path(folder)
        async with suite.running(workdir, args) as b:
            await b.fill_pools(0, 20)
            results["trivial update-with-start p50"] = await trivial_placements(b, count)
            for name, instant in (("reservation", "0"), ("instant reservation", "1")):
                b.stack.retire_workers()
                timeline = workdir / f"timeline-{instant}.jsonl"
                b.stack.add_process(
                    f"traced-worker-{instant}",
                    [sys.executable, "-m", "bench.traced_worker"],
                    {"TIMELINE_FILE": str(timeline), "INSTANT_RESERVATION": instant},
                    ready_text=WORKER_READY,
                )
                await traced_placements(b, timeline, 10)  # warm-up
                results[name] = await traced_placements(b, timeline, count)
            results["trivial update-with-start p50, again"] = await trivial_placements(b, count)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="placements of each kind")
    results = asyncio.run(run(parser.parse_args().count))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
