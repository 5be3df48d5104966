"""Adapters that each break one clause of the `Warehouse` contract, as a seller's first attempt
might: the simulated warehouse, wrapped, with one rule broken. tests/test_warehouse_kit.py
checks that the kit (activities/warehouse_kit) names the clause each breaks and the calls that
show it. Each is a factory for the WAREHOUSE setting too:
`tests.broken_warehouses:LabelMintedAnew.from_settings`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from activities.fulfillment import TRANSIENT_ERRORS
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import (
    Invoice,
    OrderReleased,
    OutOfStock,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    WarehouseOrder,
    WarehouseUnavailable,
)
from activities.warehouse_books import COURIER
from config import Settings

T = TypeVar("T")

# How long after its cancel a cut-off reservation commits on the far side.
LATE_COMMIT_SECONDS = 0.05
# The gap between checking an order is not released and issuing its invoice.
INVOICE_GAP_SECONDS = 0.01
# The round trip of an ERP's look-up, or of a carrier's label purchase.
ROUND_TRIP_SECONDS = 0.01


class WrappedWarehouse:
    """The simulated warehouse, each method passed through; the subclasses break one."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        self.inner = inner

    @classmethod
    def from_settings(cls, settings: Settings) -> WrappedWarehouse:
        """A factory for the WAREHOUSE setting."""
        return cls(SimulatedWarehouse.from_settings(settings))

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        return await self.inner.reserve(order)

    async def pick(self, order_id: str) -> None:
        await self.inner.pick(order_id)

    async def pack(self, order_id: str) -> None:
        await self.inner.pack(order_id)

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        return await self.inner.create_label(order)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        return await self.inner.issue_invoice(order)

    async def release(self, order_id: str) -> bool:
        return await self.inner.release(order_id)

    async def void_label(self, order_id: str) -> bool:
        return await self.inner.void_label(order_id)

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        return await self.inner.track(order)

    async def close(self) -> None:
        await self.inner.close()


class LabelMintedAnew(WrappedWarehouse):
    """Breaks `repeated_calls_act_once`: every create_label buys a new label, a retry too."""

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        label = await self.inner.create_label(order)
        tracking_number = f"SIM{secrets.randbelow(10**10):010d}"
        return label.model_copy(
            update={
                "label_id": f"LBL-{secrets.token_hex(4).upper()}",
                "tracking_number": tracking_number,
            }
        )


