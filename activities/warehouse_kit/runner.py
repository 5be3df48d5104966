"""Run the kit's clauses against an adapter and report each one held, broken or not run.

report = await run_kit(lambda: ErpWarehouse(url), skus=["1", "2"])
print(report.text())
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from activities.warehouse import Warehouse, WarehouseError
from activities.warehouse_kit.clauses import CLAUSES, rule
from activities.warehouse_kit.trial import (
    Broken,
    Call,
    KeptFailing,
    NotRun,
    RecordingWarehouse,
    Trial,
    WarehouseFactory,
    build,
    is_stock_probe,
)

# How long a call cut off by a cancel may take to commit on the far side (a request already
# sent, a transaction already begun) before the kit reads what it left.
DEFAULT_SETTLE_SECONDS = 0.2
# How soon a call to a system that is down must fail.
DEFAULT_UNREACHABLE_BOUND_SECONDS = 10.0
# How long a call that fails retryably (a blip, `202 Accepted`) is retried, as the activities
# do, before the kit gives up on its answer.
DEFAULT_RETRY_BOUND_SECONDS = 10.0
# How long the kit follows a shipped parcel, waiting for it to move and be delivered.
DEFAULT_TRACK_BOUND_SECONDS = 5.0
# A clause still running after this, beyond its own waits, is broken: some call hangs.
DEFAULT_CLAUSE_TIMEOUT_SECONDS = 120.0
# Available units each SKU needs: a run holds up to half the invoice races' 20 units of a SKU at
# once, and ships up to 20 units of the first SKU (the invoices it issues cannot be undone).
MIN_AVAILABLE = 25
# How long the kit's own clean-up waits for each call (it undoes what a broken clause left).
CLEAN_UP_BOUND_SECONDS = 5.0
# A broken clause shows at most this many of its calls, the last ones.
SHOWN_CALLS = 40

Status = Literal["held", "broken", "not run"]
# A clause's trial, of the adapter built for it.
TrialMaker = Callable[[Warehouse], Trial]


class KitSetupError(ValueError):
    """The kit cannot run as asked (an unknown clause, too few SKUs or too little stock, an
    adapter that cannot be built or reached): nothing was checked."""


@dataclass(frozen=True)
class ClauseResult:
    """How one clause went."""

    name: str
    status: Status
    # Held: what was checked; broken: what happened; not run: what it needs.
    reason: str
    # Broken: what the contract expects instead.
    expected: str = ""
    # Broken: the calls that show it, oldest first.
    calls: tuple[str, ...] = ()
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The clause as the command prints it."""
        label = {"held": "held", "broken": "BROKEN", "not run": "not run"}[self.status]
        lines = [f"{label:<8} {self.name:<37} {self.seconds:5.2f}s  {self.reason}"]
        if self.status == "broken":
            lines.append(f"{'':<9}expected: {self.expected}")
            lines.append(f"{'':<9}calls:")
            lines.extend(f"{'':<11}{call}" for call in self.calls)
        return lines


@dataclass(frozen=True)
class KitReport:
    """Every clause run, in order."""

    run_id: str
    skus: tuple[str, ...]
    clauses: tuple[ClauseResult, ...]

    @property
    def broken(self) -> list[ClauseResult]:
        """The clauses that do not hold."""
        return [result for result in self.clauses if result.status == "broken"]

    @property
    def not_run(self) -> list[ClauseResult]:
        """The clauses not checked (never counted as held)."""
        return [result for result in self.clauses if result.status == "not run"]

    @property
    def ok(self) -> bool:
        """Whether every clause run holds (and at least one ran)."""
        return not self.broken and len(self.not_run) < len(self.clauses)

    def text(self) -> str:
        """The report as the command prints it."""
        lines = [f"Warehouse kit run {self.run_id}, SKUs {', '.join(self.skus)}"]
        for result in self.clauses:
            lines.extend(result.lines())
        held = len(self.clauses) - len(self.broken) - len(self.not_run)
        if self.broken:
            names = ", ".join(result.name for result in self.broken)
            verdict = f"BROKEN: {len(self.broken)} of {len(self.clauses)} clauses ({names})"
        else:
            verdict = f"held: {held} of {len(self.clauses)} clauses"
        if self.not_run:
            names = ", ".join(result.name for result in self.not_run)
            verdict += f"; {len(self.not_run)} not run, so not checked ({names})"
        lines.append(verdict)
        return "\n".join(lines)


def _chosen(clauses: Iterable[str] | None) -> list[str]:
    if clauses is None:
        return list(CLAUSES)
    names = list(dict.fromkeys(clauses))
    unknown = [name for name in names if name not in CLAUSES]
    if unknown or not names:
        raise KitSetupError(
            f"unknown clause {', '.join(unknown) or '(none given)'}: the clauses are "
            + ", ".join(CLAUSES)
        )
    return names


