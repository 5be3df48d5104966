"""The test stacks fail fast, with the error, when what they start cannot come up."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from devtools.processes import _port_slice, free_ports
from tests.stack import running_stack


async def test_the_in_process_stack_fails_at_once_when_its_worker_cannot_build_its_warehouse(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Before, the stack waited 30 s for a worker that had already died, and said only that.
    started = time.monotonic()
    with pytest.raises(ModuleNotFoundError, match="no_such_erp"):
        async with running_stack(temporal_env, tmp_path, warehouse="no_such_erp:Warehouse"):
            pass
    assert time.monotonic() - started < 20


def test_ports_chosen_at_once_by_many_threads_are_never_the_same() -> None:
    # The README's sessions start their stacks from several threads: a port one of them chose
    # but had not yet listened on was free for another to choose too (a CI run lost a session
    # to "address already in use" on its ops listener).
    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(lambda _: free_ports(7), range(64)))
    ports = [port for batch in batches for port in batch]
    assert len(ports) == len(set(ports)) == 64 * 7
    low, high = _port_slice()
    assert all(low <= port < high for port in ports)
