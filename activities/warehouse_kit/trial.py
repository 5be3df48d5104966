"""What a clause works with: the adapter under test with every call recorded, fresh orders, and
the stock read from the outside (black box: only the `Warehouse` protocol, nothing of how the
adapter keeps its books)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from activities.fulfillment import TRANSIENT_ERRORS
from activities.warehouse import (
    Invoice,
    OutOfStock,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    Warehouse,
    WarehouseOrder,
)
from workflows.messages import OrderLine

T = TypeVar("T")

# A factory of the adapter under test: sync or async, called with no argument.
WarehouseFactory = Callable[[], Warehouse | Awaitable[Warehouse]]

# What names the kit's stock probes' orders (`kit-<run>-stock<n>`).
STOCK_PROBE = "stock"
# Reserving this much of a SKU is refused with `OutOfStock`, whose `available` is the SKU's stock:
# the only way to read stock that the protocol offers.
ABSURD_QUANTITY = 1_000_000_000

# A call that fails retryably is tried again after this pause, doubled each time up to the
# longest (the activities back off the same way, from 1 s up to 30 s: the kit, which waits for
# each answer, starts sooner).
FIRST_RETRY_PAUSE_SECONDS = 0.01
LONGEST_RETRY_PAUSE_SECONDS = 1.0

# Where the kit's orders are shipped: a plausible Brazilian address, so that an adapter whose
# carrier validates one buys its label.
SHIPPING_ADDRESS: dict[str, object] = {
    "receiverName": "Warehouse Kit",
    "postalCode": "01310-100",
    "city": "São Paulo",
    "state": "SP",
    "country": "BRA",
    "street": "Avenida Paulista",
    "number": "1000",
}


async def build(factory: WarehouseFactory) -> Warehouse:
    """Call the factory, and await what it gives if that is awaitable."""
    built = factory()
    if isinstance(built, Awaitable):
        warehouse: Warehouse = await built
        return warehouse
    return built


def is_stock_probe(order_id: str) -> bool:
    """Whether the order is one of the kit's stock probes (see `Trial.available`)."""
    return order_id.rpartition("-")[2].startswith(STOCK_PROBE)


class Broken(Exception):
    """A clause's rule does not hold.

    Args:
        what: What happened, in one line.
        expected: What the contract expects instead.
        orders: The orders whose calls show the breach (all the case's calls when empty).
    """

    def __init__(self, what: str, expected: str, orders: Iterable[str] = ()) -> None:
        super().__init__(what)
        self.what = what
        self.expected = expected
        self.orders = frozenset(orders)
        # Where the calls of the case it broke start (set by `Trial.case`).
        self.since: int | None = None


class NotRun(Exception):
    """The clause needs something this run was not given; the message says how to give it."""


class KeptFailing(Exception):
    """A call still failed retryably (`WarehouseUnavailable`, `OSError`, `TimeoutError`) when
    the kit's retries of it ran out: the kit has no answer to judge."""


@dataclass
class Call:
    """One call the kit made to the adapter, and how it ended."""

    # Seconds from the clause's start to the call's.
    at: float
    method: str
    order_id: str
    arguments: str
    outcome: str = "still running"

    def __str__(self) -> str:
        return f"+{self.at:.3f}s {self.method}({self.arguments}) -> {self.outcome}"


def describe(result: object) -> str:
    """A call's answer, or what it raised, in a few words."""
    if isinstance(result, asyncio.CancelledError):
        return "cancelled"
    if isinstance(result, BaseException):
        return f"raised {type(result).__name__}: {result}"
    if isinstance(result, Reservation):
        return f"reservation of {_lines(result.lines)}"
    if isinstance(result, ShippingLabel):
        return f"label {result.label_id} (tracking {result.tracking_number})"
    if isinstance(result, Invoice):
        return f"invoice {result.invoice_number}"
    if isinstance(result, ParcelStatus):
        count = len(result.events)
        where = f": {result.events[-1].description}" if result.events else ""
        return f"{count} event{'' if count == 1 else 's'}{where}" + (
            ", delivered" if result.delivered else ""
        )
    if result is None:
        return "done"
    return repr(result)


def _lines(lines: list[OrderLine]) -> str:
    return ", ".join(f"{line.quantity} of {line.sku}" for line in lines)


