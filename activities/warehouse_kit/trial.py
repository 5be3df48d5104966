"""What a clause works with: the adapter under test with every call recorded, fresh orders, and
the stock read from the outside (black box: only the `Warehouse` protocol, nothing of how the
adapter keeps its books)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

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

# Reserving this much of a SKU is refused with `OutOfStock`, whose `available` is the SKU's stock:
# the only way to read stock that the protocol offers.
ABSURD_QUANTITY = 1_000_000_000

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
    """The adapter under test, each call written to a shared list as it starts and as it ends."""

    def __init__(self, inner: Warehouse, calls: list[Call], started: float) -> None:
        self.inner = inner
        self.calls = calls
        self._started = started

    async def _record(self, method: str, order_id: str, arguments: str, call: Awaitable[T]) -> T:
        entry = Call(time.monotonic() - self._started, method, order_id, arguments)
        self.calls.append(entry)
        try:
            result = await call
        except BaseException as err:
            entry.outcome = describe(err)
            raise
        entry.outcome = describe(result)
        return result

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        arguments = f"{order.order_id}: {_lines(order.lines)}"
        return await self._record("reserve", order.order_id, arguments, self.inner.reserve(order))

    async def pick(self, order_id: str) -> None:
        await self._record("pick", order_id, order_id, self.inner.pick(order_id))

    async def pack(self, order_id: str) -> None:
        await self._record("pack", order_id, order_id, self.inner.pack(order_id))

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        call = self.inner.create_label(order)
        return await self._record("create_label", order.order_id, order.order_id, call)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        call = self.inner.issue_invoice(order)
        return await self._record("issue_invoice", order.order_id, order.order_id, call)

    async def release(self, order_id: str) -> bool:
        return await self._record("release", order_id, order_id, self.inner.release(order_id))

    async def void_label(self, order_id: str) -> bool:
        return await self._record("void_label", order_id, order_id, self.inner.void_label(order_id))

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        call = self.inner.track(order)
        return await self._record("track", order.order_id, order.order_id, call)

    async def close(self) -> None:
        await self._record("close", "", "", self.inner.close())


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
    ) -> None:
        self.started = time.monotonic()
        self.calls: list[Call] = []
        self.warehouse = RecordingWarehouse(warehouse, self.calls, self.started)
        self.run_id = run_id
        self.skus = skus
        self.settle_seconds = settle_seconds
        self.unreachable = unreachable
        self.unreachable_bound_seconds = unreachable_bound_seconds
        self._order_numbers = order_numbers
        # Where the current case's calls start (see `case`), and those of the case an
        # unexpected error left.
        self.case_start = 0
        self.failed_case_start: int | None = None

    def recorded(self, warehouse: Warehouse) -> RecordingWarehouse:
        """Another adapter (the unreachable one), its calls recorded with this clause's."""
        return RecordingWarehouse(warehouse, self.calls, self.started)

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
        """Every order this clause asked to reserve (stock probes aside), first asked first."""
        return list(
            dict.fromkeys(
                call.order_id
                for call in self.calls
                if call.method == "reserve" and "-stock" not in call.order_id
            )
        )

    async def available(self, sku: str) -> int:
        """The SKU's available stock, read through the protocol: reserving an absurd quantity is
        refused with `OutOfStock`, which says what is available.

        Raises:
            Broken: The adapter did not refuse it so, and the kit cannot read its stock.
        """
        probe = self.order((sku, ABSURD_QUANTITY), purpose="stock")
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
        # It holds an absurd quantity: give it back before saying so.
        await self.warehouse.release(probe.order_id)
        raise Broken(
            f"reserve of {ABSURD_QUANTITY} of {sku} answered {describe(reservation)}",
            expected,
            [probe.order_id],
        )

    async def available_of_all(self) -> dict[str, int]:
        """Every SKU's available stock."""
        return {sku: await self.available(sku) for sku in self.skus}
