"""The warehouse kit (activities/warehouse_kit): the simulated warehouse keeps every clause of the
`Warehouse` contract, on SQLite and on PostgreSQL (through the kit's pytest plugin, as an
adapter's own suite would use it); each adapter of tests/broken_warehouses.py breaks the clause
it is written to break, and only that one, the report showing the calls that broke it; servers
that keep the warehouse API's own rules (answers replayed by Idempotency-Key, `202 Accepted`)
keep every clause; what the kit cannot check is said not run, never held; and the command prints
and exits as docs/warehouse-kit.md shows."""

from __future__ import annotations

import asyncio
import math
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request, Response
from starlette.middleware.base import BaseHTTPMiddleware

from activities.http_warehouse import HttpWarehouse
from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse_kit.__main__ import main
from activities.warehouse_kit.clauses import CLAUSES
from activities.warehouse_kit.pytest_plugin import KitTarget, warehouse_kit_tests
from activities.warehouse_kit.runner import ClauseResult, KitSetupError, run_kit
from config import Settings
from devtools.postgres import TemporaryPostgres
from devtools.processes import free_ports
from devtools.reference_warehouse import create_app
from devtools.serving import serve_asgi
from tests import broken_warehouses as broken

pytest_plugins = ["activities.warehouse_kit.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "warehouse-kit.md"
SKUS = ["KIT-A", "KIT-B"]
# Fast enough that the kit's polls see the parcel collected, in transit and delivered at once.
DELIVERY_SECONDS = 0.1
# The reference server's secret, in the tests that run the HTTP adapter against it.
SECRET = "kit-secret-0123456789abcdef"


def simulated(store: str | Path, delivery_seconds: float = DELIVERY_SECONDS) -> SimulatedWarehouse:
    return SimulatedWarehouse(
        store, default_stock=1000, step_seconds=0, delivery_seconds=delivery_seconds
    )


def unreachable_url() -> str:
    """The warehouse's PostgreSQL on a port nothing listens on: a database that is down."""
    (port,) = free_ports(1)
    return f"postgresql+psycopg://kit@127.0.0.1:{port}/kit"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def warehouse_kit_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> KitTarget:
    """The simulated warehouse on a fresh SQLite file, then a fresh PostgreSQL database."""
    store: str | Path
    if request.param == "sqlite":
        store = tmp_path_factory.mktemp("kit") / "warehouse.db"
    else:
        server: TemporaryPostgres = request.getfixturevalue("postgres")
        store = server.create_database(f"kit_{uuid.uuid4().hex[:12]}")
    down = unreachable_url()
    return KitTarget(
        lambda: simulated(store),
        SKUS,
        unreachable=lambda: SimulatedWarehouse(down, step_seconds=0),
    )


test_the_simulated_warehouse_keeps_the_clause = warehouse_kit_tests()

# The clauses a broken adapter is also run through, to show it breaks its own alone (the
# cancellations' and the races' are long, and tracking waits for a delivery: only the adapters
# that break them run them).
SLOW_CLAUSES = {
    "cancelled_calls_are_undone",
    "invoice_and_release_have_one_winner",
    "tracking_never_goes_back",
}


@pytest.mark.parametrize(
    ("adapter", "clause", "reason", "calls"),
    [
        pytest.param(
            broken.LabelMintedAnew,
            "repeated_calls_act_once",
            r"^create_label twice in sequence gave two answers: label_id LBL-\w+ then LBL-\w+",
            [r"create_label\((\S+)\) -> label LBL-", r"create_label\((\S+)\) -> label LBL-"],
            id="LabelMintedAnew",
        ),
        pytest.param(
            broken.ReserveIdempotentOnlyInSequence,
            "repeated_calls_act_once",
            r"^reserve twice at once gave two answers: reserved_at ",
            [r"reserve\(\S+: 1 of KIT-B\) -> reservation", r"reserve\(\S+: 1 of KIT-B\) -> reserv"],
            id="ReserveIdempotentOnlyInSequence",
        ),
        pytest.param(
            broken.ReserveLineByLine,
            "reserve_is_all_or_nothing",
            r"^the refused order \S+ holds 1 of KIT-A$",
            [
                r"reserve\(\S+: 1 of KIT-A, \d+ of KIT-B\) -> raised OutOfStock: SKU KIT-B",
                r"reserve\(\S+: 1000000000 of KIT-A\) -> raised OutOfStock: .* \d+ available",
            ],
            id="ReserveLineByLine",
        ),
        pytest.param(
            broken.ReserveCommitsAfterCancel,
            "cancelled_calls_are_undone",
            r"^reserve cancelled after 0\.0s, then released and voided: \d+ of KIT-A available",
            [r"reserve\(\S+: 1 of KIT-A\) -> cancelled", r"release\(\S+\) -> False"],
            id="ReserveCommitsAfterCancel",
        ),
        pytest.param(
            broken.LabelBoughtAfterItsVoid,
            "cancelled_calls_are_undone",
            r"^create_label cancelled after 0\.0s, then released and voided: void_label answered "
            r"False, yet after the 0\.2s settle time void_label answered True: a label bought "
            r"after its void$",
            [
                r"create_label\(\S+\) -> cancelled",
                r"release\(\S+\) -> True",
                r"void_label\(\S+\) -> False",
                r"void_label\(\S+\) -> True",
            ],
            id="LabelBoughtAfterItsVoid",
        ),
        pytest.param(
            broken.InvoiceChecksThenActs,
            "invoice_and_release_have_one_winner",
            r"^issue_invoice and release of \S+ at once: issue_invoice invoice NFe-\d+; "
            r"release True$",
            [r"issue_invoice\(\S+\) -> invoice NFe-|release\(\S+\) -> True"] * 2,
            id="InvoiceChecksThenActs",
        ),
        pytest.param(
            broken.ReleaseForgetsUnknownOrders,
            "release_before_reserve_holds_nothing",
            r"^reserve after its release answered and holds 1 of KIT-A$",
            [r"release\((\S+)\) -> False", r"reserve\(\S+: 1 of KIT-A\) -> reservation"],
            id="ReleaseForgetsUnknownOrders",
        ),
        pytest.param(
            broken.TrackDropsEvents,
            "tracking_never_goes_back",
            r"^track answered \d events?: .+, then \d events?.* \(.+ gone\)$",
            [r"track\(\S+\) -> \d events?", r"track\(\S+\) -> \d events?"],
            id="TrackDropsEvents",
        ),
        pytest.param(
            broken.DownAsRuntimeError,
            "unreachable_system_fails_retryably",
            r"^reserve raised RuntimeError: warehouse failed: warehouse database: .*; pick raised",
            [r"reserve\(\S+: 1 of KIT-A\) -> raised RuntimeError"],
            id="DownAsRuntimeError",
        ),
    ],
)
async def test_a_broken_adapter_breaks_its_clause(
    tmp_path: Path,
    adapter: type[broken.WrappedWarehouse],
    clause: str,
    reason: str,
    calls: list[str],
) -> None:
    store = tmp_path / "warehouse.db"
    down = unreachable_url()
    report = await run_kit(
        lambda: adapter(simulated(store)),
        skus=SKUS,
        clauses=[name for name in CLAUSES if name not in SLOW_CLAUSES or name == clause],
        unreachable=(
            (lambda: adapter(SimulatedWarehouse(down, step_seconds=0)))
            if adapter is broken.DownAsRuntimeError
            else None
        ),
    )

    assert [result.name for result in report.broken] == [clause], report.text()
    (result,) = report.broken
    assert re.search(reason, result.reason), result.reason
    assert result.expected
    _assert_in_order(result, calls)
    # The calls shown are those of the order that broke it, not the run's hundreds.
    assert len(result.calls) <= 12, report.text()
    assert {r.status for r in report.clauses if r is not result} <= {"held", "not run"}
    assert not report.ok


def _assert_in_order(result: ClauseResult, patterns: list[str]) -> None:
    """Each pattern matches one of the calls shown, in this order."""
    remaining = iter(result.calls)
    for pattern in patterns:
        assert any(re.search(pattern, call) for call in remaining), (
            f"no call matching {pattern!r} in order in:\n" + "\n".join(result.calls)
        )


def undoing_deliveries(store: Path, delivery_seconds: float) -> broken.WrappedWarehouse:
    return broken.DeliveryUndoneNowAndThen(simulated(store, delivery_seconds))


async def test_tracking_a_parcel_not_delivered_in_time_is_not_run_rather_than_held(
    tmp_path: Path,
) -> None:
    # One adapter that undoes the delivery now and then, with a carrier that delivers in 0.1 s
    # and one that takes 30 s (make run's setting; a real carrier takes days).
    fast, slow = [
        await run_kit(
            partial(undoing_deliveries, tmp_path / f"{seconds}.db", seconds),
            skus=SKUS,
            clauses=["tracking_never_goes_back"],
            track_bound_seconds=0.3,
        )
        for seconds in (DELIVERY_SECONDS, 30.0)
    ]

    assert fast.clauses[0].status == "broken", fast.text()
    assert re.match(
        r"track answered 3 events: Delivered, delivered, then 2 events", fast.clauses[0].reason
    )
    (result,) = slow.clauses
    assert result.status == "not run", slow.text()
    assert "the shipped parcel did not move (1 event: Collected by Simulated Carrier)" in (
        result.reason
    )
    assert "CARRIER_DELIVERY_TIME=1s" in result.reason
    assert "--track-bound SECONDS" in result.reason
    assert slow.text().splitlines()[-1] == (
        "held: 0 of 1 clauses; 1 not run, so not checked (tracking_never_goes_back)"
    )


async def test_a_clause_that_times_out_names_the_call_that_hangs(tmp_path: Path) -> None:
    store = tmp_path / "warehouse.db"
    built: list[broken.FirstReleaseHangs] = []

    def make() -> broken.FirstReleaseHangs:
        built.append(broken.FirstReleaseHangs(simulated(store)))
        return built[-1]

    # 3 s: every other call of the clause ends well within it, also on a machine busy with the
    # rest of the suite (with 1 s, a run of seven pytest-xdist workers saw 30 calls still running).
    report = await run_kit(
        make, skus=SKUS, clauses=["invoice_and_release_have_one_winner"], clause_timeout_seconds=3
    )

    (result,) = report.clauses
    hung = built[-1].hung
    # The release that hangs, though 19 other races' calls started after it.
    assert re.fullmatch(
        rf"still running after 3s: \+\d\.\d+s release\({hung}\) -> still running", result.reason
    ), report.text()
    assert result.expected == "every call answers, or fails, in bounded time"
    shown = f"release({hung}) -> still running after 3s, then cancelled by the kit"
    assert result.calls[0].endswith(shown), result.calls


@pytest.mark.parametrize(
    "failure",
    [ConnectionResetError("blip"), RuntimeError("bug")],
    ids=["retryable", "fault"],
)
async def test_a_stock_probe_that_reserves_is_given_back(
    tmp_path: Path, failure: Exception
) -> None:
    # An adapter that takes any quantity: the kit's stock probe reserves a billion units. Its
    # first release fails, retryably (retried) or not (the clause's clean-up releases it).
    store = tmp_path / "warehouse.db"
    report = await run_kit(
        lambda: broken.BackOrdersReleaseFailsOnce(simulated(store), failure),
        skus=SKUS,
        clauses=["reserve_is_all_or_nothing"],
    )

    (result,) = report.broken
    assert result.reason.startswith(
        "reserve of 1000000000 of KIT-A answered reservation of 1000000000 of KIT-A"
    ), result.reason
    if isinstance(failure, RuntimeError):
        assert "; giving it back raised RuntimeError: bug (if the kit's clean-up fails" in (
            result.reason
        )
    else:
        assert any("raised ConnectionResetError: blip, retried" in call for call in result.calls)
    books = simulated(store)
    level = await books.stock_level("KIT-A")
    assert level.reserved == 0, f"{level.reserved} units of KIT-A left reserved by the kit"


async def test_a_call_that_stays_retryable_is_reported_so_not_as_ending_the_step(
    tmp_path: Path,
) -> None:
    store = tmp_path / "warehouse.db"
    report = await run_kit(
        lambda: broken.PickNeverDone(simulated(store)),
        skus=SKUS,
        clauses=["repeated_calls_act_once"],
        retry_bound_seconds=0.1,
    )

    (result,) = report.broken
    assert re.fullmatch(
        r"pick\((\S+)\) still failed retryably after \d+ tries over 0\.\ds, the last raised "
        r"WarehouseUnavailable: picking of \1 under way; ask again",
        result.reason,
    ), result.reason
    assert result.expected.startswith("an answer once retried: the activities retry")
    _assert_in_order(result, [r"pick\(\S+\) -> raised WarehouseUnavailable: .*, retried$"] * 2)
    assert "for good" not in report.text()


async def test_run_kit_refuses_a_duration_that_is_no_number_of_seconds(tmp_path: Path) -> None:
    durations = [
        "settle_seconds",
        "unreachable_bound_seconds",
        "retry_bound_seconds",
        "track_bound_seconds",
        "clause_timeout_seconds",
    ]
    for option in durations:
        for value in (math.nan, math.inf, -1.0):
            duration: dict[str, Any] = {option: value}
            with pytest.raises(KitSetupError, match=f"^{option} must be a finite number of"):
                await run_kit(lambda: simulated(tmp_path / "warehouse.db"), skus=SKUS, **duration)


# ── Servers that keep the warehouse API's own rules ─────────────────────────────────────────


class ReplayByIdempotencyKey(BaseHTTPMiddleware):
    """The usual way to keep the API's "a call repeated must answer what the first did": the
    first 2xx answer of each Idempotency-Key, answered again to every repeat (a second
    release then answers True, as the first did)."""

    def __init__(self, app: Any, replayed: list[str]) -> None:
        super().__init__(app)
        self.answers: dict[str, tuple[int, bytes, str]] = {}
        self.replayed = replayed

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        key = request.headers.get("idempotency-key")
        if key in self.answers:
            self.replayed.append(key)
            status, body, media_type = self.answers[key]
            return Response(body, status_code=status, media_type=media_type)
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])
        if key and 200 <= response.status_code < 300:
            self.answers[key] = (response.status_code, body, response.media_type or "")
        return Response(body, response.status_code, dict(response.headers), response.media_type)


