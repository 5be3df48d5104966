"""The API's calls to Temporal, one function per endpoint, each given the client.

Every call names its workflow and its update id from the request alone (workflows/ids.py), so a
retried call lands on the same workflow and the same update, and Temporal answers it with the
first call's outcome, even after the workflow has closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import CONFLICT_TYPES, ApiError, not_found, unavailable
from api.models import OrderPlacement, RequestOrderId
from config import Settings
from workflows import ids
from workflows.durations import parse_duration
from workflows.messages import (
    CancelRequest,
    DispatchRequest,
    OrderInput,
    OrderLine,
    OrderReceipt,
    OrderStatus,
    OrderView,
    PlacementResult,
    PlaceRequest,
)
from workflows.order import OrderWorkflow

log = logging.getLogger("api")

T = TypeVar("T")
Handle = WorkflowHandle[OrderWorkflow, OrderView]


def order_input(placement: OrderPlacement, settings: Settings, received_at: datetime) -> OrderInput:
    """What the order workflow needs from a placement."""
    logistics = (placement.shipping_data.logistics_info if placement.shipping_data else None) or []
    lock_ttls = [parse_duration(info.lock_ttl) for info in logistics if info.lock_ttl]
    # The lock lasts as long as the longest item lock: expiring earlier could release stock
    # the marketplace still holds an order for.
    lock_ttl = max(lock_ttls) if lock_ttls else parse_duration(settings.default_lock_ttl)
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
        shipping_address=address.model_dump(mode="json", exclude_none=True) if address else None,
        placed_at=received_at,
        lock_ttl_seconds=lock_ttl.total_seconds(),
        late_call_window_seconds=parse_duration(settings.late_call_window).total_seconds(),
    )


async def place_order(
    client: Client, settings: Settings, placement: OrderPlacement, received_at: datetime
) -> PlacementResult:
    """Start the order's workflow (or join it) and wait until its stock is reserved."""
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
    )
    call = client.execute_update_with_start_workflow(
        OrderWorkflow.place,
        PlaceRequest(received_at=received_at),
        start_workflow_operation=start,
        id=ids.PLACE_UPDATE_ID,
    )
    return await _answer(settings, call)


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

    return await _on_order(client, settings, path_id, body.marketplace_order_id, dispatch)


async def cancel_order(
    client: Client, settings: Settings, path_id: str, body: RequestOrderId, received_at: datetime
) -> OrderReceipt | None:
    """Marketplace Order Cancellation: the receipt once confirmed, None while it goes on."""
    request = CancelRequest(
        marketplace_order_id=body.marketplace_order_id,
        received_at=received_at,
        reason=body.reason,
        cancellation_request_id=body.cancellation_request_id,
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

    return await _on_order(client, settings, path_id, body.marketplace_order_id, cancel)


async def get_order(client: Client, settings: Settings, path_id: str) -> OrderView:
    """The order, from its workflow's query (open or closed)."""
    for marketplace_order_id in ids.marketplace_ids_for_path(path_id):
        view = await _query(client, settings, marketplace_order_id)
        if view is not None:
            return view
    raise not_found(path_id)


async def _on_order(
    client: Client,
    settings: Settings,
    path_id: str,
    marketplace_order_id: str,
    call: Callable[[Handle], Awaitable[T]],
) -> T:
    """Run an update call on the order the path names; 404 and closed orders handled here."""
    if ids.path_names_order(path_id, marketplace_order_id):
        candidates = [marketplace_order_id]
    else:
        # The path names some other order (or none): its workflow's validator, or its closed
        # state, says 409; no workflow at all says 404.
        candidates = ids.marketplace_ids_for_path(path_id)
    for candidate in candidates:
        handle: Handle = client.get_workflow_handle_for(
            OrderWorkflow.run, ids.workflow_id(candidate)
        )
        try:
            return await _answer(settings, call(handle))
        except RPCError:
            pass  # NOT_FOUND: _answer maps every other status to 503.
        # Not found: either no such order, or its workflow has closed and this is a new call.
        view = await _query(client, settings, candidate)
        if view is not None:
            raise _closed_order_conflict(view, marketplace_order_id)
    raise not_found(path_id)


def _closed_order_conflict(view: OrderView, marketplace_order_id: str) -> ApiError:
    if view.marketplace_order_id != marketplace_order_id:
        return ApiError(
            409,
            "MarketplaceOrderIdMismatch",
            f"marketplaceOrderId {marketplace_order_id} is not the one of order {view.order_id} "
            f"({view.marketplace_order_id})",
        )
    codes = {
        OrderStatus.CANCELED: "OrderCanceled",
        OrderStatus.EXPIRED: "OrderExpired",
        OrderStatus.INVOICED: "OrderInvoiced",
    }
    reason = f": {view.status_reason}" if view.status_reason else ""
    return ApiError(
        409,
        codes.get(view.status, "OrderClosed"),
        f"order {view.order_id} is {view.status}{reason}; its workflow closed at the end of the "
        "late-call window",
    )


async def _query(client: Client, settings: Settings, marketplace_order_id: str) -> OrderView | None:
    handle = client.get_workflow_handle_for(
        OrderWorkflow.run, ids.workflow_id(marketplace_order_id)
    )
    try:
        return await asyncio.wait_for(
            handle.query(OrderWorkflow.order), settings.update_timeout_seconds
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise unavailable(f"Temporal: {err.message}") from err
    except TimeoutError as err:
        raise unavailable(
            f"no worker answered within {settings.update_timeout_seconds:g}s; retry"
        ) from err


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
        raise
    except RPCError as err:
        # NOT_FOUND is for the caller to tell apart (no such order, or a closed one).
        if err.status == RPCStatusCode.NOT_FOUND:
            raise
        raise unavailable(f"Temporal: {err.message}") from err
