"""The seller's credentials go only to the marketplace: the outbound allow-list, checked at
placement and again, after DNS, when a call is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.marketplace_hosts import DEFAULT_MARKETPLACE_HOSTS, HostPolicy
from tests.stack import new_order_id, placement_example, running_stack


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

        order = await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["sendError"])

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
    ) as stack:
        stack.marketplace.fail_next("invoice", 1, status=400)
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
