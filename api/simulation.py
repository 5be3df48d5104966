"""Fulfillment simulation (`POST /pvt/orderForms/simulation`): prices, stock and delivery methods
for a cart, from the catalog and the shipping table, never through Temporal (VTEX treats a SKU
as unavailable when the answer takes over 2.5 s).

Two contexts, as VTEX calls it:
- **indexing** (no `postalCode` or `country`): each known SKU's price and stock, with every SLA
  at its lowest price; the stock is what is available.
- **checkout** (`postalCode` and `country`): the SLAs that reach that address, at its price; when
  none does, the item cannot be delivered there and its stock is 0.

A SKU the catalog does not know is unavailable: left out of `items` and `logisticsInfo` (VTEX's
reading of an unavailable item), not an error. The quantity answered is what was asked, or what
is available when less.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import Field

from activities.catalog import Offer
from api.models import VtexModel
from api.shipping import ShippingTable, Sla

# How long an answered price holds (`priceValidUntil`).
PRICE_VALIDITY = timedelta(hours=1)
MAX_ITEMS = 1000
SimulationText = Annotated[str, Field(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class SimulationItem(VtexModel):
    """`fulfillmentItem`: one cart line."""

    id: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    quantity: int = Field(ge=1, le=1_000_000)
    seller: SimulationText


class FulfillmentSimulation(VtexModel):
    """`requestFulfillmentSimulation`."""

    items: list[SimulationItem] = Field(min_length=1, max_length=MAX_ITEMS)
    # Null or absent in the indexing context.
    postal_code: Annotated[str, Field(max_length=32)] | None = None
    country: Annotated[str, Field(max_length=3)] | None = None
    geo_coordinates: list[float | Annotated[str, Field(max_length=32)]] | None = Field(
        default=None, max_length=10
    )
    sc: SimulationText | None = None

    @property
    def at_checkout(self) -> bool:
        """Whether it asks for an address (checkout) rather than for prices (indexing)."""
        return bool(self.postal_code and self.country)


def simulate(
    request: FulfillmentSimulation, offers: dict[str, Offer], table: ShippingTable, now: datetime
) -> dict[str, Any]:
    """`responseFulfillmentSimulation` for the request."""
    valid_until = (now + PRICE_VALIDITY).astimezone(UTC).isoformat(timespec="milliseconds")
    reaching: list[tuple[Sla, int]] = (
        table.reaching(request.country or "", request.postal_code or "")
        if request.at_checkout
        else [(sla, sla.lowest_price) for sla in table.slas]
    )
    # Built once per answer: every line that has stock ships by the same SLAs.
    slas = [_sla(sla, price) for sla, price in reaching]
    channels = _channels(reaching)
    items, logistics = [], []
    # What is left of each SKU for the cart's next line of it: two lines of one SKU share its
    # stock, so that together they never promise more than there is.
    left = {sku: offer.available if reaching else 0 for sku, offer in offers.items()}
    for index, line in enumerate(request.items):
        offer = offers.get(line.id)
        if offer is None:
            continue  # unknown: unavailable
        stock_balance = left[line.id]
        quantity = min(line.quantity, stock_balance)
        left[line.id] -= quantity
        items.append(
            {
                "id": offer.sku,
                "requestIndex": index,
                "quantity": quantity,
                "seller": line.seller,
                "price": offer.price,
                "listPrice": offer.list_price,
                "priceValidUntil": valid_until,
                "measurementUnit": "un",
                "unitMultiplier": 1,
                "merchantName": line.seller,
                "offerings": [],
                "priceTags": [],
            }
        )
        logistics.append(
            {
                "itemIndex": index,
                "quantity": quantity,
                "shipsTo": table.ships_to,
                "slas": slas if stock_balance else [],
                "stockBalance": stock_balance,
                "deliveryChannels": [
                    {"id": channel, "stockBalance": stock_balance if has else 0}
                    for channel, has in channels
                ],
            }
        )
    return {
        # The schema types both as strings: an indexing request's absent ones are answered "".
        "country": request.country or "",
        "postalCode": request.postal_code or "",
        "items": items,
        "logisticsInfo": logistics,
        "allowMultipleDeliveries": True,
    }


def _channels(reaching: list[tuple[Sla, int]]) -> list[tuple[str, bool]]:
    present = {sla.delivery_channel for sla, _ in reaching}
    return [(channel, channel in present) for channel in ("delivery", "pickup-in-point")]


def _sla(sla: Sla, price: int) -> dict[str, Any]:
    return {
        "id": sla.id,
        "deliveryChannel": sla.delivery_channel,
        "name": sla.name,
        "price": price,
        "shippingEstimate": sla.shipping_estimate,
        "availableDeliveryWindows": [],
        "pickupStoreInfo": sla.pickup_store.info if sla.pickup_store is not None else None,
    }
