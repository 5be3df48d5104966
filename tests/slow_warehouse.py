"""A warehouse plugged in through the WAREHOUSE setting, as a deployment plugs in its own: the
simulated one, but slow to release stock, as a real warehouse system may be."""

from __future__ import annotations

import asyncio

from activities.simulated_warehouse import SimulatedWarehouse

RELEASE_SECONDS = 2.0


class SlowReleaseWarehouse(SimulatedWarehouse):
    """Takes RELEASE_SECONDS to release a reservation."""

    async def release(self, order_id: str) -> bool:
        """Release, slowly."""
        await asyncio.sleep(RELEASE_SECONDS)
        return await super().release(order_id)
