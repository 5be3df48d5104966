"""The invariant checker: does every order agree with the warehouse and with the marketplace?

Tests run it after their orders settle; ops run it against a live deployment:

    python -m devtools.invariants [--query 'WorkflowType="OrderWorkflow"'] \
        [--marketplace-calls http://127.0.0.1:8900/calls | calls.jsonl] [--require-final]

It reads every order workflow that the visibility query lists (open or closed) through its `order`
query, the simulated warehouse's stock, ledger and orders (WAREHOUSE_URL, or the SQLite file in
DATA_DIR / WAREHOUSE_DB, as the worker does), and, when given, what the marketplace received (the
fake marketplace's `GET /calls`, or a JSON-lines file of the same records). It prints one line per
violation and a summary.

Exit codes, its own so that a script can tell them apart (an uncaught Python exception exits 1;
see temporalio/sdk-python#300 on exit codes):
    0  no violation
    3  violations found
    2  could not check (Temporal unreachable, an order that could not be read)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from temporalio.client import Client

import temporal_client
from activities.simulated_warehouse import SimulatedWarehouse
from codec import data_converter
from config import get_settings
from workflows.lifecycle import is_final
from workflows.messages import OrderStatus, OrderView
from workflows.order import OrderWorkflow

# The warehouse's tables, as `SimulatedWarehouse.snapshot` reads them.
Tables = dict[str, list[dict[str, Any]]]

DEFAULT_QUERY = 'WorkflowType="OrderWorkflow"'
EXIT_OK, EXIT_UNCHECKED, EXIT_VIOLATIONS = 0, 2, 3
# The warehouse's record of an order in each status (None: no record at all).
WAREHOUSE_STATES: dict[OrderStatus, set[str | None]] = {
    OrderStatus.RESERVING: {None, "reserved"},
    OrderStatus.PLACED: {"reserved"},
    OrderStatus.FULFILLING: {"reserved", "invoiced"},
    OrderStatus.CANCELING: {"reserved", "released", "invoiced"},
    OrderStatus.EXPIRING: {"reserved", "released"},
    OrderStatus.INVOICED: {"invoiced"},
    OrderStatus.DELIVERED: {"invoiced"},
    OrderStatus.CANCELED: {None, "released"},
    OrderStatus.EXPIRED: {"released"},
}


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    rule: str
    order_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.order_id or '-'}: {self.detail}"


@dataclass
class Report:
    """What was checked, and what was found."""

    orders: int
    skus: int
    marketplace_calls: int | None
    violations: list[Violation]
    unreadable: list[str]

    def summary(self) -> str:
        """One line for people."""
        calls = "" if self.marketplace_calls is None else f", {self.marketplace_calls} calls"
        unread = f", {len(self.unreadable)} unreadable" if self.unreadable else ""
        return (
            f"checked {self.orders} orders, {self.skus} SKUs{calls}{unread}: "
            f"{len(self.violations)} violations"
        )


# What the marketplace received: the calls, or a function that reads them. A function is called
# only once the orders have been read, so that an invoice an order says it sent is already there.
MarketplaceCalls = list[dict[str, Any]] | Callable[[], Awaitable[list[dict[str, Any]]]] | None


async def find_violations(
    client: Client,
    warehouse: SimulatedWarehouse,
    marketplace_calls: MarketplaceCalls,
    *,
    query: str = DEFAULT_QUERY,
    require_final: bool = False,
) -> list[Violation]:
    """Every broken invariant among the orders `query` lists; see `check`."""
    report = await check(
        client, warehouse, marketplace_calls, query=query, require_final=require_final
    )
    return report.violations + [
        Violation("order-unreadable", order_id, "its state could not be queried")
        for order_id in report.unreadable
    ]


async def check(
    client: Client,
    warehouse: SimulatedWarehouse,
    marketplace_calls: MarketplaceCalls,
    *,
    query: str = DEFAULT_QUERY,
    require_final: bool = False,
) -> Report:
    """Check stock conservation, each order against the warehouse and the marketplace."""
    views, unreadable = await _read_orders(client, query)
    if callable(marketplace_calls):
        marketplace_calls = await marketplace_calls()
    tables = await warehouse.snapshot()
    records = _warehouse_orders(tables)
    violations = _stock_violations(tables)
    calls_by_order: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in marketplace_calls or []:
        calls_by_order[call.get("marketplaceOrderId") or ""].append(call)
    for view, closed in views:
        violations += _order_violations(view, closed, records.get(view.order_id), require_final)
        if marketplace_calls is not None:
            violations += _marketplace_violations(view, calls_by_order[view.marketplace_order_id])
    skus = len(tables["stock"])
    return Report(
        orders=len(views),
        skus=skus,
        marketplace_calls=None if marketplace_calls is None else len(marketplace_calls),
        violations=violations,
        unreadable=unreadable,
    )


async def _read_orders(
    client: Client, query: str
) -> tuple[list[tuple[OrderView, bool]], list[str]]:
    views: list[tuple[OrderView, bool]] = []
    unreadable: list[str] = []
    semaphore = asyncio.Semaphore(20)

    async def read(workflow_id: str, closed: bool) -> None:
        handle = client.get_workflow_handle_for(OrderWorkflow.run, workflow_id)
        async with semaphore:
            try:
                view = await asyncio.wait_for(handle.query(OrderWorkflow.order), 30)
            except Exception:
                unreadable.append(workflow_id)
                return
        views.append((view, closed))

    reads = []
    async for execution in client.list_workflows(query):
        if execution.workflow_type != "OrderWorkflow":
            continue
        closed = execution.close_time is not None
        reads.append(read(execution.id, closed))
    await asyncio.gather(*reads)
    views.sort(key=lambda pair: pair[0].order_id)
    return views, sorted(unreadable)


def _warehouse_orders(tables: Tables) -> dict[str, dict[str, Any]]:
    return {row["order_id"]: row for row in tables["orders"]}


def _stock_violations(tables: Tables) -> list[Violation]:
    """Per SKU: the columns add up to what was restocked, and each equals the ledger's sum."""
    moved: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in tables["ledger"]:
        moved[row["sku"]][row["movement"]] += row["quantity"]
    violations = []
    for row in tables["stock"]:
        sku, sums = row["sku"], moved[row["sku"]]
        stocked = sums["restock"] - sums["writeoff"]
        total = row["available"] + row["reserved"] + row["shipped"]
        if total != stocked:
            violations.append(
                Violation(
                    "stock-not-conserved",
                    None,
                    f"SKU {sku}: available {row['available']} + reserved {row['reserved']} + "
                    f"shipped {row['shipped']} = {total}, but {stocked} was stocked",
                )
            )
        expected = {
            "available": stocked - sums["reserve"] + sums["release"],
            "reserved": sums["reserve"] - sums["release"] - sums["ship"],
            "shipped": sums["ship"],
        }
        for column, value in expected.items():
            if row[column] != value:
                violations.append(
                    Violation(
                        "stock-disagrees-with-ledger",
                        None,
                        f"SKU {sku}: {column} is {row[column]}, the ledger adds up to {value}",
                    )
                )
    return violations