class PickTakesAMoment(BaseHTTPMiddleware):
    """A picker who needs a moment: each order's first PUT of its picking is answered `202
    Accepted` (under way, ask again: docs/plugging-in-your-warehouse.md); asked again, done."""

    def __init__(self, app: Any, accepted: list[str]) -> None:
        super().__init__(app)
        self.accepted = accepted

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        path = request.url.path
        if request.method == "PUT" and path.endswith("/picking") and path not in self.accepted:
            self.accepted.append(path)
            return Response(status_code=202)
        response: Response = await call_next(request)
        return response


@asynccontextmanager
async def reference_server(
    tmp_path: Path, middleware: Callable[[Any, list[str]], BaseHTTPMiddleware], seen: list[str]
) -> AsyncIterator[str]:
    """The reference server, behind the middleware, on a warehouse of its own; its URL."""
    books = SimulatedWarehouse(tmp_path / "reference.db", default_stock=100, step_seconds=0)
    app = create_app(books, SECRET)
    app.add_middleware(middleware, seen)
    try:
        async with serve_asgi(app) as url:
            yield url
    finally:
        await books.close()


async def test_a_server_that_replays_answers_by_idempotency_key_keeps_the_contract(
    tmp_path: Path,
) -> None:
    replayed: list[str] = []
    async with reference_server(tmp_path, ReplayByIdempotencyKey, replayed) as url:
        report = await run_kit(
            lambda: HttpWarehouse(url, SECRET, timeout_seconds=5),
            skus=["1", "2"],
            clauses=["repeated_calls_act_once"],
        )

    assert report.ok, report.text()
    # release and void_label twice: the second answered True, the first's answer replayed.
    assert {key.rpartition(":")[2] for key in replayed} >= {"release", "void-label"}, replayed


