"""The default warehouse: stock, orders, labels and invoices in one database, no setup needed.

By default a SQLite file that every worker process on the host opens; with
`WAREHOUSE_URL=postgresql+psycopg://...`, a PostgreSQL database that workers on many hosts share.
Its books (activities/warehouse_books.py) hold the stock and the orders, one transaction per
change, each run in a thread, off the worker's event loop; this module adds the warehouse's pace
(each step takes `step_seconds`), its refusals, and a simulated carrier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from activities import warehouse_store as store
from activities.warehouse import (
    Invoice,
    ParcelEvent,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)
from activities.warehouse_books import (
    COURIER,
    LedgerEntry,
    StockLevel,
    WarehouseBooks,
)

if TYPE_CHECKING:
    from config import Settings

T = TypeVar("T")

# Where the simulated carrier collects every parcel.
DEPOT = ("São Paulo", "SP")


class CarrierRefused(WarehouseError):
    """The carrier does not deliver to the order's postal code: no label can be bought."""


@dataclass(frozen=True)
class Refusals:
    """What the simulated warehouse refuses for good, so that a seller's cancellation (a step
    that fails, the order compensated and the marketplace told) can be tried by hand and tested.
    """

    # SKUs found damaged at pick.
    damaged_skus: frozenset[str] = frozenset()
    # Postal codes (digits, by prefix) the carrier refuses when the label is bought.
    refused_postal_codes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, damaged_skus: str, refused_postal_codes: str) -> Refusals:
        """From the comma-separated settings."""
        return cls(
            damaged_skus=frozenset(s.strip() for s in damaged_skus.split(",") if s.strip()),
            refused_postal_codes=tuple(
                _digits(code) for code in refused_postal_codes.split(",") if _digits(code)
            ),
        )

    def carrier_refuses(self, postal_code: object) -> bool:
        """Whether the carrier refuses that postal code."""
        digits = _digits(postal_code) if isinstance(postal_code, str) else ""
        return bool(digits) and any(digits.startswith(p) for p in self.refused_postal_codes)


def _digits(text: str) -> str:
    return "".join(character for character in text if character.isdigit())