def _order_violations(
    view: OrderView, closed: bool, record: dict[str, Any] | None, require_final: bool
) -> list[Violation]:
    violations = []
    state = record["state"] if record is not None else None
    if state not in WAREHOUSE_STATES[view.status]:
        rule = "stock-leaked" if is_final(view.status) and state == "reserved" else None
        violations.append(
            Violation(
                rule or "order-disagrees-with-warehouse",
                view.order_id,
                f"the order is {view.status}, the warehouse has it {state or 'not at all'}",
            )
        )
    if view.status in (OrderStatus.INVOICED, OrderStatus.DELIVERED) and record is not None:
        number = view.invoice.invoice_number if view.invoice else None
        if number != record["invoice_number"]:
            violations.append(
                Violation(
                    "invoice-disagrees-with-warehouse",
                    view.order_id,
                    f"the order has invoice {number}, the warehouse {record['invoice_number']}",
                )
            )
    if not is_final(view.status) and (closed or require_final):
        violations.append(
            Violation(
                "order-stuck",
                view.order_id,
                f"the order is still {view.status}"
                + (" and its workflow has closed" if closed else "")
                + (f" (step {view.current_step})" if view.current_step else ""),
            )
        )
    if view.cancellation is not None and view.cancellation.outcome == "confirmed":
        if view.status not in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
            violations.append(
                Violation(
                    "confirmed-cancellation-not-honored",
                    view.order_id,
                    f"the cancellation was confirmed but the order is {view.status}",
                )
            )
    return violations


