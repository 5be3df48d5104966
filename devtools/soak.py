"""`make soak`: a bounded load on the real-process stack, with faults, ending in the invariant
checker.

By default 5 minutes of orders at 60 % of this machine's capacity (`capacity_orders_per_second`
in bench/results.json, the highest open-loop rate of whole orders `make bench` measured served
with under 1 % of 503s and a placement p99 under 1 s), started at a fixed rate (open loop) on 2
workers with 0.5 s steps. `--overload` sends 2,000 orders over the 5 minutes instead (6.7/s, past
that capacity: the API answers 503s and the schedule slips, and still nothing may be lost). Each
order is placed, then, at random: dispatched, cancelled by the marketplace at a random moment
(before the dispatch, or after it, mid-step or too late), cancelled by an operator in Temporal
(before or after the dispatch), or left to expire on a 20 s lockTTL. A fraction of every call is
sent twice: both at once, or again once the first was answered, as a retry; the answers must be
the same. Faults: a worker killed with `kill -9` at 40 % of the time and started again 5 s later;
the marketplace killed at 60 % and kept down for 30 s. At the end every order must be final, and
`python -m devtools.invariants --require-final` (over the marketplace's journal) must find
nothing; the exit code is 1 otherwise.

    python -m devtools.soak [--orders N | --overload] [--minutes 5] [--workers 2] [--seed N]

Traffic goes to 127.0.0.1 only. It stops by itself: calls give up at a deadline, the wait for the
orders is bounded, and every process is stopped at the end, whatever happens (Ctrl-C and SIGTERM
included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

import temporal_client
from config import Settings
from devtools.processes import ROOT, ProcessStack
from workflows import ids

FINAL = ("invoiced", "delivered", "canceled", "expired")
SKUS = ("soak-a", "soak-b", "soak-c")
# How each order ends its life, and how often (percent).
FATES = {"dispatch": 60, "cancel": 25, "operator": 5, "expire": 10}
# Of each call: sent twice at once, or sent again after its answer (a retry).
CONCURRENT_COPY = 0.15
RETRY_COPY = 0.10
# What the invariant checker's exit codes mean.
CHECKER_EXIT = {0: "no violation", 2: "could not check", 3: "violations"}


@dataclass
class Tally:
    """What the soak did and saw."""

    deadline: float
    answers: Counter[str] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    duplicates: int = 0
    differing: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note_fault(self, what: str) -> None:
        """Record a fault with the second it happened at."""
        line = f"{time.monotonic() - self.started:6.1f}s {what}"
        self.faults.append(line)
        print(f"soak: fault at {line}", flush=True)


def placement(order_id: str, endpoint: str, rng: random.Random, lock_ttl: str) -> dict[str, Any]:
    """A placement as VTEX sends it (the fields fulfillment uses, and a customer)."""
    return {
        "marketplaceOrderId": order_id,
        "marketplaceServicesEndpoint": endpoint,
        "marketplacePaymentValue": 3598,
        "items": [
            {"id": rng.choice(SKUS), "quantity": rng.randint(1, 3), "seller": "1", "price": 2499}
        ],
        "clientProfileData": {
            "email": "soak@example.com",
            "firstName": "Soak",
            "lastName": "Test",
            "documentType": "cpf",
            "document": "123456789",
        },
        "shippingData": {
            "logisticsInfo": [
                {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": lock_ttl, "price": 1099}
            ]
        },
    }


async def post_once(
    http: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: Any
) -> tuple[int, Any]:
    """POST as the marketplace: again on a 503, a connection error or a cancellation still being
    evaluated (200 with no body), as VTEX does, until answered or the soak's deadline. The final
    status (0 when it gave up) and JSON body."""
    while time.monotonic() < tally.deadline:
        tally.sent += 1
        try:
            response = await http.post(path, json=body)
        except httpx.TransportError:
            tally.answers[f"{kind} no answer"] += 1
            await asyncio.sleep(1)
            continue
        status = response.status_code
        empty = status == 200 and not response.content
        tally.answers[f"{kind} {status}{' empty' if empty else ''}"] += 1
        if status == 503 or empty:
            await asyncio.sleep(1)
            continue
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        return status, answer
    tally.gave_up.append(f"{kind} {path}")
    return 0, None


async def post(
    http: httpx.AsyncClient,
    rng: random.Random,
    tally: Tally,
    kind: str,
    path: str,
    body: Any,
) -> int:
    """POST once, or (a fraction of the time) twice: at once, or again after the answer. The
    answers of a placement or a dispatch sent twice must be equal."""
    draw = rng.random()
    if draw < CONCURRENT_COPY:
        tally.duplicates += 1
        answers = list(
            await asyncio.gather(
                post_once(http, tally, kind, path, body), post_once(http, tally, kind, path, body)
            )
        )
    elif draw < CONCURRENT_COPY + RETRY_COPY:
        tally.duplicates += 1
        answers = [await post_once(http, tally, kind, path, body)]
        answers.append(await post_once(http, tally, kind, path, body))
    else:
        answers = [await post_once(http, tally, kind, path, body)]
    (status, first), *others = answers
    if kind in ("place", "dispatch") and status == 200:
        for other_status, other in others:
            if (other_status, other) != (status, first):
                tally.differing.append(f"{kind} {path}: {first} then {other_status} {other}")
    return status


async def one_order(
    http: httpx.AsyncClient,
    client: Client,
    stack: ProcessStack,
    rng: random.Random,
    tally: Tally,
    order_id: str,
) -> None:
    """One order's life as the marketplace (and sometimes an operator) leads it."""
    fate = rng.choices(list(FATES), list(FATES.values()))[0]
    after_dispatch = fate == "dispatch" or (fate in ("cancel", "operator") and rng.random() < 0.8)
    tally.fates[f"{fate} after dispatch" if fate != "dispatch" and after_dispatch else fate] += 1
    body = placement(order_id, stack.endpoint, rng, "20s" if fate == "expire" else "8d")
    seller = f"/pvt/orders/{ids.seller_order_id(order_id)}"
    reference = {"marketplaceOrderId": order_id}
    if await post(http, rng, tally, "place", "/pvt/orders", body) != 200:
        return
    if after_dispatch:
        await asyncio.sleep(rng.uniform(0, 2))
        await post(http, rng, tally, "dispatch", f"{seller}/fulfill", reference)
    # Four 0.5 s steps: a cancellation up to 2.5 s after the dispatch lands mid-step, or late.
    if fate == "cancel":
        await asyncio.sleep(rng.uniform(0, 2.5))
        await post(http, rng, tally, "cancel", f"{seller}/cancel", reference)
    elif fate == "operator":
        await asyncio.sleep(rng.uniform(0, 2.5))
        tally.sent += 1
        try:
            await client.get_workflow_handle(ids.workflow_id(order_id)).cancel()
            tally.answers["operator cancel"] += 1
        except RPCError as err:
            tally.answers[f"operator cancel {err.status.name}"] += 1


