"""Price and stock changes the seller's own system reports (`POST /catalog/changes` on the ops
listener, `python -m activities.catalog change`): applied in one transaction, each change id once,
and told to the marketplace as a catalog load's are.

The apply function on SQLite and PostgreSQL (row locks, reports sent at once); the endpoint over
real HTTP on the in-process stack (tests/stack.py: a real worker with its change relay, the fake
marketplace receiving the notifications); the command as a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from activities import warehouse_store as store
from activities.catalog import (
    AppliedChange,
    Catalog,
    CatalogChange,
    CatalogEntry,
    ChangeIdReused,
    ChangeRefused,
    UnknownSku,
    main,
)
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import OutOfStock, WarehouseOrder
from activities.warehouse_books import WarehouseBooks
from change_relay import ChangeOutbox
from config import get_settings
from tests.stack import Stack, running_stack
from tests.test_change_notifications import (
    assert_is_vtex_notification,
    new_sku,
    notifications,
    order_of,
    pending,
    wait_for_notifications,
)
from workflows.messages import OrderLine

ROOT = Path(__file__).resolve().parent.parent
OPS_TOKEN = "ops-token-of-the-erp"
AUTHORIZED = {"Authorization": f"Bearer {OPS_TOKEN}"}


def change(change_id: str, sku: str, **values: int) -> CatalogChange:
    return CatalogChange(change_id=change_id, sku=sku, **values)


def answered(*changes: tuple[str, str, bool]) -> list[AppliedChange]:
    return [AppliedChange(change_id=i, sku=sku, applied=applied) for i, sku, applied in changes]


def loaded(store: str | Path, *entries: tuple[str, int, int]) -> Catalog:
    """The store's catalog with these (SKU, price, stock), its outbox passed on."""
    catalog = Catalog(store)
    catalog.load([CatalogEntry(sku=s, name=s, price=p, stock=n) for s, p, n in entries])
    outbox = ChangeOutbox(store)
    outbox.mark_relayed(outbox.pending())
    return catalog


# ── The apply function, on SQLite and PostgreSQL ───────────────────────────────────────────────


async def test_a_report_sets_prices_and_available_stock_and_tells_the_outbox(
    warehouse_store: str | Path,
) -> None:
    catalog = loaded(warehouse_store, ("A", 100, 10), ("B", 200, 5), ("C", 300, 1))
    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    await warehouse.reserve(order_of("A", 3, "SLR-holds-3"))
    report = [
        change("erp-1", "A", stock=4),
        change("erp-2", "B", price=250, list_price=300),
        change("erp-3", "B", stock=5),  # what it has already: nothing for the marketplace
        change("erp-4", "C", stock=9),
        change("erp-5", "C", stock=1),  # back where it was, after two movements
    ]

    first = catalog.apply_changes(report)

    assert first == answered(*((c.change_id, c.sku, True) for c in report))
    a = await warehouse.stock_level("A")
    assert (a.available, a.reserved) == (4, 3)  # the order keeps what it holds
    offers = catalog.offers(["A", "B", "C"])
    assert (offers["B"].price, offers["B"].list_price, offers["B"].available) == (250, 300, 5)
    assert (offers["C"].price, offers["C"].available) == (300, 1)
    movements = [(e.sku, e.movement, e.quantity) for e in await warehouse.ledger()]
    assert movements[-3:] == [("A", "writeoff", 3), ("C", "restock", 8), ("C", "writeoff", 8)]
    assert pending(warehouse_store) == {("A", "inventory"), ("B", "price")}

    # Sent again: skipped, answered so, nothing written.
    ChangeOutbox(warehouse_store).mark_relayed(ChangeOutbox(warehouse_store).pending())
    again = catalog.apply_changes(report)

    assert again == answered(*((c.change_id, c.sku, False) for c in report))
    assert len(await warehouse.ledger()) == len(movements)
    assert catalog.offers(["A", "B", "C"]) == offers
    assert pending(warehouse_store) == set()


