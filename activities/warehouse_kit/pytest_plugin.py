"""The warehouse kit as tests of an adapter's own suite: one test per clause.

    pytest_plugins = ["activities.warehouse_kit.pytest_plugin"]

    @pytest.fixture
    def warehouse_kit_target(tmp_path: Path) -> KitTarget:
        return KitTarget(lambda: ErpWarehouse(...), skus=["1", "2"], unreachable=...)

    test_erp_warehouse_keeps_the_contract = warehouse_kit_tests()

Each test runs one clause of activities/warehouse_kit/clauses.py against a fresh adapter and
fails with the clause's report (what happened, what was expected, the calls) unless it holds; a
clause the target cannot run (no `unreachable`, a parcel not delivered within
`track_bound_seconds`) fails too, saying what it needs: leave it out with
`warehouse_kit_tests(clauses=...)` rather than let it pass unchecked. The tests are coroutines:
they need pytest-asyncio, as the connector's suite has.

PYTEST_DONT_REWRITE: this module asserts nothing (it fails with `pytest.fail`), and a suite
imports it from the module that names it in `pytest_plugins`, before pytest could rewrite it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest

from activities.warehouse_kit.clauses import CLAUSES
from activities.warehouse_kit.runner import (
    DEFAULT_RETRY_BOUND_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    DEFAULT_TRACK_BOUND_SECONDS,
    KitSetupError,
    run_kit,
)
from activities.warehouse_kit.trial import WarehouseFactory


@dataclass(frozen=True)
class KitTarget:
    """The adapter a suite checks, as `run_kit` takes it."""

    # Builds a fresh adapter (sync or async, no argument).
    make_warehouse: WarehouseFactory
    # At least two SKUs it stocks, 25 units each or more.
    skus: Sequence[str]
    # Builds it pointed at a system that is down; None: that clause cannot run.
    unreachable: WarehouseFactory | None = None
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    retry_bound_seconds: float = DEFAULT_RETRY_BOUND_SECONDS
    # A parcel not delivered within it leaves tracking_never_goes_back not run (a failure here).
    track_bound_seconds: float = DEFAULT_TRACK_BOUND_SECONDS


@pytest.fixture
def warehouse_kit_target() -> KitTarget:
    """Overridden by the suite: the adapter its `warehouse_kit_tests` check."""
    pytest.fail(
        "warehouse_kit_tests() needs a fixture named warehouse_kit_target returning a "
        "KitTarget (activities/warehouse_kit/pytest_plugin.py)",
        pytrace=False,
    )


def warehouse_kit_tests(
    target: str = "warehouse_kit_target", *, clauses: Iterable[str] | None = None
) -> Callable[[str, pytest.FixtureRequest], Awaitable[None]]:
    """A test, parametrized with one case per clause, that runs it against the KitTarget the
    fixture named `target` gives. Assign it to a `test_...` name of the suite's module."""
    names = list(CLAUSES if clauses is None else clauses)
    unknown = [name for name in names if name not in CLAUSES]
    if unknown:
        raise KitSetupError(f"unknown clause {', '.join(unknown)}: the clauses are {list(CLAUSES)}")

    # usefixtures, not getfixturevalue alone: a parametrized target (e.g. one per database)
    # then multiplies the clauses.
    @pytest.mark.asyncio
    @pytest.mark.usefixtures(target)
    @pytest.mark.parametrize("warehouse_kit_clause", names)
    async def keeps_the_contract(warehouse_kit_clause: str, request: pytest.FixtureRequest) -> None:
        kit_target: KitTarget = request.getfixturevalue(target)
        report = await run_kit(
            kit_target.make_warehouse,
            skus=kit_target.skus,
            clauses=[warehouse_kit_clause],
            unreachable=kit_target.unreachable,
            settle_seconds=kit_target.settle_seconds,
            retry_bound_seconds=kit_target.retry_bound_seconds,
            track_bound_seconds=kit_target.track_bound_seconds,
        )
        (result,) = report.clauses
        if result.status != "held":
            pytest.fail("\n".join(result.lines()), pytrace=False)

    return keeps_the_contract
