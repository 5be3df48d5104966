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
sent to the marketplace again. A step that fails for good cancels the order the same way and tells
the marketplace. An invoiced order then follows its parcel: it asks the carrier every
TRACKING_POLL_INTERVAL (a durable timer between polls), posts each new event to the marketplace,
and is `delivered` when the carrier says so. After the order ends, the workflow stays open for the
late-call window so late calls are still answered by the order itself.

An operator's "Request Cancellation" in the Temporal UI cancels only `run`'s own wait: it is
recorded as the seller's cancellation intent, and the life goes on to compensate it; nothing the
order is doing (a reservation, a release) is cut short by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    RetryState,
)

with workflow.unsafe.imports_passed_through():
    from activities.fulfillment import FulfillmentActivities
    from activities.marketplace import (
        CancellationNotice,
        InvoiceNotice,
        TrackingNotice,
        TrackingStatusNotice,
    )
    from activities.warehouse import (
        Invoice,
        ParcelStatus,
        Reservation,
        ShippingLabel,
        WarehouseOrder,
    )
    from workflows import search
    from workflows.lifecycle import (
        CANCEL_REFUSED_IN,
        CANCEL_STARTS_IN,
        can_move,
        dispatch_refusal,
        is_final,
    )
    from workflows.messages import (
        VTEX_DATE_FORMAT,
        Cancellation,
        CancelRequest,
        DeliveryView,
        DispatchRequest,
        FulfillmentStep,
        InvoiceView,
        OperatorAction,
        OperatorActionName,
        OperatorRequest,
        OrderInput,
        OrderReceipt,
        OrderStatus,
        OrderView,
        PlacementResult,
        PlaceRequest,
        StepRecord,
        Tracking,
        TrackingEventView,
        cancellation_request_fields,
        cancellation_request_text,
    )
    from workflows.policies import (
        MARKETPLACE_CALL_TIMEOUT,
        MARKETPLACE_GIVES_UP_AFTER,
        MARKETPLACE_RETRY,
    )

# A warehouse step may take hours in a real warehouse; a dead worker is noticed by the missed
# heartbeats instead, after HEARTBEAT_TIMEOUT, and the step is retried on another worker. Every
# warehouse activity heartbeats (compensations too). The reservation, a local activity, cannot:
# its workflow task stands in (a dead worker's task times out in 10 s and runs again elsewhere), so
# a placement never waits out WAREHOUSE_CALL_TIMEOUT because the worker reserving it died.
STEP_TIMEOUT = timedelta(hours=24)
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
WAREHOUSE_CALL_TIMEOUT = timedelta(minutes=5)
# No maximum of attempts on purpose, for the warehouse as for the marketplace
# (workflows/policies.py): what reaches these retries is transient by construction (the activities
# turn every error retrying cannot fix into a non-retryable ApplicationError), and the stock must
# be given back however long the warehouse is down. Ops see each attempt and its last error in
# GET /pvt/orders/{orderId} (`pendingActivities`) and in the Temporal UI's pending activities.
WAREHOUSE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# A compensation that failed for good (a warehouse refusing a release) is tried again after this,
# with the error shown as the order's `attention`, until someone fixes the warehouse.
COMPENSATION_RETRY_AFTER = timedelta(minutes=1)

# workflow.patched() ids: each names a change that adds commands to histories recorded before it.
SEARCH_ATTRIBUTES = "search-attributes"
RELEASE_AFTER_FAILED_RESERVATION = "release-after-failed-reservation"
COMMITTED_INVOICE_FETCH_RETRIED = "committed-invoice-fetch-retried"
REFUSAL_ANSWERS_BEFORE_RESEND = "refusal-answers-before-resend"
TRACK_TO_DELIVERY = "track-to-delivery"
RESERVATION_IN_THE_FIRST_TASK = "reservation-in-the-first-task"
# The newest, asked once, when the order starts: an order started on this code takes every patch
# above without asking (each one asked costs two events, the marker and the TemporalChangeVersion
# upsert the SDK adds to it), and publishes its search attributes once for its dispatch and once
# for its invoice (not twice each). A happy path of 59 events, not 64. Any patch added after this
# one is asked as usual (workflow.patched).
FEWER_EVENTS = "fewer-events"
# Asked once, when the order starts (like FEWER_EVENTS): operators' actions (resend, retry now,
# stop tracking), marketplace sends bounded in time and then waiting for an operator, the memo
# GET reads while no worker answers, a failing reservation shown in the order. One flag, so that
# an order takes all of it or none of it.
OPERATORS_IN_CONTROL = "operators-in-control"

# A parcel the carrier has not delivered within 60 days, or by the time the order's history has
# 20,000 events (a poll costs about 14; Temporal ends a workflow at 51,200), is left to people:
# the order shows `attention`. At hourly polls the two bounds meet at about 59 days; polls every
# 5 minutes reach the events' bound in about 5 days.
TRACKING_GIVES_UP_AFTER = timedelta(days=60)
TRACKING_HISTORY_LIMIT = 20_000
MIN_TRACKING_POLL = timedelta(seconds=1)
# A carrier or a marketplace that cannot answer for a day: given up until the next poll (for
# the marketplace, the order's own bound when it has one: MARKETPLACE_RETRY_FOR).
TRACKING_CALL_GIVES_UP_AFTER = MARKETPLACE_GIVES_UP_AFTER
# The shortest bound a send can have: one attempt's timeout, and a retry.
MIN_SEND_BOUND = timedelta(seconds=2)
# Operator actions an order records at most: each is an event in its history.
MAX_OPERATOR_ACTIONS = 100

# A delivered status the marketplace refuses for good, or does not take within
# MARKETPLACE_RETRY_FOR, this many times (one per poll): delivered anyway, with `attention`.
DELIVERED_REPORT_TRIES = 3

# The transitions counted in the `seller_orders` metric, by the name of their event.
COUNTED_EVENTS = {
    OrderStatus.PLACED: "placed",
    OrderStatus.FULFILLING: "dispatched",
    OrderStatus.CANCELED: "canceled",
    OrderStatus.INVOICED: "invoiced",
    OrderStatus.DELIVERED: "delivered",
    OrderStatus.EXPIRED: "expired",
}

STEPS: tuple[tuple[FulfillmentStep, Callable[..., Any]], ...] = (
    (FulfillmentStep.PICK, FulfillmentActivities.pick_items),
    (FulfillmentStep.PACK, FulfillmentActivities.pack_items),
    (FulfillmentStep.SHIP, FulfillmentActivities.ship_order),
    (FulfillmentStep.INVOICE, FulfillmentActivities.issue_invoice),
)


def vtex_date(moment: datetime) -> str:
    """The seed's receipt date: `2014-10-06 18:52:00`, UTC."""
    return moment.astimezone(UTC).strftime(VTEX_DATE_FORMAT)


def refusal_type(err: BaseException) -> str | None:
    """The `type` of the non-retryable ApplicationError behind a failed activity, if any (a local
    activity's comes unwrapped)."""
    if isinstance(err, ActivityError) and isinstance(err.cause, ApplicationError):
        return err.cause.type
    return err.type if isinstance(err, ApplicationError) else None