async def test_a_report_is_refused_whole_for_a_reused_id_or_an_unknown_sku(
    warehouse_store: str | Path,
) -> None:
    catalog = loaded(warehouse_store, ("A", 100, 10), ("B", 200, 5))
    catalog.apply_changes([change("erp-1", "A", stock=7)])

    with pytest.raises(ChangeIdReused) as reused:
        catalog.apply_changes([change("erp-2", "B", stock=1), change("erp-1", "A", stock=8)])
    with pytest.raises(UnknownSku) as unknown:
        catalog.apply_changes(
            [change("erp-3", "B", price=1), change("erp-4", "NOPE", stock=1)]
            + [change(f"erp-z{i}", "ZZ", stock=1) for i in range(2)]
        )

    assert reused.value.change_ids == ["erp-1"] and "erp-1" in str(reused.value)
    assert unknown.value.skus == ["NOPE", "ZZ"] and "NOPE, ZZ" in str(unknown.value)
    offers = catalog.offers(["A", "B"])
    assert (offers["A"].available, offers["B"].available, offers["B"].price) == (7, 5, 200)
    assert pending(warehouse_store) == {("A", "inventory")}  # erp-1's, nothing since
    # Nothing of a refused report was kept: its new ids apply later.
    assert catalog.apply_changes([change("erp-2", "B", stock=1)]) == answered(("erp-2", "B", True))
    # A change applied before stays answered after its SKU is taken off the catalog.
    catalog.delist(["A"])
    assert catalog.apply_changes([change("erp-1", "A", stock=7)]) == answered(("erp-1", "A", False))


async def test_reports_sent_at_once_apply_each_change_once_and_never_deadlock(
    warehouse_store: str | Path,
) -> None:
    skus = ["A", "B", "C", "D"]
    catalog = loaded(warehouse_store, *((sku, 100, 10) for sku in skus))
    same = [change(f"same-{sku}", sku, stock=20) for sku in skus]
    # Other reports naming the same SKUs in the opposite order: each locks them by SKU.
    others = [
        [change(f"other-{n}-{sku}", sku, price=100 + n) for sku in reversed(skus)] for n in range(3)
    ]

    warehouse = SimulatedWarehouse(warehouse_store, step_seconds=0)
    before = len(await warehouse.ledger())

    outcomes = await asyncio.gather(
        *(asyncio.to_thread(catalog.apply_changes, same) for _ in range(5)),
        *(asyncio.to_thread(catalog.apply_changes, report) for report in others),
    )

    firsts = [o for o in outcomes[:5] if all(c.applied for c in o)]
    assert len(firsts) == 1, outcomes
    assert all(not any(c.applied for c in o) for o in outcomes[:5] if o is not firsts[0])
    assert all(all(c.applied for c in o) for o in outcomes[5:])
    movements = [(e.sku, e.movement, e.quantity) for e in (await warehouse.ledger())[before:]]
    assert sorted(movements) == [(sku, "restock", 10) for sku in skus]  # 10 -> 20, once each
    assert {offer.available for offer in catalog.offers(skus).values()} == {20}


# ── The endpoint, on the ops listener of a running stack ───────────────────────────────────────


