"""Randomized interleavings on the real stack: placements, dispatches, marketplace and operator
cancellations and lockTTL expiries fired at random moments, many of them twice, against many
orders at once. The oracle is invariants, never timings.

The seed is printed and named in every failure; replay one with
`INTERLEAVING_SEED=1234 .venv/bin/python -m pytest tests/test_interleavings.py`.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from devtools.invariants import find_violations
from tests.stack import Stack, new_order_id, placement_example, running_stack

ORDERS = 48
STEP_SECONDS = 0.3
FINAL = ("invoiced", "canceled", "expired")
# Normal SKUs, and one whose pick finishes even when cancelled (tests/scripted_warehouse.py).
SKUS = ("il-a", "il-b", "stubborn-il")
STOCK = 1000


@dataclass
class Plan:
    """What the marketplace (and an operator) will do to one order, and when."""

    sku: str
    quantity: int
    lock_ttl: str | None
    place_twice: bool
    dispatch_at: float | None
    dispatch_twice: bool
    cancel_at: float | None
    operator_cancel_at: float | None
    retry_later: bool


@dataclass
class Answers:
    """Every answer the order's calls got, in the order they came back."""

    place: list[tuple[int, Any]] = field(default_factory=list)
    dispatch: list[tuple[int, Any]] = field(default_factory=list)
    cancel: list[tuple[int, Any]] = field(default_factory=list)
    server_errors: list[tuple[str, int, str]] = field(default_factory=list)


def make_plan(rng: random.Random) -> Plan:
    """A random plan: each action maybe, at a random moment, maybe twice."""
    plan = Plan(
        sku=rng.choice(SKUS),
        quantity=rng.randint(1, 3),
        lock_ttl=rng.choice([None, None, "2s", "3s"]),
        place_twice=rng.random() < 0.4,
        dispatch_at=rng.uniform(0, 3) if rng.random() < 0.7 else None,
        dispatch_twice=rng.random() < 0.4,
        cancel_at=rng.uniform(0, 3.5) if rng.random() < 0.45 else None,
        operator_cancel_at=rng.uniform(0, 3.5) if rng.random() < 0.15 else None,
        retry_later=rng.random() < 0.4,
    )
    if plan.dispatch_at is None and plan.cancel_at is None and plan.operator_cancel_at is None:
        plan.lock_ttl = plan.lock_ttl or "2s"  # Nothing else would end it within the test.
    return plan


async def _call(
    stack: Stack, answers: Answers, kind: str, path: str, body: dict[str, Any]
) -> tuple[int, Any]:
    """POST as the marketplace: a 503 is retried (it says so); anything else is the answer."""
    for _ in range(50):
        try:
            response = await stack.http.post(path, json=body)
        except httpx.TransportError as err:
            answers.server_errors.append((kind, 0, repr(err)))
            await asyncio.sleep(0.2)
            continue
        content = response.json() if response.content else None
        if response.status_code == 503 and "retry-after" in response.headers:
            await asyncio.sleep(0.2)
            continue
        if response.status_code >= 500:
            answers.server_errors.append((kind, response.status_code, response.text))
        return response.status_code, content
    raise AssertionError(f"{kind} {path} kept answering 503")


