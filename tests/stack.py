"""The service as tests run it: a real worker, the real API over HTTP, a fake marketplace."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sysconfig
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from openapi_schema_validator import OAS30Validator
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.simulated_warehouse import SimulatedWarehouse
from activities.tls import verifying_context
from config import Settings
from devtools.fake_marketplace import FakeMarketplaceState
from devtools.stack import local_stack
from workflows import ids
from workflows.messages import OrderView
from workflows.order import OrderWorkflow

CONTRACT_DIR = Path(__file__).resolve().parent.parent / "contract"
# The longest pause between two reads of an order that a test waits on (Stack.wait_for).
POLL_CAP_SECONDS = 0.1


@lru_cache
def fulfillment_spec() -> dict[str, Any]:
    """VTEX's OpenAPI file for the calls the marketplace makes to the seller."""
    spec: dict[str, Any] = json.loads(
        (CONTRACT_DIR / "vtex-external-seller-fulfillment.openapi.json").read_text()
    )
    return spec


def assert_matches_schema(instance: Any, schema_name: str) -> None:
    """Validate `instance` against `components/schemas/<schema_name>` of the fulfillment spec."""
    spec = fulfillment_spec()
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    errors = sorted(OAS30Validator(root).iter_errors(instance), key=str)
    assert not errors, f"not a valid {schema_name}: {[e.message for e in errors]}"


def placement_example(marketplace_order_id: str, endpoint: str, **changes: Any) -> dict[str, Any]:
    """The spec's own placement example, with a fresh id and our fake marketplace's URL."""
    operation = fulfillment_spec()["paths"]["/pvt/orders"]["post"]
    body: dict[str, Any] = copy.deepcopy(
        operation["requestBody"]["content"]["application/json"]["example"]
    )
    body["marketplaceOrderId"] = marketplace_order_id
    body["marketplaceServicesEndpoint"] = endpoint
    body.update(changes)
    return body


def request_example(call: str, marketplace_order_id: str) -> dict[str, Any]:
    """The spec's own `requestOrderId` example of `fulfill` or `cancel`, naming this order."""
    paths = fulfillment_spec()["paths"]
    (path,) = [path for path in paths if path.endswith(f"}}/{call}")]
    content = paths[path]["post"]["requestBody"]["content"]["application/json"]
    assert content["schema"]["$ref"].endswith("/requestOrderId")
    body: dict[str, Any] = copy.deepcopy(content["example"])
    body["marketplaceOrderId"] = marketplace_order_id
    return body


def new_order_id() -> str:
    """A marketplaceOrderId no other test uses."""
    return f"T{uuid.uuid4().hex[:12]}-01"


@dataclass
class Stack:
    """Everything a test talks to."""

    settings: Settings
    client: Client
    http: httpx.AsyncClient
    # The ops listener (metrics, docs, the codec).
    ops: httpx.AsyncClient
    marketplace_url: str
    marketplace: FakeMarketplaceState
    warehouse: SimulatedWarehouse

    @property
    def endpoint(self) -> str:
        """A marketplaceServicesEndpoint with a path and query, as VTEX sends them."""
        return f"{self.marketplace_url}/api/oms?an=teststore"

    def handle(self, marketplace_order_id: str) -> WorkflowHandle[OrderWorkflow, OrderView]:
        """The order's workflow."""
        return self.client.get_workflow_handle_for(
            OrderWorkflow.run, ids.workflow_id(marketplace_order_id)
        )

    async def place(self, marketplace_order_id: str, **changes: Any) -> httpx.Response:
        """POST /pvt/orders with the spec's example body."""
        body = placement_example(marketplace_order_id, self.endpoint, **changes)
        return await self.http.post("/pvt/orders", json=body)

    async def dispatch(
        self, marketplace_order_id: str, path_id: str | None = None
    ) -> httpx.Response:
        """POST /pvt/orders/{orderId}/fulfill."""
        path_id = path_id or ids.seller_order_id(marketplace_order_id)
        return await self.http.post(
            f"/pvt/orders/{path_id}/fulfill", json={"marketplaceOrderId": marketplace_order_id}
        )

    async def cancel(
        self, marketplace_order_id: str, path_id: str | None = None, **extra: Any
    ) -> httpx.Response:
        """POST /pvt/orders/{orderId}/cancel."""
        path_id = path_id or ids.seller_order_id(marketplace_order_id)
        return await self.http.post(
            f"/pvt/orders/{path_id}/cancel",
            json={"marketplaceOrderId": marketplace_order_id, **extra},
        )

    async def order(self, marketplace_order_id: str) -> dict[str, Any]:
        """GET /pvt/orders/{orderId}, asserting 200."""
        response = await self.http.get(f"/pvt/orders/{ids.seller_order_id(marketplace_order_id)}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for(
        self, marketplace_order_id: str, predicate: Any, within: float = 20.0
    ) -> dict[str, Any]:
        """Poll GET /pvt/orders/{orderId} until `predicate(order)` holds: every 20 ms at first,
        then less often, at least every POLL_CAP_SECONDS (a step the tests catch mid-way lasts
        longer). Each read is a query and a describe: ~14 ms of CPU across the API, the worker
        and the dev server, spent by every wait of the suite at every poll."""
        deadline = asyncio.get_running_loop().time() + within
        pause = 0.02
        while True:
            order = await self.order(marketplace_order_id)
            if predicate(order):
                return order
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; the order is {order}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_CAP_SECONDS)


