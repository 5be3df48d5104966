"""Operators' actions on the ops listener: `POST /orders/{orderId}/resend-invoice`,
`/retry-now` and `/stop-tracking`, behind OPS_TOKEN like the rest of the listener. The body says
who asks and why; `requestId` makes a retried call the same action (api/operator_actions.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field, ValidationError

from api import operator_actions
from api.deps import ClientDep, SettingsDep, require_ops_token
from api.errors import ApiError, read_json, validation_error
from workflows.messages import CamelModel, OperatorAction, OperatorRequest

router = APIRouter(prefix="/orders", tags=["Operations"], dependencies=[Depends(require_ops_token)])

OrderIdPath = Annotated[
    str, Path(alias="orderId", description="The seller orderId (or the marketplaceOrderId).")
]


class OperatorCall(CamelModel):
    """Who asks, why, and the id that makes a retried call the same action (a new one if
    absent: the call is then not safe to retry)."""

    by: str = Field(description="Who asks, recorded in the order.")
    reason: str | None = Field(default=None, description="Why, recorded in the order.")
    request_id: str | None = Field(default=None, description="Makes a retried call the same.")


async def _act(
    name: str, path_id: str, request: Request, client: ClientDep, settings: SettingsDep
) -> OperatorAction:
    # Not for pages: a browser's cross-site POST carries an Origin, and only JSON is read (which
    # a page cannot send to another site without CORS's preflight, not answered here).
    if "origin" in request.headers:
        raise ApiError(403, "OriginNotAllowed", "operators' actions are not for web pages")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    try:
        call = OperatorCall.model_validate(await read_json(request))
    except ValidationError as err:
        raise validation_error(err) from err
    return await operator_actions.act(
        client,
        settings,
        path_id,
        name,
        OperatorRequest(by=call.by, reason=call.reason),
        call.request_id or str(uuid.uuid4()),
    )


@router.post("/{orderId}/resend-invoice", response_model=OperatorAction)
async def resend_invoice(
    order_id: OrderIdPath, request: Request, client: ClientDep, settings: SettingsDep
) -> OperatorAction:
    """Send the order's invoice and tracking to the marketplace again, now."""
    return await _act("resend-invoice", order_id, request, client, settings)


@router.post("/{orderId}/retry-now", response_model=OperatorAction)
async def retry_now(
    order_id: OrderIdPath, request: Request, client: ClientDep, settings: SettingsDep
) -> OperatorAction:
    """Retry at once what the order waits on: a call in its backoff, a pause, the next poll."""
    return await _act("retry-now", order_id, request, client, settings)


@router.post("/{orderId}/stop-tracking", response_model=OperatorAction)
async def stop_tracking(
    order_id: OrderIdPath, request: Request, client: ClientDep, settings: SettingsDep
) -> OperatorAction:
    """Stop following the order's parcel: it stays invoiced and closes after its late-call
    window."""
    return await _act("stop-tracking", order_id, request, client, settings)
