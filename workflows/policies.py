"""How long a call to the marketplace may take, and how it is retried: one policy for every
workflow that calls it (the order's invoice, tracking and cancellation; a SKU's change
notifications).

No maximum of attempts, on purpose: what reaches the retry is transient by construction
(activities/marketplace.py turns every error retrying cannot fix, a 4xx or a refused host, into a
non-retryable ApplicationError), and an invoice or a notification must reach the marketplace
however long it is down. Each attempt and its last error show in the Temporal UI's pending
activities (and, for an order, in GET /pvt/orders/{orderId}).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

MARKETPLACE_CALL_TIMEOUT = timedelta(seconds=60)
MARKETPLACE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
)
