"""The one place that names the task queues and builds order ids (and the SKU workflows' ids).

The seller `orderId` and the Temporal workflow id are pure functions of the marketplace's
`marketplaceOrderId`, so every endpoint reaches the workflow straight from the request (either id
in the path, or the body's `marketplaceOrderId`) without a visibility lookup, which is only
eventually consistent.
"""

from __future__ import annotations

import re

DEFAULT_TASK_QUEUE = "vtex-seller-orders"
SKU_TASK_QUEUE_SUFFIX = "-sku-changes"

SELLER_ORDER_PREFIX = "SLR-"
WORKFLOW_PREFIX = "order-"

# Letters, digits and . _ : - (VTEX ids look like 1138342255777-01 or v12772213qst-02). Anything
# else would have to be escaped in the marketplace URLs and in the Temporal UI's links.
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$"
_ORDER_ID = re.compile(ORDER_ID_PATTERN)


def is_valid_order_id(value: str) -> bool:
    """Whether `value` can be a marketplaceOrderId or a seller orderId."""
    return bool(_ORDER_ID.fullmatch(value))


def seller_order_id(marketplace_order_id: str) -> str:
    """The seller's `orderId` for a marketplace order, e.g. `SLR-1138342255777-01`."""
    return f"{SELLER_ORDER_PREFIX}{marketplace_order_id}"


def workflow_id(marketplace_order_id: str) -> str:
    """The Temporal workflow id of a marketplace order, e.g. `order-1138342255777-01`."""
    return f"{WORKFLOW_PREFIX}{marketplace_order_id}"


PARCEL_PREFIX = "parcel-"


def parcel_workflow_id(marketplace_order_id: str) -> str:
    """The workflow that follows an order's parcel, e.g. `parcel-1138342255777-01`: a prefix of
    its own, so that no order's id (`order-...`) can be another order's parcel's."""
    return f"{PARCEL_PREFIX}{marketplace_order_id}"


def marketplace_ids_for_path(path_id: str) -> list[str]:
    """The marketplaceOrderIds a path id may stand for, most likely first.

    VTEX puts the seller `orderId` in the path, but its own examples also use the
    `marketplaceOrderId`. `SLR-123` is the seller id of marketplace order `123`, unless a
    marketplace numbers its own orders `SLR-...`: then it is tried as is, second.
    """
    if path_id.startswith(SELLER_ORDER_PREFIX) and len(path_id) > len(SELLER_ORDER_PREFIX):
        return [path_id[len(SELLER_ORDER_PREFIX) :], path_id]
    return [path_id]


def path_names_order(path_id: str, marketplace_order_id: str) -> bool:
    """Whether a path id is this marketplace order's own id or its seller id."""
    return path_id in (marketplace_order_id, seller_order_id(marketplace_order_id))


def sku_task_queue(task_queue: str) -> str:
    """The SKU change-notification workflows' task queue, beside the orders' one."""
    return f"{task_queue}{SKU_TASK_QUEUE_SUFFIX}"


def sku_changes_workflow_id(task_queue: str, sku: str) -> str:
    """The id of a SKU's change-notification workflow, e.g.
    `sku-changes-vtex-seller-orders-2000037`: one per SKU and deployment (its task queue),
    whichever worker's relay starts it. Workflow ids
    are per namespace: without the task queue, two sellers' deployments sharing a namespace would
    signal each other's."""
    return f"sku-changes-{task_queue}-{sku}"


# Update ids are fixed per order: a retried call carries the same id, so Temporal answers it
# with the first call's outcome, even after the workflow has closed.
PLACE_UPDATE_ID = "place"
DISPATCH_UPDATE_ID = "dispatch"
CANCEL_UPDATE_ID = "cancel"
