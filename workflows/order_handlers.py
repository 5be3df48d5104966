"""What is asked of an order, and who asks: the marketplace's calls (placement, Order
Dispatching, Marketplace Order Cancellation), the operators' actions (workflows/operators.py), an
operator's cancellation in Temporal, a step that fails for good; and the query that reads it.

Each handler only *records* what was asked and moves the status (workflows/lifecycle.py says which
moves are allowed); the order's life (workflows/order.py) reads that recorded intent before it
does each next thing, and decides from it.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import operators
    from workflows.lifecycle import CANCEL_REFUSED_IN, CANCEL_STARTS_IN, is_final
    from workflows.messages import (
        Cancellation,
        CancelRequest,
        DispatchRequest,
        FulfillmentStep,
        OperatorAction,
        OperatorActionName,
        OperatorRequest,
        OrderReceipt,
        OrderStatus,
        OrderView,
        PlacementResult,
        PlaceRequest,
    )
    from workflows.order_record import OrderRecord

# The first step: a dispatch publishes it with the status, in one upsert.
FIRST_STEP = FulfillmentStep.PICK


class OrderHandlers(OrderRecord):
    """The order's updates, its query, and the seller's own cancellations (see the module)."""

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
        elif self._status == OrderStatus.CANCELING and self._cancellation is None:
            # A failed reservation being released: it ends canceled, as asked; then it closes.
            self._close_early = True
        elif self._cancellation is None and self._status in CANCEL_STARTS_IN:
            self._cancel("the workflow was cancelled in Temporal by an operator")
        # Otherwise already being canceled, or expiring: nothing more to ask.

    def _cancel(self, reason: str) -> None:
        """The seller's cancellation (an operator in Temporal, a step failed for good)."""
        now = workflow.now()
        self._cancellation = Cancellation(
            receipt=self._receipt(now),
            requested_at=now,
            reached_order_at=now,
            reason=reason,
            requested_by="seller",
        )
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
            # The life starts the first step in this same workflow task: published with the
            # status, in one upsert.
            self._current_step = FIRST_STEP
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
        once invoiced: the invoice goes again, which is how a seller refuses. The refusal is
        answered at once, the invoice sent beside it (waiting for the send would leave the
        marketplace with "still evaluating" for as long as it refuses the invoice)."""
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
            cancellation.outcome = "refused"
            named, fields = self._cancellation_request_log()
            workflow.logger.info(
                "order %s: cancellation refused, invoiced%s",
                self._order.order_id,
                named,
                extra=fields,
            )
            # Its own send, started after this refusal, even if another is in flight.
            self._invoice.send_again_beside_life()
            invoice = self._invoice.invoice
            assert invoice is not None
            raise ApplicationError(
                f"order {self._order.order_id} is {self._status} ({invoice.invoice_number}) and "
                "can no longer be canceled; the invoice is being sent to the marketplace again",
                type="OrderInvoiced",
                non_retryable=True,
            )
        # Otherwise CANCEL_CONFIRMED_IN: the order will not be fulfilled.
        cancellation.outcome = "confirmed"
        self._show()
        return cancellation.receipt

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        self._reject_other_order(request.marketplace_order_id)

    # ── Updates: operators' actions (workflows/operators.py) ────────────────────────────────

    @workflow.update
    def resend_invoice(self, request: OperatorRequest) -> OperatorAction:
        """Send the invoice and its tracking to the marketplace again, now."""
        action = operators.new_action(OperatorActionName.RESEND_INVOICE, request)
        action.outcome = self._invoice.resend(action)
        return self._record(action)

    @resend_invoice.validator
    def _validate_resend_invoice(self, request: OperatorRequest) -> None:
        # Past the cap too while the invoice waits for it: nothing else could deliver it.
        self._check(request, capped=not self._invoice.awaiting_resend)
        if self._invoice.view is None:
            self._refuse(f"it has no invoice to send ({self._status})")

    @workflow.update
    def retry_now(self, request: OperatorRequest) -> OperatorAction:
        """Retry now whatever the order waits on: a call in its retry backoff (restarted, its
        attempts from one), a pause before trying a compensation again, the next tracking poll."""
        action = operators.new_action(OperatorActionName.RETRY_NOW, request)
        action.outcome = "retrying now: " + self._calls.retry_now()
        return self._record(action)

    @retry_now.validator
    def _validate_retry_now(self, request: OperatorRequest) -> None:
        self._check(request)
        if not self._calls.waiting_on:
            self._refuse(f"it waits on nothing that can be retried ({self._status})")

    @workflow.update
    def stop_tracking(self, request: OperatorRequest) -> OperatorAction:
        """Give up following the parcel: the order stays invoiced and closes after its late-call
        window."""
        action = operators.new_action(OperatorActionName.STOP_TRACKING, request)
        action.outcome = "the parcel is no longer followed"
        self._tracking_stopped = action
        return self._record(action)

    @stop_tracking.validator
    def _validate_stop_tracking(self, request: OperatorRequest) -> None:
        self._check(request)
        if not self._following_parcel or self._tracking_stopped is not None:
            # An operator's stop says so at once, whether or not the parcel's workflow has ended
            # yet (the same words it records there).
            action = self._tracking_stopped
            stopped = (
                f"given up by {action.by}" + (f": {action.reason}" if action.reason else "")
                if action is not None
                else self._delivery.stopped
                if self._delivery
                else None
            )
            self._refuse(
                f"it is not following a parcel ({self._status}{'; ' + stopped if stopped else ''})"
            )

    def _check(self, request: OperatorRequest, capped: bool = True) -> None:
        recorded = len(self._operator_actions)
        operators.check_request(self._order.order_id, request, recorded, capped)

    def _refuse(self, why: str) -> None:
        operators.refuse(self._order.order_id, why)

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
        """The order's status, step, times, receipts, invoice and tracking (while the parcel is
        followed, its delivery is its own workflow's: the API reads it there)."""
        return self._view()
