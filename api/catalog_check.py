"""Placement checks the catalog before anything starts: a SKU the seller does not sell is a 409
`UnknownSku` naming it, and no order exists.

A quantity above what is available is left to the reservation, the authority on stock (it can go
between any read and the reservation): the order's workflow refuses it, 409 `OutOfStock` naming
the SKU, with nothing reserved, and the refused order stays known, so that the marketplace's
cancellation of it is confirmed. The catalog is the simulated warehouse's store
(activities/catalog.py), read directly; a deployment that plugs in its own warehouse
(`WAREHOUSE`) has its own catalog: the check is off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError

from activities.catalog import Catalog, Offer
from api.errors import ApiError, unavailable
from api.models import ErrorDetail, OrderPlacement
from config import Settings

SIMULATED_WAREHOUSE = "activities.simulated_warehouse:"
# How long a read of the catalog may take before the call is answered 503 (VTEX gives the
# simulation 2.5 s in all; a database that hangs must not hold the API's threads longer).
CATALOG_READ_SECONDS = 2.0


async def read_offers(catalog: Catalog, skus: list[str]) -> dict[str, Offer]:
    """`catalog.offers(skus)` off the event loop, bounded; a 503 when the store cannot answer."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(catalog.offers, skus), CATALOG_READ_SECONDS)
    except (TimeoutError, SQLAlchemyError, OSError) as err:
        raise unavailable("the catalog could not be read; retry") from err


def checks_catalog(settings: Settings) -> bool:
    """Whether placements are checked against the simulated warehouse's catalog."""
    return settings.warehouse.startswith(SIMULATED_WAREHOUSE)


async def check_known_skus(
    catalog: Catalog, placement: OrderPlacement, already_placed: Callable[[], Awaitable[bool]]
) -> None:
    """Raise the 409 of the first line whose SKU the catalog does not list.

    A retried placement of an order that was placed already is never refused here: it gets its
    first answer again, whatever the catalog says now.
    """
    if catalog.default_stock is not None:
        return  # DEFAULT_STOCK: every SKU is sold
    first_line: dict[str, int] = {}
    for index, item in enumerate(placement.items):
        first_line.setdefault(item.id, index)
    offers = await read_offers(catalog, list(first_line))
    unknown = [sku for sku in first_line if sku not in offers]
    if not unknown or await already_placed():
        return
    sku = unknown[0]
    field = f"items[{first_line[sku]}].id"
    message = f"SKU {sku} is not in the seller's catalog"
    raise ApiError(409, "UnknownSku", message, [ErrorDetail(field=field, message=message)])
