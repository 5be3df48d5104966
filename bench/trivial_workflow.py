"""Temporal's floor on this server, for `make bench`: a workflow that does nothing but answer two
updates, so that its update-with-start and its update cost what Temporal and the SDK cost, with the
same data converter as the orders' and no activity.

Run by its own worker process (`python -m bench.trivial_worker`) on a task queue of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow


@dataclass
class TrivialInput:
    """What the workflow is started with."""

    name: str


@dataclass
class TrivialRequest:
    """The input of either update."""

    name: str


@dataclass
class TrivialAnswer:
    """The output of either update."""

    name: str
    calls: int


@workflow.defn
class TrivialWorkflow:
    """Waits for `finish`; answers `start` (the update of its update-with-start) and `poke`."""

    def __init__(self) -> None:
        self.calls = 0
        self.finished = False

    @workflow.run
    async def run(self, started: TrivialInput) -> TrivialAnswer:
        """Stay open until `finish`."""
        await workflow.wait_condition(lambda: self.finished)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return TrivialAnswer(name=started.name, calls=self.calls)

    @workflow.update
    async def start(self, request: TrivialRequest) -> TrivialAnswer:
        """The update sent with the start (as a placement is)."""
        self.calls += 1
        return TrivialAnswer(name=request.name, calls=self.calls)

    @workflow.update
    async def poke(self, request: TrivialRequest) -> TrivialAnswer:
        """An update on the running workflow (as a dispatch or a cancellation is)."""
        self.calls += 1
        return TrivialAnswer(name=request.name, calls=self.calls)

    @workflow.update
    async def finish(self, request: TrivialRequest) -> TrivialAnswer:
        """Let the workflow complete."""
        self.finished = True
        return TrivialAnswer(name=request.name, calls=self.calls)
