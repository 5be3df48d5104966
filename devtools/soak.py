"""`make soak`: a bounded load on the real-process stack, with faults, ending in the invariant
checker.

By default 2,000 orders over 5 minutes, started at a fixed rate (open loop). Each order is placed
(a fifth of the placements sent twice at once), then, at random: dispatched (a third of those
twice), cancelled by the marketplace at a random moment (before dispatch or mid-step), cancelled
by an operator in Temporal, or left to expire on a short lockTTL. Faults: a worker killed with
`kill -9` in the middle and started again 5 s later; the marketplace killed and kept down for
30 s. At the end every order must be final, and `devtools.invariants` must find nothing.

    python -m devtools.soak [--orders 2000] [--minutes 5] [--workers 2] [--seed N]

Traffic goes to 127.0.0.1 only; every process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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

from activities.simulated_warehouse import SimulatedWarehouse
from devtools.invariants import check, load_marketplace_calls
from devtools.processes import ProcessStack
from workflows import ids

FINAL = ("invoiced", "canceled", "expired")
SKUS = ("soak-a", "soak-b", "soak-c")


@dataclass
class Tally:
    """What the soak did and saw."""

    answers: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    faults: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note_fault(self, what: str) -> None:
        """Record a fault with the second it happened at."""
        line = f"{time.monotonic() - self.started:6.1f}s {what}"
        self.faults.append(line)
        print(f"fault: {line}", flush=True)


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


async def post(http: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: Any) -> int:
    """POST as the marketplace: retried on 503 or a connection error, like VTEX would."""
    for _ in range(300):
        try:
            response = await http.post(path, json=body)
        except httpx.TransportError:
            tally.answers[f"{kind} no answer"] += 1
            await asyncio.sleep(1)
            continue
        status = response.status_code
        empty = status == 200 and not response.content
        tally.answers[f"{kind} {status}{' empty' if empty else ''}"] += 1
        if status == 503:
            await asyncio.sleep(1)
            continue
        if empty:  # A cancellation being evaluated: call again, as VTEX does.
            await asyncio.sleep(1)
            continue
        return status
    return 0


async def one_order(
    http: httpx.AsyncClient,
    client: Client,
    stack: ProcessStack,
    rng: random.Random,
    tally: Tally,
    order_id: str,
) -> None:
    """One order's life as the marketplace (and sometimes an operator) leads it."""
    fate = rng.choices(["dispatch", "cancel", "operator", "expire"], [60, 25, 5, 10])[0]
    body = placement(order_id, stack.endpoint, rng, "20s" if fate == "expire" else "8d")
    seller = f"/pvt/orders/{ids.seller_order_id(order_id)}"
    reference = {"marketplaceOrderId": order_id}
    copies = 2 if rng.random() < 0.2 else 1
    tally.duplicates += copies - 1
    answers = await asyncio.gather(
        *[post(http, tally, "place", "/pvt/orders", body) for _ in range(copies)]
    )
    if answers[0] != 200:
        return
    # Most cancellations come after the dispatch, mid-step; some before it.
    if fate == "dispatch" or (fate == "cancel" and rng.random() < 0.8):
        await asyncio.sleep(rng.uniform(0, 2))
        copies = 2 if rng.random() < 0.33 else 1
        tally.duplicates += copies - 1
        await asyncio.gather(
            *[post(http, tally, "dispatch", f"{seller}/fulfill", reference) for _ in range(copies)]
        )
    if fate == "cancel":
        await asyncio.sleep(rng.uniform(0, 2.5))
        await post(http, tally, "cancel", f"{seller}/cancel", reference)
    elif fate == "operator":
        await asyncio.sleep(rng.uniform(0, 3))
        try:
            await client.get_workflow_handle(ids.workflow_id(order_id)).cancel()
            tally.answers["operator cancel"] += 1
        except RPCError:
            tally.answers["operator cancel of a closed order"] += 1


