"""The API's calls to Temporal, one function per endpoint, each given the client.

Every call names its workflow and its update id from the request alone (workflows/ids.py), so a
retried call lands on the same workflow and the same update, and Temporal answers it with the
first call's outcome, even after the workflow has closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from typing import TypeVar

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, TemporalError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import CONFLICT_TYPES, ApiError, not_found, unavailable
from api.models import OrderPlacement, RequestOrderId
from api.stored_order import pending_calls, stored_order, workflow_status
from config import Settings
from workflows import ids, search
from workflows.durations import lock_deadline, parse_duration
from workflows.lifecycle import CANCEL_CONFIRMED_IN
from workflows.messages import (
    CancelRequest,
    DispatchRequest,
    OrderInput,
    OrderLine,
    OrderReceipt,
    OrderStatus,
    OrderView,
    PendingCall,
    PlacementResult,
    PlaceRequest,
    vtex_date,
)
from workflows.order import OrderWorkflow
from workflows.parcel import ParcelWorkflow

log = logging.getLogger("api")

T = TypeVar("T")
Handle = WorkflowHandle[OrderWorkflow, OrderView]


def placement_fingerprint(placement: OrderPlacement) -> str:
    """A digest of the placement as parsed: equal for a retry of it, different for another one."""
    canonical = json.dumps(
        placement.model_dump(mode="json", by_alias=True, exclude_none=True),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_input(placement: OrderPlacement, settings: Settings, received_at: datetime) -> OrderInput:
    """What the order workflow needs from a placement."""
    logistics = (placement.shipping_data.logistics_info if placement.shipping_data else None) or []
    lock_ttls = [info.lock_ttl for info in logistics if info.lock_ttl]
    lock_ttls = lock_ttls or [settings.default_lock_ttl]
    # The lock lasts as long as the longest item lock: expiring earlier could release stock
    # the marketplace still holds an order for. Business days (`3bd`) skip weekends.
    lock_ttl = max(lock_deadline(ttl, received_at) for ttl in lock_ttls) - received_at
    address = placement.shipping_data.address if placement.shipping_data else None
    return OrderInput(
        marketplace_order_id=placement.marketplace_order_id,
        order_id=ids.seller_order_id(placement.marketplace_order_id),
        marketplace_services_endpoint=placement.marketplace_services_endpoint,
        lines=[
            OrderLine(sku=item.id, quantity=item.quantity, price=item.price)
            for item in placement.items
        ],
        freight_value=sum(info.price for info in logistics),
        # Only the fields VTEX defines: unknown ones would ride, unbounded but by the body's size,
        # in every warehouse activity's input and in the history.
        shipping_address=(
            address.model_dump(
                mode="json", exclude_none=True, exclude=set(address.model_extra or {})
            )
            if address
            else None
        ),
        placed_at=received_at,
        lock_ttl_seconds=lock_ttl.total_seconds(),
        late_call_window_seconds=parse_duration(settings.late_call_window).total_seconds(),
        tracking_poll_seconds=parse_duration(settings.tracking_poll_interval).total_seconds(),
        marketplace_retry_seconds=parse_duration(settings.marketplace_retry_for).total_seconds(),
        placement_fingerprint=placement_fingerprint(placement),
    )


async def place_order(
    client: Client, settings: Settings, placement: OrderPlacement, received_at: datetime
) -> PlacementResult:
    """Start the order's workflow (or join it) and wait until its stock is reserved.

    A placement with the marketplaceOrderId of an earlier, different one gets 409
    `PlacementConflict`: Temporal answers the fixed update id with the first placement's outcome,
    which carries the first placement's fingerprint.
    """
    order = order_input(placement, settings, received_at)
    start = WithStartWorkflowOperation(
        OrderWorkflow.run,
        order,
        id=ids.workflow_id(order.marketplace_order_id),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # A placement retried after the order ended must not start it again.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        static_summary=f"VTEX order {order.marketplace_order_id} (seller {order.order_id})",
        search_attributes=search.at_start(
            order.marketplace_order_id, order.order_id, str(OrderStatus.RESERVING)
        ),
        # The memo the workflow keeps (OrderWorkflow._publish_memo), named as in its view: an
        # order closed before its first workflow task still has a last known state to show.
        memo={"status": str(OrderStatus.RESERVING), "placedAt": order.placed_at},
    )

    async def place() -> PlacementResult:
        try:
            return await client.execute_update_with_start_workflow(
                OrderWorkflow.place,
                PlaceRequest(received_at=received_at),
                start_workflow_operation=start,
                id=ids.PLACE_UPDATE_ID,
            )
        except WorkflowUpdateFailedError as err:
            # A refused placement (OutOfStock) carries the fingerprint of the one refused.
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.details:
                _check_same_placement(order, str(cause.details[0]))
            raise

    try:
        try:
            result = await _answer(settings, place())
        except (ApiError, RPCError) as err:
            # Terminated (or failed) before its first workflow task took the update in: Temporal
            # answers NOT_FOUND, or that the workflow closed first. Anything else is a 503.
            if isinstance(err, ApiError) and err.status != 503:
                raise
            if not await _closed(client, order.marketplace_order_id):
                timed_out = isinstance(err.__cause__, (TimeoutError, RPCTimeoutOrCancelledError))
                if isinstance(err, ApiError) and timed_out:
                    # Not answered within the update timeout: say why, when it can be told.
                    not_reserved = await _not_reserved_yet(client, settings, order)
                    if not_reserved is not None:
                        raise not_reserved from err
                raise
            raise WorkflowAlreadyStartedError(
                ids.workflow_id(order.marketplace_order_id), "OrderWorkflow"
            ) from err
    except WorkflowAlreadyStartedError as err:
        # The workflow has closed and is not answering this update id: it was terminated or
        # failed before the placement was answered. The order is not going to be placed again.
        try:
            view = await _query(client, settings, order.marketplace_order_id)
        except ApiError:  # closed before its first workflow task: there is no state to read
            view = None
        status = f" ({view.status})" if view else ""
        raise ApiError(
            409,
            "OrderClosed",
            f"order {order.order_id}{status} was closed in Temporal before its placement was "
            "answered; it cannot be placed again",
        ) from err
    _check_same_placement(order, result.placement_fingerprint)
    return result


# How long a placement that was not answered in time may take for each read of why (Temporal's
# description, the order's query): both answer at once unless Temporal or the order's worker is
# busy or gone, and then there is nothing more to tell.
WHY_NOT_RESERVED_WITHIN_SECONDS = 1.0


async def _not_reserved_yet(
    client: Client, settings: Settings, order: OrderInput
) -> ApiError | None:
    """The 503 of a placement whose update did not complete within the update timeout.

    It says that the stock is not reserved yet and, when Temporal or the order can tell, why:
    the `reserve_stock` activity Temporal is retrying (its attempt and last error), else the
    order's `attention`. None when the order has its stock after all.
    """
    why = f"the order did not answer within {settings.update_timeout_seconds:g}s"
    calls: list[PendingCall] = []
    described = client.get_workflow_handle(ids.workflow_id(order.marketplace_order_id)).describe()
    with suppress(TimeoutError, RPCError):
        calls = pending_calls(await asyncio.wait_for(described, WHY_NOT_RESERVED_WITHIN_SECONDS))
    reserving = next((call for call in calls if call.activity == "reserve_stock"), None)
    if reserving is not None and reserving.last_error:
        why = f"reserve_stock attempt {reserving.attempt}, last error: {reserving.last_error}"
    else:
        handle = client.get_workflow_handle_for(
            OrderWorkflow.run, ids.workflow_id(order.marketplace_order_id)
        )
        try:
            view = await asyncio.wait_for(
                handle.query(OrderWorkflow.order), WHY_NOT_RESERVED_WITHIN_SECONDS
            )
        except (TimeoutError, TemporalError):
            view = None
        if view is not None and view.reserved_at is not None:
            return None  # Reserved meanwhile: the retry gets the answer.
        if view is not None and view.attention:
            why = view.attention
        elif reserving is not None:
            why = f"reserve_stock attempt {reserving.attempt} under way"
    return unavailable(
        f"order {order.order_id}: the stock is not reserved yet ({why}); retry the same "
        "placement: it joins the same request"
    )


def _check_same_placement(order: OrderInput, first_fingerprint: str) -> None:
    # An order started before fingerprints existed has none: nothing to compare with.
    if first_fingerprint and first_fingerprint != order.placement_fingerprint:
        raise ApiError(
            409,
            "PlacementConflict",
            f"marketplaceOrderId {order.marketplace_order_id} was placed before with another "
            f"body (items, prices, address...); order {order.order_id} keeps the first one",
        )


async def dispatch_order(
    client: Client, settings: Settings, path_id: str, body: RequestOrderId, received_at: datetime
) -> OrderReceipt:
    """Order Dispatching: authorize the order's fulfillment."""
    request = DispatchRequest(
        marketplace_order_id=body.marketplace_order_id, received_at=received_at
    )

    async def dispatch(handle: Handle) -> OrderReceipt:
        return await handle.execute_update(
            OrderWorkflow.dispatch, request, id=ids.DISPATCH_UPDATE_ID
        )

    def on_closed(view: OrderView) -> OrderReceipt:
        if view.dispatch is not None:
            return view.dispatch
        raise _closed_order_conflict(view)

    return await _on_order(
        client, settings, path_id, body.marketplace_order_id, dispatch, on_closed
    )


