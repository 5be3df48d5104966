"""The life of one order, read top to bottom.

placed ──dispatch──▶ fulfilling: pick ▸ pack ▸ ship ▸ invoice ──▶ invoiced
  │                      │
  │ lockTTL              │ cancel (before the invoice): abort the step, compensate
  ▼                      ▼
expired               canceled

Placement reserves the stock and waits for Order Dispatching. Dispatch and cancellation arrive
as Workflow Updates with fixed ids, so Temporal itself answers a retried call with the first
answer. A cancellation aborts the running step (it stops mid-way), then releases the stock and
voids the label. Once the invoice is issued the order cannot be canceled: a cancellation is
refused and the invoice sent to the marketplace again. After the order ends, the workflow stays
open for the late-call window so late calls are still answered by the order itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.fulfillment import FulfillmentActivities
    from activities.marketplace import CancellationNotice, InvoiceNotice, TrackingNotice
    from activities.warehouse import Invoice, ShippingLabel, WarehouseOrder
    from workflows.messages import (
        FINAL_STATUSES,
        VTEX_DATE_FORMAT,
        Cancellation,
        CancelRequest,
        DispatchRequest,
        FulfillmentStep,
        InvoiceView,
        OrderInput,
        OrderReceipt,
        OrderStatus,
        OrderView,
        PlacementResult,
        PlaceRequest,
        StepRecord,
        Tracking,
    )

# A warehouse step may take hours in a real warehouse; a dead worker is noticed by the missed
# heartbeats instead, after HEARTBEAT_TIMEOUT, and the step is retried on another worker.
STEP_TIMEOUT = timedelta(hours=24)
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
WAREHOUSE_CALL_TIMEOUT = timedelta(minutes=5)
MARKETPLACE_CALL_TIMEOUT = timedelta(seconds=60)
# The marketplace may be down for a while: keep trying, at most once a minute.
MARKETPLACE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
)
WAREHOUSE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)


def vtex_date(moment: datetime) -> str:
    """The seed's receipt date: `2014-10-06 18:52:00`, UTC."""
    return moment.astimezone(UTC).strftime(VTEX_DATE_FORMAT)


def is_cancellation(err: BaseException) -> bool:
    """Whether `err` is a cancellation: of this code, or of the activity it awaited."""
    if isinstance(err, asyncio.CancelledError):
        return True
    return isinstance(err, ActivityError) and isinstance(err.cause, CancelledError)


