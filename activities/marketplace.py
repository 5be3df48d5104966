"""The calls the seller makes back to the marketplace, as in
`vtex-external-seller-marketplace.openapi.json` (the invoice, the tracking information, the
parcel's tracking status, the seller's cancellation) and
`vtex-marketplace-change-notification.openapi.json` (a SKU's price or inventory changed).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.marketplace_hosts import HostPolicy
from activities.tls import verifying_context
from activities.warehouse import Invoice, ParcelEvent
from config import DEFAULT_MARKETPLACE_HOSTS
from workflows.messages import CamelModel, Tracking

if TYPE_CHECKING:
    from config import Settings

# Every answer but a 2xx is a failed delivery and is sent again, with backoff, for as long as
# workflows/policies.py's bound: a redirect may be a maintenance page for a minute, a 400 a
# marketplace being redeployed, a 401 credentials ops are fixing. Webhook senders (payment
# providers, marketplaces) treat them alike. Each attempt and its status show in the order's
# `pendingCalls` and in the Temporal UI. One exception, for change notifications only: VTEX
# documents their 404 as "the marketplace does not know this SKU" (not approved yet), an answer
# that lasts; sent again every minute for a day, every change of every such SKU would cost 1,440
# calls.
NOTIFICATION_ANSWERS = frozenset({404})


class InvoiceNotice(CamelModel):
    """Send the invoice of an order to its marketplace."""

    marketplace_services_endpoint: str
    marketplace_order_id: str
    invoice: Invoice
    tracking: Tracking | None = None


class TrackingNotice(CamelModel):
    """Send the tracking information of an invoiced order to its marketplace."""

    marketplace_services_endpoint: str
    marketplace_order_id: str
    invoice_number: str
    tracking: Tracking
    dispatched_date: datetime


class TrackingStatusNotice(CamelModel):
    """Tell the marketplace where the parcel of an invoice is, and whether it is delivered."""

    marketplace_services_endpoint: str
    marketplace_order_id: str
    invoice_number: str
    is_delivered: bool
    events: list[ParcelEvent]


class ChangeNotice(CamelModel):
    """Tell the marketplace that a SKU's price or inventory changed (no body: it then reads the
    fulfillment simulation)."""

    # The marketplace's account API, e.g. https://{accountName}.vtexcommercestable.com.br/api
    notification_url: str
    seller_id: str
    sku: str
    kind: str  # price | inventory


class CancellationNotice(CamelModel):
    """Tell the marketplace the seller canceled an order (`requestCancelOrderMarketplace`)."""

    marketplace_services_endpoint: str
    marketplace_order_id: str
    reason: str


class MarketplaceAnswer(CamelModel):
    """What the marketplace answered (`responseFulfill`)."""

    status_code: int
    receipt: str | None = None
    date: str | None = None


class MarketplaceNotDelivered(Exception):
    """The marketplace did not answer, or answered anything but a 2xx: not a delivery, retried by
    Temporal."""


def marketplace_url(endpoint: str, *segments: str) -> str:
    """Append path segments to `marketplaceServicesEndpoint`, keeping its own path and query.

    VTEX's endpoint often carries both, e.g. `http://oms.vtexinternal.com.br/api/oms?an=store`.
    """
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/") + "".join("/" + _segment(segment) for segment in segments)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _segment(text: str) -> str:
    """One path segment, escaped; `.` and `..` too, which HTTP clients would otherwise resolve
    (an id `..` must not climb out of the path)."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def invoice_body(invoice: Invoice, tracking: Tracking | None) -> dict[str, Any]:
    """The `requestSendInvoice` body."""
    body: dict[str, Any] = {
        "type": "Output",
        "invoiceNumber": invoice.invoice_number,
        "items": [
            {"id": line.sku, "quantity": line.quantity, "price": line.price}
            for line in invoice.lines
        ],
        "issuanceDate": invoice.issuance_date.strftime("%Y-%m-%dT%H:%M:%S"),
        "invoiceValue": invoice.invoice_value,
    }
    if tracking is not None:
        body |= {
            "courier": tracking.courier,
            "trackingNumber": tracking.tracking_number,
            "trackingUrl": tracking.tracking_url,
        }
    return body


