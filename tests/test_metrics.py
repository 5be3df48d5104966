"""Metrics a Prometheus scrapes: the API's (prometheus-client, on its ops listener) and a worker's
(the Temporal SDK's exporter, with the orders' own counters), on real processes; the counters
move."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from devtools.processes import free_ports
from tests.stack import new_order_id, placement_example
from tests.test_crashes import call, dispatch, processes, until


def value(metrics: str, pattern: str) -> float:
    """The sum of the samples whose line matches `pattern` (0 if none)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("#") and re.search(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_the_counters_move(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    env = {"WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}"}
    async with (
        processes(tmp_path, workers=1, step_seconds=0.1, env=env) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        invoiced, canceled = new_order_id(), new_order_id()
        for order_id in (invoiced, canceled):
            assert (
                await call(http, "POST", "/pvt/orders", placement_example(order_id, stack.endpoint))
            ).status_code == 200
        assert (await dispatch(http, invoiced)).status_code == 200
        canceling = await call(
            http, "POST", f"/pvt/orders/{canceled}/cancel", {"marketplaceOrderId": canceled}
        )
        assert canceling.status_code == 200
        await until(http, invoiced, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])

        async with httpx.AsyncClient() as scraper:
            api = (await scraper.get(f"{stack.ops_url}/metrics")).text
            worker = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text

    assert value(api, r'seller_api_requests_total\{.*route="/pvt/orders".*status="200"') >= 2
    assert value(api, r'seller_api_requests_total\{.*route="/pvt/orders/\{orderId\}/fulfill"') >= 1
    assert value(api, r"seller_api_request_seconds_count") >= 4
    assert value(worker, r'seller_orders\{.*event="placed"') == 2
    assert value(worker, r'seller_orders\{.*event="invoiced"') == 1
    assert value(worker, r'seller_orders\{.*event="canceled"') == 1
    # The SDK's own runtime metrics come through the same exporter.
    assert (
        value(worker, r"^temporal_workflow_completed")
        + value(worker, r"^temporal_activity_execution_latency")
        > 0
    )