class ReplaysFirstAnswers(broken.WrappedWarehouse):
    """The simulated warehouse answering each repeated release and void_label as the first
    did, as a server replaying by Idempotency-Key does (faster than over HTTP)."""

    def __init__(self, inner: SimulatedWarehouse) -> None:
        super().__init__(inner)
        self.answers: dict[tuple[str, str], bool] = {}

    async def release(self, order_id: str) -> bool:
        answer = self.answers.get(("release", order_id))
        if answer is None:
            answer = self.answers["release", order_id] = await self.inner.release(order_id)
        return answer

    async def void_label(self, order_id: str) -> bool:
        answer = self.answers.get(("void_label", order_id))
        if answer is None:
            answer = self.answers["void_label", order_id] = await self.inner.void_label(order_id)
        return answer


async def test_cancelled_calls_undone_by_answers_that_replay_hold(tmp_path: Path) -> None:
    # The compensation's release and void_label asked again after the settle time answer what
    # they first did: True again is a replay, not a reservation or a label that came late.
    built: list[ReplaysFirstAnswers] = []

    def make() -> ReplaysFirstAnswers:
        built.append(ReplaysFirstAnswers(simulated(tmp_path / "warehouse.db")))
        return built[-1]

    report = await run_kit(make, skus=SKUS, clauses=["cancelled_calls_are_undone"])

    assert report.ok, report.text()
    assert True in built[-1].answers.values()