async def cancel_order(
    client: Client, settings: Settings, path_id: str, body: RequestOrderId, received_at: datetime
) -> OrderReceipt | None:
    """Marketplace Order Cancellation: the receipt once confirmed, None while it goes on."""
    request = CancelRequest(
        marketplace_order_id=body.marketplace_order_id,
        received_at=received_at,
        reason=body.reason,
        cancellation_request_id=body.cancellation_request_id,
        cancellation_request_date=body.cancellation_request_date,
        requested_by_user=body.requested_by_user,
    )

    async def cancel(handle: Handle) -> OrderReceipt | None:
        update = await handle.start_update(
            OrderWorkflow.cancel,
            request,
            id=ids.CANCEL_UPDATE_ID,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        )
        try:
            return await asyncio.wait_for(update.result(), settings.cancel_confirm_seconds)
        except (TimeoutError, RPCTimeoutOrCancelledError):
            # The SDK reports its poll being cut short as RPCTimeoutOrCancelledError.
            # "Evaluate": the abort goes on in the workflow; the marketplace's next call gets
            # the confirmation (or the refusal) from the same update.
            return None

    def on_closed(view: OrderView) -> OrderReceipt:
        # The order is not going to be fulfilled: the cancellation is confirmed, with the same
        # receipt every time it is asked.
        if view.status in CANCEL_CONFIRMED_IN:
            if view.cancellation is not None:
                return view.cancellation.receipt
            return _closed_order_receipt(view, "cancel")
        raise _closed_order_conflict(view)

    return await _on_order(client, settings, path_id, body.marketplace_order_id, cancel, on_closed)


