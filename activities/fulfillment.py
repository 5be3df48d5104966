"""The order's activities: everything the workflow does to the outside world.

Warehouse steps heartbeat while they run, so that a marketplace cancellation reaches them mid-step
(the worker sets a short heartbeat throttle for that; see worker.py). Refusals that retrying
cannot change become non-retryable `ApplicationError`s whose `type` names the refusal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.marketplace import (
    CancellationNotice,
    InvoiceNotice,
    MarketplaceAnswer,
    MarketplaceClient,
    TrackingNotice,
    TrackingStatusNotice,
)
from activities.warehouse import (
    Invoice,
    ParcelStatus,
    Reservation,
    ShippingLabel,
    Warehouse,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)
from workflows.messages import CamelModel

# What a later attempt may not meet: retried with backoff, each attempt visible to ops.
TRANSIENT_ERRORS = (WarehouseUnavailable, OSError, TimeoutError)

# Heartbeat far more often than the worker's throttle so that a cancellation, which arrives in
# the answer to a heartbeat, is never waiting on us.
HEARTBEAT_EVERY_SECONDS = 0.1

T = TypeVar("T")


class StepDone(CamelModel):
    """A warehouse step that finished."""

    order_id: str
    step: str
    finished_at: datetime


class CompensationDone(CamelModel):
    """A compensation that ran; `changed` is False when there was nothing left to undo."""

    order_id: str
    compensation: str
    changed: bool


class FulfillmentActivities:
    """The activities, bound to one warehouse and one marketplace client per worker."""

    def __init__(self, warehouse: Warehouse, marketplace: MarketplaceClient) -> None:
        self._warehouse = warehouse
        self._marketplace = marketplace

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, order: WarehouseOrder) -> Reservation:
        """Hold the order's stock. Fails with `OutOfStock` when there is not enough."""
        return await _warehouse_call("reserve", order.order_id, self._warehouse.reserve(order))

    @activity.defn(name="pick_items")
    async def pick_items(self, order: WarehouseOrder) -> StepDone:
        """Pick the order's items."""
        await _warehouse_call("pick", order.order_id, self._warehouse.pick(order.order_id))
        return StepDone(order_id=order.order_id, step="pick", finished_at=datetime.now(UTC))

    @activity.defn(name="pack_items")
    async def pack_items(self, order: WarehouseOrder) -> StepDone:
        """Pack the order's items."""
        await _warehouse_call("pack", order.order_id, self._warehouse.pack(order.order_id))
        return StepDone(order_id=order.order_id, step="pack", finished_at=datetime.now(UTC))

    @activity.defn(name="ship_order")
    async def ship_order(self, order: WarehouseOrder) -> ShippingLabel:
        """Buy the carrier's label: courier, tracking number and URL."""
        return await _warehouse_call("ship", order.order_id, self._warehouse.create_label(order))

    @activity.defn(name="issue_invoice")
    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """Issue the invoice: the point of no return. Fails with `OrderReleased` if too late."""
        return await _warehouse_call(
            "invoice", order.order_id, self._warehouse.issue_invoice(order)
        )

    @activity.defn(name="release_stock")
    async def release_stock(self, order: WarehouseOrder) -> CompensationDone:
        """Compensation: return the reserved stock. Fails with `AlreadyInvoiced` if too late."""
        changed = await _warehouse_call(
            "release", order.order_id, self._warehouse.release(order.order_id)
        )
        return CompensationDone(
            order_id=order.order_id, compensation="release_stock", changed=changed
        )

    @activity.defn(name="void_label")
    async def void_label(self, order: WarehouseOrder) -> CompensationDone:
        """Compensation: void the shipping label, if the order has one."""
        changed = await _warehouse_call(
            "void label", order.order_id, self._warehouse.void_label(order.order_id)
        )
        return CompensationDone(order_id=order.order_id, compensation="void_label", changed=changed)

    @activity.defn(name="track_parcel")
    async def track_parcel(self, order: WarehouseOrder) -> ParcelStatus:
        """Ask the carrier where the order's parcel is."""
        track = getattr(self._warehouse, "track", None)
        if track is None:  # a warehouse written before tracking: following ends, visibly
            raise ApplicationError(
                f"the warehouse {type(self._warehouse).__name__} has no track(): give it one, "
                "or set TRACKING_POLL_INTERVAL=0s on the API (orders placed from then on do not "
                "follow their parcel)",
                type="TrackingUnsupported",
                non_retryable=True,
            )
        parcel: ParcelStatus = await _warehouse_call("track", order.order_id, track(order))
        return parcel

    @activity.defn(name="send_invoice")
    async def send_invoice(self, notice: InvoiceNotice) -> MarketplaceAnswer:
        """POST the invoice to the marketplace. Every retry carries the same invoiceNumber."""
        answer = await self._marketplace.send_invoice(notice)
        _log_sent(f"invoice {notice.invoice.invoice_number}", notice.marketplace_order_id, answer)
        return answer

    @activity.defn(name="send_tracking")
    async def send_tracking(self, notice: TrackingNotice) -> MarketplaceAnswer:
        """POST the tracking information of the invoice to the marketplace."""
        answer = await self._marketplace.send_tracking(notice)
        _log_sent(
            f"tracking {notice.tracking.tracking_number}", notice.marketplace_order_id, answer
        )
        return answer

    @activity.defn(name="send_tracking_status")
    async def send_tracking_status(self, notice: TrackingStatusNotice) -> MarketplaceAnswer:
        """POST the parcel's tracking events (and whether it is delivered) to the marketplace."""
        answer = await self._marketplace.send_tracking_status(notice)
        count = len(notice.events)
        delivered = (
            "delivered" if notice.is_delivered else f"{count} event{'' if count == 1 else 's'}"
        )
        _log_sent(f"tracking status ({delivered})", notice.marketplace_order_id, answer)
        return answer

    @activity.defn(name="send_cancellation")
    async def send_cancellation(self, notice: CancellationNotice) -> MarketplaceAnswer:
        """POST the seller's own cancellation of an order to the marketplace."""
        answer = await self._marketplace.send_cancellation(notice)
        _log_sent("cancellation", notice.marketplace_order_id, answer)
        return answer

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, to register on a worker."""
        return [
            self.reserve_stock,
            self.pick_items,
            self.pack_items,
            self.ship_order,
            self.issue_invoice,
            self.release_stock,
            self.void_label,
            self.track_parcel,
            self.send_invoice,
            self.send_tracking,
            self.send_tracking_status,
            self.send_cancellation,
        ]


def _log_sent(what: str, marketplace_order_id: str, answer: MarketplaceAnswer) -> None:
    activity.logger.info(
        "%s of %s sent to the marketplace (receipt %s)", what, marketplace_order_id, answer.receipt
    )


async def _warehouse_call(step: str, order_id: str, call: Awaitable[T]) -> T:
    """Run one warehouse call with heartbeats, logging how it ended."""
    started = time.monotonic()
    activity.logger.info("%s started for order %s", step, order_id)
    try:
        # A local activity (the reservation) has no heartbeat: its workflow task stands in.
        async with _heartbeating() if not activity.info().is_local else nullcontext():
            result = await call
    except asyncio.CancelledError:
        activity.logger.info(
            "%s cancelled mid-step for order %s after %.2fs",
            step,
            order_id,
            time.monotonic() - started,
        )
        raise
    except WarehouseError as err:
        raise ApplicationError(str(err), type=type(err).__name__, non_retryable=True) from err
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:
        # A fault retrying cannot fix (a value the warehouse cannot hold, a bug): end the step,
        # so the order is compensated and the error shown, instead of an endless retry.
        activity.logger.exception("%s failed for order %s", step, order_id)
        raise ApplicationError(
            f"{type(err).__name__}: {err}", type="WarehouseFailure", non_retryable=True
        ) from err
    activity.logger.info(
        "%s done for order %s in %.2fs", step, order_id, time.monotonic() - started
    )
    return result


@asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat in the background for as long as the block runs."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)

    beater = asyncio.create_task(beat())
    try:
        yield
    finally:
        beater.cancel()