def tracking_body(tracking: Tracking, dispatched_date: datetime) -> dict[str, Any]:
    """The `requestSendTracking` body."""
    return {
        "courier": tracking.courier,
        "trackingNumber": tracking.tracking_number,
        "trackingUrl": tracking.tracking_url,
        "dispatchedDate": dispatched_date.strftime("%Y-%m-%d"),
    }


def tracking_status_body(notice: TrackingStatusNotice) -> dict[str, Any]:
    """The `requestUpdateTrackingStatus` body."""
    return {
        "isDelivered": notice.is_delivered,
        "events": [event.model_dump(by_alias=True, exclude_none=True) for event in notice.events],
    }


class MarketplaceClient:
    """Posts to the marketplace with the seller's VTEX app key, when one is configured, and only
    to hosts the policy allows (the credentials go nowhere else)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        app_key: str = "",
        app_token: str = "",
        hosts: HostPolicy | None = None,
    ) -> None:
        self._http = http
        self._hosts = hosts or HostPolicy.parse(DEFAULT_MARKETPLACE_HOSTS)
        self._auth_headers = (
            {"X-VTEX-API-AppKey": app_key, "X-VTEX-API-AppToken": app_token}
            if app_key and app_token
            else {}
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketplaceClient:
        """A client with the timeouts and credentials of the settings."""
        http = httpx.AsyncClient(
            timeout=settings.marketplace_timeout_seconds,
            follow_redirects=False,
            verify=verifying_context(),
        )
        return cls(
            http,
            settings.marketplace_app_key,
            settings.marketplace_app_token,
            HostPolicy.parse(settings.marketplace_allowed_hosts),
        )

    async def send_invoice(self, notice: InvoiceNotice) -> MarketplaceAnswer:
        """POST {endpoint}/pvt/orders/{marketplaceOrderId}/invoice."""
        body = invoice_body(notice.invoice, notice.tracking)
        return await self._post_on_order(notice, ["invoice"], body)

    async def send_tracking(self, notice: TrackingNotice) -> MarketplaceAnswer:
        """POST {endpoint}/pvt/orders/{marketplaceOrderId}/invoice/{invoiceNumber}."""
        body = tracking_body(notice.tracking, notice.dispatched_date)
        return await self._post_on_order(notice, ["invoice", notice.invoice_number], body)

    async def send_tracking_status(self, notice: TrackingStatusNotice) -> MarketplaceAnswer:
        """POST {endpoint}/pvt/orders/{marketplaceOrderId}/invoice/{invoiceNumber}/tracking."""
        body = tracking_status_body(notice)
        tail = ["invoice", notice.invoice_number, "tracking"]
        return await self._post_on_order(notice, tail, body)

    async def send_change_notification(self, notice: ChangeNotice) -> MarketplaceAnswer:
        """POST {notification_url}/notificator/{sellerId}/changenotification/{skuId}/{kind},
        with no body."""
        if notice.kind not in ("price", "inventory"):
            raise ValueError(f"unknown change kind {notice.kind!r}")
        url = marketplace_url(
            notice.notification_url,
            "notificator",
            notice.seller_id,
            "changenotification",
            notice.sku,
            notice.kind,
        )
        return await self._post(url, None, final=NOTIFICATION_ANSWERS)

    async def send_cancellation(self, notice: CancellationNotice) -> MarketplaceAnswer:
        """POST {endpoint}/pvt/orders/{marketplaceOrderId}/cancel: the seller's own cancellation."""
        body = {"reason": notice.reason}
        return await self._post_on_order(notice, ["cancel"], body)

    async def _post_on_order(
        self, notice: Any, tail: list[str], body: dict[str, Any]
    ) -> MarketplaceAnswer:
        url = marketplace_url(
            notice.marketplace_services_endpoint,
            "pvt",
            "orders",
            notice.marketplace_order_id,
            *tail,
        )
        return await self._post(url, body)

    async def _post(
        self,
        url: str,
        body: dict[str, Any] | None,
        final: frozenset[int] = frozenset(),
    ) -> MarketplaceAnswer:
        try:
            return await self._post_checked(url, body, final)
        except (MarketplaceNotDelivered, ApplicationError) as err:
            _count_failure(err)
            raise
        except Exception as err:
            # Neither the network nor the marketplace's answer (those are classified above): the
            # URL or the body is one that no attempt can send (an invalid port, a name the
            # resolver cannot encode). Retried, the step would never end.
            failure = ApplicationError(
                f"POST {url} cannot be sent: {_reason(err)}"[:300],
                type="MarketplaceCallInvalid",
                non_retryable=True,
            )
            _count_failure(failure)
            raise failure from err

    async def _post_checked(
        self, url: str, body: dict[str, Any] | None, final: frozenset[int]
    ) -> MarketplaceAnswer:
        try:
            checked = await self._hosts.check_when_sending(url)
        except ConnectionError as err:
            raise MarketplaceNotDelivered(str(err)) from err
        if checked.refusal:
            raise ApplicationError(
                f"not sent: {checked.refusal}", type="MarketplaceHostRefused", non_retryable=True
            )
        headers = {"Accept": "application/json", **self._auth_headers}
        if body is None:
            # VTEX's change notifications carry no body, but the same Content-Type.
            headers["Content-Type"] = "application/json"
            request = self._http.build_request("POST", url, content=b"", headers=headers)
        else:
            request = self._http.build_request("POST", url, json=body, headers=headers)
        try:
            response = await self._send(request, checked.addresses)
        except httpx.HTTPError as err:
            raise MarketplaceNotDelivered(f"POST {url}: {type(err).__name__}: {err}") from err
        status = response.status_code
        reason = response.reason_phrase[:100]
        if status in final:
            # The status line only: the answer's body is the marketplace's (or whoever answered)
            # and must not travel into the workflow's state.
            raise ApplicationError(
                f"POST {url} answered {status} {reason}"[:300],
                type="MarketplaceRejected",
                non_retryable=True,
            )
        if 300 <= status < 400:
            # Not followed: the credentials would go wherever `Location` says, and a POST may come
            # back a GET. Retried like any other answer that is not a delivery.
            location = response.headers.get("location", "")[:200]
            raise MarketplaceNotDelivered(
                f"POST {url} answered {status} (a redirect to {location or 'nowhere'}, not "
                "followed: a marketplaceServicesEndpoint must be the final URL)"[:400]
            )
        if not 200 <= status < 300:
            raise MarketplaceNotDelivered(f"POST {url} answered {status} {reason}"[:300])
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        return MarketplaceAnswer(
            status_code=response.status_code,
            receipt=_text_or_none(answer.get("receipt")),
            date=_text_or_none(answer.get("date")),
        )

    async def _send(self, request: httpx.Request, addresses: tuple[str, ...]) -> httpx.Response:
        """Send `request` to the first of `addresses` that takes the connection, or by its host
        name when there are none."""
        if not addresses:
            return await self._http.send(request)
        for address in addresses[:-1]:
            try:
                return await self._http.send(pinned(request, address))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                pass  # Nothing was sent: the name's next address may take it.
        return await self._http.send(pinned(request, addresses[-1]))

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()


def pinned(request: httpx.Request, address: str) -> httpx.Request:
    """`request`, connecting to `address` instead of resolving its host name again.

    The `Host` header (set from the name, with its port) stays, and for https the TLS name
    (SNI, and what the certificate is verified against) is the host name, not the address.
    """
    extensions = dict(request.extensions)
    headers = request.headers.copy()
    if request.url.scheme == "https":
        extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
        # httpx pools connections by address: kept open, this one (its certificate checked
        # against this name) would carry a later call to another name at the same address.
        headers["Connection"] = "close"
    return httpx.Request(
        request.method,
        request.url.copy_with(host=address),
        headers=headers,
        content=request.content,
        extensions=extensions,
    )


def _count_failure(err: MarketplaceNotDelivered | ApplicationError) -> None:
    if activity.in_activity():
        kind = str(err.type) if isinstance(err, ApplicationError) else type(err).__name__
        activity.metric_meter().create_counter(
            "seller_marketplace_call_failures", "Calls to the marketplace that failed"
        ).add(1, {"kind": kind})


def _reason(err: BaseException) -> str:
    # A task group's error (httpx's connect with a port over 65535) says nothing; its first
    # cause does.
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}"


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