@pytest.fixture(scope="module")
async def stack(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """A worker (with its change relay), the API's two listeners behind an OPS_TOKEN, the fake
    marketplace taking change notifications; every SKU sold is in the catalog."""
    async with running_stack(
        temporal_env,
        tmp_path_factory.mktemp("changes"),
        ops_token=OPS_TOKEN,
        seller_id="seller1",
        default_stock=None,
        change_notification_debounce="0s",
    ) as running:
        yield running


def listed(stack: Stack, price: int = 1000, stock: int = 10) -> str:
    sku = new_sku()
    Catalog.from_settings(stack.settings).load(
        [CatalogEntry(sku=sku, name=sku, price=price, stock=stock)]
    )
    return sku


async def report(stack: Stack, *changes: dict[str, Any], **headers: str) -> httpx.Response:
    return await stack.ops.post(
        "/catalog/changes", json={"changes": list(changes)}, headers=AUTHORIZED | headers
    )


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["code"] == code, response.text
    return error["message"]


async def test_only_the_ops_token_opens_it_and_only_for_json(stack: Stack) -> None:
    sku = listed(stack, stock=10)
    body = {"changes": [{"changeId": "auth-1", "sku": sku, "stock": 1}]}

    refused = [
        await stack.ops.post("/catalog/changes", json=body),
        await stack.ops.post("/catalog/changes", json=body, headers={"Authorization": "Bearer x"}),
        await stack.ops.post("/catalog/changes", json=body, headers={"Authorization": OPS_TOKEN}),
    ]
    from_a_page = await stack.ops.post(
        "/catalog/changes", json=body, headers=AUTHORIZED | {"Origin": "https://evil.example"}
    )
    as_text = await stack.ops.post(
        "/catalog/changes",
        content=json.dumps(body),
        headers=AUTHORIZED | {"Content-Type": "text/plain"},
    )
    on_the_vtex_port = await stack.http.post("/catalog/changes", json=body, headers=AUTHORIZED)

    for response in refused:
        assert_error(response, 401, "Unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_error(from_a_page, 403, "OriginNotAllowed")
    assert_error(as_text, 415, "UnsupportedMediaType")
    assert_error(on_the_vtex_port, 404, "NotFound")
    assert (await stack.warehouse.stock_level(sku)).available == 10


async def test_one_change_then_a_batch_reach_the_simulation_and_a_repeat_changes_nothing(
    stack: Stack,
) -> None:
    one, two = listed(stack, price=1000, stock=10), listed(stack, price=500, stock=3)

    single = await report(stack, {"changeId": f"{one}-1", "sku": one, "stock": 4})
    batch = [
        {"changeId": f"{one}-2", "sku": one, "price": 1990, "listPrice": 2490},
        {"changeId": f"{two}-1", "sku": two, "stock": 12},
        {"changeId": f"{two}-2", "sku": two, "price": 450},
    ]
    applied = await report(stack, *batch)
    repeated = await report(stack, *batch)
    simulation = await stack.http.post(
        "/pvt/orderForms/simulation",
        json={
            "items": [{"id": sku, "quantity": 1, "seller": "1"} for sku in (one, two)],
            "postalCode": "22250-040",
            "country": "BRA",
        },
    )

    assert single.status_code == 200, single.text
    assert single.json() == {"changes": [{"changeId": f"{one}-1", "sku": one, "applied": True}]}
    assert applied.status_code == 200, applied.text
    expected = [{"changeId": c["changeId"], "sku": c["sku"], "applied": True} for c in batch]
    assert applied.json() == {"changes": expected}
    assert repeated.json() == {"changes": [c | {"applied": False} for c in expected]}
    # What the marketplace reads: the new prices and stock.
    assert simulation.status_code == 200, simulation.text
    items = {item["id"]: item for item in simulation.json()["items"]}
    balances = {
        info["itemIndex"]: info["stockBalance"] for info in simulation.json()["logisticsInfo"]
    }
    assert (items[one]["price"], items[one]["listPrice"], balances[0]) == (1990, 2490, 4)
    assert (items[two]["price"], balances[1]) == (450, 12)
    entries = [e for e in await stack.warehouse.ledger() if e.sku in (one, two)]
    assert [(e.sku, e.movement, e.quantity) for e in entries][-2:] == [
        (one, "writeoff", 6),
        (two, "restock", 9),
    ]


async def test_the_same_batch_sent_five_times_at_once_is_applied_once(stack: Stack) -> None:
    skus = [listed(stack, stock=10) for _ in range(3)]
    batch = [{"changeId": f"{sku}-at-once", "sku": sku, "stock": 15} for sku in skus]

    answers = await asyncio.gather(*(report(stack, *batch) for _ in range(5)))

    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    flags = sorted(tuple(c["applied"] for c in answer.json()["changes"]) for answer in answers)
    assert flags == [(False,) * 3] * 4 + [(True,) * 3]
    entries = [e for e in await stack.warehouse.ledger() if e.sku in skus]
    assert sorted((e.sku, e.movement, e.quantity) for e in entries) == sorted(
        [(sku, "restock", 10) for sku in skus] + [(sku, "restock", 5) for sku in skus]
    )


async def test_refusals_apply_nothing(stack: Stack) -> None:
    sku = listed(stack, price=1000, stock=10)
    first = await report(stack, {"changeId": f"{sku}-1", "sku": sku, "stock": 9})

    reused = await report(
        stack,
        {"changeId": f"{sku}-2", "sku": sku, "price": 1},
        {"changeId": f"{sku}-1", "sku": sku, "stock": 8},
    )
    unknown = await report(
        stack,
        {"changeId": f"{sku}-3", "sku": sku, "stock": 1},
        {"changeId": f"{sku}-4", "sku": "no-such-sku", "stock": 1},
    )

    assert first.status_code == 200, first.text
    assert f"{sku}-1" in assert_error(reused, 409, "ChangeIdReused")
    assert "no-such-sku" in assert_error(unknown, 422, "UnknownSku")
    offer = Catalog.from_settings(stack.settings).offers([sku])[sku]
    assert (offer.price, offer.available) == (1000, 9)
    # Their new ids were not kept: sent alone, they apply.
    later = await report(stack, {"changeId": f"{sku}-3", "sku": sku, "stock": 1})
    assert later.json()["changes"][0]["applied"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"changes": []}, "changes", id="empty"),
        pytest.param(
            {"changes": [{"changeId": f"c{i}", "sku": "1", "stock": 1} for i in range(1001)]},
            "changes",
            id="1001-changes",
        ),
        pytest.param(
            {"changes": [{"changeId": "c", "sku": "1", "stock": 1}] * 2}, "changes", id="id-twice"
        ),
        pytest.param({"changes": [{"changeId": "c", "sku": "1"}]}, "changes[0]", id="no-value"),
        pytest.param(
            {"changes": [{"changeId": "c", "sku": "1", "price": -1}]},
            "changes[0].price",
            id="negative",
        ),
        pytest.param(
            {"changes": [{"changeId": "c", "sku": "1", "stock": "5"}]},
            "changes[0].stock",
            id="stock-as-text",
        ),
        pytest.param(
            {"changes": [{"changeId": "c", "sku": "1", "price": 19.9}]},
            "changes[0].price",
            id="fraction",
        ),
        pytest.param(
            {"changes": [{"changeId": "c" * 201, "sku": "1", "stock": 1}]},
            "changes[0].changeId",
            id="id-too-long",
        ),
        pytest.param(
            {"changes": [{"changeId": "", "sku": "1", "stock": 1}]},
            "changes[0].changeId",
            id="id-empty",
        ),
        pytest.param(
            {"changes": [{"changeId": "c", "sku": "1", "price": 1, "listprice": 2}]},
            "changes[0].listprice",
            id="misspelt",
        ),
        pytest.param([{"changeId": "c", "sku": "1", "stock": 1}], "body", id="not-an-object"),
    ],
)
async def test_invalid_reports_are_422_naming_the_field(
    stack: Stack, body: Any, field: str
) -> None:
    response = await stack.ops.post("/catalog/changes", json=body, headers=AUTHORIZED)

    message = assert_error(response, 422, "InvalidRequest")
    assert message.startswith(f"{field}: "), message
    assert response.json()["error"]["details"][0]["field"] == field


