"""The life of one order, read top to bottom.

reserving ─▶ placed ──dispatch──▶ fulfilling: pick ▸ pack ▸ ship ▸ invoice ──▶ invoiced ─▶ delivered
                │  │                   │
                │  └lockTTL▶ expiring ─┼──────────────▶ expired
                │                      ▼
                └──cancel / failure─▶ canceling ──────▶ canceled

Placement reserves the stock and waits for Order Dispatching. Dispatch and cancellation arrive
as Workflow Updates with fixed ids, so Temporal itself answers a retried call with the first
answer. The updates only *record* what was asked, and move the status (workflows/lifecycle.py says
which moves are allowed); the order's life, one task (`_live`), reads that recorded intent before
it starts each step and after each step returns, and decides from it, never from which exception
arrived. A cancellation aborts the running step mid-way, waits until it has really stopped, then
releases the stock and voids the label. The invoice (the warehouse's atomic issue, racing
`release`) is the one point of no return: once issued, a cancellation is refused and the invoice
sent to the marketplace again (workflows/invoice_delivery.py). A step that fails for good cancels
the order the same way and tells the marketplace. An invoiced order whose invoice the marketplace
took then follows its parcel in a workflow of its own (workflows/parcel.py), and is `delivered`
when it is. After the order ends, the workflow stays open for the late-call window so late calls
are still answered by the order itself.

An operator's "Request Cancellation" in the Temporal UI cancels only `run`'s own wait: it is
recorded as the seller's cancellation intent, and the life goes on to compensate it; nothing the
order is doing (a reservation, a release) is cut short by it.

What the order records and shows is workflows/order_record.py; the calls an operator's `retry_now`
restarts, workflows/calls.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ChildWorkflowError,
    FailureError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from activities.fulfillment import FulfillmentActivities
    from activities.marketplace import CancellationNotice
    from activities.warehouse import Invoice, Reservation
    from workflows import ids
    from workflows.calls import WAIT_FOR_IT, never
    from workflows.failures import failure_text, refusal_type, refused_for_good
    from workflows.invoice_delivery import send_bound
    from workflows.messages import (
        FulfillmentStep,
        OrderInput,
        OrderStatus,
        OrderView,
        StepRecord,
    )
    from workflows.order_handlers import FIRST_STEP, OrderHandlers
    from workflows.parcel import ParcelWorkflow, start_following
    from workflows.policies import MARKETPLACE_CALL_TIMEOUT, MARKETPLACE_RETRY

# A warehouse step may take hours in a real warehouse (a dead worker is noticed by its missed
# heartbeats: workflows/calls.py).
STEP_TIMEOUT = timedelta(hours=24)
# A compensation that failed for good (a warehouse refusing a release) is tried again after this,
# with the error shown as the order's `attention`, until someone fixes the warehouse.
COMPENSATION_RETRY_AFTER = timedelta(minutes=1)
# The reservation's quick tries in the placement's first workflow task: three attempts, 1 s then
# 2 s apart, a call that hangs cut after RESERVE_LOCALLY_FOR. Within half the API's default
# UPDATE_TIMEOUT_SECONDS, so that a placement the API answers 503 finds a failing reservation
# already listed by Temporal, with its attempt and last error. The attempts are counted, not only
# timed: the SDK's core loses a local activity's schedule-to-close timeout that falls while it
# backs off between attempts.
RESERVE_LOCALLY_FOR = timedelta(seconds=5)
RESERVE_LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)

STEPS: tuple[tuple[FulfillmentStep, Callable[..., Any]], ...] = (
    (FIRST_STEP, FulfillmentActivities.pick_items),
    (FulfillmentStep.PACK, FulfillmentActivities.pack_items),
    (FulfillmentStep.SHIP, FulfillmentActivities.ship_order),
    (FulfillmentStep.INVOICE, FulfillmentActivities.issue_invoice),
)


@workflow.defn
class OrderWorkflow(OrderHandlers):
    """One VTEX order, from placement to invoiced (and delivered), canceled or expired."""

    @workflow.init
    def __init__(self, order: OrderInput) -> None:
        super().__init__(order)

    # ── The order's life ────────────────────────────────────────────────────────────────────

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        """Live the order's life; then answer late calls for a while."""
        self._show()
        life = asyncio.create_task(self._live())
        await self._until(life.done)
        await life  # A bug in the life fails the workflow task here, to be fixed and replayed.
        window = timedelta(seconds=self._order.late_call_window_seconds)
        self._closes_at = workflow.now() + window
        self._show()
        if window > timedelta(0) and not self._close_early:
            await self._until(lambda: self._close_early, within=window, summary="late-call window")
        # One condition, so that no handler can start a resend between two checks.
        await self._until(lambda: self._invoice.sends_done() and workflow.all_handlers_finished())
        return self._view()

    async def _live(self) -> None:
        """Reserve, wait for dispatch, fulfill or compensate, tell the marketplace.

        Each stage starts from the status the previous one (or a message) left.
        """
        await self._reserve()
        if self._status == OrderStatus.PLACED:
            await self._wait_for_dispatch()
        if self._status == OrderStatus.EXPIRING:
            await self._run_compensation(FulfillmentActivities.release_stock)
            self._move(OrderStatus.EXPIRED)
        elif self._status == OrderStatus.FULFILLING:
            await self._fulfill()
        if self._status == OrderStatus.CANCELING:
            await self._compensate()
        if self._status == OrderStatus.INVOICED:
            await self._invoice.deliver()
            # Only an invoice the marketplace took has a tracking status to post to.
            sent = self._invoice.view is not None and self._invoice.view.sent_at is not None
            if sent and self._label and self._order.tracking_poll_seconds > 0:
                if not self._close_early:
                    await self._follow_parcel()
        elif self._status == OrderStatus.CANCELED:
            await self._tell_marketplace_of_seller_cancellation()

    async def _until(
        self,
        condition: Callable[[], bool],
        within: timedelta | None = None,
        summary: str | None = None,
    ) -> bool:
        """Wait for `condition` (False if `within` passed first).

        A workflow cancellation (an operator in the Temporal UI) interrupts `run`'s wait and
        nothing else; it is recorded as the seller's cancellation intent, and the wait goes on, so
        that the life decides what it means.
        """
        deadline = workflow.now() + within if within is not None else None
        while True:
            remaining = None if deadline is None else max(deadline - workflow.now(), timedelta(0))
            try:
                await workflow.wait_condition(condition, timeout=remaining, timeout_summary=summary)
                return True
            except TimeoutError:
                return False
            except asyncio.CancelledError:
                self._cancel_by_operator()

    async def _reserve(self) -> None:
        try:
            reservation = await self._reserve_visibly()
        except FailureError as err:  # a local activity's error is not wrapped in ActivityError
            refusal = refusal_type(err)
            # The placement is answered now: the stock could not be reserved.
            self._reserve_refusal = refusal if refusal == "OutOfStock" else "ReservationFailed"
            if self._status == OrderStatus.RESERVING:
                self._move(OrderStatus.CANCELING, failure_text(err))
            # The attempt that failed holds nothing (all or nothing), but an earlier attempt, on
            # a worker cut off from Temporal, may still commit. The release settles it: it gives
            # back what such an attempt took, or marks the order released first so that the
            # attempt reserves nothing.
            await self._run_compensation(FulfillmentActivities.release_stock)
            self._move(OrderStatus.CANCELED, failure_text(err))
            return
        if reservation is None:
            # Canceled while the warehouse kept failing: the retries stopped, the placement is
            # refused, and the life compensates (`canceling`): the release gives back whatever an
            # attempt cut short may have taken.
            self._reserve_refusal = "OrderCanceled"
            return
        self._reserved_at = reservation.reserved_at
        self._lock_expires_at = self._order.placed_at + self._lock_ttl
        if self._status == OrderStatus.RESERVING:
            self._move(OrderStatus.PLACED)
        # Otherwise a cancellation came during the reservation: the order is `canceling`, and
        # the compensation gives back what was just reserved.

    async def _reserve_visibly(self) -> Reservation | None:
        """Reserve: a few quick tries, then, for as long as the warehouse fails, retries people see.

        The tries are a local activity inside the workflow task that the placement's
        update-with-start opened: a reservation that succeeds there costs no event of its own
        (a worker that dies meanwhile leaves the task to time out, 10 s, and run again elsewhere,
        the reservation with it: it is idempotent per order). One that keeps failing goes on as a
        regular activity, which Temporal lists among the workflow's pending activities with its
        attempt and last failure (`pendingCalls`, the UI); the order's `attention` says why
        meanwhile. The regular activity stops when the order stops reserving (a cancellation):
        None then, once the attempt has really stopped. A refusal for good (`OutOfStock`) is
        raised, local or not.
        """
        try:
            return await workflow.execute_local_activity_method(
                FulfillmentActivities.reserve_stock,
                self._warehouse_order,
                start_to_close_timeout=RESERVE_LOCALLY_FOR,
                schedule_to_close_timeout=RESERVE_LOCALLY_FOR,
                retry_policy=RESERVE_LOCAL_RETRY,
                summary=f"reserve stock for {self._order.order_id}",
            )
        except FailureError as err:
            if refused_for_good(err):
                raise
            self._attention = f"reserving: {failure_text(err)}; retrying"
        workflow.logger.warning("order %s: %s", self._order.order_id, self._attention)
        self._show()
        try:
            reservation: Reservation = await self._calls.warehouse(
                FulfillmentActivities.reserve_stock,
                self._warehouse_order,
                f"reserve stock for {self._order.order_id} (retrying)",
                stop=lambda: self._status != OrderStatus.RESERVING,
            )
            return reservation
        except (ActivityError, asyncio.CancelledError):
            if self._status == OrderStatus.RESERVING:
                raise  # Refused for good: the placement is answered as before.
            return None  # Stopped (or refused) after a cancellation came: it is compensated.
        finally:
            self._attention = None

    async def _wait_for_dispatch(self) -> None:
        """Wait for dispatch or cancellation; past lockTTL, the order starts expiring."""
        assert self._lock_expires_at is not None  # set with the reservation
        await self._until(
            lambda: self._status != OrderStatus.PLACED,
            within=max(self._lock_expires_at - workflow.now(), timedelta(seconds=1)),
            summary="lockTTL: waiting for Order Dispatching",
        )
        # Decided from the status, not from the timer: a dispatch or a cancellation that came in
        # the same moment as the timer has already moved the order on.
        if self._status == OrderStatus.PLACED:
            self._move(OrderStatus.EXPIRING, f"no dispatch within lockTTL ({self._lock_ttl})")

    async def _fulfill(self) -> None:
        """Run the steps while the order is `fulfilling`; stop at the first sign it is not."""
        for step, activity in STEPS:
            if self._status != OrderStatus.FULFILLING:
                break  # A cancellation came between two steps.
            try:
                result = await self._step(step, activity)
            except (ActivityError, asyncio.CancelledError) as err:
                if self._status == OrderStatus.FULFILLING:
                    # Nobody asked it to stop: the step failed for good.
                    reason = f"{step} failed: {failure_text(err)}"
                    workflow.logger.error("order %s: %s", self._order.order_id, reason)
                    self._cancel(reason)
                break
            if step == FulfillmentStep.SHIP:
                self._label = result
            elif step == FulfillmentStep.INVOICE:
                # The warehouse committed the invoice: canceled or not since, the order is sold.
                self._set_invoice(result)
                self._current_step = None  # published with the status, in one upsert
                self._move(OrderStatus.INVOICED, self._invoiced_despite_cancellation())
        self._current_step = None
        self._show()

    async def _step(self, step: FulfillmentStep, activity: Callable[..., Any]) -> Any:
        """Run one step; abort it as soon as the order stops `fulfilling`.

        Compensation must start only once the step has really stopped: the activity is cancelled
        and waited for, and whatever it did before it stopped is undone by the compensation (or,
        for the invoice, settled by the release).
        """
        record = StepRecord(name=step, status="running", started_at=workflow.now())
        self._steps.append(record)
        self._current_step = step
        self._show()
        workflow.logger.info("order %s: %s started", self._order.order_id, step)
        try:
            result = await self._calls.warehouse(
                activity,
                self._warehouse_order,
                f"{step} {self._order.order_id}",
                start_to_close=STEP_TIMEOUT,
                stop=lambda: self._status != OrderStatus.FULFILLING,
            )
        except (ActivityError, asyncio.CancelledError) as err:
            stopped = self._status != OrderStatus.FULFILLING
            record.status = "cancelled" if stopped else "failed"
            record.finished_at = workflow.now()
            reached = self._cancellation.reached_order_at if self._cancellation else None
            if stopped and reached is not None:
                workflow.metric_meter().create_histogram_timedelta(
                    "seller_cancel_to_abort", "From a cancellation to its step stopped", unit="ms"
                ).record(record.finished_at - reached)
            workflow.logger.info(
                "order %s: %s %s (%s)", self._order.order_id, step, record.status, failure_text(err)
            )
            raise
        record.status = "completed"
        record.finished_at = workflow.now()
        return result

    async def _compensate(self) -> None:
        """From `canceling`: release the stock, void the label; then `canceled`.

        Release goes first because it is where a race with the invoice is settled: if the invoice
        was committed after all (the step was cancelled while the warehouse committed), the release
        is refused and the order is invoiced.
        """
        self._current_step = None
        self._show("compensating")
        try:
            await self._run_compensation(FulfillmentActivities.release_stock)
        except ActivityError:  # AlreadyInvoiced: the only failure _run_compensation lets out
            named, fields = self._cancellation_request_log()
            workflow.logger.info(
                "order %s: invoiced before the cancel%s", self._order.order_id, named, extra=fields
            )
            # Issuing is idempotent: this fetches the invoice the warehouse committed.
            invoice = await self._until_done(
                FulfillmentActivities.issue_invoice,
                f"invoice {self._order.order_id} (already issued)",
                "issue_invoice (fetching the committed invoice)",
            )
            self._set_invoice(invoice)
            self._move(OrderStatus.INVOICED, self._invoiced_despite_cancellation())
            return
        if any(step.name == FulfillmentStep.SHIP for step in self._steps):
            await self._run_compensation(FulfillmentActivities.void_label)
        if self._cancellation is not None:
            self._cancellation.outcome = "confirmed"
        self._move(OrderStatus.CANCELED)

    async def _run_compensation(self, activity: Callable[..., Any]) -> None:
        """Run a compensation until it is done; only `AlreadyInvoiced` is let out: stock must not
        stay held for an order that will never ship."""
        name = activity.__name__
        done = await self._until_done(
            activity, f"compensate {self._order.order_id} ({name})", name, "AlreadyInvoiced"
        )
        self._compensations.append(
            done.compensation if done.changed else f"{done.compensation} (nothing to undo)"
        )

    async def _until_done(
        self, activity: Callable[..., Any], summary: str, what: str, let_out: str | None = None
    ) -> Any:
        """A warehouse call that must not be given up (a compensation; the invoice of an order
        that is sold). Transient errors are retried by the activity's retry policy; an error the
        warehouse says retrying cannot fix is shown as the order's `attention` and tried again
        every COMPENSATION_RETRY_AFTER (or at once, at an operator's `retry_now`)."""
        while True:
            try:
                result = await self._calls.warehouse(activity, self._warehouse_order, summary)
            except ActivityError as err:
                if let_out is not None and refusal_type(err) == let_out:
                    raise
                self._attention = (
                    f"{what} failed: {failure_text(err)}; trying again every "
                    f"{COMPENSATION_RETRY_AFTER}"
                )
                workflow.logger.error("order %s: %s", self._order.order_id, self._attention)
                self._show()
                await self._calls.wait(
                    f"a pause ({what} failed)", never, COMPENSATION_RETRY_AFTER, f"{what} failed"
                )
                continue
            self._attention = None
            return result

    def _set_invoice(self, invoice: Invoice) -> None:
        self._invoice.set(invoice, self._tracking)

    async def _follow_parcel(self) -> None:
        """Follow the parcel in its own workflow (workflows/parcel.py) until it ends; forward to
        it an operator's `stop_tracking`, `retry_now`, and close of the order (each by workflow
        id: to its current run, however often it continued as new)."""
        invoice = self._invoice.invoice
        assert invoice is not None
        parcel_id = ids.parcel_workflow_id(self._order.marketplace_order_id)
        waiting = f"the parcel's next poll ({parcel_id})"
        # Before the start: an action asked meanwhile is accepted, and forwarded once it runs.
        self._parcel_workflow_id, self._following_parcel = parcel_id, True
        self._calls.waiting_on.append(waiting)
        parcel = workflow.get_external_workflow_handle_for(ParcelWorkflow.run, parcel_id)
        retries, stop_sent, close_sent = self._calls.retries_asked, False, False
        try:
            handle = await start_following(
                parcel_id, self._warehouse_order, self._order, invoice.invoice_number
            )
            self._show()
            while not handle.done():
                await workflow.wait_condition(
                    lambda: (
                        handle.done()
                        or (self._close_early and not close_sent)  # noqa: B023
                        or self._calls.retries_asked != retries  # noqa: B023
                        or (self._tracking_stopped is not None and not stop_sent)  # noqa: B023
                    )
                )
                # A signal may meet the parcel's workflow ended meanwhile: nothing left to tell it.
                with suppress(FailureError):
                    if self._close_early and not close_sent and not handle.done():
                        close_sent = True  # a post in flight ends first
                        await parcel.signal(ParcelWorkflow.close)
                    if self._tracking_stopped is not None and not stop_sent:
                        stop_sent = True
                        await parcel.signal(ParcelWorkflow.stop, self._tracking_stopped)
                    if self._calls.retries_asked != retries:
                        retries = self._calls.retries_asked
                        await parcel.signal(ParcelWorkflow.retry_now)
            outcome = await handle
            self._delivery = outcome.delivery
            self._attention = outcome.attention or self._attention
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as err:
            # Terminated by hand, say: what the marketplace has is in its history (the API reads
            # it there, its `delivery` query); the order shows why it stopped.
            self._attention = f"parcel not followed any more: {parcel_id} {failure_text(err)}"
        finally:
            self._following_parcel = False
            self._calls.waiting_on.remove(waiting)
        if self._delivery is not None and self._delivery.delivered:
            self._move(OrderStatus.DELIVERED)
        else:
            self._show()

    async def _tell_marketplace_of_seller_cancellation(self) -> None:
        """The seller canceled an order the marketplace holds as placed: say so, with the reason.

        Not when the marketplace asked for the cancellation itself, and not when the placement
        was refused (the marketplace never held the order).
        """
        cancellation = self._cancellation
        if (
            cancellation is None
            or cancellation.requested_by != "seller"
            or cancellation.marketplace_asked
            or self._reserved_at is None
        ):
            return
        what = f"tell the marketplace {self._order.order_id} is canceled"
        notice = CancellationNotice(
            marketplace_services_endpoint=self._order.marketplace_services_endpoint,
            marketplace_order_id=self._order.marketplace_order_id,
            reason=cancellation.reason or "canceled by the seller",
        )
        try:
            await self._calls.call(
                what,
                lambda: workflow.start_activity_method(
                    FulfillmentActivities.send_cancellation,
                    notice,
                    start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                    schedule_to_close_timeout=send_bound(self._order),
                    retry_policy=MARKETPLACE_RETRY,
                    cancellation_type=WAIT_FOR_IT,
                    summary=what,
                ),
            )
            cancellation.marketplace_notified_at = workflow.now()
        except ActivityError as err:
            cancellation.marketplace_error = failure_text(err)
            self._attention = (
                f"the marketplace was not told of the seller's cancellation: "
                f"{cancellation.marketplace_error}; tell it by hand"
            )
        self._show()
