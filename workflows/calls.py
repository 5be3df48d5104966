"""The activity calls a workflow waits on, which an operator's `retry_now` restarts at once.

A call in its retry backoff may wait a minute before its next attempt (a day's bound, for the
marketplace); an operator who fixed the cause should not wait for it. `Calls` runs each activity
so that a `retry_now` cancels it, waits for the cancellation to complete (an attempt in flight
ends first, and its outcome counts: no attempt ever overlaps the next) and starts it again, its
attempts from one. Pauses before trying again, and waits such as the next tracking poll, end early
the same way. `waiting_on` names them for the operator's action and its validator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.failures import cancelled

# A warehouse call may take hours in a real warehouse; a dead worker is noticed by the missed
# heartbeats instead, after HEARTBEAT_TIMEOUT, and the call is retried on another worker. Every
# warehouse activity heartbeats (compensations too).
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
WAREHOUSE_CALL_TIMEOUT = timedelta(minutes=5)
# No maximum of attempts on purpose, for the warehouse as for the marketplace
# (workflows/policies.py): what reaches these retries is transient by construction (the activities
# turn every error retrying cannot fix into a non-retryable ApplicationError), and the stock must
# be given back however long the warehouse is down. Ops see each attempt and its last error in
# GET /pvt/orders/{orderId} (`pendingCalls`) and in the Temporal UI's pending activities.
WAREHOUSE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# How every call is cancelled: waiting for the attempt in flight to end, so that a call retried
# now never runs beside its previous attempt, and so that what the workflow then decides (a
# compensation, a record of what the marketplace has) starts from what really happened.
WAIT_FOR_IT = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


def never() -> bool:
    return False


class Calls:
    """A workflow's restartable calls and waits (see the module's docstring)."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.waiting_on: list[str] = []
        self.retries_asked = 0

    def retry_now(self) -> str:
        """Restart whatever is waited on; what that is, in words."""
        self.retries_asked += 1
        return ", ".join(self.waiting_on)

    async def call(
        self,
        what: str,
        start: Callable[[], workflow.ActivityHandle[Any]],
        stop: Callable[[], bool] = never,
    ) -> Any:
        """Run the activity `start` starts, until it ends or `stop()` turns true (it is then
        cancelled; what it raises goes out, for the caller to decide from state)."""
        self.waiting_on.append(what)
        try:
            while True:
                asked = self.retries_asked
                handle = start()
                await workflow.wait_condition(
                    lambda: handle.done() or stop() or self.retries_asked != asked  # noqa: B023
                )
                if not handle.done():
                    handle.cancel()
                try:
                    return await handle
                except (ActivityError, asyncio.CancelledError) as err:
                    if self.retries_asked != asked and not stop() and cancelled(err):
                        workflow.logger.info(
                            "order %s: %s retried now, as an operator asked", self.order_id, what
                        )
                        continue
                    raise
        finally:
            self.waiting_on.remove(what)

    async def warehouse(
        self,
        activity: Callable[..., Any],
        argument: Any,
        summary: str,
        start_to_close: timedelta = WAREHOUSE_CALL_TIMEOUT,
        schedule_to_close: timedelta | None = None,
        stop: Callable[[], bool] = never,
    ) -> Any:
        """A warehouse activity: it heartbeats, is retried by WAREHOUSE_RETRY (within
        `schedule_to_close` if given), and its cancellation is waited for."""
        return await self.call(
            summary,
            lambda: workflow.start_activity_method(
                activity,
                argument,
                start_to_close_timeout=start_to_close,
                schedule_to_close_timeout=schedule_to_close,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAREHOUSE_RETRY,
                cancellation_type=WAIT_FOR_IT,
                summary=summary,
            ),
            stop=stop,
        )

    async def wait(
        self, what: str, condition: Callable[[], bool], within: timedelta, summary: str
    ) -> None:
        """Wait until `condition()`, `within` passed, or an operator asks to retry now."""
        asked = self.retries_asked
        self.waiting_on.append(what)
        try:
            await workflow.wait_condition(
                lambda: condition() or self.retries_asked != asked,
                timeout=within,
                timeout_summary=summary,
            )
        except TimeoutError:
            pass
        finally:
            self.waiting_on.remove(what)
