"""A caller that declares a body and stalls: the API answers 408 and closes the connection,
instead of holding it forever (Schemathesis's coverage phase hit one: a declared Content-Length
of 2000 and 10 bytes sent). A real `python -m api` process, a raw socket."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from devtools.processes import HOST
from tests.test_ops_listener import PYTHON, both_listening, lone_process

BODY_TIMEOUT = 1.5


def stalled_call(port: int, path: str) -> tuple[bytes, float, bool]:
    """Send a POST declaring 2000 bytes, send 10, wait; the answer, when it came, and whether
    the API closed the connection after it."""
    with socket.create_connection((HOST, port), timeout=15) as raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Content-Length: 2000\r\n\r\n".encode()
            + b'{"marketpl'
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
        try:
            closed = raw.recv(1) == b""
        except TimeoutError:
            closed = False
    return answer, took, closed


@pytest.mark.parametrize("path", ["/pvt/orders", "/pvt/orderForms/simulation"])
async def test_a_stalled_body_is_a_408_and_its_connection_closed(tmp_path: Path, path: str) -> None:
    env = {"REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT)}
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], env)
    try:
        await asyncio.to_thread(api.start)
        port = await both_listening(api)
        answer, took, closed = await asyncio.to_thread(stalled_call, port, path)
    finally:
        api.terminate()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    error = json.loads(body)["error"]
    assert error["code"] == "RequestTimeout"
    assert "10 of 2000 bytes" in error["message"]
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 10
    assert closed
