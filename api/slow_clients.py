"""A client that stalls before its request's headers are complete is answered 408 and its
connection closed, within REQUEST_HEADERS_TIMEOUT_SECONDS; one that connects and sends nothing is
closed after that time too.

uvicorn has no such timeout. Its `timeout_keep_alive` (5 s) runs only from the end of a response
to the next byte: it is never armed on a new connection, and the first byte of the next request
cancels it, with nothing armed again until a response is sent. So, left to uvicorn, a caller
that sends `POST /pvt/orders HTTP/1.1\\r\\nHost: x\\r\\nContent-Le` and then nothing, or nothing
at all, holds its connection (and a file descriptor of the process) forever, whatever the body
timeout (api/errors.py `read_body`, which runs once the headers are in). No ASGI middleware can
see this: the app is called once the headers are complete. Hence a subclass of uvicorn's
protocol, whose parser callbacks say when a request begins (its first byte) and when its headers
end.

Only httptools' protocol: `python -m api` gives it to uvicorn explicitly. httptools is a
dependency of the project (pyproject.toml), and the one uvicorn's "auto" picks; "auto" falls back
to h11 only when httptools cannot be imported, a broken install, which now stops the start
instead of serving without this timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.models import Error, ErrorBody

log = logging.getLogger("api")


def headers_timeout_answer(seconds: float, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole 408 answer, in the project's error shape, that closes the connection."""
    body = (
        ErrorBody(
            error=Error(
                code="RequestTimeout",
                message=f"the request's headers did not arrive within {seconds:g} s",
            )
        )
        .model_dump_json(exclude_none=True)
        .encode()
    )
    head = [b"HTTP/1.1 408 Request Timeout\r\n"]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"\r\n",
    ]
    return b"".join(head) + body


class HeadersTimeoutProtocol(HttpToolsProtocol):
    """httptools' protocol, with a time limit for each request's headers: from the connection's
    first byte for its first request, from the end of the previous answer for the next ones (a
    request pipelined behind a long one is not charged for the long one's time). A connection
    that sends nothing is closed after the same time, and so is one still sending the body of a
    request answered early (a 413) when that time has passed since the answer."""

    headers_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._headers_timer: asyncio.TimerHandle | None = None
        # Whether bytes of a request whose headers are not complete have arrived.
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that never sends a byte is closed when it runs out."""
        super().connection_made(transport)
        self._arm_headers_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._disarm_headers_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A request's first byte: the connection's first request has its full time from here."""
        super().on_message_begin()
        self._request_begun = True
        if self.cycle is None:
            self._arm_headers_timer()

    def on_headers_complete(self) -> None:
        """The headers are in: from here the body timeout and the handlers decide."""
        self._request_begun = False
        self._disarm_headers_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """An answer sent: the next request's headers have their time from now, unless one is
        already queued (pipelined) or the connection is closing."""
        super().on_response_complete()
        if self._waiting_for_headers():
            self._arm_headers_timer()

    def _waiting_for_headers(self) -> bool:
        """No request is being handled or queued, and the connection is open."""
        idle = self.cycle is None or self.cycle.response_complete
        return idle and not self.pipeline and not self.transport.is_closing()

    def _arm_headers_timer(self) -> None:
        self._disarm_headers_timer()
        self._headers_timer = self.loop.call_later(self.headers_timeout, self._headers_timed_out)

    def _disarm_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_timed_out(self) -> None:
        self._headers_timer = None
        if not self._waiting_for_headers():
            return
        # Part of a request and nothing of its answer: say why it ends. A connection that sent
        # nothing is closed silently: a 408 nobody asked for could be read as the answer to a
        # request the client is sending at that very moment.
        if self._request_begun:
            seconds = self.headers_timeout
            default_headers = self.server_state.default_headers
            self.transport.write(headers_timeout_answer(seconds, default_headers))
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("408 to %s: its request's headers did not arrive within %g s", client, seconds)
        self.transport.close()


def http_protocol(headers_timeout_seconds: float) -> type[HeadersTimeoutProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this time limit for headers."""

    class Protocol(HeadersTimeoutProtocol):
        headers_timeout = headers_timeout_seconds

    return Protocol
