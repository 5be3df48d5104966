"""The External Seller endpoints, paths exactly as VTEX calls them. Handlers stay thin: parse,
call Temporal (api/order_calls.py), shape the answer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from activities.marketplace_hosts import HostPolicy
from api import order_calls
from api.catalog_check import check_known_skus, checks_catalog
from api.deps import CatalogDep, ClientDep, SettingsDep, require_vtex_credentials
from api.errors import ApiError, read_json, validation_error
from api.models import (
    ErrorBody,
    ErrorDetail,
    OrderPlacement,
    RequestOrderId,
    ResponseOrderId,
    ResponseOrderPlacement,
)
from config import Settings
from logs import order_fields
from workflows.ids import is_valid_order_id
from workflows.messages import (
    OrderView,
    PlacementResult,
    cancellation_request_fields,
    cancellation_request_text,
)

log = logging.getLogger("api")

M = TypeVar("M", bound=BaseModel)

router = APIRouter(
    prefix="/pvt/orders",
    tags=["External Seller"],
    dependencies=[Depends(require_vtex_credentials)],
    responses={
        400: {"model": ErrorBody, "description": "Invalid request (the field is named)"},
        401: {"model": ErrorBody, "description": "Wrong or missing VTEX app key/token"},
        415: {"model": ErrorBody, "description": "Not JSON"},
        503: {"model": ErrorBody, "description": "Temporal or the workers unreachable: retry"},
    },
)

OrderIdPath = Annotated[
    str,
    Path(alias="orderId", description="The seller orderId (or the marketplaceOrderId)."),
]


class OrderDetails(OrderView):
    """The order with a link to its workflow in the Temporal UI."""

    temporal_ui_url: str | None = None


def _body_request(schema_name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _validate(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        raise ApiError(400, "InvalidRequest", "body: a JSON object is expected")
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise validation_error(err) from err


def _checked_path_id(order_id: str) -> str:
    if not is_valid_order_id(order_id):
        raise ApiError(
            400,
            "InvalidRequest",
            "orderId: 1 to 100 letters, digits or . _ : - expected",
        )
    return order_id


def _now() -> datetime:
    return datetime.now(UTC)


@router.post(
    "",
    summary="Order placement",
    response_model=ResponseOrderPlacement | list[ResponseOrderPlacement],
    responses={409: {"model": ErrorBody, "description": "OutOfStock, UnknownSku"}},
    openapi_extra=_body_request("OrderPlacement"),
)
async def order_placement(
    request: Request, client: ClientDep, settings: SettingsDep, catalog: CatalogDep
) -> JSONResponse:
    """Place the order: start its workflow, reserve its stock, answer the seller `orderId`.

    Accepts the `orderPlacement` object or a one-element array of it, and answers in the same
    form. Repeating a placement answers the same `orderId` and starts nothing new.
    """
    payload = await read_json(request)
    as_list = isinstance(payload, list)
    if as_list:
        if len(payload) != 1:
            raise ApiError(
                400, "InvalidRequest", "body: an array must hold exactly one orderPlacement"
            )
        payload = payload[0]
    placement = _validate(OrderPlacement, payload)
    refused = HostPolicy.parse(settings.marketplace_allowed_hosts).refusal(
        placement.marketplace_services_endpoint
    )
    if refused:
        field = "marketplaceServicesEndpoint"
        raise ApiError(
            400,
            "InvalidRequest",
            f"{field}: {refused}",
            [ErrorDetail(field=field, message=refused)],
        )
    if checks_catalog(settings):
        await check_known_skus(
            catalog,
            placement,
            lambda: order_calls.order_exists(client, placement.marketplace_order_id),
        )
    result = await order_calls.place_order(client, settings, placement, _now())
    log.info(
        "order %s placed (seller %s)",
        result.marketplace_order_id,
        result.order_id,
        extra=order_fields(result.marketplace_order_id),
    )
    answer = _placement_answer(placement, result, settings)
    return JSONResponse([answer] if as_list else answer)


def _placement_answer(
    placement: OrderPlacement, result: PlacementResult, settings: Settings
) -> dict[str, Any]:
    """`responseOrderPlacement`: the placement echoed, with the seller's `orderId`."""
    answer = ResponseOrderPlacement(
        marketplace_order_id=result.marketplace_order_id,
        order_id=result.order_id,
        follow_up_email=settings.follow_up_email or None,
        items=placement.items,
        client_profile_data=placement.client_profile_data,
        shipping_data=placement.shipping_data,
        payment_data=placement.payment_data,
    )
    # A field with no value is left out rather than sent as null: VTEX's schema types them.
    return answer.model_dump(mode="json", exclude_none=True)


