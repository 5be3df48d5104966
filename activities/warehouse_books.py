"""The simulated warehouse's books: stock, orders, labels, invoices and the ledger in one database.

The database is the only arbiter between the workers: every read-modify-write runs in one
transaction that holds what it reads (activities/warehouse_store.py says how, per database), so
two workers cannot both take the last unit, nor both invoice and release one order.

Stock is conserved: per SKU `available + reserved + shipped` only changes through `restock`, and
every movement is written to the `ledger` table. Each method is one blocking transaction:
activities/simulated_warehouse.py runs them in a thread, off the worker's event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Connection, Row, func, select, update
from sqlalchemy.engine import URL

from activities import warehouse_store as store
from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseError,
    WarehouseOrder,
)
from activities.warehouse_store import ledger, orders, sequences, stock
from workflows.messages import OrderLine

COURIER = "Simulated Carrier"
TRACKING_URL = "https://tracking.example.com/{tracking_number}"

_LINES = TypeAdapter(list[OrderLine])

# Which stock column a movement takes from and which it adds to.
_MOVES = {
    "reserve": ("available", "reserved"),
    "release": ("reserved", "available"),
    "ship": ("reserved", "shipped"),
}


class DamagedItem(WarehouseError):
    """A SKU was found damaged on the shelf at pick: the order cannot be fulfilled."""


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


class WarehouseBooks:
    """The books of one store (a SQLite file or a PostgreSQL database shared by every worker)."""

    def __init__(
        self, url: URL, default_stock: int | None, damaged_skus: frozenset[str] = frozenset()
    ) -> None:
        self.url = url
        # Stock a SKU the catalog does not list starts with (None: it has none).
        self.default_stock = default_stock
        # SKUs found damaged at pick (the simulated warehouse's refusals).
        self.damaged_skus = damaged_skus

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

    # The work, each in one transaction (run in a thread by SimulatedWarehouse)

    def reserve(self, order: WarehouseOrder) -> Reservation:
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

    def record_step(self, order_id: str, column: str) -> None:
        with self._transaction() as connection:
            row = self._order_to_fulfill(connection, order_id)
            if column == "picked_at":
                damaged = sorted(
                    {line.sku for line in _LINES.validate_json(row.lines)} & self.damaged_skus
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

    def create_label(self, order_id: str) -> ShippingLabel:
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

    def issue_invoice(self, order: WarehouseOrder) -> Invoice:
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

    def release(self, order_id: str) -> bool:
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

    def void_label(self, order_id: str) -> bool:
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

    def restock(self, sku: str, quantity: int) -> StockLevel:
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

    def stock_level(self, sku: str) -> StockLevel:
        with self._reading() as connection:
            return self._level(connection, sku)

    def ledger(self, order_id: str | None) -> list[LedgerEntry]:
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

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._reading() as connection:
            return {
                table.name: [dict(row._mapping) for row in connection.execute(select(table)).all()]
                for table in (stock, ledger, orders)
            }

    def order_record(self, order_id: str) -> dict[str, Any] | None:
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
