"""What the order workflow takes, answers and shows: its input, its updates and its query.

Every model is camelCase on the wire (VTEX's casing, also what the Temporal UI shows) and
snake_case in Python. Each workflow, update, query and activity takes one of these and returns
one, so fields can be added without breaking running orders.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# The seed's date format, "2014-10-06 18:52:00", always UTC.
VTEX_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def vtex_date(moment: datetime) -> str:
    """The seed's receipt date: `2014-10-06 18:52:00`, UTC."""
    return moment.astimezone(UTC).strftime(VTEX_DATE_FORMAT)


class CamelModel(BaseModel):
    """A model that reads and writes camelCase JSON."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class OrderStatus(StrEnum):
    """Where an order is. `invoiced`, `delivered`, `canceled` and `expired` are final: the
    order's fate is settled (an invoiced order then follows its parcel until `delivered`).

    `reserving`, `canceling` and `expiring` are the moments in between: the stock is being held,
    or given back. While an order is `canceling` or `expiring` no dispatch is accepted, so that
    nothing can start the work the compensation is undoing.
    """

    RESERVING = "reserving"
    PLACED = "placed"
    FULFILLING = "fulfilling"
    CANCELING = "canceling"
    EXPIRING = "expiring"
    INVOICED = "invoiced"
    DELIVERED = "delivered"
    CANCELED = "canceled"
    EXPIRED = "expired"


FINAL_STATUSES = frozenset(
    {OrderStatus.INVOICED, OrderStatus.DELIVERED, OrderStatus.CANCELED, OrderStatus.EXPIRED}
)


class FulfillmentStep(StrEnum):
    """The fulfillment activities, in the order they run."""

    PICK = "pick"
    PACK = "pack"
    SHIP = "ship"
    INVOICE = "invoice"


class OrderLine(CamelModel):
    """One item of the order as the warehouse sees it."""

    sku: str
    quantity: int
    # Unit price in cents, as VTEX sends it.
    price: int = 0


class OrderInput(CamelModel):
    """What the order workflow starts with: the placement, reduced to what fulfillment needs."""

    marketplace_order_id: str
    order_id: str
    marketplace_services_endpoint: str
    lines: list[OrderLine]
    # Freight in cents (sum of shippingData.logisticsInfo[].price), part of the invoice value.
    freight_value: int = 0
    shipping_address: dict[str, object] | None = None
    placed_at: datetime
    lock_ttl_seconds: float
    late_call_window_seconds: float
    # A digest of the placement body: a repeated placement must be the same placement.
    placement_fingerprint: str = ""
    # How often the invoiced order asks the carrier where its parcel is (TRACKING_POLL_INTERVAL);
    # 0: it does not follow it, and ends `invoiced` (orders placed before tracking existed).
    tracking_poll_seconds: float = 0.0
    # How long each call to the marketplace is retried (MARKETPLACE_RETRY_FOR) before the order
    # shows `attention` and waits for an operator's resend.
    marketplace_retry_seconds: float = 86_400.0


class PlaceRequest(CamelModel):
    """The placement, sent as an update with the workflow's start."""

    received_at: datetime


class PlacementResult(CamelModel):
    """The placement's outcome once the stock is reserved."""

    order_id: str
    marketplace_order_id: str
    reserved_at: datetime
    # The fingerprint of the placement that started the order (see OrderInput).
    placement_fingerprint: str = ""


class DispatchRequest(CamelModel):
    """Order Dispatching: the marketplace authorizes fulfillment."""

    marketplace_order_id: str
    received_at: datetime


class CancelRequest(CamelModel):
    """Marketplace Order Cancellation, with the optional fields marketplaces add."""

    marketplace_order_id: str
    received_at: datetime
    reason: str | None = None
    cancellation_request_id: str | None = None
    # When the marketplace took the request, as it wrote it (VTEX's format:
    # `2024-03-04T15:45:02.1306363+00:00`).
    cancellation_request_date: str | None = None
    # VTEX sends whether the shopper asked (true/false); some marketplaces send who asked.
    requested_by_user: bool | str | None = None


class NamesCancellationRequest(Protocol):
    """What names the marketplace's cancellation request: its call's body, the update, the order's
    record of it."""

    cancellation_request_id: str | None
    cancellation_request_date: str | None


def cancellation_request_text(request: NamesCancellationRequest) -> str:
    """How a log line names the marketplace's cancellation request (`cancellation request
    85835ab4... dated 2024-03-04T15:45:02.1306363+00:00`); empty when nothing names it."""
    text = ""
    if request.cancellation_request_id:
        text += f" {request.cancellation_request_id}"
    if request.cancellation_request_date:
        text += f" dated {request.cancellation_request_date}"
    return f"cancellation request{text}" if text else ""


def cancellation_request_fields(request: NamesCancellationRequest) -> dict[str, str]:
    """The marketplace's cancellation request as a log record's fields (`extra=`), as JSON logs
    carry them: those it named."""
    fields = {
        "cancellationRequestId": request.cancellation_request_id,
        "cancellationRequestDate": request.cancellation_request_date,
    }
    return {name: value for name, value in fields.items() if value}


class OperatorActionName(StrEnum):
    """What an operator can ask of an order (a Workflow Update each, of the same name in
    snake_case: `resend_invoice`, `retry_now`, `stop_tracking`)."""

    RESEND_INVOICE = "resendInvoice"
    RETRY_NOW = "retryNow"
    STOP_TRACKING = "stopTracking"