@asynccontextmanager
async def running_stack(
    env: WorkflowEnvironment, data_dir: Path, client: Client | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    """A fake marketplace, a worker and the API on a task queue of their own, sharing `client`
    (the environment's, unless given another, e.g. one that encrypts payloads)."""
    client = client or env.client
    values: dict[str, Any] = {
        "task_queue": f"test-{uuid.uuid4()}",
        "data_dir": data_dir,
        "fulfillment_step_seconds": 0.05,
        "late_call_window": "0s",
        # Orders end `invoiced`, as most tests expect; tests/test_delivery.py follows parcels.
        "tracking_poll_interval": "0s",
        "default_stock": 1000,
        "temporal_ui_url": "http://127.0.0.1:8233",
        # The fake marketplace listens on loopback: listed exactly, as make run does.
        "marketplace_allowed_hosts": "127.0.0.1",
        # The sandbox that refuses a non-deterministic call in workflow code (worker.py).
        "workflow_sandbox": "fresh",
    }
    values.update(overrides)
    settings = Settings(**values)
    async with (
        local_stack(client, settings) as local,
        httpx.AsyncClient(base_url=local.api_url, timeout=30, verify=verifying_context()) as http,
        httpx.AsyncClient(base_url=local.ops_url, timeout=30, verify=verifying_context()) as ops,
    ):
        yield Stack(
            settings=settings,
            client=client,
            http=http,
            ops=ops,
            marketplace_url=local.marketplace.url,
            marketplace=local.marketplace.state,
            warehouse=SimulatedWarehouse.from_settings(settings),
        )


async def activity_events(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, str]]:
    """(activity type, how it ended) for every activity in the workflow's history, local ones (as
    their markers record them) included."""
    scheduled: dict[int, str] = {}
    outcomes: list[tuple[str, str]] = []
    endings = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "canceled",
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timed out",
    }
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity":  # the reservation
                data = json.loads(marker.details["data"].payloads[0].data)
                ending = "failed" if marker.HasField("failure") else "completed"
                outcomes.append((data["activity_type"], ending))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attributes.activity_type.name
        elif event.event_type in endings:
            ending = endings[event.event_type]
            field = {
                "completed": "activity_task_completed_event_attributes",
                "canceled": "activity_task_canceled_event_attributes",
                "failed": "activity_task_failed_event_attributes",
                "timed out": "activity_task_timed_out_event_attributes",
            }[ending]
            scheduled_id = getattr(event, field).scheduled_event_id
            outcomes.append((scheduled[scheduled_id], ending))
    return outcomes


async def temporal_cli_json(env: WorkflowEnvironment, *args: str) -> Any:
    """What `temporal <args> --output json` prints against the environment's server, parsed: the
    CLI as ops run it, with no codec."""
    temporal = str(Path(sysconfig.get_path("scripts")) / "temporal")
    address = env.client.service_client.config.target_host
    shown = await asyncio.to_thread(
        subprocess.run,
        [temporal, *args, "--address", address, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(shown.stdout or "null")
