"""WORKFLOW_SANDBOX: what each sandbox lets workflow code do (worker.py `workflow_runner`).

`fresh` (the test suite's) refuses a non-deterministic call; `shared` (the default, ~4 ms of CPU
less per order) lets it through, which is why the suite runs `fresh`.
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config import Settings
from tests.careless_workflow import CarelessWorkflow
from worker import workflow_runner


async def _run_careless(env: WorkflowEnvironment, sandbox: str) -> tuple[object, list[str]]:
    queue = f"sandbox-{uuid.uuid4()}"
    runner = workflow_runner(Settings(workflow_sandbox=sandbox))  # type: ignore[arg-type]
    async with Worker(
        env.client, task_queue=queue, workflows=[CarelessWorkflow], workflow_runner=runner
    ):
        handle = await env.client.start_workflow(
            CarelessWorkflow.run, "careless", id=f"careless-{uuid.uuid4()}", task_queue=queue
        )
        failures: list[str] = []
        for _ in range(100):  # 10 s
            status = (await handle.describe()).status
            failures = [
                event.workflow_task_failed_event_attributes.failure.message
                async for event in handle.fetch_history_events()
                if event.HasField("workflow_task_failed_event_attributes")
            ]
            if status != WorkflowExecutionStatus.RUNNING or failures:
                break
            await asyncio.sleep(0.1)
        if status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")  # stuck on its failing task, as it should be
        return status, failures


async def test_the_fresh_sandbox_refuses_the_wall_clock(temporal_env: WorkflowEnvironment) -> None:
    status, failures = await _run_careless(temporal_env, "fresh")
    assert status == WorkflowExecutionStatus.RUNNING
    assert failures and "datetime.datetime.now" in failures[0]


async def test_the_shared_sandbox_lets_it_through(temporal_env: WorkflowEnvironment) -> None:
    status, failures = await _run_careless(temporal_env, "shared")
    assert (status, failures) == (WorkflowExecutionStatus.COMPLETED, [])


def test_the_worker_shares_modules_unless_told_otherwise() -> None:
    assert Settings().workflow_sandbox == "shared"
    assert workflow_runner(Settings()).restrictions.passthrough_all_modules
    assert not workflow_runner(
        Settings(workflow_sandbox="fresh")
    ).restrictions.passthrough_all_modules
