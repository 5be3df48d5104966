"""The HTTP contract over real HTTP, against a real worker and Temporal server.

Every success is validated against the schemas of VTEX's OpenAPI file; every failure must be a
4xx with the one JSON error shape.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from devtools.serving import serve_asgi
from tests.stack import (
    Stack,
    assert_matches_schema,
    fulfillment_spec,
    new_order_id,
    placement_example,
    request_example,
    running_stack,
)
from worker import run_worker
from workflows.order import OrderWorkflow

VTEX_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
async def stack(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One stack for the module: these tests only read their own orders."""
    async with running_stack(
        temporal_env, tmp_path_factory.mktemp("api"), late_call_window="1h"
    ) as running:
        yield running


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# ── Placement ───────────────────────────────────────────────────────────────────────────────


async def test_placement_of_the_spec_example_as_is(stack: Stack) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    assert body["paymentData"] is None  # the example's own quirk, accepted as is

    response = await stack.http.post("/pvt/orders", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert_matches_schema(answer, "responseOrderPlacement")
    assert answer["marketplaceOrderId"] == order_id
    assert answer["orderId"] == f"SLR-{order_id}"
    assert answer["items"][0]["id"] == body["items"][0]["id"]
    assert answer["shippingData"]["logisticsInfo"][0]["lockTTL"] == "8d"
    assert "paymentData" not in answer  # null there would break the schema
    order = await stack.order(order_id)
    assert order["status"] == "placed"
    assert order["workflowId"] == f"order-{order_id}"


async def test_placement_as_a_one_element_array_answers_an_array(stack: Stack) -> None:
    order_id = new_order_id()
    body = [placement_example(order_id, stack.endpoint)]

    response = await stack.http.post("/pvt/orders", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer, list) and len(answer) == 1
    assert_matches_schema(answer[0], "responseOrderPlacement")
    assert answer[0]["orderId"] == f"SLR-{order_id}"


async def test_repeated_placement_answers_the_same_order(stack: Stack) -> None:
    order_id = new_order_id()
    first = await stack.place(order_id)
    second = await stack.place(order_id)

    assert first.status_code == second.status_code == 200
    assert first.json()["orderId"] == second.json()["orderId"]
    description = await stack.handle(order_id).describe()
    assert description.id == f"order-{order_id}"


async def test_placement_lock_ttl_sets_when_the_order_expires(stack: Stack) -> None:
    order_id = new_order_id()
    body = placement_example(order_id, stack.endpoint)
    body["shippingData"]["logisticsInfo"][0]["lockTTL"] = "2h"

    assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200

    order = await stack.order(order_id)
    placed = order["placedAt"][:19]
    expires = order["lockExpiresAt"][:19]
    assert (int(expires[11:13]) - int(placed[11:13])) % 24 == 2


def _without(field: str) -> dict[str, Any]:
    body = placement_example(new_order_id(), "http://127.0.0.1:9/x")
    del body[field]
    return body


def _with_item(**item_changes: Any) -> dict[str, Any]:
    body = placement_example(new_order_id(), "http://127.0.0.1:9/x")
    body["items"][0].update(item_changes)
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_without("marketplaceOrderId"), "marketplaceOrderId"),
        (_without("items"), "items"),
        (_without("marketplaceServicesEndpoint"), "marketplaceServicesEndpoint"),
        ({**_without("items"), "items": []}, "items"),
        (_with_item(quantity=0), "items[0].quantity"),
        (_with_item(quantity="1"), "items[0].quantity"),
        (_with_item(quantity=1.5), "items[0].quantity"),
        (_with_item(price="24.99"), "items[0].price"),
        (_with_item(id=123), "items[0].id"),
        ({**_without("marketplaceOrderId"), "marketplaceOrderId": 959311095}, "marketplaceOrderId"),
        ({**_without("marketplaceOrderId"), "marketplaceOrderId": "a b/c"}, "marketplaceOrderId"),
        ({**_without("marketplaceOrderId"), "marketplaceOrderId": ""}, "marketplaceOrderId"),
        (
            {**_without("marketplaceServicesEndpoint"), "marketplaceServicesEndpoint": "ftp://x"},
            "marketplaceServicesEndpoint",
        ),
        ({**_without("clientProfileData"), "clientProfileData": {"email": 1}}, "clientProfileData"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_invalid_placements_are_400_naming_the_field(
    stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = await stack.http.post("/pvt/orders", json=body)

    error = assert_error(response, 400, "InvalidRequest")
    assert error["message"].startswith(field), error
    assert any(detail["field"].startswith(field) for detail in error["details"])


async def test_invalid_lock_ttl_is_400(stack: Stack) -> None:
    body = placement_example(new_order_id(), stack.endpoint)
    body["shippingData"]["logisticsInfo"][0]["lockTTL"] = "eight days"

    error = assert_error(await stack.http.post("/pvt/orders", json=body), 400, "InvalidRequest")

    assert error["message"].startswith("shippingData.logisticsInfo[0].lockTTL")


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"marketplaceOrderId": ', "application/json", 400, "MalformedJson"),
        (b"", "application/json", 400, "InvalidRequest"),
        (b"[]", "application/json", 400, "InvalidRequest"),
        (b"[{}, {}]", "application/json", 400, "InvalidRequest"),
        (b'"an order"', "application/json", 400, "InvalidRequest"),
        (b"\xff\xfe", "application/json", 400, "MalformedJson"),
        (b"marketplaceOrderId=1", "application/x-www-form-urlencoded", 415, "UnsupportedMediaType"),
        (b"x" * (1024 * 1024 + 1), "application/json", 413, "PayloadTooLarge"),
    ],
    ids=["truncated", "empty", "empty-array", "two-orders", "string", "binary", "form", "huge"],
)
async def test_malformed_bodies_are_4xx(
    stack: Stack, content: bytes, content_type: str, status: int, code: str
) -> None:
    response = await stack.http.post(
        "/pvt/orders", content=content, headers={"content-type": content_type}
    )

    assert_error(response, status, code)


