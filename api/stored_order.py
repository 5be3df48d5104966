"""The order as Temporal keeps it without a worker, for GET /pvt/orders/{orderId} when the
order's query cannot be answered: no worker answered in time, or the workflow closed before its
first workflow task (there is nothing to replay).

A workflow that completed returned its final view (`OrderWorkflow.run`): that, whole. Any other
one (running with no worker, terminated, failed, timed out) is rebuilt from its start input
(items, placedAt), its search attributes (status, step) and the memo it keeps current
(`OrderWorkflow._publish_memo`: reason, attention, times, invoice). Either way the view says
`live: false`, and `workflowStatus` says whether the workflow is still running.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import Any

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from api.errors import unavailable
from config import Settings
from workflows import ids, search
from workflows.messages import OrderInput, OrderStatus, OrderView, PendingCall
from workflows.order import OrderWorkflow

log = logging.getLogger("api")


async def stored_order(
    client: Client, settings: Settings, marketplace_order_id: str
) -> OrderView | None:
    """The order from what Temporal holds without a worker, `live: false`; None when it has no
    such workflow.

    Each read is bounded by ORDER_QUERY_TIMEOUT_SECONDS: 503 only when Temporal itself does not
    answer (a workflow's result that cannot be read gives the rebuilt view instead).
    """
    workflow_id = ids.workflow_id(marketplace_order_id)
    handle = client.get_workflow_handle_for(OrderWorkflow.run, workflow_id)
    seconds = settings.order_query_timeout_seconds
    try:
        description, order = await asyncio.wait_for(
            asyncio.gather(handle.describe(), _order_input(client, handle)), seconds
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise unavailable(f"Temporal: {err.message}") from err
    except TimeoutError as err:
        raise unavailable(f"Temporal did not answer within {seconds:g}s; retry") from err
    status = workflow_status(description)
    calls = pending_calls(description)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        # The result is the view the workflow answered last: nothing in it can change any more.
        pinned = client.get_workflow_handle_for(
            OrderWorkflow.run, workflow_id, run_id=description.run_id
        )
        try:
            final = await asyncio.wait_for(pinned.result(follow_runs=False), seconds)
        except Exception as err:  # too slow, or not readable here: the rebuilt view instead
            log.warning("order %s: its result could not be read: %r", workflow_id, err)
        else:
            return final.model_copy(
                update={"live": False, "workflow_status": status, "pending_calls": calls}
            )
    return await _rebuilt(description, order, marketplace_order_id, status, calls)


async def _rebuilt(
    description: WorkflowExecutionDescription,
    order: OrderInput | None,
    marketplace_order_id: str,
    status: str | None,
    calls: list[PendingCall],
) -> OrderView:
    """The view from the start input, the search attributes and the memo."""
    attributes = description.typed_search_attributes
    try:
        memo = dict(await description.memo())
    except Exception as err:  # e.g. a payload encrypted with a key this API does not have
        log.warning("order %s: its memo could not be read: %r", description.id, err)
        memo = {}
    fields: dict[str, Any] = {
        "orderId": attributes.get(search.SELLER_ORDER_ID)
        or ids.seller_order_id(marketplace_order_id),
        "marketplaceOrderId": marketplace_order_id,
        "workflowId": description.id,
        # The search attributes first: every workflow version since they exist keeps them
        # current, the memo only from OPERATORS_IN_CONTROL on (an older order has only the
        # API's start memo). Neither: the order never ran its first workflow task.
        "status": attributes.get(search.ORDER_STATUS)
        or memo.get("status")
        or OrderStatus.RESERVING,
        "currentStep": attributes.get(search.FULFILLMENT_STEP) or None,
        "placedAt": order.placed_at if order else memo.get("placedAt") or description.start_time,
        "items": order.lines if order else [],
        "marketplaceServicesEndpoint": order.marketplace_services_endpoint if order else "",
        "live": False,
        "workflowStatus": status,
        "pendingCalls": calls,
    }
    # The memo adds the rest (reason, attention, times, invoice); it overrides nothing above.
    published = {name: value for name, value in memo.items() if name not in fields}
    try:
        return OrderView.model_validate(fields | published)
    except ValidationError as err:  # a memo this version cannot read: the rest still stands
        log.warning("order %s: its memo does not fit the view: %s", description.id, err)
        return OrderView.model_validate(fields)


async def _order_input(client: Client, handle: WorkflowHandle[Any, Any]) -> OrderInput | None:
    """The order as it started, from its history's first event (no worker needed); None when
    it cannot be read (then the view has no items)."""
    try:
        async for event in handle.fetch_history_events(page_size=1):
            started = event.workflow_execution_started_event_attributes
            decoded = await client.data_converter.decode(started.input.payloads, [OrderInput])
            return decoded[0] if decoded and isinstance(decoded[0], OrderInput) else None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise  # no such order: describe says so too
        log.warning("order %s: its start could not be read: %s", handle.id, err.message)
    except Exception as err:  # e.g. a payload encrypted with a key this API does not have
        log.warning("order %s: its start could not be read: %r", handle.id, err)
    return None


def workflow_status(description: WorkflowExecutionDescription) -> str | None:
    """The execution status as the Temporal UI names it: Running, Completed, TimedOut..."""
    if description.status is None:
        return None
    return description.status.name.replace("_", " ").title().replace(" ", "")


def pending_calls(description: WorkflowExecutionDescription) -> list[PendingCall]:
    """The order's activities in flight, with their attempts and last error."""
    calls = []
    for pending in description.raw_description.pending_activities:
        last_error = pending.last_failure.message if pending.HasField("last_failure") else None
        next_attempt = (
            pending.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
            if pending.HasField("next_attempt_schedule_time")
            else None
        )
        calls.append(
            PendingCall(
                activity=pending.activity_type.name,
                attempt=pending.attempt,
                last_error=last_error or None,
                next_attempt_at=next_attempt,
            )
        )
    return calls
