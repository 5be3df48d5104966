"""`make bench`'s per-call measurements: placement, dispatch and cancel, each made three ways
(over HTTP, the API's own Temporal calls, a trivial workflow) in three shapes (one at a time, a
closed loop, an open loop at a fixed rate): bench/suite.py says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from api import order_calls
from api.models import OrderPlacement, RequestOrderId
from bench import simulation_load
from bench.simulation_load import HttpError
from bench.trivial_workflow import TrivialInput, TrivialRequest, TrivialWorkflow
from config import Settings
from devtools.processes import Process, ProcessStack
from workflows import ids

CALLS = ("placement", "dispatch", "cancel")
# Far more than any run sells: stock never runs out.
STOCK = 10_000_000
VARIANTS = ("floor", "http", "trivial")


# --- HTTP ---------------------------------------------------------------------------------------


class Http(simulation_load.Client):
    """Keep-alive HTTP/1.1 connections to the API (simulation_load's client): about 0.5 ms of
    CPU per request, where httpx spends 3.5 ms."""

    def raw(self, method: str, path: str, body: Any = None) -> bytes:
        """One request's bytes."""
        return simulation_load.request_bytes(self.netloc, path, body, method)

    async def call(self, method: str, path: str, body: Any = None) -> bytes:
        """One call that must answer 200; its body."""
        status, answer = await self.request(self.raw(method, path, body))
        if status != 200:
            raise HttpError(f"{method} {path} answered {status}: {answer[:300]!r}")
        return answer


# --- processes: CPU and memory --------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system, every thread) process `pid` has used so far; 0 if gone."""
    return simulation_load.cpu_seconds(pid) or 0.0


def rss_mb(pid: int | None) -> float | None:
    """The resident memory of process `pid` in MiB (VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def uptime() -> str:
    """The load averages, as `uptime` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Meter:
    """CPU seconds of every process of the run over a stretch of time."""

    processes: Callable[[], dict[str, list[Process]]]

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far, per role (the workers summed)."""
        taken = {
            role: sum(cpu_seconds(p.pid) for p in group) for role, group in self.processes().items()
        }
        taken["load generator"] = cpu_seconds(os.getpid())
        return taken

    @staticmethod
    def per_op(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
        """CPU milliseconds per operation, per role."""
        return {
            role: round((after[role] - before.get(role, 0.0)) * 1000 / max(ops, 1), 2)
            for role in after
        }


def settings_for(stack: ProcessStack) -> Settings:
    """The API's settings, read from the environment the stack gives the API."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(stack.api.env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- load shapes ----------------------------------------------------------------------------------

Op = Callable[[Any], Awaitable[None]]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, rounded; None when either is missing or zero."""
    return round(a / b, 2) if a and b else None


def percentile(samples: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass
class Sample:
    """What one shape measured for one variant."""

    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    # Calls and seconds of each turn: the spread between turns is the run's noise.
    turns: list[tuple[int, float]] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Count, rate and percentiles."""
        samples = self.latencies_ms or [float("nan")]
        return {
            "n": len(self.latencies_ms),
            "rps": round(len(self.latencies_ms) / self.seconds, 1) if self.seconds else None,
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(percentile(samples, 0.99), 2),
            "max_ms": round(max(samples), 2),
            "failures": len(self.failures),
            "first_failure": self.failures[0] if self.failures else None,
            "rps_per_turn": [round(n / seconds, 1) for n, seconds in self.turns if seconds],
            # The five slowest calls, as [call's index in the shape (turns in order), ms]: a
            # pause shows as consecutive indices.
            "slowest": [
                [i, round(self.latencies_ms[i], 1)]
                for i in sorted(
                    sorted(range(len(self.latencies_ms)), key=lambda i: -self.latencies_ms[i])[:5]
                )
            ],
            "cpu_ms_per_op": {
                role: round(ms / max(len(self.latencies_ms), 1), 2) for role, ms in self.cpu.items()
            },
        }


async def timed(op: Op, item: Any, sample: Sample, since: float) -> None:
    """Run `op(item)`; its latency from `since` (perf_counter) into `sample`."""
    try:
        await op(item)
    except Exception as err:  # counted, shown in the results: a failing call is a finding
        sample.failures.append(f"{type(err).__name__}: {err}"[:300])
    sample.latencies_ms.append((time.perf_counter() - since) * 1000)


async def one_at_a_time(
    op: Op, items: list[Any], sample: Sample, after: Callable[[Any], Awaitable[None]] | None = None
) -> None:
    """Each call after the previous one's answer, and after `after(item)` (not timed)."""
    for item in items:
        await timed(op, item, sample, time.perf_counter())
        if after is not None:
            await after(item)


async def closed_loop(op: Op, items: list[Any], sample: Sample, concurrency: int) -> None:
    """`concurrency` callers, each calling again as soon as answered."""
    queue = list(reversed(items))

    async def caller() -> None:
        while queue:
            await timed(op, queue.pop(), sample, time.perf_counter())

    await asyncio.gather(*(caller() for _ in range(concurrency)))


def at_rate(rate: float) -> Callable[[Op, list[Any], Sample], Awaitable[None]]:
    """`open_loop` at `rate`."""

    def shape(op: Op, items: list[Any], sample: Sample) -> Awaitable[None]:
        return open_loop(op, items, sample, rate)

    return shape


async def open_loop(op: Op, items: list[Any], sample: Sample, rate: float) -> None:
    """Call i is due at start + i / rate, whatever happened to the calls before; its latency
    counts from when it was due."""
    tasks = []
    start = time.perf_counter() + 0.05
    for i, item in enumerate(items):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(op, item, sample, due)))
    await asyncio.gather(*tasks)


