"""The default warehouse: stock, orders, labels and invoices in one database, no setup needed.

By default a SQLite file that every worker process on the host opens; with
`WAREHOUSE_URL=postgresql+psycopg://...`, a PostgreSQL database that workers on many hosts share.
The database is the only arbiter between the workers: every read-modify-write runs in one
transaction that holds what it reads (activities/warehouse_store.py says how, per database), so
two workers cannot both take the last unit, nor both invoice and release one order. Every call runs
in a thread, off the worker's event loop.

Stock is conserved: per SKU `available + reserved + shipped` only changes through `restock`, and
every movement is written to the `ledger` table.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import Connection, Row, func, select, update
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from activities import warehouse_store as store
from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    ParcelEvent,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)
from activities.warehouse_store import ledger, orders, sequences, stock
from workflows.messages import OrderLine

if TYPE_CHECKING:
    from config import Settings

T = TypeVar("T")

COURIER = "Simulated Carrier"
TRACKING_URL = "https://tracking.example.com/{tracking_number}"
# Where the simulated carrier collects every parcel.
DEPOT = ("São Paulo", "SP")

_LINES = TypeAdapter(list[OrderLine])

# Which stock column a movement takes from and which it adds to.
_MOVES = {
    "reserve": ("available", "reserved"),
    "release": ("reserved", "available"),
    "ship": ("reserved", "shipped"),
}


class DamagedItem(WarehouseError):
    """A SKU was found damaged on the shelf at pick: the order cannot be fulfilled."""


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


@dataclass(frozen=True)
class StockLevel:
    """One SKU's stock. A SKU never used reads as all zeros until it gets `default_stock`."""

    sku: str
    available: int
    reserved: int
    shipped: int

    @property
    def total(self) -> int:
        """What `restock` put in: constant under reserve, release and ship."""
        return self.available + self.reserved + self.shipped