class RecordingWarehouse:
    """The adapter under test, each call written to a shared list as it starts and as it ends.

    Args:
        inner: The adapter.
        calls: Where each call is written.
        started: When the clause started (`time.monotonic()`), for each call's time.
        retry_bound_seconds: A call that fails retryably is tried again, with backoff, for this
            long, as the activities retry it, before `KeptFailing` is raised; None: not retried
            (what such a failure is, is then the point).
    """

    def __init__(
        self,
        inner: Warehouse,
        calls: list[Call],
        started: float,
        retry_bound_seconds: float | None = None,
    ) -> None:
        self.inner = inner
        self.calls = calls
        self._started = started
        self._retry_bound_seconds = retry_bound_seconds

    async def _record(
        self, method: str, order_id: str, arguments: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        first_try = time.monotonic()
        pause = FIRST_RETRY_PAUSE_SECONDS
        tries = 0
        while True:
            tries += 1
            entry = Call(time.monotonic() - self._started, method, order_id, arguments)
            self.calls.append(entry)
            try:
                result = await call()
            except TRANSIENT_ERRORS as err:
                entry.outcome = describe(err)
                bound = self._retry_bound_seconds
                if bound is None:
                    raise
                if time.monotonic() + pause - first_try > bound:
                    raise KeptFailing(
                        f"{method}({arguments}) still failed retryably after {tries} "
                        f"tries over {time.monotonic() - first_try:.1f}s, the last "
                        f"{entry.outcome}"
                    ) from err
                entry.outcome += ", retried"
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_RETRY_PAUSE_SECONDS)
                continue
            except BaseException as err:
                entry.outcome = describe(err)
                raise
            entry.outcome = describe(result)
            return result

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        arguments = f"{order.order_id}: {_lines(order.lines)}"
        call = partial(self.inner.reserve, order)
        return await self._record("reserve", order.order_id, arguments, call)

    async def pick(self, order_id: str) -> None:
        await self._record("pick", order_id, order_id, partial(self.inner.pick, order_id))

    async def pack(self, order_id: str) -> None:
        await self._record("pack", order_id, order_id, partial(self.inner.pack, order_id))

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        call = partial(self.inner.create_label, order)
        return await self._record("create_label", order.order_id, order.order_id, call)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        call = partial(self.inner.issue_invoice, order)
        return await self._record("issue_invoice", order.order_id, order.order_id, call)

    async def release(self, order_id: str) -> bool:
        call = partial(self.inner.release, order_id)
        return await self._record("release", order_id, order_id, call)

    async def void_label(self, order_id: str) -> bool:
        call = partial(self.inner.void_label, order_id)
        return await self._record("void_label", order_id, order_id, call)

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        call = partial(self.inner.track, order)
        return await self._record("track", order.order_id, order.order_id, call)

    async def close(self) -> None:
        await self._record("close", "", "", self.inner.close)