# --- the bench ------------------------------------------------------------------------------------


def placement_body(marketplace_order_id: str, endpoint: str) -> dict[str, Any]:
    """A small valid orderPlacement."""
    return {
        "marketplaceOrderId": marketplace_order_id,
        "marketplaceServicesEndpoint": endpoint,
        "items": [{"id": "bench-sku", "quantity": 1, "seller": "1", "price": 1000}],
        "shippingData": {
            "logisticsInfo": [
                {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": "1d", "price": 500}
            ]
        },
    }


def new_id() -> str:
    """A fresh marketplaceOrderId."""
    return f"B{uuid.uuid4().hex[:14]}"


@dataclass
class Bench:
    """The running stack and the clients of this process."""

    stack: ProcessStack
    trivial_worker: Process
    client: Client
    settings: Settings
    http: Http
    trivial_queue: str
    args: argparse.Namespace
    profile_dir: Path | None = None
    placed: list[str] = field(default_factory=list)  # placed, neither dispatched nor cancelled
    trivial_open: list[str] = field(default_factory=list)
    # Orders a one-at-a-time dispatch or cancel was made on that had not ended 60 s later: their
    # work ran under the next calls (results.json `one_at_a_time_unfinished`).
    unfinished: list[str] = field(default_factory=list)

    @property
    def meter(self) -> Meter:
        """The run's processes, by role."""
        stack = self.stack
        return Meter(
            lambda: {
                "api": [stack.api],
                "worker": list(stack.workers),
                "temporal": [stack.temporal],
                "marketplace": [stack.marketplace],
                "trivial worker": [self.trivial_worker],
            }
        )

    def placement_body(self, marketplace_order_id: str) -> dict[str, Any]:
        """A small valid orderPlacement to this stack's marketplace."""
        return placement_body(marketplace_order_id, self.stack.endpoint)

    # The calls, each way. An item is prepared before the clock starts: what the API parses from
    # the body is the floor's input, ready.

    def items(self, call: str, variant: str, count: int) -> list[Any]:
        """`count` inputs of `call` made `variant`'s way (orders taken from the pools)."""
        if call == "placement":
            order_ids = [new_id() for _ in range(count)]
            if variant == "http":
                return [
                    (i, self.http.raw("POST", "/pvt/orders", self.placement_body(i)))
                    for i in order_ids
                ]
            if variant == "floor":
                return [
                    (i, OrderPlacement.model_validate(self.placement_body(i))) for i in order_ids
                ]
            return order_ids
        pool = self.trivial_open if variant == "trivial" else self.placed
        if len(pool) < count:
            raise RuntimeError(f"{call}: {count} orders wanted, {len(pool)} in the pool")
        taken, pool[:] = pool[:count], pool[count:]
        if variant == "http":
            verb = "fulfill" if call == "dispatch" else "cancel"
            return [
                (
                    i,
                    self.http.raw("POST", f"/pvt/orders/SLR-{i}/{verb}", {"marketplaceOrderId": i}),
                )
                for i in taken
            ]
        if variant == "floor":
            return [(i, RequestOrderId.model_validate({"marketplaceOrderId": i})) for i in taken]
        return taken

    def op(self, call: str, variant: str) -> Op:
        """The call, made `variant`'s way."""
        client, settings = self.client, self.settings

        async def http_call(item: tuple[str, bytes]) -> None:
            order_id, raw = item
            status, body = await self.http.request(raw)
            if status != 200:
                raise HttpError(f"{status}: {body[:200]!r}")
            if call == "placement":
                self.placed.append(order_id)
            elif call == "cancel" and not body:
                raise HttpError("the cancellation was not confirmed in time (evaluate)")

        async def floor_place(item: tuple[str, OrderPlacement]) -> None:
            order_id, placement = item
            await order_calls.place_order(client, settings, placement, datetime.now(UTC))
            self.placed.append(order_id)

        async def floor_dispatch(item: tuple[str, RequestOrderId]) -> None:
            order_id, body = item
            await order_calls.dispatch_order(
                client, settings, ids.seller_order_id(order_id), body, datetime.now(UTC)
            )

        async def floor_cancel(item: tuple[str, RequestOrderId]) -> None:
            order_id, body = item
            receipt = await order_calls.cancel_order(
                client, settings, ids.seller_order_id(order_id), body, datetime.now(UTC)
            )
            if receipt is None:
                raise RuntimeError("the cancellation was not confirmed in time (evaluate)")

        async def trivial_start(name: str) -> None:
            await client.execute_update_with_start_workflow(
                TrivialWorkflow.start,
                TrivialRequest(name=name),
                start_workflow_operation=WithStartWorkflowOperation(
                    TrivialWorkflow.run,
                    TrivialInput(name=name),
                    id=f"trivial-{name}",
                    task_queue=self.trivial_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                ),
                id="start",
            )
            self.trivial_open.append(name)

        async def trivial_update(name: str) -> None:
            handle = client.get_workflow_handle_for(TrivialWorkflow.run, f"trivial-{name}")
            await handle.execute_update(TrivialWorkflow.poke, TrivialRequest(name=name), id=call)

        ops: dict[tuple[str, str], Op] = {
            ("placement", "http"): http_call,
            ("placement", "floor"): floor_place,
            ("placement", "trivial"): trivial_start,
            ("dispatch", "http"): http_call,
            ("dispatch", "floor"): floor_dispatch,
            ("dispatch", "trivial"): trivial_update,
            ("cancel", "http"): http_call,
            ("cancel", "floor"): floor_cancel,
            ("cancel", "trivial"): trivial_update,
        }
        return ops[(call, variant)]

    async def order_done(self, item: Any) -> None:
        """Wait until the order a dispatch or a cancel was made on has ended (invoiced or
        canceled: the bench's late-call window is 0 s), so that the next call one at a time has
        the machine to itself, as the trivial workflow's, which starts nothing, has."""
        if not isinstance(item, tuple):
            return  # the trivial workflow's: nothing runs after its answer
        handle = self.client.get_workflow_handle(ids.workflow_id(item[0]))
        try:
            await asyncio.wait_for(handle.result(), 60)
        except TimeoutError:
            self.unfinished.append(item[0])
            print(f"order {item[0]} had not ended 60 s after its call", flush=True)
        except Exception:  # failed or closed otherwise: the call's own failure was counted
            pass

    async def fill_pools(self, orders: int, trivial: int) -> None:
        """Enough placed orders and open trivial workflows for the next shape (not measured)."""
        if len(self.placed) < orders:
            items = self.items("placement", "floor", orders - len(self.placed))
            await closed_loop(self.op("placement", "floor"), items, Sample(), 20)
        if len(self.trivial_open) < trivial:
            items = self.items("placement", "trivial", trivial - len(self.trivial_open))
            await closed_loop(self.op("placement", "trivial"), items, Sample(), 20)
        await self.settle()

    async def settle(self, idle_share: float = 0.15, within: float = 30) -> None:
        """Wait until the workers and the server are about idle: what an earlier shape left
        running (fulfillments of dispatched orders) must not run into the next one."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            before = self.meter.snapshot()
            await asyncio.sleep(0.5)
            after = self.meter.snapshot()
            busy = sum(after[r] - before[r] for r in ("worker", "temporal", "trivial worker"))
            if busy / 0.5 < idle_share:
                return

    async def shape(
        self,
        call: str,
        shape: str,
        variants: tuple[str, ...],
        count: int,
        run: Callable[[Op, list[Any], Sample], Awaitable[None]],
    ) -> dict[str, Sample]:
        """`count` calls per variant in `shape`, the variants taking turns (a, b, c, c, b, a,
        a, b...) in `--rounds` parts, so that a drift of the machine (another process, the
        server's growing state) weighs on each about equally."""
        samples = {v: Sample() for v in variants}
        rounds = self.args.rounds
        turns = [
            variant
            for n in range(rounds)
            for variant in (variants if n % 2 == 0 else tuple(reversed(variants)))
        ]
        parts = {
            v: [count // rounds + (n < count % rounds) for n in range(rounds)] for v in variants
        }
        for turn, variant in enumerate(turns):
            size = parts[variant].pop(0)
            if call != "placement":
                wanted_orders = size if variant != "trivial" else 0
                await self.fill_pools(wanted_orders, size if variant == "trivial" else 0)
            else:
                await self.settle()
            items = self.items(call, variant, size)
            sample = samples[variant]
            with self.profiling(f"{call}-{shape}-{variant}-{turn}"):
                before = self.meter.snapshot()
                started = time.perf_counter()
                await run(self.op(call, variant), items, sample)
                took = time.perf_counter() - started
                sample.seconds += took
                sample.turns.append((len(items), took))
                after = self.meter.snapshot()
            for role, used in after.items():
                sample.cpu[role] = sample.cpu.get(role, 0.0) + (used - before[role]) * 1000
        return samples

    @contextlib.contextmanager
    def profiling(self, name: str, pids: dict[str, int] | None = None) -> Iterator[None]:
        """py-spy (--profile) while the block runs: on `pids` (role: pid), or for a closed loop on
        the API, the worker and this process."""
        if self.profile_dir is None or (
            pids is None and ("closed" not in name or "trivial" in name)
        ):
            yield
            return
        workers = self.stack.workers
        targets: dict[str, int | None] = (
            dict(pids)
            if pids is not None
            else {
                "api": self.stack.api.pid,
                "loadgen": os.getpid(),
                "worker": workers[0].pid if workers else None,
            }
        )
        spies = [
            subprocess.Popen(
                [
                    self.args.py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--output",
                    str(self.profile_dir / f"{name}-{role}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in targets.items()
            if pid is not None
        ]
        time.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                try:
                    spy.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    spy.kill()

    async def calls(self) -> dict[str, Any]:
        """Placement, dispatch and cancel, each variant, each shape."""
        args = self.args
        results: dict[str, Any] = {}
        for call in CALLS:
            after = self.order_done if call != "placement" else None
            sequential = await self.shape(
                call,
                "sequential",
                VARIANTS,
                args.sequential,
                functools.partial(one_at_a_time, after=after),
            )
            closed = await self.shape(
                call,
                "closed",
                VARIANTS,
                args.closed,
                lambda op, items, sample: closed_loop(op, items, sample, args.concurrency),
            )
            capacity = min(closed["http"].figures()["rps"], closed["floor"].figures()["rps"])
            rate = args.rate or max(5.0, round(capacity * args.open_share))
            opened = await self.shape(
                call,
                "open",
                ("floor", "http"),
                round(rate * args.open_seconds),
                at_rate(rate),
            )
            figures = {
                "sequential": {v: s.figures() for v, s in sequential.items()},
                f"closed_loop_{args.concurrency}": {v: s.figures() for v, s in closed.items()},
                "open_loop": {"rate_rps": rate, **{v: s.figures() for v, s in opened.items()}},
            }
            seq, clo = figures["sequential"], figures[f"closed_loop_{args.concurrency}"]
            opn = figures["open_loop"]
            results[call] = {
                "http_rps": clo["http"]["rps"],
                "floor_rps": clo["floor"]["rps"],
                "trivial_rps": clo["trivial"]["rps"],
                "http_p50_ms": seq["http"]["p50_ms"],
                "floor_p50_ms": seq["floor"]["p50_ms"],
                "trivial_p50_ms": seq["trivial"]["p50_ms"],
                "http_p99_ms": opn["http"]["p99_ms"],
                "floor_p99_ms": opn["floor"]["p99_ms"],
                "open_loop_rate_rps": rate,
                "detail": figures,
            }
            print(
                f"{call}: {json.dumps({k: v for k, v in results[call].items() if k != 'detail'})}"
            )
        return results
