"""The invoice's way to the marketplace: the life's send, and those beside it.

Once invoiced, the order sends the invoice, then its tracking, until the marketplace has taken
both. Each send is retried for MARKETPLACE_RETRY_FOR (any answer but a 2xx is a failed delivery).
After it, or at once when no attempt can send it (an invalid URL, a host the allow-list refuses),
the order shows `attention` and `InvoiceNotDelivered`, and waits for an operator's
`resend_invoice`. Beside the life, the invoice goes again to refuse a cancellation (that is how a
seller refuses) and at an operator's request once it was delivered: each such send is its own,
started after it was asked, even while another is in flight. An operator's cancellation in
Temporal ends the sends and the waits: the order then closes with the invoice undelivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.fulfillment import FulfillmentActivities
    from activities.marketplace import InvoiceNotice, TrackingNotice
    from activities.warehouse import Invoice
    from workflows.calls import WAIT_FOR_IT, Calls
    from workflows.failures import failure_text
    from workflows.messages import InvoiceView, OperatorAction, OrderInput, Tracking
    from workflows.policies import MARKETPLACE_CALL_TIMEOUT, MARKETPLACE_RETRY

# The shortest bound a send can have: one attempt's timeout, and a retry.
MIN_SEND_BOUND = timedelta(seconds=2)


def send_bound(order: OrderInput) -> timedelta:
    """How long a send to the marketplace is retried: MARKETPLACE_RETRY_FOR, read at placement."""
    return max(timedelta(seconds=order.marketplace_retry_seconds), MIN_SEND_BOUND)


class InvoiceDelivery:
    """An invoiced order's sends of its invoice and tracking (see the module's docstring)."""

    def __init__(
        self,
        order: OrderInput,
        calls: Calls,
        closing: Callable[[], bool],
        attend: Callable[[str | None], None],
        show: Callable[[], None],
    ) -> None:
        self._order = order
        self._calls = calls
        self._closing = closing  # an operator closed the order in Temporal
        self._attend = attend  # sets (or clears) the order's `attention`
        self._show = show
        self.invoice: Invoice | None = None
        self.view: InvoiceView | None = None
        self.tracking: Tracking | None = None
        # Why the marketplace lacks the invoice (or its tracking) it must have, while it does:
        # `attention`, and `InvoiceNotDelivered` in the Temporal UI.
        self.undelivered: str | None = None
        # How many sends are in flight (a resend hurries them), how many deliveries wait for an
        # operator's resend, how many resends were asked (it wakes them), how many sends beside
        # the life were asked (each one starts after it was asked), how many sends the
        # marketplace took, and the resend actions whose outcome is due.
        self._in_flight = 0
        self.awaiting_resend = 0
        self._resends_asked = 0
        self._owed = 0
        self._taken = 0
        self._resend_actions: list[OperatorAction] = []
        self._beside_life: asyncio.Task[None] | None = None

    def set(self, invoice: Invoice, tracking: Tracking | None) -> None:
        """The invoice the warehouse committed, and the parcel's tracking."""
        self.invoice, self.tracking = invoice, tracking
        self.view = InvoiceView(
            invoice_number=invoice.invoice_number,
            issuance_date=invoice.issuance_date,
            invoice_value=invoice.invoice_value,
        )

    @property
    def taken(self) -> bool:
        """Whether the marketplace has taken the invoice and its tracking."""
        view = self.view
        return (
            view is not None
            and view.sent_at is not None
            and (self.tracking is None or view.tracking_sent_at is not None)
        )

    def sends_done(self) -> bool:
        """Whether no send beside the life is running (the workflow waits for them to close). One
        that ended on a bug raises it here: the workflow task fails, visibly, to be fixed and
        replayed, rather than the order closing as if the send had been made."""
        task = self._beside_life
        if task is None or not task.done():
            return task is None
        task.result()
        return True

    async def deliver(self) -> None:
        """The life's delivery: until taken, or taken by another send, or closed."""
        await self._until_taken(beside_life=False)

    def send_again_beside_life(self) -> None:
        """Ask for one more send beside the life; started now unless one is running, which then
        sends again once its send in flight is done."""
        self._owed += 1
        if self.sends_done():
            self._beside_life = asyncio.create_task(self._send_beside_life())

    def resend(self, action: OperatorAction) -> str:
        """An operator's `resend_invoice`: what the order does about it. Its outcome is completed
        when the send ends."""
        self._resend_actions.append(action)
        if self._in_flight:
            self._calls.retry_now()
            return "a send was in progress: it is retried now"
        if self.awaiting_resend:
            self._resends_asked += 1
        else:
            self.send_again_beside_life()
        return "sending the invoice and the tracking again"

    async def _send_beside_life(self) -> None:
        done = 0
        while done != self._owed and not self._closing():
            asked = self._owed
            await self._until_taken(beside_life=True)
            done = asked

    async def _until_taken(self, beside_life: bool) -> None:
        """Send until the marketplace takes it; after MARKETPLACE_RETRY_FOR, wait for an
        operator's resend. The life's delivery also ends once another send got both through; a
        send beside the life must be its own."""
        while True:
            asked, taken_before = self._resends_asked, self._taken
            self._in_flight += 1
            try:
                taken, outcome = await self._send_invoice_and_tracking()
            finally:
                self._in_flight -= 1
            for action in self._resend_actions:
                action.outcome += f"; {outcome}"
            self._resend_actions.clear()
            if taken or (not beside_life and self._taken != taken_before):
                if taken and self.undelivered is not None:
                    self.undelivered = None
                    self._attend(None)
                self._show()
                return
            self.undelivered = outcome
            self._attend(
                f"{outcome}; once the marketplace can take it, send it again with the "
                "resend_invoice action"
            )
            self.awaiting_resend += 1
            self._show()
            await workflow.wait_condition(
                lambda: (
                    self._resends_asked != asked  # noqa: B023
                    or self._closing()
                    or self.undelivered is None
                )
            )
            self.awaiting_resend -= 1
            if self._resends_asked == asked:
                return  # Delivered by another send, or an operator closed the order.

    async def _send_invoice_and_tracking(self) -> tuple[bool, str]:
        """One send of the invoice, then of its tracking: whether the marketplace took both, and
        what came of it, in words.

        Once the marketplace has taken the invoice (or the tracking) it counts as delivered,
        whatever a later or concurrent send meets: such errors are only told, not recorded.
        """
        assert self.invoice is not None and self.view is not None
        invoice, view, order = self.invoice, self.view, self._order
        try:
            await self._send(
                f"send invoice {invoice.invoice_number}",
                FulfillmentActivities.send_invoice,
                InvoiceNotice(
                    marketplace_services_endpoint=order.marketplace_services_endpoint,
                    marketplace_order_id=order.marketplace_order_id,
                    invoice=invoice,
                    tracking=self.tracking,
                ),
            )
        except ActivityError as err:
            error = failure_text(err)
            workflow.logger.error("order %s: invoice not sent: %s", order.order_id, error)
            if view.sent_at is None:
                view.send_error = error
                self._show()
            return False, f"the marketplace has not taken the invoice: {error}"
        if view.sent_at is None:
            view.sent_at = workflow.now()
        else:
            view.resent_count += 1
        view.send_error = None
        self._show()
        if self.tracking is None:
            self._taken += 1
            return True, f"the marketplace took it at {workflow.now():%Y-%m-%d %H:%M:%S} UTC"
        try:
            await self._send(
                f"send tracking of {invoice.invoice_number}",
                FulfillmentActivities.send_tracking,
                TrackingNotice(
                    marketplace_services_endpoint=order.marketplace_services_endpoint,
                    marketplace_order_id=order.marketplace_order_id,
                    invoice_number=invoice.invoice_number,
                    tracking=self.tracking,
                    dispatched_date=invoice.issuance_date,
                ),
            )
        except ActivityError as err:
            error = failure_text(err)
            workflow.logger.error("order %s: tracking not sent: %s", order.order_id, error)
            if view.tracking_sent_at is None:
                view.tracking_send_error = error
                self._show()
            return False, f"the marketplace has not taken the tracking: {error}"
        view.tracking_sent_at = view.tracking_sent_at or workflow.now()
        view.tracking_send_error = None
        self._taken += 1
        self._show()
        return True, f"the marketplace took them at {workflow.now():%Y-%m-%d %H:%M:%S} UTC"

    async def _send(self, what: str, activity: Callable[..., object], notice: object) -> None:
        await self._calls.call(
            what,
            lambda: workflow.start_activity_method(
                activity,  # type: ignore[arg-type]
                notice,
                start_to_close_timeout=MARKETPLACE_CALL_TIMEOUT,
                schedule_to_close_timeout=send_bound(self._order),
                retry_policy=MARKETPLACE_RETRY,
                cancellation_type=WAIT_FOR_IT,
                summary=what,
            ),
            stop=self._closing,
        )