class ReserveIdempotentOnlyInSequence(WrappedWarehouse):
    """Breaks `repeated_calls_act_once` with two calls at once: remembers each order's
    reservation and answers it again, but looks it up before it reserves (check, then act), in
    an ERP that numbers each reservation itself. A retry running beside its first attempt (a
    worker cut off from Temporal) reserves a second time, and the release gives back one."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self._answers: dict[str, Reservation] = {}
        self._erp_ids: dict[str, str] = {}
        self._released: set[str] = set()

    def _erp_id(self, order_id: str) -> str:
        return self._erp_ids.get(order_id, order_id)

    def _as_erp(self, order: WarehouseOrder) -> WarehouseOrder:
        return order.model_copy(update={"order_id": self._erp_id(order.order_id)})

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        if order.order_id in self._released:
            raise OrderReleased(f"order {order.order_id} was released")
        if order.order_id in self._answers:
            return self._answers[order.order_id]
        await asyncio.sleep(ROUND_TRIP_SECONDS)  # the ERP's look-up
        erp_id = f"{order.order_id}.{secrets.token_hex(2)}"
        # Kept before the call: a cancelled call is still undone.
        self._erp_ids[order.order_id] = erp_id
        reservation = await self.inner.reserve(order.model_copy(update={"order_id": erp_id}))
        answer = reservation.model_copy(update={"order_id": order.order_id})
        self._answers[order.order_id] = answer
        return answer

    async def pick(self, order_id: str) -> None:
        await self.inner.pick(self._erp_id(order_id))

    async def pack(self, order_id: str) -> None:
        await self.inner.pack(self._erp_id(order_id))

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        return await self.inner.create_label(self._as_erp(order))

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        return await self.inner.issue_invoice(self._as_erp(order))

    async def release(self, order_id: str) -> bool:
        if order_id not in self._erp_ids:
            self._released.add(order_id)
        return await self.inner.release(self._erp_id(order_id))

    async def void_label(self, order_id: str) -> bool:
        return await self.inner.void_label(self._erp_id(order_id))

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        return await self.inner.track(self._as_erp(order))


class ReserveLineByLine(WrappedWarehouse):
    """Breaks `reserve_is_all_or_nothing`: takes the lines one by one and keeps those it took
    before the line that is short."""

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        try:
            return await self.inner.reserve(order)
        except OutOfStock as short:
            taken = []
            for line in order.lines:
                if line.sku == short.sku:
                    break
                taken.append(line)
            if taken:
                await self.inner.reserve(order.model_copy(update={"lines": taken}))
            raise


class ReserveCommitsAfterCancel(WrappedWarehouse):
    """Breaks `cancelled_calls_are_undone`: a reservation cancelled in flight is committed by the
    far side LATE_COMMIT_SECONDS later, under a reference of its own that `release` of the order
    does not know."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self._late: set[asyncio.Task[Reservation]] = set()

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        try:
            await asyncio.sleep(0.002)  # the request on its way
        except asyncio.CancelledError:
            late = asyncio.create_task(self._commit_later(order))
            self._late.add(late)
            late.add_done_callback(self._late.discard)
            raise
        return await self.inner.reserve(order)

    async def _commit_later(self, order: WarehouseOrder) -> Reservation:
        await asyncio.sleep(LATE_COMMIT_SECONDS)
        return await self.inner.reserve(order.model_copy(update={"order_id": f"{order.order_id}L"}))

    async def close(self) -> None:
        await asyncio.gather(*self._late, return_exceptions=True)
        await self.inner.close()


class LabelBoughtAfterItsVoid(WrappedWarehouse):
    """Breaks `cancelled_calls_are_undone` (and not the stock): buys each label from a carrier
    whose purchase a cancel does not stop, ROUND_TRIP_SECONDS after asking. A create_label
    cancelled mid-way buys its label after the compensation's void found none to void: a
    parcel paid for and never sent."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self._purchases: dict[str, asyncio.Task[ShippingLabel]] = {}
        self.labels: dict[str, ShippingLabel] = {}
        self.voided: set[str] = set()

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        purchase = self._purchases.get(order.order_id)
        if purchase is None:
            purchase = asyncio.create_task(self._buy(order))
            self._purchases[order.order_id] = purchase
        return await asyncio.shield(purchase)

    async def _buy(self, order: WarehouseOrder) -> ShippingLabel:
        await asyncio.sleep(ROUND_TRIP_SECONDS)
        try:
            label = await self.inner.create_label(order)  # what track() follows
        except OrderReleased:
            # The carrier sells it all the same.
            number = f"SIM{secrets.randbelow(10**10):010d}"
            label = ShippingLabel(
                label_id=f"LBL-{secrets.token_hex(4).upper()}",
                courier=COURIER,
                tracking_number=number,
                tracking_url=f"https://tracking.example.com/{number}",
                created_at=datetime.now(UTC),
            )
        self.labels[order.order_id] = label
        return label

    async def void_label(self, order_id: str) -> bool:
        if order_id not in self.labels or order_id in self.voided:
            return False
        self.voided.add(order_id)
        await self.inner.void_label(order_id)
        return True

    async def close(self) -> None:
        await asyncio.gather(*self._purchases.values(), return_exceptions=True)
        await self.inner.close()


class InvoiceChecksThenActs(WrappedWarehouse):
    """Breaks `invoice_and_release_have_one_winner`: checks that the order is not released, then
    issues the invoice in a separate fiscal system, whatever the release did in between."""

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        record = await self.inner.order_record(order.order_id)
        if record is not None and record["state"] == "released":
            raise OrderReleased(f"order {order.order_id} was released")
        await asyncio.sleep(INVOICE_GAP_SECONDS)
        try:
            return await self.inner.issue_invoice(order)
        except OrderReleased:
            # Checked above: the fiscal system issues its number all the same.
            return Invoice(
                invoice_number=f"NFe-{secrets.randbelow(10**6):06d}",
                issuance_date=datetime.now(UTC),
                invoice_value=sum(line.price * line.quantity for line in order.lines),
                lines=order.lines,
            )


class ReleaseForgetsUnknownOrders(WrappedWarehouse):
    """Breaks `release_before_reserve_holds_nothing`: a release of an order it never reserved
    answers False and remembers nothing, so a late reservation of it holds stock."""

    async def release(self, order_id: str) -> bool:
        if await self.inner.order_record(order_id) is None:
            return False
        return await self.inner.release(order_id)


class TrackDropsEvents(WrappedWarehouse):
    """Breaks `tracking_never_goes_back`: every other answer of the carrier misses its latest
    event."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self._tracked: Counter[str] = Counter()

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        status = await self.inner.track(order)
        self._tracked[order.order_id] += 1
        if self._tracked[order.order_id] % 2 == 0 and status.events:
            return ParcelStatus(events=status.events[:-1], delivered=False)
        return status


