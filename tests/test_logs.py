"""Logs: one JSON object per line with LOG_FORMAT=json, the order's ids on every line about an
order, and the marketplace's cancellation request (id and date) on every line about a
cancellation, from the API and from the worker (real processes, their real output)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

import logs
from logs import ORDER_FIELDS
from tests.stack import new_order_id, placement_example, request_example
from tests.test_crashes import call, dispatch, processes, until


async def test_json_lines_carry_the_orders_ids_and_the_cancellations_request(
    tmp_path: Path,
) -> None:
    async with (
        processes(tmp_path, workers=1, step_seconds=0.1, env={"LOG_FORMAT": "json"}) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
    ):
        order_id, canceled_id = new_order_id(), new_order_id()
        body = placement_example(order_id, stack.endpoint)
        assert (await call(http, "POST", "/pvt/orders", body)).status_code == 200
        assert (await dispatch(http, order_id)).status_code == 200
        # A second order, canceled with VTEX's own example: its request's id and date.
        body = placement_example(canceled_id, stack.endpoint)
        assert (await call(http, "POST", "/pvt/orders", body)).status_code == 200
        cancel = request_example("cancel", canceled_id)
        answered = await call(http, "POST", f"/pvt/orders/SLR-{canceled_id}/cancel", cancel)
        assert answered.status_code == 200, answered.text
        await until(http, order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
        await until(http, canceled_id, lambda o: o["status"] == "canceled")

    request = {
        "cancellationRequestId": cancel["cancellationRequestId"],
        "cancellationRequestDate": cancel["cancellationRequestDate"],
    }
    named = f"cancellation request {request['cancellationRequestId']} dated "
    named += request["cancellationRequestDate"]
    for process, about_the_cancellation in (
        (stack.api, ("canceled (receipt", "cancellation still being evaluated")),
        (stack.workers[0], ("cancellation requested", ": canceling", ": canceled")),
    ):
        lines = [
            line
            for line in process.log_path.read_text().splitlines()
            if line.strip() and not line.startswith("--- start")  # the harness's own marks
        ]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        for marketplace_order_id in (order_id, canceled_id):
            about_the_order = [r for r in records if marketplace_order_id in r["message"]]
            assert about_the_order, f"{process.name} logged nothing about {marketplace_order_id}"
            for record in about_the_order:
                assert {name: record.get(name) for name in ORDER_FIELDS} == {
                    "marketplaceOrderId": marketplace_order_id,
                    "orderId": f"SLR-{marketplace_order_id}",
                    "workflowId": f"order-{marketplace_order_id}",
                }, record
                assert {"time", "level", "logger", "message"} <= record.keys()
        # Each line about the cancellation names its request, in words and as fields.
        cancellation_lines = [
            record
            for record in records
            if canceled_id in record["message"]
            and any(words in record["message"] for words in about_the_cancellation)
        ]
        assert cancellation_lines, f"{process.name} logged nothing about the cancellation"
        for record in cancellation_lines:
            assert named in record["message"], record
            assert {name: record.get(name) for name in request} == request, record


def test_a_text_log_line_cannot_be_forged_by_what_it_quotes() -> None:
    # A cancellation's reason is the marketplace's text, quoted in the worker's line.
    formatter = logs.TextWithIds(logs.TEXT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    forged = "x\n2099-01-01 00:00:00 INFO api: order FORGED-01 canceled\r\x85\u2028 y"
    record = logging.LogRecord(
        "workflow", logging.INFO, __file__, 1, "canceling (%s)", (forged,), None
    )

    line = formatter.format(record)

    assert "\n" not in line and "\r" not in line and "\x85" not in line and "\u2028" not in line
    assert "canceling (x\\n2099-01-01 00:00:00 INFO api: order FORGED-01 canceled\\r" in line