async def faults(stack: ProcessStack, tally: Tally, seconds: float) -> None:
    """A worker killed mid-run and started again; the marketplace down for 30 s."""
    await asyncio.sleep(seconds * 0.4)
    victim = stack.workers[0]
    tally.note_fault(f"kill -9 {victim.name} (pid {victim.pid})")
    victim.kill9()
    await asyncio.sleep(5)
    await asyncio.to_thread(victim.start)
    tally.note_fault(f"{victim.name} started again (pid {victim.pid})")
    await asyncio.sleep(max(seconds * 0.6 - 5 - seconds * 0.4, 1))
    tally.note_fault("kill -9 the marketplace, down for 30 s")
    stack.marketplace.kill9()
    await asyncio.sleep(30)
    await asyncio.to_thread(stack.marketplace.start)
    tally.note_fault("the marketplace started again")


async def wait_final(
    http: httpx.AsyncClient, order_ids: list[str], within: float
) -> dict[str, str]:
    """Each order's status once settled (final, and no call to the marketplace still being
    retried), or its last status when `within` ran out."""
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + within
    pending = list(order_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for order_id in pending:
            try:
                response = await http.get(f"/pvt/orders/{ids.seller_order_id(order_id)}")
                order = response.json()
                status = order.get("status", "?")
                settled = status in FINAL and not order.get("pendingCalls")
            except (httpx.TransportError, ValueError):
                status, settled = "?", False
            statuses[order_id] = status
            if not settled:
                still.append(order_id)
        pending = still
        if pending:
            await asyncio.sleep(2)
    return statuses


async def soak(args: argparse.Namespace) -> int:
    """Run the soak; 0 when every order ended and no invariant broke."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    seconds = args.minutes * 60
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.orders} orders over {seconds:.0f} s, {args.workers} workers, seed {seed}")
    print(f"soak: processes' logs and databases in {workdir}", flush=True)
    stack = ProcessStack(workdir, workers=args.workers, step_seconds=args.step_seconds)
    await asyncio.to_thread(stack.__enter__)
    tally = Tally()
    try:
        client = await Client.connect(
            stack.temporal_address, data_converter=pydantic_data_converter
        )
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as http:
            order_ids = [f"SOAK{seed}-{n:05d}" for n in range(args.orders)]
            chaos = asyncio.create_task(faults(stack, tally, seconds))
            lives = []
            for n, order_id in enumerate(order_ids):
                delay = tally.started + n * seconds / args.orders - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                lives.append(
                    asyncio.create_task(one_order(http, client, stack, rng, tally, order_id))
                )
            await asyncio.gather(*lives)
            await chaos
            sent_for = time.monotonic() - tally.started
            print(f"soak: all calls answered after {sent_for:.0f} s; waiting for the orders")
            statuses = await wait_final(http, order_ids, within=300)
        report = await check(
            client,
            SimulatedWarehouse(stack.warehouse_db),
            lambda: load_marketplace_calls(str(stack.journal)),
            query=f'TaskQueue="{stack.task_queue}"',
            require_final=True,
        )
    finally:
        await asyncio.to_thread(stack.stop)
    stuck = {oid: status for oid, status in statuses.items() if status not in FINAL}
    print("\nsoak results")
    print(f"  seed                 {seed}")
    print(f"  orders               {len(order_ids)}")
    print(f"  final statuses       {dict(Counter(statuses.values()).most_common())}")
    print(f"  calls by answer      {dict(sorted(tally.answers.items()))}")
    print(f"  duplicated calls     {tally.duplicates}")
    print(f"  marketplace calls    {report.marketplace_calls}")
    print("  faults injected")
    for fault in tally.faults:
        print(f"    {fault}")
    print(f"  stuck orders         {len(stuck)} {list(stuck.items())[:5]}")
    print(f"  invariant checker    {report.summary()}")
    for violation in report.violations[:50]:
        print(f"    {violation}")
    print(f"  wall time            {time.monotonic() - tally.started:.0f} s")
    return 1 if stuck or report.violations or report.unreadable else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and soak."""
    parser = argparse.ArgumentParser(description="A bounded soak of the seller connector.")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", help="where the processes' logs and databases go")
    return asyncio.run(soak(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