async def _run_plan(stack: Stack, order_id: str, plan: Plan, answers: Answers) -> None:
    body = placement_example(order_id, stack.endpoint)
    body["items"][0] |= {"id": plan.sku, "quantity": plan.quantity}
    if plan.lock_ttl:
        body["shippingData"]["logisticsInfo"][0]["lockTTL"] = plan.lock_ttl
    seller_id = f"SLR-{order_id}"
    reference = {"marketplaceOrderId": order_id}

    async def place() -> None:
        answers.place.append(await _call(stack, answers, "place", "/pvt/orders", body))

    async def dispatch(delay: float) -> None:
        await asyncio.sleep(delay)
        path = f"/pvt/orders/{seller_id}/fulfill"
        answers.dispatch.append(await _call(stack, answers, "dispatch", path, reference))

    async def cancel(delay: float) -> None:
        await asyncio.sleep(delay)
        path = f"/pvt/orders/{seller_id}/cancel"
        for _ in range(100):  # As VTEX does: again while the answer is "evaluating".
            status, content = await _call(stack, answers, "cancel", path, reference)
            if status != 200 or content is not None:
                answers.cancel.append((status, content))
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"the cancellation of {order_id} never settled")

    async def operator_cancel(delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await stack.handle(order_id).cancel()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # Closed already: nothing to cancel.
                raise

    await asyncio.gather(*[place() for _ in range(2 if plan.place_twice else 1)])
    if answers.place[0][0] != 200:
        return
    actions = []
    if plan.dispatch_at is not None:
        actions += [dispatch(plan.dispatch_at) for _ in range(2 if plan.dispatch_twice else 1)]
    if plan.cancel_at is not None:
        actions.append(cancel(plan.cancel_at))
    if plan.operator_cancel_at is not None:
        actions.append(operator_cancel(plan.operator_cancel_at))
    await asyncio.gather(*actions)
    if plan.retry_later:
        # The marketplace retries every call it made, later, possibly once the order has closed.
        await asyncio.sleep(3)
        await place()
        if plan.dispatch_at is not None:
            await dispatch(0)
        if plan.cancel_at is not None:
            await cancel(0)


def _brief(answers: Answers | None) -> str:
    """The answers, each as its status and what identifies it (orderId, receipt, error code)."""
    if answers is None:
        return "-"

    def one(answer: tuple[int, Any]) -> str:
        status, content = answer
        if not isinstance(content, dict):
            return f"{status}"
        error = content.get("error")
        mark = error["code"] if isinstance(error, dict) else content.get("receipt")
        return f"{status} {mark or content.get('orderId')}"

    return "; ".join(
        f"{kind}: {[one(answer) for answer in got]}"
        for kind, got in (
            ("place", answers.place),
            ("dispatch", answers.dispatch),
            ("cancel", answers.cancel),
        )
    )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _same(answers: list[tuple[int, Any]]) -> bool:
    return all(answer == answers[0] for answer in answers)


async def _violations(
    stack: Stack, order_id: str, plan: Plan, answers: Answers, order: dict[str, Any]
) -> list[str]:
    found = []
    status = order["status"]
    if status not in FINAL:
        found.append(f"never ended: {status} (step {order['currentStep']})")
    if answers.server_errors:
        found.append(f"5xx answers: {answers.server_errors}")
    invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
    if len({call.invoice_number for call in invoices}) > 1:
        found.append(f"two invoice numbers at the marketplace: {invoices}")
    if not _same(answers.place):
        found.append(f"placements answered differently: {answers.place}")
    dispatched = [answer for answer in answers.dispatch if answer[0] == 200]
    if not _same(dispatched):
        found.append(f"dispatch retries got other receipts: {dispatched}")
    if dispatched and len(dispatched) != len(answers.dispatch):
        found.append(f"a dispatch both accepted and refused: {answers.dispatch}")
    if dispatched and status == "expired":
        found.append("a dispatch was answered 200, and the order expired")
    confirmed = [answer for answer in answers.cancel if answer[0] == 200]
    refused = [answer for answer in answers.cancel if answer[0] == 409]
    if not _same(confirmed):
        found.append(f"cancel retries got other receipts: {confirmed}")
    if confirmed and refused:
        found.append(f"a cancellation both confirmed and refused: {answers.cancel}")
    if confirmed and (status == "invoiced" or invoices):
        found.append(f"a confirmed cancellation, yet {status} with {len(invoices)} invoice calls")
    if refused:
        steps = {step["name"]: step for step in order["steps"]}
        reached = order["cancellation"] and (
            order["cancellation"].get("reachedOrderAt") or order["cancellation"]["requestedAt"]
        )
        record = await stack.warehouse.order_record(f"SLR-{order_id}")
        if status != "invoiced" or not record or record["state"] != "invoiced":
            found.append(f"a refused cancellation, yet the order is {status}")
        # With no cancellation on the order, it never reached it: the invoiced order's workflow
        # had closed (its late-call window over, or closed early by an operator's cancel), and
        # the API refused it from the order's last state.
        elif order["cancellation"] is not None and (
            "invoice" not in steps
            or not reached
            or _at(steps["invoice"]["startedAt"]) > _at(reached)
        ):
            found.append("a refused cancellation that reached the order before the invoice step")
    if plan.operator_cancel_at is not None and status == "invoiced" and confirmed:
        found.append("an operator cancel and a confirmed cancellation, yet invoiced")
    if (
        plan.lock_ttl
        and plan.dispatch_at is None
        and plan.cancel_at is None
        and plan.operator_cancel_at is None
        and status != "expired"
    ):
        found.append(f"neither dispatched nor canceled past its lockTTL, yet {status}")
    if plan.operator_cancel_at is not None and status not in ("canceled", "invoiced", "expired"):
        found.append(f"an operator cancel, yet {status}")
    return found


async def test_random_interleavings_keep_every_invariant(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    seed = int(os.environ.get("INTERLEAVING_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\ninterleavings: INTERLEAVING_SEED={seed}")
    rng = random.Random(seed)
    async with running_stack(
        temporal_env,
        tmp_path,
        warehouse="tests.scripted_warehouse:ScriptedWarehouse.from_settings",
        fulfillment_step_seconds=STEP_SECONDS,
        late_call_window="2s",
        default_stock=STOCK,
    ) as stack:
        orders = {new_order_id(): make_plan(rng) for _ in range(ORDERS)}
        answers = {order_id: Answers() for order_id in orders}
        await asyncio.wait_for(
            asyncio.gather(
                *[_run_plan(stack, oid, plan, answers[oid]) for oid, plan in orders.items()]
            ),
            timeout=120,
        )
        finals = {}
        for order_id in orders:
            finals[order_id] = await stack.wait_for(
                order_id, lambda o: o["status"] in FINAL, within=60
            )

        problems: dict[str, tuple[Plan | None, Answers | None, list[str]]] = {}
        for order_id, plan in orders.items():
            found = await _violations(stack, order_id, plan, answers[order_id], finals[order_id])
            if found:
                problems[order_id] = (plan, answers[order_id], found)
        for sku in SKUS:
            level = await stack.warehouse.stock_level(sku)
            if level.total not in (0, STOCK) or level.reserved != 0:
                problems[sku] = (None, None, [f"stock not conserved or still reserved: {level}"])
        query = f'TaskQueue="{stack.settings.task_queue}"'

        async def calls() -> list[dict[str, Any]]:
            # Read after the orders: an invoice an order says it sent has reached the marketplace.
            return [call.to_json() for call in stack.marketplace.calls()]

        checker = await find_violations(
            stack.client, stack.warehouse, calls, query=query, require_final=True
        )

        statuses = Counter(order["status"] for order in finals.values())
        calls_by_kind = Counter(
            f"{kind} {status}"
            for answer in answers.values()
            for kind, got in (("place", answer.place), ("dispatch", answer.dispatch))
            for status, _ in got
        ) + Counter(f"cancel {status}" for a in answers.values() for status, _ in a.cancel)
        print(
            f"interleavings: seed {seed}, {ORDERS} orders, final {dict(statuses)}, "
            f"answers {dict(sorted(calls_by_kind.items()))}"
        )
        report = [f"seed {seed}: replay with INTERLEAVING_SEED={seed}"]
        for key, (planned, got, found) in problems.items():
            report.append(f"{key}: {found}\n    plan {planned}\n    answers {_brief(got)}")
        report += [str(violation) for violation in checker]
        assert not problems and not checker, "\n".join(report)