async def run_kit(
    make_warehouse: WarehouseFactory,
    *,
    skus: Sequence[str],
    clauses: Iterable[str] | None = None,
    unreachable: WarehouseFactory | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    unreachable_bound_seconds: float = DEFAULT_UNREACHABLE_BOUND_SECONDS,
    retry_bound_seconds: float = DEFAULT_RETRY_BOUND_SECONDS,
    track_bound_seconds: float = DEFAULT_TRACK_BOUND_SECONDS,
    clause_timeout_seconds: float = DEFAULT_CLAUSE_TIMEOUT_SECONDS,
) -> KitReport:
    """Drive an adapter through the contract's clauses.

    Args:
        make_warehouse: Builds a fresh adapter (sync or async, no argument); one per clause.
        skus: At least two SKUs the adapter stocks, MIN_AVAILABLE units each or more. A run
            ships some of them (the invoices it issues) and gives back all it reserves.
        clauses: The names of the clauses to run (`clauses.CLAUSES`); all by default.
        unreachable: Builds the same adapter pointed at a system that is down; without it the
            clause that needs it is not run.
        settle_seconds: How long a cancelled call may take to commit on the far side.
        unreachable_bound_seconds: How soon each call to the down system must fail.
        retry_bound_seconds: How long a call failing retryably is retried before the kit gives
            up on its answer.
        track_bound_seconds: How long a shipped parcel is followed until it is delivered.
        clause_timeout_seconds: A clause still running after this, not counting its own waits
            (the settle time, the parcel's progress), is broken.

    Raises:
        KitSetupError: Nothing could be checked (see its message).
    """
    names = _chosen(clauses)
    _check_durations(
        settle_seconds=settle_seconds,
        unreachable_bound_seconds=unreachable_bound_seconds,
        retry_bound_seconds=retry_bound_seconds,
        track_bound_seconds=track_bound_seconds,
        clause_timeout_seconds=clause_timeout_seconds,
    )
    distinct = list(dict.fromkeys(skus))
    if len(distinct) < 2:
        raise KitSetupError(
            f"the kit needs at least two SKUs the warehouse stocks, got {distinct or 'none'}: "
            "an order of two lines shows whether reserve is all or nothing"
        )
    run_id = f"kit-{uuid.uuid4().hex[:8]}"
    order_numbers = itertools.count(1)

    def trial_of(warehouse: Warehouse) -> Trial:
        return Trial(
            warehouse,
            run_id=run_id,
            order_numbers=order_numbers,
            skus=distinct,
            settle_seconds=settle_seconds,
            unreachable=unreachable,
            unreachable_bound_seconds=unreachable_bound_seconds,
            retry_bound_seconds=retry_bound_seconds,
            track_bound_seconds=track_bound_seconds,
        )

    await _check_stock(make_warehouse, trial_of)
    results = []
    for name in names:
        results.append(await _run_clause(name, make_warehouse, trial_of, clause_timeout_seconds))
    return KitReport(run_id, tuple(distinct), tuple(results))


def _check_durations(**seconds: float) -> None:
    """Refuse a duration that is no number of seconds: `nan` never ends a wait, `inf` neither,
    and a negative one is no time at all."""
    for name, value in seconds.items():
        if not (math.isfinite(value) and value >= 0):
            raise KitSetupError(f"{name} must be a finite number of seconds >= 0, got {value}")


async def _check_stock(make_warehouse: WarehouseFactory, trial_of: TrialMaker) -> None:
    """Refuse to run on SKUs without the stock the clauses need, or on an adapter that cannot
    be built or reached, with a message that says so (rather than every clause broken)."""
    try:
        warehouse = await build(make_warehouse)
    except Exception as err:
        raise KitSetupError(f"building the warehouse raised {type(err).__name__}: {err}") from err
    trial = trial_of(warehouse)
    try:
        for sku in trial.skus:
            try:
                available = await trial.available(sku)
            except Broken:
                return  # the clauses will each say how the stock cannot be read
            except Exception as err:
                raise KitSetupError(
                    f"reading the stock of SKU {sku} raised {type(err).__name__}: {err}"
                ) from err
            if available < MIN_AVAILABLE:
                raise KitSetupError(
                    f"SKU {sku} has {available} units available; the kit needs at least "
                    f"{MIN_AVAILABLE} of each SKU (restock it, or name another with --sku)"
                )
    finally:
        # A probe the adapter did not refuse holds what it reserved.
        await _clean_up(trial)
        await _close(warehouse)


async def _run_clause(
    name: str, make_warehouse: WarehouseFactory, trial_of: TrialMaker, timeout_seconds: float
) -> ClauseResult:
    started = time.monotonic()
    try:
        warehouse = await build(make_warehouse)
    except Exception as err:
        return ClauseResult(
            name,
            "broken",
            f"building the warehouse raised {type(err).__name__}: {err}",
            "a factory that builds the warehouse every time",
            seconds=time.monotonic() - started,
        )
    trial = trial_of(warehouse)
    result: ClauseResult | None = None
    clause = asyncio.ensure_future(CLAUSES[name](trial))
    try:
        hanging = await _hanging_at_deadline(clause, trial, timeout_seconds)
        if hanging is not None:
            result = await _timed_out(name, clause, trial, hanging, timeout_seconds)
        else:
            result = _ended(name, clause, trial)
    finally:
        clause.cancel()
        if result is None or result.status == "broken":
            await _clean_up(trial)
        await _close(warehouse)
    return ClauseResult(
        result.name,
        result.status,
        result.reason,
        result.expected,
        result.calls,
        time.monotonic() - started,
    )