@router.post(
    "/{orderId}/fulfill",
    summary="Authorize fulfillment (Order Dispatching)",
    response_model=ResponseOrderId,
    responses={
        404: {"model": ErrorBody, "description": "OrderNotFound"},
        409: {
            "model": ErrorBody,
            "description": "MarketplaceOrderIdMismatch, OrderCanceled, OrderExpired",
        },
    },
    openapi_extra=_body_request("RequestOrderId"),
)
async def authorize_fulfillment(
    order_id: OrderIdPath, request: Request, client: ClientDep, settings: SettingsDep
) -> ResponseOrderId:
    """Start the order's fulfillment. A retry answers the same `receipt` and `date`."""
    body = _validate(RequestOrderId, await read_json(request))
    receipt = await order_calls.dispatch_order(
        client, settings, _checked_path_id(order_id), body, _now()
    )
    log.info(
        "order %s dispatched (receipt %s)",
        receipt.order_id,
        receipt.receipt,
        extra=order_fields(receipt.marketplace_order_id),
    )
    return ResponseOrderId.model_validate(receipt.model_dump())


@router.post(
    "/{orderId}/cancel",
    summary="Marketplace order cancellation",
    response_model=ResponseOrderId,
    responses={
        200: {"description": "Confirmed (the receipt), or an empty body while it is evaluated"},
        404: {"model": ErrorBody, "description": "OrderNotFound"},
        409: {
            "model": ErrorBody,
            "description": "OrderInvoiced (refused: the invoice was sent again), "
            "MarketplaceOrderIdMismatch",
        },
    },
    openapi_extra=_body_request("RequestOrderId"),
)
async def cancel_order(
    order_id: OrderIdPath, request: Request, client: ClientDep, settings: SettingsDep
) -> Response:
    """Cancel the order: confirm (200 with the receipt), evaluate (200, empty body: still
    aborting; call again) or refuse (409 once invoiced; the invoice is sent again)."""
    body = _validate(RequestOrderId, await read_json(request))
    receipt = await order_calls.cancel_order(
        client, settings, _checked_path_id(order_id), body, _now()
    )
    # The request this call names; the order keeps the first call's (a retry names the same).
    named = cancellation_request_text(body)
    fields = order_fields(body.marketplace_order_id) | cancellation_request_fields(body)
    if receipt is None:
        log.info(
            "order %s: cancellation still being evaluated%s",
            body.marketplace_order_id,
            f" ({named})" if named else "",
            extra=fields,
        )
        return Response(status_code=200)
    # "this call": a later request answered with the first one's receipt names itself here,
    # while the order (its view) keeps the request it confirmed.
    log.info(
        "order %s canceled (receipt %s%s)",
        receipt.order_id,
        receipt.receipt,
        f"; this call: {named}" if named else "",
        extra=fields,
    )
    return JSONResponse(ResponseOrderId.model_validate(receipt.model_dump()).model_dump())


@router.get(
    "/{orderId}",
    summary="The order as the seller sees it",
    response_model=OrderDetails,
    responses={404: {"model": ErrorBody, "description": "OrderNotFound"}},
)
async def get_order(
    order_id: OrderIdPath, client: ClientDep, settings: SettingsDep
) -> OrderDetails:
    """Status, current step, times, receipts, invoice, tracking and the Temporal workflow id."""
    view = await order_calls.get_order(client, settings, _checked_path_id(order_id))
    details = OrderDetails.model_validate(view.model_dump())
    if settings.temporal_ui_url:
        details.temporal_ui_url = (
            f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{settings.temporal_namespace}"
            f"/workflows/{view.workflow_id}"
        )
    return details
