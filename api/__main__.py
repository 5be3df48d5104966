"""`python -m api`: serve the API on API_HOST:API_PORT (what VTEX calls) and the ops listener on
OPS_HOST:OPS_PORT (metrics, docs, the payload codec), one process, one Temporal client at
TEMPORAL_ADDRESS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from activities.catalog import Catalog
from api.app import create_app
from api.catalog_check import checks_catalog
from api.ops import create_ops_app
from api.ops_auth import OpsAccess, is_loopback, ops_problem
from api.slow_clients import http_protocol
from codec import encryption_line, encryption_problem
from config import Settings, get_settings
from logs import configure_logging

log = logging.getLogger("api")


def authentication_problem(settings: Settings) -> str | None:
    """Why the API must not start as configured, or None."""
    if settings.seller_auth_enabled or is_loopback(settings.api_host):
        return None
    if settings.allow_unauthenticated:
        return None
    return (
        f"API_HOST={settings.api_host} is reachable from other machines, but SELLER_APP_KEY and "
        "SELLER_APP_TOKEN are not set: anyone could place and cancel orders. Set both, or set "
        "ALLOW_UNAUTHENTICATED=true if something in front of the API checks callers."
    )


def catalog_line(settings: Settings) -> str:
    """What placements and simulations will sell, said at start: an API that reads an empty
    catalog (WAREHOUSE_URL unset where the workers have it, no catalog loaded) refuses every SKU,
    and this line is where ops see why."""
    if not checks_catalog(settings):
        return f"catalog: the plugged-in warehouse's own ({settings.warehouse})"
    if settings.default_stock is not None:
        return f"catalog: every SKU is sold (DEFAULT_STOCK={settings.default_stock})"
    try:
        count = Catalog.from_settings(settings).count()
    except (SQLAlchemyError, OSError) as err:
        return f"catalog: could not be read yet ({type(err).__name__}); simulations answer 503"
    where = "WAREHOUSE_URL" if settings.warehouse_url else str(settings.warehouse_store)
    if count == 0:
        return (
            f"catalog: EMPTY in {where}: every placement is refused as UnknownSku; load one "
            "(python -m activities.catalog load FILE) or set DEFAULT_STOCK"
        )
    return f"catalog: {count} SKUs in {where}"


def ops_line(settings: Settings, access: OpsAccess) -> str:
    """Where the ops listener listens, and who may call it."""
    where = f"http://{settings.ops_host}:{settings.ops_port}"
    surfaces = (
        "/metrics, /docs, /openapi.json, /codec/{decode,encode}, "
        "/orders/{orderId}/{resend-invoice,retry-now,stop-tracking}, /catalog/changes, /healthz"
    )
    line = f"ops listener on {where} ({surfaces}): {access.summary()}"
    if not settings.ops_token:
        reach = (
            "this machine only"
            if is_loopback(settings.ops_host)
            else "anything that reaches that address"
        )
        wanted = "OPS_TOKEN" if access.jwt_verifier is not None else "OPS_TOKEN, CODEC_JWKS_URL"
        line += f"; only where it listens protects it ({reach}): set {wanted}"
    return line


class Listener(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to `serve`: each of two servers capturing them
    would pass the signal to the other only after its own shutdown, then re-raise it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Capture nothing."""
        yield


async def serve(servers: list[Listener]) -> list[Listener]:
    """Serve until SIGINT/SIGTERM (a second SIGINT: at once), or until one server stops, which
    stops the others; the servers that could not start (e.g. their port taken)."""
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        for server in servers:
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    async def run(server: Listener) -> bool:
        try:
            await server.serve()
        except SystemExit:  # uvicorn's word for "could not listen"; it logged why.
            return False
        # A lifespan that failed (Temporal refused this API's credentials) returns from serve()
        # without ever starting: it logged why.
        return server.started

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    tasks = [asyncio.create_task(run(server)) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    started = await asyncio.gather(*tasks)
    return [server for server, ok in zip(servers, started, strict=True) if not ok]


def main() -> None:
    """Serve until interrupted; refuse to start with authentication half on or off in public,
    or without the payload key that REQUIRE_PAYLOAD_ENCRYPTION asks for."""
    configure_logging()
    try:
        settings = get_settings()
    except ValidationError as err:
        sys.exit(f"the API cannot start: {err.errors()[0]['msg'].removeprefix('Value error, ')}")
    problem = (
        authentication_problem(settings)
        or encryption_problem(settings.encryption_key, settings.require_payload_encryption)
        or ops_problem(settings)
    )
    if problem:
        sys.exit(f"the API cannot start: {problem}")
    log.info(
        "authentication %s",
        "on: every /pvt call must carry X-VTEX-API-AppKey and X-VTEX-API-AppToken"
        if settings.seller_auth_enabled
        else "OFF: /pvt calls are not checked (set SELLER_APP_KEY and SELLER_APP_TOKEN)",
    )
    (log.info if settings.encryption_key else log.warning)(
        "%s", encryption_line(settings.encryption_key)
    )
    api = create_app(settings, freeze_gc=True)
    ops = create_ops_app(api)
    access: OpsAccess = ops.state.ops_access
    # Without OPS_TOKEN the metrics, the operators' actions and the price and stock changes are
    # anyone's who reaches the listener, whether or not a JWT guards the codec.
    (log.warning if not settings.ops_token else log.info)("%s", ops_line(settings, access))
    line = catalog_line(settings)
    # Loud when it will refuse every SKU.
    (log.warning if line.startswith("catalog: EMPTY") else log.info)("%s", line)
    # httptools, named rather than left to uvicorn's "auto", with a time limit for each
    # request's headers that uvicorn lacks (api/slow_clients.py). uvicorn takes uvloop (a
    # dependency) when it is installed: loop="auto".
    http = http_protocol(settings.request_headers_timeout_seconds)
    configs = [
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=http,
            log_config=None,  # keep the format configure_logging set
            timeout_graceful_shutdown=5,
        )
        for app, host, port in (
            (api, settings.api_host, settings.api_port),
            (ops, settings.ops_host, settings.ops_port),
        )
    ]
    with asyncio.Runner(loop_factory=configs[0].get_loop_factory()) as runner:
        failed = runner.run(serve([Listener(config) for config in configs]))
    if api.state.start_error:
        sys.exit(f"the API cannot start: {api.state.start_error}")
    if failed:
        where = ", ".join(f"{s.config.host}:{s.config.port}" for s in failed)
        sys.exit(f"the API stopped: it could not start on {where} (see above)")


if __name__ == "__main__":
    main()
