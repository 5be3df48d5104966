"""The simulated warehouse against a real SQLite file and a real PostgreSQL database (each test
runs on both, see `warehouse_store` in conftest.py): stock conservation, idempotency, races."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from activities import warehouse_store as store
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    UnknownOrder,
    Warehouse,
    WarehouseOrder,
)
from config import Settings
from devtools.postgres import TemporaryPostgres
from workflows.messages import OrderLine

REPO = Path(__file__).resolve().parents[1]


def order(order_id: str, *lines: tuple[str, int, int], freight: int = 0) -> WarehouseOrder:
    return WarehouseOrder(
        order_id=order_id,
        marketplace_order_id=f"MKT-{order_id}",
        lines=[
            OrderLine(sku=sku, quantity=quantity, price=price) for sku, quantity, price in lines
        ],
        freight_value=freight,
    )


@pytest.fixture
def warehouse(warehouse_store: str | Path) -> SimulatedWarehouse:
    return SimulatedWarehouse(warehouse_store, default_stock=10, step_seconds=0)


def test_is_a_warehouse(warehouse: SimulatedWarehouse) -> None:
    implementation: Warehouse = warehouse
    assert implementation is warehouse


def test_from_settings_creates_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new" / "dir", default_stock=7)
    warehouse = SimulatedWarehouse.from_settings(settings)
    assert warehouse.db_path == tmp_path / "new" / "dir" / "warehouse.db"
    assert warehouse.db_path.parent.is_dir()
    assert warehouse.default_stock == 7
    assert warehouse.step_seconds == 2.0


def test_warehouse_url_names_the_database(tmp_path: Path) -> None:
    url = "postgresql://seller:secret@db.internal:5432/warehouse"
    warehouse = SimulatedWarehouse.from_settings(Settings(data_dir=tmp_path, warehouse_url=url))
    # psycopg 3 is the driver: a plain postgresql:// URL means it too.
    assert warehouse.url.render_as_string(hide_password=False) == url.replace(
        "postgresql://", "postgresql+psycopg://"
    )
    assert warehouse.db_path is None
    assert "secret" not in repr(Settings(warehouse_url=url))
    with pytest.raises(ValueError, match="mysql"):
        SimulatedWarehouse("mysql://db.internal/warehouse")


async def test_default_stock_on_first_reserve(warehouse: SimulatedWarehouse) -> None:
    assert (await warehouse.stock_level("A")).total == 0
    reservation = await warehouse.reserve(order("o1", ("A", 3, 100)))

    assert reservation.order_id == "o1"
    assert reservation.lines == [OrderLine(sku="A", quantity=3, price=100)]
    level = await warehouse.stock_level("A")
    assert (level.available, level.reserved, level.shipped) == (7, 3, 0)
    movements = [(e.order_id, e.sku, e.movement, e.quantity) for e in await warehouse.ledger()]
    assert movements == [(None, "A", "restock", 10), ("o1", "A", "reserve", 3)]


async def test_restock_of_a_new_sku_adds_to_its_default_stock(
    warehouse: SimulatedWarehouse,
) -> None:
    level = await warehouse.restock("B", 5)
    assert (level.available, level.reserved, level.shipped) == (15, 0, 0)
    assert [(e.movement, e.quantity) for e in await warehouse.ledger()] == [
        ("restock", 10),
        ("restock", 5),
    ]


async def test_reserve_and_release_conserve_stock(warehouse: SimulatedWarehouse) -> None:
    await warehouse.reserve(order("o1", ("A", 2, 0), ("B", 4, 0)))
    await warehouse.reserve(order("o2", ("A", 5, 0)))
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved, a.shipped, a.total) == (3, 7, 0, 10)

    assert await warehouse.release("o1") is True
    assert await warehouse.release("o1") is False
    a, b = await warehouse.stock_level("A"), await warehouse.stock_level("B")
    assert (a.available, a.reserved, a.total) == (5, 5, 10)
    assert (b.available, b.reserved, b.total) == (10, 0, 10)
    assert [(e.sku, e.movement, e.quantity) for e in await warehouse.ledger("o1")] == [
        ("A", "reserve", 2),
        ("B", "reserve", 4),
        ("A", "release", 2),
        ("B", "release", 4),
    ]
    record = await warehouse.order_record("o1")
    assert record is not None
    assert record["state"] == "released"
    assert record["released_at"] is not None


async def test_duplicate_skus_in_one_order_are_summed(warehouse: SimulatedWarehouse) -> None:
    with pytest.raises(OutOfStock) as refused:
        await warehouse.reserve(order("o1", ("A", 6, 0), ("A", 5, 0)))
    assert (refused.value.sku, refused.value.requested, refused.value.available) == ("A", 11, 10)

    await warehouse.reserve(order("o2", ("A", 6, 0), ("A", 4, 0)))
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved) == (0, 10)
    assert [(e.movement, e.quantity) for e in await warehouse.ledger("o2")] == [("reserve", 10)]


async def test_out_of_stock_is_all_or_nothing(warehouse: SimulatedWarehouse) -> None:
    await warehouse.reserve(order("o1", ("B", 8, 0)))

    with pytest.raises(OutOfStock) as refused:
        await warehouse.reserve(order("o2", ("A", 1, 0), ("B", 3, 0), ("C", 1, 0)))

    assert (refused.value.sku, refused.value.requested, refused.value.available) == ("B", 3, 2)
    assert await warehouse.order_record("o2") is None
    assert await warehouse.ledger("o2") == []
    b = await warehouse.stock_level("B")
    assert (b.available, b.reserved) == (2, 8)
    # A was first seen by the refused order: its creation was rolled back with the rest.
    assert (await warehouse.stock_level("A")).total == 0
    assert await warehouse.release("o2") is False


async def test_reserve_is_idempotent_even_after_release(warehouse: SimulatedWarehouse) -> None:
    first = await warehouse.reserve(order("o1", ("A", 4, 0)))
    again = await warehouse.reserve(order("o1", ("A", 4, 0)))
    assert again == first
    assert (await warehouse.stock_level("A")).reserved == 4

    assert await warehouse.release("o1") is True
    after_release = await warehouse.reserve(order("o1", ("A", 4, 0)))
    assert after_release == first
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved) == (10, 0)
    assert [e.movement for e in await warehouse.ledger("o1")] == ["reserve", "release"]


async def test_steps_are_recorded_once(warehouse: SimulatedWarehouse) -> None:
    await warehouse.reserve(order("o1", ("A", 1, 0)))
    await warehouse.pick("o1")
    record = await warehouse.order_record("o1")
    assert record is not None
    picked_at = record["steps"]["picked"]
    assert list(record["steps"]) == ["picked"]

    await warehouse.pick("o1")
    await warehouse.pack("o1")
    record = await warehouse.order_record("o1")
    assert record is not None
    assert list(record["steps"]) == ["picked", "packed"]
    assert record["steps"]["picked"] == picked_at


async def test_unknown_order(warehouse: SimulatedWarehouse) -> None:
    with pytest.raises(UnknownOrder):
        await warehouse.pick("nope")
    with pytest.raises(UnknownOrder):
        await warehouse.pack("nope")
    with pytest.raises(UnknownOrder):
        await warehouse.create_label(order("nope", ("A", 1, 0)))
    with pytest.raises(UnknownOrder):
        await warehouse.issue_invoice(order("nope", ("A", 1, 0)))
    assert await warehouse.void_label("nope") is False
    assert await warehouse.order_record("nope") is None
    assert await warehouse.release("nope") is False


async def test_a_reservation_after_its_release_reserves_nothing(
    warehouse: SimulatedWarehouse,
) -> None:
    # An order gave up on its reservation (its attempt failed, it was canceled) and released it;
    # an earlier attempt, cut off from Temporal, commits only now.
    assert await warehouse.release("o1") is False
    with pytest.raises(OrderReleased):
        await warehouse.reserve(order("o1", ("A", 4, 0)))

    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved) == (0, 0)  # Never even created: nothing moved.
    assert await warehouse.ledger("o1") == []
    record = await warehouse.order_record("o1")
    assert record is not None and record["state"] == "released"
    with pytest.raises(OrderReleased):
        await warehouse.issue_invoice(order("o1", ("A", 4, 0)))


async def test_postgresql_sessions_bound_every_wait(postgres: TemporaryPostgres) -> None:
    # PostgreSQL waits for a lock forever by default; a worker that vanished mid-transaction must
    # not stall every other worker's invoices.
    warehouse = SimulatedWarehouse(postgres.create_database("bounded"), step_seconds=0)
    await warehouse.stock_level("A")  # connects, creates the tables
    with store.engine_for(warehouse.url).connect() as connection:
        settings = {
            name: connection.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
        }
    assert settings == {
        "lock_timeout": "15s",
        "statement_timeout": "1min",
        "idle_in_transaction_session_timeout": "1min",
    }


async def test_label_is_idempotent_and_voided_once(warehouse: SimulatedWarehouse) -> None:
    o1 = order("o1", ("A", 1, 0))
    await warehouse.reserve(o1)
    assert await warehouse.void_label("o1") is False

    label = await warehouse.create_label(o1)
    assert label.courier == "Simulated Carrier"
    assert label.label_id.startswith("LBL-") and len(label.label_id) == 12
    int(label.label_id[4:], 16)
    assert label.tracking_number.startswith("SIM") and len(label.tracking_number) == 13
    assert label.tracking_number[3:].isdigit()
    assert label.tracking_url == f"https://tracking.example.com/{label.tracking_number}"
    assert await warehouse.create_label(o1) == label

    assert await warehouse.void_label("o1") is True
    assert await warehouse.void_label("o1") is False
    record = await warehouse.order_record("o1")
    assert record is not None
    assert record["label"]["label_id"] == label.label_id
    assert record["label"]["voided"] is True


async def test_invoice_is_idempotent_and_ships_the_stock(warehouse: SimulatedWarehouse) -> None:
    o1 = order("o1", ("A", 2, 1500), ("B", 1, 999), freight=1000)
    await warehouse.reserve(o1)

    invoice = await warehouse.issue_invoice(o1)
    assert invoice.invoice_number == "NFe-000001"
    assert invoice.invoice_value == 2 * 1500 + 999 + 1000
    assert invoice.lines == o1.lines
    assert await warehouse.issue_invoice(o1) == invoice

    a, b = await warehouse.stock_level("A"), await warehouse.stock_level("B")
    assert (a.available, a.reserved, a.shipped) == (8, 0, 2)
    assert (b.available, b.reserved, b.shipped) == (9, 0, 1)
    assert [(e.sku, e.movement) for e in await warehouse.ledger("o1")] == [
        ("A", "reserve"),
        ("B", "reserve"),
        ("A", "ship"),
        ("B", "ship"),
    ]
    record = await warehouse.order_record("o1")
    assert record is not None
    assert record["state"] == "invoiced"
    assert record["invoice"]["invoice_number"] == "NFe-000001"

    await warehouse.reserve(order("o2", ("A", 1, 0)))
    assert (await warehouse.issue_invoice(order("o2", ("A", 1, 0)))).invoice_number == "NFe-000002"


async def test_release_after_invoice_raises_already_invoiced(
    warehouse: SimulatedWarehouse,
) -> None:
    o1 = order("o1", ("A", 3, 0))
    await warehouse.reserve(o1)
    await warehouse.issue_invoice(o1)

    with pytest.raises(AlreadyInvoiced):
        await warehouse.release("o1")
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved, a.shipped) == (7, 0, 3)


async def test_invoice_after_release_raises_order_released(warehouse: SimulatedWarehouse) -> None:
    o1 = order("o1", ("A", 3, 0))
    await warehouse.reserve(o1)
    assert await warehouse.release("o1") is True

    with pytest.raises(OrderReleased):
        await warehouse.issue_invoice(o1)
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved, a.shipped) == (10, 0, 0)
    record = await warehouse.order_record("o1")
    assert record is not None
    assert record["invoice"] is None
    # The refused invoice did not use up a number.
    await warehouse.reserve(order("o2", ("A", 1, 0)))
    assert (await warehouse.issue_invoice(order("o2", ("A", 1, 0)))).invoice_number == "NFe-000001"


async def test_invoice_and_release_race_has_one_winner_per_order(
    warehouse_store: str | Path,
) -> None:
    db = warehouse_store
    one = SimulatedWarehouse(db, default_stock=100, step_seconds=0)
    two = SimulatedWarehouse(db, default_stock=100, step_seconds=0)
    orders = [order(f"o{i}", ("A", 1, 0)) for i in range(20)]
    await asyncio.gather(*(one.reserve(o) for o in orders))

    outcomes = await asyncio.gather(
        *(one.issue_invoice(o) for o in orders),
        *(two.release(o.order_id) for o in orders),
        return_exceptions=True,
    )

    invoices, releases = outcomes[:20], outcomes[20:]
    for invoice, released in zip(invoices, releases, strict=True):
        # Exactly one of the two committed; the other saw it and refused.
        if isinstance(invoice, Invoice):
            assert isinstance(released, AlreadyInvoiced)
        else:
            assert isinstance(invoice, OrderReleased)
            assert released is True
    invoiced = [x for x in invoices if isinstance(x, Invoice)]
    released = [x for x in releases if x is True]
    assert sorted(x.invoice_number for x in invoiced) == [
        f"NFe-{n:06d}" for n in range(1, len(invoiced) + 1)
    ]
    a = await one.stock_level("A")
    assert (a.available, a.reserved, a.shipped) == (80 + len(released), 0, len(invoiced))


async def test_invoice_numbers_are_unique_across_two_instances(
    warehouse_store: str | Path,
) -> None:
    db = warehouse_store
    workers = [SimulatedWarehouse(db, default_stock=1000, step_seconds=0) for _ in range(2)]
    orders = [order(f"o{i}", ("A", 1, 10), ("B", 2, 20)) for i in range(40)]

    async def fulfil(index: int, o: WarehouseOrder) -> str:
        worker = workers[index % 2]
        await worker.reserve(o)
        # Retried on the other worker, as after a crash: the same number comes back.
        first = await worker.issue_invoice(o)
        retried = await workers[(index + 1) % 2].issue_invoice(o)
        assert retried == first
        return first.invoice_number

    numbers = await asyncio.gather(*(fulfil(i, o) for i, o in enumerate(orders)))

    assert sorted(numbers) == [f"NFe-{n:06d}" for n in range(1, 41)]
    a, b = await workers[0].stock_level("A"), await workers[1].stock_level("B")
    assert (a.available, a.reserved, a.shipped) == (960, 0, 40)
    assert (b.available, b.reserved, b.shipped) == (920, 0, 80)
    assert len([e for e in await workers[0].ledger() if e.movement == "ship"]) == 80


async def test_cancelled_pick_stops_promptly_and_records_nothing(
    warehouse_store: str | Path,
) -> None:
    warehouse = SimulatedWarehouse(warehouse_store, default_stock=10, step_seconds=5)
    await warehouse.reserve(order("o1", ("A", 1, 0)))

    task = asyncio.create_task(warehouse.pick("o1"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5

    record = await warehouse.order_record("o1")
    assert record is not None
    assert record["steps"] == {}
    assert record["state"] == "reserved"


@contextmanager
def order_locked_elsewhere(store: str | Path, order_id: str) -> Iterator[None]:
    """Another client holds what a write to the order needs: SQLite's write lock, or the order's
    row lock in PostgreSQL."""
    if isinstance(store, Path):
        sqlite = sqlite3.connect(store, isolation_level=None)
        sqlite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            sqlite.execute("COMMIT")
            sqlite.close()
        return
    with psycopg.connect(store.replace("postgresql+psycopg", "postgresql")) as other:
        other.execute("SELECT 1 FROM orders WHERE order_id = %s FOR UPDATE", (order_id,))
        yield  # Committed when the block ends.


async def test_cancelled_call_waits_for_its_transaction(warehouse_store: str | Path) -> None:
    warehouse = SimulatedWarehouse(warehouse_store, default_stock=10, step_seconds=0)
    await warehouse.reserve(order("o1", ("A", 4, 0)))

    # The release's thread waits in the database for the other client.
    with order_locked_elsewhere(warehouse_store, "o1"):
        task = asyncio.create_task(warehouse.release("o1"))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.2)
        still_waiting = not task.done()
    # The thread cannot be stopped: the cancelled call waits until its transaction ends ...
    assert still_waiting
    with pytest.raises(asyncio.CancelledError):
        await task

    # ... so whoever cancelled it sees its outcome and compensates accordingly.
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved) == (10, 0)
    assert await warehouse.release("o1") is False


WORKER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import OutOfStock, WarehouseOrder
from workflows.messages import OrderLine

async def main(db, name, count):
    warehouse = SimulatedWarehouse(db, default_stock=30, step_seconds=0)
    reserved, refused, invoices = [], 0, []
    for i in range(count):
        order = WarehouseOrder(
            order_id=f"{name}-{i}",
            marketplace_order_id=f"MKT-{name}-{i}",
            lines=[OrderLine(sku="SHARED", quantity=1), OrderLine(sku=f"{name}-OWN", quantity=1)],
        )
        try:
            await warehouse.reserve(order)
        except OutOfStock:
            refused += 1
            continue
        reserved.append(order.order_id)
        if i % 2 == 0:
            invoices.append((await warehouse.issue_invoice(order)).invoice_number)
    print(json.dumps({"reserved": reserved, "refused": refused, "invoices": invoices}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_two_processes_share_the_stock(warehouse_store: str | Path) -> None:
    db = warehouse_store
    if isinstance(db, Path):
        db = db.parent / "shared" / "warehouse.db"

    # Both start on a missing file, so they also race to create the schema.
    def run_worker(name: str) -> dict[str, Any]:
        finished = subprocess.run(
            [sys.executable, "-c", WORKER_SCRIPT, str(db), name, "25"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr
        result: dict[str, Any] = json.loads(finished.stdout)
        return result

    results = await asyncio.gather(*(asyncio.to_thread(run_worker, name) for name in ("w1", "w2")))

    reserved = [order_id for result in results for order_id in result["reserved"]]
    invoices = [number for result in results for number in result["invoices"]]
    # 50 orders wanted one SHARED each; there were 30.
    assert len(reserved) == 30
    assert sum(result["refused"] for result in results) == 20
    assert sorted(invoices) == [f"NFe-{n:06d}" for n in range(1, len(invoices) + 1)]

    warehouse = SimulatedWarehouse(db, default_stock=30, step_seconds=0)
    shared = await warehouse.stock_level("SHARED")
    assert (shared.available, shared.reserved, shared.shipped) == (
        0,
        30 - len(invoices),
        len(invoices),
    )
    for name, result in zip(("w1", "w2"), results, strict=True):
        own = await warehouse.stock_level(f"{name}-OWN")
        assert (own.total, own.reserved + own.shipped) == (30, len(result["reserved"]))
    for order_id in reserved:
        record = await warehouse.order_record(order_id)
        assert record is not None
        assert record["state"] in {"reserved", "invoiced"}
    ledger = await warehouse.ledger()
    assert [e.quantity for e in ledger if e.movement == "restock"] == [30, 30, 30]
    assert sum(e.quantity for e in ledger if e.sku == "SHARED" and e.movement == "reserve") == 30