def refusal_type(err: BaseException) -> str | None:
    """The `type` of the non-retryable ApplicationError behind a failed activity, if any."""
    if isinstance(err, ActivityError) and isinstance(err.cause, ApplicationError):
        return err.cause.type
    return None


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
        self._status = OrderStatus.PLACED
        self._status_reason: str | None = None
        self._reserve_done = False
        self._reserved_at: datetime | None = None
        self._lock_expires_at: datetime | None = None
        self._dispatch: OrderReceipt | None = None
        self._dispatched_at: datetime | None = None
        self._cancellation: Cancellation | None = None
        self._fulfillment: asyncio.Task[None] | None = None
        self._current_step: FulfillmentStep | None = None
        self._steps: list[StepRecord] = []
        self._label: ShippingLabel | None = None
        self._invoice: Invoice | None = None
        self._invoice_view: InvoiceView | None = None
        self._compensations: list[str] = []
        self._ended_at: dict[OrderStatus, datetime] = {}
        self._closes_at: datetime | None = None

    # ── The order's life ────────────────────────────────────────────────────────────────────

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        """Reserve, wait for dispatch, fulfill; then answer late calls for a while."""
        self._show()
        try:
            await self._reserve()
            if self._status == OrderStatus.PLACED:
                await self._wait_for_dispatch()
            if self._status == OrderStatus.PLACED and self._cancellation is not None:
                await self._compensate()
            elif self._status == OrderStatus.PLACED and self._dispatch is not None:
                await self._fulfill()
        except (asyncio.CancelledError, ActivityError) as err:
            if not is_cancellation(err):
                raise
            await self._cancel_by_operator()
        await self._stay_open_for_late_calls()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.order()

    async def _reserve(self) -> None:
        try:
            reservation = await workflow.execute_activity_method(
                FulfillmentActivities.reserve_stock,
                self._warehouse_order,
                start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
                retry_policy=WAREHOUSE_RETRY,
                summary=f"reserve stock for {self._order.order_id}",
            )
        except ActivityError as err:
            if refusal_type(err) != "OutOfStock":
                raise
            assert isinstance(err.cause, ApplicationError)
            self._end(OrderStatus.CANCELED, f"OutOfStock: {err.cause.message}")
        else:
            self._reserved_at = reservation.reserved_at
            self._lock_expires_at = self._order.placed_at + self._lock_ttl
        finally:
            self._reserve_done = True

    async def _wait_for_dispatch(self) -> None:
        """Wait for dispatch or cancellation; past lockTTL, release the stock and expire."""
        assert self._lock_expires_at is not None  # set with the reservation
        try:
            await workflow.wait_condition(
                lambda: self._dispatch is not None or self._cancellation is not None,
                timeout=max(self._lock_expires_at - workflow.now(), timedelta(seconds=1)),
                timeout_summary="lockTTL: waiting for Order Dispatching",
            )
        except TimeoutError:
            await self._run_compensation(FulfillmentActivities.release_stock)
            self._end(OrderStatus.EXPIRED, f"no dispatch within lockTTL ({self._lock_ttl})")

    async def _fulfill(self) -> None:
        """Run the steps; a cancellation before the invoice aborts them and compensates."""
        self._status = OrderStatus.FULFILLING
        self._fulfillment = asyncio.create_task(self._run_steps())
        try:
            await self._fulfillment
        except (asyncio.CancelledError, ActivityError):
            # A cancellation cancels the task; the activity it was awaiting surfaces that as an
            # ActivityError caused by the cancel. Anything else is a real failure.
            if self._cancellation is None:
                raise
            await self._compensate()
            return
        finally:
            self._current_step = None
        self._mark_invoiced()
        await self._notify_marketplace()

    async def _run_steps(self) -> None:
        await self._step(FulfillmentStep.PICK, FulfillmentActivities.pick_items)
        await self._step(FulfillmentStep.PACK, FulfillmentActivities.pack_items)
        self._label = await self._step(FulfillmentStep.SHIP, FulfillmentActivities.ship_order)
        self._set_invoice(
            await self._step(FulfillmentStep.INVOICE, FulfillmentActivities.issue_invoice)
        )

    async def _step(self, step: FulfillmentStep, activity: Callable[..., Any]) -> Any:
        record = StepRecord(name=step, status="running", started_at=workflow.now())
        self._steps.append(record)
        self._current_step = step
        self._show()
        workflow.logger.info("order %s: %s started", self._order.order_id, step)
        try:
            result = await workflow.execute_activity_method(
                activity,
                self._warehouse_order,
                start_to_close_timeout=STEP_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAREHOUSE_RETRY,
                # Compensation must start only once the step has really stopped.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{step} {self._order.order_id}",
            )
        except (Exception, asyncio.CancelledError):
            # Not BaseException: GeneratorExit, when the worker evicts the workflow, must pass.
            record.status = "cancelled" if self._cancellation is not None else "failed"
            record.finished_at = workflow.now()
            workflow.logger.info("order %s: %s %s", self._order.order_id, step, record.status)
            raise
        record.status = "completed"
        record.finished_at = workflow.now()
        return result

    async def _compensate(self) -> None:
        """Undo what fulfillment did: release the stock, void the label; then canceled.

        Release goes first because it is where a race with the invoice is settled: if the
        invoice was committed after all (the step was cancelled while the warehouse
        committed), the release is refused and the order carries on as invoiced.
        """
        self._show("compensating")
        try:
            await self._run_compensation(FulfillmentActivities.release_stock)
        except ActivityError as err:
            if refusal_type(err) != "AlreadyInvoiced":
                raise
            workflow.logger.info("order %s: invoiced before the cancel", self._order.order_id)
            # Issuing is idempotent: this fetches the invoice the warehouse committed.
            self._set_invoice(
                await workflow.execute_activity_method(
                    FulfillmentActivities.issue_invoice,
                    self._warehouse_order,
                    start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
                    retry_policy=WAREHOUSE_RETRY,
                    summary=f"invoice {self._order.order_id} (already issued)",
                )
            )
            self._mark_invoiced()
            await self._notify_marketplace()
            return
        if any(step.name == FulfillmentStep.SHIP for step in self._steps):
            await self._run_compensation(FulfillmentActivities.void_label)
        self._end(OrderStatus.CANCELED, self._cancellation_reason())

    async def _run_compensation(self, activity: Callable[..., Any]) -> None:
        done = await workflow.execute_activity_method(
            activity,
            self._warehouse_order,
            start_to_close_timeout=WAREHOUSE_CALL_TIMEOUT,
            retry_policy=WAREHOUSE_RETRY,
            summary=f"compensate {self._order.order_id}",
        )
        self._compensations.append(
            done.compensation if done.changed else f"{done.compensation} (nothing to undo)"
        )

    def _set_invoice(self, invoice: Invoice) -> None:
        # Both at once: a cancellation handler may run right after and needs both.
        self._invoice = invoice
        self._invoice_view = InvoiceView(
            invoice_number=invoice.invoice_number,
            issuance_date=invoice.issuance_date,
            invoice_value=invoice.invoice_value,
        )

    def _mark_invoiced(self) -> None:
        self._end(OrderStatus.INVOICED, None)

    async def _notify_marketplace(self) -> None:
        """Send the invoice, then the tracking; a refusal is recorded, the order stays invoiced."""
        assert self._invoice is not None and self._invoice_view is not None
        view = self._invoice_view
        try:
            await self._send_invoice()
            view.sent_at = workflow.now()
        except ActivityError as err:
            if is_cancellation(err):
                raise
            view.send_error = str(err.cause or err)
            workflow.logger.error(
                "order %s: invoice not sent: %s", self._order.order_id, view.send_error
            )
            return
        if self._tracking is None:
            return
        try:
            await workflow.execute_activity_method(
                FulfillmentActivities.send_tracking,
                TrackingNotice(
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
            if is_cancellation(err):
                raise
            view.tracking_send_error = str(err.cause or err)
        self._show()

    async def _send_invoice(self) -> None:
        assert self._invoice is not None
        await workflow.execute_activity_method(
            FulfillmentActivities.send_invoice,
            InvoiceNotice(
                marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                marketplace_order_id=self._order.marketplace_order_id,
                invoice=self._invoice,
                tracking=self._tracking,
            ),
            start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
            retry_policy=MARKETPLACE_RETRY,
            summary=f"send invoice {self._invoice.invoice_number}",
        )

    async def _cancel_by_operator(self) -> None:
        """A workflow cancellation from Temporal (UI, CLI): the seller cancels the order.

        Before the invoice it is compensated like a marketplace cancellation, and the marketplace
        is told; once invoiced it cannot be, and the invoice still goes out.
        """
        workflow.logger.warning("order %s: workflow cancelled in Temporal", self._order.order_id)
        if self._status == OrderStatus.INVOICED:
            assert self._invoice_view is not None
            if self._invoice_view.sent_at is None:
                await self._notify_marketplace()
            return
        if self._cancellation is None:
            self._cancellation = Cancellation(
                receipt=self._receipt(workflow.now()),
                requested_at=workflow.now(),
                reason="the workflow was cancelled in Temporal by an operator",
                requested_by="seller",
            )
        await self._compensate()
        if self._status != OrderStatus.CANCELED:
            return
        self._cancellation.outcome = "confirmed"
        try:
            await workflow.execute_activity_method(
                FulfillmentActivities.send_cancellation,
                CancellationNotice(
                    marketplace_services_endpoint=self._order.marketplace_services_endpoint,
                    marketplace_order_id=self._order.marketplace_order_id,
                    reason=self._cancellation.reason or "canceled by the seller",
                ),
                start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                retry_policy=MARKETPLACE_RETRY,
                summary=f"tell the marketplace {self._order.order_id} is canceled",
            )
            self._cancellation.marketplace_notified_at = workflow.now()
        except ActivityError as err:
            self._cancellation.marketplace_error = str(err.cause or err)
        self._show()

    async def _stay_open_for_late_calls(self) -> None:
        window = timedelta(seconds=self._order.late_call_window_seconds)
        self._closes_at = workflow.now() + window
        self._show()
        if window > timedelta(0):
            try:
                await workflow.sleep(window, summary="late-call window")
            except asyncio.CancelledError:
                # An operator closing an ended order early: nothing left to undo.
                workflow.logger.info("order %s: closed early by an operator", self._order.order_id)

    # ── Updates: the marketplace's calls ────────────────────────────────────────────────────

    @workflow.update
    async def place(self, request: PlaceRequest) -> PlacementResult:
        """Order placement: answers once the stock is reserved."""
        await workflow.wait_condition(lambda: self._reserve_done)
        if self._reserved_at is None:
            raise ApplicationError(
                self._status_reason or "the stock could not be reserved",
                type="OutOfStock",
                non_retryable=True,
            )
        return PlacementResult(
            order_id=self._order.order_id,
            marketplace_order_id=self._order.marketplace_order_id,
            reserved_at=self._reserved_at,
        )

    @workflow.update
    async def dispatch(self, request: DispatchRequest) -> OrderReceipt:
        """Order Dispatching: authorizes fulfillment; answers the receipt."""
        await workflow.wait_condition(lambda: self._reserve_done)
        if self._dispatch is None:
            self._reject_dispatch_in_state()
            self._dispatched_at = request.received_at
            self._dispatch = self._receipt(request.received_at)
            workflow.logger.info("order %s: dispatched", self._order.order_id)
        return self._dispatch

    @dispatch.validator
    def _validate_dispatch(self, request: DispatchRequest) -> None:
        self._reject_other_order(request.marketplace_order_id)
        if self._dispatch is None:
            self._reject_dispatch_in_state()

    @workflow.update
    async def cancel(self, request: CancelRequest) -> OrderReceipt:
        """Marketplace Order Cancellation: confirm, or refuse once invoiced."""
        if self._invoice is not None:
            await self._refuse_cancellation(request)
        if self._cancellation is None:
            self._cancellation = Cancellation(
                receipt=self._receipt(request.received_at),
                requested_at=request.received_at,
                reason=request.reason,
                cancellation_request_id=request.cancellation_request_id,
                requested_by_user=request.requested_by_user,
            )
            workflow.logger.info("order %s: cancellation requested", self._order.order_id)
        cancellation = self._cancellation
        if self._fulfillment is not None and not self._fulfillment.done():
            self._fulfillment.cancel()
        await workflow.wait_condition(lambda: self._status in FINAL_STATUSES)
        if self._status == OrderStatus.INVOICED:
            # The invoice won the race against this cancellation.
            await self._refuse_cancellation(request)
        cancellation.outcome = "confirmed"
        self._show()
        return cancellation.receipt

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        self._reject_other_order(request.marketplace_order_id)

    async def _refuse_cancellation(self, request: CancelRequest) -> None:
        """Send the invoice again, which is how a seller refuses, then fail the update."""
        assert self._invoice is not None and self._invoice_view is not None
        if self._cancellation is not None:
            self._cancellation.outcome = "refused"
        workflow.logger.info("order %s: cancellation refused, invoiced", self._order.order_id)
        try:
            await self._send_invoice()
            self._invoice_view.resent_count += 1
        except ActivityError as err:
            self._invoice_view.send_error = str(err.cause or err)
        raise ApplicationError(
            f"order {self._order.order_id} is invoiced ({self._invoice.invoice_number}) and can no "
            "longer be canceled; the invoice was sent to the marketplace again",
            type="OrderInvoiced",
            non_retryable=True,
        )

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
            placed_at=self._order.placed_at,
            reserved_at=self._reserved_at,
            lock_expires_at=self._lock_expires_at,
            dispatched_at=self._dispatched_at,
            invoiced_at=self._ended_at.get(OrderStatus.INVOICED),
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

    def _reject_dispatch_in_state(self) -> None:
        if self._status == OrderStatus.EXPIRED:
            raise ApplicationError(
                f"order {self._order.order_id} expired: {self._status_reason}",
                type="OrderExpired",
                non_retryable=True,
            )
        if self._status == OrderStatus.CANCELED or self._cancellation is not None:
            raise ApplicationError(
                f"order {self._order.order_id} is canceled"
                + (f": {self._status_reason}" if self._status_reason else ""),
                type="OrderCanceled",
                non_retryable=True,
            )

    def _cancellation_reason(self) -> str:
        by = self._cancellation.requested_by if self._cancellation else "marketplace"
        reason = self._cancellation.reason if self._cancellation else None
        return f"canceled by the {by}: {reason}" if reason else f"canceled by the {by}"

    def _end(self, status: OrderStatus, reason: str | None) -> None:
        self._status = status
        self._status_reason = reason
        self._ended_at[status] = workflow.now()
        workflow.logger.info(
            "order %s: %s%s", self._order.order_id, status, f" ({reason})" if reason else ""
        )
        self._show()

    def _show(self, activity: str | None = None) -> None:
        """What the Temporal UI shows as the workflow's current details."""
        details = [f"**{self._status}**"]
        if activity:
            details.append(activity)
        elif self._current_step and self._status == OrderStatus.FULFILLING:
            details.append(f"step: {self._current_step}")
        if self._status_reason:
            details.append(self._status_reason)
        if self._invoice is not None:
            details.append(f"invoice {self._invoice.invoice_number}")
        if self._status in FINAL_STATUSES and self._closes_at is not None:
            details.append(f"open for late calls until {self._closes_at:%Y-%m-%d %H:%M:%S} UTC")
        workflow.set_current_details(" · ".join(details))
