"""One worker: runs order workflows and their activities from the task queue.

Start as many as the load needs, on as many machines, all against the same Temporal cluster:
    TEMPORAL_ADDRESS=temporal.example:7233 python worker.py
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from contextlib import AsyncExitStack
from datetime import timedelta

from pydantic import ValidationError
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

import temporal_client
from activities.change_notifications import (
    NOTIFICATION_SLOTS,
    ChangeNotificationActivities,
    notification_settings_problem,
)
from activities.fulfillment import FulfillmentActivities
from activities.marketplace import MarketplaceClient
from activities.warehouse import load_warehouse
from change_relay import ChangeRelay
from codec import data_converter, encryption_line, encryption_problem
from config import Settings, get_settings
from logs import configure_logging
from workflows import ids, search
from workflows.order import OrderWorkflow
from workflows.parcel import ParcelWorkflow
from workflows.sku_changes import SkuChangesWorkflow

_INDEXED_TYPES = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
}

# A cancellation reaches a running activity in the answer to its next heartbeat. The SDK holds
# heartbeats back for 0.8 x the heartbeat timeout unless told otherwise; 200 ms makes a
# cancellation stop a step within a few hundred milliseconds.
HEARTBEAT_THROTTLE = timedelta(milliseconds=200)

log = logging.getLogger("worker")


async def connect(settings: Settings) -> Client:
    """The Temporal client (temporal_client.py: TLS, mTLS, API key), with the data converter the
    API uses too (pydantic, and the payload encryption when PAYLOAD_ENCRYPTION_KEY is set)."""
    runtime = None
    if settings.worker_metrics_address:
        # The SDK's own metrics and the orders' (workflow.metric_meter, activity.metric_meter).
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=settings.worker_metrics_address)
            )
        )
    return await temporal_client.connect(
        settings, data_converter=data_converter(settings.encryption_key), runtime=runtime
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Check that the order's search attributes are registered, and register what is missing.

    An order upserting an attribute the namespace does not know would fail its workflow task on
    every try; better a worker that says so at start.
    """
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = set(listed.custom_attributes)
    except RPCError as err:
        if err.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server
            raise
        known = set()
    missing = {
        name: _INDEXED_TYPES[kind] for name, kind in search.REGISTERED.items() if name not in known
    }
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            return
        raise RuntimeError(
            f"search attributes {sorted(missing)} are not registered on namespace {namespace!r} "
            f"and could not be ({err.message}); register them: "
            + " ".join(f"--name {n} --type {search.REGISTERED[n]}" for n in sorted(missing))
        ) from err
    log.info("registered search attributes %s", sorted(missing))


