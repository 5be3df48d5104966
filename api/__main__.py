"""`python -m api`: serve the API on API_HOST:API_PORT against TEMPORAL_ADDRESS."""

from __future__ import annotations

import ipaddress
import logging
import sys

import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from activities.catalog import Catalog
from api.app import create_app
from api.catalog_check import checks_catalog
from codec import encryption_line, encryption_problem
from config import Settings, get_settings
from logs import configure_logging

log = logging.getLogger("api")


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # A host name: it may resolve to anything.


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


def main() -> None:
    """Serve until interrupted; refuse to start with authentication half on or off in public,
    or without the payload key that REQUIRE_PAYLOAD_ENCRYPTION asks for."""
    configure_logging()
    try:
        settings = get_settings()
    except ValidationError as err:
        sys.exit(f"the API cannot start: {err.errors()[0]['msg'].removeprefix('Value error, ')}")
    problem = authentication_problem(settings) or encryption_problem(
        settings.encryption_key, settings.require_payload_encryption
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
    line = catalog_line(settings)
    # Loud when it will refuse every SKU.
    (log.warning if line.startswith("catalog: EMPTY") else log.info)("%s", line)
    # uvicorn takes httptools and uvloop (dependencies) when they are installed: "auto".
    uvicorn.run(
        create_app(settings, freeze_gc=True),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the format configure_logging set
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