async def test_a_server_answering_202_then_the_answer_keeps_the_contract(tmp_path: Path) -> None:
    accepted: list[str] = []
    async with reference_server(tmp_path, PickTakesAMoment, accepted) as url:
        report = await run_kit(
            lambda: HttpWarehouse(url, SECRET, timeout_seconds=5),
            skus=["1", "2"],
            clauses=["repeated_calls_act_once"],
        )

    assert report.ok, report.text()
    # Each order's first pick was under way (4 orders: shipped and canceled, twice each).
    assert len(accepted) == 4, accepted


def _clause_lines(output: str) -> list[tuple[str, str]]:
    """Each clause's (status, name) as the command printed them."""
    return re.findall(r"^(held|BROKEN|not run) +(\w+) ", output, flags=re.MULTILINE)


def _documented(arguments: str) -> list[tuple[str, str]]:
    """The clause lines docs/warehouse-kit.md shows under its command that ends with these
    arguments (a command may run on over lines ending in a backslash)."""
    text = DOC.read_text(encoding="utf-8")
    for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for command in re.findall(r"^\$ ((?:[^\n]*\\\n)*[^\n]*)", block, re.MULTILINE):
            if " ".join(command.replace("\\\n", " ").split()).endswith(arguments):
                return _clause_lines(block)
    raise AssertionError(f"{DOC.name} shows no run of ... {arguments}")


