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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import DBAPIError

from activities import warehouse_store as store
from activities.warehouse_store import catalog, ledger, stock
from workflows.messages import CamelModel

if TYPE_CHECKING:
    from config import Settings

# What an unseen SKU costs when DEFAULT_STOCK sells it.
DEFAULT_PRICE_CENTS = 1000
# The most a price or a stock level may be: what a JSON reader holds exactly (2^53 - 1).
MAX_NUMBER = 2**53 - 1

Cents = Annotated[int, Field(ge=0, le=MAX_NUMBER)]


class CatalogEntry(CamelModel):
    """One SKU as a catalog file lists it."""

    sku: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    name: str = Field(min_length=1, max_length=256)
    price: Cents
    list_price: Cents | None = None
    stock: Cents
    weight_grams: Cents | None = None


_ENTRIES = TypeAdapter(list[CatalogEntry])


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
        rows: Any = json.loads(text)
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
        # here for it, instead of failing on the key.
        added = connection.execute(
            store.insert_ignore(connection.engine, catalog, ["sku"])
            .values(sku=entry.sku, updated_at=at, **values)
            .returning(catalog.c.sku)
        ).first()
        current = connection.execute(
            select(catalog).where(catalog.c.sku == entry.sku).with_for_update()
        ).one()
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
    """`load FILE`, `show [SKU ...]` or `delist SKU [SKU ...]`, against the warehouse the
    environment names."""
    from config import get_settings  # the CLI's settings; the module itself takes them as given

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as err:
        # Only the message: pydantic's own text quotes the settings, secrets among them.
        error = err.errors()[0]
        where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        print(f"catalog: {where}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    target = Catalog.from_settings(settings)
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


def _all_skus(target: Catalog) -> list[str]:
    with store.engine_for(target.url).connect() as connection:
        return list(connection.execute(select(catalog.c.sku)).scalars())


if __name__ == "__main__":
    sys.exit(main())
