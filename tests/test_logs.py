"""Logs: one JSON object per line with LOG_FORMAT=json, and the order's ids on every line about an
order, from the API and from the worker (real processes, their real output)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from logs import ORDER_FIELDS
from tests.stack import new_order_id, placement_example
from tests.test_crashes import call, dispatch, processes, until


async def test_json_lines_carry_the_orders_ids(tmp_path: Path) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.1, env={"LOG_FORMAT": "json"}) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        assert (await call(http, "POST", "/pvt/orders", body)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        await until(http, order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])

    for process in (stack.api, stack.workers[0]):
        lines = [
            line
            for line in process.log_path.read_text().splitlines()
            if line.strip() and not line.startswith("--- start")  # the harness's own marks
        ]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        about_the_order = [r for r in records if order_id in r["message"]]
        assert about_the_order, f"{process.name} logged nothing about {order_id}"
        for record in about_the_order:
            assert {name: record.get(name) for name in ORDER_FIELDS} == {
                "marketplaceOrderId": order_id,
                "orderId": f"SLR-{order_id}",
                "workflowId": f"order-{order_id}",
            }, record
            assert {"time", "level", "logger", "message"} <= record.keys()
