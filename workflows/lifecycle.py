"""What each order status allows, written once for the workflow and the API.

An order moves only forward, and only along these arrows:

    reserving ──▶ placed ──dispatch──▶ fulfilling ──invoice committed──▶ invoiced ──▶ delivered
        │           │  │                   │                                ▲
        │           │  └─lockTTL─▶ expiring ──▶ expired                     │ release refused:
        │           │                                                       │ the invoice won
        └───────────┴────cancel / failure──▶ canceling ──▶ canceled ────────┘ (canceling ▶ invoiced)

`canceling` and `expiring` are entered *before* the stock is given back, so that no dispatch can be
accepted while a compensation undoes the work it would start.
"""

from __future__ import annotations

from workflows.messages import FINAL_STATUSES, OrderStatus

S = OrderStatus

NEXT_STATUSES: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.RESERVING: frozenset({S.PLACED, S.CANCELING, S.CANCELED}),
    S.PLACED: frozenset({S.FULFILLING, S.CANCELING, S.EXPIRING}),
    S.FULFILLING: frozenset({S.INVOICED, S.CANCELING}),
    S.CANCELING: frozenset({S.CANCELED, S.INVOICED}),
    S.EXPIRING: frozenset({S.EXPIRED}),
    S.INVOICED: frozenset({S.DELIVERED}),
    S.DELIVERED: frozenset(),
    S.CANCELED: frozenset(),
    S.EXPIRED: frozenset(),
}

# Where a cancellation, once it reaches the order, is confirmed: the order will not be fulfilled.
CANCEL_CONFIRMED_IN = frozenset({S.CANCELED, S.EXPIRED})
# Where a cancellation is refused: the invoice is committed, the point of no return is behind.
CANCEL_REFUSED_IN = frozenset({S.INVOICED, S.DELIVERED})
# Where a cancellation starts the compensation (the order moves to `canceling`).
CANCEL_STARTS_IN = frozenset({S.RESERVING, S.PLACED, S.FULFILLING})


def can_move(current: OrderStatus, target: OrderStatus) -> bool:
    """Whether an order in `current` may move to `target`."""
    return target in NEXT_STATUSES[current]


def dispatch_refusal(status: OrderStatus) -> str | None:
    """The refusal `type` of a *new* dispatch in `status`, or None if it is accepted.

    `reserving` accepts: the dispatch waits for the reservation to end, then is decided again.
    """
    if status in (S.RESERVING, S.PLACED):
        return None
    if status in (S.EXPIRING, S.EXPIRED):
        return "OrderExpired"
    if status in (S.CANCELING, S.CANCELED):
        return "OrderCanceled"
    if status in CANCEL_REFUSED_IN:
        return "OrderInvoiced"
    return "OrderAlreadyDispatched"


def is_final(status: OrderStatus) -> bool:
    """Whether the order's fate is settled (invoiced or delivered, canceled, expired)."""
    return status in FINAL_STATUSES
