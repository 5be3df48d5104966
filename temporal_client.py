"""The connection to Temporal, built here for every process that makes one: the API, the workers,
the invariant checker, the soak and the benchmark.

Plain by default (the dev server, a cluster on a private network). The TEMPORAL_TLS* and
TEMPORAL_API_KEY_FILE settings (config.py; docs/temporal-connection.md) add TLS against the
server's CA or the system's, a client certificate (mTLS), and an API key, which the SDK sends as
`Authorization: Bearer <key>`: what Temporal Cloud and most production clusters require.

Two failures are told apart, because they call for opposite answers:
- Temporal not reachable (yet): a `RuntimeError`, and the caller tries again (a worker started
  with the cluster) or carries on (the API, whose /healthz tells).
- Temporal, or a TLS front before it, and this client refusing each other as configured (a
  client certificate or an API key it does not take, a server certificate this client does not
  trust): a `TemporalRefusedError`, and the process stops with its message, since no retry can
  help.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from temporal_credentials import Credentials, read_credentials

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger("temporal")

# How long a lazy client's first call may take to tell a refusal from a server not up yet.
FIRST_CALL_SECONDS = 5.0
# How long a failed connection is given to be let go of by the SDK's threads (see `connect`).
SETTLE_SECONDS = 0.25
# HTTP answers (from the server, or a proxy before it, instead of gRPC) that no retry changes.
_REFUSING_HTTP = {"400", "401", "403", "404", "407"}
_HTTP_STATUS = re.compile(r"with status: (\d{3})( [A-Za-z ]+)?")
_GRPC_STATUS = re.compile(r'code: (\w+), message: "((?:[^"\\]|\\.)*)"')
_CERTIFICATE_ERROR = re.compile(r"InvalidCertificate\((\w+)")
_ALERT = re.compile(r"AlertReceived\((\w+)\)|received fatal alert: (\w+)")
_PRESENTED_NAME = re.compile(r'DnsName\(\\*"([^"\\]+)\\*"\)|IpAddress\(([^)]+)\)')


class TemporalRefusedError(RuntimeError):
    """Temporal (or a TLS front before it) and this client refuse each other as configured: trying
    again cannot help. The message says what was refused, and what this client presented."""


async def connect(
    settings: Settings,
    *,
    data_converter: DataConverter,
    lazy: bool = False,
    runtime: Runtime | None = None,
) -> Client:
    """A client of Temporal at TEMPORAL_ADDRESS, in TEMPORAL_NAMESPACE, over the connection the
    settings describe.

    Args:
        data_converter: The one every process of the deployment uses (codec.py).
        lazy: Connect on the first call, so that the process starts while Temporal is still
            starting (the API). A first call is made at once all the same, for at most a few
            seconds: a refusal stops the process now, a server not up yet is left for later.
        runtime: The SDK runtime (a worker's, with its metrics); the default one if None.

    Raises:
        ValueError: Settings that cannot work (`read_credentials`).
        TemporalRefusedError: The server refused this client, or this client the server.
        RuntimeError: Temporal is not reachable (yet): the caller may try again.
    """
    credentials = read_credentials(settings)
    try:
        client = await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            api_key=credentials.api_key,
            # False, not None: with TEMPORAL_TLS=false an API key does not turn TLS on.
            tls=credentials.tls if credentials.tls is not None else False,
            data_converter=data_converter,
            lazy=lazy,
            runtime=runtime,
        )
        if lazy:
            await _first_call(client)
    except (RuntimeError, RPCError) as err:
        # The SDK's threads let go of a failed connection a moment after it fails: a process that
        # exited at once (a refused worker) crashed in Python's finalization in about 1 run of 2
        # (SIGABRT or SIGSEGV after its message; temporalio/sdk-python#300), never after 20 ms.
        await asyncio.sleep(SETTLE_SECONDS)
        refusal = _refusal(err, settings, credentials)
        if refusal is None:
            raise
        raise TemporalRefusedError(f"Temporal at {settings.temporal_address} {refusal}") from err
    log.info(
        "Temporal at %s, namespace %s: %s",
        settings.temporal_address,
        settings.temporal_namespace,
        credentials.describe(),
    )
    return client


async def _first_call(client: Client) -> None:
    """Call a lazy client's server once: raise a refusal, let anything else be."""
    try:
        await asyncio.wait_for(client.service_client.check_health(), FIRST_CALL_SECONDS)
    except TimeoutError:
        return
    except (RuntimeError, RPCError) as err:
        refused = isinstance(err, RPCError) and err.status in (
            RPCStatusCode.UNAUTHENTICATED,
            RPCStatusCode.PERMISSION_DENIED,
        )
        if refused or _refusal_in_text(str(err)):
            raise
        log.warning("Temporal not reachable yet (%s): the first call will connect", err)


def _refusal(err: Exception, settings: Settings, credentials: Credentials) -> str | None:
    """Why the server and this client will never talk as configured; None if they may later."""
    if isinstance(err, RPCError):
        if err.status not in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
            return None
        return (
            f"refused this client ({err.status.name}: {err.message}); it presented "
            f"{credentials.presented()}"
        )
    text = str(err)
    kind = _refusal_in_text(text)
    if kind == "certificate":
        return _server_certificate_refused(text, settings, credentials)
    if kind == "alert":
        match = _ALERT.search(text)
        alert = next(group for group in match.groups() if group) if match else "?"
        return (
            f"ended the TLS handshake (alert {alert}): it refuses what this client presented "
            f"({credentials.presented()}), or shares no TLS version or cipher with it"
        )
    if kind == "plain":
        return (
            "does not answer in TLS, and this client is set for TLS "
            f"({credentials.describe()}): give the server's TLS address, or set "
            "TEMPORAL_TLS=false if it takes plain connections"
        )
    if kind == "grpc":
        match = _GRPC_STATUS.search(text)
        assert match is not None
        return (
            f"refused this client ({match.group(1)}: {match.group(2)}); it presented "
            f"{credentials.presented()}"
        )
    if kind == "http":
        match = _HTTP_STATUS.search(text)
        assert match is not None
        return (
            f"refused this client (HTTP {match.group(1)}{match.group(2) or ''}, from the server "
            f"or a proxy before it); it presented {credentials.presented()}"
        )
    return None


def _refusal_in_text(text: str) -> str | None:
    """Which refusal an SDK connection error tells of (its text is all it gives), if any."""
    if _CERTIFICATE_ERROR.search(text):
        return "certificate"
    if _ALERT.search(text):
        return "alert"
    if "InvalidContentType" in text:
        return "plain"
    status = _GRPC_STATUS.search(text)
    if status and status.group(1) in ("Unauthenticated", "PermissionDenied"):
        return "grpc"
    http = _HTTP_STATUS.search(text)
    if http and http.group(1) in _REFUSING_HTTP and "error after connection" in text:
        return "http"
    return None


def _server_certificate_refused(text: str, settings: Settings, credentials: Credentials) -> str:
    """What is wrong with the server's certificate, and which setting would fix it."""
    match = _CERTIFICATE_ERROR.search(text)
    kind = match.group(1) if match else "?"
    if kind == "UnknownIssuer":
        trusted = (
            f"the CA in TEMPORAL_TLS_CA_FILE={credentials.ca_file}"
            if credentials.ca_file
            else "a CA this machine trusts (TEMPORAL_TLS_CA_FILE is unset)"
        )
        return f"presented a server certificate not signed by {trusted}: this client refused it"
    if kind.startswith("NotValidForName"):
        wanted = credentials.server_name or settings.temporal_address.rsplit(":", 1)[0]
        shown = text.partition("presented:")[2]
        names = [dns or ip for dns, ip in _PRESENTED_NAME.findall(shown)]
        return (
            f"presented a server certificate for {', '.join(names) or 'other names'}, not for "
            f"{wanted}: this client refused it; set TEMPORAL_TLS_SERVER_NAME to a name it carries"
        )
    if kind.startswith("Expired"):
        return "presented an expired server certificate: this client refused it"
    return f"presented a server certificate this client refused ({kind})"
