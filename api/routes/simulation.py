"""`POST /pvt/orderForms/simulation`, as VTEX calls it: read the catalog and the shipping table
directly (api/simulation.py), answer fast."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.catalog_check import read_offers
from api.deps import CatalogDep, require_vtex_credentials
from api.errors import ApiError, read_json, validation_error
from api.models import ErrorBody
from api.shipping import load_shipping_table
from api.simulation import FulfillmentSimulation, simulate

router = APIRouter(
    prefix="/pvt/orderForms",
    tags=["External Seller"],
    dependencies=[Depends(require_vtex_credentials)],
    responses={
        400: {"model": ErrorBody, "description": "Invalid request (the field is named)"},
        401: {"model": ErrorBody, "description": "Wrong or missing VTEX app key/token"},
        503: {"model": ErrorBody, "description": "The catalog's database unreachable: retry"},
    },
)


@router.post(
    "/simulation",
    summary="Fulfillment simulation",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/FulfillmentSimulation"}
                }
            },
        }
    },
)
async def fulfillment_simulation(request: Request, catalog: CatalogDep) -> JSONResponse:
    """Prices, stock and delivery methods of the cart's SKUs (unknown ones: unavailable)."""
    payload = await read_json(request)
    try:
        simulation = FulfillmentSimulation.model_validate(payload)
    except ValidationError as err:
        raise validation_error(err) from err
    try:
        # The path the app resolved once (api/app.py); the table is read once per process.
        table = load_shipping_table(request.app.state.shipping_table_path)
    except ValueError as err:
        raise ApiError(503, "ServiceUnavailable", str(err), headers={"Retry-After": "30"}) from err
    offers = await read_offers(catalog, [item.id for item in simulation.items])
    return JSONResponse(simulate(simulation, offers, table, datetime.now(UTC)))
