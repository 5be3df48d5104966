"""The fulfillment simulation under a fixed open-loop load: the API as `python -m api` runs it, in
its own process, and this load generator in another, on loopback.

VTEX treats a SKU as unavailable when the simulation takes over 2.5 s; the goal here is a p99 of
at most 20 ms at 200 requests/s on the 2-core machine. Open loop: request i is due at
`start + i / rate`, whatever happened to the ones before, and its latency counts from when it was
due to when its whole answer was read (a slow answer delays no later request; a backlog, of the
API or of this generator, shows in the figures). Bounded: `count` requests, then it stops.

The generator speaks HTTP/1.1 itself over keep-alive connections (a new one when none is free,
its set-up counted in that request's time): on two cores it shares the CPU with the API, and
httpx spent about 3.5 ms of CPU per request (its pool checks every connection on each one), more
than the API itself, and stalled for hundreds of ms; this one spends about 0.5 ms
(`client_cpu_ms_per_request`; `api_cpu_ms_per_request` is the API's, where /proc tells).

    python -m bench.simulation_load [--rate 200] [--seconds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from activities.catalog import Catalog, CatalogEntry
from devtools.processes import ProcessStack

PATH = "/pvt/orderForms/simulation"
CART = {
    "items": [
        {"id": "bench-shoe", "quantity": 1, "seller": "1"},
        {"id": "bench-sock", "quantity": 2, "seller": "1"},
        {"id": "bench-cap", "quantity": 1, "seller": "1"},
    ],
    "postalCode": "01310-100",
    "country": "BRA",
}
# A connection idle this long is closed, not reused: uvicorn closes one idle for 5 s
# (timeout_keep_alive), and a request sent as it does would fail for the client's sake.
KEEP_ALIVE_SECONDS = 4.0
# How long the load waits, after the last request was due, for the answers still out: one still
# missing then is a failure, its latency counted up to then.
TIMEOUT_SECONDS = 10.0


def percentile(ordered: list[float], share: float) -> float:
    """The `share` percentile of sorted samples (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def request_bytes(host: str, path: str, body: Any = None, method: str = "POST") -> bytes:
    """One HTTP/1.1 request of `body` as JSON (none: empty), kept alive."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nAccept: application/json\r\n\r\n"
    )
    return head.encode() + payload


class HttpError(Exception):
    """The answer was not an HTTP/1.1 response this client reads."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Kept to send on."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the request in flight, if any."""
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or HttpError("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        """Complete the request once its whole answer (Content-Length) has arrived."""
        self.buffer += data
        if self.answer is None or self.answer.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                self.closed = True
        if length is None:
            self.answer.set_exception(HttpError("an answer without Content-Length"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.answer.set_result((int(head[0].split(" ", 2)[1]), body))

    async def post(self, raw: bytes) -> tuple[int, bytes]:
        """Send a whole request; its status and body."""
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.answer


class Client:
    """Keep-alive connections to one server: an idle one per request, or a new one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.netloc = parts.netloc
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cart_request = request_bytes(parts.netloc, PATH, CART)
        self.idle: list[Connection] = []
        self.opened = 0

    async def simulate(self) -> tuple[int, bytes]:
        """One simulation of CART: its status and body."""
        return await self.request(self.cart_request)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one whole request's bytes; the answer's status and body."""
        while self.idle:
            connection = self.idle.pop()
            if connection.closed:
                continue
            if time.monotonic() - connection.idle_since < KEEP_ALIVE_SECONDS:
                break
            assert connection.transport is not None
            connection.transport.close()
        else:
            _, connection = await asyncio.get_running_loop().create_connection(
                Connection, self.host, self.port
            )
            self.opened += 1
        try:
            answer = await connection.post(raw)
        except BaseException:
            if connection.transport is not None:
                connection.transport.close()
            raise
        if not connection.closed:
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        return answer

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()


def cpu_seconds(pid: int | None) -> float | None:
    """The CPU time (user and system) process `pid` has used so far, where /proc tells."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(status: int, body: bytes) -> str | None:
    """What is wrong with an answer, or None."""
    if status != 200:
        return str(status)
    answer = json.loads(body)
    if len(answer.get("items", ())) != len(CART["items"]):
        return "items missing from the answer"
    return None


async def open_loop(
    url: str, rate: float, count: int, api_pid: int | None = None
) -> dict[str, Any]:
    """`count` simulations due at `rate` per second; their latencies from when each was due
    (and the CPU the API, process `api_pid`, spent on them)."""
    client = Client(url)
    latencies: list[float] = []
    failures: list[str] = []
    try:
        for _ in range(20):  # warm-up: connections, the catalog's engine, the shipping table
            problem = check(*await asyncio.wait_for(client.simulate(), TIMEOUT_SECONDS))
            if problem:
                raise RuntimeError(f"the warm-up simulation failed: {problem}")

        async def one(due: float) -> None:
            problem = None
            try:
                problem = check(*await client.simulate())
            except (OSError, HttpError, ValueError) as err:
                problem = type(err).__name__
            except asyncio.CancelledError:
                problem = "no answer in time"
                raise
            finally:
                if problem:
                    failures.append(problem)
                # An unanswered request counts too, as late as when it was given up on.
                latencies.append((time.monotonic() - due) * 1000)

        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        cpu_before, api_before = time.process_time(), cpu_seconds(api_pid)
        start = time.monotonic() + 0.1
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Each request is due on its own schedule; a late start counts from `due` all the same.
            task = loop.create_task(one(due))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            _, pending = await asyncio.wait(running, timeout=TIMEOUT_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.monotonic() - start
        client_cpu = time.process_time() - cpu_before
        api_after = cpu_seconds(api_pid)
    finally:
        client.close()
    ordered = sorted(latencies) or [float("nan")]
    return {
        "rate_rps": rate,
        "requests": count,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "failures": len(failures),
        "failure_kinds": dict(Counter(failures)),
        "connections": client.opened,
        "client_cpu_ms_per_request": round(client_cpu * 1000 / count, 3),
        "api_cpu_ms_per_request": (
            round((api_after - api_before) * 1000 / count, 3)
            if api_before is not None and api_after is not None
            else None
        ),
    }


def measure(rate: float, seconds: float) -> dict[str, Any]:
    """Start the API (and what it needs) as processes, load a catalog, run the load."""
    with tempfile.TemporaryDirectory(prefix="bench-simulation-") as folder:
        stack = ProcessStack(Path(folder), workers=0)
        with stack:
            Catalog(stack.warehouse_store).load(
                [
                    CatalogEntry(sku="bench-shoe", name="Shoe", price=2499, stock=1000),
                    CatalogEntry(sku="bench-sock", name="Sock", price=990, stock=1000),
                    CatalogEntry(sku="bench-cap", name="Cap", price=1990, stock=0),
                ]
            )
            return asyncio.run(open_loop(stack.api_url, rate, round(rate * seconds), stack.api.pid))


def main() -> None:
    """Print (and optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10, help="how long the load lasts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure(args.rate, args.seconds)
    print(f"fulfillment simulation, open loop: {figures}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
