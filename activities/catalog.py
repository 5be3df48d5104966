"""The seller's catalog: what it sells, at what price, and how many it has.

A SKU is known when the catalog lists it (its stock lives beside it, in the warehouse's `stock`
table, moved only through the ledger). A SKU the catalog does not list is unknown: a placement of
it is refused and the fulfillment simulation answers it unavailable. With `DEFAULT_STOCK` set (for
demos and black-box tests), an unseen SKU is sold instead, starting with that stock at
DEFAULT_PRICE_CENTS.

Loaded from a CSV or JSON file, upserted, and what changed reported; SKUs taken off it (e.g. a
sample catalog loaded by mistake into a production warehouse):

    python -m activities.catalog load catalog/sample.csv
    python -m activities.catalog show [SKU ...]
    python -m activities.catalog delist SKU [SKU ...]

Changed by the seller's own system (its ERP), one change or a batch, each change id applied once
(as `POST /catalog/changes` on the ops listener, api/routes/catalog_changes.py):

    python -m activities.catalog change SKU --change-id ID [--price C] [--list-price C] [--stock N]
    python -m activities.catalog change --file batch.json

A file's columns (CSV header) or keys (JSON array of objects): `sku`, `name`, `price` and
`listPrice` in cents (`listPrice` defaults to `price`), `stock` (units available to sell: a load
sets it, restocking or writing off the difference), and optionally `weightGrams`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from activities import warehouse_store as store
from activities.warehouse_store import applied_changes, catalog, ledger, stock
from workflows.messages import CamelModel

if TYPE_CHECKING:
    from config import Settings

# What an unseen SKU costs when DEFAULT_STOCK sells it.
DEFAULT_PRICE_CENTS = 1000
# The most a price or a stock level may be: what a JSON reader holds exactly (2^53 - 1).
MAX_NUMBER = 2**53 - 1

Cents = Annotated[int, Field(ge=0, le=MAX_NUMBER)]
# Printable text: a control character in a SKU or an id is a mistake upstream, and would garble
# every log line and report that names it.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Sku = Annotated[str, Field(min_length=1, max_length=100, pattern=_PRINTABLE)]
# The most changes one report may carry (and so hold in one transaction).
MAX_CHANGES = 1000
# The most SKUs or change ids a refusal names; the rest are counted.
MAX_NAMED = 20


class CatalogEntry(CamelModel):
    """One SKU as a catalog file lists it."""

    sku: Sku
    name: str = Field(min_length=1, max_length=256)
    price: Cents
    list_price: Cents | None = None
    stock: Cents
    weight_grams: Cents | None = None


_ENTRIES = TypeAdapter(list[CatalogEntry])


class CatalogChange(CamelModel):
    """One price or stock change, as the seller's own system (its ERP) reports it."""

    # A field the model does not know is refused: a misspelt `listprice` would otherwise be
    # dropped, and the rest of the change applied without it.
    model_config = ConfigDict(extra="forbid")

    change_id: str = Field(
        min_length=1,
        max_length=200,
        pattern=_PRINTABLE,
        description="The seller system's id of this change: the same id is applied once.",
    )
    sku: Sku
    price: Cents | None = Field(default=None, description="The new price, in cents.")
    list_price: Cents | None = Field(default=None, description="The new list price, in cents.")
    stock: Cents | None = Field(
        default=None,
        description="The units available to sell from now on (a level, not a difference); "
        "units that orders hold stay theirs.",
    )

    @model_validator(mode="after")
    def _changes_something(self) -> CatalogChange:
        if self.price is None and self.list_price is None and self.stock is None:
            raise ValueError("a change carries at least one of price, listPrice and stock")
        return self

    def asked(self) -> dict[str, Any]:
        """What the change asks, as `applied_changes` keeps it (beside its id)."""
        return {
            "sku": self.sku,
            "price": self.price,
            "list_price": self.list_price,
            "stock": self.stock,
        }


