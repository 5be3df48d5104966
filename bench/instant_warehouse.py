"""A warehouse that costs nothing, for `make bench`'s explanation of an order's cost: every call
answers at once from memory, idempotent per order, with no database and no I/O.

`python -m bench --warehouse bench.instant_warehouse:InstantWarehouse.from_settings` runs the whole
orders on it: the order's CPU beyond the floor's, minus what the simulated warehouse's books cost.
Never for a deployment: it forgets everything when the worker stops, and never runs out of stock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    ParcelEvent,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseOrder,
)
from config import Settings


class InstantWarehouse:
    """The `Warehouse` protocol (activities/warehouse.py) in memory."""

    def __init__(self) -> None:
        self._reservations: dict[str, Reservation] = {}
        self._released: set[str] = set()
        self._labels: dict[str, ShippingLabel] = {}
        self._invoices: dict[str, Invoice] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> InstantWarehouse:
        """The factory WAREHOUSE names."""
        return cls()

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        """Hold the lines, once per order; nothing after a release."""
        held = self._reservations.get(order.order_id)
        if held is None:
            lines = [] if order.order_id in self._released else order.lines
            held = Reservation(order_id=order.order_id, lines=lines, reserved_at=datetime.now(UTC))
            self._reservations[order.order_id] = held
        return held

    async def pick(self, order_id: str) -> None:
        """Nothing to move."""

    async def pack(self, order_id: str) -> None:
        """Nothing to wrap."""

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        """One label per order."""
        label = self._labels.get(order.order_id)
        if label is None:
            number = f"INST{len(self._labels) + 1:09d}"
            label = ShippingLabel(
                label_id=number,
                courier="Instant Carrier",
                tracking_number=number,
                tracking_url=f"https://tracking.example.com/{number}",
                created_at=datetime.now(UTC),
            )
            self._labels[order.order_id] = label
        return label

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """One invoice per order, never after a release."""
        if order.order_id in self._released:
            raise OrderReleased(order.order_id)
        invoice = self._invoices.get(order.order_id)
        if invoice is None:
            value = sum(line.price * line.quantity for line in order.lines) + order.freight_value
            invoice = Invoice(
                invoice_number=f"INST-{len(self._invoices) + 1:06d}",
                issuance_date=datetime.now(UTC),
                invoice_value=value,
                lines=order.lines,
            )
            self._invoices[order.order_id] = invoice
        return invoice

    async def release(self, order_id: str) -> bool:
        """Give the stock back, once; never after the invoice."""
        if order_id in self._invoices:
            raise AlreadyInvoiced(order_id)
        first = order_id not in self._released
        self._released.add(order_id)
        return first and order_id in self._reservations

    async def void_label(self, order_id: str) -> bool:
        """Void the label, once."""
        return self._labels.pop(order_id, None) is not None

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """Delivered at once."""
        if order.order_id not in self._labels:
            raise UnknownOrder(order.order_id)
        day = datetime.now(UTC).date().isoformat()
        return ParcelStatus(events=[ParcelEvent(description="Delivered", date=day)], delivered=True)

    async def close(self) -> None:
        """Nothing held."""
