"""Warehouses plugged in through the WAREHOUSE setting, as a deployment plugs in its own: the
simulated one, but with the behaviours a real warehouse system may have and the contract allows
(activities/warehouse.py). Tests choose a behaviour per order by the SKU they order, so that
orders of other tests on the same worker are not affected:

- `slowrelease-*`: a release takes RELEASE_SECONDS.
- `slowreserve-*`: a reservation takes RESERVE_SECONDS.
- `stubborn-*`: pick finishes even when cancelled (a cancellation is a request, not a fact).
- `damaged-*`: pick refuses for good (a SKU found damaged): `DamagedItem`.
- `brokeninvoice-*`: issuing the invoice fails with a fault retrying cannot fix.
- `committedanyway-*`: issuing the invoice commits even when cancelled, then reports the
  cancellation; every later call (the workflow's fetch of what was committed) fails with a fault
  retrying cannot fix.
- `zombiereserve-*`: the reservation is refused as out of stock, while an earlier attempt (on a
  worker cut off from Temporal) commits later: once the order's release has ended, or after
  ZOMBIE_SECONDS if none comes.
- `neverdelivered-*`: the carrier has the parcel in transit, for ever.
- `failreserve-*`: every reservation fails for now (`WarehouseUnavailable`) until the test adds
  the order to `recovered`; `reserve_attempts[order_id]` counts them.

The worker runs in the test's own event loop (tests/stack.py), so `started` lets a test wait
until a slow call is under way.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from contextlib import suppress
from typing import Any

from activities.simulated_warehouse import SimulatedWarehouse
from activities.warehouse import (
    Invoice,
    OutOfStock,
    ParcelStatus,
    Reservation,
    WarehouseError,
    WarehouseOrder,
    WarehouseUnavailable,
)

RELEASE_SECONDS = 2.0
RESERVE_SECONDS = 1.5
ZOMBIE_SECONDS = 10.0

# (call, order_id) -> set once that call has started, e.g. started["release", "SLR-T1-01"].
started: defaultdict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)
# ("zombie reserve", order_id) -> what the late reservation answered (or raised), once it has.
finished: dict[tuple[str, str], Reservation | Exception] = {}
# (call, order_id) -> set once that call has ended, e.g. ended["release", "SLR-T1-01"].
ended: defaultdict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)
# The `failreserve-*` orders whose reservations the warehouse takes again.
recovered: set[str] = set()
# order_id -> how many reservations of a `failreserve-*` order were tried.
reserve_attempts: Counter[str] = Counter()


class DamagedItem(WarehouseError):
    """The SKU was found damaged on the shelf: the order cannot be fulfilled."""


class ScriptedWarehouse(SimulatedWarehouse):
    """The simulated warehouse with the behaviours above, chosen by SKU prefix."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._skus: dict[str, list[str]] = {}
        self._invoiced_anyway: set[str] = set()
        self._zombies: set[asyncio.Task[None]] = set()

    async def reserve(self, order: WarehouseOrder) -> Reservation:
        """Remember the order's SKUs; reserve, slowly for `slowreserve-*`."""
        self._skus[order.order_id] = [line.sku for line in order.lines]
        started["reserve", order.order_id].set()
        if self._has(order.order_id, "failreserve-"):
            reserve_attempts[order.order_id] += 1
            if order.order_id not in recovered:
                raise WarehouseUnavailable(
                    f"warehouse unavailable: the reservation of {order.order_id} timed out "
                    f"(try {reserve_attempts[order.order_id]})"
                )
        if self._has(order.order_id, "slowreserve-"):
            await asyncio.sleep(RESERVE_SECONDS)
        if self._has(order.order_id, "zombiereserve-"):
            zombie = asyncio.create_task(self._late_reserve(order))
            self._zombies.add(zombie)  # (asyncio keeps only a weak reference to a task)
            zombie.add_done_callback(self._zombies.discard)
            raise OutOfStock(order.lines[0].sku, order.lines[0].quantity, 0)
        return await super().reserve(order)

    async def _late_reserve(self, order: WarehouseOrder) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(ended["release", order.order_id].wait(), ZOMBIE_SECONDS)
        try:
            finished["zombie reserve", order.order_id] = await super().reserve(order)
        except WarehouseError as refused:
            finished["zombie reserve", order.order_id] = refused

    async def pick(self, order_id: str) -> None:
        """Pick; `stubborn-*` finishes even when cancelled, `damaged-*` refuses."""
        started["pick", order_id].set()
        if self._has(order_id, "damaged-"):
            raise DamagedItem(f"order {order_id}: an item was found damaged at pick")
        if self._has(order_id, "stubborn-"):
            step = asyncio.ensure_future(super().pick(order_id))
            while not step.done():
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    continue  # Heard the cancellation; finishes the pick all the same.
            return
        await super().pick(order_id)

    async def issue_invoice(self, order: WarehouseOrder) -> Invoice:
        """Issue the invoice; `brokeninvoice-*` fails with a fault retrying cannot fix."""
        if self._has(order.order_id, "brokeninvoice-"):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        if self._has(order.order_id, "committedanyway-"):
            return await self._invoice_despite_cancellation(order)
        return await super().issue_invoice(order)

    async def _invoice_despite_cancellation(self, order: WarehouseOrder) -> Invoice:
        if order.order_id in self._invoiced_anyway:
            raise LookupError(f"the ERP lost track of the invoice of {order.order_id}")
        started["invoice", order.order_id].set()
        work = asyncio.ensure_future(super().issue_invoice(order))
        cancelled = False
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                cancelled = True  # Heard it; the ERP commits all the same.
        self._invoiced_anyway.add(order.order_id)
        if cancelled:
            raise asyncio.CancelledError
        return work.result()

    async def release(self, order_id: str) -> bool:
        """Release, slowly for `slowrelease-*`."""
        started["release", order_id].set()
        if self._has(order_id, "slowrelease-"):
            await asyncio.sleep(RELEASE_SECONDS)
        try:
            return await super().release(order_id)
        finally:
            ended["release", order_id].set()

    async def track(self, order: WarehouseOrder) -> ParcelStatus:
        """The parcel's journey; in transit for ever for `neverdelivered-*`."""
        parcel = await super().track(order)
        if any(line.sku.startswith("neverdelivered-") for line in order.lines):
            return ParcelStatus(events=parcel.events[:1], delivered=False)
        return parcel

    def _has(self, order_id: str, prefix: str) -> bool:
        return any(sku.startswith(prefix) for sku in self._skus.get(order_id, []))
