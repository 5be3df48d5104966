"""Where the simulated warehouse keeps its tables: one SQLAlchemy engine per database URL.

A SQLite file (the default, no setup) is shared by the worker processes of one host; PostgreSQL
(`WAREHOUSE_URL=postgresql+psycopg://...`) by workers on many hosts. The warehouse's rules are the
same on both; what differs is how a transaction gets exclusive access to what it reads:

- SQLite: every transaction is `BEGIN IMMEDIATE` (the file's one write lock, taken up front, so two
  processes cannot both read the same stock and then both write), in WAL mode so readers run beside
  the writer, with a busy timeout so that the losers wait instead of fail.
- PostgreSQL: `READ COMMITTED` with row locks (`SELECT ... FOR UPDATE` on the order, conditional
  `UPDATE`s on stock), always taken in the same order (order, invoice sequence, stock rows by SKU;
  the whole order in `record_change`'s docstring) so that two transactions cannot deadlock each
  other.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, make_url

BUSY_TIMEOUT_SECONDS = 30.0
# The execution option that marks a connection as only reading (no write lock on SQLite).
READ_ONLY = "warehouse_reads_only"
# Serializes schema creation among processes that start on an empty PostgreSQL database at once.
_SCHEMA_LOCK_KEY = 0x5E11E4

# Quantities and cents as 64-bit integers; SQLite's INTEGER is 64-bit already, and only a column
# declared exactly INTEGER becomes its rowid alias.
Quantity = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# What moves stock: `restock` adds available units and `writeoff` takes them away (both from a
# catalog load or by hand); reserve, release and ship move units between the columns.
MOVEMENTS = ("restock", "writeoff", "reserve", "release", "ship")
_MOVEMENT_LIST = ", ".join(f"'{movement}'" for movement in MOVEMENTS)

stock = Table(
    "stock",
    metadata,
    Column("sku", Text, primary_key=True),
    Column("available", Quantity, nullable=False),
    Column("reserved", Quantity, nullable=False),
    Column("shipped", Quantity, nullable=False),
    CheckConstraint("available >= 0", name="stock_available"),
    CheckConstraint("reserved >= 0", name="stock_reserved"),
    CheckConstraint("shipped >= 0", name="stock_shipped"),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", Quantity, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("order_id", Text),
    Column("sku", Text, nullable=False),
    Column("movement", Text, nullable=False),
    Column("quantity", Quantity, nullable=False),
    CheckConstraint(f"movement IN ({_MOVEMENT_LIST})", name="ledger_movement"),
    CheckConstraint("quantity >= 0", name="ledger_quantity"),
    Index("ledger_order", "order_id"),
    sqlite_autoincrement=True,
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("lines", Text, nullable=False),
    Column("reserved_at", Text, nullable=False),
    Column("released_at", Text),
    Column("picked_at", Text),
    Column("packed_at", Text),
    Column("label_id", Text),
    Column("courier", Text),
    Column("tracking_number", Text),
    Column("tracking_url", Text),
    Column("label_created_at", Text),
    Column("label_voided_at", Text),
    Column("invoice_number", Text, unique=True),
    Column("issuance_date", Text),
    Column("invoice_value", Quantity),
    Column("invoice_lines", Text),
    CheckConstraint("state IN ('reserved', 'released', 'invoiced')", name="orders_state"),
)

# What the seller sells: a SKU is known when it is here (see activities/catalog.py). Its stock is
# in `stock`, moved only through the ledger.
catalog = Table(
    "catalog",
    metadata,
    Column("sku", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("price", Quantity, nullable=False),
    Column("list_price", Quantity, nullable=False),
    Column("weight_grams", Quantity),
    Column("updated_at", Text, nullable=False),
    CheckConstraint("price >= 0", name="catalog_price"),
    CheckConstraint("list_price >= 0", name="catalog_list_price"),
)

# The outbox of change notifications: a SKU whose price or stock changed, written in the same
# transaction as the change, so that no change is lost between the commit and the notification.
# One row per SKU and kind (`price`, `inventory`), never deleted: each change bumps `version`, and
# the relay (change_relay.py) raises `relayed_version` to the version it passed
# on. A row is pending while `version > relayed_version`; since a version never repeats, a relay
# that passed on an old version can never mark a newer change as passed on.
CHANGE_KINDS = ("price", "inventory")
_CHANGE_KIND_LIST = ", ".join(f"'{kind}'" for kind in CHANGE_KINDS)

sku_changes = Table(
    "sku_changes",
    metadata,
    Column("sku", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("version", Quantity, nullable=False),
    Column("relayed_version", Quantity, nullable=False, server_default="0"),
    Column("changed_at", Text, nullable=False),
    CheckConstraint(f"kind IN ({_CHANGE_KIND_LIST})", name="sku_changes_kind"),
)

# The price and stock changes the seller's own system reported (POST /catalog/changes on the ops
# listener, `change` of activities/catalog.py), one row per change id, written in the transaction
# that applies the change and kept: a report sent again (a retry, a replayed queue) is answered
# "applied before" and changes nothing, however late it comes (a change applied again later could
# undo a newer one), and the same id with another body is refused. What was asked is kept, not a
# digest of it, so that the table also says which change set a price or a stock level.
applied_changes = Table(
    "applied_changes",
    metadata,
    Column("change_id", Text, primary_key=True),
    Column("sku", Text, nullable=False),
    Column("price", Quantity),
    Column("list_price", Quantity),
    Column("stock", Quantity),
    Column("applied_at", Text, nullable=False),
)

sequences = Table(
    "sequences",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Quantity, nullable=False),
)


def store_url(store: str | Path) -> URL:
    """A SQLAlchemy URL from a URL string or from a SQLite file's path."""
    if isinstance(store, Path) or "://" not in store:
        return URL.create("sqlite", database=str(Path(store)))
    url = make_url(store)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"WAREHOUSE_URL: {url.get_backend_name()!r} is not supported (sqlite or postgresql)"
        )
    if url.get_backend_name() == "postgresql" and url.drivername != "postgresql+psycopg":
        # psycopg 3 is the driver the project installs; `postgresql://` means it too.
        url = url.set(drivername="postgresql+psycopg")
    return url


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: URL) -> Engine:
    """The process's one engine (and connection pool) for `url`, its schema created."""
    key = url.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else _pg_engine(url)
            create_schema(engine)
            _engines[key] = engine
        return engine


