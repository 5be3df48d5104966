"""The seller's systems as the fulfillment activities see them: stock, pick and pack, carrier,
invoicing.

A deployment plugs its own systems in by writing a class with these methods and naming a factory
for it in the `WAREHOUSE` setting (`module:callable`, called with the `Settings`), or by serving
the warehouse HTTP API (`WAREHOUSE=http`, activities/http_warehouse.py). The default,
`simulated` (activities/simulated_warehouse.py), needs no configuration.

The contract every implementation keeps:
- Every method is idempotent per `order_id`: Temporal retries an activity after a crash or a
  timeout, and the second call must answer what the first did (the same label, the same invoice
  number) without doing the work twice, even when the two overlap. `release` and `void_label`
  repeated may answer False (nothing left) or True again (the first answer, replayed): either
  way the stock comes back, and the label is voided, once.
- Any call may be cancelled (`asyncio.CancelledError`) while it runs: a marketplace cancellation
  stops the step mid-way. A cancelled call leaves either nothing behind or something that
  `release` and `void_label` undo.
- `issue_invoice` is the point of no return and it races with `release`: whichever commits first
  wins, atomically. `release` of an invoiced order raises `AlreadyInvoiced`; `issue_invoice` of a
  released order raises `OrderReleased`.
- Methods do not heartbeat: the activities around them do.
- Transient failures are `WarehouseUnavailable` (or OSError / TimeoutError) and are retried;
  refusals are `WarehouseError`s; anything else ends the step for good.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from config import WAREHOUSE_FACTORIES
from workflows.messages import CamelModel, OrderLine

if TYPE_CHECKING:
    from config import Settings


class WarehouseOrder(CamelModel):
    """An order as the warehouse needs it."""

    order_id: str
    marketplace_order_id: str
    lines: list[OrderLine]
    freight_value: int = 0
    shipping_address: dict[str, object] | None = None


class Reservation(CamelModel):
    """Stock held for an order."""

    order_id: str
    lines: list[OrderLine]
    reserved_at: datetime


class ShippingLabel(CamelModel):
    """The carrier's label for an order's parcel."""

    label_id: str
    courier: str
    tracking_number: str
    tracking_url: str
    created_at: datetime


class Invoice(CamelModel):
    """The fiscal invoice of an order."""

    invoice_number: str
    issuance_date: datetime
    # Items plus freight, in cents.
    invoice_value: int
    lines: list[OrderLine]


class ParcelEvent(CamelModel):
    """One event of the parcel's journey as the carrier reports it (the shape of VTEX's
    `requestUpdateTrackingStatus` `events[]`)."""

    description: str
    # The day it happened, `2021-03-16`.
    date: str
    city: str | None = None
    state: str | None = None


class ParcelStatus(CamelModel):
    """Where the parcel is: every event so far, oldest first, and whether it is delivered."""

    events: list[ParcelEvent]
    delivered: bool


class WarehouseError(Exception):
    """A refusal that retrying cannot change."""


class WarehouseUnavailable(Exception):
    """A failure that a later try may not meet (a lock, a timeout, a restart): retried.

    Raise it (or let OSError / TimeoutError through) for what is transient. Any other exception
    is taken as a fault retrying cannot fix: the step fails for good and the order is canceled
    and compensated, rather than retried forever with nobody looking.
    """


class OutOfStock(WarehouseError):
    """Not enough available stock to reserve the order."""

    def __init__(self, sku: str, requested: int, available: int) -> None:
        super().__init__(f"SKU {sku}: {requested} requested, {available} available")
        self.sku = sku
        self.requested = requested
        self.available = available


class AlreadyInvoiced(WarehouseError):
    """The order's invoice is issued: its stock is committed and cannot be released."""


class OrderReleased(WarehouseError):
    """The order's stock was released (it was canceled or expired): it cannot be invoiced."""


class UnknownOrder(WarehouseError):
    """The warehouse has no reservation for this order."""


class Warehouse(Protocol):
    """What the fulfillment activities need from the seller's systems."""

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        """Hold stock for every line, all or nothing. Raises `OutOfStock`."""
        ...

    async def pick(self, order_id: str) -> None:
        """Pick the order's items from the shelves."""
        ...

    async def pack(self, order_id: str) -> None:
        """Pack the picked items into a parcel."""
        ...

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        """Buy the carrier's label: courier, tracking number and URL."""
        ...

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """Issue the invoice and commit the reserved stock as shipped. Raises `OrderReleased`."""
        ...

    async def release(self, order_id: str) -> bool:
        """Return the reserved stock; False if there was nothing left to release.

        Releasing an order that was never reserved must make a later `reserve` of it reserve
        nothing: a reservation attempt can outlive its worker's contact with Temporal and commit
        after the order gave up on it. Raises `AlreadyInvoiced`.
        """
        ...

    async def void_label(self, order_id: str) -> bool:
        """Void the order's label; False if it has none or it was voided already."""
        ...

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """Ask the carrier where the order's parcel is. Raises `UnknownOrder` without a label."""
        ...

    async def close(self) -> None:
        """Free what the warehouse holds (connections, files)."""
        ...


def load_warehouse(settings: Settings) -> Warehouse:
    """Build the warehouse named by `settings.warehouse`: a short name of
    `config.WAREHOUSE_FACTORIES` (`simulated`, `http`), or `module:callable`."""
    factory_name = WAREHOUSE_FACTORIES.get(settings.warehouse.strip(), settings.warehouse)
    module_name, _, attribute_path = factory_name.partition(":")
    if not attribute_path:
        raise ValueError(
            f"WAREHOUSE={settings.warehouse!r} is neither "
            + " nor ".join(repr(name) for name in WAREHOUSE_FACTORIES)
            + " nor of the form module:callable"
        )
    factory: object = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        factory = getattr(factory, attribute)
    if not callable(factory):
        raise ValueError(f"WAREHOUSE={settings.warehouse!r} does not name a callable")
    warehouse: Warehouse = factory(settings)
    return warehouse
