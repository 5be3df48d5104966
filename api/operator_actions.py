"""Operators' actions on an order: resend its invoice, retry now what it waits on, give up its
tracking. Each is a Workflow Update of the order (workflows/order.py), recorded in the order's
`operatorActions` with who asked, why and when.

Three ways to reach them, one code path: the ops listener (`POST /orders/{orderId}/resend-invoice`
and so on: api/routes/operator.py), this module as a command, and the Temporal UI's "Send Update"
(which calls the workflow directly). As a command, with the settings of the API (TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, PAYLOAD_ENCRYPTION_KEY...):

    python -m api.operator_actions resend-invoice SLR-1138342255777-01 --by ana --reason "..."

The update id is `{action}-{requestId}`: the same request id (given, or printed by the command)
makes a retried call land on the same update, which Temporal answers with its first outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
import uuid

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError, not_found
from api.order_calls import _answer
from codec import data_converter
from config import Settings, get_settings
from temporal_client import connect
from workflows import ids
from workflows.messages import OperatorAction, OperatorActionName, OperatorRequest
from workflows.order import OrderWorkflow

# Each action, as the command and the ops listener's path name it, with its update.
ACTIONS = {
    "resend-invoice": (OperatorActionName.RESEND_INVOICE, OrderWorkflow.resend_invoice),
    "retry-now": (OperatorActionName.RETRY_NOW, OrderWorkflow.retry_now),
    "stop-tracking": (OperatorActionName.STOP_TRACKING, OrderWorkflow.stop_tracking),
}
MAX_REQUEST_ID = 100


def check_request(request: OperatorRequest, request_id: str) -> None:
    """What the workflow's validators check too, answered as a 400 before anything is sent."""
    by = request.by.strip()
    if not by or len(by) > 200 or not by.isprintable():
        raise ApiError(400, "InvalidRequest", "by: who asks, 1 to 200 printable characters")
    if request.reason is not None and (
        len(request.reason) > 1000 or not request.reason.isprintable()
    ):
        raise ApiError(400, "InvalidRequest", "reason: at most 1000 printable characters")
    if not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise ApiError(
            400, "InvalidRequest", f"requestId: 1 to {MAX_REQUEST_ID} printable characters"
        )


async def act(
    client: Client,
    settings: Settings,
    path_id: str,
    name: str,
    request: OperatorRequest,
    request_id: str,
) -> OperatorAction:
    """Ask the order `path_id` names (seller or marketplace id) for the action `name`."""
    check_request(request, request_id)
    action, update = ACTIONS[name]
    for marketplace_order_id in ids.marketplace_ids_for_path(path_id):
        handle = client.get_workflow_handle_for(
            OrderWorkflow.run, ids.workflow_id(marketplace_order_id)
        )
        try:
            answer = await _answer(
                settings,
                handle.execute_update(update, request, id=f"{action.value}-{request_id}"),
            )
        except RPCError as err:  # NOT_FOUND: no such workflow, or a closed one
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        else:
            # Temporal answers a known update id with its first outcome, whatever is sent now.
            if (answer.by, answer.reason) != (request.by.strip(), request.reason):
                raise ApiError(
                    409,
                    "RequestIdReused",
                    f"requestId {request_id} was used by {answer.by} for another {name}; "
                    "use a new requestId",
                )
            return answer
        try:
            description = await asyncio.wait_for(handle.describe(), settings.update_timeout_seconds)
        except (RPCError, TimeoutError):
            continue
        if description.status != WorkflowExecutionStatus.RUNNING:
            closed = description.status.name.lower() if description.status else "closed"
            raise ApiError(
                409,
                "OrderClosed",
                f"order {path_id}: its workflow has closed ({closed}); nothing is left to act on",
            )
    raise not_found(path_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m api.operator_actions",
        description=(
            "An operator's action on an order, recorded in it (GET /pvt/orders/{orderId}: "
            "operatorActions). Connects to Temporal with the API's settings (TEMPORAL_ADDRESS, "
            "TEMPORAL_NAMESPACE, PAYLOAD_ENCRYPTION_KEY, the TLS files...)."
        ),
    )
    parser.add_argument(
        "action",
        choices=list(ACTIONS),
        help="resend-invoice: send the invoice and its tracking again now; retry-now: retry "
        "at once what the order waits on (a call in its backoff, a pause, the next tracking "
        "poll); stop-tracking: stop following the parcel",
    )
    parser.add_argument("order_id", help="the seller orderId (SLR-...) or the marketplaceOrderId")
    parser.add_argument(
        "--by",
        default=f"{getpass.getuser()}@{socket.gethostname()}",
        help="who asks, recorded in the order (default: user@host)",
    )
    parser.add_argument("--reason", help="why, recorded in the order")
    parser.add_argument(
        "--request-id",
        help="the same id makes a repeated command the same action (default: a new one, printed)",
    )
    return parser


async def _main(args: argparse.Namespace) -> int:
    settings = get_settings()
    request_id = args.request_id or str(uuid.uuid4())
    print(f"request id: {request_id}", file=sys.stderr)
    try:
        client = await connect(settings, data_converter=data_converter(settings.encryption_key))
    except (ValueError, RuntimeError) as err:
        print(f"cannot reach Temporal: {err}", file=sys.stderr)
        return 2
    try:
        action = await act(
            client,
            settings,
            args.order_id,
            args.action,
            OperatorRequest(by=args.by, reason=args.reason),
            request_id,
        )
    except ApiError as err:
        print(json.dumps({"error": {"code": err.code, "message": err.message}}), file=sys.stderr)
        return 1
    print(action.model_dump_json(indent=2))
    return 0


def main() -> None:
    """The command."""
    code = asyncio.run(_main(_parser().parse_args()))
    # Leave without the interpreter's teardown: the Temporal client's Rust threads, still there,
    # can abort it ("Fatal Python error: PyGILState_Release", SIGABRT, temporalio/sdk-python#300)
    # after the answer was printed, and a script would read the action as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
