"""The floor of a whole order, for `make bench`: a workflow of the order's shape that does nothing
else, so that an order's cost can be read against what Temporal and the SDK need for that shape.

The shape (issue "Cost per order"): an update-with-start (`place`) whose handler waits for a
local activity (the reservation), an update (`dispatch`), four activities in sequence (pick, pack,
ship, invoice), one outbound call (an invoice POSTed to the same fake marketplace the orders post
to), the end. No search attributes, no memo, no timer, no view, no warehouse: every other activity
answers at once. A happy-path order (workflows/order.py) does all that and more, which is what the
comparison shows: its steps keep the simulated warehouse's books, it sends the tracking in a second
activity and POST after the invoice's, holds its lockTTL in a timer, and publishes its status and
step in search attributes and its view in the memo.

Run by bench/trivial_worker.py (its own process, the orders' worker's SDK set-up) on its own task
queue; the workflow id is `floor-{name}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx

STEPS = ("pick", "pack", "ship", "invoice")
CALL_TIMEOUT = timedelta(seconds=30)


@dataclass
class FloorOrder:
    """What the workflow is started with, and the input of its update-with-start."""

    name: str
    marketplace_url: str


@dataclass
class FloorStep:
    """One activity's input."""

    name: str
    step: str


@dataclass
class FloorAnswer:
    """The output of either update, and of the workflow."""

    name: str
    status: str


@activity.defn
async def floor_reserve(order: FloorOrder) -> FloorAnswer:
    """The reservation, run as a local activity (as the order's is): answers at once."""
    return FloorAnswer(name=order.name, status="reserved")


@activity.defn
async def floor_step(step: FloorStep) -> FloorAnswer:
    """A fulfillment step: answers at once."""
    return FloorAnswer(name=step.name, status=step.step)


_http: httpx.AsyncClient | None = None


@activity.defn
async def floor_notify(order: FloorOrder) -> FloorAnswer:
    """The outbound call: the invoice POSTed to the marketplace, as the order's send_invoice does
    (a small body that VTEX's schema accepts: the fake marketplace answers 200)."""
    global _http
    if _http is None:
        _http = httpx.AsyncClient(timeout=10)
    answer = await _http.post(
        f"{order.marketplace_url}/api/oms/pvt/orders/{order.name}/invoice",
        json={
            "type": "Output",
            "invoiceNumber": order.name,
            "invoiceValue": 1500,
            "issuanceDate": "2026-12-07T00:00:00Z",
            "items": [{"id": "bench-sku", "quantity": 1, "price": 1000}],
        },
    )
    answer.raise_for_status()
    return FloorAnswer(name=order.name, status="notified")


FLOOR_ACTIVITIES = (floor_reserve, floor_step, floor_notify)


@workflow.defn
class OrderFloorWorkflow:
    """Placed (update-with-start, a local activity), dispatched (an update), four steps, a call."""

    def __init__(self) -> None:
        self.dispatched = False

    @workflow.run
    async def run(self, order: FloorOrder) -> FloorAnswer:
        """Wait for `dispatch`; then the steps and the call, in sequence."""
        await workflow.wait_condition(lambda: self.dispatched)
        for step in STEPS:
            await workflow.execute_activity(
                floor_step,
                FloorStep(name=order.name, step=step),
                start_to_close_timeout=CALL_TIMEOUT,
            )
        await workflow.execute_activity(floor_notify, order, start_to_close_timeout=CALL_TIMEOUT)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return FloorAnswer(name=order.name, status="invoiced")

    @workflow.update
    async def place(self, order: FloorOrder) -> FloorAnswer:
        """The placement: waits for the reservation, a local activity."""
        return await workflow.execute_local_activity(
            floor_reserve, order, start_to_close_timeout=CALL_TIMEOUT
        )

    @workflow.update
    async def dispatch(self, order: FloorOrder) -> FloorAnswer:
        """The dispatch: lets the steps run."""
        self.dispatched = True
        return FloorAnswer(name=order.name, status="dispatched")
