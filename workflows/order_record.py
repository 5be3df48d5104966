"""What an order records of its life, and how it shows it: the status and the one way it moves
(along workflows/lifecycle.py's arrows), the receipts, the view people and scripts read, and what
Temporal shows of it (workflows/publishing.py). The life itself is workflows/order.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.warehouse import ShippingLabel, WarehouseOrder
    from workflows.calls import Calls
    from workflows.invoice_delivery import InvoiceDelivery
    from workflows.lifecycle import can_move, dispatch_refusal, is_final
    from workflows.messages import (
        Cancellation,
        DeliveryView,
        FulfillmentStep,
        OperatorAction,
        OrderInput,
        OrderReceipt,
        OrderStatus,
        OrderView,
        StepRecord,
        Tracking,
        cancellation_request_fields,
        cancellation_request_text,
        vtex_date,
    )
    from workflows.publishing import Publisher

# The transitions counted in the `seller_orders` metric, by the name of their event.
COUNTED_EVENTS = {
    OrderStatus.PLACED: "placed",
    OrderStatus.FULFILLING: "dispatched",
    OrderStatus.CANCELED: "canceled",
    OrderStatus.INVOICED: "invoiced",
    OrderStatus.DELIVERED: "delivered",
    OrderStatus.EXPIRED: "expired",
}


class OrderRecord:
    """The order's recorded state and its view; OrderWorkflow lives the life on it."""

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
        # What the order is stuck on, while it is: a failing reservation or compensation, an
        # invoice the marketplace has not taken, a parcel given up.
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
        self._compensations: list[str] = []
        self._ended_at: dict[OrderStatus, datetime] = {}
        self._closes_at: datetime | None = None
        # An operator closed the order in Temporal once it had ended (its late-call window too).
        self._close_early = False
        self._calls = Calls(order.order_id)
        self._invoice = InvoiceDelivery(
            order, self._calls, lambda: self._close_early, self._attend, self._show
        )
        self._delivery: DeliveryView | None = None
        self._parcel_workflow_id: str | None = None
        # While the order follows its parcel; `stop_tracking`'s action once an operator gave it up.
        self._following_parcel = False
        self._tracking_stopped: OperatorAction | None = None
        self._operator_actions: list[OperatorAction] = []
        self._publisher = Publisher()

    def _view(self) -> OrderView:
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
            invoice=self._invoice.view,
            delivery=self._delivery,
            parcel_workflow_id=self._parcel_workflow_id,
            operator_actions=self._operator_actions,
        )

    def _show(self, doing: str | None = None) -> None:
        """Publish the order's view to Temporal: current details, search attributes, memo."""
        self._publisher.publish(self._view(), doing, self._invoice.undelivered is not None)

    def _attend(self, attention: str | None) -> None:
        self._attention = attention

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

    def _invoiced_despite_cancellation(self) -> str | None:
        if self._cancellation is None:
            return None
        return "the invoice was committed before the cancellation could stop it"

    def _cancellation_request_log(self) -> tuple[str, dict[str, str]]:
        """The marketplace's cancellation request, as the order's log lines about it name it (an
        end of the line, and the record's fields); nothing without one."""
        if self._cancellation is None:
            return "", {}
        text = cancellation_request_text(self._cancellation)
        return (f" [{text}]" if text else ""), cancellation_request_fields(self._cancellation)
