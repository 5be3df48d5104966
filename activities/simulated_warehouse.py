"""The default warehouse: stock, orders, labels and invoices in one SQLite file, no setup needed.

Every worker process on the machine opens the same file, so SQLite is the only arbiter between
them: WAL lets readers run beside the one writer, every read-modify-write runs in a
`BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two workers cannot both read
the same stock and then both write), and the busy timeout makes the losers wait instead of fail.
Connections are short-lived and every SQLite call runs in a thread, off the worker's event loop.

Stock is conserved: per SKU `available + reserved + shipped` only changes through `restock`, and
every movement is written to the `ledger` table.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter

from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseOrder,
    WarehouseUnavailable,
)
from workflows.messages import OrderLine

if TYPE_CHECKING:
    from config import Settings

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30.0
COURIER = "Simulated Carrier"
TRACKING_URL = "https://tracking.example.com/{tracking_number}"

_LINES = TypeAdapter(list[OrderLine])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL CHECK (reserved >= 0),
    shipped INTEGER NOT NULL CHECK (shipped >= 0)
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    order_id TEXT,
    sku TEXT NOT NULL,
    movement TEXT NOT NULL CHECK (movement IN ('restock', 'reserve', 'release', 'ship')),
    quantity INTEGER NOT NULL CHECK (quantity >= 0)
);
CREATE INDEX IF NOT EXISTS ledger_order ON ledger (order_id);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'released', 'invoiced')),
    lines TEXT NOT NULL,
    reserved_at TEXT NOT NULL,
    released_at TEXT,
    picked_at TEXT,
    packed_at TEXT,
    label_id TEXT,
    courier TEXT,
    tracking_number TEXT,
    tracking_url TEXT,
    label_created_at TEXT,
    label_voided_at TEXT,
    invoice_number TEXT UNIQUE,
    issuance_date TEXT,
    invoice_value INTEGER,
    invoice_lines TEXT
);
CREATE TABLE IF NOT EXISTS sequences (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


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
    """Quantity per SKU: an order may list the same SKU twice."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return totals


