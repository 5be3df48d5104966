"""Following an invoiced order's parcel to its delivery: a workflow of its own, the order's child.

The order starts it once the marketplace has taken the invoice and its tracking. It asks the
carrier where the parcel is every `poll_seconds` (a durable timer between polls: a worker that
dies mid-wait costs nothing), posts each news to the marketplace (VTEX's
`requestUpdateTrackingStatus`), and ends when the carrier says delivered; the order then ends
`delivered`. A poll costs about a dozen events: the following continues as new when Temporal
suggests it (or after `events_per_run`), carrying what the marketplace has, so its history stays
bounded however long the parcel takes, and the order's history does not grow with polls at all.

A carrier or a marketplace that cannot answer for now is asked again at the next poll; only a
refusal for good, TRACKING_GIVES_UP_AFTER, an operator's `stop_tracking` (forwarded by the order as
the `stop` signal), the order closed by an operator in Temporal (the `close` signal), or a
cancellation of this workflow itself (by hand, or its order terminated) ends it before the
delivery. A post in flight is waited for first, so that what the order says was reported is
what the marketplace has.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.fulfillment import FulfillmentActivities
    from activities.marketplace import TrackingStatusNotice
    from activities.warehouse import ParcelStatus, WarehouseOrder
    from workflows import search
    from workflows.calls import WAIT_FOR_IT, Calls
    from workflows.failures import failure_text, refused_for_good, timed_out
    from workflows.invoice_delivery import send_bound
    from workflows.messages import (
        CamelModel,
        DeliveryView,
        OperatorAction,
        OrderInput,
        TrackingEventView,
    )
    from workflows.policies import (
        MARKETPLACE_CALL_TIMEOUT,
        MARKETPLACE_GIVES_UP_AFTER,
        MARKETPLACE_RETRY,
    )

# A parcel the carrier has not delivered within 60 days is left to people: the order shows
# `attention`.
TRACKING_GIVES_UP_AFTER = timedelta(days=60)
MIN_TRACKING_POLL = timedelta(seconds=1)
# A carrier that cannot answer for a day: given up until the next poll.
TRACKING_CALL_GIVES_UP_AFTER = MARKETPLACE_GIVES_UP_AFTER
# A delivered status the marketplace refuses for good, or does not take within the order's
# MARKETPLACE_RETRY_FOR, this many times (one per poll): delivered anyway, with `attention`.
DELIVERED_REPORT_TRIES = 3
# Continue as new past this many events even if Temporal has not suggested it yet (it does at
# 4 Ki events or 4 MB by default): a run stays small enough to read in the UI.
EVENTS_PER_RUN = 2_000


class ParcelToFollow(CamelModel):
    """What the following needs, and what it carries from one run to the next."""

    order_id: str
    marketplace_order_id: str
    marketplace_services_endpoint: str
    invoice_number: str
    warehouse_order: WarehouseOrder
    poll_seconds: float
    # How long a post to the marketplace is retried (the order's MARKETPLACE_RETRY_FOR).
    send_bound_seconds: float
    give_up_at: datetime
    events_per_run: int = EVENTS_PER_RUN
    # Carried over when it continues as new.
    delivery: DeliveryView = DeliveryView()
    reported: ParcelStatus | None = None  # what the marketplace has taken
    refused: ParcelStatus | None = None  # what it refused for good: not posted again
    runs: int = 1


class ParcelOutcome(CamelModel):
    """How the following ended: the delivery as the order shows it, and what needs a person."""

    delivery: DeliveryView
    attention: str | None = None


async def start_following(
    parcel_id: str, order: WarehouseOrder, placed: OrderInput, invoice_number: str
) -> workflow.ChildWorkflowHandle[ParcelWorkflow, ParcelOutcome]:
    """Start following an order's parcel, as the order's child (from the order's workflow)."""
    job = ParcelToFollow(
        order_id=order.order_id,
        marketplace_order_id=order.marketplace_order_id,
        marketplace_services_endpoint=placed.marketplace_services_endpoint,
        invoice_number=invoice_number,
        warehouse_order=order,
        poll_seconds=placed.tracking_poll_seconds,
        send_bound_seconds=send_bound(placed).total_seconds(),
        give_up_at=workflow.now() + TRACKING_GIVES_UP_AFTER,
    )
    return await workflow.start_child_workflow(
        ParcelWorkflow.run,
        job,
        id=parcel_id,
        static_summary=f"the parcel of {order.order_id} ({invoice_number})",
        # An order terminated by hand stops its parcel's following too (its current run).
        parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
        # Found in the Temporal UI by the order's ids, beside the order.
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.MARKETPLACE_ORDER_ID, order.marketplace_order_id),
                SearchAttributePair(search.SELLER_ORDER_ID, order.order_id),
            ]
        ),
    )