class CatalogChanges(CamelModel):
    """A report of changes, applied in their order, all or none (`POST /catalog/changes`)."""

    model_config = ConfigDict(extra="forbid")

    changes: list[CatalogChange] = Field(min_length=1, max_length=MAX_CHANGES)

    @field_validator("changes")
    @classmethod
    def _ids_unique(cls, changes: list[CatalogChange]) -> list[CatalogChange]:
        counts = Counter(change.change_id for change in changes)
        twice = sorted(change_id for change_id, count in counts.items() if count > 1)
        if twice:
            raise ValueError(f"changeIds listed more than once: {_named(twice)}")
        return changes


class AppliedChange(CamelModel):
    """What became of one change: applied now, or skipped as applied before."""

    change_id: str
    sku: str
    applied: bool = Field(description="False: this changeId was applied before; left as it is.")


class CatalogChangesAnswer(CamelModel):
    """The answer to a report: one entry per change, in the report's order."""

    changes: list[AppliedChange]


class ChangeRefused(Exception):
    """A report refused as a whole: nothing of it was applied."""

    code = "ChangeRefused"


class UnknownSku(ChangeRefused):
    """A change names a SKU the catalog does not list."""

    code = "UnknownSku"

    def __init__(self, skus: list[str]) -> None:
        super().__init__(f"SKUs the catalog does not list: {_named(skus)}; nothing applied")
        self.skus = skus


class ChangeIdReused(ChangeRefused):
    """A change id applied before comes with another body."""

    code = "ChangeIdReused"

    def __init__(self, change_ids: list[str]) -> None:
        super().__init__(
            f"changeIds applied before with another body: {_named(change_ids)}; nothing applied "
            "(a new change needs a new changeId)"
        )
        self.change_ids = change_ids


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


@dataclass
class _Listing:
    """One listed SKU's price and stock while a report is applied: as read (locked), and as the
    report's changes leave them."""

    price: int
    list_price: int
    available: int
    price_before: tuple[int, int] = field(init=False)
    available_before: int = field(init=False)
    # (movement, quantity) for the ledger, one per change that moved the stock, in their order.
    movements: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.price_before = (self.price, self.list_price)
        self.available_before = self.available

    def apply(self, change: CatalogChange) -> None:
        if change.price is not None:
            self.price = change.price
        if change.list_price is not None:
            self.list_price = change.list_price
        if change.stock is not None and change.stock != self.available:
            movement = "restock" if change.stock > self.available else "writeoff"
            self.movements.append((movement, abs(change.stock - self.available)))
            self.available = change.stock


@dataclass(frozen=True)
class Offer:
    """What the seller offers of one SKU right now."""

    sku: str
    name: str
    price: int
    list_price: int
    available: int
    weight_grams: int | None = None


@dataclass
class LoadReport:
    """What a load changed."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Changed SKUs whose price or list price changed (the rest changed name or weight only).
    repriced: list[str] = field(default_factory=list)
    # SKU -> (available before, available after), for every SKU whose stock moved.
    stock_moved: dict[str, tuple[int, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as a person reads it."""
        out = [
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.unchanged)} unchanged"
        ]
        out += [f"  added    {sku}" for sku in self.added]
        out += [f"  changed  {sku}" for sku in self.changed]
        out += [
            f"  stock    {sku}: {before} -> {after} available"
            for sku, (before, after) in self.stock_moved.items()
        ]
        return out


