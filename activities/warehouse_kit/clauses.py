"""The clauses of the `Warehouse` contract (activities/warehouse.py), one function each, named after
its rule. Each drives the adapter through the protocol only, returns what it checked in a few
words when the rule holds, and raises `Broken` with the calls that show it when it does not.

Every clause leaves the adapter's stock as it found it, but for the units it invoices (each
invoiced unit is shipped: the kit cannot take it back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel

from activities.fulfillment import TRANSIENT_ERRORS
from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    ParcelStatus,
    UnknownOrder,
    WarehouseOrder,
)
from activities.warehouse_kit.trial import (
    Broken,
    KeptFailing,
    NotRun,
    RecordingWarehouse,
    Trial,
    build,
    describe,
)

T = TypeVar("T")

# A clause: what it checked, or `Broken` / `NotRun`.
Clause = Callable[[Trial], Awaitable[str]]

# How a call is repeated: the second after the first answered, or both at once.
IN_SEQUENCE = "in sequence"
AT_ONCE = "at once"
# When a call is cancelled: at once (it has only started), then a few moments into it.
CANCEL_AFTER_SECONDS = (0.0, 0.001, 0.005, 0.02)
# Orders whose invoice races their release, all at once.
RACES = 20
# How long after its invoice each race's release starts (before it, when negative).
RELEASE_LAGS = (-0.004, -0.002, 0.0, 0.002, 0.004)
# How far apart the parcel is tracked, and how many times once it is delivered (an adapter that
# undoes the delivery now and then is seen within them).
TRACK_POLL_SECONDS = 0.03
POLLS_AFTER_DELIVERY = 5

# The steps an order has been through before each method is called, as the workflow runs them.
STEPS_BEFORE: dict[str, tuple[str, ...]] = {
    "reserve": (),
    "pick": ("reserve",),
    "pack": ("reserve", "pick"),
    "create_label": ("reserve", "pick", "pack"),
    "issue_invoice": ("reserve", "pick", "pack", "create_label"),
    "release": ("reserve",),
    "void_label": ("reserve", "pick", "pack", "create_label"),
    "track": ("reserve", "pick", "pack", "create_label", "issue_invoice"),
}


def call_step(warehouse: RecordingWarehouse, method: str, order: WarehouseOrder) -> Awaitable[Any]:
    """`warehouse.<method>` on the order, whichever argument the method takes."""
    if method in ("pick", "pack", "release", "void_label"):
        by_id: Callable[[str], Awaitable[Any]] = getattr(warehouse, method)
        return by_id(order.order_id)
    by_order: Callable[[WarehouseOrder], Awaitable[Any]] = getattr(warehouse, method)
    return by_order(order)


def _differences(first: BaseModel, second: BaseModel) -> str:
    before, after = first.model_dump(by_alias=False), second.model_dump(by_alias=False)
    changed = [key for key in before if before[key] != after.get(key)]
    return ", ".join(f"{key} {before[key]!s} then {after.get(key)!s}" for key in changed)


def _same_answer(method: str, answers: list[Any], order_id: str, how: str) -> None:
    first, second = answers
    if first != second:
        raise Broken(
            f"{method} twice {how} gave two answers: {_differences(first, second)}",
            f"the second {method} answers what the first did",
            [order_id],
        )


def _undone_once(method: str, answers: list[bool], order_id: str, how: str) -> None:
    """`release` or `void_label` twice: the first (of two at once, either) undoes and says so;
    the other may find nothing left (False) or answer what the first did (True again: a system
    that replays each call's first answer)."""
    undone = answers[0] if how == IN_SEQUENCE else any(answers)
    if not undone:
        raise Broken(
            f"{method} twice {how} answered {answers[0]} then {answers[1]}",
            f"True from the {method} that undoes (the other True again, as a replay, or False)",
            [order_id],
        )


async def _twice(how: str, call: Callable[[], Awaitable[T]]) -> list[T]:
    """The call made twice: one after the other, or both at once (a retry beside the attempt it
    replaces)."""
    if how == IN_SEQUENCE:
        return [await call(), await call()]
    return list(await asyncio.gather(call(), call()))


async def _shipped_twice(trial: Trial, sku: str, how: str) -> None:
    """An order through every step to its invoice, each method called twice."""
    warehouse = trial.warehouse
    order = trial.order((sku, 1))
    before = await trial.available(sku)
    answers = await _twice(how, partial(warehouse.reserve, order))
    _same_answer("reserve", answers, order.order_id, how)
    held = await trial.available(sku)
    if held != before - 1:
        raise Broken(
            f"reserve twice {how} of 1 unit of {sku} took {before - held} ({before} available "
            f"before, {held} after)",
            "the second reserve holds nothing more: 1 unit held in all",
            [order.order_id],
        )
    await _twice(how, partial(warehouse.pick, order.order_id))
    await _twice(how, partial(warehouse.pack, order.order_id))
    for method in ("create_label", "issue_invoice"):
        answers = await _twice(how, partial(call_step, warehouse, method, order))
        _same_answer(method, answers, order.order_id, how)
    shipped = await trial.available(sku)
    if shipped != held:
        raise Broken(
            f"issue_invoice twice {how} of 1 unit of {sku} left {shipped} available, {held} before",
            "the invoice ships the unit reserved, once: nothing more taken",
            [order.order_id],
        )


async def _canceled_twice(trial: Trial, sku: str, how: str) -> None:
    """An order labelled then canceled, its label voided and its stock released twice each."""
    warehouse = trial.warehouse
    order = trial.order((sku, 1))
    before = await trial.available(sku)
    for step in STEPS_BEFORE["void_label"]:
        await call_step(warehouse, step, order)
    for method in ("void_label", "release"):
        answers = await _twice(how, partial(call_step, warehouse, method, order))
        _undone_once(method, answers, order.order_id, how)
    after = await trial.available(sku)
    if after != before:
        raise Broken(
            f"release twice {how} left {after} of {sku} available, {before} before the order "
            "was reserved",
            "the order's unit back, once",
            [order.order_id],
        )


async def repeated_calls_act_once(trial: Trial) -> str:
    """Every method called twice, one call after the other and both at once, has one effect
    and gives the same answer; `release` and `void_label` undo once (the stock back once; a
    repeat answers False, or True again as a replay of the first).

    Temporal retries an activity after a crash or a timeout, and a retry can run beside the
    attempt it replaces (a worker cut off from Temporal): a retry that reserves again holds
    stock twice, a second label is a second parcel paid for, a second invoice number is a
    double invoice, a release that gives stock back twice sells units that are not there.
    """
    first, second = trial.skus[:2]
    for sku, how in ((first, IN_SEQUENCE), (second, AT_ONCE)):
        with trial.case():
            await _shipped_twice(trial, sku, how)
        with trial.case():
            await _canceled_twice(trial, sku, how)
    return (
        "reserve, pick, pack, create_label, issue_invoice, void_label and release each twice "
        "in sequence and twice at once"
    )


async def reserve_is_all_or_nothing(trial: Trial) -> str:
    """`reserve` holds every line or none: an order with one line over the available stock is
    refused with `OutOfStock` naming that SKU, and holds nothing of its other lines.

    A reservation that keeps the lines it could take holds stock for an order that will never
    ship: the marketplace shows those units sold out for nothing.
    """
    warehouse = trial.warehouse
    first, second = trial.skus[:2]
    levels = {first: await trial.available(first), second: await trial.available(second)}
    orders = [
        trial.order((first, 1), (second, levels[second] + 1)),
        trial.order((second, 1), (first, levels[first] + 1)),
        trial.order((first, levels[first] + 1)),
    ]
    for order in orders:
        short = order.lines[-1]
        with trial.case():
            try:
                reservation = await warehouse.reserve(order)
            except OutOfStock as refusal:
                if refusal.sku != short.sku:
                    raise Broken(
                        f"reserve was refused as OutOfStock naming {refusal.sku!r}, the SKU "
                        f"short is {short.sku!r}",
                        "OutOfStock names the SKU whose line is over its available stock",
                    ) from None
            else:
                raise Broken(
                    f"reserve of {short.quantity} of {short.sku} ({levels[short.sku]} available) "
                    f"answered {describe(reservation)}",
                    "OutOfStock: a line over the available stock is refused",
                )
            now = {sku: await trial.available(sku) for sku in levels}
            if now != levels:
                kept = ", ".join(
                    f"{levels[s] - now[s]} of {s}" for s in levels if now[s] != levels[s]
                )
                raise Broken(
                    f"the refused order {order.order_id} holds {kept}",
                    "a refused order holds nothing of its other lines",
                )
            if await warehouse.release(order.order_id):
                raise Broken(
                    f"release of the refused order {order.order_id} answered True",
                    "False: a refused order holds nothing to release",
                )
    return "2 orders with one line short and 1 plain out-of-stock refused, holding nothing"


@dataclass
class _CancelledCall:
    """One call cancelled mid-way and undone, as `_cancel_mid_call` left it."""

    method: str
    after: float
    order: WarehouseOrder
    # Where its calls start in the trial's.
    since: int
    # Units that stay gone: 1 if the invoice committed before the cancel took.
    kept: int
    # The compensation's answers; None when the order turned out invoiced (nothing undone).
    released: bool | None
    voided: bool | None


async def _cancel_mid_call(trial: Trial, method: str, after: float) -> _CancelledCall:
    """Call `method` on a fresh order, cancel it `after` seconds in, then undo as the workflow's
    compensation does (release, then void the label)."""
    warehouse, sku = trial.warehouse, trial.skus[0]
    order = trial.order((sku, 1))
    since = len(trial.calls)
    for step in STEPS_BEFORE[method]:
        await call_step(warehouse, step, order)
    task = asyncio.ensure_future(call_step(warehouse, method, order))
    await asyncio.sleep(after)
    task.cancel()
    # However it ended is recorded; what it left behind is the point.
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()
    try:
        released = await warehouse.release(order.order_id)
    except AlreadyInvoiced:
        if method not in ("issue_invoice", "track"):
            raise
        # The invoice committed: the workflow fetches it, and it must be there.
        await warehouse.issue_invoice(order)
        return _CancelledCall(method, after, order, since, 1, None, None)
    voided = await warehouse.void_label(order.order_id)
    return _CancelledCall(method, after, order, since, 0, released, voided)


async def _nothing_came_late(trial: Trial, case: _CancelledCall) -> None:
    """After the settle time, what the cancelled call might have committed late is not there:
    no reservation for a second release to find, no label for a second void, no invoice (the
    release won). A second call answering True may be a replay of the first's True; True after
    a False is something that came after its undo, and that nobody will undo."""
    if case.released is None:
        return  # invoiced: shipped, nothing was undone
    warehouse, order_id = trial.warehouse, case.order.order_id
    what = f"{case.method} cancelled after {case.after}s, then released and voided"
    later = f"after the {trial.settle_seconds}s settle time"
    expected = "a cancelled call commits nothing after the release and void_label that undo it"
    try:
        released = await warehouse.release(order_id)
    except AlreadyInvoiced:
        raise Broken(
            f"{what}: release answered {case.released}, yet {later} "
            "release raised AlreadyInvoiced: the order was invoiced after its release",
            expected,
            [order_id],
        ) from None
    if released and not case.released:
        raise Broken(
            f"{what}: release answered False, yet {later} release answered "
            "True: a reservation committed after its release",
            expected,
            [order_id],
        )
    if await warehouse.void_label(order_id) and not case.voided:
        raise Broken(
            f"{what}: void_label answered False, yet {later} void_label "
            "answered True: a label bought after its void",
            expected,
            [order_id],
        )
    if case.method == "issue_invoice":
        try:
            invoice = await warehouse.issue_invoice(case.order)
        except OrderReleased:
            return
        raise Broken(
            f"{what}: release answered {case.released}, yet {later} "
            f"issue_invoice answered {describe(invoice)}",
            "OrderReleased: the release won, and a cancelled invoice commits nothing after it",
            [order_id],
        )


async def cancelled_calls_are_undone(trial: Trial) -> str:
    """A call cancelled mid-way leaves nothing behind, or what `release` and `void_label` undo:
    after the cancel and the undo, the available stock is back where it was, and a settle time
    later nothing came after the undo (no reservation, label or invoice).

    A marketplace cancellation stops the step mid-call; a reservation that commits after its
    release holds stock for ever, a label that survives its void is a parcel paid for and lost,
    an invoice after the release bills a canceled order.
    """
    sku = trial.skus[0]
    cases = [(method, after) for method in STEPS_BEFORE for after in CANCEL_AFTER_SECONDS]
    start = await trial.available(sku)
    first_breach: Broken | None = None
    gone = 0
    undone = []
    for method, after in cases:
        with trial.case():
            before = await trial.available(sku)
            case = await _cancel_mid_call(trial, method, after)
            undone.append(case)
            gone += case.kept
            now = await trial.available(sku)
            if now != before - case.kept and first_breach is None:
                first_breach = _stock_breach(sku, method, after, before - case.kept, now)
                first_breach.since = trial.case_start
    # A call cut off may still commit on the far side a moment later.
    await trial.pause(trial.settle_seconds)
    end = await trial.available(sku)
    for case in undone:
        try:
            await _nothing_came_late(trial, case)
        except Broken as breach:
            breach.since = case.since
            raise
    if first_breach is None and end != start - gone:
        first_breach = Broken(
            f"{start - gone - end} units of {sku} were held {trial.settle_seconds}s after the "
            f"cancelled calls were undone ({start - gone} expected, {end} available)",
            "a cancelled call commits nothing that release and void_label cannot undo",
        )
    if first_breach is not None:
        # Which case it was, now that each is given time to settle before the next starts.
        for method, after in cases:
            with trial.case():
                before = await trial.available(sku)
                case = await _cancel_mid_call(trial, method, after)
                await trial.pause(trial.settle_seconds)
                now = await trial.available(sku)
                if now != before - case.kept:
                    raise _stock_breach(sku, method, after, before - case.kept, now)
        raise first_breach
    moments = ", ".join(map(str, CANCEL_AFTER_SECONDS))
    return f"{len(STEPS_BEFORE)} methods cancelled after {moments}s, each undone, nothing late"


def _stock_breach(sku: str, method: str, after: float, expected: int, available: int) -> Broken:
    return Broken(
        f"{method} cancelled after {after}s, then released and voided: {available} of {sku} "
        f"available, {expected} expected",
        "after the cancel, release and void_label, the available stock is back where it was "
        "(less the unit of an invoice that committed)",
    )


async def invoice_and_release_have_one_winner(trial: Trial) -> str:
    """`issue_invoice` racing `release` on the same order: exactly one wins, every time. The
    invoice won: `release` raises `AlreadyInvoiced`; the release won: `issue_invoice` raises
    `OrderReleased`; and the stock agrees (invoiced units gone, released ones back).

    A cancellation arriving as the invoice is issued: both winning is an invoiced order whose
    stock went back on sale (sold twice), or a canceled order the customer is billed for.
    """
    warehouse = trial.warehouse
    orders = [trial.order((trial.skus[i % len(trial.skus)], 1)) for i in range(RACES)]
    before = await trial.available_of_all()

    async def ready(order: WarehouseOrder) -> None:
        for step in STEPS_BEFORE["issue_invoice"]:
            await call_step(warehouse, step, order)

    async def started_after(seconds: float, start: Callable[[], Awaitable[T]]) -> T:
        await asyncio.sleep(max(seconds, 0.0))
        return await start()

    async def race(
        order: WarehouseOrder, release_lag: float
    ) -> tuple[Invoice | BaseException, bool | BaseException]:
        return await asyncio.gather(
            started_after(-release_lag, lambda: warehouse.issue_invoice(order)),
            started_after(release_lag, lambda: warehouse.release(order.order_id)),
            return_exceptions=True,
        )

    await asyncio.gather(*(ready(order) for order in orders))
    # Each pair starts a little apart, either way, so that either side may win some races
    # however fast one of the calls is.
    outcomes = await asyncio.gather(
        *(race(order, RELEASE_LAGS[i % len(RELEASE_LAGS)]) for i, order in enumerate(orders))
    )
    invoiced = {sku: 0 for sku in trial.skus}
    for order, (invoice, released) in zip(orders, outcomes, strict=True):
        for outcome in (invoice, released):
            if isinstance(outcome, KeptFailing):
                # No answer to judge: the runner says so.
                raise outcome
        if isinstance(invoice, Invoice) and isinstance(released, AlreadyInvoiced):
            invoiced[order.lines[0].sku] += 1
        elif not (released is True and isinstance(invoice, OrderReleased)):
            raise Broken(
                f"issue_invoice and release of {order.order_id} at once: issue_invoice "
                f"{describe(invoice)}; release {describe(released)}",
                "exactly one wins: an invoice and AlreadyInvoiced, or True and OrderReleased",
                [order.order_id],
            )
    for order, (invoice, _) in zip(orders, outcomes, strict=True):
        if not isinstance(invoice, Invoice):
            await warehouse.void_label(order.order_id)
    after = await trial.available_of_all()
    expected = {sku: before[sku] - invoiced[sku] for sku in trial.skus}
    if after != expected:
        raise Broken(
            f"after the races {after} available, {expected} expected ({before} before, "
            f"{invoiced} invoiced)",
            "invoiced units gone, released ones back on sale",
        )
    won = sum(invoiced.values())
    return f"{RACES} races: {won} invoices won, {RACES - won} releases won"


async def release_before_reserve_holds_nothing(trial: Trial) -> str:
    """`release` of an order never reserved makes a later `reserve` of it hold nothing: it raises
    `OrderReleased` or answers without holding stock.

    A reservation attempt can outlive its worker's contact with Temporal: the order gives up,
    releases (nothing, yet), and the attempt commits afterwards, holding stock nobody releases.
    """
    warehouse, sku = trial.warehouse, trial.skus[0]
    order = trial.order((sku, 1))
    before = await trial.available(sku)
    if await warehouse.release(order.order_id):
        raise Broken(
            f"release of {order.order_id}, never reserved, answered True",
            "False: there was nothing to release",
        )
    try:
        await warehouse.reserve(order)
    except OrderReleased:
        outcome = "was refused with OrderReleased"
    else:
        outcome = "answered"
    after = await trial.available(sku)
    if after != before:
        raise Broken(
            f"reserve after its release {outcome} and holds {before - after} of {sku}",
            "the late reserve holds nothing: OrderReleased, or an answer holding no stock",
        )
    return f"the late reserve {outcome}, holding nothing"


def _went_back(previous: ParcelStatus, status: ParcelStatus) -> str:
    """How the parcel's status went back from `previous`, or "" if it did not."""
    if status.events[: len(previous.events)] != previous.events:
        lost = [event.description for event in previous.events if event not in status.events]
        gone = f" ({', '.join(lost)} gone)" if lost else " (events changed)"
        return f"track answered {describe(previous)}, then {describe(status)}{gone}"
    if previous.delivered and not status.delivered:
        return "track answered delivered, then not delivered"
    return ""


async def tracking_never_goes_back(trial: Trial) -> str:
    """`track` never goes back: over repeated calls, while the parcel moves to its delivery and
    after, events are only appended and `delivered`, once true, stays true; an order without a
    label raises `UnknownOrder`. Not run unless the parcel is seen moving, then delivered,
    within the bound.

    The connector posts every new event to the marketplace and stops following a delivered
    parcel: an event that vanishes or a delivery undone shows the customer a parcel going back.
    """
    warehouse, sku = trial.warehouse, trial.skus[0]
    for order, steps, why in (
        (trial.order((sku, 1)), (), "never reserved"),
        (trial.order((sku, 1)), ("reserve", "pick", "pack"), "reserved, no label"),
    ):
        with trial.case():
            for step in steps:
                await call_step(warehouse, step, order)
            try:
                status = await warehouse.track(order)
            except UnknownOrder:
                pass
            else:
                raise Broken(
                    f"track of an order {why} answered {describe(status)}",
                    "UnknownOrder: an order without a label has no parcel to track",
                )
            if steps:
                await warehouse.release(order.order_id)
    order = trial.order((sku, 1))
    for step in STEPS_BEFORE["track"]:
        await call_step(warehouse, step, order)
    first = previous = await warehouse.track(order)
    polls = 1
    # The poll that first said delivered.
    delivered_at = polls if first.delivered else None
    following_until = time.monotonic() + trial.track_bound_seconds
    while (
        polls - delivered_at < POLLS_AFTER_DELIVERY
        if delivered_at is not None
        else time.monotonic() < following_until
    ):
        await trial.pause(TRACK_POLL_SECONDS)
        status = await warehouse.track(order)
        polls += 1
        went_back = _went_back(previous, status)
        if went_back:
            raise Broken(
                went_back,
                "events only appended, oldest first; delivered never true then false",
                [order.order_id],
            )
        if delivered_at is None and status.delivered:
            delivered_at = polls
        previous = status
    if delivered_at is None or first.delivered:
        if first.delivered:
            seen = f"was delivered from the first poll ({describe(first)}): it never moved"
        elif previous != first:
            seen = f"moved from {describe(first)} to {describe(previous)} but was not delivered"
        else:
            seen = f"did not move ({describe(first)})"
        raise NotRun(
            f"UnknownOrder without a label checked; the shipped parcel {seen} in {polls} polls "
            f"over {trial.track_bound_seconds}s, so whether tracking goes back was not checked: "
            "give the test system a carrier that delivers within that, not at once (e.g. "
            "CARRIER_DELIVERY_TIME=1s for the simulated warehouse), or raise the bound: the "
            "command's --track-bound SECONDS, run_kit's track_bound_seconds=, or "
            "KitTarget(track_bound_seconds=...)"
        )
    return (
        f"{polls} polls of a shipped parcel from {describe(first)} to {describe(previous)}, "
        f"{POLLS_AFTER_DELIVERY} of them after its delivery"
    )


UNREACHABLE_HOW_TO = (
    "needs the adapter pointed at a system that is down: the command's --unreachable-env "
    "KEY=VALUE (e.g. WAREHOUSE_URL=postgresql+psycopg://kit@127.0.0.1:9/kit), run_kit's "
    "unreachable=, or KitTarget(unreachable=...)"
)


async def unreachable_system_fails_retryably(trial: Trial) -> str:
    """Against a system that is down, every method raises what the activities retry
    (`WarehouseUnavailable`, `OSError` or `TimeoutError`), within a bound.

    Anything else ends the step for good (activities/fulfillment.py): a network blip cancels
    the order and the customer is told; a call that hangs holds the step until its timeout.
    """
    if trial.unreachable is None:
        raise NotRun(UNREACHABLE_HOW_TO)
    try:
        down = trial.recorded(await build(trial.unreachable))
    except Exception as err:
        raise Broken(
            f"building the adapter for a system that is down raised {type(err).__name__}: {err}",
            "an adapter that can be built, whose calls then fail retryably",
        ) from err
    order = trial.order((trial.skus[0], 1))
    tasks = {
        method: asyncio.ensure_future(call_step(down, method, order)) for method in STEPS_BEFORE
    }
    _, hanging = await asyncio.wait(tasks.values(), timeout=trial.unreachable_bound_seconds)
    for task in hanging:
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    with suppress(Exception):
        await down.close()
    wrong = []
    for method, task in tasks.items():
        if task in hanging or task.cancelled():
            wrong.append(f"{method} still running after {trial.unreachable_bound_seconds}s")
        elif not isinstance(task.exception(), TRANSIENT_ERRORS):
            wrong.append(f"{method} {describe(task.exception() or task.result())}")
    if wrong:
        raise Broken(
            "; ".join(wrong),
            f"WarehouseUnavailable, OSError or TimeoutError within "
            f"{trial.unreachable_bound_seconds}s: what the activities retry",
        )
    return f"{len(tasks)} methods failed retryably"


# Every clause, in the order the kit runs them.
CLAUSES: dict[str, Clause] = {
    clause.__name__: clause
    for clause in (
        repeated_calls_act_once,
        reserve_is_all_or_nothing,
        cancelled_calls_are_undone,
        invoice_and_release_have_one_winner,
        release_before_reserve_holds_nothing,
        tracking_never_goes_back,
        unreachable_system_fails_retryably,
    )
}


def rule(name: str) -> str:
    """A clause's rule: the first paragraph of its docstring, on one line."""
    doc = CLAUSES[name].__doc__ or name
    return " ".join(doc.split("\n\n")[0].split())
