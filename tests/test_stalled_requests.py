"""A caller that stalls is answered 408 and its connection closed, instead of holding it
forever: in its body (Schemathesis's coverage phase hit one: a declared Content-Length of 2000
and 10 bytes sent), in its headers (slowloris), or before its first byte. A real `python -m api`
process, raw sockets, on both of its listeners."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from devtools.processes import HOST, Process
from tests.test_ops_listener import PYTHON, both_listening, lone_process

# The headers' timeout is the shorter: had it run while a body stalled, the body's 408 (its own
# message) would not come.
BODY_TIMEOUT = 1.5
HEADERS_TIMEOUT = 1.0
# How late an answer may be: the machine may be busy.
SLACK = 5.0
# The first byte of a request whose headers never end.
PARTIAL = b"POST /pvt/orders HTTP/1.1\r\nHost: x\r\nContent-Le"
LISTENERS = ["vtex", "ops"]

T = TypeVar("T")


@pytest.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Process]:
    """One API for the module, with short timeouts."""
    env = {
        "REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "REQUEST_HEADERS_TIMEOUT_SECONDS": str(HEADERS_TIMEOUT),
    }
    process = lone_process(tmp_path_factory.mktemp("stalled"), "api", [PYTHON, "-m", "api"], env)
    try:
        await asyncio.to_thread(process.start)
        await both_listening(process)
        yield process
    finally:
        process.terminate()


def port(api: Process, listener: str) -> int:
    """The port of the VTEX-facing listener or of the ops one."""
    return int(api.env["API_PORT" if listener == "vtex" else "OPS_PORT"])


def healthy_request(listener: str) -> bytes:
    """A request each listener answers 200 without Temporal."""
    if listener == "ops":
        return f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    body = b'{"items": [{"id": "shoe", "quantity": 1, "seller": "1"}]}'
    return (
        f"POST /pvt/orderForms/simulation HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def connect(port: int) -> socket.socket:
    """A raw connection that gives up waiting well after every timeout of the API."""
    return socket.create_connection((HOST, port), timeout=BODY_TIMEOUT + SLACK)


def read_answer(raw: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer's status, headers (lower-case names) and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = raw.recv(65536)
        assert chunk, f"closed without an answer, after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = raw.recv(65536)
        assert chunk, f"closed in the middle of an answer: {data!r}"
        body += chunk
    return int(status.split()[1]), headers, body


def closed(raw: socket.socket) -> bool:
    """Whether the API closed the connection (without sending anything more)."""
    try:
        return raw.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """What `call` returned, and how long it took."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def assert_headers_timeout(answer: tuple[int, dict[str, str], bytes]) -> None:
    """The 408 of headers that did not arrive, in the one error shape, closing the connection."""
    status, headers, body = answer
    assert status == 408, (status, headers, body)
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "RequestTimeout"
    assert error["message"] == f"the request's headers did not arrive within {HEADERS_TIMEOUT:g} s"


def stalled_body_call(port: int, path: str) -> tuple[bytes, float, bool]:
    """Send a POST declaring 2000 bytes, send 10, wait; the answer, when it came, and whether
    the API closed the connection after it."""
    with connect(port) as raw:
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
        return answer, took, closed(raw)


@pytest.mark.parametrize("path", ["/pvt/orders", "/pvt/orderForms/simulation"])
async def test_a_stalled_body_is_a_408_and_its_connection_closed(api: Process, path: str) -> None:
    answer, took, is_closed = await asyncio.to_thread(stalled_body_call, port(api, "vtex"), path)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    error = json.loads(body)["error"]
    assert error["code"] == "RequestTimeout"
    assert "10 of 2000 bytes" in error["message"]
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + SLACK
    assert is_closed


def partial_headers(port: int) -> tuple[tuple[int, dict[str, str], bytes], float, bool]:
    with connect(port) as raw:
        raw.sendall(PARTIAL)
        answer, took = timed(lambda: read_answer(raw))
        return answer, took, closed(raw)