@dataclass
class DelistReport:
    """What a delisting changed."""

    delisted: list[str] = field(default_factory=list)
    # Named, but not in the catalog (never listed, or delisted before): nothing to do.
    not_listed: list[str] = field(default_factory=list)
    # SKU -> the available units written off with it.
    written_off: dict[str, int] = field(default_factory=dict)
    # SKU -> the units orders already placed hold, which stay theirs.
    reserved: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as a person reads it."""
        out = [f"{len(self.delisted)} delisted, {len(self.not_listed)} not listed"]
        for sku in self.delisted:
            parts = []
            if sku in self.written_off:
                parts.append(f"{self.written_off[sku]} available written off")
            if sku in self.reserved:
                parts.append(f"{self.reserved[sku]} reserved by orders in flight, left to them")
            out.append(f"  delisted    {sku}" + (f": {', '.join(parts)}" if parts else ""))
        out += [f"  not listed  {sku}" for sku in self.not_listed]
        return out


def read_catalog_file(path: Path) -> list[CatalogEntry]:
    """The entries of a `.csv` (with a header) or `.json` (an array of objects) file.

    Raises:
        ValueError: the file is not a catalog; the message names the entry and the field.
    """
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            rows: Any = json.loads(text)
        except RecursionError:
            raise ValueError(f"{path}: its JSON is nested too deeply to be a catalog") from None
        strict = True  # JSON has types: `"price": true` or `"stock": "5"` is a mistake
    elif path.suffix.lower() == ".csv":
        rows = []
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            if None in row:  # csv puts the fields beyond the header under None
                raise ValueError(f"{path}: line {number} has more fields than the header")
            rows.append({k.strip(): v.strip() for k, v in row.items() if v and v.strip()})
        strict = False  # every CSV value is text: "2499" is read as a number
    else:
        raise ValueError(f"{path}: a catalog is a .csv or a .json file")
    try:
        entries = _ENTRIES.validate_python(rows, strict=strict)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path}: entry {where}: {first['msg']}") from None
    counts = Counter(entry.sku for entry in entries)
    duplicated = sorted(sku for sku, count in counts.items() if count > 1)
    if duplicated:
        raise ValueError(f"{path}: SKUs listed twice: {', '.join(duplicated)}")
    return entries


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Catalog:
    """The catalog in the warehouse's database (the same one the workers reserve stock in)."""

    def __init__(self, store_location: str | Path, default_stock: int | None = None) -> None:
        self.url = store.store_url(store_location)
        self.default_stock = default_stock

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The catalog of the simulated warehouse the settings name."""
        return cls(settings.warehouse_store, settings.default_stock)

    def load(self, entries: list[CatalogEntry]) -> LoadReport:
        """Upsert every entry and set its stock, in one transaction."""
        report = LoadReport()
        with store.engine_for(self.url).begin() as connection:
            at = _now()
            for entry in sorted(entries, key=lambda e: e.sku):  # the order stock rows lock in
                self._upsert(connection, entry, at, report)
            # After every stock row, by (SKU, kind) (the lock order): what the marketplace must
            # read again.
            changes = {(sku, "price") for sku in (*report.added, *report.repriced)}
            changes |= {(sku, "inventory") for sku in (*report.added, *report.stock_moved)}
            for sku, kind in sorted(changes):
                store.record_change(connection, sku, kind, at)
        return report

    def _upsert(
        self, connection: Connection, entry: CatalogEntry, at: str, report: LoadReport
    ) -> None:
        values = {
            "name": entry.name,
            "price": entry.price,
            "list_price": entry.list_price if entry.list_price is not None else entry.price,
            "weight_grams": entry.weight_grams,
        }
        # Insert-or-nothing first: a load running beside this one that adds the same SKU waits
        # here for it, instead of failing on the key. On PostgreSQL the row it met may be one a
        # delisting beside it is deleting: gone by the time it is locked, the insert is tried
        # again (the second finds the key free).
        for _ in range(3):
            added = connection.execute(
                store.insert_ignore(connection.engine, catalog, ["sku"])
                .values(sku=entry.sku, updated_at=at, **values)
                .returning(catalog.c.sku)
            ).first()
            current = connection.execute(
                select(catalog).where(catalog.c.sku == entry.sku).with_for_update()
            ).first()
            if current is not None:
                break
        else:
            raise OperationalError(
                "catalog upsert", {"sku": entry.sku}, RuntimeError("its row kept vanishing")
            )
        if added is not None:
            report.added.append(entry.sku)
        elif any(getattr(current, key) != value for key, value in values.items()):
            connection.execute(
                update(catalog).where(catalog.c.sku == entry.sku).values(updated_at=at, **values)
            )
            report.changed.append(entry.sku)
            if (current.price, current.list_price) != (values["price"], values["list_price"]):
                report.repriced.append(entry.sku)
        else:
            report.unchanged.append(entry.sku)
        connection.execute(
            store.insert_ignore(connection.engine, stock, ["sku"]).values(
                sku=entry.sku, available=0, reserved=0, shipped=0
            )
        )
        before = connection.execute(
            select(stock.c.available).where(stock.c.sku == entry.sku).with_for_update()
        ).scalar_one()
        if before == entry.stock:
            return
        movement = "restock" if entry.stock > before else "writeoff"
        connection.execute(
            update(stock).where(stock.c.sku == entry.sku).values(available=entry.stock)
        )
        connection.execute(
            ledger.insert().values(
                at=at,
                order_id=None,
                sku=entry.sku,
                movement=movement,
                quantity=abs(entry.stock - before),
            )
        )
        report.stock_moved[entry.sku] = (before, entry.stock)

    def delist(self, skus: list[str]) -> DelistReport:
        """Take these SKUs off the catalog and write off their available stock, in one
        transaction.

        A delisted SKU is unknown from then on, as if never loaded: its placement is refused, the
        simulation answers it unavailable, and the marketplace is told to read its price and
        stock again (the outbox, as for a SKU a load adds). Its available units are written off
        through the ledger, so that nothing sells them (with DEFAULT_STOCK, an unlisted SKU that
        has a stock row is sold from it). Units that orders already placed hold stay reserved:
        those orders ship or release them as before (released, they are available again, unsold
        while the SKU is unlisted, and set by the next load that lists it). A SKU the catalog
        does not list is reported and left alone, so the same command can run again.
        """
        report = DelistReport()
        with store.engine_for(self.url).begin() as connection:
            at = _now()
            # By SKU, the catalog row then the stock row, as a load locks them.
            for sku in sorted(set(skus)):
                removed = connection.execute(
                    delete(catalog).where(catalog.c.sku == sku).returning(catalog.c.sku)
                ).first()
                if removed is None:
                    report.not_listed.append(sku)
                    continue
                report.delisted.append(sku)
                level = connection.execute(
                    select(stock.c.available, stock.c.reserved)
                    .where(stock.c.sku == sku)
                    .with_for_update()
                ).first()
                if level is None:
                    continue
                if level.reserved:
                    report.reserved[sku] = level.reserved
                if level.available:
                    connection.execute(update(stock).where(stock.c.sku == sku).values(available=0))
                    connection.execute(
                        ledger.insert().values(
                            at=at,
                            order_id=None,
                            sku=sku,
                            movement="writeoff",
                            quantity=level.available,
                        )
                    )
                    report.written_off[sku] = level.available
            for sku, kind in sorted(
                (sku, kind) for sku in report.delisted for kind in store.CHANGE_KINDS
            ):
                store.record_change(connection, sku, kind, at)
        return report

    def apply_changes(self, changes: list[CatalogChange]) -> list[AppliedChange]:
        """Apply price and stock changes the seller's own system reports, in one transaction.

        A change whose id was applied before is skipped (`applied=False`): a report sent again
        changes nothing, however late. The others are applied in their order: a price or list
        price is set; a stock level sets the SKU's available units (through the ledger, as a
        restock or a write-off of the difference; units that orders hold stay reserved). Then
        the outbox notes, per SKU, a price that changed and stock that moved, so that the
        marketplace is told as after a catalog load.

        Raises:
            ChangeIdReused: a change id applied before comes with another body.
            UnknownSku: a change not applied before names a SKU the catalog does not list (a
                report sent again is still answered after its SKU is delisted).
            In both cases nothing of the report is applied.
        """
        with store.engine_for(self.url).begin() as connection:
            at = _now()
            # Lock order (warehouse_store.record_change): the change ids first, by id...
            fresh = _claim_change_ids(connection, changes, at)
            to_apply = [change for change in changes if change.change_id in fresh]
            # ...then each SKU's catalog and stock rows, by SKU...
            listings = _lock_listings(connection, sorted({change.sku for change in to_apply}))
            unknown = sorted({change.sku for change in to_apply} - listings.keys())
            if unknown:
                raise UnknownSku(unknown)
            for change in to_apply:
                listings[change.sku].apply(change)
            # ...and the outbox last, by (SKU, kind).
            for sku, kind in sorted(_write_listings(connection, listings, at)):
                store.record_change(connection, sku, kind, at)
        return [
            AppliedChange(
                change_id=change.change_id, sku=change.sku, applied=change.change_id in fresh
            )
            for change in changes
        ]

    def count(self) -> int:
        """How many SKUs the catalog lists."""
        with store.engine_for(self.url).connect() as connection:
            return int(connection.execute(select(func.count()).select_from(catalog)).scalar_one())

    def offers(self, skus: list[str]) -> dict[str, Offer]:
        """What the seller offers of each SKU it knows (an unknown one is left out).

        Read on the driver's own connection, from the engine's pool: the fulfillment simulation
        reads on every call, and SQLAlchemy's statement and transaction machinery cost about ten
        times the query (350 us against 30 us on SQLite). A driver error is raised as
        SQLAlchemy's (`DBAPIError`), as from any other read.
        """
        wanted = sorted(set(skus))
        engine = store.engine_for(self.url)
        found = {
            sku: Offer(
                sku=sku,
                name=name,
                price=price,
                list_price=list_price,
                available=available or 0,
                weight_grams=weight_grams,
            )
            for sku, name, price, list_price, weight_grams, available in _read(
                engine, _OFFERS_SQL, wanted
            )
        }
        if self.default_stock is not None:
            unseen = [sku for sku in wanted if sku not in found]
            # An unseen SKU that was already sold has a stock row of its own.
            levels = dict(_read(engine, _STOCK_SQL, unseen))
            for sku in unseen:
                found[sku] = Offer(
                    sku=sku,
                    name=sku,
                    price=DEFAULT_PRICE_CENTS,
                    list_price=DEFAULT_PRICE_CENTS,
                    available=levels.get(sku, self.default_stock),
                )
        return found


def _claim_change_ids(connection: Connection, changes: list[CatalogChange], at: str) -> set[str]:
    """The ids of `changes` never applied before, claimed in the caller's transaction.

    Insert-or-nothing, by id: a report running beside this one with the same ids waits here
    until it commits (and then finds them applied) or rolls back (and then they are this one's).

    Raises:
        ChangeIdReused: an id applied before with another body.
    """
    ordered = sorted(changes, key=lambda change: change.change_id)
    fresh: set[str] = set()
    for chunk in _chunks(ordered):
        fresh.update(
            connection.execute(
                store.insert_ignore(connection.engine, applied_changes, ["change_id"])
                .values(
                    [
                        {"change_id": change.change_id, "applied_at": at, **change.asked()}
                        for change in chunk
                    ]
                )
                .returning(applied_changes.c.change_id)
            ).scalars()
        )
    reused: list[str] = []
    for chunk in _chunks([change for change in ordered if change.change_id not in fresh]):
        rows = connection.execute(
            select(
                applied_changes.c.change_id,
                applied_changes.c.sku,
                applied_changes.c.price,
                applied_changes.c.list_price,
                applied_changes.c.stock,
            ).where(applied_changes.c.change_id.in_([change.change_id for change in chunk]))
        ).all()
        before = {row.change_id: row._asdict() for row in rows}
        for change in chunk:
            if before[change.change_id] != {"change_id": change.change_id, **change.asked()}:
                reused.append(change.change_id)
    if reused:
        raise ChangeIdReused(reused)
    return fresh


# Rows per statement of a report's bulk reads and writes: within every SQLite's limit on a
# statement's parameters (999 before 3.32), at six a row.
_CHUNK = 100


def _chunks(changes: list[CatalogChange]) -> Iterator[list[CatalogChange]]:
    for start in range(0, len(changes), _CHUNK):
        yield changes[start : start + _CHUNK]


def _lock_listings(connection: Connection, skus: list[str]) -> dict[str, _Listing]:
    """The listed SKUs among `skus`, their catalog and stock rows locked until the transaction
    ends; an unlisted SKU is left out.

    One SKU at a time, in the order given (by SKU), each SKU's catalog row before its stock
    row, as a load locks them: a statement locking many rows would lock them in the database's
    collation order, which need not be Python's.
    """
    listings: dict[str, _Listing] = {}
    for sku in skus:
        listed = connection.execute(
            select(catalog.c.price, catalog.c.list_price)
            .where(catalog.c.sku == sku)
            .with_for_update()
        ).first()
        if listed is None:
            continue
        locked_stock = select(stock.c.available).where(stock.c.sku == sku).with_for_update()
        available = connection.execute(locked_stock).scalar()
        if available is None:
            # A listed SKU has its stock row (a load writes both); made if missing, as a load does.
            connection.execute(
                store.insert_ignore(connection.engine, stock, ["sku"]).values(
                    sku=sku, available=0, reserved=0, shipped=0
                )
            )
            available = connection.execute(locked_stock).scalar_one()
        listings[sku] = _Listing(listed.price, listed.list_price, available)
    return listings


def _write_listings(
    connection: Connection, listings: dict[str, _Listing], at: str
) -> list[tuple[str, str]]:
    """Write what a report left of each SKU (its rows locked already: one statement for many);
    the (SKU, kind) the marketplace must read again."""
    repriced = {
        sku: listing
        for sku, listing in listings.items()
        if (listing.price, listing.list_price) != listing.price_before
    }
    # Back where it was after several changes: the ledger has their movements, but the
    # marketplace has nothing new to read.
    restocked = {
        sku: listing
        for sku, listing in listings.items()
        if listing.available != listing.available_before
    }
    if repriced:
        connection.execute(
            update(catalog)
            .where(catalog.c.sku == bindparam("listed_sku"))
            .values(
                price=bindparam("new_price"),
                list_price=bindparam("new_list_price"),
                updated_at=at,
            ),
            [
                {
                    "listed_sku": sku,
                    "new_price": listing.price,
                    "new_list_price": listing.list_price,
                }
                for sku, listing in sorted(repriced.items())
            ],
        )
    movements = [
        {"at": at, "order_id": None, "sku": sku, "movement": movement, "quantity": quantity}
        for sku, listing in sorted(listings.items())
        for movement, quantity in listing.movements
    ]
    if movements:
        connection.execute(ledger.insert(), movements)
    if restocked:
        connection.execute(
            update(stock)
            .where(stock.c.sku == bindparam("listed_sku"))
            .values(available=bindparam("new_available")),
            [
                {"listed_sku": sku, "new_available": listing.available}
                for sku, listing in sorted(restocked.items())
            ],
        )
    return [(sku, "price") for sku in repriced] + [(sku, "inventory") for sku in restocked]


# What `offers` reads: `{marks}` becomes one placeholder per SKU of a batch.
_OFFERS_SQL = (
    "SELECT catalog.sku, catalog.name, catalog.price, catalog.list_price, catalog.weight_grams,"
    " stock.available FROM catalog LEFT OUTER JOIN stock ON stock.sku = catalog.sku"
    " WHERE catalog.sku IN ({marks})"
)
_STOCK_SQL = "SELECT sku, available FROM stock WHERE sku IN ({marks})"
# SKUs per query: within every SQLite's limit on a statement's parameters (999 before 3.32).
_BATCH = 500


def _read(engine: Engine, sql: str, skus: list[str]) -> list[Any]:
    """The rows of `sql` for `skus`, in batches, on a pooled driver connection.

    No transaction of its own: on SQLite (the engine's connections are in autocommit) each
    SELECT reads one WAL snapshot and takes no lock; PostgreSQL's implicit one is rolled back
    when the connection goes back to the pool.
    """
    if not skus:
        return []
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    dbapi_error = engine.dialect.loaded_dbapi.Error
    rows: list[Any] = []
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            for start in range(0, len(skus), _BATCH):
                batch = skus[start : start + _BATCH]
                statement = sql.format(marks=", ".join([mark] * len(batch)))
                try:
                    cursor.execute(statement, batch)
                    rows += cursor.fetchall()
                except dbapi_error as err:
                    if engine.dialect.is_disconnect(err, connection.dbapi_connection, cursor):
                        connection.invalidate(err)
                    raise DBAPIError.instance(statement, batch, err, dbapi_error) from err
        finally:
            cursor.close()
    finally:
        connection.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """`load FILE`, `show [SKU ...]`, `delist SKU [SKU ...]` or `change ...`, against the
    warehouse the environment names. Exit status: 0 done, 1 refused (nothing changed), 2 a
    mistake in the command or its file."""
    from config import get_settings  # the CLI's settings; the module itself takes them as given

    parser = argparse.ArgumentParser(
        prog="python -m activities.catalog", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="upsert a catalog file and set its stock")
    load.add_argument("file", type=Path)
    load.add_argument(
        "--if-empty", action="store_true", help="only when the catalog is empty (a first start)"
    )
    show = commands.add_parser("show", help="print the catalog (or these SKUs) with their stock")
    show.add_argument("skus", nargs="*")
    delist = commands.add_parser(
        "delist", help="take SKUs off the catalog, writing off their available stock"
    )
    delist.add_argument("skus", nargs="+", metavar="SKU")
    change = _change_parser(commands)
    args = parser.parse_args(argv)
    batch = None
    if args.command == "change":
        try:
            batch = _changes_asked(change, args)
        except ValueError as err:
            print(f"catalog: nothing applied: {err}", file=sys.stderr)
            return 2
    try:
        settings = get_settings()
    except ValidationError as err:
        # Only the message: pydantic's own text quotes the settings, secrets among them.
        error = err.errors()[0]
        where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        print(f"catalog: {where}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    target = Catalog.from_settings(settings)
    if batch is not None:
        return _apply(target, batch)
    if args.command == "delist":
        print("catalog: " + "\n".join(target.delist(args.skus).lines()))
        return 0
    if args.command == "load":
        if args.if_empty and _all_skus(target):
            print("catalog: already loaded, left as it is")
            return 0
        try:
            entries = read_catalog_file(args.file)
        except (OSError, ValueError) as err:
            print(f"catalog not loaded: {err}", file=sys.stderr)
            return 2
        print(f"catalog {args.file}: " + "\n".join(target.load(entries).lines()))
        return 0
    skus = args.skus or _all_skus(target)
    for offer in sorted(target.offers(skus).values(), key=lambda o: o.sku):
        print(
            f"{offer.sku}\t{offer.name}\tprice {offer.price}\tlist {offer.list_price}"
            f"\tavailable {offer.available}"
        )
    return 0


# The command's options for each field of a change, to name them in its errors.
_CHANGE_OPTIONS = {
    "changeId": "--change-id",
    "sku": "SKU",
    "price": "--price",
    "listPrice": "--list-price",
    "stock": "--stock",
}


def _change_parser(commands: Any) -> argparse.ArgumentParser:
    change: argparse.ArgumentParser = commands.add_parser(
        "change",
        help="apply price and stock changes your own system reports (one, or a batch file)",
        description=(
            "Apply price and stock changes your own system (an ERP) reports, as POST "
            "/catalog/changes on the ops listener does: in one transaction, each change id "
            "once (a change sent again is skipped: 'applied before'), the marketplace told. "
            "One change: SKU --change-id ID and at least one of --price, --list-price, "
            '--stock. A batch: --file FILE, a JSON object {"changes": [{"changeId": ..., '
            '"sku": ..., "price": ..., "listPrice": ..., "stock": ...}, ...]}. Exit status: '
            "0 applied (or applied before), 1 refused (an unknown SKU, a change id reused with "
            "another body, the database out of reach: nothing applied), 2 a mistake in the "
            "command or the file."
        ),
    )
    change.add_argument("sku", nargs="?", metavar="SKU", help="the SKU that changed")
    change.add_argument(
        "--change-id", metavar="ID", help="your system's id of the change: it is applied once"
    )
    change.add_argument("--price", type=int, metavar="CENTS", help="the new price")
    change.add_argument("--list-price", type=int, metavar="CENTS", help="the new list price")
    change.add_argument(
        "--stock",
        type=int,
        metavar="UNITS",
        help="the units available to sell from now on (orders keep what they hold)",
    )
    change.add_argument(
        "--file", type=Path, help="a batch of changes, as POST /catalog/changes takes them"
    )
    return change


def _changes_asked(change: argparse.ArgumentParser, args: argparse.Namespace) -> CatalogChanges:
    """The changes the command asks for (a usage mistake exits with status 2, as argparse's).

    Raises:
        ValueError: the file cannot be read, or a change is invalid; the message says where.
    """
    values = {"price": args.price, "listPrice": args.list_price, "stock": args.stock}
    if args.file is not None:
        given = [args.sku, args.change_id, *values.values()]
        if any(value is not None for value in given):
            change.error("--file is the whole batch: no SKU, --change-id or values beside it")
        try:
            payload = json.loads(args.file.read_text(encoding="utf-8-sig"))
        except RecursionError:
            raise ValueError(f"{args.file}: its JSON is nested too deeply to be a batch") from None
        except OSError as err:
            raise ValueError(f"{args.file}: {err.strerror or err}") from None
        except ValueError as err:  # not JSON, or not UTF-8
            raise ValueError(f"{args.file} is not JSON: {err}") from None
    else:
        if args.sku is None or args.change_id is None:
            change.error("name the SKU and its --change-id (or give a batch with --file)")
        if all(value is None for value in values.values()):
            change.error("give at least one of --price, --list-price and --stock")
        asked = {"changeId": args.change_id, "sku": args.sku}
        asked |= {key: value for key, value in values.items() if value is not None}
        payload = {"changes": [asked]}
    try:
        # Strict, as the endpoint: in a JSON file, `"stock": "5"` or `"price": 19.9` is a mistake.
        return CatalogChanges.model_validate(payload, strict=True)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        if args.file is None:
            option = _CHANGE_OPTIONS.get(str(first["loc"][-1]), "")
            raise ValueError(f"{option}: {message}" if option else message) from None
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
        ).lstrip(".")
        raise ValueError(f"{args.file}: {where or 'the batch'}: {message}") from None


def _apply(target: Catalog, batch: CatalogChanges) -> int:
    try:
        applied = target.apply_changes(batch.changes)
    except ChangeRefused as err:
        print(f"catalog: {err}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as err:
        print(
            f"catalog: nothing applied: the warehouse's database could not be written "
            f"({type(err).__name__}); send the same changes again (any applied already are "
            "skipped)",
            file=sys.stderr,
        )
        return 1
    fresh = [change for change in applied if change.applied]
    before = [change for change in applied if not change.applied]
    lines = [f"{len(fresh)} applied, {len(before)} applied before (left as they are)"]
    width = max(len(change.change_id) for change in applied)
    lines += [
        f"  {'applied' if change.applied else 'applied before':<14}  "
        f"{change.change_id:<{width}}  SKU {change.sku}"
        for change in applied
    ]
    print("catalog: " + "\n".join(lines))
    return 0


def _all_skus(target: Catalog) -> list[str]:
    with store.engine_for(target.url).connect() as connection:
        return list(connection.execute(select(catalog.c.sku)).scalars())


if __name__ == "__main__":
    sys.exit(main())
