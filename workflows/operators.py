"""Operators' actions on an order (Workflow Updates: `resend_invoice`, `retry_now`,
`stop_tracking`), reached from the Temporal UI ("Send Update"), `python -m api.operator_actions`
and the ops listener's /orders/{orderId}/...: what every request must satisfy, whichever client it
comes from, and the record each one leaves in the order (`operatorActions`)."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.messages import OperatorAction, OperatorActionName, OperatorRequest

# Operator actions an order records at most: each is an event in its history.
MAX_OPERATOR_ACTIONS = 100


def refuse(order_id: str, why: str) -> None:
    """Refuse an action (the update fails with `ActionRefused`, recorded nowhere)."""
    raise ApplicationError(
        f"order {order_id}: refused, {why}", type="ActionRefused", non_retryable=True
    )


def check_request(order_id: str, request: OperatorRequest, recorded: int, capped: bool) -> None:
    """Who asks, why, and the cap on recorded actions (unless it is not `capped`)."""
    by, reason = request.by.strip(), request.reason
    if not by or len(by) > 200 or not by.isprintable():
        refuse(order_id, "`by` must name who asks: 1 to 200 printable characters")
    if reason is not None and (len(reason) > 1000 or not reason.isprintable()):
        refuse(order_id, "`reason` must be at most 1000 printable characters")
    if capped and recorded >= MAX_OPERATOR_ACTIONS:
        refuse(order_id, f"it has recorded {MAX_OPERATOR_ACTIONS} actions already")


def new_action(name: OperatorActionName, request: OperatorRequest) -> OperatorAction:
    return OperatorAction(
        action=name,
        by=request.by.strip(),
        reason=request.reason,
        requested_at=workflow.now(),
        outcome="",
    )