async def test_a_body_that_is_not_json_is_400(stack: Stack) -> None:
    response = await stack.ops.post(
        "/catalog/changes",
        content=b'{"changes": [',
        headers=AUTHORIZED | {"Content-Type": "application/json"},
    )

    assert_error(response, 400, "MalformedJson")


async def test_reported_stock_and_price_changes_reach_the_marketplace(stack: Stack) -> None:
    stocked, priced = listed(stack, stock=10), listed(stack, price=1000)
    for sku in (stocked, priced):  # the load's own notifications first
        await wait_for_notifications(stack, sku, "price", 1)
        await wait_for_notifications(stack, sku, "inventory", 1)

    answer = await report(
        stack,
        {"changeId": f"{stocked}-erp", "sku": stocked, "stock": 0},
        {"changeId": f"{priced}-erp", "sku": priced, "price": 900},
    )

    assert answer.status_code == 200, answer.text
    inventory = await wait_for_notifications(stack, stocked, "inventory", 2)
    price = await wait_for_notifications(stack, priced, "price", 2)
    assert_is_vtex_notification(inventory[-1], stocked, "inventory")
    assert_is_vtex_notification(price[-1], priced, "price")
    assert inventory[-1].status == price[-1].status == 202
    # Only what changed: no price notification for the stock change, nor the reverse.
    await asyncio.sleep(0.5)
    assert len(notifications(stack, stocked, "price")) == 1
    assert len(notifications(stack, priced, "inventory")) == 1


# ── The command ────────────────────────────────────────────────────────────────────────────────