class OperatorRequest(CamelModel):
    """An operator's action on an order: who asks (a person, or the tool acting for one) and why.

    What the Temporal UI's "Send Update" takes as its input: `{"by": "ana", "reason": "..."}`.
    """

    by: str
    reason: str | None = None


class OperatorAction(CamelModel):
    """An operator's action as the order records it, and the update's answer."""

    action: OperatorActionName
    by: str
    reason: str | None = None
    requested_at: datetime
    # What the order did about it (`resending the invoice and the tracking`, ...), then how it
    # ended when it ends later (`delivered at ...`, `failed: ...`).
    outcome: str


class OrderReceipt(CamelModel):
    """The answer of dispatch and a confirmed cancellation: VTEX's `repsonseOrderId`."""

    date: str
    marketplace_order_id: str
    order_id: str
    receipt: str


class StepRecord(CamelModel):
    """One fulfillment step as it ran."""

    name: FulfillmentStep
    status: str  # running, completed, cancelled, failed
    started_at: datetime
    finished_at: datetime | None = None


class Cancellation(CamelModel):
    """A cancellation request as the order keeps it."""

    receipt: OrderReceipt
    requested_at: datetime
    # When the order's workflow took the request in (requested_at is when the API received it).
    reached_order_at: datetime | None = None
    reason: str | None = None
    cancellation_request_id: str | None = None
    # When the marketplace took the request, as it wrote it.
    cancellation_request_date: str | None = None
    # VTEX sends whether the shopper asked (true/false); some marketplaces send who asked.
    requested_by_user: bool | str | None = None
    # confirmed, pending (compensating), refused (the order was invoiced)
    outcome: str = "pending"
    # marketplace (its cancel call) or seller (an operator cancelled the workflow in Temporal, or a
    # step failed for good)
    requested_by: str = "marketplace"
    # Whether the marketplace asked too (then the seller does not tell it of its own cancellation).
    marketplace_asked: bool = False
    # A seller cancellation is sent to the marketplace: when it was, or why it was not.
    marketplace_notified_at: datetime | None = None
    marketplace_error: str | None = None


class Tracking(CamelModel):
    """The carrier's label, as sent to the marketplace."""

    courier: str
    tracking_number: str
    tracking_url: str


class InvoiceView(CamelModel):
    """The invoice and what the marketplace answered to it."""

    invoice_number: str
    issuance_date: datetime
    invoice_value: int
    sent_at: datetime | None = None
    send_error: str | None = None
    tracking_sent_at: datetime | None = None
    tracking_send_error: str | None = None
    resent_count: int = 0


class TrackingEventView(CamelModel):
    """One carrier event, as posted to the marketplace."""

    description: str
    date: str
    city: str | None = None
    state: str | None = None


class DeliveryView(CamelModel):
    """The parcel's journey after the invoice, as the carrier reports it."""

    delivered: bool = False
    events: list[TrackingEventView] = []
    last_polled_at: datetime | None = None
    # Why the last poll got no answer (the carrier down for now: the next poll asks again).
    poll_error: str | None = None
    # How many of the events the marketplace has taken, and the last error of a post it refused.
    events_reported: int = 0
    reported_at: datetime | None = None
    report_error: str | None = None
    # How many times the marketplace refused the delivered status for good.
    report_refusals: int = 0
    # Why the order stopped following its parcel before delivery, if it did.
    stopped: str | None = None


class PendingCall(CamelModel):
    """An activity of the order in flight: a step, or a call the marketplace has not taken yet."""

    activity: str
    attempt: int
    last_error: str | None = None
    next_attempt_at: datetime | None = None


class OrderView(CamelModel):
    """The order as people and scripts see it (GET /pvt/orders/{orderId})."""

    order_id: str
    marketplace_order_id: str
    workflow_id: str
    status: OrderStatus
    current_step: FulfillmentStep | None = None
    status_reason: str | None = None
    # What the order is stuck on, while it is (e.g. a compensation that keeps failing).
    attention: str | None = None
    placed_at: datetime
    reserved_at: datetime | None = None
    lock_expires_at: datetime | None = None
    dispatched_at: datetime | None = None
    invoiced_at: datetime | None = None
    delivered_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    closes_at: datetime | None = None
    items: list[OrderLine]
    marketplace_services_endpoint: str
    dispatch: OrderReceipt | None = None
    cancellation: Cancellation | None = None
    steps: list[StepRecord] = []
    compensations: list[str] = []
    tracking: Tracking | None = None
    invoice: InvoiceView | None = None
    delivery: DeliveryView | None = None
    # The workflow that follows the parcel once the invoice is taken (workflows/parcel.py): while
    # it runs, the API reads `delivery` from it.
    parcel_workflow_id: str | None = None
    # What operators asked of the order (resend, retry now, stop tracking), oldest first.
    operator_actions: list[OperatorAction] = []
    # Filled in by the API from Temporal (the workflow cannot see its activities' retries).
    pending_calls: list[PendingCall] = []
    # Whether the workflow itself answered (its query): every field is current. False: no worker
    # answered in time, or the workflow closed before it could run; the view is what Temporal
    # keeps without a worker (api/stored_order.py): a completed order's final view (its result),
    # whole; otherwise the status and step (search attributes), the reason, attention, times and
    # invoice number the order last published (its memo), items from its start; no steps,
    # receipts, tracking or invoice sending state.
    live: bool = True
    # The workflow's execution status in Temporal, as its UI names it: Running, Completed,
    # Terminated, Failed, TimedOut... (a closed order that was not Completed will not move on).
    workflow_status: str | None = None
