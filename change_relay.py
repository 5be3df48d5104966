"""The change relay: from the warehouse's outbox to one Temporal workflow per SKU.

A price or stock change is noted in the `sku_changes` outbox in the transaction that makes it
(activities/warehouse_store.py): a catalog load, a restock, a reservation that sells a SKU out, a
release that brings it back. Every worker runs a `ChangeRelay`, which reads the outbox, sends each
change as a signal-with-start to the SKU's `SkuChangesWorkflow` (workflows/sku_changes.py), and
only then marks the row passed on, at the version it read (versions never repeat). So a change is
never lost (a relay that dies before the mark leaves the row for the next one) and may be passed on
twice (two relays read the same row), which the SKU's workflow coalesces with the rest of its burst
(given a debounce: with `0s`, each may be its own notification).

Client code, like the API: it starts and signals workflows, and so sits beside worker.py, which
runs it, above the workflows it names (activities/ never import workflows/).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from temporalio.client import Client

from activities import warehouse_store as store
from activities.warehouse_store import sku_changes
from workflows import ids
from workflows.sku_changes import SkuChange, SkuChangesInput, SkuChangesWorkflow

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingChange:
    """One outbox row: `kind` of `sku` changed, `version` times since it was last passed on."""

    sku: str
    kind: str
    version: int


class ChangeOutbox:
    """The `sku_changes` table, as the relay reads and marks it."""

    def __init__(self, store_location: str | Path) -> None:
        self.url = store.store_url(store_location)

    def pending(self, limit: int = 500) -> list[PendingChange]:
        """The oldest changes not yet passed on."""
        engine = store.engine_for(self.url)
        with engine.connect().execution_options(**{store.READ_ONLY: True}) as connection:
            rows = connection.execute(
                select(sku_changes.c.sku, sku_changes.c.kind, sku_changes.c.version)
                .where(sku_changes.c.version > sku_changes.c.relayed_version)
                .order_by(sku_changes.c.changed_at, sku_changes.c.sku, sku_changes.c.kind)
                .limit(limit)
            ).all()
        return [PendingChange(row.sku, row.kind, row.version) for row in rows]

    def mark_relayed(self, changes: list[PendingChange]) -> int:
        """Record that these versions were passed on; a row changed since stays pending. How many
        rows are no longer pending."""
        if not changes:
            return 0
        cleared = 0
        # One row per statement, by (SKU, kind): the order every writer locks them in, so that
        # this transaction can never wait in a cycle with a reservation or a catalog load.
        with store.engine_for(self.url).begin() as connection:
            for change in sorted(changes, key=lambda change: (change.sku, change.kind)):
                connection.execute(
                    update(sku_changes)
                    .where(
                        sku_changes.c.sku == change.sku,
                        sku_changes.c.kind == change.kind,
                        sku_changes.c.relayed_version < change.version,
                    )
                    .values(relayed_version=change.version)
                )
                cleared += connection.execute(
                    select(func.count())
                    .select_from(sku_changes)
                    .where(
                        sku_changes.c.sku == change.sku,
                        sku_changes.c.kind == change.kind,
                        sku_changes.c.version == sku_changes.c.relayed_version,
                    )
                ).scalar_one()
        return cleared


class ChangeRelay:
    """Passes the outbox's changes on to the SKU workflows, every `interval` seconds."""

    # Signals in flight at once: enough to keep up with a catalog load, few enough to stop soon.
    CONCURRENCY = 16

    def __init__(
        self,
        client: Client,
        outbox: ChangeOutbox,
        task_queue: str,
        debounce_seconds: float,
        interval: float = 0.5,
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._task_queue = task_queue
        self._debounce_seconds = debounce_seconds
        self._interval = interval

    @classmethod
    def from_settings(cls, client: Client, settings: Settings) -> ChangeRelay:
        """The relay the settings configure (see `Settings.change_notifications_enabled`)."""
        return cls(
            client,
            ChangeOutbox(settings.warehouse_store),
            settings.task_queue,
            settings.change_notification_debounce_seconds,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; an error (Temporal or the database away) is logged and the
        round tried again after the interval."""
        while not stop.is_set():
            try:
                complete = await self.relay_once(stop)
            except Exception as err:  # the relay must outlive any one round
                log.warning("change relay: %s: %s; trying again", type(err).__name__, err)
                complete = False
            if not complete:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval)

    async def relay_once(self, stop: asyncio.Event | None = None) -> bool:
        """Pass on what the outbox holds now. True if it held changes and every one was passed
        on (then the next round starts at once); False if it was empty, or a change could not be
        passed on (it stays pending for the next round)."""
        changes = await asyncio.to_thread(self._outbox.pending)
        if not changes:
            return False
        passed_on: list[PendingChange] = []
        for start in range(0, len(changes), self.CONCURRENCY):
            if stop is not None and stop.is_set():
                break
            batch = changes[start : start + self.CONCURRENCY]
            outcomes = await asyncio.gather(
                *(self._signal(change) for change in batch), return_exceptions=True
            )
            for change, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning(
                        "change relay: %s change of SKU %s not passed on (%s: %s); trying again",
                        change.kind,
                        change.sku,
                        type(outcome).__name__,
                        outcome,
                    )
                else:
                    passed_on.append(change)
        await asyncio.to_thread(self._outbox.mark_relayed, passed_on)
        return len(passed_on) == len(changes)

    async def _signal(self, change: PendingChange) -> None:
        await self._client.start_workflow(
            SkuChangesWorkflow.run,
            SkuChangesInput(sku=change.sku, debounce_seconds=self._debounce_seconds),
            id=ids.sku_changes_workflow_id(self._task_queue, change.sku),
            task_queue=ids.sku_task_queue(self._task_queue),
            start_signal="changed",
            start_signal_args=[SkuChange(kind=change.kind)],
            static_summary=f"change notifications of SKU {change.sku}",
            # Temporal unreachable: give up this round soon, so that a stopping worker stops.
            rpc_timeout=timedelta(seconds=5),
        )