async def test_the_command_applies_one_change_or_a_batch_file(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one, two = listed(stack, stock=10), listed(stack, stock=10)
    batch = tmp_path / "batch.json"
    batch.write_text(
        json.dumps(
            {
                "changes": [
                    {"changeId": f"{two}-1", "sku": two, "stock": 2},
                    # The single change's, sent again.
                    {"changeId": f"{one}-1", "sku": one, "stock": 3, "price": 777},
                ]
            }
        )
    )
    # The stack's warehouse, as its DATA_DIR names it, for the command run here and as a process.
    monkeypatch.setenv("DATA_DIR", str(stack.settings.data_dir))
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    monkeypatch.delenv("WAREHOUSE_DB", raising=False)
    get_settings.cache_clear()
    try:
        single = main(["change", one, "--change-id", f"{one}-1", "--stock", "3", "--price", "777"])
        single_out = capsys.readouterr()
        unknown = main(["change", "nope", "--change-id", "x", "--stock", "1"])
        unknown_out = capsys.readouterr()
    finally:
        get_settings.cache_clear()
    # One run as a process: `python -m activities.catalog` as the seller runs it.
    from_file = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "activities.catalog", "change", "--file", str(batch)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert single == 0, single_out.err
    assert single_out.out.splitlines() == [
        "catalog: 1 applied, 0 applied before (left as they are)",
        f"  applied         {one}-1  SKU {one}",
    ]
    assert unknown == 1 and "nope" in unknown_out.err and not unknown_out.out
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.splitlines() == [
        "catalog: 1 applied, 1 applied before (left as they are)",
        f"  applied         {two}-1  SKU {two}",
        f"  applied before  {one}-1  SKU {one}",
    ]
    offers = Catalog.from_settings(stack.settings).offers([one, two])
    assert (offers[one].price, offers[one].available, offers[two].available) == (777, 3, 2)


def test_the_command_names_each_mistake_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_json, stock_as_text = tmp_path / "a.json", tmp_path / "b.json"
    not_json.write_text('{"changes": [')
    too_deep = tmp_path / "c.json"
    too_deep.write_text("[" * 100_000 + "]" * 100_000)
    stock_as_text.write_text(json.dumps({"changes": [{"changeId": "c", "sku": "1", "stock": "5"}]}))

    def run(*args: str) -> tuple[int, str]:
        try:
            status = main(["change", *args])
        except SystemExit as exit:  # argparse's usage errors and --help
            status = int(exit.code or 0)
        captured = capsys.readouterr()
        return status, captured.out + captured.err

    cases = {
        "no values": run("1", "--change-id", "c"),
        "no id": run("1", "--stock", "1"),
        "both": run("1", "--file", str(not_json)),
        "negative": run("1", "--change-id", "c", "--price", "-5"),
        "not a number": run("1", "--change-id", "c", "--stock", "five"),
        "no file": run("--file", str(tmp_path / "missing.json")),
        "not json": run("--file", str(not_json)),
        "stock as text": run("--file", str(stock_as_text)),
        "too deep": run("--file", str(too_deep)),
    }
    help_status, help_text = run("--help")

    assert {name: status for name, (status, _) in cases.items()} == dict.fromkeys(cases, 2)
    assert "at least one of --price" in cases["no values"][1]
    assert "--change-id" in cases["no id"][1]
    assert "--price: Input should be greater than or equal to 0" in cases["negative"][1]
    assert "No such file" in cases["no file"][1] and "is not JSON" in cases["not json"][1]
    assert "changes[0].stock: Input should be a valid integer" in cases["stock as text"][1]
    assert "nested too deeply" in cases["too deep"][1]
    assert not any("Traceback" in text for _, text in cases.values())
    assert help_status == 0 and "--list-price" in help_text and "--file" in help_text


async def test_reports_waiting_for_the_write_lock_leave_the_simulation_its_threads(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Reports wait for the warehouse's write lock while another process (a catalog load) holds
    # it. Run in the event loop's default pool, they held all its threads, and the VTEX-facing
    # simulation, which reads the catalog there within 2 s, was answered 503.
    async with running_stack(
        temporal_env, tmp_path, ops_token=OPS_TOKEN, default_stock=None
    ) as stack:
        Catalog.from_settings(stack.settings).load(
            [CatalogEntry(sku="S1", name="S1", price=1000, stock=10)]
        )
        cart = {
            "items": [{"id": "S1", "quantity": 1, "seller": "1"}],
            "postalCode": "22250-040",
            "country": "BRA",
        }
        writer = sqlite3.connect(stack.settings.data_dir / "warehouse.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            threads = min(32, (os.cpu_count() or 1) + 4)  # the default pool's size
            reports = [
                asyncio.create_task(
                    stack.ops.post(
                        "/catalog/changes",
                        json={"changes": [{"changeId": f"erp-{n}", "sku": "S1", "stock": 5}]},
                        headers=AUTHORIZED,
                    )
                )
                for n in range(threads + 2)
            ]
            await asyncio.sleep(0.5)
            simulation = await stack.http.post("/pvt/orderForms/simulation", json=cart)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        answers = await asyncio.gather(*reports)

    assert simulation.status_code == 200, simulation.text
    assert [answer.status_code for answer in answers] == [200] * len(answers)


STRESS_SKUS = ["a", "B", "a-1", "A", "b_2", "Z", "é"]
STRESS_SECONDS = 2.0


def test_changes_loads_delists_and_reservations_at_once_keep_the_books(
    warehouse_store: str | Path,
) -> None:
    # Threads applying changes, loading and delisting, reserving and releasing the same SKUs
    # (whose order differs between Python and PostgreSQL's collation) for STRESS_SECONDS: no
    # deadlock, no error but the documented refusals, and the books add up. On PostgreSQL a
    # load beside a delisting of the same SKU once failed with NoResultFound.
    catalog = Catalog(warehouse_store)
    catalog.load([CatalogEntry(sku=s, name=s, price=100, stock=50) for s in STRESS_SKUS])
    books = WarehouseBooks(store.store_url(warehouse_store), default_stock=None)
    errors: Counter[str] = Counter()
    done = Counter[str]()
    stop = time.monotonic() + STRESS_SECONDS

    def changes(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            batch = [
                CatalogChange(
                    change_id=f"c-{uuid.uuid4().hex}",
                    sku=sku,
                    stock=rng.randrange(0, 60),
                    price=rng.randrange(1, 500),
                )
                for sku in rng.sample(STRESS_SKUS, rng.randrange(1, len(STRESS_SKUS)))
            ]
            try:
                catalog.apply_changes(batch)
                done["change"] += 1
            except ChangeRefused:
                done["change refused"] += 1
            except Exception as err:
                errors[f"apply_changes: {type(err).__name__}: {str(err)[:120]}"] += 1

    def loads(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            entries = [
                CatalogEntry(sku=s, name=s, price=rng.randrange(1, 500), stock=rng.randrange(60))
                for s in rng.sample(STRESS_SKUS, rng.randrange(1, len(STRESS_SKUS)))
            ]
            try:
                if rng.random() < 0.5:
                    catalog.delist(rng.sample(STRESS_SKUS, 2))
                else:
                    catalog.load(entries)
                done["load/delist"] += 1
            except Exception as err:
                errors[f"load/delist: {type(err).__name__}: {str(err)[:120]}"] += 1

    def orders(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            order = WarehouseOrder(
                order_id=f"SLR-{uuid.uuid4().hex[:10]}",
                marketplace_order_id="x",
                lines=[
                    OrderLine(sku=s, quantity=rng.randrange(1, 4), price=100)
                    for s in rng.sample(STRESS_SKUS, rng.randrange(1, 4))
                ],
            )
            try:
                books.reserve(order)
                if rng.random() < 0.7:
                    books.release(order.order_id)
                done["order"] += 1
            except OutOfStock:
                done["out of stock"] += 1
            except Exception as err:
                errors[f"reserve/release: {type(err).__name__}: {str(err)[:120]}"] += 1

    threads = [
        *(threading.Thread(target=changes, args=(n,)) for n in range(3)),
        *(threading.Thread(target=loads, args=(10 + n,)) for n in range(3)),
        *(threading.Thread(target=orders, args=(20 + n,)) for n in range(3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # The books add up: per SKU, available and reserved are what the ledger says.
    with store.engine_for(books.url).connect() as connection:
        rows = connection.execute(select(store.ledger)).all()
        levels = {r.sku: r for r in connection.execute(select(store.stock)).all()}
    moved: dict[str, Counter[str]] = {}
    for row in rows:
        moved.setdefault(row.sku, Counter())[row.movement] += row.quantity
    wrong = {}
    for sku, m in moved.items():
        available = m["restock"] - m["writeoff"] - m["reserve"] + m["release"]
        reserved = m["reserve"] - m["release"] - m["ship"]
        level = levels[sku]
        if (available, reserved) != (level.available, level.reserved) or level.available < 0:
            wrong[sku] = ((available, reserved), (level.available, level.reserved))
    assert not errors and not wrong, (dict(done), dict(errors), wrong)
    assert done["change"] > 0 and done["order"] > 0 and done["load/delist"] > 0, dict(done)
