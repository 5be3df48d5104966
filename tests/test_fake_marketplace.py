"""The fake marketplace, over real HTTP: what it accepts, records, refuses and injects."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator

from devtools.fake_marketplace import (
    SPEC_PATH,
    FakeMarketplaceState,
    RunningFakeMarketplace,
    serve_fake_marketplace,
)

SPEC = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
ORDER_ID = "1138342255777-01"
AUTH = {"X-VTEX-API-AppKey": "vtexappkey-store-ABC", "X-VTEX-API-AppToken": "secret-token"}


def example_of(schema: dict[str, Any]) -> Any:
    """A value built from the `example`s of a schema of the spec, the way VTEX documents it."""
    if "$ref" in schema:
        return example_of(SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    if "example" in schema and schema.get("type") != "object":
        return schema["example"]
    if schema.get("type") == "array":
        return [example_of(schema["items"])]
    return {name: example_of(sub) for name, sub in schema.get("properties", {}).items()}


def validate(schema_name: str, instance: Any) -> None:
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    OAS30Validator(root).validate(instance)


INVOICE = example_of({"$ref": "#/components/schemas/requestSendInvoice"})
TRACKING = example_of({"$ref": "#/components/schemas/requestSendTracking"})


@pytest.fixture
async def marketplace() -> AsyncIterator[RunningFakeMarketplace]:
    async with serve_fake_marketplace() as running:
        yield running


@pytest.fixture
async def client(marketplace: RunningFakeMarketplace) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=marketplace.url, headers=AUTH, timeout=5) as client:
        yield client


def test_examples_follow_the_spec() -> None:
    # The bodies below are VTEX's documented examples, so the valid cases test the real contract.
    assert INVOICE["invoiceNumber"] == "NFe-00002"
    assert INVOICE["items"] == [{"id": "6", "quantity": 1, "price": 5500}]
    validate("requestSendInvoice", INVOICE)
    assert TRACKING["trackingNumber"] == "12345678abc"
    validate("requestSendTracking", TRACKING)


async def test_valid_invoice_under_a_prefix_with_a_query_string(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"/api/oms/pvt/orders/{ORDER_ID}/invoice?an=store", json=INVOICE)

    assert response.status_code == 200
    answer = response.json()
    validate("responseFulfill", answer)
    assert answer["orderId"] == ORDER_ID
    assert re.fullmatch(r"[0-9a-f]{32}", answer["receipt"])
    assert datetime.fromisoformat(answer["date"]).utcoffset() is not None

    [call] = marketplace.state.calls()
    assert call.kind == "invoice"
    assert call.marketplace_order_id == ORDER_ID
    assert call.invoice_number == "NFe-00002"
    assert call.method == "POST"
    assert call.path == f"/api/oms/pvt/orders/{ORDER_ID}/invoice"
    assert call.query == "an=store"
    assert call.headers["x-vtex-api-appkey"] == "vtexappkey-store-ABC"
    assert call.headers["x-vtex-api-apptoken"] == "secret-token"
    assert call.body == INVOICE
    assert (call.valid, call.errors, call.status) == (True, [], 200)


async def test_invoice_without_invoice_number_is_refused_and_recorded(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    body = {key: value for key, value in INVOICE.items() if key != "invoiceNumber"}

    response = await client.post(f"/pvt/orders/{ORDER_ID}/invoice", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "InvalidRequest"
    assert "'invoiceNumber' is a required property" in error["message"]
    [call] = marketplace.state.calls()
    assert (call.kind, call.valid, call.status) == ("invoice", False, 400)
    assert call.errors == ["<body>: 'invoiceNumber' is a required property"]
    assert call.body == body


async def test_wrong_types_and_bad_json_are_refused(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    bad_item = {**INVOICE, "items": [{"id": 6, "quantity": 1, "price": "55.00"}]}
    response = await client.post(f"/pvt/orders/{ORDER_ID}/invoice", json=bad_item)
    assert response.status_code == 400
    response = await client.post(
        f"/pvt/orders/{ORDER_ID}/invoice",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400

    typed, unparsed = marketplace.state.calls()
    assert typed.errors == [
        "items/0/id: 6 is not of type 'string'",
        "items/0/price: '55.00' is not of type 'integer'",
    ]
    assert unparsed.valid is False
    assert unparsed.body == "{not json"
    assert unparsed.errors[0].startswith("<body>: not JSON")


async def test_valid_tracking_takes_the_invoice_number_from_the_path(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"/api/oms/pvt/orders/{ORDER_ID}/invoice/NFe-000001?an=store", json=TRACKING
    )

    assert response.status_code == 200
    validate("responseFulfill", response.json())
    assert response.json()["orderId"] == ORDER_ID
    [call] = marketplace.state.calls()
    assert call.kind == "tracking"
    assert call.invoice_number == "NFe-000001"
    assert call.marketplace_order_id == ORDER_ID
    assert (call.valid, call.status) == (True, 200)


async def test_tracking_status_and_cancel_are_accepted(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    status = {"isDelivered": True, "events": [{"city": "Rio", "date": "2021-03-16"}]}
    response = await client.post(f"/pvt/orders/{ORDER_ID}/invoice/NFe-1/tracking", json=status)
    assert response.status_code == 200
    response = await client.post(f"/pvt/orders/{ORDER_ID}/cancel", json={"reason": "No stock."})
    assert response.status_code == 200
    response = await client.post(f"/pvt/orders/{ORDER_ID}/cancel", json={})
    assert response.status_code == 400

    calls = marketplace.state.calls()
    assert [(c.kind, c.invoice_number, c.status) for c in calls] == [
        ("tracking_status", "NFe-1", 200),
        ("cancel", None, 200),
        ("cancel", None, 400),
    ]
    assert calls[2].errors == ["<body>: 'reason' is a required property"]


async def test_unknown_route_is_404_and_recorded(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"/api/oms/pvt/orders/{ORDER_ID}/invoices", json=INVOICE)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NotFound"
    [call] = marketplace.state.calls()
    assert (call.kind, call.valid, call.status) == ("unknown", False, 404)


async def test_wrong_content_type_is_refused(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"/pvt/orders/{ORDER_ID}/invoice",
        content=json.dumps(INVOICE),
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 400
    [call] = marketplace.state.calls()
    assert call.errors == ["Content-Type must be application/json, got 'text/plain'"]


async def test_fail_next_answers_the_injected_status_then_recovers(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    marketplace.state.fail_next("invoice", 2)
    marketplace.state.fail_next("cancel", 1, status=500)
    url = f"/api/oms/pvt/orders/{ORDER_ID}/invoice?an=store"

    statuses = [(await client.post(url, json=INVOICE)).status_code for _ in range(3)]
    tracking = await client.post(f"/pvt/orders/{ORDER_ID}/invoice/NFe-00002", json=TRACKING)

    assert statuses == [503, 503, 200]
    assert tracking.status_code == 200  # Failures injected for invoices spare other kinds.
    calls = marketplace.state.calls(kind="invoice")
    assert [(c.status, c.valid) for c in calls] == [(503, True), (503, True), (200, True)]
    with pytest.raises(ValueError, match="unknown call kind"):
        marketplace.state.fail_next("invoices", 1)


async def test_calls_endpoint_lists_filters_and_clears(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    await client.post(f"/pvt/orders/{ORDER_ID}/invoice", json=INVOICE)
    await client.post("/pvt/orders/other-01/invoice/NFe-9?an=store", json=TRACKING)

    listed = (await client.get("/calls")).json()
    assert [(c["kind"], c["marketplaceOrderId"], c["status"]) for c in listed] == [
        ("invoice", ORDER_ID, 200),
        ("tracking", "other-01", 200),
    ]
    assert listed[1]["invoiceNumber"] == "NFe-9"
    assert listed[1]["query"] == "an=store"
    assert listed[1]["body"] == TRACKING
    assert listed[0]["headers"]["x-vtex-api-appkey"] == "vtexappkey-store-ABC"
    assert datetime.fromisoformat(listed[0]["receivedAt"]) <= datetime.fromisoformat(
        listed[1]["receivedAt"]
    )
    filtered = (await client.get("/calls", params={"marketplaceOrderId": "other-01"})).json()
    assert [c["kind"] for c in filtered] == ["tracking"]

    assert (
        await client.post("/fail-next", params={"kind": "cancel", "times": 1})
    ).status_code == 204
    assert (
        await client.post(f"/pvt/orders/{ORDER_ID}/cancel", json={"reason": "x"})
    ).status_code == 503

    assert (await client.delete("/calls")).status_code == 204
    assert (await client.get("/calls")).json() == []
    assert marketplace.state.calls() == []


async def test_delay_and_wait_for_calls(
    marketplace: RunningFakeMarketplace, client: httpx.AsyncClient
) -> None:
    marketplace.state.delay_seconds = 0.5

    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"/pvt/orders/{ORDER_ID}/invoice", json=INVOICE, timeout=0.1)

    # The call was recorded although the client gave up on it.
    [call] = await marketplace.state.wait_for_calls(1, kind="invoice", timeout_seconds=2)
    assert call.status == 200
    with pytest.raises(TimeoutError):
        await marketplace.state.wait_for_calls(1, kind="cancel", timeout_seconds=0.1)


async def test_state_can_be_shared_with_the_server() -> None:
    state = FakeMarketplaceState()
    async with serve_fake_marketplace(state=state) as running:
        assert running.state is state
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", running.url)
        async with httpx.AsyncClient() as client:
            await client.post(f"{running.url}/pvt/orders/{ORDER_ID}/cancel", json={"reason": "x"})
    assert [c.kind for c in state.calls()] == ["cancel"]


def test_cli_serves_and_logs_one_line_per_call() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_marketplace", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/healthz").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the CLI did not start"
                time.sleep(0.05)
        response = httpx.post(f"{url}/pvt/orders/{ORDER_ID}/invoice", json=INVOICE)
        assert response.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)

    assert f"listening on http://127.0.0.1:{port}" in output
    assert (
        f"fake marketplace: POST /pvt/orders/{ORDER_ID}/invoice -> 200 (invoice NFe-00002, valid)"
        in output.splitlines()
    )