class SimulatedWarehouse:
    """A warehouse in a SQLite file or a PostgreSQL database shared by every worker."""

    def __init__(
        self,
        store_location: str | Path,
        default_stock: int | None = None,
        step_seconds: float = 2.0,
        refusals: Refusals | None = None,
        delivery_seconds: float = 86400.0,
    ) -> None:
        """Use (and create on first call) the warehouse's tables.

        Args:
            store_location: A SQLAlchemy URL (`sqlite:///...`, `postgresql+psycopg://...`) or a
                SQLite file's path; a SQLite file's directory is created if missing.
            default_stock: Stock a SKU the catalog does not list starts with, the first time it
                is reserved or restocked; None (the default): such a SKU has no stock, so it
                cannot be reserved (activities/catalog.py).
            step_seconds: How long pick, pack, create_label and issue_invoice take.
            refusals: What pick and create_label refuse for good (none by default).
            delivery_seconds: How long the simulated carrier takes from the label to the
                customer's door (collected at once, in transit half way, delivered at the end).
        """
        self.url = store.store_url(store_location)
        self.default_stock = default_stock
        self.step_seconds = step_seconds
        self.refusals = refusals or Refusals()
        self.delivery_seconds = delivery_seconds
        if self.db_path is not None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._books = WarehouseBooks(self.url, default_stock, self.refusals.damaged_skus)

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedWarehouse:
        """The factory named by the default `WAREHOUSE` setting."""
        return cls(
            settings.warehouse_store,
            default_stock=settings.default_stock,
            step_seconds=settings.fulfillment_step_seconds,
            refusals=Refusals.parse(
                settings.warehouse_damaged_skus, settings.carrier_refused_postal_codes
            ),
            delivery_seconds=settings.carrier_delivery_seconds,
        )

    @property
    def db_path(self) -> Path | None:
        """The SQLite file, when the store is one."""
        if self.url.get_backend_name() != "sqlite" or not self.url.database:
            return None
        return Path(self.url.database)

    # The Warehouse protocol

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        """Hold stock for every line, all or nothing; a repeat returns the first reservation.

        Raises:
            OutOfStock: A SKU has less available than the order's lines of it add up to.
        """
        if any(line.quantity < 1 for line in order.lines):
            raise ValueError(f"order {order.order_id}: every line needs a quantity of at least 1")
        return await self._call(self._books.reserve, order)

    async def pick(self, order_id: str) -> None:
        """Pick the order's items.

        Raises:
            UnknownOrder: The order was never reserved.
            DamagedItem: One of its SKUs is among the refusals' damaged ones.
        """
        await asyncio.sleep(self.step_seconds)
        await self._call(self._books.record_step, order_id, "picked_at")

    async def pack(self, order_id: str) -> None:
        """Pack the order's items. Raises `UnknownOrder` if it was never reserved."""
        await asyncio.sleep(self.step_seconds)
        await self._call(self._books.record_step, order_id, "packed_at")

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        """Buy the order's label, or return the one bought already (even if voided since).

        Raises:
            UnknownOrder: The order was never reserved.
            CarrierRefused: The carrier refuses the order's postal code (the refusals).
        """
        await asyncio.sleep(self.step_seconds)
        address = order.shipping_address or {}
        if self.refusals.carrier_refuses(address.get("postalCode")):
            raise CarrierRefused(
                f"order {order.order_id}: the carrier does not deliver to postal code "
                f"{address.get('postalCode')}"
            )
        return await self._call(self._books.create_label, order.order_id)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """Issue the invoice and ship the reserved stock; a repeat returns the same invoice.

        Raises:
            OrderReleased: The order's stock was released first.
            UnknownOrder: The order was never reserved.
        """
        await asyncio.sleep(self.step_seconds)
        return await self._call(self._books.issue_invoice, order)

    async def release(self, order_id: str) -> bool:
        """Return the reserved stock; False if the order is unknown or released already.

        Raises:
            AlreadyInvoiced: The invoice was issued first.
        """
        return await self._call(self._books.release, order_id)

    async def void_label(self, order_id: str) -> bool:
        """Void the order's label; False if it has none or it was voided already."""
        return await self._call(self._books.void_label, order_id)

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """The simulated carrier's events for the order's parcel, from its label's time: collected
        at once, in transit half way through `delivery_seconds`, delivered at the end.

        Raises:
            UnknownOrder: The order has no label (never shipped).
        """
        record = await self._call(self._books.order_record, order.order_id)
        label = record and record["label"]
        if not label:
            raise UnknownOrder(f"order {order.order_id} has no shipping label to track")
        collected: datetime = label["created_at"]
        elapsed = (datetime.now(UTC) - collected).total_seconds()
        address = order.shipping_address or {}
        city, state = (
            value if isinstance(value, str) else None
            for value in (address.get("city"), address.get("state"))
        )
        journey: list[tuple[float, str, str | None, str | None]] = [
            (0.0, f"Collected by {COURIER}", *DEPOT),
            (0.5, f"In transit to {city or 'the destination'}", city, state),
            (1.0, "Delivered", city, state),
        ]
        events = [
            ParcelEvent(
                description=description,
                date=(collected + timedelta(seconds=share * self.delivery_seconds)).strftime(
                    "%Y-%m-%d"
                ),
                city=at_city,
                state=at_state,
            )
            for share, description, at_city, at_state in journey
            if elapsed >= share * self.delivery_seconds
        ]
        return ParcelStatus(events=events, delivered=len(events) == len(journey))

    async def close(self) -> None:
        """Nothing to free: the process's connection pool serves every instance on this URL."""

    # Helpers for tests and people

    async def restock(self, sku: str, quantity: int) -> StockLevel:
        """Add `quantity` available units of `sku` (after its `default_stock`, if it is new and
        there is one)."""
        if quantity < 0:
            raise ValueError("restock adds stock: quantity must not be negative")
        return await self._call(self._books.restock, sku, quantity)

    async def stock_level(self, sku: str) -> StockLevel:
        """The SKU's stock as stored."""
        return await self._call(self._books.stock_level, sku)

    async def ledger(self, order_id: str | None = None) -> list[LedgerEntry]:
        """Every stock movement in order, or only those of `order_id`."""
        return await self._call(self._books.ledger, order_id)

    async def order_record(self, order_id: str) -> dict[str, Any] | None:
        """The order as stored (state, lines, steps, label, invoice), or None if unknown."""
        return await self._call(self._books.order_record, order_id)

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of `stock`, `ledger` and `orders`, read at one instant (the invariant checker
        compares them with each other while orders may still be moving)."""
        return await self._call(self._books.snapshot)

    # Plumbing

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        work = asyncio.to_thread(self._transient_as_unavailable, function, *args)
        future = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # A thread cannot be stopped mid-transaction. Wait for it to end, so that whatever
            # the canceller runs next (release, void_label) sees what this call committed.
            while not future.done():
                with suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            raise

    def _transient_as_unavailable(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return function(*args)
        except (OperationalError, InterfaceError, InternalError, PoolTimeout) as err:
            # A lock held past the timeout, a deadlock, a connection lost or refused, a full
            # pool, a server that is a read-only standby for a moment of failover: a later try
            # may well succeed. (A constraint or a value the column cannot hold is not
            # transient: it ends the step.) The message reaches Temporal and GET: never the
            # database's password, which a driver may echo (e.g. from a URL it misparsed).
            message = str(err).splitlines()[0]
            if self.url.password:
                message = message.replace(str(self.url.password), "***")
            raise WarehouseUnavailable(f"warehouse database: {message}") from None
