"""Customer data encrypted at rest in Temporal (codec.py): the raw history, read with the
`temporal` CLI without the codec, holds none of the customer's data; keys rotate."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from codec import EncryptionCodec, data_converter, new_key_entry
from tests.stack import new_order_id, placement_example, running_stack, temporal_cli_json

KEY_1, KEY_2 = new_key_entry("k1"), new_key_entry("k2")
# Recognizable personal data, none of which may reach Temporal in clear.
PERSONAL = {
    "firstName": "Zebulon",
    "lastName": "Quixotesque",
    "email": "zebulon.quixotesque@pii.example",
    "document": "98765432100",
    "phone": "+5511999991234",
    "receiverName": "Zebulon Quixotesque",
    "street": "Rua Xylofonica",
    "postalCode": "04571-999",
}


def personal_placement(order_id: str, endpoint: str) -> dict[str, Any]:
    """The spec's example placement, with the personal data above."""
    body = placement_example(order_id, endpoint)
    profile = body["clientProfileData"]
    for field in ("firstName", "lastName", "email", "document", "phone"):
        profile[field] = PERSONAL[field]
    body["shippingData"]["address"] = {
        "addressType": "residential",
        "receiverName": PERSONAL["receiverName"],
        "postalCode": PERSONAL["postalCode"],
        "city": "Sao Paulo",
        "state": "SP",
        "country": "BRA",
        "street": PERSONAL["street"],
        "number": "42",
        "neighborhood": "Itaim",
    }
    return body


async def raw_history_text(env: WorkflowEnvironment, workflow_id: str) -> str:
    """Every payload of the workflow's history, as the `temporal` CLI shows it without a codec,
    its data decoded from base64: what someone reading Temporal's store would see."""
    history = await temporal_cli_json(env, "workflow", "show", "--workflow-id", workflow_id)
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value).decode("utf-8", "replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history)
    return json.dumps(history) + "\n".join(found)


async def run_order(env: WorkflowEnvironment, tmp_path: Path, key: str) -> tuple[str, str]:
    """One order with personal data, placed and run to invoiced, its payloads under `key`;
    its workflow id and task queue."""
    client = await Client.connect(
        env.client.service_client.config.target_host, data_converter=data_converter(key)
    )
    async with running_stack(env, tmp_path, client=client) as stack:
        order_id = new_order_id()
        body = personal_placement(order_id, stack.endpoint)
        assert (await stack.http.post("/pvt/orders", json=body)).status_code == 200
        assert (await stack.dispatch(order_id)).status_code == 200
        order = await stack.wait_for(order_id, lambda o: o["invoice"] and o["invoice"]["sentAt"])
        assert order["status"] == "invoiced"
    return f"order-{order_id}", stack.settings.task_queue


@pytest.mark.parametrize("encrypted", [True, False])
async def test_the_raw_history_holds_no_customer_data_when_encrypted(
    temporal_env: WorkflowEnvironment, tmp_path: Path, encrypted: bool
) -> None:
    workflow_id, _ = await run_order(temporal_env, tmp_path, KEY_1 if encrypted else "")

    raw = await raw_history_text(temporal_env, workflow_id)

    leaked = [value for value in PERSONAL.values() if value in raw]
    if encrypted:
        assert leaked == []
    else:
        # The control: without the key the address is in the history, so the check can fail.
        assert PERSONAL["street"] in leaked


async def test_a_key_added_later_still_reads_the_first_keys_orders(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    workflow_id, task_queue = await run_order(temporal_env, tmp_path, KEY_1)
    target = temporal_env.client.service_client.config.target_host

    async def read_with(key: str) -> Any:
        client = await Client.connect(target, data_converter=data_converter(key))
        # A worker of the order's task queue answers the query, decoding with `key`.
        async with running_stack(temporal_env, tmp_path, client=client, task_queue=task_queue):
            handle = client.get_workflow_handle(workflow_id)
            return await handle.query("order", result_type=dict)

    rotated = await read_with(f"{KEY_2},{KEY_1}")  # The new key first: it encrypts from now on.
    assert rotated["status"] == "invoiced"
    with pytest.raises(Exception, match="k1"):
        await read_with(KEY_2)  # The old key dropped: its orders cannot be read.


async def test_payloads_carry_their_key_id_and_other_payloads_pass_through() -> None:
    first = EncryptionCodec.from_setting(KEY_1)
    rotated = EncryptionCodec.from_setting(f"{KEY_2},{KEY_1}")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"street": "Rua"}')

    sealed = (await first.encode([plain]))[0]

    assert sealed.metadata["encryption-key-id"] == b"k1"
    assert b"Rua" not in sealed.data
    assert (await rotated.decode([sealed]))[0] == plain
    assert (await rotated.encode([plain]))[0].metadata["encryption-key-id"] == b"k2"
    assert (await first.decode([plain]))[0] == plain
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionCodec.from_setting("k3:" + base64.b64encode(b"short").decode())
