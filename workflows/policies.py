"""How long a call to the marketplace may take, and how it is retried: one policy for every
workflow that calls it (the order's invoice, tracking and cancellation; a SKU's change
notifications).

No maximum of attempts: every answer but a 2xx is a failed delivery, retried (a redirect, a 400
from a marketplace being redeployed, a 503 alike), as webhook senders do; only a call that no
attempt can send (an invalid URL, a host the allow-list refuses) ends at once
(activities/marketplace.py). The bound is in time instead: MARKETPLACE_GIVES_UP_AFTER, after which
the order shows `attention` and waits for an operator's `resend_invoice` (workflows/order.py).
Each attempt and its last error show in the Temporal UI's pending activities (and, for an order,
in GET /pvt/orders/{orderId}'s `pendingCalls`).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

MARKETPLACE_CALL_TIMEOUT = timedelta(seconds=60)
# How long one send is retried (schedule-to-close), for every call to the marketplace.
MARKETPLACE_GIVES_UP_AFTER = timedelta(days=1)
MARKETPLACE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
)
