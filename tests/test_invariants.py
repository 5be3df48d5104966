"""The invariant checker (devtools/invariants.py) finds nothing on real orders, and finds each
invariant broken on purpose: in the warehouse's own file, or in what the marketplace received."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from devtools.invariants import EXIT_OK, EXIT_VIOLATIONS, find_violations
from tests.stack import Stack, new_order_id, running_stack

SKU = "123456789abc"  # the SKU of the spec's placement example


async def _orders(stack: Stack) -> tuple[str, str]:
    """One order invoiced, one canceled before dispatch."""
    invoiced, canceled = new_order_id(), new_order_id()
    for order_id in (invoiced, canceled):
        assert (await stack.place(order_id)).status_code == 200
    assert (await stack.dispatch(invoiced)).status_code == 200
    assert (await stack.cancel(canceled)).status_code == 200
    await stack.wait_for(invoiced, lambda o: o["invoice"] and o["invoice"]["trackingSentAt"])
    return invoiced, canceled


def _calls(stack: Stack) -> list[dict[str, Any]]:
    return [call.to_json() for call in stack.marketplace.calls()]


def _sql(stack: Stack, statement: str, *params: object) -> None:
    assert stack.warehouse.db_path is not None  # The in-process stack's warehouse is a file.
    with closing(sqlite3.connect(stack.warehouse.db_path)) as connection:
        connection.execute(statement, params)
        connection.commit()


async def test_real_orders_break_no_invariant_and_forged_breakage_is_found(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        invoiced, canceled = await _orders(stack)
        query = f'TaskQueue="{stack.settings.task_queue}"'
        # Visibility is eventually consistent: wait until it lists both orders.
        for _ in range(100):
            listed = [w async for w in stack.client.list_workflows(query)]
            if len(listed) == 2:
                break
            await asyncio.sleep(0.1)

        assert (
            await find_violations(stack.client, stack.warehouse, _calls(stack), query=query) == []
        )

        def rules(found: list[Any]) -> set[tuple[str, str | None]]:
            return {(v.rule, v.order_id) for v in found}

        # What the marketplace received: an invoice for the canceled order, a second number.
        forged = [
            *_calls(stack),
            {"kind": "invoice", "marketplaceOrderId": canceled, "invoiceNumber": "NFe-9"},
            {"kind": "invoice", "marketplaceOrderId": invoiced, "invoiceNumber": "NFe-8"},
        ]
        found = rules(await find_violations(stack.client, stack.warehouse, forged, query=query))
        assert ("invoice-after-cancellation", f"SLR-{canceled}") in found
        assert ("two-invoice-numbers", f"SLR-{invoiced}") in found
        assert ("invoice-number-not-the-orders", f"SLR-{invoiced}") in found

        # The warehouse's file: a canceled order still holding its stock, a unit from nowhere.
        _sql(stack, "UPDATE orders SET state = 'reserved' WHERE order_id = ?", f"SLR-{canceled}")
        _sql(stack, "UPDATE stock SET available = available + 1 WHERE sku = ?", SKU)
        found = rules(await find_violations(stack.client, stack.warehouse, None, query=query))
        assert ("stock-leaked", f"SLR-{canceled}") in found
        assert ("stock-not-conserved", None) in found
        assert ("stock-disagrees-with-ledger", None) in found


async def test_the_command_line_exits_0_when_clean_and_3_on_a_violation(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(temporal_env, tmp_path) as stack:
        await _orders(stack)
        query = f'TaskQueue="{stack.settings.task_queue}"'
        env = os.environ | {
            "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
            "DATA_DIR": str(tmp_path),
        }
        command = [sys.executable, "-m", "devtools.invariants", "--query", query, "--require-final"]
        calls = tmp_path / "calls.jsonl"
        calls.write_text("".join(json.dumps(c) + "\n" for c in _calls(stack)))

        async def run() -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(
                subprocess.run,
                [*command, "--marketplace-calls", str(calls)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        clean = await run()
        assert clean.returncode == EXIT_OK, clean.stdout + clean.stderr
        assert "checked 2 orders" in clean.stdout and ": 0 violations" in clean.stdout

        _sql(stack, "UPDATE stock SET shipped = shipped + 1 WHERE sku = ?", SKU)
        broken = await run()
        assert broken.returncode == EXIT_VIOLATIONS, broken.stdout + broken.stderr
        assert "stock-not-conserved" in broken.stdout
