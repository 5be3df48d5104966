"""Operators in control: every answer of the marketplace but a 2xx is retried visibly, for a bounded
time, then the order waits with `attention` for an operator; and the operators' actions (resend
the invoice, retry now, stop tracking), from the ops listener, the command and the Temporal
update the UI sends, each recorded in the order.

Real parts: the dev server, a worker, the API (both listeners) and the fake marketplace, which
answers what the test scripts (a 307, a 400 for good, a 503 for a while).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.stack import Stack, new_order_id, running_stack
from workflows import search

ROOT = Path(__file__).resolve().parent.parent


async def placed_and_dispatched(stack: Stack) -> str:
    order_id = new_order_id()
    assert (await stack.place(order_id)).status_code == 200
    assert (await stack.dispatch(order_id)).status_code == 200
    return order_id


def retrying(activity: str, attempt: int = 2):  # type: ignore[no-untyped-def]
    return lambda o: any(
        c["activity"] == activity and c["attempt"] >= attempt for c in o["pendingCalls"]
    )


async def test_a_redirect_is_retried_not_followed_and_the_next_200_delivers(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        stack.marketplace.fail_next("invoice", 1, status=307)
        order_id = await placed_and_dispatched(stack)

        seen = await stack.wait_for(order_id, retrying("send_invoice"))
        delivered = await stack.wait_for(order_id, lambda o: o["invoice"]["trackingSentAt"])

    pending = [c for c in seen["pendingCalls"] if c["activity"] == "send_invoice"]
    assert "answered 307" in pending[0]["lastError"] and "not followed" in pending[0]["lastError"]
    assert delivered["invoice"]["sentAt"] and delivered["invoice"]["sendError"] is None
    assert delivered["attention"] is None
    invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
    assert [c.status for c in invoices] == [307, 200]


async def test_an_invoice_not_taken_within_the_bound_waits_for_an_operators_resend(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, marketplace_retry_for="3s") as stack:
        stack.marketplace.fail_next("invoice", 1000, status=400)
        order_id = await placed_and_dispatched(stack)

        stuck = await stack.wait_for(order_id, lambda o: o["attention"], within=20)
        handle = stack.handle(order_id)
        description = await handle.describe()
        # Retried, not ended at the first 400; and left open for the operator.
        assert len(stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)) >= 2
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.typed_search_attributes.get(search.INVOICE_NOT_DELIVERED) is True

        stack.marketplace.clear()
        call = {"by": "ana", "reason": "the marketplace is back", "requestId": "r-1"}
        first = await stack.ops.post(f"/orders/SLR-{order_id}/resend-invoice", json=call)
        assert first.status_code == 200, first.text
        view = await asyncio.wait_for(handle.result(), 20)
        again = await stack.ops.post(f"/orders/SLR-{order_id}/resend-invoice", json=call)
        closed = await stack.ops.post(
            f"/orders/{order_id}/resend-invoice", json=call | {"requestId": "r-2"}
        )

    assert "answered 400" in stuck["invoice"]["sendError"]
    assert "resend_invoice" in stuck["attention"] and stuck["invoice"]["sentAt"] is None
    action = first.json()
    assert action["action"] == "resendInvoice" and action["by"] == "ana"
    assert action["reason"] == "the marketplace is back"
    assert action["outcome"] == "sending the invoice and the tracking again"
    assert again.status_code == 200 and again.json() == action  # the same update, answered again
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "OrderClosed"

    assert view.invoice is not None and view.invoice.sent_at and view.invoice.send_error is None
    assert view.invoice.tracking_sent_at is not None and view.attention is None
    [recorded] = view.operator_actions
    assert recorded.by == "ana" and recorded.requested_at == datetime.fromisoformat(
        action["requestedAt"]
    )
    assert "the marketplace took them" in recorded.outcome
    assert [c.status for c in stack.marketplace.calls(kind="invoice")] == [200]


async def test_actions_that_make_no_sense_are_refused_with_a_reason(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        order_id = new_order_id()
        assert (await stack.place(order_id)).status_code == 200  # placed: waits for dispatch
        path = f"/orders/SLR-{order_id}"
        resend = await stack.ops.post(f"{path}/resend-invoice", json={"by": "ana"})
        retry = await stack.ops.post(f"{path}/retry-now", json={"by": "ana"})
        stop = await stack.ops.post(f"{path}/stop-tracking", json={"by": "ana"})
        nobody = await stack.ops.post(f"{path}/retry-now", json={"by": " "})
        no_body = await stack.ops.post(
            f"{path}/retry-now", content=b"{", headers={"Content-Type": "application/json"}
        )
        untyped = await stack.ops.post(f"{path}/retry-now", content=b'{"by": "ana"}')
        from_a_page = await stack.ops.post(
            f"{path}/retry-now", json={"by": "ana"}, headers={"Origin": "https://evil.example"}
        )
        unknown = await stack.ops.post("/orders/SLR-nope-01/retry-now", json={"by": "ana"})
        order = await stack.order(order_id)

    for refused, why in [
        (resend, "no invoice to send (placed)"),
        (retry, "waits on nothing that can be retried (placed)"),
        (stop, "not following a parcel (placed)"),
    ]:
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "ActionRefused"
        assert why in refused.json()["error"]["message"]
    assert nobody.status_code == 400 and "by" in nobody.json()["error"]["message"]
    assert no_body.status_code == 400
    assert untyped.status_code == 415 and from_a_page.status_code == 403
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "OrderNotFound"
    assert order["operatorActions"] == []  # a refusal is not recorded


async def test_retry_now_from_the_command_sends_at_once_what_waited_on_its_backoff(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        stack.marketplace.fail_next("invoice", 1000, status=503)
        order_id = await placed_and_dispatched(stack)
        # The 5th attempt failed: the 6th is 16 s away, far more than the command takes even
        # on a machine busy with the other pytest-xdist workers (8 s was not always).
        waiting = await stack.wait_for(order_id, retrying("send_invoice", 6), within=60)
        [call] = [c for c in waiting["pendingCalls"] if c["activity"] == "send_invoice"]
        next_attempt = datetime.fromisoformat(call["nextAttemptAt"])
        stack.marketplace.clear()

        command = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "api.operator_actions",
                "retry-now",
                f"SLR-{order_id}",
                "--by",
                "bob",
                "--request-id",
                "q-1",
            ],
            cwd=ROOT,
            env=os.environ
            | {
                "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
                "TEMPORAL_NAMESPACE": stack.client.namespace,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        delivered = await stack.wait_for(order_id, lambda o: o["invoice"]["trackingSentAt"])
        help_text = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "api.operator_actions", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert command.returncode == 0, command.stderr
    action = json.loads(command.stdout)
    assert action["action"] == "retryNow" and action["by"] == "bob"
    assert action["outcome"].startswith("retrying now: send invoice NFe-")
    # Sent at once, not at the attempt the backoff had scheduled.
    assert datetime.fromisoformat(delivered["invoice"]["sentAt"]) < next_attempt
    assert [a["action"] for a in delivered["operatorActions"]] == ["retryNow"]
    assert help_text.returncode == 0 and "resend-invoice" in help_text.stdout


async def test_an_operator_stops_following_a_parcel_and_the_order_closes(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, tracking_poll_interval="1s", carrier_delivery_time="1h"
    ) as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(order_id, lambda o: o["delivery"] and o["delivery"]["lastPolledAt"])
        call = {"by": "carla", "reason": "picked up at the store"}
        stopped = await stack.ops.post(f"/orders/SLR-{order_id}/stop-tracking", json=call)
        view = await asyncio.wait_for(stack.handle(order_id).result(), 20)

    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["outcome"] == "the parcel is no longer followed"
    assert view.status == "invoiced" and view.delivery is not None
    assert view.delivery.stopped == "given up by carla: picked up at the store"
    assert not view.delivery.delivered and view.attention is None
    assert [a.action for a in view.operator_actions] == ["stopTracking"]


async def test_the_update_the_temporal_ui_sends_resends_a_delivered_invoice(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path, late_call_window="1h") as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
        handle = stack.handle(order_id)
        # What the UI's "Send Update" sends: the update's name and JSON typed in by a person.
        answer = await handle.execute_update(
            "resend_invoice", {"by": "dora (Temporal UI)"}, id="ui-1", result_type=dict
        )
        # resentCount moves once the invoice is taken, the action's outcome once the tracking is
        # too: a GET in between sees it still as the update answered it.
        resent = await stack.wait_for(
            order_id,
            lambda o: (
                o["invoice"]["resentCount"] == 1
                and o["operatorActions"][0]["outcome"] != answer["outcome"]
            ),
        )
        await handle.cancel()  # closes the late-call window early
        await asyncio.wait_for(handle.result(), 20)

    assert answer["outcome"] == "sending the invoice and the tracking again"
    [action] = resent["operatorActions"]
    assert action["by"] == "dora (Temporal UI)" and "the marketplace took them" in action["outcome"]
    invoices = stack.marketplace.calls(kind="invoice", marketplace_order_id=order_id)
    trackings = stack.marketplace.calls(kind="tracking", marketplace_order_id=order_id)
    assert len(invoices) == 2 and len(trackings) == 2


async def test_a_refusals_resend_not_taken_waits_for_an_operator_and_a_reused_request_id_is_a_409(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, marketplace_retry_for="3s", late_call_window="2s"
    ) as stack:
        order_id = await placed_and_dispatched(stack)
        await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
        # An operator's resend first: the refusal below must still send the invoice again.
        first = await stack.ops.post(
            f"/orders/{order_id}/resend-invoice", json={"by": "ana", "requestId": "x"}
        )
        await stack.wait_for(order_id, lambda o: o["invoice"]["resentCount"] == 1)
        stack.marketplace.fail_next("invoice", 1000, status=503)
        assert (await stack.cancel(order_id)).status_code == 409
        stuck = await stack.wait_for(order_id, lambda o: o["attention"], within=20)
        description = await stack.handle(order_id).describe()
        reused = await stack.ops.post(
            f"/orders/{order_id}/resend-invoice", json={"by": "bob", "requestId": "x"}
        )
        stack.marketplace.clear()
        resent = await stack.ops.post(f"/orders/{order_id}/resend-invoice", json={"by": "bob"})
        view = await asyncio.wait_for(stack.handle(order_id).result(), 30)

    assert first.status_code == 200
    # The refusal's own send was refused past its bound: visible, and the order stayed open.
    assert "resend_invoice" in stuck["attention"]
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert description.typed_search_attributes.get(search.INVOICE_NOT_DELIVERED) is True
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "RequestIdReused"
    assert resent.status_code == 200, resent.text
    assert view.attention is None and view.invoice is not None
    assert view.invoice.resent_count == 2
    assert "the marketplace took them" in view.operator_actions[-1].outcome