async def get_order(client: Client, settings: Settings, path_id: str) -> OrderView:
    """The order, from its workflow's query (open or closed), with the calls it is retrying.

    When no worker answers within ORDER_QUERY_TIMEOUT_SECONDS, or the workflow closed before it
    could run, the order as Temporal keeps it without a worker, `live: false`
    (api/stored_order.py): ops still see where it is while the workers are down.
    """
    for marketplace_order_id in ids.marketplace_ids_for_path(path_id):
        view = await _query(client, settings, marketplace_order_id, stored_if_unanswered=True)
        if view is not None:
            if view.live:
                await _pending_calls(client, settings, view)
                await _parcel_delivery(client, settings, view)
            return view
    raise not_found(path_id)


async def _pending_calls(client: Client, settings: Settings, view: OrderView) -> None:
    """Add to the view the order's activities in flight, with their attempts and last error, and
    its workflow's execution status (both from Temporal)."""
    handle = client.get_workflow_handle(view.workflow_id)
    try:
        description = await asyncio.wait_for(
            handle.describe(), settings.order_query_timeout_seconds
        )
    except (RPCError, TimeoutError):
        return  # The order itself was read; what it is retrying is a nice-to-have.
    view.pending_calls = pending_calls(description)
    view.workflow_status = workflow_status(description)