async def faults(stack: ProcessStack, tally: Tally, seconds: float) -> None:
    """A worker killed with `kill -9` at 40 % and started again 5 s later; the marketplace killed
    at 60 % and started again 30 s later."""

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, tally.started + seconds * fraction - time.monotonic()))

    await at(0.4)
    victim = stack.workers[0]
    tally.note_fault(f"kill -9 {victim.name} (pid {victim.pid})")
    victim.kill9()
    await asyncio.sleep(5)
    await asyncio.to_thread(victim.restart)
    tally.note_fault(f"{victim.name} started again (pid {victim.pid})")
    await at(0.6)
    tally.note_fault(f"kill -9 the marketplace (pid {stack.marketplace.pid}), down for 30 s")
    stack.marketplace.kill9()
    await asyncio.sleep(30)
    await asyncio.to_thread(stack.marketplace.restart)
    tally.note_fault(f"the marketplace started again (pid {stack.marketplace.pid})")


async def wait_final(
    http: httpx.AsyncClient, order_ids: list[str], within: float
) -> dict[str, str]:
    """Each order's status once settled (final, and no call to the marketplace still being
    retried), or its last status when `within` ran out. A view no worker answered (`live:
    false`) settles nothing: the invariant checker that follows reads each order through its
    query, which needs a worker."""
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + within
    pending = list(order_ids)
    while pending:
        still = []
        for order_id in pending:
            try:
                response = await http.get(f"/pvt/orders/{ids.seller_order_id(order_id)}")
                order = response.json()
                status = str(order.get("status", f"HTTP {response.status_code}"))
                settled = (
                    status in FINAL and not order.get("pendingCalls") and order.get("live", True)
                )
            except (httpx.TransportError, ValueError):
                status, settled = "no answer", False
            statuses[order_id] = status
            if not settled:
                still.append(order_id)
        pending = still
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    return statuses


