"""The search attributes an order shows in the Temporal UI's list, so that ops can ask
`OrderStatus="fulfilling" AND FulfillmentStep="pack"` or `InvoiceNotDelivered=true`.

They must be registered on the namespace before an order upserts them: `make run` and the tests
start the dev server with `--search-attribute`, compose runs a job, and every worker checks on start
(and registers what is missing when it may: worker.py).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
FULFILLMENT_STEP = SearchAttributeKey.for_keyword("FulfillmentStep")
MARKETPLACE_ORDER_ID = SearchAttributeKey.for_keyword("MarketplaceOrderId")
SELLER_ORDER_ID = SearchAttributeKey.for_keyword("SellerOrderId")
# True while the order's invoice has not reached the marketplace for good (refused, not retried).
INVOICE_NOT_DELIVERED = SearchAttributeKey.for_bool("InvoiceNotDelivered")

ALL = (ORDER_STATUS, FULFILLMENT_STEP, MARKETPLACE_ORDER_ID, SELLER_ORDER_ID, INVOICE_NOT_DELIVERED)
# Each attribute with its type as the `temporal` CLI names it (`--search-attribute Name=Type`).
REGISTERED: dict[str, str] = {
    ORDER_STATUS.name: "Keyword",
    FULFILLMENT_STEP.name: "Keyword",
    MARKETPLACE_ORDER_ID.name: "Keyword",
    SELLER_ORDER_ID.name: "Keyword",
    INVOICE_NOT_DELIVERED.name: "Bool",
}


def at_start(marketplace_order_id: str, order_id: str, status: str) -> TypedSearchAttributes:
    """What an order is started with, so that it is listed from its first moment and its first
    workflow task does not upsert them (no step yet: FulfillmentStep unset)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(MARKETPLACE_ORDER_ID, marketplace_order_id),
            SearchAttributePair(SELLER_ORDER_ID, order_id),
            SearchAttributePair(ORDER_STATUS, status),
            SearchAttributePair(INVOICE_NOT_DELIVERED, False),
        ]
    )


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` for each, for `temporal server start-dev`."""
    return [
        flag
        for name, kind in REGISTERED.items()
        for flag in ("--search-attribute", f"{name}={kind}")
    ]
