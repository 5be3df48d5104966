"""The bodies VTEX sends and expects, named after the schemas of
`vtex-external-seller-fulfillment.openapi.json`.

Types are strict (a string where the spec says integer is a 400, not a silent conversion) and
unknown fields are kept: marketplaces add fields over time, and an order must not be refused for
carrying one more. What fulfillment uses (items' ids, quantities and prices, freight, lockTTL, the
address a delivery goes to) is held to the spec; where VTEX's real orders are wider than its file
(coordinates as numbers, decimal multipliers and price tags, nulls, a pickup point's address
without a street), the rest is accepted as they send it, and answered so that the answer still
fits `responseOrderPlacement`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

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


def _json_number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    if abs(value) > MAX_SAFE_INTEGER:
        raise PydanticCustomError(
            "number_range", f"Input should be between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER}"
        )
    # 1.0000 (as VTEX writes a unit multiplier) is the integer the spec means.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A number the spec types as integer where VTEX's orders carry decimals: a unit multiplier of
# 0.3 (kg), a price tag's rawValue of -142.35 (currency units; its `value` is the cents).
# Fulfillment uses neither; an integer stays an integer, so an order placed before keeps its
# fingerprint.
Number = Annotated[int | float, PlainValidator(_json_number, json_schema_input_type=int | float)]

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
    raw_value: Number | None = None
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
    unit_multiplier: Number | None = None
    is_gift: bool | None = None


class ClientProfileData(VtexModel):
    """`orderPlacement.clientProfileData`.

    Fulfillment keeps none of it (the workflow holds no customer data), and the whole object is
    optional: a field left out or null (VTEX's own examples send `"documentType": null`) is no
    reason to refuse the order.
    """

    email: ShortText | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    document_type: ShortText | None = None
    document: ShortText | None = None
    phone: ShortText | None = None
    corporate_name: ShortText | None = None
    trade_name: ShortText | None = None
    corporate_document: ShortText | None = None
    state_inscription: ShortText | None = None
    corporate_phone: ShortText | None = None
    is_corporate: bool | None = False


# What a delivery's address must name besides where it is, and a pickup point's may leave out:
# the parcel goes to the point, whose address VTEX sends without a street or a receiver at times.
# ShippingData checks them, since the delivery channel is in `logisticsInfo`.
DELIVERY_ADDRESS_FIELDS = ("receiver_name", "street", "number", "neighborhood")
MAX_COORDINATES = 10


class Address(VtexModel):
    """`orderPlacement.shippingData.address`."""

    address_type: ShortText
    receiver_name: ShortText | None = None
    address_id: ShortText | None = None
    postal_code: ShortText
    city: ShortText
    state: ShortText
    country: ShortText
    street: Text | None = None
    number: ShortText | None = None
    neighborhood: ShortText | None = None
    complement: Text | None = None
    reference: Text | None = None
    # Longitude and latitude; room for more.
    geo_coordinates: list[ShortText] | None = Field(default=None, max_length=MAX_COORDINATES)

    @property
    def is_pickup_point(self) -> bool:
        """The address of a pickup point (`addressType` `pickup`), not a delivery's."""
        return self.address_type.strip().lower() == "pickup"

    @field_validator(
        "geo_coordinates", mode="before", json_schema_input_type=list[float | str] | None
    )
    @classmethod
    def _coordinates_as_text(cls, value: Any) -> Any:
        # VTEX's orders carry numbers ([-47.924747467041016, -15.832582473754883]); its file
        # types them as strings, in the placement and in `responseOrderPlacement`. A number is
        # kept as its JSON text, exact: one form for the answer (valid against the schema), the
        # warehouse and the fingerprint, and a string sent stays as it was sent.
        if not isinstance(value, list) or len(value) > MAX_COORDINATES:
            return value  # Refused by the type or the length check, before any conversion.
        return [
            str(item) if isinstance(item, int | float) and not isinstance(item, bool) else item
            for item in value
        ]


class DeliveryWindow(VtexModel):
    """A scheduled delivery's window."""

    start_date_utc: str | None = None
    end_date_utc: str | None = None
    list_price: float | None = None


class LogisticsInfo(VtexModel):
    """`orderPlacement.shippingData.logisticsInfo[]`."""

    item_index: int = Field(ge=0, le=MAX_ITEMS)
    selected_sla: str
    # `delivery` or `pickup-in-point`: a pickup's address is the point's.
    selected_delivery_channel: ShortText | None = None
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


PICKUP_IN_POINT = "pickup-in-point"


class ShippingData(VtexModel):
    """`orderPlacement.shippingData`."""

    # One entry per item: its lockTTL costs a computation at each placement. Validated before
    # the address: whether an item is picked up decides what the address must name.
    logistics_info: list[LogisticsInfo] | None = Field(default=None, max_length=MAX_ITEMS)
    address: Address | None = None
    update_status: str | None = None

    @field_validator("address")
    @classmethod
    def _a_delivery_names_its_street(
        cls, address: Address | None, info: ValidationInfo
    ) -> Address | None:
        if address is None or address.is_pickup_point:
            return address
        logistics: list[LogisticsInfo] = info.data.get("logistics_info") or []
        if any(
            (entry.selected_delivery_channel or "").lower() == PICKUP_IN_POINT
            for entry in logistics
        ):
            return address
        missing = [
            to_camel(name) for name in DELIVERY_ADDRESS_FIELDS if getattr(address, name) is None
        ]
        if missing:
            raise PydanticCustomError(
                "missing",
                "{fields} required for a delivery (only a pickup-in-point order may leave "
                "them out)",
                {"fields": ", ".join(missing)},
            )
        return address


class OpenTextField(VtexModel):
    """`openTextField` as VTEX's orders carry it, `{"value": "..."}` (the spec: a string)."""

    value: str | None = None


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
    open_text_field: str | OpenTextField | None = None

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
    """`responseOrderPlacement`: the placement echoed with the seller's `orderId`.

    The echo is the placement as parsed, unknown fields included: the schema allows them, and
    none can take the name of a property it types (every one under `items`, `clientProfileData`
    and `shippingData` is a declared field; the placement's own top-level fields are not echoed).
    Where real orders are wider than the schema, the echo is shaped to it. Dumped with
    `exclude_none`: a field with no value is left out, not null.
    """

    marketplace_order_id: str
    order_id: str
    follow_up_email: str | None = None
    items: list[PlacementItem]
    client_profile_data: ClientProfileData | None = None
    shipping_data: ShippingData | None = None
    payment_data: dict[str, Any] | None = None

    # The serializers below have no return annotation on purpose: pydantic would take it for the
    # field's schema in /openapi.json, which would then say `object` instead of the items.

    @field_serializer("items", mode="wrap")
    def _items_as_the_schema_types_them(
        self, items: list[PlacementItem], handler: SerializerFunctionWrapHandler
    ):
        return handler([_echoed_item(item) for item in items])

    @field_serializer("shipping_data", mode="wrap")
    def _address_as_the_schema_requires_it(
        self, shipping: ShippingData | None, handler: SerializerFunctionWrapHandler
    ):
        address = shipping.address if shipping else None
        if shipping is None or address is None:
            return handler(shipping)
        # The schema requires a street, number, neighborhood and receiver, which a pickup
        # point's address may lack: empty in the answer, as the marketplace sent nothing there.
        # (Left out of the answer, the address would be valid too, but the marketplace would
        # not see the point it sent echoed.)
        blanks = {name: "" for name in DELIVERY_ADDRESS_FIELDS if getattr(address, name) is None}
        if blanks:
            address = address.model_copy(update=blanks)
            shipping = shipping.model_copy(update={"address": address})
        return handler(shipping)


# What `responseOrderPlacement` types in an item's attachment, as strings (VTEX's 2026 file).
ATTACHMENT_TEXTS = ("id", "name", "url")


def _attachment_fits(attachment: Any) -> bool:
    """Whether an attachment is as `responseOrderPlacement` types it."""
    return isinstance(attachment, dict) and all(
        isinstance(attachment[key], str) for key in ATTACHMENT_TEXTS if key in attachment
    )


def _echoed_item(item: PlacementItem) -> PlacementItem:
    """The item as `responseOrderPlacement` types it.

    Its unitMultiplier and a price tag's rawValue are integers there; a decimal one (accepted, as
    VTEX's orders carry them) is left out of the answer rather than rounded to another value.
    Its attachments are objects whose id, name and url are strings: an attachment that is no
    object, or such a field that is no string (null, a number), is left out the same way. They
    are still accepted as sent: fulfillment does not use them, and a retry of an order placed
    before must still parse to the fingerprint it was placed with.
    """
    changes: dict[str, Any] = {}
    if item.attachments and not all(_attachment_fits(a) for a in item.attachments):
        changes["attachments"] = [
            {
                key: value
                for key, value in attachment.items()
                if key not in ATTACHMENT_TEXTS or isinstance(value, str)
            }
            for attachment in item.attachments
            if isinstance(attachment, dict)
        ]
    if isinstance(item.unit_multiplier, float):
        changes["unit_multiplier"] = None
    if item.price_tags and any(isinstance(tag.raw_value, float) for tag in item.price_tags):
        changes["price_tags"] = [
            tag.model_copy(update={"raw_value": None}) if isinstance(tag.raw_value, float) else tag
            for tag in item.price_tags
        ]
    return item.model_copy(update=changes) if changes else item


# What a kept id or date may not hold: C0 and C1 controls and Unicode's line separators (printed in
# the log lines about the cancellation, a line break would forge one).
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: object, limit: int = MAX_SHORT_TEXT) -> str | None:
    """A text the order only records (a cancellation's request id, date, reason, requester) as
    it keeps it: text, its unprintable characters made spaces, cut to `limit`. Never a refusal:
    the marketplace retries a refused dispatch or cancellation with the same body forever."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return UNPRINTABLE.sub(" ", str(value))[:limit]


class RequestOrderId(VtexModel):
    """`requestOrderId`: the body of dispatch and cancellation.

    VTEX's 2026 file lists the cancellation's fields (`cancellationRequestId`,
    `cancellationRequestDate`, `marketplaceOrderGroup`, `reason`, `requestedByUser`) as required,
    and adds `paymentData`, in the one schema of both calls. A cancellation carries them; a
    dispatch, and VTEX's older senders, may send `marketplaceOrderId` alone: every other field is
    optional here. A cancellation's request id and date, reason and requester stay with the order;
    a dispatch keeps none of them.
    """

    marketplace_order_id: OrderIdText
    # Kept as `printable` makes them: VTEX's date format, `2024-03-04T15:45:02.1306363+00:00`,
    # as sent; no cancellation is refused over how its id or date is written.
    cancellation_request_id: str | None = None
    cancellation_request_date: str | None = None
    reason: str | None = None
    # VTEX sends whether the shopper asked (true/false); some marketplaces send who asked.
    requested_by_user: bool | str | None = None
    # Read by nothing here (the marketplace settles payments; a dispatch or cancellation does not
    # depend on them): taken as sent, bounded only by the body's size and depth, so that no
    # shape of theirs refuses a call the marketplace would retry forever.
    marketplace_order_group: Any = None
    payment_data: Any = None

    @field_validator("cancellation_request_id", "cancellation_request_date", mode="before")
    @classmethod
    def _printable(cls, value: object) -> str | None:
        return printable(value)

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: object) -> str | None:
        return printable(value, MAX_TEXT)

    @field_validator("requested_by_user", mode="before")
    @classmethod
    def _who(cls, value: object) -> bool | str | None:
        return value if isinstance(value, bool) else printable(value)


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