def _kit_environment(tmp_path: Path) -> dict[str, str]:
    """The simulated warehouse, fast and stocked, in a folder of its own."""
    return {
        "DATA_DIR": str(tmp_path),
        "DEFAULT_STOCK": "100",
        "FULFILLMENT_STEP_SECONDS": "0",
        "CARRIER_DELIVERY_TIME": "1s",
    }


async def test_the_command_holds_the_simulated_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The WAREHOUSE setting's default: the simulated warehouse.
    for key in os.environ:
        if key.startswith("WAREHOUSE"):
            monkeypatch.delenv(key)
    for key, value in _kit_environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    arguments = f"check --sku 1 --sku 2 --unreachable-env WAREHOUSE_URL={unreachable_url()}"

    # In a thread of its own: the command runs its own event loop.
    assert await asyncio.to_thread(main, arguments.split()) == 0
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert lines[0] == "Checking activities.simulated_warehouse:SimulatedWarehouse.from_settings"
    assert _clause_lines(output) == [("held", name) for name in CLAUSES]
    assert lines[-1] == f"held: {len(CLAUSES)} of {len(CLAUSES)} clauses"
    documented = "--unreachable-env WAREHOUSE_URL=postgresql+psycopg://kit@127.0.0.1:9/kit"
    assert _clause_lines(output) == _documented(documented)