def _marketplace_violations(view: OrderView, calls: list[dict[str, Any]]) -> list[Violation]:
    violations = []
    invoices = [call for call in calls if call.get("kind") == "invoice"]
    numbers = {call.get("invoiceNumber") for call in invoices}
    confirmed = view.cancellation is not None and view.cancellation.outcome == "confirmed"
    if invoices and (confirmed or view.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED)):
        violations.append(
            Violation(
                "invoice-after-cancellation",
                view.order_id,
                f"the order is {view.status} (cancellation "
                f"{view.cancellation.outcome if view.cancellation else 'none'}) but the "
                f"marketplace received {len(invoices)} invoice call(s) {sorted(map(str, numbers))}",
            )
        )
    if len(numbers) > 1:
        violations.append(
            Violation(
                "two-invoice-numbers",
                view.order_id,
                f"the marketplace received invoice numbers {sorted(map(str, numbers))}",
            )
        )
    own = view.invoice.invoice_number if view.invoice else None
    if numbers and own is not None and numbers != {own}:
        violations.append(
            Violation(
                "invoice-number-not-the-orders",
                view.order_id,
                f"the order's invoice is {own}, the marketplace got {sorted(map(str, numbers))}",
            )
        )
    delivered = any(200 <= int(call.get("status", 0)) < 300 for call in invoices)
    if view.invoice is not None and view.invoice.sent_at is not None and not delivered:
        violations.append(
            Violation(
                "invoice-sent-but-not-received",
                view.order_id,
                "the order says its invoice was sent, the marketplace took no invoice call",
            )
        )
    cancels = [call for call in calls if call.get("kind") == "cancel"]
    if cancels and view.status != OrderStatus.CANCELED:
        violations.append(
            Violation(
                "seller-cancellation-of-a-live-order",
                view.order_id,
                f"the seller told the marketplace it canceled, but the order is {view.status}",
            )
        )
    return violations


async def load_marketplace_calls(source: str) -> list[dict[str, Any]]:
    """The calls the marketplace received: a `GET /calls` URL, or a JSON-lines file."""
    if source.startswith(("http://", "https://")):
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(source)
            response.raise_for_status()
            calls: list[dict[str, Any]] = response.json()
            return calls
    try:
        text = await asyncio.to_thread(Path(source).read_text, encoding="utf-8")
    except FileNotFoundError:
        return []  # The fake marketplace writes its journal on the first call it receives.
    lines = text.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def _main(args: argparse.Namespace) -> int:
    try:
        settings = get_settings()
    except ValidationError as err:  # e.g. a TLS certificate that cannot work
        print(
            f"could not check: {err.errors()[0]['msg'].removeprefix('Value error, ')}",
            file=sys.stderr,
        )
        return EXIT_UNCHECKED
    try:
        # TemporalRefusedError, a refused TLS handshake or API key, is a RuntimeError too.
        client = await temporal_client.connect(
            settings, data_converter=data_converter(settings.encryption_key)
        )
        source = args.marketplace_calls
        report = await check(
            client,
            SimulatedWarehouse.from_settings(settings),
            (lambda: load_marketplace_calls(source)) if source else None,
            query=args.query,
            require_final=args.require_final,
        )
    except (RuntimeError, OSError, httpx.HTTPError) as err:
        print(f"could not check: {err}", file=sys.stderr)
        return EXIT_UNCHECKED
    for violation in report.violations:
        print(violation)
    for workflow_id in report.unreadable:
        print(f"order-unreadable: {workflow_id}: its state could not be queried (is a worker up?)")
    print(report.summary())
    if report.violations:
        return EXIT_VIOLATIONS
    return EXIT_UNCHECKED if report.unreadable else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Check, print, and return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", default=DEFAULT_QUERY, help="Temporal visibility query")
    parser.add_argument(
        "--marketplace-calls", help="the fake marketplace's GET /calls URL, or a JSON-lines file"
    )
    parser.add_argument(
        "--require-final", action="store_true", help="an order not yet ended is a violation"
    )
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