class Trial:
    """One clause's run: the recorded adapter, its orders and the means to read stock.

    Args:
        warehouse: A fresh adapter, built for this clause.
        run_id: The run's prefix of every order id (fresh per run: a real system keeps them).
        order_numbers: The run's counter of orders, shared by its clauses.
        skus: SKUs the adapter stocks, at least two.
        settle_seconds: How long a call cancelled mid-way may take to commit on the far side.
        unreachable: Builds the adapter pointed at a system that is down, or None.
        unreachable_bound_seconds: How soon a call to that system must fail.
        retry_bound_seconds: How long a call failing retryably is retried before the kit gives
            up on its answer.
        track_bound_seconds: How long a shipped parcel is followed until it is delivered.
    """

    def __init__(
        self,
        warehouse: Warehouse,
        *,
        run_id: str,
        order_numbers: Iterator[int],
        skus: list[str],
        settle_seconds: float,
        unreachable: WarehouseFactory | None,
        unreachable_bound_seconds: float,
        retry_bound_seconds: float,
        track_bound_seconds: float,
    ) -> None:
        self.started = time.monotonic()
        self.calls: list[Call] = []
        self.warehouse = RecordingWarehouse(
            warehouse, self.calls, self.started, retry_bound_seconds
        )
        self.run_id = run_id
        self.skus = skus
        self.settle_seconds = settle_seconds
        self.unreachable = unreachable
        self.unreachable_bound_seconds = unreachable_bound_seconds
        self.track_bound_seconds = track_bound_seconds
        # The seconds the clause spent waiting on purpose (see `pause`): not the adapter's time.
        self.paused_seconds = 0.0
        self._order_numbers = order_numbers
        # Where the current case's calls start (see `case`), and those of the case an
        # unexpected error left.
        self.case_start = 0
        self.failed_case_start: int | None = None

    def recorded(self, warehouse: Warehouse) -> RecordingWarehouse:
        """Another adapter (the unreachable one), its calls recorded with this clause's and
        not retried."""
        return RecordingWarehouse(warehouse, self.calls, self.started)

    async def pause(self, seconds: float) -> None:
        """Wait on purpose (a settle time, a parcel's progress): the clause's timeout, which
        catches a call that hangs, does not count it."""
        self.paused_seconds += seconds
        await asyncio.sleep(seconds)

    def order(self, *lines: tuple[str, int], purpose: str = "") -> WarehouseOrder:
        """A fresh order of (SKU, quantity) lines, under an id no run used before."""
        number = next(self._order_numbers)
        order_id = f"{self.run_id}-{purpose}{number}"
        return WarehouseOrder(
            order_id=order_id,
            marketplace_order_id=f"MKT-{order_id}",
            lines=[OrderLine(sku=sku, quantity=quantity, price=990) for sku, quantity in lines],
            freight_value=1500,
            shipping_address=SHIPPING_ADDRESS,
        )

    @contextmanager
    def case(self) -> Iterator[None]:
        """Calls from here on are the ones a breach found inside shows (a clause of many cases
        shows the case that broke, not all of them)."""
        previous, self.case_start = self.case_start, len(self.calls)
        try:
            yield
        except Broken as breach:
            if breach.since is None:
                breach.since = self.case_start
            raise
        except Exception:
            if self.failed_case_start is None:
                self.failed_case_start = self.case_start
            raise
        finally:
            self.case_start = previous

    def reserved_orders(self) -> list[str]:
        """Every order this clause asked to reserve, first asked first: a stock probe only if
        it was not refused (then it may hold a billion units)."""
        refused_probes = {
            call.order_id
            for call in self.calls
            if is_stock_probe(call.order_id) and call.outcome.startswith("raised OutOfStock")
        }
        return list(
            dict.fromkeys(
                call.order_id
                for call in self.calls
                if call.method == "reserve" and call.order_id not in refused_probes
            )
        )

    async def available(self, sku: str) -> int:
        """The SKU's available stock, read through the protocol: reserving an absurd quantity is
        refused with `OutOfStock`, which says what is available.

        Raises:
            Broken: The adapter did not refuse it so, and the kit cannot read its stock.
        """
        probe = self.order((sku, ABSURD_QUANTITY), purpose=STOCK_PROBE)
        expected = (
            f"OutOfStock(sku={sku!r}, requested={ABSURD_QUANTITY}, available=<the SKU's stock>): "
            "the kit reads stock levels from it"
        )
        try:
            reservation = await self.warehouse.reserve(probe)
        except OutOfStock as refusal:
            if refusal.sku != sku or not 0 <= refusal.available < ABSURD_QUANTITY:
                raise Broken(
                    f"reserve of {ABSURD_QUANTITY} of {sku} was refused as OutOfStock(sku="
                    f"{refusal.sku!r}, available={refusal.available})",
                    expected,
                    [probe.order_id],
                ) from None
            return refusal.available
        # It holds an absurd quantity: give it back before saying so (and say so if it could
        # not: the clause's clean-up tries again).
        given_back = ""
        try:
            await self.warehouse.release(probe.order_id)
        except Exception as err:
            given_back = (
                f"; giving it back raised {type(err).__name__}: {err} (if the kit's clean-up "
                f"fails too, release order {probe.order_id} by hand)"
            )
        raise Broken(
            f"reserve of {ABSURD_QUANTITY} of {sku} answered {describe(reservation)}{given_back}",
            expected,
            [probe.order_id],
        )

    async def available_of_all(self) -> dict[str, int]:
        """Every SKU's available stock."""
        return {sku: await self.available(sku) for sku in self.skus}