async def _hanging_at_deadline(
    clause: asyncio.Future[str], trial: Trial, timeout_seconds: float
) -> list[Call] | None:
    """Wait for the clause to end; None if it did within its time (its own waits not
    counted), else the calls still running when that time was up."""
    while not clause.done():
        remaining = trial.started + timeout_seconds + trial.paused_seconds - time.monotonic()
        if remaining <= 0:
            return [call for call in trial.calls if call.outcome == "still running"]
        await asyncio.wait({clause}, timeout=remaining)
    return None


async def _timed_out(
    name: str, clause: asyncio.Future[str], trial: Trial, hanging: list[Call], seconds: float
) -> ClauseResult:
    """The clause broken by the calls that hang, named as they were when its time was up (the
    cancel that follows ends them all)."""
    running = "; ".join(map(str, hanging)) or "no call of the adapter (the kit's own wait)"
    clause.cancel()
    await asyncio.wait({clause}, timeout=CLEAN_UP_BOUND_SECONDS)
    for call in hanging:
        call.outcome = f"still running after {seconds}s, then cancelled by the kit"
    since = next((i for i, call in enumerate(trial.calls) if hanging and call is hanging[0]), 0)
    return ClauseResult(
        name,
        "broken",
        f"still running after {seconds}s: {running}",
        "every call answers, or fails, in bounded time",
        _shown(trial, since, frozenset()),
    )


def _ended(name: str, clause: asyncio.Future[str], trial: Trial) -> ClauseResult:
    """How a clause that ended went."""
    try:
        return ClauseResult(name, "held", clause.result())
    except NotRun as missing:
        return ClauseResult(name, "not run", str(missing))
    except Broken as breach:
        calls = _shown(trial, breach.since, breach.orders)
        return ClauseResult(name, "broken", breach.what, breach.expected, calls)
    except KeptFailing as failing:
        since = trial.failed_case_start or 0
        return ClauseResult(
            name,
            "broken",
            str(failing),
            "an answer once retried: the activities retry WarehouseUnavailable, OSError and "
            "TimeoutError with backoff, and a failure that does not pass holds the order's step "
            "until its timeout (the kit retries each call for --retry-bound seconds)",
            _shown(trial, since, frozenset()),
        )
    except Exception as err:
        since = trial.failed_case_start or 0
        if isinstance(err, WarehouseError):
            expected = (
                "the contract's answer, not a refusal it does not call for (a refusal ends the "
                f"order's step: the order is canceled): {rule(name)}"
            )
        else:
            expected = (
                "the contract's answer, not an exception it does not name (a fault: it ends the "
                f"order's step for good, the order canceled): {rule(name)}"
            )
        return ClauseResult(
            name, "broken", _unexpected(trial, err), expected, _shown(trial, since, frozenset())
        )


def _unexpected(trial: Trial, err: Exception) -> str:
    """An error no clause expected, said with the call that raised it."""
    raised = [
        call for call in trial.calls if call.outcome.startswith(f"raised {type(err).__name__}")
    ]
    where = f"{raised[-1].method}({raised[-1].arguments}) " if raised else ""
    return f"{where}raised {type(err).__name__}: {err}"


def _shown(trial: Trial, since: int | None, orders: frozenset[str]) -> tuple[str, ...]:
    calls = trial.calls[since or 0 :]
    if orders:
        calls = [call for call in calls if call.order_id in orders]
    shown = [str(call) for call in calls[-SHOWN_CALLS:]]
    if len(calls) > SHOWN_CALLS:
        shown.insert(0, f"... {len(calls) - SHOWN_CALLS} calls before these")
    return tuple(shown)


async def _clean_up(trial: Trial) -> None:
    """Give back what a broken clause left held: void and release each of its orders (an
    invoiced one stays shipped), best effort, through the adapter, retried but unrecorded."""
    warehouse = RecordingWarehouse(trial.warehouse.inner, [], trial.started, CLEAN_UP_BOUND_SECONDS)
    for order_id in reversed(trial.reserved_orders()):
        # A stock probe has no label to void.
        undos = [warehouse.release] if is_stock_probe(order_id) else []
        for undo in undos or [warehouse.void_label, warehouse.release]:
            with suppress(Exception):
                async with asyncio.timeout(CLEAN_UP_BOUND_SECONDS):
                    await undo(order_id)


async def _close(warehouse: Warehouse) -> None:
    with suppress(Exception):
        async with asyncio.timeout(CLEAN_UP_BOUND_SECONDS):
            await warehouse.close()
