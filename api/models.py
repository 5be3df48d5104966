"""The bodies VTEX sends and expects, named after the schemas of
`vtex-external-seller-fulfillment.openapi.json`.

Types are strict (a string where the spec says integer is a 400, not a silent conversion) and
unknown fields are kept: marketplaces add fields over time, and an order must not be refused for
carrying one more.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from workflows.durations import check_lock_ttl
from workflows.ids import ORDER_ID_PATTERN

OrderIdText = Annotated[str, Field(pattern=ORDER_ID_PATTERN)]

# Every number VTEX sends must fit what the system holds: the warehouse's 64-bit integers, and
# the marketplace's JSON readers, which are exact only up to 2^53. An order's value (items plus
# freight, in cents) stays within that; each part is bounded so the sum is quick to check.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_QUANTITY = 1_000_000
MAX_PRICE_CENTS = 10**12
MAX_ITEMS = 1_000
SafeInt = Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]

# Every text the order's workflow keeps (the cancellation's fields, the shipping address, the
# marketplace's URL) is bounded, far above what real orders carry: Temporal refuses a payload
# over 2 MB, and the order's state holds some texts twice (a cancellation's reason is also its
# status reason), so one long text under the 1 MiB body cap could make the order's result too
# large to record, and its workflow task would fail forever.
MAX_SHORT_TEXT = 256  # names, cities, codes, ids, an email address (at most 254 characters)
# A street, an address's complement or reference, a cancellation's reason: a sentence or two for
# people, room for a paragraph.
MAX_TEXT = 1_000
MAX_URL = 2_048  # the longest URL browsers and servers commonly take
# Lists of an item (its bundle, attachments, price tags): real items carry a handful.
MAX_ITEM_PARTS = 100
ShortText = Annotated[str, Field(max_length=MAX_SHORT_TEXT)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class VtexModel(BaseModel):
    """camelCase on the wire, strict types, unknown fields kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        strict=True,
        extra="allow",
    )


class BundleItem(VtexModel):
    """`bundleItemsItem`."""

    type: str | None = None
    id: SafeInt | None = None
    name: str | None = None
    price: SafeInt | None = None


class ItemAttachment(VtexModel):
    """`itemAttachment`."""

    name: str | None = None
    content: str | None = None


class PriceTag(VtexModel):
    """An item's price tag (discounts, taxes)."""

    identifier: str | None = None
    is_percentual: bool | None = None
    name: str | None = None
    raw_value: SafeInt | None = None
    value: SafeInt | None = None


class PlacementItem(VtexModel):
    """An item of `orderPlacement.items`."""

    # A SKU id goes into the warehouse and back to the marketplace: printable, and short.
    id: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    seller: str | None = None
    commission: SafeInt | None = None
    freight_commission: SafeInt | None = None
    # Unit price in cents.
    price: int = Field(default=0, ge=0, le=MAX_PRICE_CENTS)
    bundle_items: list[BundleItem] | None = Field(default=None, max_length=MAX_ITEM_PARTS)
    items_attachment: list[ItemAttachment] | None = Field(default=None, max_length=MAX_ITEM_PARTS)
    attachments: list[Any] | None = Field(default=None, max_length=MAX_ITEM_PARTS)
    price_tags: list[PriceTag] | None = Field(default=None, max_length=MAX_ITEM_PARTS)
    measurement_unit: str | None = None
    unit_multiplier: SafeInt | None = None
    is_gift: bool | None = None


class ClientProfileData(VtexModel):
    """`orderPlacement.clientProfileData`."""

    email: ShortText
    first_name: ShortText
    last_name: ShortText
    document_type: ShortText
    document: ShortText
    phone: ShortText | None = None
    corporate_name: ShortText | None = None
    trade_name: ShortText | None = None
    corporate_document: ShortText | None = None
    state_inscription: ShortText | None = None
    corporate_phone: ShortText | None = None
    is_corporate: bool | None = False


class Address(VtexModel):
    """`orderPlacement.shippingData.address`."""

    address_type: ShortText
    receiver_name: ShortText
    address_id: ShortText | None = None
    postal_code: ShortText
    city: ShortText
    state: ShortText
    country: ShortText
    street: Text
    number: ShortText
    neighborhood: ShortText
    complement: Text | None = None
    reference: Text | None = None
    # Longitude and latitude; room for more.
    geo_coordinates: list[ShortText] | None = Field(default=None, max_length=10)