async def _parcel_delivery(client: Client, settings: Settings, view: OrderView) -> None:
    """While the order's parcel is followed (in a workflow of its own), its delivery so far and
    the calls it is retrying, from that workflow; also once that workflow was ended by hand (the
    order then has no delivery of its own). Without an answer the view says none: the order
    itself was read."""
    if view.parcel_workflow_id is None or view.delivery is not None:
        return
    handle = client.get_workflow_handle_for(ParcelWorkflow.run, view.parcel_workflow_id)
    seconds = settings.order_query_timeout_seconds
    try:
        view.delivery = await asyncio.wait_for(handle.query(ParcelWorkflow.delivery), seconds)
        description = await asyncio.wait_for(handle.describe(), seconds)
    except (RPCError, TimeoutError, WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        log.warning("the parcel of %s could not be read: %s", view.order_id, err)
        return
    view.pending_calls += pending_calls(description)


async def _on_order(
    client: Client,
    settings: Settings,
    path_id: str,
    marketplace_order_id: str,
    call: Callable[[Handle], Awaitable[T]],
    on_closed: Callable[[OrderView], T],
) -> T:
    """Run an update call on the order the path names; 404, 409 and closed orders handled here.

    The body must name the same order as the path, checked here for every call: a retried update
    id is answered by Temporal with its first outcome without running the workflow's validator.
    """
    if not ids.path_names_order(path_id, marketplace_order_id):
        raise ApiError(
            409,
            "MarketplaceOrderIdMismatch",
            f"marketplaceOrderId {marketplace_order_id} is not the order of the path ({path_id})",
        )
    handle: Handle = client.get_workflow_handle_for(
        OrderWorkflow.run, ids.workflow_id(marketplace_order_id)
    )
    try:
        return await _answer(settings, call(handle))
    except RPCError:
        pass  # NOT_FOUND: _answer maps every other status to 503.
    # Not found: either no such order, or its workflow has closed and this is a new call.
    view = await _query(client, settings, marketplace_order_id)
    if view is None:
        raise not_found(path_id)
    return on_closed(view)


def _closed_order_receipt(view: OrderView, call: str) -> OrderReceipt:
    """A receipt for a call the closed order never saw: the same one for every retry."""
    when = view.canceled_at or view.expired_at or view.invoiced_at or view.placed_at
    return OrderReceipt(
        date=vtex_date(when),
        marketplace_order_id=view.marketplace_order_id,
        order_id=view.order_id,
        receipt=str(uuid.uuid5(uuid.NAMESPACE_URL, f"temporal:{view.workflow_id}/{call}")),
    )


def _closed_order_conflict(view: OrderView) -> ApiError:
    codes = {
        OrderStatus.CANCELED: "OrderCanceled",
        OrderStatus.EXPIRED: "OrderExpired",
        OrderStatus.INVOICED: "OrderInvoiced",
        OrderStatus.DELIVERED: "OrderInvoiced",
    }
    reason = f": {view.status_reason}" if view.status_reason else ""
    return ApiError(
        409,
        codes.get(view.status, "OrderClosed"),
        f"order {view.order_id} is {view.status}{reason}; its workflow closed at the end of the "
        "late-call window",
    )


async def _query(
    client: Client,
    settings: Settings,
    marketplace_order_id: str,
    *,
    stored_if_unanswered: bool = False,
) -> OrderView | None:
    """The order's view from its workflow's query; None when there is no such order.

    Strict by default (a dispatch or cancellation of a closed order needs its receipts): a query
    no worker answers within UPDATE_TIMEOUT_SECONDS is a 503. With `stored_if_unanswered` (GET),
    one not answered within ORDER_QUERY_TIMEOUT_SECONDS, or that the workflow cannot answer (it
    closed before its first workflow task, say), is answered from what Temporal keeps without a
    worker instead, `live: false`.
    """
    handle = client.get_workflow_handle_for(
        OrderWorkflow.run, ids.workflow_id(marketplace_order_id)
    )
    seconds = (
        settings.order_query_timeout_seconds
        if stored_if_unanswered
        else settings.update_timeout_seconds
    )
    try:
        return await asyncio.wait_for(handle.query(OrderWorkflow.order), seconds)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        # FAILED_PRECONDITION: "Workflow execution closed before WorkflowTaskStarted event";
        # DEADLINE_EXCEEDED: the server gave up waiting for a worker first.
        unanswered = (RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.DEADLINE_EXCEEDED)
        if stored_if_unanswered and err.status in unanswered:
            return await stored_order(client, settings, marketplace_order_id)
        raise unavailable(f"Temporal: {err.message}") from err
    except TimeoutError as err:
        if stored_if_unanswered:
            return await stored_order(client, settings, marketplace_order_id)
        raise unavailable(f"no worker answered within {seconds:g}s; retry") from err
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        log.error("order %s could not be queried: %s", marketplace_order_id, err)
        if stored_if_unanswered:
            return await stored_order(client, settings, marketplace_order_id)
        raise unavailable(f"the order could not be read ({err}); retry later") from err


async def _answer(settings: Settings, call: Awaitable[T]) -> T:
    """Await a Temporal call within the update timeout; map its refusals to 4xx."""
    try:
        return await asyncio.wait_for(call, settings.update_timeout_seconds)
    except (TimeoutError, RPCTimeoutOrCancelledError) as err:
        raise unavailable(
            f"no worker answered within {settings.update_timeout_seconds:g}s; retry the same "
            "call: it joins the same request, nothing is lost or done twice"
        ) from err
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type in CONFLICT_TYPES:
            raise ApiError(409, cause.type, cause.message) from err
        if isinstance(cause, ApplicationError) and cause.type == "AcceptedUpdateCompletedWorkflow":
            # Terminated (or failed) in Temporal while the call waited: it will never be answered.
            raise ApiError(
                409,
                "OrderClosed",
                "the order's workflow was closed in Temporal before it answered this call",
            ) from err
        log.error("unexpected refusal from the order workflow: %r", cause)
        raise unavailable(f"the order could not answer ({cause}); retry later") from err
    except RPCError as err:
        # NOT_FOUND is for the caller to tell apart (no such order, or a closed one).
        if err.status == RPCStatusCode.NOT_FOUND:
            raise
        raise unavailable(f"Temporal: {err.message}") from err
    except WorkflowAlreadyStartedError:
        raise  # For the placement to tell apart: the order's workflow has closed.
    except TemporalError as err:
        # Whatever else Temporal may answer: the call did not complete; the retry joins it.
        log.error("unexpected answer from Temporal: %r", err)
        raise unavailable(f"Temporal: {err}") from err


async def _closed(client: Client, marketplace_order_id: str) -> bool:
    """Whether the order's workflow exists and has closed (False when it cannot be told)."""
    try:
        description = await asyncio.wait_for(
            client.get_workflow_handle(ids.workflow_id(marketplace_order_id)).describe(), 10
        )
    except (TimeoutError, TemporalError):
        return False
    return description.status not in (None, WorkflowExecutionStatus.RUNNING)


async def order_exists(client: Client, marketplace_order_id: str) -> bool:
    """Whether the order's workflow was ever started (open or closed)."""
    try:
        await asyncio.wait_for(
            client.get_workflow_handle(ids.workflow_id(marketplace_order_id)).describe(), 10
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise unavailable(f"Temporal: {err.message}") from err
    except (TimeoutError, TemporalError) as err:
        raise unavailable(f"Temporal did not answer: {err}") from err
    return True