def _sqlite_engine(url: URL) -> Engine:
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
    )

    # SQLAlchemy's documented recipe: let the driver open no transaction of its own, and begin
    # every one as IMMEDIATE (the write lock up front).
    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # A read (see `reading`) needs no lock: WAL gives it a snapshot beside the writer.
        reads_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reads_only else "BEGIN IMMEDIATE")

    return engine


# Bounds on what one warehouse call may wait for in PostgreSQL, which (unlike SQLite's busy
# timeout) waits for a lock forever by default: a worker whose host dropped off the network while
# it held the invoice sequence's row would stall every other worker's invoices until TCP gave up
# (hours). Past a bound, the call fails with an OperationalError, which is transient: the activity
# retries it, visibly. Keepalives let the server notice a vanished client within a minute or so.
PG_SESSION_OPTIONS = (
    "-c lock_timeout=15000 -c statement_timeout=60000 -c idle_in_transaction_session_timeout=60000"
)
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "connect_timeout": 10,
}


def _pg_engine(url: URL) -> Engine:
    # pool_pre_ping: a connection that died with a PostgreSQL restart is replaced, not used.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"options": PG_SESSION_OPTIONS, **PG_KEEPALIVES},
    )


def create_schema(engine: Engine) -> None:
    """Create the tables if missing; safe when several processes start on one database at once."""
    if engine.dialect.name == "sqlite":
        _wal(engine)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY}
            )
        _allow_every_movement(connection)
        metadata.create_all(connection)
        connection.execute(
            insert_ignore(engine, sequences, ["name"]).values(name="invoice", value=0)
        )


def _allow_every_movement(connection: Connection) -> None:
    """Bring a ledger made by an earlier version (before `writeoff`) to today's check."""
    if connection.dialect.name == "postgresql":
        definition = connection.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'ledger_movement' AND conrelid = to_regclass('ledger')"
            )
        ).scalar()
        if definition is not None and "writeoff" not in definition:
            connection.execute(text("ALTER TABLE ledger DROP CONSTRAINT ledger_movement"))
            connection.execute(
                text(
                    "ALTER TABLE ledger ADD CONSTRAINT ledger_movement"
                    f" CHECK (movement IN ({_MOVEMENT_LIST}))"
                )
            )
        return
    # SQLite cannot change a table's checks: the table is rebuilt, its rows kept.
    definition = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ledger'"
    ).scalar()
    if definition is None or "writeoff" in definition:
        return
    connection.exec_driver_sql("DROP INDEX IF EXISTS ledger_order")
    connection.exec_driver_sql("ALTER TABLE ledger RENAME TO ledger_before_writeoff")
    ledger.create(connection)
    connection.exec_driver_sql(
        "INSERT INTO ledger (id, at, order_id, sku, movement, quantity)"
        " SELECT id, at, order_id, sku, movement, quantity FROM ledger_before_writeoff"
    )
    connection.exec_driver_sql("DROP TABLE ledger_before_writeoff")


def _wal(engine: Engine) -> None:
    # WAL is a property of the file: once set by any process it stays set. Switching needs the
    # file to itself, and SQLite's busy timeout does not cover this pragma: when another process
    # is creating the file too, wait for it here.
    # The pragma cannot run inside a transaction: on the driver's connection, outside SQLAlchemy's.
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    connection = engine.raw_connection()
    try:
        while True:
            try:
                mode = connection.cursor().execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        connection.close()
    if mode != "wal":
        raise RuntimeError(f"SQLite refused WAL journal mode (got {mode!r})")


def insert_ignore(engine: Engine, table: Table, keys: list[str]) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO NOTHING` in the engine's dialect."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)


def record_change(connection: Connection, sku: str, kind: str, at: str) -> None:
    """Note in the outbox that `sku`'s `kind` (price or inventory) changed, in the caller's
    transaction. Callers write it after every stock row they lock, by (SKU, kind) ascending: the
    lock order is applied change ids by id, order, invoice sequence, the catalog's and the
    stock's rows by SKU (each SKU's catalog row before its stock row), then changes by (SKU,
    kind)."""
    if kind not in CHANGE_KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    statement = upsert(sku_changes).values(sku=sku, kind=kind, version=1, changed_at=at)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["sku", "kind"],
            set_={
                "version": sku_changes.c.version + 1,
                "changed_at": statement.excluded.changed_at,
            },
        )
    )