async def run_worker(
    settings: Settings,
    client: Client,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a worker until `stop` is set; sets `ready` once it polls the task queue."""
    await ensure_search_attributes(client, settings.temporal_namespace)
    async with AsyncExitStack() as stack:
        warehouse = load_warehouse(settings)
        stack.push_async_callback(warehouse.close)
        marketplace = MarketplaceClient.from_settings(settings)
        stack.push_async_callback(marketplace.close)
        activities = FulfillmentActivities(warehouse, marketplace)
        notifications = ChangeNotificationActivities(
            marketplace, settings.change_notification_url, settings.seller_id
        )
        # The SKUs' change notifications on a queue of their own, with few slots: they never
        # hold the slots orders are placed with. Only a worker that can send them polls it: one
        # without the settings would fail them for good.
        problem = notification_settings_problem(settings)
        if problem and settings.change_notification_url + settings.seller_id:
            log.error("change notifications are off on this worker: %s", problem)
        sku_worker = (
            None
            if problem
            else Worker(
                client,
                workflow_runner=workflow_runner(settings),
                task_queue=ids.sku_task_queue(settings.task_queue),
                workflows=[SkuChangesWorkflow],
                activities=[notifications.notify_change],
                max_concurrent_activities=NOTIFICATION_SLOTS,
            )
        )
        worker = Worker(
            client,
            workflow_runner=workflow_runner(settings),
            task_queue=settings.task_queue,
            workflows=[OrderWorkflow, ParcelWorkflow],
            activities=activities.all(),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            # On SIGTERM the worker stops polling and lets the steps it runs finish within the
            # grace period; what is still running then is cancelled and retried elsewhere.
            graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
            max_concurrent_activities=settings.worker_max_concurrent_activities,
        )
        # Everything built so far (modules, the SDK, the sandbox's prepared modules) lives as long
        # as the worker: out of the garbage collector's reach, a full collection walks only what
        # the orders made since. Without it, a full collection of ~150,000 objects stopped the
        # worker for 100-160 ms, the slowest calls of an open-loop bench (make bench).
        gc.collect()
        gc.freeze()
        async with worker, sku_worker or AsyncExitStack():
            log.info(
                "worker polling task queue %r on %s (warehouse %s)",
                settings.task_queue,
                settings.temporal_address,
                settings.warehouse,
            )
            relay = None
            if sku_worker is not None:
                relay = asyncio.create_task(ChangeRelay.from_settings(client, settings).run(stop))
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("worker stopping")
            if relay is not None:
                await relay


def workflow_runner(settings: Settings) -> SandboxedWorkflowRunner:
    """The workflows' sandbox (WORKFLOW_SANDBOX).

    `fresh`, the SDK's default, imports the workflow's modules again for every workflow run:
    workflows/order.py's module and its class definition cost ~4 ms of CPU per new order, on the
    placement's path. `shared` imports every module once and passes it through: the workflows'
    modules hold no state (constants only), but the sandbox no longer checks what workflow code
    calls through them (a `datetime.now()` written in workflows/ would not be refused, measured).
    The test suite's workers and the replay tests run `fresh`, which refuses it.
    """
    restrictions = SandboxRestrictions.default
    if settings.workflow_sandbox == "shared":
        restrictions = restrictions.with_passthrough_all_modules()
    return SandboxedWorkflowRunner(restrictions=restrictions)


async def main() -> None:
    """Connect (retrying while Temporal starts) and run until interrupted; stop at once, with the
    reason, on settings that cannot work (a payload key REQUIRE_PAYLOAD_ENCRYPTION wants, a bad
    certificate) or a server that refuses this worker."""
    try:
        settings = get_settings()
    except ValidationError as err:
        error = err.errors()[0]
        # A field's own check names no setting; the model's checks (credentials) name theirs.
        where = f"{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        sys.exit(f"the worker cannot start: {where}{error['msg'].removeprefix('Value error, ')}")
    problem = encryption_problem(settings.encryption_key, settings.require_payload_encryption)
    if problem:
        sys.exit(f"the worker cannot start: {problem}")
    encrypted = encryption_line(settings.encryption_key)
    (log.info if settings.encryption_key else log.warning)("%s", encrypted)
    stop = asyncio.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(stop_signal, stop.set)
    while not stop.is_set():
        try:
            client = await connect(settings)
            break
        except temporal_client.TemporalRefusedError as err:
            sys.exit(f"the worker cannot start: {err}")
        except RuntimeError as err:
            # A plain client before a TLS server sees its connection cut, as a server still
            # starting would: say what else it may be.
            plain = not (
                settings.temporal_tls
                or settings.temporal_tls_ca_file
                or settings.temporal_tls_cert_file
                or settings.temporal_api_key_file
            )
            hint = (
                "; if it requires TLS, set TEMPORAL_TLS=true (docs/temporal-connection.md)"
                if plain
                else ""
            )
            log.warning(
                "Temporal at %s not reachable yet (%s); retrying%s",
                settings.temporal_address,
                err,
                hint,
            )
            await asyncio.sleep(2)
    else:
        return
    await run_worker(settings, client, stop)


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())
