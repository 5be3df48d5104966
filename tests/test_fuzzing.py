"""Hostile input, by fuzzing: Schemathesis drives every endpoint from the service's own
`/openapi.json` (served by the ops listener, describing the VTEX-facing port) and from VTEX's
`vtex-external-seller-fulfillment.openapi.json`, with and without the seller's credentials,
against the real stack. No answer may be a 5xx, every 4xx has the JSON error shape
(tests/fuzz_checks.py), and no order's workflow task may fail on what was accepted.
"""

from __future__ import annotations

import asyncio
import os
import re
import sysconfig
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.stack import CONTRACT_DIR, running_stack

SCHEMATHESIS = str(Path(sysconfig.get_path("scripts")) / "schemathesis")
ROOT = Path(__file__).resolve().parent.parent
KEY, TOKEN = "fuzz-key", "fuzz-token"
# Per operation. Without credentials every call stops at the authentication gate (a 401 in the
# JSON shape, or the health check): fewer examples cover it.
MAX_EXAMPLES = {True: "40", False: "10"}


async def schemathesis(
    schema: str, base_url: str, headers: list[str], max_examples: str
) -> tuple[int, str]:
    """Run Schemathesis's CLI (a fixed seed, so a failure replays) and return its exit code and
    output."""
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        schema,
        "--url",
        base_url,
        "--checks",
        "not_a_server_error,errors_in_the_json_shape",
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        max_examples,
        "--seed",
        "20261124",
        *headers,
        cwd=ROOT,
        env=os.environ | {"SCHEMATHESIS_HOOKS": "tests.fuzz_checks", "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 300)
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize("with_credentials", [True, False], ids=["credentials", "none"])
@pytest.mark.parametrize("spec", ["own", "vtex"])
async def test_fuzzed_requests_get_no_5xx_and_every_4xx_in_the_json_shape(
    temporal_env: WorkflowEnvironment, tmp_path: Path, spec: str, with_credentials: bool
) -> None:
    async with running_stack(
        temporal_env, tmp_path, seller_app_key=KEY, seller_app_token=TOKEN
    ) as stack:
        base_url = str(stack.http.base_url).rstrip("/")
        schema = (
            f"{str(stack.ops.base_url).rstrip('/')}/openapi.json"
            if spec == "own"
            else str(CONTRACT_DIR / "vtex-external-seller-fulfillment.openapi.json")
        )
        headers = (
            ["-H", f"X-VTEX-API-AppKey: {KEY}", "-H", f"X-VTEX-API-AppToken: {TOKEN}"]
            if with_credentials
            else []
        )

        code, output = await schemathesis(schema, base_url, headers, MAX_EXAMPLES[with_credentials])

        cases = re.search(r"(\d+) generated, (\d+) passed", output)
        print(f"\nfuzzing {spec} spec, credentials {with_credentials}: {cases and cases[0]}")
        assert code == 0, output[-6000:]
        assert cases is not None and int(cases[1]) >= 20, output[-3000:]
        # What was accepted ran: no workflow task of any order failed on it.
        query = f'TaskQueue="{stack.settings.task_queue}"'
        async for execution in stack.client.list_workflows(query):
            handle = stack.client.get_workflow_handle(execution.id)
            async for event in handle.fetch_history_events():
                assert event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED, execution.id