def invariant_checker(stack: ProcessStack) -> tuple[int, str]:
    """`python -m devtools.invariants --require-final` over this stack's orders, with the
    marketplace's journal: its exit code and what it printed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.invariants",
            "--query",
            f'TaskQueue="{stack.task_queue}"',
            "--marketplace-calls",
            str(stack.journal),
            "--require-final",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


async def soak(args: argparse.Namespace) -> int:
    """Run the soak; 0 when every order ended and no invariant broke."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    seconds = args.minutes * 60
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.orders} orders over {seconds:.0f} s, {args.workers} workers, seed {seed}")
    print(f"soak: processes' logs and databases in {workdir}", flush=True)
    stack = ProcessStack(workdir, workers=args.workers, step_seconds=args.step_seconds)
    await asyncio.to_thread(stack.__enter__)
    # Calls give up this long after the last order is started.
    tally = Tally(deadline=time.monotonic() + seconds + args.grace_seconds)
    order_ids = [f"SOAK{seed}-{n:05d}" for n in range(args.orders)]
    try:
        # The stack's processes read a clean environment (no TEMPORAL_TLS* of this shell), and
        # so does this client: the defaults, and the stack's dev server.
        client = await temporal_client.connect(
            Settings.model_construct(temporal_address=stack.temporal_address),
            data_converter=pydantic_data_converter,
        )
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as http:
            chaos = asyncio.create_task(faults(stack, tally, seconds))
            lives = []
            for n, order_id in enumerate(order_ids):
                await asyncio.sleep(max(0.0, tally.started + n * seconds / args.orders - now()))
                # Each order draws from its own generator: the same seed plans the same lives,
                # however the calls interleave.
                rng = random.Random(f"{seed}:{order_id}")
                lives.append(
                    asyncio.create_task(one_order(http, client, stack, rng, tally, order_id))
                )
            await asyncio.gather(*lives)
            await chaos
            answered = now() - tally.started
            print(f"soak: every call answered at {answered:.0f} s; waiting for the orders to end")
            statuses = await wait_final(http, order_ids, within=args.grace_seconds)
        print("soak: running the invariant checker", flush=True)
        checker_exit, checker_output = await asyncio.to_thread(invariant_checker, stack)
    finally:
        await asyncio.to_thread(stack.stop)
    leftovers = stack.leftovers()
    stuck = {oid: status for oid, status in statuses.items() if status not in FINAL}
    print("\nsoak results")
    print(f"  seed                 {seed}")
    print(f"  orders               {len(order_ids)}  planned {dict(sorted(tally.fates.items()))}")
    print(f"  final statuses       {dict(Counter(statuses.values()).most_common())}")
    print(f"  calls sent           {tally.sent}")
    print(f"  answers              {dict(sorted(tally.answers.items()))}")
    print(f"  duplicated calls     {tally.duplicates}, differing answers {len(tally.differing)}")
    for line in tally.differing[:10]:
        print(f"    {line}")
    print(f"  calls given up       {len(tally.gave_up)} {tally.gave_up[:5]}")
    print("  faults injected")
    for fault in tally.faults:
        print(f"    {fault}")
    print(f"  stuck orders         {len(stuck)} {list(stuck.items())[:5]}")
    print(f"  invariant checker    exit {checker_exit} ({CHECKER_EXIT.get(checker_exit, '?')})")
    for line in checker_output.splitlines()[-50:]:
        print(f"    {line}")
    print(f"  processes left       {leftovers or 'none'}")
    print(f"  wall time            {now() - tally.started:.0f} s", flush=True)
    failed = stuck or tally.differing or tally.gave_up or checker_exit != 0 or leftovers
    return 1 if failed else 0


