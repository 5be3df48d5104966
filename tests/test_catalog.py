"""The catalog: loaded from a file (upserted, what changed reported, stock set through the ledger)
and SKUs delisted, on SQLite and PostgreSQL; and placements checked against it on the real
stack."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities import warehouse_store as store
from activities.catalog import Catalog, CatalogEntry, main, read_catalog_file
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import OutOfStock, WarehouseOrder
from change_relay import ChangeOutbox
from tests.stack import new_order_id, placement_example, running_stack
from workflows.messages import OrderLine

REPO = Path(__file__).resolve().parents[1]


def entry(sku: str, stock: int, price: int = 1000, name: str = "A thing") -> CatalogEntry:
    return CatalogEntry(sku=sku, name=name, price=price, stock=stock)


def test_the_sample_catalog_reads(tmp_path: Path) -> None:
    entries = read_catalog_file(REPO / "catalog" / "sample.csv")
    assert "123456789abc" in {e.sku for e in entries}  # the spec's example SKU, the README's
    as_json = tmp_path / "catalog.json"
    as_json.write_text(json.dumps([e.model_dump(by_alias=True) for e in entries]))
    assert read_catalog_file(as_json) == entries


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("sku,name,price,stock\nA,Thing,-1,5\n", "0.price"),
        ("sku,name,price,stock\nA,Thing,10,lots\n", "0.stock"),
        ("sku,name,price\nA,Thing,10\n", "0.stock"),
        ("sku,name,price,stock\nA,Thing,10,5\nA,Other,10,5\n", "listed twice"),
        ("sku,name,price,stock\nA,Thing, with a comma,10,5\n", "line 2 has more fields"),
    ],
)
def test_a_file_that_is_no_catalog_is_refused_naming_what(
    tmp_path: Path, content: str, named: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=named):
        read_catalog_file(path)


@pytest.mark.parametrize(
    "text",
    [
        '[{"sku": "A", "name": "Thing", "price": true, "stock": 5}]',
        '[{"sku": "A", "name": "Thing", "price": 10, "stock": "5"}]',
    ],
)
def test_a_json_catalog_is_read_with_its_types(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="entry 0"):
        read_catalog_file(path)


def test_an_empty_default_stock_is_unset() -> None:
    from config import Settings

    assert Settings(default_stock="").default_stock is None  # type: ignore[arg-type]
    assert Settings(default_stock="7").default_stock == 7  # type: ignore[arg-type]


async def test_a_load_upserts_reports_and_moves_stock_through_the_ledger(
    warehouse_store: str | Path,
) -> None:
    catalog = Catalog(warehouse_store)
    first = catalog.load([entry("A", 5), entry("B", 0)])
    assert (first.added, first.changed, first.stock_moved) == (["A", "B"], [], {"A": (0, 5)})

    # A reservation takes 2; the next load says 10 are available, then 4.
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    await warehouse.reserve(
        WarehouseOrder(
            order_id="o1", marketplace_order_id="m1", lines=[OrderLine(sku="A", quantity=2)]
        )
    )
    second = catalog.load([entry("A", 10, price=1200), entry("B", 0)])
    assert (second.changed, second.unchanged, second.stock_moved) == (["A"], ["B"], {"A": (3, 10)})
    third = catalog.load([entry("A", 4, price=1200)])
    assert (third.unchanged, third.stock_moved) == (["A"], {"A": (10, 4)})

    level = await warehouse.stock_level("A")
    assert (level.available, level.reserved) == (4, 2)
    movements = [(e.movement, e.quantity) for e in await warehouse.ledger() if e.sku == "A"]
    assert movements == [("restock", 5), ("reserve", 2), ("restock", 7), ("writeoff", 6)]
    assert catalog.offers(["A", "B", "nope"]).keys() == {"A", "B"}
    assert catalog.offers(["A"])["A"].price == 1200


async def test_delist_takes_skus_off_writes_off_their_stock_and_notes_the_change(
    warehouse_store: str | Path,
) -> None:
    catalog = Catalog(warehouse_store)
    outbox = ChangeOutbox(warehouse_store)
    catalog.load([entry("A", 5), entry("B", 3), entry("C", 1)])
    outbox.mark_relayed(outbox.pending())
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    await warehouse.reserve(
        WarehouseOrder(
            order_id="o1", marketplace_order_id="m1", lines=[OrderLine(sku="A", quantity=2)]
        )
    )

    report = catalog.delist(["B", "A", "nope", "A"])

    assert (report.delisted, report.not_listed) == (["A", "B"], ["nope"])
    assert (report.written_off, report.reserved) == ({"A": 3, "B": 3}, {"A": 2})
    assert catalog.offers(["A", "B", "C"]).keys() == {"C"}
    assert catalog.count() == 1
    # The stock went through the ledger; the order placed before keeps its 2 units.
    level = await warehouse.stock_level("A")
    assert (level.available, level.reserved) == (0, 2)
    movements = [(e.movement, e.quantity) for e in await warehouse.ledger() if e.sku == "A"]
    assert movements == [("restock", 5), ("reserve", 2), ("writeoff", 3)]
    # Nothing is left to sell, even where an unlisted SKU with a stock row is sold from it.
    assert Catalog(warehouse_store, default_stock=7).offers(["A"])["A"].available == 0
    # The marketplace reads them again, as it reads a SKU a load adds.
    pending = {(change.sku, change.kind) for change in outbox.pending()}
    assert pending == {(sku, kind) for sku in "AB" for kind in ("price", "inventory")}
    outbox.mark_relayed(outbox.pending())
    # Again: nothing more to do, nothing noted.
    again = catalog.delist(["A", "B"])
    assert (again.delisted, again.not_listed, again.written_off) == ([], ["A", "B"], {})
    assert outbox.pending() == []
    # The order placed before still releases its units; a load lists the SKU again.
    assert await warehouse.release("o1")
    relisted = catalog.load([entry("A", 4)])
    assert relisted.added == ["A"]
    assert catalog.offers(["A"])["A"].available == 4


async def test_without_a_default_stock_an_unlisted_sku_cannot_be_reserved(
    warehouse_store: str | Path,
) -> None:
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    order = WarehouseOrder(
        order_id="o1", marketplace_order_id="m1", lines=[OrderLine(sku="nope", quantity=1)]
    )
    with pytest.raises(OutOfStock):
        await warehouse.reserve(order)
    # With one (demos, black-box tests), it is sold from that stock.
    assert Catalog(warehouse_store, default_stock=7).offers(["nope"])["nope"].available == 7


def test_a_ledger_from_before_writeoffs_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
            " order_id TEXT, sku TEXT NOT NULL, movement TEXT NOT NULL CHECK (movement IN"
            " ('restock', 'reserve', 'release', 'ship')), quantity INTEGER NOT NULL)"
        )
        old.execute(
            "INSERT INTO ledger (at, sku, movement, quantity) VALUES ('t', 'A', 'restock', 3)"
        )
        old.execute(
            "CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL,"
            " reserved INTEGER NOT NULL, shipped INTEGER NOT NULL)"
        )
        old.execute("INSERT INTO stock VALUES ('A', 3, 0, 0)")

    report = Catalog(path).load([entry("A", 1)])

    assert report.stock_moved == {"A": (3, 1)}
    with store.engine_for(store.store_url(path)).connect() as connection:
        rows = connection.exec_driver_sql("SELECT movement, quantity FROM ledger ORDER BY id").all()
    assert [tuple(row) for row in rows] == [("restock", 3), ("writeoff", 2)]


def test_the_command_loads_and_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    monkeypatch.delenv("WAREHOUSE_DB", raising=False)
    from config import get_settings

    get_settings.cache_clear()
    try:
        sample = str(REPO / "catalog" / "sample.csv")
        assert main(["load", "--if-empty", sample]) == 0
        assert main(["load", "--if-empty", sample]) == 0
        assert main(["show", "2000037"]) == 0
        bad = tmp_path / "bad.csv"
        bad.write_text("sku,name\nA,Thing\n")
        assert main(["load", str(bad)]) == 2
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    assert "5 added, 0 changed, 0 unchanged" in out.out
    assert "already loaded, left as it is" in out.out
    assert "2000037\tCotton T-shirt\tprice 4990" in out.out
    assert "catalog not loaded" in out.err


def test_the_command_delists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    monkeypatch.delenv("WAREHOUSE_DB", raising=False)
    from config import get_settings

    get_settings.cache_clear()
    try:
        # The sample, loaded by mistake, taken off SKU by SKU; the same command again is a no-op.
        sample = read_catalog_file(REPO / "catalog" / "sample.csv")
        assert main(["load", str(REPO / "catalog" / "sample.csv")]) == 0
        skus = [e.sku for e in sample]
        assert main(["delist", *skus]) == 0
        assert main(["delist", "2000037"]) == 0
        with pytest.raises(SystemExit):
            main(["delist"])  # at least one SKU
        remaining = Catalog.from_settings(get_settings()).count()
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert remaining == 0
    assert f"catalog: {len(skus)} delisted, 0 not listed" in out
    assert "  delisted    2000037: 250 available written off" in out
    assert "catalog: 0 delisted, 1 not listed\n  not listed  2000037" in out


async def test_a_placement_of_a_sku_not_in_the_catalog_or_delisted_is_a_409_naming_it(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, default_stock=None) as stack:
        Catalog.from_settings(stack.settings).load([entry("known-sku", 1)])
        unknown, refused, placed = new_order_id(), new_order_id(), new_order_id()

        body = placement_example(unknown, stack.endpoint)
        body["items"][0]["id"] = "not-sold-here"
        answer = await stack.http.post("/pvt/orders", json=body)
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["details"][0]["field"]) == ("UnknownSku", "items[0].id")
        with pytest.raises(RPCError):  # no order at all
            await stack.handle(unknown).describe()

        # Above the stock: refused by the reservation, nothing reserved, the order known.
        body = placement_example(refused, stack.endpoint)
        body["items"][0].update(id="known-sku", quantity=2)
        answer = await stack.http.post("/pvt/orders", json=body)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "OutOfStock"
        assert "known-sku" in answer.json()["error"]["message"]
        assert (await stack.warehouse.stock_level("known-sku")).reserved == 0
        assert (await stack.cancel(refused)).status_code == 200

        # The last unit: placed; the retry, which now finds no stock left, answers the same.
        body = placement_example(placed, stack.endpoint)
        body["items"][0]["id"] = "known-sku"
        first = await stack.http.post("/pvt/orders", json=body)
        again = await stack.http.post("/pvt/orders", json=body)
        assert first.status_code == again.status_code == 200, again.text
        assert again.json() == first.json()

        # Delisted: unknown to a new placement and to the simulation; the order placed before
        # answers its retry the same, and its cancellation gives its unit back as usual.
        report = Catalog.from_settings(stack.settings).delist(["known-sku"])
        assert report.reserved == {"known-sku": 1}
        later = placement_example(new_order_id(), stack.endpoint)
        later["items"][0]["id"] = "known-sku"
        answer = await stack.http.post("/pvt/orders", json=later)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "UnknownSku"
        cart = {"items": [{"id": "known-sku", "quantity": 1, "seller": "1"}]}
        simulated = await stack.http.post("/pvt/orderForms/simulation", json=cart)
        assert simulated.status_code == 200, simulated.text
        assert simulated.json()["items"] == []
        retried = await stack.http.post("/pvt/orders", json=body)
        assert retried.status_code == 200, retried.text
        assert retried.json() == first.json()
        assert (await stack.cancel(placed)).status_code == 200
        level = await stack.warehouse.stock_level("known-sku")
        assert (level.available, level.reserved) == (1, 0)