# ── Dispatch ────────────────────────────────────────────────────────────────────────────────


async def test_dispatch_answers_the_seed_fields(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)

    response = await stack.dispatch(order_id)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert_matches_schema(answer, "repsonseOrderId")
    assert set(answer) == {"date", "marketplaceOrderId", "orderId", "receipt"}
    assert answer["marketplaceOrderId"] == order_id
    assert answer["orderId"] == f"SLR-{order_id}"
    assert VTEX_DATE.match(answer["date"]), answer["date"]
    assert UUID.match(answer["receipt"]), answer["receipt"]
    order = await stack.wait_for(order_id, lambda o: o["status"] != "placed")
    assert order["status"] in ("fulfilling", "invoiced")
    assert order["dispatch"] == answer


async def test_dispatch_of_the_spec_example_as_is(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)
    # VTEX's 2026 body: the cancellation's fields and paymentData, required ones and all.
    body = request_example("fulfill", order_id)
    assert_matches_schema(body, "requestOrderId")

    response = await stack.http.post(f"/pvt/orders/SLR-{order_id}/fulfill", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert_matches_schema(answer, "repsonseOrderId")
    order = await stack.wait_for(order_id, lambda o: o["status"] != "placed")
    assert order["status"] in ("fulfilling", "invoiced")
    assert order["dispatch"] == answer
    # The example's cancellation fields do not make the dispatch a cancellation.
    assert order["cancellation"] is None
    again = await stack.http.post(f"/pvt/orders/SLR-{order_id}/fulfill", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == answer


async def test_dispatch_by_marketplace_order_id_in_the_path(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)

    response = await stack.dispatch(order_id, path_id=order_id)

    assert response.status_code == 200, response.text
    assert response.json()["orderId"] == f"SLR-{order_id}"


async def test_dispatch_of_an_unknown_order_is_404(stack: Stack) -> None:
    assert_error(await stack.dispatch(new_order_id()), 404, "OrderNotFound")


async def test_dispatch_with_another_orders_marketplace_id_is_409(stack: Stack) -> None:
    order_id, other = new_order_id(), new_order_id()
    await stack.place(order_id)

    response = await stack.dispatch(other, path_id=f"SLR-{order_id}")

    error = assert_error(response, 409, "MarketplaceOrderIdMismatch")
    assert other in error["message"]
    assert (await stack.order(order_id))["status"] == "placed"


@pytest.mark.parametrize(
    "body",
    [{}, {"marketplaceOrderId": 123}, {"marketplaceOrderId": None}, {"marketplaceOrderId": "x y"}],
)
async def test_dispatch_with_a_bad_body_is_400(stack: Stack, body: dict[str, Any]) -> None:
    response = await stack.http.post("/pvt/orders/SLR-1/fulfill", json=body)

    error = assert_error(response, 400, "InvalidRequest")
    assert error["message"].startswith("marketplaceOrderId")


@pytest.mark.parametrize("path_id", ["a%20b", "x" * 101, "%00", "..%2F..%2Fetc"])
async def test_odd_path_ids_are_4xx(stack: Stack, path_id: str) -> None:
    body = {"marketplaceOrderId": "1"}
    for response in (
        await stack.http.post(f"/pvt/orders/{path_id}/fulfill", json=body),
        await stack.http.post(f"/pvt/orders/{path_id}/cancel", json=body),
        await stack.http.get(f"/pvt/orders/{path_id}"),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error"}


# ── Cancellation ────────────────────────────────────────────────────────────────────────────


async def test_cancel_confirms_with_the_seed_fields_and_keeps_the_extras(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)

    response = await stack.cancel(
        order_id,
        path_id=order_id,  # VTEX's own examples put the marketplaceOrderId in the path
        reason="customer request",
        cancellationRequestId="c-42",
        requestedByUser=True,
    )

    assert response.status_code == 200, response.text
    answer = response.json()
    assert_matches_schema(answer, "repsonseOrderId")
    assert VTEX_DATE.match(answer["date"])
    cancellation = (await stack.order(order_id))["cancellation"]
    assert cancellation["reason"] == "customer request"
    assert cancellation["cancellationRequestId"] == "c-42"
    assert cancellation["requestedByUser"] is True
    assert cancellation["receipt"] == answer


async def test_cancel_of_the_spec_example_keeps_its_request_id_and_date(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)
    body = request_example("cancel", order_id)
    assert_matches_schema(body, "requestOrderId")

    # As VTEX's examples call it: the marketplaceOrderId in the path.
    response = await stack.http.post(f"/pvt/orders/{order_id}/cancel", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert_matches_schema(answer, "repsonseOrderId")
    order = await stack.order(order_id)
    assert order["status"] == "canceled"
    cancellation = order["cancellation"]
    assert cancellation["cancellationRequestId"] == "85835ab408514b52aa139e4236ce0c33"
    assert cancellation["cancellationRequestDate"] == "2024-03-04T15:45:02.1306363+00:00"
    assert (cancellation["reason"], cancellation["requestedByUser"]) == ("Out of stock", True)
    assert cancellation["receipt"] == answer
    # The workflow's own state, as its query gives it to the Temporal UI and the CLI.
    view = await stack.handle(order_id).query(OrderWorkflow.order)
    assert view.cancellation is not None
    assert view.cancellation.cancellation_request_id == body["cancellationRequestId"]
    assert view.cancellation.cancellation_request_date == body["cancellationRequestDate"]
    # VTEX sends the cancellation twice: the same receipt.
    again = await stack.http.post(f"/pvt/orders/{order_id}/cancel", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == answer


async def test_cancel_in_the_older_shape_is_still_taken(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)

    response = await stack.http.post(
        f"/pvt/orders/SLR-{order_id}/cancel", json={"marketplaceOrderId": order_id}
    )

    assert response.status_code == 200, response.text
    assert_matches_schema(response.json(), "repsonseOrderId")
    cancellation = (await stack.order(order_id))["cancellation"]
    assert cancellation["cancellationRequestId"] is None
    assert cancellation["cancellationRequestDate"] is None


async def test_cancel_of_an_unknown_order_is_404(stack: Stack) -> None:
    assert_error(await stack.cancel(new_order_id()), 404, "OrderNotFound")


# ── Reading an order, health, plumbing ─────────────────────────────────────────────────────


async def test_get_order_shows_what_ops_need(stack: Stack) -> None:
    order_id = new_order_id()
    await stack.place(order_id)
    await stack.dispatch(order_id)

    order = await stack.wait_for(order_id, lambda o: o["status"] == "invoiced")

    for field in ("placedAt", "reservedAt", "dispatchedAt", "invoicedAt", "lockExpiresAt"):
        assert order[field], field
    assert order["invoice"]["invoiceNumber"].startswith("NFe-")
    assert order["tracking"]["trackingNumber"]
    assert order["temporalUiUrl"].endswith(f"/namespaces/default/workflows/order-{order_id}")
    by_marketplace_id = await stack.http.get(f"/pvt/orders/{order_id}")
    assert by_marketplace_id.json()["orderId"] == order["orderId"]


async def test_get_unknown_order_is_404(stack: Stack) -> None:
    assert_error(await stack.http.get(f"/pvt/orders/{new_order_id()}"), 404, "OrderNotFound")


async def test_healthz(stack: Stack) -> None:
    response = await stack.http.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_unknown_route_and_method_are_json_errors(stack: Stack) -> None:
    assert_error(await stack.http.get("/nope"), 404, "NotFound")
    assert_error(await stack.http.delete("/pvt/orders/SLR-1"), 405, "MethodNotAllowed")


async def test_openapi_documents_the_vtex_bodies(stack: Stack) -> None:
    schema = (await stack.ops.get("/openapi.json")).json()

    placement = schema["paths"]["/pvt/orders"]["post"]["requestBody"]
    assert placement["content"]["application/json"]["schema"]["$ref"].endswith("/OrderPlacement")
    assert "marketplaceOrderId" in schema["components"]["schemas"]["OrderPlacement"]["properties"]
    assert set(fulfillment_spec()["paths"]) >= {"/pvt/orders", "/pvt/orders/{orderId}/cancel"}


async def test_credentials_are_checked_when_configured(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, seller_app_key="key", seller_app_token="secret"
    ) as secured:
        order_id = new_order_id()
        body = placement_example(order_id, secured.endpoint)

        missing = await secured.http.post("/pvt/orders", json=body)
        wrong = await secured.http.post(
            "/pvt/orders",
            json=body,
            headers={"X-VTEX-API-AppKey": "key", "X-VTEX-API-AppToken": "nope"},
        )
        right = await secured.http.post(
            "/pvt/orders",
            json=body,
            headers={"X-VTEX-API-AppKey": "key", "X-VTEX-API-AppToken": "secret"},
        )

        assert_error(missing, 401, "Unauthorized")
        assert_error(wrong, 401, "Unauthorized")
        assert right.status_code == 200, right.text
        assert (await secured.http.get("/healthz")).status_code == 200


async def test_no_worker_is_a_503_and_the_retry_completes(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # The API's task queue has no worker yet: the placement cannot finish in time.
    async with running_stack(temporal_env, tmp_path) as stack:
        settings = stack.settings.model_copy(
            update={"task_queue": f"{stack.settings.task_queue}-late", "update_timeout_seconds": 1}
        )
        app = create_app(settings, client=stack.client)
        async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as http:
            order_id = new_order_id()
            body = placement_example(order_id, stack.endpoint)

            response = await http.post("/pvt/orders", json=body)

            error = assert_error(response, 503, "ServiceUnavailable")
            assert response.headers["retry-after"]
            assert "retry" in error["message"]
            # Nothing was lost: once a worker comes, the marketplace's retry completes.
            stop, ready = asyncio.Event(), asyncio.Event()
            worker = asyncio.create_task(run_worker(settings, stack.client, stop, ready))
            try:
                await asyncio.wait_for(ready.wait(), 15)
                retry = await http.post("/pvt/orders", json=body)
                assert retry.status_code == 200, retry.text
                assert retry.json()["orderId"] == f"SLR-{order_id}"
                history = await stack.handle(order_id).fetch_history()
                assert (
                    sum(
                        e.HasField("workflow_execution_started_event_attributes")
                        for e in history.events
                    )
                    == 1
                )
            finally:
                stop.set()
                await worker


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SELLER_APP_KEY": "key"}, "SELLER_APP_KEY is set but SELLER_APP_TOKEN is not"),
        ({"SELLER_APP_TOKEN": "secret"}, "SELLER_APP_TOKEN is set but SELLER_APP_KEY is not"),
        ({"API_HOST": "0.0.0.0"}, "API_HOST=0.0.0.0 is reachable from other machines"),
    ],
)
def test_the_api_refuses_to_start_with_authentication_half_on_or_off_in_public(
    env: dict[str, str], says: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SELLER_", "API_"))}
    result = subprocess.run(
        [sys.executable, "-m", "api"],
        env=clean | env | {"API_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert says in result.stderr
    assert "secret" not in result.stderr + result.stdout