def now() -> float:
    """The monotonic clock."""
    return time.monotonic()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM stops the soak like Ctrl-C does: through the `finally` that stops the processes.
    raise KeyboardInterrupt


# The share of the measured capacity (whole orders, no fault) the soak runs at by default. A soak's
# traffic is heavier: a fifth of the placements and a third of the dispatches sent twice, the
# cancellations' compensations, and the backlog of a worker killed and of the marketplace down for
# 30 s to catch up within the run. With a capacity of 5 orders/s (make bench, BENCHMARKS.md), 1,000
# orders over 5 minutes (3.3/s, two thirds) ended clean; 2,000 (6.7/s) left the machine behind
# (docs/guarantees.md).
CAPACITY_SHARE = 0.6
OVERLOAD_ORDERS = 2000
BENCH_RESULTS = ROOT / "bench" / "results.json"


def default_orders(minutes: float) -> int:
    """Orders for `minutes` at CAPACITY_SHARE of the capacity bench/results.json records (measured
    on the soak's default shape: 2 workers, 0.5 s steps)."""
    try:
        capacity = json.loads(BENCH_RESULTS.read_text()).get("capacity_orders_per_second")
    except (OSError, ValueError, AttributeError) as err:
        raise SystemExit(
            f"soak: no capacity to start from ({BENCH_RESULTS}: {err}); run `make bench`, or give "
            "--orders N"
        ) from None
    if not isinstance(capacity, int | float) or capacity <= 0:
        raise SystemExit(
            f"soak: {BENCH_RESULTS} records no capacity ({capacity!r}: `make bench` measures it, "
            "its sweep may have failed); give --orders N"
        )
    return max(1, round(capacity * CAPACITY_SHARE * minutes * 60))


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and soak."""
    parser = argparse.ArgumentParser(description="A bounded soak of the seller connector.")
    parser.add_argument(
        "--orders",
        type=int,
        help="orders over --minutes (default: 60 percent of the capacity in bench/results.json)",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help=f"{OVERLOAD_ORDERS} orders over 5 minutes: past this machine's capacity",
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--seed", type=int, help="replays a run's choices (printed at its start)")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=300,
        help="how long calls keep being retried, and orders awaited, after the last order starts",
    )
    parser.add_argument("--workdir", help="where the processes' logs and databases go")
    args = parser.parse_args(argv)
    if args.overload and args.orders is not None:
        parser.error("--overload sets the orders: give one or the other")
    if args.orders is not None and args.orders < 1:
        parser.error("--orders must be positive")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.overload:
        args.orders = max(1, round(OVERLOAD_ORDERS * args.minutes / 5))
    if args.orders is None:
        args.orders = default_orders(args.minutes)
    if args.orders < 1 or args.minutes <= 0 or args.workers < 1:
        parser.error("--orders, --minutes and --workers must be positive")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(soak(args))
    except KeyboardInterrupt:
        print("soak: interrupted; every process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
