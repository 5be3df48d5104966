"""Logs a person can follow and a log pipeline can parse: one line per event, and on every line
about an order its `marketplaceOrderId`, `orderId` and `workflowId`.

`LOG_FORMAT=json` writes one JSON object per line (python-json-logger); the default is one line of
text, the ids appended in brackets. Lines from workflows and activities get the ids from the
Temporal SDK's own record extras (`temporal_workflow`, `temporal_activity`); the API passes them
with `order_fields()`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import temporalio.activity
import temporalio.workflow
from pythonjsonlogger.json import JsonFormatter

from workflows import ids

ORDER_FIELDS = ("marketplaceOrderId", "orderId", "workflowId")
_ORDER_PATH = re.compile(r"^/pvt/orders/([^/?]+)")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def order_fields(marketplace_order_id: str) -> dict[str, str]:
    """The ids of an order, as `extra=` of a log call."""
    return {
        "marketplaceOrderId": marketplace_order_id,
        "orderId": ids.seller_order_id(marketplace_order_id),
        "workflowId": ids.workflow_id(marketplace_order_id),
    }


class OrderIds(logging.Filter):
    """Put the order's ids on every record a workflow or activity of an order logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids (never drops a record)."""
        if getattr(record, "marketplaceOrderId", None):
            return True
        temporal: dict[str, Any] = (
            getattr(record, "temporal_workflow", None)
            or getattr(record, "temporal_activity", None)
            or {}
        )
        workflow_id = str(temporal.get("workflow_id", ""))
        marketplace_order_id = None
        if workflow_id.startswith(ids.WORKFLOW_PREFIX):
            marketplace_order_id = workflow_id[len(ids.WORKFLOW_PREFIX) :]
        elif record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # (client, method, path, HTTP version, status): a call on one order names it.
            path = _ORDER_PATH.search(str(record.args[2] if len(record.args) > 2 else ""))
            if path and ids.is_valid_order_id(path[1]):
                marketplace_order_id = ids.marketplace_ids_for_path(path[1])[0]
        if marketplace_order_id:
            for name, value in order_fields(marketplace_order_id).items():
                setattr(record, name, value)
        return True


# Characters that would end or break a text log line: C0 and C1 controls, Unicode's line breaks.
# A backslash too, so that a quoted "\n" (two characters) is not read as an escaped line break.
_LINE_BREAKERS = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TextWithIds(logging.Formatter):
    """The text format, with the order's ids appended when the record has them. A message is
    one line whatever it quotes (a cancellation's reason is the marketplace's text): its line
    breaks and control characters are written escaped, so none can forge a line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The message on one line."""
        if _LINE_BREAKERS.search(record.message):
            record = logging.makeLogRecord(record.__dict__)
            record.message = _LINE_BREAKERS.sub(_escaped, record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        """One line."""
        line = super().format(record)
        if getattr(record, "marketplaceOrderId", None):
            line += " [" + " ".join(f"{n}={getattr(record, n)}" for n in ORDER_FIELDS) + "]"
        return line


def configure_logging(log_format: str | None = None) -> None:
    """One line per event for every process: text, or JSON with LOG_FORMAT=json."""
    log_format = (log_format or os.environ.get("LOG_FORMAT", "text")).lower()
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    else:
        formatter = TextWithIds(TEXT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    handler.setFormatter(formatter)
    handler.addFilter(OrderIds())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # One line per HTTP call to the marketplace is noise next to the activity's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Our messages name the order and the ids follow as fields; the SDK's appended dict would
    # double each line.
    temporalio.workflow.logger.workflow_info_on_message = False
    temporalio.activity.logger.activity_info_on_message = False