class DeliveryWindow(VtexModel):
    """A scheduled delivery's window."""

    start_date_utc: str | None = None
    end_date_utc: str | None = None
    list_price: float | None = None


class LogisticsInfo(VtexModel):
    """`orderPlacement.shippingData.logisticsInfo[]`."""

    item_index: int = Field(ge=0, le=MAX_ITEMS)
    selected_sla: str
    lock_ttl: str | None = Field(default=None, alias="lockTTL")
    shipping_estimate: str | None = None
    # Freight in cents.
    price: int = Field(ge=0, le=MAX_PRICE_CENTS)
    delivery_window: DeliveryWindow | None = None

    @field_validator("lock_ttl")
    @classmethod
    def _lock_ttl_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            check_lock_ttl(value)
        return value


class ShippingData(VtexModel):
    """`orderPlacement.shippingData`."""

    address: Address | None = None
    # One entry per item: its lockTTL costs a computation at each placement.
    logistics_info: list[LogisticsInfo] | None = Field(default=None, max_length=MAX_ITEMS)
    update_status: str | None = None


class MarketingData(VtexModel):
    """`orderPlacement.marketingData`."""

    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utmi_page: str | None = None
    utmi_part: str | None = None
    utmi_campaign: str | None = None


class OrderPlacement(VtexModel):
    """`orderPlacement`: the order the marketplace places with the seller."""

    marketplace_order_id: OrderIdText
    # Where the invoice and tracking go; the spec leaves it optional, this seller needs it.
    marketplace_services_endpoint: str = Field(max_length=MAX_URL)
    marketplace_payment_value: SafeInt | None = None
    items: list[PlacementItem] = Field(min_length=1, max_length=MAX_ITEMS)
    payment_data: dict[str, Any] | None = None
    client_profile_data: ClientProfileData | None = None
    shipping_data: ShippingData | None = None
    marketing_data: MarketingData | None = None
    open_text_field: str | None = None

    @field_validator("marketplace_services_endpoint")
    @classmethod
    def _is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL, e.g. https://store.vtexcommercestable.com.br")
        return value

    @model_validator(mode="after")
    def _value_fits(self) -> OrderPlacement:
        items = sum(item.price * item.quantity for item in self.items)
        logistics = (self.shipping_data.logistics_info if self.shipping_data else None) or []
        if items + sum(info.price for info in logistics) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"the order's value (items plus freight) is over {MAX_SAFE_INTEGER} cents"
            )
        return self


class ResponseOrderPlacement(VtexModel):
    """`responseOrderPlacement`: the placement echoed with the seller's `orderId`."""

    marketplace_order_id: str
    order_id: str
    follow_up_email: str | None = None
    items: list[PlacementItem]
    client_profile_data: ClientProfileData | None = None
    shipping_data: ShippingData | None = None
    payment_data: dict[str, Any] | None = None


class RequestOrderId(VtexModel):
    """`requestOrderId`: the body of dispatch and cancellation.

    Marketplaces may add `reason`, `cancellationRequestId` and `requestedByUser` to a
    cancellation; the order keeps them.
    """

    marketplace_order_id: OrderIdText
    reason: Text | None = None
    cancellation_request_id: ShortText | None = None
    # VTEX sends whether the shopper asked (true/false); some marketplaces send who asked.
    requested_by_user: bool | str | None = None

    @field_validator("requested_by_user")
    @classmethod
    def _who_is_short(cls, value: bool | str | None) -> bool | str | None:
        # Checked here rather than as a bounded str in the union: a union's error would name
        # each of its members (`requestedByUser.bool`) instead of the field.
        if isinstance(value, str) and len(value) > MAX_SHORT_TEXT:
            raise ValueError(f"String should have at most {MAX_SHORT_TEXT} characters")
        return value


class ResponseOrderId(VtexModel):
    """`repsonseOrderId` (sic): the receipt of dispatch and of a confirmed cancellation."""

    date: str
    marketplace_order_id: str
    order_id: str
    receipt: str


class ErrorDetail(BaseModel):
    """One field that made a request invalid."""

    field: str
    message: str


class Error(BaseModel):
    """What went wrong, for people and for scripts (`code` is stable)."""

    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: Error