def refused_for_good(err: BaseException) -> bool:
    """Whether a failed activity was refused for good (a non-retryable ApplicationError), rather
    than out of time or attempts for now."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and cause.non_retryable


def cancelled(err: BaseException) -> bool:
    """Whether an activity ended because the workflow cancelled it: cancelled before or during an
    attempt, or failed while its cancellation was asked (Temporal then retries it no more)."""
    if isinstance(err, asyncio.CancelledError):
        return True
    return isinstance(err, ActivityError) and (
        isinstance(err.cause, CancelledError) or err.retry_state == RetryState.CANCEL_REQUESTED
    )


def failure_text(err: BaseException) -> str:
    """What went wrong, in one line: the cause's message rather than the wrapper's."""
    if isinstance(err, ActivityError) and err.cause is not None:
        cause = err.cause
        if isinstance(cause, CancelledError):
            return "cancelled"
        message = getattr(cause, "message", None) or str(cause) or type(cause).__name__
        kind = cause.type if isinstance(cause, ApplicationError) and cause.type else None
        return f"{kind}: {message}" if kind else message
    if isinstance(err, ApplicationError) and err.type:
        return f"{err.type}: {err.message}"
    return str(err) or type(err).__name__


@workflow.defn
class OrderWorkflow:
    """One VTEX order, from placement to invoiced, canceled or expired."""

    @workflow.init
    def __init__(self, order: OrderInput) -> None:
        self._order = order
        self._warehouse_order = WarehouseOrder(
            order_id=order.order_id,
            marketplace_order_id=order.marketplace_order_id,
            lines=order.lines,
            freight_value=order.freight_value,
            shipping_address=order.shipping_address,
        )
        self._status = OrderStatus.RESERVING
        self._status_reason: str | None = None
        self._attention: str | None = None
        self._reserve_refusal: str | None = None
        self._reserved_at: datetime | None = None
        self._lock_expires_at: datetime | None = None
        self._dispatch: OrderReceipt | None = None
        self._dispatched_at: datetime | None = None
        self._cancellation: Cancellation | None = None
        self._current_step: FulfillmentStep | None = None
        self._steps: list[StepRecord] = []
        self._label: ShippingLabel | None = None
        self._invoice: Invoice | None = None
        self._invoice_view: InvoiceView | None = None
        self._delivery: DeliveryView | None = None
        self._compensations: list[str] = []
        self._ended_at: dict[OrderStatus, datetime] = {}
        self._closes_at: datetime | None = None
        self._close_early = False
        # Asked here, at the start, and nowhere else: an order started before it replays its
        # first task with False, and so keeps asking the older patches as it did.
        self._fewer_events = workflow.patched(FEWER_EVENTS)
        self._in_control = workflow.patched(OPERATORS_IN_CONTROL)
        # The search attributes as Temporal has them, so that only changes are upserted. An order
        # on this code counts those it was started with (the API gives them); an order whose
        # first task ran on older code upserted them all there, whatever its start carried (an
        # API of this version and an older worker), and must replay that upsert.
        self._published: dict[str, object] = {}
        if self._fewer_events:
            self._published = {
                pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
            }
            if self._published:
                self._published.setdefault(search.FULFILLMENT_STEP.name, "")
        # The memo as Temporal has it (what the API started the order with: its status and
        # placedAt), so that only changes are upserted (_publish_memo).
        self._memo: dict[str, object] = dict(workflow.memo()) if self._in_control else {}
        # The invoice sent again to refuse a cancellation, or at an operator's request once it
        # was delivered, running beside the order's life.
        self._invoice_resend: asyncio.Task[None] | None = None
        # Operators' actions (the `resend_invoice`, `retry_now` and `stop_tracking` updates).
        self._operator_actions: list[OperatorAction] = []
        # What the order waits on that `retry_now` can hurry: a call to the warehouse or the
        # marketplace (possibly in its retry backoff), a pause before trying again, the next
        # tracking poll. Each such wait restarts at once when this count changes.
        self._waiting_on: list[str] = []
        self._retries_asked = 0
        # The invoice's deliveries (the life's, and those beside it: a refused cancellation's, an
        # operator's): how many sends are in flight (a resend hurries them), how many deliveries
        # wait for an operator's resend after MARKETPLACE_RETRY_FOR, how many resends were asked
        # (it wakes them), how many sends beside the life were asked (each one starts after it was
        # asked), how many sends the marketplace took, and the resend actions whose outcome is due.
        self._sends_in_flight = 0
        self._awaiting_resend = 0
        self._resends_asked = 0
        self._sends_owed = 0
        self._sends_taken = 0
        self._resend_actions: list[OperatorAction] = []
        # Why the marketplace lacks the invoice (or its tracking) it must have, while it does:
        # `attention`, and `InvoiceNotDelivered` in the Temporal UI.
        self._undelivered: str | None = None
        # While the order follows its parcel; `stop_tracking`'s action once an operator gave it up.
        self._following_parcel = False
        self._tracking_stopped: OperatorAction | None = None

    # ── The order's life ────────────────────────────────────────────────────────────────────

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        """Live the order's life; then answer late calls for a while."""
        self._show()
        life = asyncio.create_task(self._live())
        await self._until(life.done)
        await life  # A bug in the life fails the workflow task here, to be fixed and replayed.
        await self._stay_open_for_late_calls()
        # One condition, so that no handler can start a resend between two checks.
        await self._until(
            lambda: (
                (self._invoice_resend is None or self._invoice_resend.done())
                and workflow.all_handlers_finished()
            )
        )
        return self.order()

    async def _live(self) -> None:
        """Reserve, wait for dispatch, fulfill or compensate, tell the marketplace.

        Each stage starts from the status the previous one (or a message) left.
        """
        await self._reserve()
        if self._status == OrderStatus.PLACED:
            await self._wait_for_dispatch()
        if self._status == OrderStatus.EXPIRING:
            await self._expire()
        elif self._status == OrderStatus.FULFILLING:
            await self._fulfill()
        if self._status == OrderStatus.CANCELING:
            await self._compensate()
        if self._status == OrderStatus.INVOICED:
            if self._in_control:
                await self._deliver_invoice()
            else:
                await self._notify_marketplace()
            sent = self._invoice_view is not None and self._invoice_view.sent_at is not None
            # Only an invoice the marketplace took has a tracking status to post to.
            follows = sent and self._label is not None and self._order.tracking_poll_seconds > 0
            if follows and self._patched(TRACK_TO_DELIVERY):
                await self._follow_parcel()
        elif self._status == OrderStatus.CANCELED:
            await self._tell_marketplace_of_seller_cancellation()

    def _patched(self, patch_id: str) -> bool:
        """workflow.patched(patch_id) for a patch older than FEWER_EVENTS: taken without asking
        by an order started on this code."""
        return self._fewer_events or workflow.patched(patch_id)

    async def _until(
        self,
        condition: Callable[[], bool],
        within: timedelta | None = None,
        summary: str | None = None,
    ) -> bool:
        """Wait for `condition` (False if `within` passed first).

        Only `run` waits here: a workflow cancellation (an operator in the Temporal UI) interrupts
        `run`'s wait and nothing else; it is recorded as the seller's cancellation intent, and the
        wait goes on, so that the life decides what it means.
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
            if self._in_control:
                reserved = await self._reserve_visibly()
                if reserved is None:
                    # Canceled while the warehouse kept failing: the retries stopped, the
                    # placement is refused, and the life compensates (`canceling`): the release
                    # gives back whatever an attempt cut short may have taken.
                    self._reserve_refusal = "OrderCanceled"
                    return
                reservation = reserved
            elif self._patched(RESERVATION_IN_THE_FIRST_TASK):
                # A local activity: the worker reserves inside the workflow task that the
                # placement's update-with-start opened, and that one task answers the placement
                # (no activity task through the server, no second workflow task). A worker that
                # dies meanwhile leaves the task to time out (10 s) and run again elsewhere, the
                # reservation with it (it is idempotent per order).
                reservation = await workflow.execute_local_activity_method(
                    FulfillmentActivities.reserve_stock,
                    self._warehouse_order,
                    start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
                    retry_policy=WAREHOUSE_RETRY,
                    summary=f"reserve stock for {self._order.order_id}",
                )
            else:
                reservation = await workflow.execute_activity_method(
                    FulfillmentActivities.reserve_stock,
                    self._warehouse_order,
                    start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=WAREHOUSE_RETRY,
                    summary=f"reserve stock for {self._order.order_id}",
                )
        except FailureError as err:  # a local activity's error is not wrapped in ActivityError
            refusal = refusal_type(err)
            reason = failure_text(err)
            if self._patched(RELEASE_AFTER_FAILED_RESERVATION):
                # The placement is answered now: the stock could not be reserved.
                self._reserve_refusal = refusal if refusal == "OutOfStock" else "ReservationFailed"
                if self._status == OrderStatus.RESERVING:
                    self._move(OrderStatus.CANCELING, reason)
                # The attempt that failed holds nothing (all or nothing), but an earlier attempt,
                # on a worker cut off from Temporal, may still commit. The release settles it: it
                # gives back what such an attempt took, or marks the order released first so
                # that the attempt reserves nothing.
                await self._run_compensation(FulfillmentActivities.release_stock)
            self._reserve_refusal = refusal if refusal == "OutOfStock" else "ReservationFailed"
            self._move(OrderStatus.CANCELED, reason)
            return
        self._reserved_at = reservation.reserved_at
        self._lock_expires_at = self._order.placed_at + self._lock_ttl
        if self._status == OrderStatus.RESERVING:
            self._move(OrderStatus.PLACED)
        # Otherwise a cancellation came during the reservation: the order is `canceling`, and
        # the compensation gives back what was just reserved.

    # The reservation's quick tries in the placement's first workflow task: three attempts, 1 s
    # then 2 s apart, a call that hangs cut after RESERVE_LOCALLY_FOR. Within half the API's
    # default UPDATE_TIMEOUT_SECONDS, so that a placement the API answers 503 finds a failing
    # reservation already listed by Temporal, with its attempt and last error. The attempts are
    # counted, not only timed: the SDK's core loses a local activity's schedule-to-close timeout
    # that falls while it backs off between attempts.
    RESERVE_LOCALLY_FOR = timedelta(seconds=5)
    RESERVE_LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)

    async def _reserve_visibly(self) -> Reservation | None:
        """Reserve: a few quick tries, then, for as long as the warehouse fails, retries people see.

        The tries are a local activity inside the workflow task that the placement's
        update-with-start opened: a reservation that succeeds there costs no event of its own.
        One that keeps failing goes on as a regular activity, which Temporal lists among the
        workflow's pending activities with its attempt and last failure (`pendingCalls`, the
        UI); the order's `attention` says why meanwhile. The regular activity stops when the
        order stops reserving (a cancellation): None then, once the attempt has really stopped.
        A refusal for good (`OutOfStock`) is raised, local or not.
        """
        try:
            return await workflow.execute_local_activity_method(
                FulfillmentActivities.reserve_stock,
                self._warehouse_order,
                start_to_close_timeout=self.RESERVE_LOCALLY_FOR,
                schedule_to_close_timeout=self.RESERVE_LOCALLY_FOR,
                retry_policy=self.RESERVE_LOCAL_RETRY,
                summary=f"reserve stock for {self._order.order_id}",
            )
        except FailureError as err:  # a local activity's error is not wrapped in ActivityError
            if refused_for_good(err):
                raise
            self._attention = f"reserving: {failure_text(err)}; retrying"
        workflow.logger.warning("order %s: %s", self._order.order_id, self._attention)
        self._show()
        try:
            reservation: Reservation = await self._call_warehouse(
                FulfillmentActivities.reserve_stock,
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

    async def _expire(self) -> None:
        await self._run_compensation(FulfillmentActivities.release_stock)
        self._move(OrderStatus.EXPIRED)

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
                    self._cancel_for_failure(step, err)
                break
            if step == FulfillmentStep.SHIP:
                self._label = result
            elif step == FulfillmentStep.INVOICE:
                # The warehouse committed the invoice: canceled or not since, the order is sold.
                self._set_invoice(result)
                if self._fewer_events:
                    self._current_step = None  # published with the status, in one upsert
                self._move(OrderStatus.INVOICED, self._invoiced_despite_cancellation())
        self._current_step = None
        self._show()

    async def _step(self, step: FulfillmentStep, activity: Callable[..., Any]) -> Any:
        """Run one step; abort it as soon as the order stops `fulfilling`.

        Compensation must start only once the step has really stopped: the activity is cancelled
        with WAIT_CANCELLATION_COMPLETED, and whatever it did before it stopped is undone by the
        compensation (or, for the invoice, settled by the release).
        """
        record = StepRecord(name=step, status="running", started_at=workflow.now())
        self._steps.append(record)
        self._current_step = step
        self._show()
        workflow.logger.info("order %s: %s started", self._order.order_id, step)
        try:
            result = await self._call_warehouse(
                activity,
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
            self._set_invoice(await self._committed_invoice())
            self._move(OrderStatus.INVOICED, self._invoiced_despite_cancellation())
            return
        if any(step.name == FulfillmentStep.SHIP for step in self._steps):
            await self._run_compensation(FulfillmentActivities.void_label)
        if self._cancellation is not None:
            self._cancellation.outcome = "confirmed"
        self._move(OrderStatus.CANCELED)

    async def _committed_invoice(self) -> Invoice:
        """The invoice the warehouse committed while a cancellation tried to stop it.

        Issuing is idempotent: this fetches it. The stock is shipped, so the order is sold and
        its invoice must reach the marketplace: a fetch that fails is shown as the order's
        `attention` and tried again, never let out (it would fail the whole workflow).
        """
        while True:
            try:
                invoice: Invoice = await self._call_warehouse(
                    FulfillmentActivities.issue_invoice,
                    f"invoice {self._order.order_id} (already issued)",
                )
            except ActivityError as err:
                if not self._patched(COMMITTED_INVOICE_FETCH_RETRIED):
                    raise
                self._attention = (
                    f"issue_invoice (fetching the committed invoice) failed: {failure_text(err)};"
                    f" trying again every {COMPENSATION_RETRY_AFTER}"
                )
                workflow.logger.error("order %s: %s", self._order.order_id, self._attention)
                self._show()
                await self._pause(COMPENSATION_RETRY_AFTER, "invoice fetch failed")
                continue
            self._attention = None
            return invoice

    async def _run_compensation(self, activity: Callable[..., Any]) -> None:
        """Run a compensation until it is done; only `AlreadyInvoiced` is let out.

        A compensation must not be given up: stock would stay held for an order that will never
        ship. Transient errors are retried by the activity's retry policy; an error the warehouse
        says retrying cannot fix is shown as the order's `attention` and tried again later.
        """
        while True:
            try:
                done = await self._call_warehouse(
                    activity, f"compensate {self._order.order_id} ({activity.__name__})"
                )
            except ActivityError as err:
                if refusal_type(err) == "AlreadyInvoiced":
                    raise
                self._attention = (
                    f"{activity.__name__} failed: {failure_text(err)}; trying again every "
                    f"{COMPENSATION_RETRY_AFTER}"
                )
                workflow.logger.error("order %s: %s", self._order.order_id, self._attention)
                self._show()
                await self._pause(COMPENSATION_RETRY_AFTER, "compensation failed")
                continue
            self._attention = None
            self._compensations.append(
                done.compensation if done.changed else f"{done.compensation} (nothing to undo)"
            )
            return

    def _set_invoice(self, invoice: Invoice) -> None:
        # Both at once: a cancellation handler may run right after and needs both.
        self._invoice = invoice
        self._invoice_view = InvoiceView(
            invoice_number=invoice.invoice_number,
            issuance_date=invoice.issuance_date,
            invoice_value=invoice.invoice_value,
        )

    def _invoiced_despite_cancellation(self) -> str | None:
        if self._cancellation is None:
            return None
        return "the invoice was committed before the cancellation could stop it"

    async def _deliver_invoice(self) -> None:
        """The life's delivery of the invoice and its tracking (`_deliver_until_taken`)."""
        await self._deliver_until_taken(beside_life=False)

    async def _deliver_until_taken(self, beside_life: bool) -> None:
        """Send the invoice, then the tracking, until the marketplace has taken both.

        Each send is retried for MARKETPLACE_RETRY_FOR (any answer but a 2xx is a failed
        delivery). After it, or at once when no attempt can send it (an invalid URL, a host the
        allow-list refuses), the order shows `attention` and `InvoiceNotDelivered`, and waits for
        an operator's `resend_invoice`. An operator's cancellation in Temporal ends the send and
        the wait: the order then closes with the invoice undelivered. The life's delivery also
        ends once another send got both through; a send beside the life (a refused
        cancellation's) must be its own, started after it was asked.
        """
        while True:
            asked, taken_before = self._resends_asked, self._sends_taken
            self._sends_in_flight += 1
            try:
                taken, outcome = await self._send_invoice_and_tracking()
            finally:
                self._sends_in_flight -= 1
            for action in self._resend_actions:
                action.outcome += f"; {outcome}"
            self._resend_actions.clear()
            if taken or (not beside_life and self._sends_taken != taken_before):
                if taken and self._undelivered is not None:
                    self._undelivered = self._attention = None
                self._show()
                return
            self._undelivered = outcome
            self._attention = (
                f"{outcome}; once the marketplace can take it, send it again with the "
                "resend_invoice action"
            )
            self._awaiting_resend += 1
            self._show()
            await workflow.wait_condition(
                lambda: (
                    self._resends_asked != asked  # noqa: B023
                    or self._close_early
                    or self._undelivered is None
                )
            )
            self._awaiting_resend -= 1
            if self._resends_asked == asked:
                return  # Delivered by another send, or an operator closed the order.

    async def _send_beside_life(self) -> None:
        """The sends asked beside the life (a refused cancellation's, an operator's), until each
        was followed by a delivery that started after it was asked."""
        done = 0
        while done != self._sends_owed and not self._close_early:
            asked = self._sends_owed
            await self._deliver_until_taken(beside_life=True)
            done = asked

    async def _send_invoice_and_tracking(self) -> tuple[bool, str]:
        """One send of the invoice, then of its tracking: whether the marketplace took both, and
        what came of it, in words.

        Once the marketplace has taken the invoice (or the tracking) it counts as delivered,
        whatever a later or concurrent send meets: such errors are only told, not recorded.
        """
        assert self._invoice is not None and self._invoice_view is not None
        view = self._invoice_view
        try:
            await self._send_invoice(stop=lambda: self._close_early)
        except ActivityError as err:
            error = failure_text(err)
            workflow.logger.error("order %s: invoice not sent: %s", self._order.order_id, error)
            if view.sent_at is None:
                view.send_error = error
                self._show()
            return False, f"the marketplace has not taken the invoice: {error}"
        if view.sent_at is None:
            view.sent_at = workflow.now()
        else:
            view.resent_count += 1
        view.send_error = None
        self._show()
        if self._tracking is None:
            self._sends_taken += 1
            return True, f"the marketplace took it at {workflow.now():%Y-%m-%d %H:%M:%S} UTC"
        invoice, tracking = self._invoice, self._tracking
        try:
            await self._call(
                f"send tracking of {invoice.invoice_number}",
                lambda: workflow.start_activity_method(
                    FulfillmentActivities.send_tracking,
                    TrackingNotice(
                        retry_any_answer=self._in_control,
                        marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                        marketplace_order_id=self._order.marketplace_order_id,
                        invoice_number=invoice.invoice_number,
                        tracking=tracking,
                        dispatched_date=invoice.issuance_date,
                    ),
                    start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                    schedule_to_close_timeout=self._send_bound,
                    retry_policy=MARKETPLACE_RETRY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"send tracking of {invoice.invoice_number}",
                ),
                stop=lambda: self._close_early,
            )
        except ActivityError as err:
            error = failure_text(err)
            workflow.logger.error("order %s: tracking not sent: %s", self._order.order_id, error)
            if view.tracking_sent_at is None:
                view.tracking_send_error = error
                self._show()
            return False, f"the marketplace has not taken the tracking: {error}"
        view.tracking_sent_at = view.tracking_sent_at or workflow.now()
        view.tracking_send_error = None
        self._sends_taken += 1
        self._show()
        return True, f"the marketplace took them at {workflow.now():%Y-%m-%d %H:%M:%S} UTC"

    async def _notify_marketplace(self) -> None:
        """Send the invoice, then the tracking; a refusal is recorded, the order stays invoiced.

        The delivery of orders started before operators' actions existed (OPERATORS_IN_CONTROL);
        newer orders take `_deliver_invoice`."""
        assert self._invoice is not None and self._invoice_view is not None
        view = self._invoice_view
        try:
            await self._send_invoice()
            view.sent_at = workflow.now()
        except ActivityError as err:
            view.send_error = failure_text(err)
            workflow.logger.error(
                "order %s: invoice not sent: %s", self._order.order_id, view.send_error
            )
            self._show()
            return
        if self._tracking is None:
            return
        try:
            await workflow.execute_activity_method(
                FulfillmentActivities.send_tracking,
                TrackingNotice(
                    retry_any_answer=self._in_control,
                    marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                    marketplace_order_id=self._order.marketplace_order_id,
                    invoice_number=self._invoice.invoice_number,
                    tracking=self._tracking,
                    dispatched_date=self._invoice.issuance_date,
                ),
                start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                retry_policy=MARKETPLACE_RETRY,
                summary=f"send tracking of {self._invoice.invoice_number}",
            )
            view.tracking_sent_at = workflow.now()
        except ActivityError as err:
            view.tracking_send_error = failure_text(err)
        self._show()

    async def _follow_parcel(self) -> None:
        """Ask the carrier where the parcel is, post each news, until it is delivered.

        A durable timer between polls: a worker that dies mid-wait costs nothing. A carrier or a
        marketplace that cannot answer for now is asked again at the next poll; only a refusal
        for good (or the bounds below) stops the following. An operator's cancellation in
        Temporal stops it at once (a post in flight is waited for, so that what the order says
        was reported is what the marketplace has).
        """
        assert self._invoice is not None
        delivery = self._delivery = DeliveryView()
        poll = max(timedelta(seconds=self._order.tracking_poll_seconds), MIN_TRACKING_POLL)
        give_up_at = workflow.now() + TRACKING_GIVES_UP_AFTER
        reported: ParcelStatus | None = None  # what the marketplace has taken
        refused: ParcelStatus | None = None  # what it refused for good: not posted again
        self._following_parcel = True
        try:
            await self._follow(delivery, poll, give_up_at, reported, refused)
        finally:
            self._following_parcel = False

    async def _follow(
        self,
        delivery: DeliveryView,
        poll: timedelta,
        give_up_at: datetime,
        reported: ParcelStatus | None,
        refused: ParcelStatus | None,
    ) -> None:
        assert self._invoice is not None
        invoice_number = self._invoice.invoice_number
        while not self._stop_following():
            if workflow.now() >= give_up_at:
                delivery.stopped = f"not delivered within {TRACKING_GIVES_UP_AFTER.days} days"
            elif workflow.info().get_current_history_length() >= TRACKING_HISTORY_LIMIT:
                delivery.stopped = f"not delivered within {TRACKING_HISTORY_LIMIT} history events"
            if delivery.stopped:
                self._attention = f"parcel not followed any more ({delivery.stopped}): follow it up"
                break
            try:
                parcel: ParcelStatus | None = await self._unless_closed(
                    f"track the parcel of {invoice_number}",
                    lambda: workflow.start_activity_method(
                        FulfillmentActivities.track_parcel,
                        self._warehouse_order,
                        start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
                        schedule_to_close_timeout=TRACKING_CALL_GIVES_UP_AFTER,
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        retry_policy=WAREHOUSE_RETRY,
                        cancellation_type=self._cancellation_type,
                        summary=f"track the parcel of {invoice_number}",
                    ),
                )
            except ActivityError as err:
                if refused_for_good(err):
                    delivery.stopped = f"the carrier cannot track it: {failure_text(err)}"
                    self._attention = f"parcel not followed any more ({delivery.stopped})"
                    break
                delivery.poll_error = failure_text(err)  # down for now: the next poll asks again
                parcel = None
            else:
                if parcel is None:
                    break  # closed by an operator
                delivery.poll_error = None
                delivery.last_polled_at = workflow.now()
                delivery.events = [TrackingEventView(**e.model_dump()) for e in parcel.events]
                if self._is_news(parcel, reported, refused):
                    outcome = await self._report_parcel(parcel, give_up_at)
                    if outcome == "taken":
                        reported = parcel
                    elif outcome == "refused":
                        refused = parcel
                refused_for_good_enough = delivery.report_refusals >= DELIVERED_REPORT_TRIES
                if parcel.delivered and (parcel == reported or refused_for_good_enough):
                    delivery.delivered = True
                    if parcel != reported:
                        self._attention = (
                            f"the marketplace refused the delivered status: {delivery.report_error}"
                        )
                    self._move(OrderStatus.DELIVERED)
                    return
            self._show()
            asked = self._retries_asked
            self._waiting_on.append("the next tracking poll")
            await self._until(
                lambda: self._stop_following() or self._retries_asked != asked,  # noqa: B023
                within=poll,
                summary="next tracking poll",
            )
            self._waiting_on.remove("the next tracking poll")
        if self._tracking_stopped is not None and not delivery.stopped:
            action = self._tracking_stopped
            delivery.stopped = f"given up by {action.by}" + (
                f": {action.reason}" if action.reason else ""
            )
        delivery.stopped = delivery.stopped or "an operator closed the order in Temporal"
        workflow.logger.warning(
            "order %s: parcel no longer followed: %s", self._order.order_id, delivery.stopped
        )
        self._show()

    @staticmethod
    def _is_news(
        parcel: ParcelStatus, reported: ParcelStatus | None, refused: ParcelStatus | None
    ) -> bool:
        """Whether the carrier's answer is worth a post: not what the marketplace has, not fewer
        events than it has (a carrier's glitch must not take tracking back), and not what it
        refused for good (a delivered status excepted: it is posted again, DELIVERED_REPORT_TRIES
        times in all)."""
        if parcel == reported:
            return False
        if reported is not None and len(parcel.events) < len(reported.events):
            return parcel.delivered and not reported.delivered
        return parcel != refused or parcel.delivered

    async def _report_parcel(self, parcel: ParcelStatus, give_up_at: datetime) -> str:
        """Post the parcel's events to the marketplace: `taken`, `refused` (for good; kept in
        `reportError`), `later` (it could not answer within the bounds: the next poll posts
        again) or `closed` (an operator closed the order while it was not sent)."""
        assert self._invoice is not None and self._delivery is not None
        delivery = self._delivery
        # Bounded, so that a marketplace that never takes it cannot hold the following past its
        # own bounds.
        left = max(give_up_at - workflow.now(), timedelta(minutes=1))
        invoice_number = self._invoice.invoice_number
        try:
            answer = await self._unless_closed(
                f"send tracking status of {invoice_number}",
                lambda: workflow.start_activity_method(
                    FulfillmentActivities.send_tracking_status,
                    TrackingStatusNotice(
                        retry_any_answer=self._in_control,
                        marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                        marketplace_order_id=self._order.marketplace_order_id,
                        invoice_number=invoice_number,
                        is_delivered=parcel.delivered,
                        events=parcel.events,
                    ),
                    start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                    schedule_to_close_timeout=min(
                        left, self._send_bound or TRACKING_CALL_GIVES_UP_AFTER
                    ),
                    retry_policy=MARKETPLACE_RETRY,
                    # Closed meanwhile: the attempt in flight ends first, and its outcome counts.
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"send tracking status of {invoice_number}"
                    + (
                        " (delivered)"
                        if parcel.delivered
                        else " (1 event)"
                        if len(parcel.events) == 1
                        else f" ({len(parcel.events)} events)"
                    ),
                ),
            )
        except ActivityError as err:
            delivery.report_error = failure_text(err)
            if self._in_control and parcel.delivered and err.retry_state == RetryState.TIMEOUT:
                # Not taken within MARKETPLACE_RETRY_FOR: a refusal of the delivered status, as
                # counted for DELIVERED_REPORT_TRIES; posted again at the next poll.
                delivery.report_refusals += 1
                return "later"
            if not refused_for_good(err):
                return "later"
            if parcel.delivered:
                delivery.report_refusals += 1
            return "refused"
        if answer is None:
            return "closed"
        delivery.events_reported = len(parcel.events)
        delivery.reported_at = workflow.now()
        delivery.report_error = None
        return "taken"

    async def _unless_closed(
        self, what: str, start: Callable[[], workflow.ActivityHandle[Any]]
    ) -> Any:
        """The activity's result, or None once an operator closed the order in Temporal or gave
        up its tracking (the activity is then cancelled)."""
        try:
            return await self._call(what, start, stop=self._stop_following)
        except (ActivityError, asyncio.CancelledError):
            if self._stop_following():
                return None
            raise

    def _stop_following(self) -> bool:
        return self._close_early or self._tracking_stopped is not None

    @property
    def _cancellation_type(self) -> workflow.ActivityCancellationType:
        """How the order's calls are cancelled: waiting for the attempt in flight to end, so that
        a call retried now never runs beside its previous attempt. Orders started before
        operators' actions did not wait (their histories replay so)."""
        if self._in_control:
            return workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
        return workflow.ActivityCancellationType.TRY_CANCEL

    async def _call(
        self,
        what: str,
        start: Callable[[], workflow.ActivityHandle[Any]],
        stop: Callable[[], bool] = lambda: False,
    ) -> Any:
        """Run the activity `start` starts, until it ends or `stop()` turns true (it is then
        cancelled; what it raises goes out, for the caller to decide from state).

        When an operator asks to retry now (`retry_now`), it is cancelled and started again at
        once, its attempts from one: an attempt in flight ends first, and its outcome counts.
        """
        self._waiting_on.append(what)
        try:
            while True:
                asked = self._retries_asked
                handle = start()
                await workflow.wait_condition(
                    lambda: handle.done() or stop() or self._retries_asked != asked  # noqa: B023
                )
                if not handle.done():
                    handle.cancel()
                try:
                    return await handle
                except (ActivityError, asyncio.CancelledError) as err:
                    if self._retries_asked != asked and not stop() and cancelled(err):
                        workflow.logger.info(
                            "order %s: %s retried now, as an operator asked",
                            self._order.order_id,
                            what,
                        )
                        continue
                    raise
        finally:
            self._waiting_on.remove(what)

    async def _call_warehouse(
        self,
        activity: Callable[..., Any],
        summary: str,
        start_to_close: timedelta = WAREHOUSE_CALL_TIMEOUT,
        stop: Callable[[], bool] = lambda: False,
    ) -> Any:
        """A warehouse activity on the order through `_call` (so `retry_now` restarts it): it
        heartbeats, is retried by WAREHOUSE_RETRY, and its cancellation is waited for."""
        return await self._call(
            summary,
            lambda: workflow.start_activity_method(
                activity,
                self._warehouse_order,
                start_to_close_timeout=start_to_close,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAREHOUSE_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=summary,
            ),
            stop=stop,
        )

    async def _pause(self, duration: timedelta, summary: str) -> None:
        """Wait `duration` before trying again, or less if an operator asks to retry now."""
        asked = self._retries_asked
        self._waiting_on.append(f"a pause ({summary})")
        try:
            await workflow.wait_condition(
                lambda: self._retries_asked != asked, timeout=duration, timeout_summary=summary
            )
        except TimeoutError:
            pass
        finally:
            self._waiting_on.remove(f"a pause ({summary})")

    async def _send_invoice(self, stop: Callable[[], bool] = lambda: False) -> None:
        assert self._invoice is not None
        invoice = self._invoice
        await self._call(
            f"send invoice {invoice.invoice_number}",
            lambda: workflow.start_activity_method(
                FulfillmentActivities.send_invoice,
                InvoiceNotice(
                    retry_any_answer=self._in_control,
                    marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                    marketplace_order_id=self._order.marketplace_order_id,
                    invoice=invoice,
                    tracking=self._tracking,
                ),
                start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                schedule_to_close_timeout=self._send_bound,
                retry_policy=MARKETPLACE_RETRY,
                cancellation_type=self._cancellation_type,
                summary=f"send invoice {invoice.invoice_number}",
            ),
            stop=stop,
        )

    @property
    def _send_bound(self) -> timedelta | None:
        """How long a send to the marketplace is retried (none for orders started before
        operators' actions: they could not be resent)."""
        if not self._in_control:
            return None
        return max(timedelta(seconds=self._order.marketplace_retry_seconds), MIN_SEND_BOUND)

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
        try:
            await self._call(
                what,
                lambda: workflow.start_activity_method(
                    FulfillmentActivities.send_cancellation,
                    CancellationNotice(
                        retry_any_answer=self._in_control,
                        marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                        marketplace_order_id=self._order.marketplace_order_id,
                        reason=cancellation.reason or "canceled by the seller",
                    ),
                    start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                    schedule_to_close_timeout=self._send_bound,
                    retry_policy=MARKETPLACE_RETRY,
                    cancellation_type=self._cancellation_type,
                    summary=what,
                ),
            )
            cancellation.marketplace_notified_at = workflow.now()
        except ActivityError as err:
            cancellation.marketplace_error = failure_text(err)
            if self._in_control:
                self._attention = (
                    f"the marketplace was not told of the seller's cancellation: "
                    f"{cancellation.marketplace_error}; tell it by hand"
                )
        self._show()

    async def _stay_open_for_late_calls(self) -> None:
        window = timedelta(seconds=self._order.late_call_window_seconds)
        self._closes_at = workflow.now() + window
        self._show()
        if window > timedelta(0) and not self._close_early:
            await self._until(lambda: self._close_early, within=window, summary="late-call window")

    # ── Intents: who asked the order to stop ────────────────────────────────────────────────

    def _cancel_by_operator(self) -> None:
        """A workflow cancellation from Temporal (UI, CLI): the seller cancels the order.

        Before the invoice it is compensated like a marketplace cancellation, and the marketplace
        is told; once the order has ended (invoiced included) it closes the late-call window early.
        """
        workflow.logger.warning("order %s: workflow cancelled in Temporal", self._order.order_id)
        if is_final(self._status):
            self._close_early = True
            self._show()
            return
        if self._status == OrderStatus.CANCELING and self._cancellation is None:
            # A failed reservation being released: it ends canceled, as asked; then it closes.
            self._close_early = True
            return
        if self._cancellation is not None or self._status not in CANCEL_STARTS_IN:
            return  # Already being canceled, or expiring: nothing more to ask.
        now = workflow.now()
        self._cancellation = Cancellation(
            receipt=self._receipt(now),
            requested_at=now,
            reached_order_at=now,
            reason="the workflow was cancelled in Temporal by an operator",
            requested_by="seller",
        )
        self._move(OrderStatus.CANCELING, self._cancellation_reason())

    def _cancel_for_failure(self, step: FulfillmentStep, err: BaseException) -> None:
        now = workflow.now()
        self._cancellation = Cancellation(
            receipt=self._receipt(now),
            requested_at=now,
            reached_order_at=now,
            reason=f"{step} failed: {failure_text(err)}",
            requested_by="seller",
        )
        workflow.logger.error("order %s: %s", self._order.order_id, self._cancellation.reason)
        self._move(OrderStatus.CANCELING, self._cancellation_reason())

    # ── Updates: the marketplace's calls ────────────────────────────────────────────────────

    @workflow.update
    async def place(self, request: PlaceRequest) -> PlacementResult:
        """Order placement: answers once the stock is reserved."""
        await workflow.wait_condition(
            lambda: self._reserved_at is not None or self._reserve_refusal is not None
        )
        if self._reserved_at is None:
            raise ApplicationError(
                self._status_reason or "the stock could not be reserved",
                # The API tells a different placement with the same id from a retry by this.
                self._order.placement_fingerprint,
                type=self._reserve_refusal or "ReservationFailed",
                non_retryable=True,
            )
        return PlacementResult(
            order_id=self._order.order_id,
            marketplace_order_id=self._order.marketplace_order_id,
            reserved_at=self._reserved_at,
            placement_fingerprint=self._order.placement_fingerprint,
        )

    @workflow.update
    async def dispatch(self, request: DispatchRequest) -> OrderReceipt:
        """Order Dispatching: authorizes fulfillment; answers the receipt."""
        await workflow.wait_condition(lambda: self._status != OrderStatus.RESERVING)
        if self._dispatch is None:
            # Decided again after the wait: the reservation may have failed, or a cancellation
            # may have come, while this dispatch waited.
            self._refuse_dispatch()
            self._dispatched_at = request.received_at
            self._dispatch = self._receipt(request.received_at)
            if self._fewer_events:
                # The life starts the first step in this same workflow task: published with the
                # status, in one upsert.
                self._current_step = STEPS[0][0]
            self._move(OrderStatus.FULFILLING)
        return self._dispatch

    @dispatch.validator
    def _validate_dispatch(self, request: DispatchRequest) -> None:
        self._reject_other_order(request.marketplace_order_id)
        if self._dispatch is None:
            self._refuse_dispatch()

    @workflow.update
    async def cancel(self, request: CancelRequest) -> OrderReceipt:
        """Marketplace Order Cancellation: confirm once the order will not be fulfilled, or refuse
        once invoiced."""
        if self._cancellation is None:
            self._cancellation = Cancellation(
                receipt=self._receipt(request.received_at),
                requested_at=request.received_at,
                reached_order_at=workflow.now(),
                reason=request.reason,
                cancellation_request_id=request.cancellation_request_id,
                cancellation_request_date=request.cancellation_request_date,
                requested_by_user=request.requested_by_user,
            )
            named, fields = self._cancellation_request_log()
            workflow.logger.info(
                "order %s: cancellation requested%s", self._order.order_id, named, extra=fields
            )
        cancellation = self._cancellation
        cancellation.marketplace_asked = True
        if self._status in CANCEL_STARTS_IN:
            # First the status: from here on no dispatch is accepted, and the life stops.
            self._move(OrderStatus.CANCELING, self._cancellation_reason())
        await workflow.wait_condition(lambda: is_final(self._status))
        if self._status in CANCEL_REFUSED_IN:
            await self._refuse_cancellation()
        # Otherwise CANCEL_CONFIRMED_IN: the order will not be fulfilled.
        cancellation.outcome = "confirmed"
        self._show()
        return cancellation.receipt

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        self._reject_other_order(request.marketplace_order_id)

    async def _refuse_cancellation(self) -> None:
        """Send the invoice again, which is how a seller refuses, and fail the update.

        The refusal is answered at once; the invoice goes out beside it, for as long as the
        marketplace takes to accept it (`run` waits for it before the workflow closes). Waiting
        for the send first would leave the marketplace with "still evaluating" for as long as it
        refuses the invoice.
        """
        assert self._invoice is not None and self._invoice_view is not None
        if self._cancellation is not None:
            self._cancellation.outcome = "refused"
        named, fields = self._cancellation_request_log()
        workflow.logger.info(
            "order %s: cancellation refused, invoiced%s", self._order.order_id, named, extra=fields
        )
        resend = "the invoice is being sent to the marketplace again"
        if self._in_control:
            # Its own send, started after this refusal, even if another is in flight.
            self._send_again_beside_life()
        elif self._patched(REFUSAL_ANSWERS_BEFORE_RESEND):
            if self._invoice_resend is None:
                self._invoice_resend = asyncio.create_task(self._resend_invoice())
        else:
            resend = "the invoice was sent to the marketplace again"
            try:
                await self._send_invoice()
                self._invoice_view.resent_count += 1
            except ActivityError as err:
                self._invoice_view.send_error = failure_text(err)
        raise ApplicationError(
            f"order {self._order.order_id} is {self._status} ({self._invoice.invoice_number}) and "
            f"can no longer be canceled; {resend}",
            type="OrderInvoiced",
            non_retryable=True,
        )

    def _send_again_beside_life(self) -> None:
        """Ask for one more send beside the life; started now unless one is running, which then
        sends again once its send in flight is done."""
        self._sends_owed += 1
        if self._invoice_resend is None or self._invoice_resend.done():
            self._invoice_resend = asyncio.create_task(self._send_beside_life())

    async def _resend_invoice(self) -> None:
        """The invoice again; once taken, it counts as delivered whatever earlier sends met (orders
        started before OPERATORS_IN_CONTROL)."""
        view = self._invoice_view
        assert view is not None
        try:
            await self._send_invoice()
        except ActivityError as err:
            view.send_error = failure_text(err)
        else:
            view.resent_count += 1
            view.send_error = None
            view.sent_at = view.sent_at or workflow.now()
        self._show()

    # ── Updates: operators' actions ─────────────────────────────────────────────────────────
    # Reached from the Temporal UI ("Send Update"), `python -m api.operator_actions`, and the ops
    # listener's /ops/orders/{orderId}/... Each is recorded in the order (`operatorActions`).

    @workflow.update
    def resend_invoice(self, request: OperatorRequest) -> OperatorAction:
        """Send the invoice and its tracking to the marketplace again, now."""
        action = self._operator_action(OperatorActionName.RESEND_INVOICE, request)
        if self._sends_in_flight:
            self._retries_asked += 1
            action.outcome = "a send was in progress: it is retried now"
        elif self._awaiting_resend:
            self._resends_asked += 1
            action.outcome = "sending the invoice and the tracking again"
        else:
            self._send_again_beside_life()
            action.outcome = "sending the invoice and the tracking again"
        self._resend_actions.append(action)
        return self._record(action)

    @resend_invoice.validator
    def _validate_resend_invoice(self, request: OperatorRequest) -> None:
        # Past the cap too while the invoice waits for it: nothing else could deliver it.
        self._check_operator_request(request, capped=not self._awaiting_resend)
        if self._invoice_view is None:
            self._refuse_action(f"it has no invoice to send ({self._status})")

    @workflow.update
    def retry_now(self, request: OperatorRequest) -> OperatorAction:
        """Retry now whatever the order waits on: a call in its retry backoff (restarted, its
        attempts from one), a pause before trying a compensation again, the next tracking poll."""
        action = self._operator_action(OperatorActionName.RETRY_NOW, request)
        action.outcome = "retrying now: " + ", ".join(self._waiting_on)
        self._retries_asked += 1
        return self._record(action)

    @retry_now.validator
    def _validate_retry_now(self, request: OperatorRequest) -> None:
        self._check_operator_request(request)
        if not self._waiting_on:
            self._refuse_action(f"it waits on nothing that can be retried ({self._status})")

    @workflow.update
    def stop_tracking(self, request: OperatorRequest) -> OperatorAction:
        """Give up following the parcel: the order stays invoiced and closes after its late-call
        window."""
        action = self._operator_action(OperatorActionName.STOP_TRACKING, request)
        action.outcome = "the parcel is no longer followed"
        self._tracking_stopped = action
        return self._record(action)

    @stop_tracking.validator
    def _validate_stop_tracking(self, request: OperatorRequest) -> None:
        self._check_operator_request(request)
        if not self._following_parcel or self._tracking_stopped is not None:
            stopped = self._delivery.stopped if self._delivery else None
            self._refuse_action(
                f"it is not following a parcel ({self._status}{'; ' + stopped if stopped else ''})"
            )

    def _check_operator_request(self, request: OperatorRequest, capped: bool = True) -> None:
        """What every operator's action must satisfy, from whichever client it comes."""
        if not self._in_control:
            self._refuse_action("it was started before operators' actions existed")
        by, reason = request.by.strip(), request.reason
        if not by or len(by) > 200 or not by.isprintable():
            self._refuse_action("`by` must name who asks: 1 to 200 printable characters")
        if reason is not None and (len(reason) > 1000 or not reason.isprintable()):
            self._refuse_action("`reason` must be at most 1000 printable characters")
        if capped and len(self._operator_actions) >= MAX_OPERATOR_ACTIONS:
            self._refuse_action(f"it has recorded {MAX_OPERATOR_ACTIONS} actions already")

    def _refuse_action(self, why: str) -> None:
        raise ApplicationError(
            f"order {self._order.order_id}: refused, {why}",
            type="ActionRefused",
            non_retryable=True,
        )

    def _operator_action(
        self, name: OperatorActionName, request: OperatorRequest
    ) -> OperatorAction:
        return OperatorAction(
            action=name,
            by=request.by.strip(),
            reason=request.reason,
            requested_at=workflow.now(),
            outcome="",
        )

    def _record(self, action: OperatorAction) -> OperatorAction:
        self._operator_actions.append(action)
        workflow.logger.info(
            "order %s: %s by %s: %s%s",
            self._order.order_id,
            action.action,
            action.by,
            action.outcome,
            f" (reason: {action.reason})" if action.reason else "",
        )
        self._show()
        return action

    # ── The query: the order as people see it ─────────────────────────────────────────────

    @workflow.query
    def order(self) -> OrderView:
        """The order's status, step, times, receipts, invoice and tracking."""
        return OrderView(
            order_id=self._order.order_id,
            marketplace_order_id=self._order.marketplace_order_id,
            workflow_id=workflow.info().workflow_id,
            status=self._status,
            current_step=self._current_step,
            status_reason=self._status_reason,
            attention=self._attention,
            placed_at=self._order.placed_at,
            reserved_at=self._reserved_at,
            lock_expires_at=self._lock_expires_at,
            dispatched_at=self._dispatched_at,
            invoiced_at=self._ended_at.get(OrderStatus.INVOICED),
            delivered_at=self._ended_at.get(OrderStatus.DELIVERED),
            canceled_at=self._ended_at.get(OrderStatus.CANCELED),
            expired_at=self._ended_at.get(OrderStatus.EXPIRED),
            closes_at=self._closes_at,
            items=self._order.lines,
            marketplace_services_endpoint=self._order.marketplace_services_endpoint,
            dispatch=self._dispatch,
            cancellation=self._cancellation,
            steps=self._steps,
            compensations=self._compensations,
            tracking=self._tracking,
            invoice=self._invoice_view,
            delivery=self._delivery,
            operator_actions=self._operator_actions,
        )

    # ── Helpers ───────────────────────────────────────────────────────────────────────────

    @property
    def _lock_ttl(self) -> timedelta:
        return timedelta(seconds=self._order.lock_ttl_seconds)

    @property
    def _tracking(self) -> Tracking | None:
        if self._label is None:
            return None
        return Tracking(
            courier=self._label.courier,
            tracking_number=self._label.tracking_number,
            tracking_url=self._label.tracking_url,
        )

    def _receipt(self, received_at: datetime) -> OrderReceipt:
        return OrderReceipt(
            date=vtex_date(received_at),
            marketplace_order_id=self._order.marketplace_order_id,
            order_id=self._order.order_id,
            receipt=str(workflow.uuid4()),
        )

    def _reject_other_order(self, marketplace_order_id: str) -> None:
        if marketplace_order_id != self._order.marketplace_order_id:
            raise ApplicationError(
                f"marketplaceOrderId {marketplace_order_id} is not the one of order "
                f"{self._order.order_id} ({self._order.marketplace_order_id})",
                type="MarketplaceOrderIdMismatch",
                non_retryable=True,
            )

    def _refuse_dispatch(self) -> None:
        """Raise the refusal of a new dispatch in the current status, if it is refused."""
        refusal = dispatch_refusal(self._status)
        if refusal is None:
            return
        reason = f": {self._status_reason}" if self._status_reason else ""
        raise ApplicationError(
            f"order {self._order.order_id} is {self._status}{reason}",
            type=refusal,
            non_retryable=True,
        )

    def _cancellation_reason(self) -> str:
        by = self._cancellation.requested_by if self._cancellation else "marketplace"
        reason = self._cancellation.reason if self._cancellation else None
        return f"canceled by the {by}: {reason}" if reason else f"canceled by the {by}"

    def _move(self, status: OrderStatus, reason: str | None = None) -> None:
        """The one way the status changes: only along workflows/lifecycle.py's arrows.

        A move the lifecycle forbids is a bug: it fails the workflow task (the order waits, visible
        in the Temporal UI, until the code is fixed) rather than leave the order in a wrong state.
        """
        if not can_move(self._status, status):
            raise RuntimeError(
                f"order {self._order.order_id}: {self._status} -> {status} is not allowed"
            )
        self._status = status
        if status in COUNTED_EVENTS:
            # Replay-safe: the SDK drops metrics while a history replays.
            workflow.metric_meter().create_counter(
                "seller_orders", "Orders by what happened to them"
            ).add(1, {"event": COUNTED_EVENTS[status]})
        if reason is not None or status == OrderStatus.INVOICED:
            self._status_reason = reason
        if is_final(status):
            self._ended_at[status] = workflow.now()
        # A move a cancellation made, or one it met (an invoice it came too late for).
        cancellation_move = status in (
            OrderStatus.CANCELING,
            OrderStatus.CANCELED,
            OrderStatus.INVOICED,
        )
        named, fields = self._cancellation_request_log() if cancellation_move else ("", {})
        workflow.logger.info(
            "order %s: %s%s%s",
            self._order.order_id,
            status,
            f" ({reason})" if reason else "",
            named,
            extra=fields,
        )
        self._show()

    def _cancellation_request_log(self) -> tuple[str, dict[str, str]]:
        """The marketplace's cancellation request, as the order's log lines about it name it (an
        end of the line, and the record's fields); nothing without one."""
        if self._cancellation is None:
            return "", {}
        text = cancellation_request_text(self._cancellation)
        return (f" [{text}]" if text else ""), cancellation_request_fields(self._cancellation)

    def _show(self, activity: str | None = None) -> None:
        """What the Temporal UI shows as the workflow's current details."""
        details = [f"**{self._status}**"]
        if activity:
            details.append(activity)
        elif self._current_step and self._status == OrderStatus.FULFILLING:
            details.append(f"step: {self._current_step}")
        if self._status_reason:
            details.append(self._status_reason)
        if self._attention:
            details.append(f"attention: {self._attention}")
        if self._invoice is not None:
            details.append(f"invoice {self._invoice.invoice_number}")
        delivery = self._delivery
        if delivery is not None and delivery.events and self._status == OrderStatus.INVOICED:
            details.append(f"parcel: {delivery.events[-1].description}")
        if is_final(self._status) and self._closes_at is not None:
            details.append(f"open for late calls until {self._closes_at:%Y-%m-%d %H:%M:%S} UTC")
        workflow.set_current_details(" · ".join(details))
        self._publish()

    def _publish(self) -> None:
        """Upsert the search attributes that changed, so the Temporal UI's list shows where the
        order is (workflows/search.py). Orders started before they existed get them from their
        next change on: `patched` keeps their recorded histories replaying."""
        if not self._patched(SEARCH_ATTRIBUTES):
            return
        self._publish_memo()
        invoice = self._invoice_view
        values: dict[str, object] = {
            search.MARKETPLACE_ORDER_ID.name: self._order.marketplace_order_id,
            search.SELLER_ORDER_ID.name: self._order.order_id,
            search.ORDER_STATUS.name: str(self._status),
            search.FULFILLMENT_STEP.name: str(self._current_step or ""),
            search.INVOICE_NOT_DELIVERED.name: (
                self._undelivered is not None
                if self._in_control
                else bool(invoice and invoice.send_error)
            ),
        }
        changed = {
            name: value for name, value in values.items() if self._published.get(name) != value
        }
        if not changed:
            return
        keys = {key.name: key for key in search.ALL}
        workflow.upsert_search_attributes(
            [
                keys[name].value_unset() if value == "" else keys[name].value_set(value)  # type: ignore[arg-type]
                for name, value in changed.items()
            ]
        )
        self._published.update(changed)

    def _publish_memo(self) -> None:
        """Upsert the memo fields that changed: what GET /pvt/orders/{orderId} answers from,
        marked not live, while no worker answers the order's query (api/stored_order.py).

        Named as in the order's view (camelCase), with the invoice's number, date and value (not
        its sending state, which changes more often). Only from orders started on this code
        (OPERATORS_IN_CONTROL): a recorded history has no memo upsert to replay.
        """
        if not self._in_control:
            return
        included: dict[str, Any] = dict.fromkeys(
            (
                "status",
                "status_reason",
                "attention",
                "placed_at",
                "reserved_at",
                "lock_expires_at",
                "dispatched_at",
                "invoiced_at",
                "delivered_at",
                "canceled_at",
                "expired_at",
                "closes_at",
            ),
            True,
        )
        included["invoice"] = {"invoice_number", "issuance_date", "invoice_value"}
        values = self.order().model_dump(mode="json", include=included)
        changed = {name: value for name, value in values.items() if self._memo.get(name) != value}
        if changed:
            # None removes a key: an attention that is over, say.
            workflow.upsert_memo(changed)
            self._memo.update(changed)
