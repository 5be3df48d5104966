"""One test per finding of the adversarial review of hostile input, each named after it and each
failing on the code before the fix: texts too long for the order's workflow to keep, lone UTF-16
surrogates, numbers no reader holds, a lockTTL that takes an hour to count, and the codec routes.
Every answer must be a 4xx in the one error shape, never a 500, and nothing may start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from codec import data_converter, new_key_entry
from tests.stack import Stack, new_order_id, placement_example, request_example, running_stack
from tests.test_api import assert_error
from workflows.durations import lock_deadline

KEY = new_key_entry("k-hostile")
JSON = {"Content-Type": "application/json"}
ORDER_PATHS = ("/pvt/orders", "/pvt/orders/SLR-1/fulfill", "/pvt/orders/SLR-1/cancel")
CODEC_PATHS = ("/codec/decode", "/codec/encode")


@pytest.fixture(scope="module")
async def stack(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One stack for the module, its payloads encrypted (the codec routes, on its ops listener,
    answer only then)."""
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host, data_converter=data_converter(KEY)
    )
    async with running_stack(
        temporal_env, tmp_path_factory.mktemp("hostile"), client=client, payload_encryption_key=KEY
    ) as running:
        yield running


async def post_raw(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    """POST `body` as JSON with non-ASCII escaped (`\\ud800` stays an escape), or as bytes, to the
    API's VTEX-facing port (`stack.http`) or its ops listener (`stack.ops`, the codec)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(path, content=content, headers=JSON)


async def placed(stack: Stack) -> str:
    """A placed order's marketplaceOrderId."""
    order_id = new_order_id()
    response = await stack.place(order_id)
    assert response.status_code == 200, response.text
    return order_id


async def assert_not_started(stack: Stack, order_id: str) -> None:
    """No workflow was started for the order."""
    with pytest.raises(RPCError) as raised:
        await stack.handle(order_id).describe()
    assert raised.value.status == RPCStatusCode.NOT_FOUND


async def assert_untouched(stack: Stack, order_id: str) -> None:
    """The order is placed, and no cancellation reached it."""
    order = await stack.order(order_id)
    assert order["status"] == "placed"
    assert order.get("cancellation") is None


async def cancel_until_answered(stack: Stack, order_id: str, **extra: Any) -> httpx.Response:
    """Call cancel as VTEX does: again while the answer is the empty "evaluating" 200."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        response = await stack.cancel(order_id, **extra)
        if response.status_code != 200 or response.content:
            return response
        assert asyncio.get_running_loop().time() < deadline, "the cancellation never settled"
        await asyncio.sleep(0.2)


# ── 1. Texts the workflow keeps are bounded ──────────────────────────────────────────────────


async def test_1_a_cancellation_reason_over_1000_characters_is_kept_cut_never_refused(
    stack: Stack,
) -> None:
    # A refusal would be retried by the marketplace with the same body forever.
    order_id = await placed(stack)

    confirmed = await cancel_until_answered(
        stack, order_id, reason="y" * 5000, requestedByUser="u" * 300
    )

    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["receipt"]
    # The workflow completes: its result, holding the reason twice, fits what Temporal records.
    view = await asyncio.wait_for(stack.handle(order_id).result(), 30)
    assert view.cancellation is not None
    assert view.cancellation.reason == "y" * 1000
    assert view.cancellation.requested_by_user == "u" * 256


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("c" * 300, "c" * 256),
        ("c-1\n2026-11-24 01:38:42 INFO api: order SLR-2-01 canceled", "c-1 2026-11-24 01:38:42"),
        ("nel\x85and\u2028separator", "nel and separator"),
        (12345, "12345"),
        ({"not": "text"}, None),
    ],
    ids=["too-long", "line-break", "unicode-line-breaks", "a-number", "an-object"],
)
async def test_1_a_cancellation_request_id_and_date_are_kept_printable_never_refused(
    stack: Stack, sent: Any, kept: str | None
) -> None:
    # Both are printed in the log lines about the cancellation: a line break would forge one. A
    # refusal would be retried by the marketplace forever: the order keeps them cleaned instead.
    order_id = await placed(stack)

    confirmed = await cancel_until_answered(
        stack, order_id, cancellationRequestId=sent, cancellationRequestDate=sent
    )

    assert confirmed.status_code == 200, confirmed.text
    view = await asyncio.wait_for(stack.handle(order_id).result(), 30)
    assert view.cancellation is not None
    for value in (
        view.cancellation.cancellation_request_id,
        view.cancellation.cancellation_request_date,
    ):
        if kept is None:
            assert value is None
        else:
            assert value is not None and value.startswith(kept) and len(value) <= 256
            assert not any(c in value for c in "\n\r\x85\u2028")


@pytest.mark.parametrize(
    "extra",
    [
        {"paymentData": {"payments": [{"value": 1}] * 101}},
        {"paymentData": {"payments": [{"value": 2**60, "paymentSystem": 2}]}},
        {"paymentData": {"payments": [{"value": 324.99}], "connectorResponses": []}},
        {"paymentData": "credit card"},
        {"marketplaceOrderGroup": {"id": 7}},
        {"marketplaceOrderGroup": "g" * 300},
        {"reason": {"code": "R1"}},
        {"requestedByUser": 1},
        {"requestedByUser": {"id": "x"}},
    ],
    ids=[
        "101-payments",
        "big-values",
        "decimal-value",
        "not-an-object",
        "group-object",
        "long-group",
        "reason-object",
        "requested-by-a-number",
        "requested-by-an-object",
    ],
)
async def test_1_fields_nothing_reads_never_refuse_a_dispatch_or_a_cancellation(
    stack: Stack, extra: dict[str, Any]
) -> None:
    # paymentData and marketplaceOrderGroup are read by nothing here, the reason and the
    # requester only recorded: whatever their shape, the calls go through (a refusal would be
    # retried by the marketplace with the same body forever).
    for call in ("fulfill", "cancel"):
        order_id = await placed(stack)
        body = request_example(call, order_id) | extra

        response = await stack.http.post(f"/pvt/orders/SLR-{order_id}/{call}", json=body)
        while response.status_code == 200 and not response.content:  # cancel: evaluating
            await asyncio.sleep(0.5)
            response = await stack.http.post(f"/pvt/orders/SLR-{order_id}/{call}", json=body)

        assert response.status_code == 200, response.text
        assert response.json()["receipt"]


def _address(**changes: Any) -> dict[str, Any]:
    address = {
        "addressType": "residential",
        "receiverName": "Ana",
        "postalCode": "04571-000",
        "city": "Sao Paulo",
        "state": "SP",
        "country": "BRA",
        "street": "Rua Funchal",
        "number": "42",
        "neighborhood": "Itaim",
    }
    return {**address, **changes}


def _logistics(count: int = 1, lock_ttl: str = "8d") -> list[dict[str, Any]]:
    entry = {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": lock_ttl, "price": 0}
    return [dict(entry) for _ in range(count)]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"marketplaceServicesEndpoint": "x" * 2049}, "marketplaceServicesEndpoint"),
        ({"address": _address(street="s" * 1001)}, "shippingData.address.street"),
        ({"address": _address(receiverName="r" * 257)}, "shippingData.address.receiverName"),
        ({"address": _address(geoCoordinates=["1"] * 11)}, "shippingData.address.geoCoordinates"),
        ({"logisticsInfo": _logistics(count=1001)}, "shippingData.logisticsInfo"),
        ({"firstName": "f" * 257}, "clientProfileData.firstName"),
    ],
    ids=["endpoint", "street", "receiver", "coordinates", "logistics", "first-name"],
)
async def test_1_a_placement_text_or_list_too_long_is_a_400_naming_it(
    stack: Stack, changes: dict[str, Any], field: str
) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    if "marketplaceServicesEndpoint" in changes:
        # A real URL of the fake marketplace, made long by its query.
        long_query = changes["marketplaceServicesEndpoint"]
        body["marketplaceServicesEndpoint"] = f"{stack.endpoint}&x={long_query}"
    if "address" in changes:
        body["shippingData"]["address"] = changes["address"]
    if "logisticsInfo" in changes:
        body["shippingData"]["logisticsInfo"] = changes["logisticsInfo"]
    if "firstName" in changes:
        body["clientProfileData"]["firstName"] = changes["firstName"]

    response = await stack.http.post("/pvt/orders", json=body)

    assert assert_error(response, 400, "InvalidRequest")["details"][0]["field"] == field
    await assert_not_started(stack, order_id)


# ── 2. Lone UTF-16 surrogates ────────────────────────────────────────────────────────────────


async def test_2_a_lone_surrogate_in_a_cancellation_reason_is_a_400(stack: Stack) -> None:
    order_id = await placed(stack)
    body = {"marketplaceOrderId": order_id, "reason": "changed my mind \ud800"}

    response = await post_raw(stack.http, f"/pvt/orders/SLR-{order_id}/cancel", body)

    assert_error(response, 400, "MalformedJson")
    await assert_untouched(stack, order_id)


@pytest.mark.parametrize("where", ["value", "key"])
async def test_2_a_lone_surrogate_in_a_placement_is_a_400_and_starts_nothing(
    stack: Stack, where: str
) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    if where == "value":
        body["clientProfileData"]["firstName"] = "Ana\udc00"
    else:
        body["shippingData"]["address"] = _address(**{"note\udc00": "x"})

    response = await post_raw(stack.http, "/pvt/orders", body)

    assert_error(response, 400, "MalformedJson")
    await assert_not_started(stack, order_id)


async def test_2_a_surrogate_pair_is_text_and_accepted(stack: Stack) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["clientProfileData"]["firstName"] = "Ana \U0001f600"  # sent as \ud83d\ude00

    response = await post_raw(stack.http, "/pvt/orders", body)

    assert response.status_code == 200, response.text
    assert response.json()["clientProfileData"]["firstName"] == "Ana \U0001f600"


# ── 3. Numbers no reader holds ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("path", ORDER_PATHS)
async def test_3_an_integer_of_5000_digits_is_a_400(stack: Stack, path: str) -> None:
    body = b'{"marketplaceOrderId": ' + b"1" * 5000 + b"}"

    assert_error(await post_raw(stack.http, path, body), 400, "MalformedJson")


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity"])
async def test_3_a_number_beyond_a_float_or_not_json_is_a_400_and_starts_nothing(
    stack: Stack, number: str
) -> None:
    # A delivery window's listPrice is a float: infinity would start the order, then fail the
    # JSON answer (NaN and Infinity are not JSON at all).
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["shippingData"]["logisticsInfo"][0]["deliveryWindow"] = {"listPrice": 0.5}
    raw = json.dumps(body).replace('"listPrice": 0.5', f'"listPrice": {number}').encode()

    assert_error(await post_raw(stack.http, "/pvt/orders", raw), 400, "MalformedJson")
    await assert_not_started(stack, order_id)


# ── 4. A lockTTL is quick to count, and bounded ──────────────────────────────────────────────


async def test_4_a_lock_ttl_of_999999_business_days_is_a_400_within_a_second(
    stack: Stack,
) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["shippingData"]["logisticsInfo"] = _logistics(count=5, lock_ttl="999999bd")

    started = time.monotonic()
    response = await stack.http.post("/pvt/orders", json=body)

    assert time.monotonic() - started < 1
    error = assert_error(response, 400, "InvalidRequest")
    assert error["details"][0]["field"] == "shippingData.logisticsInfo[0].lockTTL"
    await assert_not_started(stack, order_id)


@pytest.mark.parametrize(
    ("lock_ttl", "status"),
    [("260bd", 200), ("261bd", 400), ("365d", 200), ("366d", 400), ("8761h", 400)],
)
async def test_4_a_lock_ttl_may_name_at_most_a_year(
    stack: Stack, lock_ttl: str, status: int
) -> None:
    body = placement_example(new_order_id(), stack.endpoint)
    body["shippingData"]["logisticsInfo"] = _logistics(lock_ttl=lock_ttl)

    response = await stack.http.post("/pvt/orders", json=body)

    assert response.status_code == status, response.text
    if status == 400:
        field = assert_error(response, 400, "InvalidRequest")["details"][0]["field"]
        assert field == "shippingData.logisticsInfo[0].lockTTL"


def _business_days_one_at_a_time(amount: int, start: datetime) -> datetime:
    """How lock_deadline counted business days before: a day at a time."""
    end = start
    while amount > 0:
        end += timedelta(days=1)
        if end.weekday() < 5:
            amount -= 1
    return end


def test_4_business_days_counted_at_once_end_where_counted_one_at_a_time() -> None:
    # Each weekday as the start, just after midnight, at noon and just before midnight; in UTC
    # and in a zone with daylight saving time (changed in the dates this crosses, until 2019).
    starts = [
        datetime(year, 11, 23, tzinfo=tz) + timedelta(days=day, seconds=second)
        for year, tz in ((2026, UTC), (2015, ZoneInfo("America/Sao_Paulo")))
        for day in range(7)
        for second in (1, 12 * 3600, 24 * 3600 - 1)
    ]
    for start in starts:
        for amount in [*range(61), 99, 100, 259, 260, 261, 1234]:
            expected = _business_days_one_at_a_time(amount, start)
            assert lock_deadline(f"{amount}bd", start) == expected, (amount, start)
    # The big ones (the loop takes a second for 999999bd), one start per weekday.
    for start in starts[::3][:7]:
        for amount in (99_999, 999_999) if start.weekday() == 4 else (99_999,):
            expected = _business_days_one_at_a_time(amount, start)
            assert lock_deadline(f"{amount}bd", start) == expected, (amount, start)


# ── 5. The codec routes ──────────────────────────────────────────────────────────────────────


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_5_a_payload_that_does_not_decrypt_is_a_400(stack: Stack) -> None:
    forged = {
        "metadata": {
            "encoding": _b64(b"binary/encrypted"),
            "encryption-key-id": _b64(b"k-hostile"),
        },
        "data": _b64(os.urandom(64)),
    }

    response = await post_raw(stack.ops, "/codec/decode", {"payloads": [forged]})

    assert_error(response, 400, "InvalidRequest")


@pytest.mark.parametrize("path", CODEC_PATHS)
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000, "MalformedJson"),
        (b"[" * 40 + b"]" * 40, "MalformedJson"),
        (b'{"payloads": ' + b"1" * 5000 + b"}", "MalformedJson"),
        (b'{"payloads": [{"data": "\\ud800"}]}', "MalformedJson"),
        (b"null", "InvalidRequest"),
        (b"5", "InvalidRequest"),
    ],
    ids=["100k-brackets", "40-levels", "5000-digits", "surrogate", "null", "number"],
)
async def test_5_a_codec_body_that_is_not_payloads_is_a_400(
    stack: Stack, path: str, body: bytes, code: str
) -> None:
    assert_error(await post_raw(stack.ops, path, body), 400, code)


@pytest.mark.parametrize("path", CODEC_PATHS)
async def test_5_a_codec_body_over_8_mib_is_a_413(stack: Stack, path: str) -> None:
    plain = {"metadata": {"encoding": _b64(b"json/plain")}, "data": _b64(b"1" * 6_500_000)}

    response = await post_raw(stack.ops, path, {"payloads": [plain]})

    assert_error(response, 413, "PayloadTooLarge")


async def test_5_the_codec_takes_a_payload_of_temporal_s_2_mb(stack: Stack) -> None:
    # Bigger than an order body may be, as an order's history payloads can be.
    plain = {"metadata": {"encoding": _b64(b"json/plain")}, "data": _b64(b"1" * 2_000_000)}

    response = await post_raw(stack.ops, "/codec/encode", {"payloads": [plain]})

    assert response.status_code == 200, response.text[:200]


async def test_5_the_codec_still_encodes_and_decodes(stack: Stack) -> None:
    plain = {"metadata": {"encoding": _b64(b"json/plain")}, "data": _b64(b'{"street": "Rua"}')}

    encoded = await post_raw(stack.ops, "/codec/encode", {"payloads": [plain]})
    assert encoded.status_code == 200, encoded.text
    decoded = await post_raw(stack.ops, "/codec/decode", encoded.json())

    assert decoded.status_code == 200, decoded.text
    assert decoded.json() == {"payloads": [plain]}