async def test_the_command_shows_a_broken_clause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in _kit_environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    command = (
        "check tests.broken_warehouses:LabelMintedAnew.from_settings --sku 1 --sku 2 "
        "--clause repeated_calls_act_once --clause unreachable_system_fails_retryably"
    )

    # In a thread of its own: the command runs its own event loop.
    assert await asyncio.to_thread(main, command.split()) == 1
    output = capsys.readouterr().out
    assert _clause_lines(output) == [
        ("BROKEN", "repeated_calls_act_once"),
        ("not run", "unreachable_system_fails_retryably"),
    ]
    assert "expected: the second create_label answers what the first did" in output
    assert re.search(r"create_label\(kit-\w+-\d+\) -> label LBL-\w+ \(tracking SIM\d+\)", output)
    assert "--unreachable-env KEY=VALUE" in output
    assert output.splitlines()[-1] == (
        "BROKEN: 1 of 2 clauses (repeated_calls_act_once); 1 not run, so not checked "
        "(unreachable_system_fails_retryably)"
    )
    assert _clause_lines(output) == _documented(command)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("--sku 1", "the kit needs at least two SKUs the warehouse stocks, got ['1']"),
        ("--sku 1 --sku 2 --clause nope", "argument --clause: invalid choice: 'nope'"),
        ("--sku 1 --sku 2 --unreachable-env NOPE=1", "--unreachable-env 'NOPE=1': expected"),
        ("nowhere:Nothing --sku 1 --sku 2", "building the warehouse raised ModuleNotFoundError"),
        ("--sku 1 --sku 404", "SKU 404 has 0 units available; the kit needs at least 25"),
        (
            "--sku 1 --sku 2 --clause unreachable_system_fails_retryably",
            "nothing was checked: every clause asked was not run",
        ),
        # nan would make the kit wait for ever, then blame the adapter.
        ("--sku 1 --sku 2 --settle nan", "argument --settle: 'nan' is not a number of seconds"),
        ("--sku 1 --sku 2 --settle inf", "argument --settle: 'inf' is not a number of seconds"),
        ("--sku 1 --sku 2 --settle -1", "argument --settle: '-1' is not a number of seconds"),
        ("--sku 1 --sku 2 --track-bound soon", "argument --track-bound: 'soon' is not a number"),
    ],
)
async def test_the_command_refuses_what_it_cannot_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: str,
    message: str,
) -> None:
    # The simulated warehouse, without DEFAULT_STOCK: SKU 1 and 2 restocked, 404 has none.
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DEFAULT_STOCK", raising=False)
    warehouse = SimulatedWarehouse.from_settings(Settings())
    await warehouse.restock("1", 50)
    await warehouse.restock("2", 50)
    try:
        status: int | str | None = await asyncio.to_thread(main, ["check", *arguments.split()])
    except SystemExit as exit:
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


def test_the_commands_help_names_every_clause(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["check", "--help"])
    assert exit.value.code == 0
    output = capsys.readouterr().out
    assert all(f"  {name}: " in output for name in CLAUSES), output
