"""One SKU's change notifications to the marketplace: coalesced, and retried until taken.

The warehouse notes every change of a SKU's price or stock in its outbox, in the transaction that
makes it; the relay (change_relay.py) passes each on as a `changed` signal with start to this
workflow, whose id is the SKU's (`sku-changes-{task_queue}-{sku}`, ids.sku_changes_workflow_id).
So one SKU has at most one workflow per deployment, however many workers relay, and a burst of
changes becomes one notification:

    changed ─▶ wait until DEBOUNCE passes with no change (at most MAX_WAIT) ─▶ notify price and/or
    inventory, each retried until the marketplace takes it ─▶ changes meanwhile? again : done

The notification carries no figure: the marketplace reads the new price and stock from the
fulfillment simulation, so a late notification never tells it anything stale.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.change_notifications import ChangeNotificationActivities, SkuNotification
    from workflows.messages import CamelModel
    from workflows.policies import (
        MARKETPLACE_CALL_TIMEOUT,
        MARKETPLACE_GIVES_UP_AFTER,
        MARKETPLACE_RETRY,
    )

# How long a burst may keep the notification back, whatever the debounce.
MAX_WAIT_FACTOR = 10
NOTIFICATION_GIVES_UP_AFTER = MARKETPLACE_GIVES_UP_AFTER


class SkuChange(CamelModel):
    """The `changed` signal: what changed of the SKU."""

    kind: str  # price | inventory


class SkuChangesInput(CamelModel):
    """What the workflow starts with (and carries over a continue-as-new)."""

    sku: str
    debounce_seconds: float = 2.0
    # Kinds changed but not yet notified, carried over a continue-as-new.
    pending: list[str] = Field(default_factory=list)


class SentNotification(CamelModel):
    """One notification as the marketplace answered it."""

    kind: str
    changes: int  # how many changes it stands for
    sent_at: datetime
    error: str | None = None


class SkuChangesView(CamelModel):
    """The `state` query."""

    sku: str
    pending: list[str]
    changes_received: int
    sent: list[SentNotification]


@workflow.defn
class SkuChangesWorkflow:
    """Notify the marketplace of one SKU's price and inventory changes."""

    @workflow.init
    def __init__(self, start: SkuChangesInput) -> None:
        self._start = start
        self._pending: dict[str, int] = {kind: 1 for kind in start.pending}
        self._changes = 0
        self._sent: list[SentNotification] = []

    @workflow.signal
    def changed(self, change: SkuChange) -> None:
        """A change of the SKU's price or inventory (anything else is ignored, and logged)."""
        if change.kind not in ("price", "inventory"):
            workflow.logger.warning("sku %s: unknown change %r", self._start.sku, change.kind)
            return
        self._changes += 1
        self._pending[change.kind] = self._pending.get(change.kind, 0) + 1

    @workflow.query
    def state(self) -> SkuChangesView:
        """What is pending and what was sent."""
        return SkuChangesView(
            sku=self._start.sku,
            pending=sorted(self._pending),
            changes_received=self._changes,
            sent=self._sent[-20:],
        )

    @workflow.run
    async def run(self, start: SkuChangesInput) -> SkuChangesView:
        """Notify bursts until none is pending; then end (the next change starts a new run)."""
        debounce = timedelta(seconds=max(start.debounce_seconds, 0.0))
        while True:
            # Every handler first (the signal a signal-with-start brought, among others).
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._pending:
                # A signal that comes with this task's completion makes Temporal refuse the
                # completion: the SDK runs the signal and this loop again, so none is left behind.
                return self.state()
            if workflow.info().is_continue_as_new_suggested():
                carried = start.model_copy(update={"pending": sorted(self._pending)})
                workflow.continue_as_new(carried)
            await self._wait_for_quiet(debounce)
            burst, self._pending = self._pending, {}
            for kind in sorted(burst):
                await self._notify(kind, burst[kind])

    async def _wait_for_quiet(self, debounce: timedelta) -> None:
        """Until `debounce` passes with no new change, or MAX_WAIT_FACTOR debounces in all."""
        if debounce <= timedelta(0):
            return
        give_up_at = workflow.now() + debounce * MAX_WAIT_FACTOR
        while True:
            seen = self._changes
            remaining = min(debounce, give_up_at - workflow.now())
            if remaining <= timedelta(0):
                return
            try:
                await workflow.wait_condition(
                    lambda seen=seen: self._changes != seen,  # type: ignore[misc]
                    timeout=remaining,
                    timeout_summary="debounce",
                )
            except TimeoutError:
                return

    async def _notify(self, kind: str, changes: int) -> None:
        """Notify one kind; retried for a day at most. Should Temporal suggest a new run while it
        retries (changes keep coming as signals), the notification is called off and goes again
        in the new run, so the history stays bounded."""
        sku = self._start.sku
        handle = workflow.start_activity_method(
            ChangeNotificationActivities.notify_change,
            SkuNotification(sku=sku, kind=kind),
            start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
            # Retried while the marketplace is down, for a day at most: a notification that old
            # is worth less than the SKU workflow's next burst.
            schedule_to_close_timeout=NOTIFICATION_GIVES_UP_AFTER,
            retry_policy=MARKETPLACE_RETRY,
            summary=f"notify {kind} of {sku} ({changes} changes)",
        )
        await workflow.wait_condition(
            lambda: handle.done() or workflow.info().is_continue_as_new_suggested()
        )
        called_off = not handle.done()
        if called_off:
            handle.cancel()
        error = None
        try:
            await handle
        except (ActivityError, asyncio.CancelledError) as err:
            if called_off:
                self._pending[kind] = self._pending.get(kind, 0) + changes
                return
            # Refused for good (a 4xx; a 404: the marketplace does not know the SKU), or still
            # refused after NOTIFICATION_GIVES_UP_AFTER: logged, kept in `state`.
            cause = err.cause if isinstance(err, ActivityError) else err
            error = str(getattr(cause, "message", None) or cause or err)
            workflow.logger.error("sku %s: %s notification not sent: %s", sku, kind, error)
        self._sent.append(
            SentNotification(kind=kind, changes=changes, sent_at=workflow.now(), error=error)
        )
