"""A warehouse reached over HTTP: the seller's own system (an ERP, a WMS, in any language)
implements a small REST API, and this adapter calls it, one request per `Warehouse` method.

    WAREHOUSE=http WAREHOUSE_HTTP_URL=https://erp.example.com/vtex WAREHOUSE_HTTP_SECRET=...

The API is described in docs/warehouse-api.openapi.json (generated from the reference server,
devtools/reference_warehouse.py, so that the two cannot drift) and in
docs/plugging-in-your-warehouse.md. This module holds what both sides share: the routes, the
signature, the idempotency key and the error shape.

- Every call is signed: `X-Warehouse-Timestamp: <unix seconds>` and `X-Warehouse-Signature:
  v1=<hex HMAC-SHA256(secret, "{timestamp}.{METHOD}.{path}.{body}")>`, where `path` is the
  request's path after the base URL's own (`/orders/SLR-1138342255790-01/reservation`) and
  `body` the exact bytes sent (empty for a call without one). The server refuses a signature
  that does not match, or a timestamp more than five minutes from its clock (401).
- Every call carries `Idempotency-Key: {orderId}:{step}`: the same on every retry of one step,
  so that the seller's system can tell a retry from a new request (the tracking, a read whose
  answer changes, one key per poll).
- A refusal is a 409 or a 422 in the shape `{"error": {"code": "OutOfStock", "message": "...",
  ...}}`, or a 404 in that shape with the code `UnknownOrder`; its code becomes the contract's
  exception (`OutOfStock`, `AlreadyInvoiced`, `OrderReleased`, `UnknownOrder`) or a
  `WarehouseError` of that name.

How each answer reaches the order (activities/fulfillment.py decides what ends a step):
- 2xx: the result. 202 Accepted says the step is under way and not done yet (a person picks):
  the step is asked again, with Temporal's backoff, until it answers otherwise.
- No whole answer within WAREHOUSE_HTTP_TIMEOUT_SECONDS (from connecting to the answer's last
  byte), a connection refused or cut, 408, 425, 429, 5xx: `WarehouseUnavailable`, retried.
- The refusal: the step ends.
- Any other failure: a 401 or 403, a redirect (never followed), a 404 without `UnknownOrder` (a
  base URL whose path is off), a 405, another 4xx, a 4xx in another shape (a proxy's page):
  `WarehouseUnavailable` too, logged as an error that says what to fix. A secret, a clock, a
  base URL or a proxy that is off is a configuration to fix, not the order's fault: were it a
  refusal (or a fault), every order dispatched meanwhile would be canceled and its customer
  told. Retried, each order shows the error (`pendingCalls`, `attention`) and carries on once
  it is fixed.
- A 2xx whose body is not what the call answers, or is larger than MAX_ANSWER_BYTES decoded:
  `UnreadableAnswer`, a fault that ends the step, since asking again would read the same.

What the exceptions say of an answer is its status, its content type and its length, and an
error's code and message: never the text of another body, which may echo the customer's data
into Temporal's failures, stored in clear.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activities.tls import verifying_context
from activities.warehouse import (
    AlreadyInvoiced,
    Invoice,
    OrderReleased,
    OutOfStock,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    UnknownOrder,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)
from workflows.messages import CamelModel

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger("activities.http_warehouse")

TIMESTAMP_HEADER = "X-Warehouse-Timestamp"
SIGNATURE_HEADER = "X-Warehouse-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v1"
# How far a request's timestamp may be from the server's clock, either way: a captured request
# replays for this long at most (and replays only what it did: every call is idempotent).
SIGNATURE_TOLERANCE_SECONDS = 300
# A secret shorter than this is refused: HMAC is only as strong as its key.
MIN_SECRET_LENGTH = 16
# What an error code may be: it names a Python exception type and a Temporal failure type.
ERROR_CODE_PATTERN = r"^[A-Za-z][A-Za-z0-9]{0,63}$"
# The longest message kept from an answer: it goes into Temporal's failure and the order's view.
MAX_MESSAGE_CHARS = 500
# What a later attempt may not meet, besides every 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
# The statuses of a refusal in the error shape, any code; a 404 is one only with UnknownOrder,
# since a base URL whose path is off answers 404 too.
REFUSAL_STATUSES = frozenset({409, 422})
# The most an answer may hold, decoded. The API's answers weigh a few hundred bytes; a larger one
# is not its, and read whole it could take the worker's memory (a gzip of 50 KB inflates to
# 50 MB). Read as it arrives, an answer is dropped as soon as it passes this.
MAX_ANSWER_BYTES = 1024 * 1024

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint:
    """One call of the API: its method, its route under /orders/{orderId}, and its step (the
    Idempotency-Key's second part)."""

    method: str
    resource: str
    step: str

    @property
    def route(self) -> str:
        """The route as the server declares it."""
        return f"/orders/{{orderId}}/{self.resource}"

    def path(self, order_id: str) -> str:
        """The path of this call for `order_id` (ids are `[A-Za-z0-9._:-]`: nothing to escape,
        so what the server reads is what was signed)."""
        if not re.fullmatch(r"[A-Za-z0-9._:\-]+", order_id) or order_id in (".", ".."):
            raise ValueError(f"order id {order_id!r} cannot be put in a path as it is")
        return f"/orders/{order_id}/{self.resource}"


RESERVE = Endpoint("PUT", "reservation", "reserve")
PICK = Endpoint("PUT", "picking", "pick")
PACK = Endpoint("PUT", "packing", "pack")
LABEL = Endpoint("PUT", "label", "label")
INVOICE = Endpoint("PUT", "invoice", "invoice")
RELEASE = Endpoint("DELETE", "reservation", "release")
VOID_LABEL = Endpoint("DELETE", "label", "void-label")
TRACK = Endpoint("POST", "tracking", "track")


def idempotency_key(order_id: str, step: str, timestamp: str | None = None) -> str:
    """`{orderId}:{step}`, the same on every retry of the step. Tracking, a read whose answer
    changes as the parcel moves, gets one key per poll (`{orderId}:track:{timestamp}`), so that
    a layer that replays answers by key never replays an old position."""
    key = f"{order_id}:{step}"
    return f"{key}:{timestamp}" if step == TRACK.step and timestamp is not None else key


def signature(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256, keyed by `secret`, of `{timestamp}.{METHOD}.{path}.{body}`."""
    message = f"{timestamp}.{method.upper()}.{path}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


# ── The answers' shapes ─────────────────────────────────────────────────────────────────────


class WarehouseErrorDetail(BaseModel):
    """What was refused and why; `OutOfStock` names the SKU and the quantities too."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(
        pattern=ERROR_CODE_PATTERN,
        description="`OutOfStock`, `AlreadyInvoiced`, `OrderReleased`, `UnknownOrder`, or a code "
        "of the seller's own (e.g. `DamagedItem`): the failure's type in Temporal and the "
        "order's `statusReason`.",
        examples=["OutOfStock"],
    )
    message: str = Field(description="For people: what was refused and why.")
    sku: str | None = Field(default=None, description="`OutOfStock`: the SKU short of stock.")
    requested: int | None = Field(default=None, description="`OutOfStock`: units the order needs.")
    available: int | None = Field(default=None, description="`OutOfStock`: units available.")


class WarehouseErrorBody(BaseModel):
    """Every answer that is not a success: `{"error": {"code": ..., "message": ...}}`."""

    error: WarehouseErrorDetail


class ReleaseAnswer(CamelModel):
    """The answer to a release: False when there was nothing left to release."""

    released: bool


class VoidAnswer(CamelModel):
    """The answer to voiding a label: False when there was none, or it was voided already."""

    voided: bool


# ── What an answer becomes ──────────────────────────────────────────────────────────────────


class UnreadableAnswer(Exception):
    """The warehouse answered something this API does not define: a fault, not retried (the
    step ends and the order is compensated), since asking again would read the same."""


class WarehouseRefusal(WarehouseError):
    """A refusal with a code of the seller's own; each code is a subclass of its name (see
    `refusal_type`)."""

    code = "WarehouseRefusal"


@cache
def refusal_type(code: str) -> type[WarehouseRefusal]:
    """The exception type named after `code`: the activity reports a refusal under its type's
    name, so the order shows `DamagedItem: ...` as with the simulated warehouse, not a name of
    this adapter's."""
    return type(code, (WarehouseRefusal,), {"code": code, "__module__": __name__})


def refusal(detail: WarehouseErrorDetail) -> WarehouseError:
    """The contract's exception for a refusal in the error shape.

    Raises:
        UnreadableAnswer: an `OutOfStock` without its SKU and quantities.
    """
    message = detail.message[:MAX_MESSAGE_CHARS]
    if detail.code == "OutOfStock":
        if detail.sku is None or detail.requested is None or detail.available is None:
            raise UnreadableAnswer(
                "an OutOfStock refusal must name its sku, requested and available: " + message
            )
        return OutOfStock(detail.sku, detail.requested, detail.available)
    known: dict[str, type[WarehouseError]] = {
        "AlreadyInvoiced": AlreadyInvoiced,
        "OrderReleased": OrderReleased,
        "UnknownOrder": UnknownOrder,
    }
    return known.get(detail.code, refusal_type(detail.code))(message)


def is_refusal(status: int, code: str) -> bool:
    """Whether an answer in the error shape is a refusal the API defines: a 409 or a 422, or a 404
    with the code `UnknownOrder`. Any other failure is the configuration's or transient."""
    return status in REFUSAL_STATUSES or (status == 404 and code == "UnknownOrder")


def shown_url(url: str) -> str:
    """`url` with its password, if it has one, replaced by `***`: what reprs, logs and messages
    show (httpx sends a URL's `user:password` as basic authentication)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a redirect's Location of `http://[x`: shown by no part
        return "a URL that cannot be read"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass(frozen=True)
class Answer:
    """An answer as read: its status, its headers and its body, decoded (empty when a failure's
    could not be read: a failure is told by its status)."""

    status: int
    headers: httpx.Headers
    content: bytes

    @property
    def is_success(self) -> bool:
        """A 2xx."""
        return 200 <= self.status < 300

    def described(self) -> str:
        """What messages say of the body: its type and length, never its text, which may echo
        the customer's data (an order sent back) into failures that Temporal stores in clear."""
        if not self.content:
            return "an empty body"
        kind = self.headers.get("content-type", "")[:100] or "no content type"
        return f"{kind}, {len(self.content)} bytes"

    def error_detail(self) -> WarehouseErrorDetail | None:
        """The body's error, if it is in the error shape."""
        try:
            return WarehouseErrorBody.model_validate_json(self.content).error
        except ValidationError:
            return None


async def read_body(response: httpx.Response) -> bytes:
    """The body of `response`, decoded as it arrives, up to MAX_ANSWER_BYTES.

    Decoded here rather than by httpx, which inflates each chunk received whole: one chunk of a
    gzip can hold a thousand times its size. `max_length` stops zlib at the bound.

    Raises:
        UnreadableAnswer: a body larger than that, or compressed in a way not asked for (only
            gzip is) or not as it says.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower() or "identity"
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnreadableAnswer(f"a body encoded as {encoding!r}, when only gzip is accepted")
    inflate = None if encoding == "identity" else zlib.decompressobj(16 + zlib.MAX_WBITS)
    body = bytearray()
    async for chunk in response.aiter_raw():
        room = MAX_ANSWER_BYTES + 1 - len(body)
        try:
            body += chunk if inflate is None else inflate.decompress(chunk, room)
        except zlib.error:
            raise UnreadableAnswer("a body that is not the gzip it says it is") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise UnreadableAnswer(f"a body of more than {MAX_ANSWER_BYTES} bytes, not read")
    return bytes(body)


# ── The adapter ─────────────────────────────────────────────────────────────────────────────


class HttpWarehouse:
    """The `Warehouse` protocol over the seller's HTTP API; one connection pool per worker."""

    def __init__(
        self,
        base_url: str,
        secret: str,
        timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the URL and the secret; the pool opens its connections on the first call.

        Args:
            base_url: Where the API lives, `https://host[:port][/path]`; the calls go to
                `{base_url}/orders/...`.
            secret: The key both sides sign and check requests with (MIN_SECRET_LENGTH at least).
            timeout_seconds: How long one call may take, from connecting to the answer's last
                byte.
            clock: The unix time the requests are stamped with.
        """
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError(
                f"WAREHOUSE_HTTP_URL={shown_url(base_url)!r} is not an "
                "http(s)://host[:port][/path] URL"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                "WAREHOUSE_HTTP_SECRET is "
                + ("not set" if not secret else f"shorter than {MIN_SECRET_LENGTH} characters")
                + ": the warehouse cannot tell this connector's requests from anyone's"
            )
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Requests are signed, so one altered on the way is refused; answers are not, and
            # both carry the customer's address.
            log.warning(
                "WAREHOUSE_HTTP_URL is plain http beyond loopback: orders go in clear, and the "
                "answers could be altered on the way"
            )
        self._url = base_url.rstrip("/")
        # What is shown of the URL: without its password.
        self.base_url = shown_url(self._url)
        self.timeout_seconds = timeout_seconds
        self._password = parts.password
        self._secret = secret
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=timeout_seconds,
            follow_redirects=False,
            headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
            verify=verifying_context(),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpWarehouse:
        """The factory `WAREHOUSE=http` names."""
        if not settings.warehouse_http_url:
            raise ValueError("WAREHOUSE=http needs WAREHOUSE_HTTP_URL, the warehouse API's URL")
        return cls(
            settings.warehouse_http_url,
            settings.warehouse_http_secret,
            timeout_seconds=settings.warehouse_http_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"HttpWarehouse({self.base_url!r})"

    # The Warehouse protocol

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        """PUT /orders/{orderId}/reservation. Raises `OutOfStock`."""
        reservation = await self._read(RESERVE, order.order_id, Reservation, order)
        return self._same_order(reservation, order.order_id, RESERVE)

    async def pick(self, order_id: str) -> None:
        """PUT /orders/{orderId}/picking."""
        await self._call(PICK, order_id)

    async def pack(self, order_id: str) -> None:
        """PUT /orders/{orderId}/packing."""
        await self._call(PACK, order_id)

    async def create_label(self, order: WarehouseOrder) -> ShippingLabel:
        """PUT /orders/{orderId}/label."""
        return await self._read(LABEL, order.order_id, ShippingLabel, order)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """PUT /orders/{orderId}/invoice. Raises `OrderReleased`."""
        return await self._read(INVOICE, order.order_id, Invoice, order)

    async def release(self, order_id: str) -> bool:
        """DELETE /orders/{orderId}/reservation. Raises `AlreadyInvoiced`."""
        return (await self._read(RELEASE, order_id, ReleaseAnswer)).released

    async def void_label(self, order_id: str) -> bool:
        """DELETE /orders/{orderId}/label."""
        return (await self._read(VOID_LABEL, order_id, VoidAnswer)).voided

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """POST /orders/{orderId}/tracking. Raises `UnknownOrder` without a label."""
        return await self._read(TRACK, order.order_id, ParcelStatus, order)

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # Plumbing

    async def _read(
        self, endpoint: Endpoint, order_id: str, answer: type[T], body: BaseModel | None = None
    ) -> T:
        response = await self._call(endpoint, order_id, body)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as err:
            # The location and pydantic's message, never the input (the customer's data).
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the body"
            raise UnreadableAnswer(
                f"{endpoint.method} {endpoint.path(order_id)} answered {response.status} with "
                f"{response.described()}, not a {answer.__name__} ({where}: {first['msg']})"
            ) from None

    @staticmethod
    def _same_order(reservation: Reservation, order_id: str, endpoint: Endpoint) -> Reservation:
        if reservation.order_id != order_id:
            raise UnreadableAnswer(
                f"{endpoint.method} {endpoint.path(order_id)} answered the reservation of "
                f"another order, {reservation.order_id}"
            )
        return reservation

    async def _call(
        self, endpoint: Endpoint, order_id: str, body: BaseModel | None = None
    ) -> Answer:
        """Send one signed call; its answer if a success, else the exception it stands for."""
        path = endpoint.path(order_id)
        content = b"" if body is None else body.model_dump_json().encode()
        timestamp = str(int(self._clock()))
        headers = {
            IDEMPOTENCY_HEADER: idempotency_key(order_id, endpoint.step, timestamp),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, endpoint.method, path, content),
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        what = f"{endpoint.method} {path}"
        unreadable: UnreadableAnswer | None = None
        try:
            # The whole call, to the answer's last byte: httpx's timeout bounds each read, and an
            # answer that trickles in would hold the step (its heartbeats go on) for a day.
            # A cancelled activity cancels this await: httpx drops the connection, and the
            # warehouse may or may not finish the step (release and void_label undo it).
            async with (
                asyncio.timeout(self.timeout_seconds),
                self._http.stream(
                    endpoint.method, self._url + path, content=content, headers=headers
                ) as response,
            ):
                try:
                    received = await read_body(response)
                except UnreadableAnswer as err:
                    received, unreadable = b"", err
        except (TimeoutError, httpx.TimeoutException):
            raise WarehouseUnavailable(
                f"warehouse API: {what}: no answer within {self.timeout_seconds:g} s"
            ) from None
        except httpx.TransportError as err:
            said = str(err) or "connection failed"
            if self._password:
                said = said.replace(self._password, "***")
            raise WarehouseUnavailable(
                f"warehouse API: {what}: {type(err).__name__}: {said}"
            ) from None
        answer = Answer(response.status_code, response.headers, received)
        if answer.status == 202:
            raise WarehouseUnavailable(
                f"warehouse API: {what}: 202 Accepted, under way in the warehouse; asked again"
            )
        if answer.is_success:
            if unreadable is not None:
                raise UnreadableAnswer(f"{what} answered {answer.status} with {unreadable}")
            return answer
        raise self._failure(what, answer)

    def _failure(self, what: str, answer: Answer) -> Exception:
        status = answer.status
        detail = answer.error_detail()
        said = (
            f"{detail.code}: {detail.message[:MAX_MESSAGE_CHARS]}" if detail else answer.described()
        )
        if status >= 500 or status in TRANSIENT_STATUSES:
            return WarehouseUnavailable(f"warehouse API: {what} answered {status}: {said}")
        if detail is not None and is_refusal(status, detail.code):
            return refusal(detail)
        to_fix = self._what_to_fix(answer)
        log.error(
            "the warehouse API cannot be called as configured: %s answered %d (%s): %s; the call "
            "is retried",
            what,
            status,
            said,
            to_fix,
        )
        return WarehouseUnavailable(
            f"warehouse API: {what} answered {status}: {said}; a configuration to fix: {to_fix}"
        )

    def _what_to_fix(self, answer: Answer) -> str:
        """What an answer that is neither a success, a refusal nor transient says to check."""
        if answer.status in (401, 403):
            return (
                "check that WAREHOUSE_HTTP_SECRET is the same on both sides and both clocks are "
                "right"
            )
        if 300 <= answer.status < 400:
            location = shown_url(answer.headers.get("location", ""))[:200]
            return (
                f"a redirect{f' to {location}' if location else ''}, not followed: set "
                "WAREHOUSE_HTTP_URL to where the API answers"
            )
        return (
            f"not an answer the warehouse API defines: check that WAREHOUSE_HTTP_URL is its base "
            f"URL (calls go to {self.base_url}/orders/...), and what stands in front of it"
        )
