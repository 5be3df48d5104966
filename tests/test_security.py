"""The seller's credentials go only to the marketplace (the outbound allow-list, checked at
placement and again, after DNS, when a call is sent), and its customers' data stays out of the
logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.marketplace_hosts import HostPolicy
from config import DEFAULT_MARKETPLACE_HOSTS
from tests.stack import new_order_id, placement_example, running_stack
from tests.test_codec import PERSONAL, personal_placement
from tests.test_crashes import call, dispatch, processes, until


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/api/oms",
        "http://internal.example.com/api",
        "http://127.0.0.2:8900/api/oms",
        "http://localhost/api",
        "file:///etc/passwd",
        "http://myvtex.com.attacker.example/api",
        "http://store.myvtex.com@169.254.169.254/api",
        "http://169.254.169.254\\@store.myvtex.com/api",
        "http://[::1]/api",
    ],
)
async def test_a_placement_naming_a_host_not_allowed_is_a_400_and_starts_nothing(
    temporal_env: WorkflowEnvironment, tmp_path: Path, endpoint: str
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        order_id = new_order_id()
        body = placement_example(order_id, endpoint)

        response = await stack.http.post("/pvt/orders", json=body)

        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"][0]["field"] == "marketplaceServicesEndpoint"
        assert (await stack.http.get(f"/pvt/orders/SLR-{order_id}")).status_code == 404


async def test_a_name_that_resolves_to_a_private_address_gets_no_call_and_no_credentials(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Allowed by a wildcard, not listed exactly: its address must be public when a call is sent.
    async with running_stack(
        temporal_env,
        tmp_path,
        marketplace_allowed_hosts="*.0.0.1",
        marketplace_app_key="seller-key",
        marketplace_app_token="seller-token",
    ) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 200
        await stack.dispatch(order_id)

        order = await stack.wait_for(
            order_id, lambda o: o["invoice"] and o["invoice"]["sendError"], within=20
        )

        assert "MarketplaceHostRefused" in order["invoice"]["sendError"]
        assert "non-public" in order["invoice"]["sendError"]
        assert stack.marketplace.calls() == []


async def test_credentials_go_to_an_allowed_host_and_no_answer_body_reaches_get(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env,
        tmp_path,
        marketplace_app_key="seller-key",
        marketplace_app_token="seller-token",
        marketplace_retry_for="2s",
    ) as stack:
        stack.marketplace.fail_next("invoice", 1000, status=400)
        order_id = new_order_id()
        await stack.place(order_id)
        await stack.dispatch(order_id)

        order = await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["sendError"])

        invoice_call = stack.marketplace.calls(kind="invoice")[0]
        assert invoice_call.headers["x-vtex-api-appkey"] == "seller-key"
        assert invoice_call.headers["x-vtex-api-apptoken"] == "seller-token"
        # A status line, not the marketplace's body ("InjectedFailure ..." is in that body).
        assert "400 Bad Request" in order["invoice"]["sendError"]
        assert "InjectedFailure" not in order["invoice"]["sendError"]


def test_the_default_allows_vtex_hosts_only() -> None:
    policy = HostPolicy.parse(DEFAULT_MARKETPLACE_HOSTS)
    assert policy.refusal("https://marketplaceservicesendpoint.myvtex.com/") is None
    assert policy.refusal("http://oms.vtexinternal.com.br/api/oms?an=luxstore") is None
    assert policy.refusal("https://store.vtexcommercestable.com.br/api/oms") is None
    assert policy.refusal("https://myvtex.com.evil.example/") is not None
    assert policy.refusal("https://evilmyvtex.com/") is not None
    assert policy.refusal("http://127.0.0.1:8900/") is not None
    assert HostPolicy.parse("127.0.0.1").refusal("http://127.0.0.1:8900/") is None


async def test_no_customer_data_in_the_api_or_worker_logs(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.1) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_id = new_order_id()
        body = personal_placement(order_id, stack.endpoint)
        assert (await call(http, "POST", "/pvt/orders", body)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        await until(http, order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
        refused = await call(
            http, "POST", f"/pvt/orders/{order_id}/cancel", {"marketplaceOrderId": order_id}
        )
        assert refused.status_code == 409

    logs = stack.api.log_path.read_text() + stack.workers[0].log_path.read_text()
    assert order_id in logs  # The logs do speak of the order...
    leaked = [value for value in PERSONAL.values() if value in logs]
    assert leaked == []  # ...and of none of its customer's data.


@pytest.mark.parametrize("sku", ["x" * 101, "tab\there", "nul\x00", ""])
async def test_odd_sku_ids_are_a_400(
    temporal_env: WorkflowEnvironment, tmp_path: Path, sku: str
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        body = placement_example(new_order_id(), stack.endpoint)
        body["items"][0]["id"] = sku

        response = await stack.http.post("/pvt/orders", json=body)

        assert response.status_code == 400
        assert response.json()["error"]["details"][0]["field"] == "items[0].id"


async def test_a_streamed_body_over_1_mib_is_refused_before_it_is_read_whole(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(64):  # 4 MiB, with no Content-Length (chunked)
                sent += 1
                yield b" " * 65536

        try:
            response = await stack.http.post(
                "/pvt/orders", content=chunks(), headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError:
            return  # The server closed the connection on the rest of the body: refused too.
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PayloadTooLarge"