def is_news(
    parcel: ParcelStatus, reported: ParcelStatus | None, refused: ParcelStatus | None
) -> bool:
    """Whether the carrier's answer is worth a post: not what the marketplace has, not fewer
    events than it has (a carrier's glitch must not take tracking back), and not what it refused
    for good (a delivered status excepted: it is posted again, DELIVERED_REPORT_TRIES times)."""
    if parcel == reported:
        return False
    if reported is not None and len(parcel.events) < len(reported.events):
        return parcel.delivered and not reported.delivered
    return parcel != refused or parcel.delivered


@workflow.defn
class ParcelWorkflow:
    """One order's parcel, from the invoice to its delivery (see the module's docstring)."""

    @workflow.init
    def __init__(self, job: ParcelToFollow) -> None:
        self._job = job
        self._delivery = job.delivery
        self._calls = Calls(job.order_id)
        self._attention: str | None = None
        # Why it stops before the delivery, once asked: the order closed in Temporal, this
        # workflow cancelled, an operator's `stop_tracking`.
        self._closing: str | None = None
        self._stopped_by: OperatorAction | None = None
        self._reported = job.reported
        self._refused = job.refused

    @workflow.run
    async def run(self, job: ParcelToFollow) -> ParcelOutcome:
        """Follow the parcel; a cancellation only asks the following to stop (after a post in
        flight)."""
        following = asyncio.create_task(self._follow())
        while not following.done():
            try:
                await workflow.wait_condition(following.done)
            except asyncio.CancelledError:
                self._closing = self._closing or (
                    "its workflow was cancelled in Temporal (by hand, or its order terminated)"
                )
        if await following:
            if self._stopping():  # asked as it was about to continue as new
                self._note_stop()
                return ParcelOutcome(delivery=self._delivery, attention=self._attention)
            workflow.continue_as_new(
                job.model_copy(
                    update={
                        "delivery": self._delivery,
                        "reported": self._reported,
                        "refused": self._refused,
                        "runs": job.runs + 1,
                    }
                )
            )
        return ParcelOutcome(delivery=self._delivery, attention=self._attention)

    @workflow.signal
    def close(self) -> None:
        """The order was closed by an operator in Temporal: stop (after a post in flight)."""
        self._closing = self._closing or "an operator closed the order in Temporal"

    @workflow.signal
    def stop(self, action: OperatorAction) -> None:
        """An operator's `stop_tracking` on the order: give the parcel up."""
        self._stopped_by = self._stopped_by or action

    @workflow.signal
    def retry_now(self) -> None:
        """An operator's `retry_now` on the order: poll (or post) again at once."""
        self._calls.retry_now()

    @workflow.query
    def delivery(self) -> DeliveryView:
        """The parcel's journey so far, and what the marketplace has of it."""
        return self._delivery

    def _stopping(self) -> bool:
        return self._closing is not None or self._stopped_by is not None

    async def _follow(self) -> bool:
        """Poll and post until delivered or stopped; True to continue as new."""
        job, delivery = self._job, self._delivery
        poll = max(timedelta(seconds=job.poll_seconds), MIN_TRACKING_POLL)
        while not self._stopping():
            if workflow.now() >= job.give_up_at:
                delivery.stopped = f"not delivered within {TRACKING_GIVES_UP_AFTER.days} days"
                self._attention = f"parcel not followed any more ({delivery.stopped}): follow it up"
                break
            parcel = await self._poll()
            if self._stopping() or delivery.stopped:
                break  # stopped, or the carrier refused for good
            if parcel is not None:
                if is_news(parcel, self._reported, self._refused):
                    outcome = await self._report(parcel)
                    if outcome == "taken":
                        self._reported = parcel
                    elif outcome == "refused":
                        self._refused = parcel
                refused_enough = delivery.report_refusals >= DELIVERED_REPORT_TRIES
                if parcel.delivered and (parcel == self._reported or refused_enough):
                    delivery.delivered = True
                    if parcel != self._reported:
                        self._attention = (
                            f"the marketplace refused the delivered status: {delivery.report_error}"
                        )
                    return False
            self._show()
            await self._calls.wait(
                "the next tracking poll", self._stopping, within=poll, summary="next tracking poll"
            )
            info = workflow.info()
            if not self._stopping() and (
                info.is_continue_as_new_suggested()
                or info.get_current_history_length() >= job.events_per_run
            ):
                return True
        self._note_stop()
        return False

    def _note_stop(self) -> None:
        """Record why the following stopped before the delivery (unless it said already)."""
        delivery, action = self._delivery, self._stopped_by
        if not delivery.stopped:
            delivery.stopped = (
                f"given up by {action.by}" + (f": {action.reason}" if action.reason else "")
                if action is not None
                else self._closing
            )
        workflow.logger.warning(
            "order %s: parcel no longer followed: %s", self._job.order_id, delivery.stopped
        )
        self._show()

    async def _poll(self) -> ParcelStatus | None:
        """The carrier's answer; None when it cannot answer for now (the next poll asks again),
        or never will (refused for good: `stopped` says why), or the following stops."""
        delivery, number = self._delivery, self._job.invoice_number
        try:
            parcel: ParcelStatus = await self._calls.warehouse(
                FulfillmentActivities.track_parcel,
                self._job.warehouse_order,
                f"track the parcel of {number}",
                schedule_to_close=TRACKING_CALL_GIVES_UP_AFTER,
                stop=self._stopping,
            )
        except (ActivityError, asyncio.CancelledError) as err:
            if self._stopping():
                return None
            if refused_for_good(err):
                delivery.stopped = f"the carrier cannot track it: {failure_text(err)}"
                self._attention = f"parcel not followed any more ({delivery.stopped})"
                return None
            delivery.poll_error = failure_text(err)
            return None
        delivery.poll_error = None
        delivery.last_polled_at = workflow.now()
        delivery.events = [TrackingEventView(**event.model_dump()) for event in parcel.events]
        return parcel

    async def _report(self, parcel: ParcelStatus) -> str:
        """Post the parcel's events: `taken`, `refused` (for good; kept in `reportError`), `later`
        (not taken within the bounds: the next poll posts again) or `stopped` (not sent)."""
        job, delivery = self._job, self._delivery
        # Bounded, so that a marketplace that never takes it cannot hold the following past its
        # own bound.
        left = max(job.give_up_at - workflow.now(), timedelta(minutes=1))
        count = len(parcel.events)
        what = f"send tracking status of {job.invoice_number}"
        notice = TrackingStatusNotice(
            marketplace_services_endpoint=job.marketplace_services_endpoint,
            marketplace_order_id=job.marketplace_order_id,
            invoice_number=job.invoice_number,
            is_delivered=parcel.delivered,
            events=parcel.events,
        )
        try:
            await self._calls.call(
                what,
                lambda: workflow.start_activity_method(
                    FulfillmentActivities.send_tracking_status,
                    notice,
                    start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                    schedule_to_close_timeout=min(left, timedelta(seconds=job.send_bound_seconds)),
                    retry_policy=MARKETPLACE_RETRY,
                    # Stopped meanwhile: the attempt in flight ends first, and its outcome counts.
                    cancellation_type=WAIT_FOR_IT,
                    summary=what
                    + (
                        " (delivered)"
                        if parcel.delivered
                        else " (1 event)"
                        if count == 1
                        else f" ({count} events)"
                    ),
                ),
                stop=self._stopping,
            )
        except (ActivityError, asyncio.CancelledError) as err:
            if self._stopping() or not isinstance(err, ActivityError):
                return "stopped"
            delivery.report_error = failure_text(err)
            if parcel.delivered and timed_out(err):
                # Not taken within MARKETPLACE_RETRY_FOR: a refusal of the delivered status, as
                # counted for DELIVERED_REPORT_TRIES; posted again at the next poll.
                delivery.report_refusals += 1
                return "later"
            if not refused_for_good(err):
                return "later"
            if parcel.delivered:
                delivery.report_refusals += 1
            return "refused"
        delivery.events_reported = count
        delivery.reported_at = workflow.now()
        delivery.report_error = None
        return "taken"

    def _show(self) -> None:
        """What the Temporal UI shows as the workflow's current details."""
        delivery = self._delivery
        details = [f"**following the parcel of {self._job.invoice_number}**"]
        if delivery.events:
            details.append(f"parcel: {delivery.events[-1].description}")
        details.append(f"{delivery.events_reported} events reported")
        if delivery.poll_error:
            details.append(f"carrier: {delivery.poll_error}")
        if delivery.report_error:
            details.append(f"marketplace: {delivery.report_error}")
        workflow.set_current_details(" · ".join(details))
