"""A workflow that breaks the rule: it reads the wall clock. For tests/test_sandbox.py only."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import workflow


@workflow.defn
class CarelessWorkflow:
    """Answers the worker's wall clock: a different answer on every replay."""

    @workflow.run
    async def run(self, name: str) -> str:
        """The forbidden call. (One argument: with none, mypy 2.4 loses the types of
        get_workflow_handle_for's arguments elsewhere, in bench/suite.py.)"""
        return datetime.now(UTC).isoformat()