@pytest.mark.parametrize("listener", LISTENERS)
async def test_stalled_headers_are_a_408_and_the_connection_closed(
    api: Process, listener: str
) -> None:
    answer, took, is_closed = await asyncio.to_thread(partial_headers, port(api, listener))

    assert_headers_timeout(answer)
    assert HEADERS_TIMEOUT * 0.9 <= took < HEADERS_TIMEOUT + SLACK
    assert is_closed


def receive(raw: socket.socket) -> bytes:
    """What the API sends next; b"" once it closed the connection."""
    try:
        return raw.recv(65536)
    except ConnectionResetError:
        return b""


def silent_connection(port: int) -> tuple[bytes, float]:
    with connect(port) as raw:
        return timed(lambda: receive(raw))


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_connection_that_sends_nothing_is_closed(api: Process, listener: str) -> None:
    received, took = await asyncio.to_thread(silent_connection, port(api, listener))

    assert received == b""  # closed, and nothing said to a client that asked nothing
    assert HEADERS_TIMEOUT * 0.9 <= took < HEADERS_TIMEOUT + SLACK


def dripped_headers(port: int) -> tuple[tuple[int, dict[str, str], bytes], float]:
    """slowloris: a header line every 0.3 s, forever, each one well within the timeout."""
    with connect(port) as raw:
        started = time.monotonic()
        raw.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        for line in range(20):
            readable, _, _ = select.select([raw], [], [], 0.3)
            if readable:
                break
            raw.sendall(f"X-Drip-{line}: a\r\n".encode())
        return read_answer(raw), time.monotonic() - started


@pytest.mark.parametrize("listener", LISTENERS)
async def test_headers_dripped_past_the_timeout_are_a_408(api: Process, listener: str) -> None:
    answer, took = await asyncio.to_thread(dripped_headers, port(api, listener))

    assert_headers_timeout(answer)
    assert HEADERS_TIMEOUT * 0.9 <= took < HEADERS_TIMEOUT + SLACK


def keep_alive_then_stall(
    port: int, request: bytes
) -> tuple[int, tuple[int, dict[str, str], bytes], float, bool]:
    with connect(port) as raw:
        raw.sendall(request)
        first, _, _ = read_answer(raw)
        raw.sendall(PARTIAL)
        answer, took = timed(lambda: read_answer(raw))
        return first, answer, took, closed(raw)


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_kept_alive_connection_stalling_in_its_next_headers_gets_a_408(
    api: Process, listener: str
) -> None:
    first, answer, took, is_closed = await asyncio.to_thread(
        keep_alive_then_stall, port(api, listener), healthy_request(listener)
    )

    assert first == 200
    assert_headers_timeout(answer)
    assert HEADERS_TIMEOUT * 0.9 <= took < HEADERS_TIMEOUT + SLACK
    assert is_closed


def in_pieces(port: int, request: bytes) -> list[int]:
    """Wait 0.6 s, then send `request` in four pieces 0.2 s apart (0.6 s in all); again on the
    same connection; then once more at once."""
    pieces = [request[i * len(request) // 4 : (i + 1) * len(request) // 4] for i in range(4)]
    statuses = []
    with connect(port) as raw:
        time.sleep(HEADERS_TIMEOUT * 0.6)  # the clock starts at the first byte
        for _ in range(2):
            for number, piece in enumerate(pieces):
                if number:
                    time.sleep(HEADERS_TIMEOUT * 0.2)
                raw.sendall(piece)
            statuses.append(read_answer(raw)[0])
        raw.sendall(request)
        statuses.append(read_answer(raw)[0])
    return statuses


@pytest.mark.parametrize("listener", LISTENERS)
async def test_headers_in_pieces_within_the_timeout_are_answered(
    api: Process, listener: str
) -> None:
    statuses = await asyncio.to_thread(in_pieces, port(api, listener), healthy_request(listener))

    assert statuses == [200, 200, 200]
