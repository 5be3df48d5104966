"""A live upgrade from the last release: orders in flight on the release's worker and API (its code
taken from git, at the commit CHANGELOG.md records), finished by this version's.

The release's processes are killed with `kill -9` mid-flight (the harshest upgrade: no grace
period), and this version's worker and API take over on the same task queue: an order waiting for
its dispatch, one mid-step, one following its parcel, and one canceled mid-step after the upgrade
must all end as they would have on either version, with no workflow task failing (a
non-determinism would fail it, and show in the order's history), and their whole histories, the
two versions' parts together, must replay on this version. See docs/upgrades.md.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from devtools.processes import ROOT, ProcessStack
from tests.test_crashes import call, connect, dispatch, place, until
from tests.test_replay import replayer
from workflows import ids

CHANGELOG = ROOT / "CHANGELOG.md"
# `## 1.0.0 - 2026-12-07`, then, among the release's lines, `Commit: <40 hex digits>`.
RELEASE = re.compile(r"^## (\d+\.\d+\.\d+)\b.*?^Commit: `([0-9a-f]{40})`", re.M | re.S)


def last_release() -> tuple[str, str]:
    """The newest release CHANGELOG.md records: its version and commit."""
    found = RELEASE.search(CHANGELOG.read_text(encoding="utf-8"))
    assert found, f"no release with its commit in {CHANGELOG}"
    return found.group(1), found.group(2)


def release_tree(commit: str, into: Path) -> Path:
    """The release's files, from git (a clone has every commit of main)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"commit {commit} is not in this clone: {archive.stderr.decode()} (a shallow clone "
        "lacks it: fetch the history, `git fetch --unshallow`)"
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


@asynccontextmanager
async def running(stack: ProcessStack) -> AsyncIterator[ProcessStack]:
    """The stack started and stopped off the event loop; no process of it outlives the test."""
    await asyncio.to_thread(stack.__enter__)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)
        assert stack.leftovers() == [], stack.logs()


async def events(client: Client, workflow_id: str) -> list[Any]:
    return [event async for event in client.get_workflow_handle(workflow_id).fetch_history_events()]


async def test_orders_in_flight_on_the_release_are_finished_by_this_version(
    tmp_path: Path,
) -> None:
    version, commit = last_release()
    release = release_tree(commit, tmp_path / f"release-{version}")
    stack = ProcessStack(
        tmp_path / "stack",
        workers=0,
        step_seconds=1.0,
        # The parcel is delivered long enough after the invoice that the order following it is
        # still in flight at the upgrade, however loaded the machine (4 s was not, under the suite).
        env={"TRACKING_POLL_INTERVAL": "1s", "CARRIER_DELIVERY_TIME": "10s"},
    )
    released_worker = stack.add_worker(start=False, cwd=release)
    stack.api.cwd = release

    async with running(stack), httpx.AsyncClient(base_url=stack.api_url) as http:
        waiting, stepping, following, canceled = (f"UPG{n}-{tmp_path.name[-6:]}" for n in range(4))
        for order_id in (waiting, stepping, following, canceled):
            assert (await place(http, stack, order_id)).status_code == 200
        assert (await dispatch(http, following)).status_code == 200
        await until(http, following, lambda o: o["status"] == "invoiced" and o["delivery"])
        assert (await dispatch(http, stepping)).status_code == 200
        assert (await dispatch(http, canceled)).status_code == 200
        await until(http, stepping, lambda o: o["currentStep"] == "pack")
        before = (await http.get(f"/pvt/orders/{ids.seller_order_id(following)}")).json()
        assert before["status"] == "invoiced", f"{following} is no longer in flight: {before}"

        # The upgrade: the release's worker and API die; this version's take over.
        await asyncio.to_thread(released_worker.kill9)
        await asyncio.to_thread(stack.api.kill9)
        stack.api.cwd = ROOT
        await asyncio.to_thread(stack.api.start)
        # Asked before this version's worker is up (the API answers 503 until one is, and the
        # call is made again): the order's step is still cut off with the worker that ran it,
        # so the cancellation meets it mid-step.
        cancel_path = f"/pvt/orders/{ids.seller_order_id(canceled)}/cancel"
        cancel = asyncio.create_task(
            call(http, "POST", cancel_path, {"marketplaceOrderId": canceled})
        )
        await asyncio.to_thread(stack.add_worker)
        answer = await cancel
        assert answer.status_code == 200, answer.text
        assert (await dispatch(http, waiting)).status_code == 200

        done = ("delivered", "canceled", "expired")
        ended = {
            order_id: (await until(http, order_id, lambda o: o["status"] in done, 90))["status"]
            for order_id in (waiting, stepping, following, canceled)
        }
        assert ended == {
            waiting: "delivered",
            stepping: "delivered",
            following: "delivered",
            canceled: "canceled",
        }

        client = await connect(stack)
        in_flight = [stepping, following, canceled]
        for order_id in (waiting, *in_flight):
            order_workflow = ids.workflow_id(order_id)
            for workflow_id in (order_workflow, ids.parcel_workflow_id(order_id)):
                if order_id == canceled and workflow_id != order_workflow:
                    continue  # a canceled order has no parcel
                history = await events(client, workflow_id)
                failed = [
                    e for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
                ]
                assert failed == [], f"{workflow_id}: {failed}"
                handle = client.get_workflow_handle(workflow_id)
                replayed = await replayer().replay_workflow(
                    await handle.fetch_history(), raise_on_replay_failure=False
                )
                assert replayed.replay_failure is None, f"{workflow_id}: {replayed.replay_failure}"
        for order_id in in_flight:
            history = await events(client, ids.workflow_id(order_id))
            workers = {
                e.workflow_task_completed_event_attributes.identity
                for e in history
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            }
            assert len(workers) >= 2, f"{order_id} ran on one worker only: {workers}"