class SimulatedWarehouse:
    """A warehouse in a SQLite file shared by every worker process on the machine."""

    def __init__(self, db_path: Path, default_stock: int = 1000, step_seconds: float = 2.0) -> None:
        """Use (and create on first call) the database at `db_path`.

        Args:
            db_path: The SQLite file; its directory is created if missing.
            default_stock: Stock a SKU starts with the first time it is reserved or restocked.
            step_seconds: How long pick, pack, create_label and issue_invoice take.
        """
        self.db_path = Path(db_path)
        self.default_stock = default_stock
        self.step_seconds = step_seconds
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedWarehouse:
        """The factory named by the default `WAREHOUSE` setting."""
        return cls(
            settings.warehouse_db_path,
            default_stock=settings.default_stock,
            step_seconds=settings.fulfillment_step_seconds,
        )

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
        """Pick the order's items. Raises `UnknownOrder` if it was never reserved."""
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
        """
        await asyncio.sleep(self.step_seconds)
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

    async def close(self) -> None:
        """Nothing to free: every call opens and closes its own connection."""

    # Helpers for tests and people

    async def restock(self, sku: str, quantity: int) -> StockLevel:
        """Add `quantity` available units of `sku` (after its `default_stock`, if it is new)."""
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

    @staticmethod
    def _transient_as_unavailable(function: Callable[..., T], *args: Any) -> T:
        try:
            return function(*args)
        except sqlite3.OperationalError as err:
            # Locked or busy past the timeout, disk I/O: a later try may well succeed.
            raise WarehouseUnavailable(f"SQLite: {err}") from err

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module must not open transactions behind our BEGIN IMMEDIATE.
        connection = sqlite3.connect(
            self.db_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
        )
        connection.row_factory = sqlite3.Row
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self._create_schema(connection)
                    self._schema_ready = True
        return connection

    @staticmethod
    def _create_schema(connection: sqlite3.Connection) -> None:
        # WAL is a property of the file: once set by any process it stays set. Switching needs the
        # file to itself, and SQLite's busy timeout does not cover this pragma: when another
        # process or thread is creating the file too, wait for it here.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL journal mode (got {mode!r})")
        # Inside one IMMEDIATE transaction so that processes starting at once take turns.
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO sequences (name, value) VALUES ('invoice', 0)"
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _read(self, sql: str, *params: object) -> list[sqlite3.Row]:
        with closing(self._connect()) as connection:
            return connection.execute(sql, params).fetchall()

    @staticmethod
    def _order(connection: sqlite3.Connection, order_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = connection.execute(
            "SELECT * FROM orders WHERE order_id = ?", (order_id,)
        ).fetchone()
        if row is None:
            raise UnknownOrder(f"no reservation for order {order_id}")
        return row

    def _stock_row(self, connection: sqlite3.Connection, sku: str, at: str) -> sqlite3.Row:
        """The SKU's stock, created with `default_stock` if it is new."""
        created = connection.execute(
            "INSERT INTO stock (sku, available, reserved, shipped) VALUES (?, ?, 0, 0)"
            " ON CONFLICT (sku) DO NOTHING",
            (sku, self.default_stock),
        ).rowcount
        if created:
            self._log(connection, at, None, sku, "restock", self.default_stock)
        row: sqlite3.Row = connection.execute(
            "SELECT * FROM stock WHERE sku = ?", (sku,)
        ).fetchone()
        return row

    @staticmethod
    def _log(
        connection: sqlite3.Connection,
        at: str,
        order_id: str | None,
        sku: str,
        movement: str,
        quantity: int,
    ) -> None:
        connection.execute(
            "INSERT INTO ledger (at, order_id, sku, movement, quantity) VALUES (?, ?, ?, ?, ?)",
            (at, order_id, sku, movement, quantity),
        )

    def _move(
        self,
        connection: sqlite3.Connection,
        at: str,
        order_id: str,
        lines: list[OrderLine],
        movement: str,
    ) -> None:
        """Move the lines' quantities between stock columns, one ledger row per SKU."""
        source, target = {
            "reserve": ("available", "reserved"),
            "release": ("reserved", "available"),
            "ship": ("reserved", "shipped"),
        }[movement]
        for sku, quantity in _quantities(lines).items():
            connection.execute(
                f"UPDATE stock SET {source} = {source} - ?, {target} = {target} + ? WHERE sku = ?",
                (quantity, quantity, sku),
            )
            self._log(connection, at, order_id, sku, movement, quantity)

    # The work, each in one transaction, run in a thread

    def _reserve(self, order: WarehouseOrder) -> Reservation:
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT lines, reserved_at FROM orders WHERE order_id = ?", (order.order_id,)
            ).fetchone()
            if row is not None:
                # Even a released order keeps its first answer: a late retry must not re-reserve.
                return Reservation(
                    order_id=order.order_id,
                    lines=_LINES.validate_json(row["lines"]),
                    reserved_at=datetime.fromisoformat(row["reserved_at"]),
                )
            at = _now()
            for sku, requested in _quantities(order.lines).items():
                available = self._stock_row(connection, sku, at)["available"]
                if available < requested:
                    raise OutOfStock(sku, requested, available)
            self._move(connection, at, order.order_id, order.lines, "reserve")
            connection.execute(
                "INSERT INTO orders (order_id, state, lines, reserved_at)"
                " VALUES (?, 'reserved', ?, ?)",
                (order.order_id, _LINES.dump_json(order.lines).decode(), at),
            )
            return Reservation(
                order_id=order.order_id, lines=order.lines, reserved_at=datetime.fromisoformat(at)
            )

    @classmethod
    def _order_to_fulfill(cls, connection: sqlite3.Connection, order_id: str) -> sqlite3.Row:
        """The order, unless its stock was released: a step that outlived its cancellation (a
        worker cut off from Temporal) must not pick, pack or label it afterwards."""
        row = cls._order(connection, order_id)
        if row["state"] == "released":
            raise OrderReleased(f"order {order_id} was released: it is not fulfilled any more")
        return row

    def _record_step(self, order_id: str, column: str) -> None:
        with self._transaction() as connection:
            self._order_to_fulfill(connection, order_id)
            connection.execute(
                f"UPDATE orders SET {column} = COALESCE({column}, ?) WHERE order_id = ?",
                (_now(), order_id),
            )

    def _create_label(self, order_id: str) -> ShippingLabel:
        with self._transaction() as connection:
            row = self._order(connection, order_id)
            if row["label_id"] is None:
                self._order_to_fulfill(connection, order_id)
                tracking_number = f"SIM{secrets.randbelow(10**10):010d}"
                connection.execute(
                    "UPDATE orders SET label_id = ?, courier = ?, tracking_number = ?,"
                    " tracking_url = ?, label_created_at = ? WHERE order_id = ?",
                    (
                        f"LBL-{secrets.token_hex(4).upper()}",
                        COURIER,
                        tracking_number,
                        TRACKING_URL.format(tracking_number=tracking_number),
                        _now(),
                        order_id,
                    ),
                )
                row = self._order(connection, order_id)
            return ShippingLabel(
                label_id=row["label_id"],
                courier=row["courier"],
                tracking_number=row["tracking_number"],
                tracking_url=row["tracking_url"],
                created_at=datetime.fromisoformat(row["label_created_at"]),
            )

    def _issue_invoice(self, order: WarehouseOrder) -> Invoice:
        with self._transaction() as connection:
            row = self._order(connection, order.order_id)
            if row["state"] == "invoiced":
                return self._stored_invoice(row)
            if row["state"] == "released":
                raise OrderReleased(f"order {order.order_id} was released: it cannot be invoiced")
            number = connection.execute(
                "UPDATE sequences SET value = value + 1 WHERE name = 'invoice' RETURNING value"
            ).fetchone()[0]
            at = _now()
            # Ship what was reserved, so stock stays conserved whatever lines this call carries.
            self._move(connection, at, order.order_id, _LINES.validate_json(row["lines"]), "ship")
            invoice = Invoice(
                invoice_number=f"NFe-{number:06d}",
                issuance_date=datetime.fromisoformat(at),
                invoice_value=sum(line.price * line.quantity for line in order.lines)
                + order.freight_value,
                lines=order.lines,
            )
            connection.execute(
                "UPDATE orders SET state = 'invoiced', invoice_number = ?, issuance_date = ?,"
                " invoice_value = ?, invoice_lines = ? WHERE order_id = ?",
                (
                    invoice.invoice_number,
                    at,
                    invoice.invoice_value,
                    _LINES.dump_json(invoice.lines).decode(),
                    order.order_id,
                ),
            )
            return invoice

    @staticmethod
    def _stored_invoice(row: sqlite3.Row) -> Invoice:
        return Invoice(
            invoice_number=row["invoice_number"],
            issuance_date=datetime.fromisoformat(row["issuance_date"]),
            invoice_value=row["invoice_value"],
            lines=_LINES.validate_json(row["invoice_lines"]),
        )

    def _release(self, order_id: str) -> bool:
        with self._transaction() as connection:
            try:
                row = self._order(connection, order_id)
            except UnknownOrder:
                return False
            if row["state"] == "invoiced":
                raise AlreadyInvoiced(f"order {order_id} is invoiced: its stock is shipped")
            if row["state"] == "released":
                return False
            at = _now()
            self._move(connection, at, order_id, _LINES.validate_json(row["lines"]), "release")
            connection.execute(
                "UPDATE orders SET state = 'released', released_at = ? WHERE order_id = ?",
                (at, order_id),
            )
            return True

    def _void_label(self, order_id: str) -> bool:
        with self._transaction() as connection:
            voided = connection.execute(
                "UPDATE orders SET label_voided_at = ?"
                " WHERE order_id = ? AND label_id IS NOT NULL AND label_voided_at IS NULL",
                (_now(), order_id),
            ).rowcount
            return voided == 1

    def _restock(self, sku: str, quantity: int) -> StockLevel:
        with self._transaction() as connection:
            at = _now()
            self._stock_row(connection, sku, at)
            connection.execute(
                "UPDATE stock SET available = available + ? WHERE sku = ?", (quantity, sku)
            )
            self._log(connection, at, None, sku, "restock", quantity)
            row = connection.execute("SELECT * FROM stock WHERE sku = ?", (sku,)).fetchone()
            return StockLevel(row["sku"], row["available"], row["reserved"], row["shipped"])

    def _stock_level(self, sku: str) -> StockLevel:
        rows = self._read("SELECT * FROM stock WHERE sku = ?", sku)
        if not rows:
            return StockLevel(sku, 0, 0, 0)
        return StockLevel(sku, rows[0]["available"], rows[0]["reserved"], rows[0]["shipped"])

    def _ledger(self, order_id: str | None) -> list[LedgerEntry]:
        if order_id is None:
            rows = self._read("SELECT * FROM ledger ORDER BY id")
        else:
            rows = self._read("SELECT * FROM ledger WHERE order_id = ? ORDER BY id", order_id)
        return [
            LedgerEntry(
                id=row["id"],
                at=datetime.fromisoformat(row["at"]),
                order_id=row["order_id"],
                sku=row["sku"],
                movement=row["movement"],
                quantity=row["quantity"],
            )
            for row in rows
        ]

    def _order_record(self, order_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM orders WHERE order_id = ?", order_id)
        if not rows:
            return None
        row = rows[0]
        steps = {
            step: _when(row[f"{step}_at"])
            for step in ("picked", "packed")
            if row[f"{step}_at"] is not None
        }
        label = None
        if row["label_id"] is not None:
            label = {
                "label_id": row["label_id"],
                "courier": row["courier"],
                "tracking_number": row["tracking_number"],
                "tracking_url": row["tracking_url"],
                "created_at": _when(row["label_created_at"]),
                "voided": row["label_voided_at"] is not None,
                "voided_at": _when(row["label_voided_at"]),
            }
        invoice = None
        if row["invoice_number"] is not None:
            invoice = self._stored_invoice(row).model_dump(by_alias=False)
        return {
            "order_id": row["order_id"],
            "state": row["state"],
            "lines": [
                line.model_dump(by_alias=False) for line in _LINES.validate_json(row["lines"])
            ],
            "reserved_at": _when(row["reserved_at"]),
            "released_at": _when(row["released_at"]),
            "steps": steps,
            "label": label,
            "invoice": invoice,
        }
