"""The order as Temporal shows it without asking the order: its current details in the UI, its
search attributes in the UI's list (workflows/search.py), and its memo, which
GET /pvt/orders/{orderId} answers from, marked not live, while no worker answers the order's query
(api/stored_order.py). Only what changed is upserted: each upsert is an event in the history.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import search
    from workflows.lifecycle import is_final
    from workflows.messages import OrderStatus, OrderView

# The memo's fields: named as in the order's view (camelCase), with the invoice's number, date
# and value (not its sending state, which changes more often).
MEMO_FIELDS: dict[str, Any] = dict.fromkeys(
    (
        "status",
        "status_reason",
        "attention",
        "placed_at",
        "reserved_at",
        "lock_expires_at",
        "dispatched_at",
        "invoiced_at",
        "delivered_at",
        "canceled_at",
        "expired_at",
        "closes_at",
    ),
    True,
) | {"invoice": {"invoice_number", "issuance_date", "invoice_value"}}


class Publisher:
    """Publishes an order's view to Temporal (see the module's docstring)."""

    def __init__(self) -> None:
        # The search attributes and the memo as Temporal has them: those the API started the
        # order with (api/order_calls.py), so that its first task upserts nothing.
        self._published: dict[str, object] = {
            pair.key.name: pair.value for pair in workflow.info().typed_search_attributes
        }
        self._published.setdefault(search.FULFILLMENT_STEP.name, "")
        self._memo: dict[str, object] = dict(workflow.memo())

    def publish(self, view: OrderView, doing: str | None, invoice_not_delivered: bool) -> None:
        workflow.set_current_details(current_details(view, doing))
        self._upsert_memo(view)
        self._upsert_search_attributes(view, invoice_not_delivered)

    def _upsert_memo(self, view: OrderView) -> None:
        values = view.model_dump(mode="json", include=MEMO_FIELDS)
        changed = {name: value for name, value in values.items() if self._memo.get(name) != value}
        if changed:
            # None removes a key: an attention that is over, say.
            workflow.upsert_memo(changed)
            self._memo.update(changed)

    def _upsert_search_attributes(self, view: OrderView, invoice_not_delivered: bool) -> None:
        values: dict[str, object] = {
            search.MARKETPLACE_ORDER_ID.name: view.marketplace_order_id,
            search.SELLER_ORDER_ID.name: view.order_id,
            search.ORDER_STATUS.name: str(view.status),
            search.FULFILLMENT_STEP.name: str(view.current_step or ""),
            search.INVOICE_NOT_DELIVERED.name: invoice_not_delivered,
        }
        changed = {
            name: value for name, value in values.items() if self._published.get(name) != value
        }
        if not changed:
            return
        keys = {key.name: key for key in search.ALL}
        workflow.upsert_search_attributes(
            [
                keys[name].value_unset() if value == "" else keys[name].value_set(value)  # type: ignore[arg-type]
                for name, value in changed.items()
            ]
        )
        self._published.update(changed)


def current_details(view: OrderView, doing: str | None = None) -> str:
    """What the Temporal UI shows as the order's current details, in one line."""
    details = [f"**{view.status}**"]
    if doing:
        details.append(doing)
    elif view.current_step and view.status == OrderStatus.FULFILLING:
        details.append(f"step: {view.current_step}")
    if view.status_reason:
        details.append(view.status_reason)
    if view.attention:
        details.append(f"attention: {view.attention}")
    if view.invoice is not None:
        details.append(f"invoice {view.invoice.invoice_number}")
    if view.parcel_workflow_id and view.status == OrderStatus.INVOICED:
        details.append(f"parcel followed by {view.parcel_workflow_id}")
    if is_final(view.status) and view.closes_at is not None:
        details.append(f"open for late calls until {view.closes_at:%Y-%m-%d %H:%M:%S} UTC")
    return " · ".join(details)