@dataclass(frozen=True)
class LedgerEntry:
    """One stock movement."""

    id: int
    at: datetime
    order_id: str | None
    sku: str
    movement: str  # restock, reserve, release, ship
    quantity: int


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _quantities(lines: list[OrderLine]) -> dict[str, int]:
    """Quantity per SKU, in SKU order (the order every transaction locks stock rows in): an order
    may list the same SKU twice."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return dict(sorted(totals.items()))


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
        return await self._call(self._reserve, order)

    async def pick(self, order_id: str) -> None:
        """Pick the order's items.

        Raises:
            UnknownOrder: The order was never reserved.
            DamagedItem: One of its SKUs is among the refusals' damaged ones.
        """
        await asyncio.sleep(self.step_seconds)
        await self._call(self._record_step, order_id, "picked_at")

    async def pack(self, order_id: str) -> None:
        """Pack the order's items. Raises `UnknownOrder` if it was never reserved."""
        await asyncio.sleep(self.step_seconds)
        await self._call(self._record_step, order_id, "packed_at")

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
        return await self._call(self._create_label, order.order_id)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """Issue the invoice and ship the reserved stock; a repeat returns the same invoice.

        Raises:
            OrderReleased: The order's stock was released first.
            UnknownOrder: The order was never reserved.
        """
        await asyncio.sleep(self.step_seconds)
        return await self._call(self._issue_invoice, order)

    async def release(self, order_id: str) -> bool:
        """Return the reserved stock; False if the order is unknown or released already.

        Raises:
            AlreadyInvoiced: The invoice was issued first.
        """
        return await self._call(self._release, order_id)

    async def void_label(self, order_id: str) -> bool:
        """Void the order's label; False if it has none or it was voided already."""
        return await self._call(self._void_label, order_id)

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """The simulated carrier's events for the order's parcel, from its label's time: collected
        at once, in transit half way through `delivery_seconds`, delivered at the end.

        Raises:
            UnknownOrder: The order has no label (never shipped).
        """
        record = await self._call(self._order_record, order.order_id)
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
        return await self._call(self._restock, sku, quantity)

    async def stock_level(self, sku: str) -> StockLevel:
        """The SKU's stock as stored."""
        return await self._call(self._stock_level, sku)

    async def ledger(self, order_id: str | None = None) -> list[LedgerEntry]:
        """Every stock movement in order, or only those of `order_id`."""
        return await self._call(self._ledger, order_id)

    async def order_record(self, order_id: str) -> dict[str, Any] | None:
        """The order as stored (state, lines, steps, label, invoice), or None if unknown."""
        return await self._call(self._order_record, order_id)

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of `stock`, `ledger` and `orders`, read at one instant (the invariant checker
        compares them with each other while orders may still be moving)."""
        return await self._call(self._snapshot)

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

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with store.engine_for(self.url).begin() as connection:
            yield connection

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only transaction that sees one snapshot (SQLite's WAL gives each transaction
        one; PostgreSQL's REPEATABLE READ does)."""
        engine = store.engine_for(self.url)
        options: dict[str, Any] = {store.READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        with engine.connect().execution_options(**options) as connection:
            yield connection

    def _order(self, connection: Connection, order_id: str) -> Row[Any]:
        """The order's row, locked until the transaction ends."""
        row = connection.execute(
            select(orders).where(orders.c.order_id == order_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise UnknownOrder(f"no reservation for order {order_id}")
        return row

    def _ensure_stock_row(self, connection: Connection, sku: str, at: str) -> None:
        """Create the SKU's stock with `default_stock` if it is new (and there is one)."""
        if self.default_stock is None:
            return  # Only a catalog load gives a SKU stock.
        created = connection.execute(
            store.insert_ignore(connection.engine, stock, ["sku"])
            .values(sku=sku, available=self.default_stock, reserved=0, shipped=0)
            .returning(stock.c.sku)
        ).first()
        if created is not None:
            self._log(connection, at, None, sku, "restock", self.default_stock)

    @staticmethod
    def _log(
        connection: Connection,
        at: str,
        order_id: str | None,
        sku: str,
        movement: str,
        quantity: int,
    ) -> None:
        connection.execute(
            ledger.insert().values(
                at=at, order_id=order_id, sku=sku, movement=movement, quantity=quantity
            )
        )

    def _move(
        self,
        connection: Connection,
        at: str,
        order_id: str,
        lines: list[OrderLine],
        movement: str,
    ) -> None:
        """Move the lines' quantities between stock columns, one ledger row per SKU.

        Raises:
            OutOfStock: The source column holds less than a line needs (only a reservation can
                meet this: a release or a shipment moves what its reservation put there).
        """
        source, target = _MOVES[movement]
        sold_out_or_back: list[str] = []
        for sku, quantity in _quantities(lines).items():
            moved = connection.execute(
                update(stock)
                .where(stock.c.sku == sku, stock.c[source] >= quantity)
                .values({source: stock.c[source] - quantity, target: stock.c[target] + quantity})
                .returning(stock.c.available)
            ).first()
            if moved is None:
                available = connection.execute(
                    select(stock.c[source]).where(stock.c.sku == sku)
                ).scalar_one_or_none()
                raise OutOfStock(sku, quantity, available or 0)
            self._log(connection, at, order_id, sku, movement, quantity)
            # The marketplace is told when a SKU sells out or comes back: other moves leave it
            # on sale, and the next simulation has the exact figure.
            if (movement == "reserve" and moved.available == 0) or (
                movement == "release" and moved.available == quantity
            ):
                sold_out_or_back.append(sku)
        for sku in sold_out_or_back:  # after every stock row: the lock order
            store.record_change(connection, sku, "inventory", at)

    # The work, each in one transaction, run in a thread

    def _reserve(self, order: WarehouseOrder) -> Reservation:
        with self._transaction() as connection:
            at = _now()
            # The order's row first: a second reservation of the same order (a retry on another
            # worker) waits here for the first to commit, then finds it.
            # (INSERT's rowcount is not reliable across drivers; what RETURNING returns is.)
            inserted = connection.execute(
                store.insert_ignore(connection.engine, orders, ["order_id"])
                .values(
                    order_id=order.order_id,
                    state="reserved",
                    lines=_LINES.dump_json(order.lines).decode(),
                    reserved_at=at,
                )
                .returning(orders.c.order_id)
            ).first()
            if inserted is None:
                # Even a released order keeps its first answer: a late retry must not re-reserve.
                row = self._order(connection, order.order_id)
                if row.state == "released" and row.lines == "[]":
                    raise OrderReleased(
                        f"order {order.order_id} was released before it was ever reserved"
                    )
                return Reservation(
                    order_id=order.order_id,
                    lines=_LINES.validate_json(row.lines),
                    reserved_at=datetime.fromisoformat(row.reserved_at),
                )
            for sku in _quantities(order.lines):
                self._ensure_stock_row(connection, sku, at)
            # All or nothing: an OutOfStock rolls the whole transaction back, the order's row too.
            self._move(connection, at, order.order_id, order.lines, "reserve")
            return Reservation(
                order_id=order.order_id, lines=order.lines, reserved_at=datetime.fromisoformat(at)
            )

    def _order_to_fulfill(self, connection: Connection, order_id: str) -> Row[Any]:
        """The order, unless its stock was released: a step that outlived its cancellation (a
        worker cut off from Temporal) must not pick, pack or label it afterwards."""
        row = self._order(connection, order_id)
        if row.state == "released":
            raise OrderReleased(f"order {order_id} was released: it is not fulfilled any more")
        return row

    def _record_step(self, order_id: str, column: str) -> None:
        with self._transaction() as connection:
            row = self._order_to_fulfill(connection, order_id)
            if column == "picked_at":
                damaged = sorted(
                    {line.sku for line in _LINES.validate_json(row.lines)}
                    & self.refusals.damaged_skus
                )
                if damaged:
                    raise DamagedItem(
                        f"order {order_id}: SKU {', '.join(damaged)} found damaged at pick"
                    )
            connection.execute(
                update(orders)
                .where(orders.c.order_id == order_id)
                .values({column: func.coalesce(orders.c[column], _now())})
            )

    def _create_label(self, order_id: str) -> ShippingLabel:
        with self._transaction() as connection:
            row = self._order(connection, order_id)
            if row.label_id is None:
                self._order_to_fulfill(connection, order_id)
                tracking_number = f"SIM{secrets.randbelow(10**10):010d}"
                connection.execute(
                    update(orders)
                    .where(orders.c.order_id == order_id)
                    .values(
                        label_id=f"LBL-{secrets.token_hex(4).upper()}",
                        courier=COURIER,
                        tracking_number=tracking_number,
                        tracking_url=TRACKING_URL.format(tracking_number=tracking_number),
                        label_created_at=_now(),
                    )
                )
                row = self._order(connection, order_id)
            return ShippingLabel(
                label_id=row.label_id,
                courier=row.courier,
                tracking_number=row.tracking_number,
                tracking_url=row.tracking_url,
                created_at=datetime.fromisoformat(row.label_created_at),
            )

    def _issue_invoice(self, order: WarehouseOrder) -> Invoice:
        with self._transaction() as connection:
            row = self._order(connection, order.order_id)
            if row.state == "invoiced":
                return self._stored_invoice(row)
            if row.state == "released":
                raise OrderReleased(f"order {order.order_id} was released: it cannot be invoiced")
            number = connection.execute(
                update(sequences)
                .where(sequences.c.name == "invoice")
                .values(value=sequences.c.value + 1)
                .returning(sequences.c.value)
            ).scalar_one()
            at = _now()
            # Ship what was reserved, so stock stays conserved whatever lines this call carries.
            self._move(connection, at, order.order_id, _LINES.validate_json(row.lines), "ship")
            invoice = Invoice(
                invoice_number=f"NFe-{number:06d}",
                issuance_date=datetime.fromisoformat(at),
                invoice_value=sum(line.price * line.quantity for line in order.lines)
                + order.freight_value,
                lines=order.lines,
            )
            connection.execute(
                update(orders)
                .where(orders.c.order_id == order.order_id)
                .values(
                    state="invoiced",
                    invoice_number=invoice.invoice_number,
                    issuance_date=at,
                    invoice_value=invoice.invoice_value,
                    invoice_lines=_LINES.dump_json(invoice.lines).decode(),
                )
            )
            return invoice

    @staticmethod
    def _stored_invoice(row: Row[Any]) -> Invoice:
        return Invoice(
            invoice_number=row.invoice_number,
            issuance_date=datetime.fromisoformat(row.issuance_date),
            invoice_value=row.invoice_value,
            lines=_LINES.validate_json(row.invoice_lines),
        )

    def _release(self, order_id: str) -> bool:
        with self._transaction() as connection:
            at = _now()
            # An order never reserved is recorded as released, holding nothing: a reservation
            # that arrives after it (an attempt that outlived its worker's contact with Temporal)
            # then finds it and reserves nothing.
            tombstone = connection.execute(
                store.insert_ignore(connection.engine, orders, ["order_id"])
                .values(
                    order_id=order_id, state="released", lines="[]", reserved_at=at, released_at=at
                )
                .returning(orders.c.order_id)
            ).first()
            if tombstone is not None:
                return False
            row = self._order(connection, order_id)
            if row.state == "invoiced":
                raise AlreadyInvoiced(f"order {order_id} is invoiced: its stock is shipped")
            if row.state == "released":
                return False
            self._move(connection, at, order_id, _LINES.validate_json(row.lines), "release")
            connection.execute(
                update(orders)
                .where(orders.c.order_id == order_id)
                .values(state="released", released_at=at)
            )
            return True

    def _void_label(self, order_id: str) -> bool:
        with self._transaction() as connection:
            voided = connection.execute(
                update(orders)
                .where(
                    orders.c.order_id == order_id,
                    orders.c.label_id.is_not(None),
                    orders.c.label_voided_at.is_(None),
                )
                .values(label_voided_at=_now())
            ).rowcount
            return voided == 1

    def _restock(self, sku: str, quantity: int) -> StockLevel:
        with self._transaction() as connection:
            at = _now()
            self._ensure_stock_row(connection, sku, at)
            connection.execute(  # a SKU no default stock created starts at zero
                store.insert_ignore(connection.engine, stock, ["sku"]).values(
                    sku=sku, available=0, reserved=0, shipped=0
                )
            )
            connection.execute(
                update(stock)
                .where(stock.c.sku == sku)
                .values(available=stock.c.available + quantity)
            )
            self._log(connection, at, None, sku, "restock", quantity)
            if quantity > 0:
                store.record_change(connection, sku, "inventory", at)
            return self._level(connection, sku)

    @staticmethod
    def _level(connection: Connection, sku: str) -> StockLevel:
        row = connection.execute(select(stock).where(stock.c.sku == sku)).one_or_none()
        if row is None:
            return StockLevel(sku, 0, 0, 0)
        return StockLevel(row.sku, row.available, row.reserved, row.shipped)

    def _stock_level(self, sku: str) -> StockLevel:
        with self._reading() as connection:
            return self._level(connection, sku)

    def _ledger(self, order_id: str | None) -> list[LedgerEntry]:
        query = select(ledger).order_by(ledger.c.id)
        if order_id is not None:
            query = query.where(ledger.c.order_id == order_id)
        with self._reading() as connection:
            rows = connection.execute(query).all()
        return [
            LedgerEntry(
                id=row.id,
                at=datetime.fromisoformat(row.at),
                order_id=row.order_id,
                sku=row.sku,
                movement=row.movement,
                quantity=row.quantity,
            )
            for row in rows
        ]

    def _snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._reading() as connection:
            return {
                table.name: [dict(row._mapping) for row in connection.execute(select(table)).all()]
                for table in (stock, ledger, orders)
            }

    def _order_record(self, order_id: str) -> dict[str, Any] | None:
        with self._reading() as connection:
            row = connection.execute(
                select(orders).where(orders.c.order_id == order_id)
            ).one_or_none()
        if row is None:
            return None
        steps = {
            step: _when(getattr(row, f"{step}_at"))
            for step in ("picked", "packed")
            if getattr(row, f"{step}_at") is not None
        }
        label = None
        if row.label_id is not None:
            label = {
                "label_id": row.label_id,
                "courier": row.courier,
                "tracking_number": row.tracking_number,
                "tracking_url": row.tracking_url,
                "created_at": _when(row.label_created_at),
                "voided": row.label_voided_at is not None,
                "voided_at": _when(row.label_voided_at),
            }
        invoice = None
        if row.invoice_number is not None:
            invoice = self._stored_invoice(row).model_dump(by_alias=False)
        return {
            "order_id": row.order_id,
            "state": row.state,
            "lines": [line.model_dump(by_alias=False) for line in _LINES.validate_json(row.lines)],
            "reserved_at": _when(row.reserved_at),
            "released_at": _when(row.released_at),
            "steps": steps,
            "label": label,
            "invoice": invoice,
        }