class DeliveryUndoneNowAndThen(WrappedWarehouse):
    """Breaks `tracking_never_goes_back` once the parcel is delivered: every other answer then
    says it is not (a carrier's API behind a cache that is not always fresh). A carrier slower
    than the kit's bound never shows it."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self._polls = 0

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        status = await self.inner.track(order)
        self._polls += 1
        if status.delivered and self._polls % 2 == 0:
            return ParcelStatus(events=status.events[:-1], delivered=False)
        return status


class DownAsRuntimeError(WrappedWarehouse):
    """Breaks `unreachable_system_fails_retryably`: a system that is down surfaces as
    RuntimeError, which ends the order's step for good instead of being retried."""

    @staticmethod
    async def _plainly(call: Awaitable[T]) -> T:
        try:
            return await call
        except TRANSIENT_ERRORS as err:
            raise RuntimeError(f"warehouse failed: {err}") from None

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        return await self._plainly(self.inner.reserve(order))

    async def pick(self, order_id: str) -> None:
        await self._plainly(self.inner.pick(order_id))

    async def pack(self, order_id: str) -> None:
        await self._plainly(self.inner.pack(order_id))

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        return await self._plainly(self.inner.create_label(order))

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        return await self._plainly(self.inner.issue_invoice(order))

    async def release(self, order_id: str) -> bool:
        return await self._plainly(self.inner.release(order_id))

    async def void_label(self, order_id: str) -> bool:
        return await self._plainly(self.inner.void_label(order_id))

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        return await self._plainly(self.inner.track(order))


class FirstReleaseHangs(WrappedWarehouse):
    """Hangs: the first release it is asked for never answers (a lock never given back); every
    other call answers at once. The kit's clause timeout catches it."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self.hung: str | None = None

    async def release(self, order_id: str) -> bool:
        if self.hung is None:
            self.hung = order_id
            await asyncio.Event().wait()
        return await self.inner.release(order_id)


class BackOrdersReleaseFailsOnce(WrappedWarehouse):
    """Takes any quantity (back-orders: the kit's stock probe reserves its billion units), and
    its first release fails with `failure`, retryable or not."""

    def __init__(self, inner: SimulatedWarehouse, failure: Exception) -> None:
        super().__init__(inner)
        self._failure: Exception | None = failure

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        try:
            return await self.inner.reserve(order)
        except OutOfStock as short:
            await self.inner.restock(short.sku, short.requested)
            return await self.inner.reserve(order)

    async def release(self, order_id: str) -> bool:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return await self.inner.release(order_id)


class PickNeverDone(WrappedWarehouse):
    """Every pick answers that it is under way (`WarehouseUnavailable`, as the HTTP adapter
    reads a `202 Accepted`), and never ends: a step retried until its timeout."""

    async def pick(self, order_id: str) -> None:
        raise WarehouseUnavailable(f"picking of {order_id} under way; ask again")
