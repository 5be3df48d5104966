"""The seller's shipping table: which delivery methods (SLAs) reach a postal code, at what price.

A JSON file (`SHIPPING_TABLE`; `catalog/shipping.json` by default) with the countries shipped to
(`shipsTo`, ISO 3-letter codes) and the SLAs. Each SLA has an `id`, a `name`, a
`deliveryChannel` (`delivery` or `pickup-in-point`), a `shippingEstimate` as VTEX writes it
(`3bd`: three business days; `d`, `h`, `m`), and its `prices` by postal-code range (inclusive,
compared digit by digit): an SLA reaches a postal code only when one of its ranges holds it. A
pickup SLA names its store (`pickupStore`).
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from workflows.messages import CamelModel


def postal_digits(postal_code: str) -> str:
    """The digits of a postal code (`01310-100` -> `01310100`), as ranges compare them."""
    return re.sub(r"\D", "", postal_code)


class PriceBand(CamelModel):
    """A price for the postal codes from `postal_code_from` to `postal_code_to`."""

    postal_code_from: str = Field(pattern=r"^\d{1,16}$")
    postal_code_to: str = Field(pattern=r"^\d{1,16}$")
    price: int = Field(ge=0, le=2**53 - 1)

    @model_validator(mode="after")
    def _a_range(self) -> PriceBand:
        if len(self.postal_code_from) != len(self.postal_code_to):
            raise ValueError("postalCodeFrom and postalCodeTo must have as many digits")
        if self.postal_code_from > self.postal_code_to:
            raise ValueError("postalCodeFrom comes after postalCodeTo")
        return self

    def holds(self, digits: str) -> bool:
        """Whether the postal code (its digits) is in this range."""
        if len(digits) != len(self.postal_code_from):
            return False
        return self.postal_code_from <= digits <= self.postal_code_to


class PickupStore(CamelModel):
    """Where a pickup SLA's parcels wait: what `pickupStoreInfo` must carry."""

    friendly_name: str = Field(min_length=1, max_length=256)
    address_id: str = Field(min_length=1, max_length=256)
    postal_code: str = Field(min_length=1, max_length=32)
    city: str = Field(min_length=1, max_length=256)
    state: str = Field(min_length=1, max_length=256)
    country: str = Field(min_length=3, max_length=3)
    street: str = Field(min_length=1, max_length=256)
    number: str = Field(max_length=32)
    neighborhood: str = Field(max_length=256)
    complement: str = Field(default="", max_length=256)
    reference: str | None = Field(default=None, max_length=256)
    geo_coordinates: list[float] = Field(default_factory=list, max_length=2)
    additional_info: str = Field(default="", max_length=1000)

    @cached_property
    def info(self) -> dict[str, Any]:
        """The answer's `pickupStoreInfo`, built once per table (shared by every answer: never
        changed after)."""
        store = self.model_dump(by_alias=True)
        return {
            "isPickupStore": True,
            "friendlyName": store.pop("friendlyName"),
            "additionalInfo": store.pop("additionalInfo"),
            "address": {"addressType": "pickup", "receiverName": None, **store},
        }


class Sla(CamelModel):
    """A delivery method."""

    id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=256)
    delivery_channel: Literal["delivery", "pickup-in-point"]
    shipping_estimate: str = Field(pattern=r"^\d+(bd|d|h|m)$")
    prices: list[PriceBand] = Field(min_length=1)
    pickup_store: PickupStore | None = None

    @model_validator(mode="after")
    def _pickup_has_a_store(self) -> Sla:
        if self.delivery_channel == "pickup-in-point" and self.pickup_store is None:
            raise ValueError("a pickup-in-point SLA names its pickupStore")
        return self

    def price_for(self, postal_code: str) -> int | None:
        """Its price to `postal_code`, or None when it does not reach it."""
        digits = postal_digits(postal_code)
        return next((band.price for band in self.prices if band.holds(digits)), None)

    @property
    def lowest_price(self) -> int:
        """What it costs where it is cheapest (what an indexing simulation shows)."""
        return min(band.price for band in self.prices)


class ShippingTable(CamelModel):
    """Every SLA, and the countries they ship to."""

    ships_to: list[str] = Field(min_length=1)
    slas: list[Sla] = Field(min_length=1)

    @cached_property
    def countries(self) -> frozenset[str]:
        """`ships_to` in capitals."""
        return frozenset(code.upper() for code in self.ships_to)

    def reaching(self, country: str, postal_code: str) -> list[tuple[Sla, int]]:
        """The SLAs that reach the address, each with its price there."""
        if country.upper() not in self.countries:
            return []
        found = [(sla, sla.price_for(postal_code)) for sla in self.slas]
        return [(sla, price) for sla, price in found if price is not None]


@lru_cache(maxsize=4)
def load_shipping_table(path: Path) -> ShippingTable:
    """The table in `path` (read once per process).

    Raises:
        ValueError: the file is missing or is no shipping table; the message says where.
    """
    try:
        return ShippingTable.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"SHIPPING_TABLE {path}: {err.strerror}") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"SHIPPING_TABLE {path}: {where}: {first['msg']}") from None
