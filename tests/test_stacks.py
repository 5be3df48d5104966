"""The test stacks fail fast, with the error, when what they start cannot come up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

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
