"""What route handlers receive: the settings, the one Temporal client, the caller's credentials
(VTEX's on the VTEX-facing port; the ops listener's on the other, api/ops_auth.py).

Every dependency is `async def`, even with nothing to await: FastAPI runs a plain `def` one in
a thread, a hop per dependency per request."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from temporalio.client import Client

from activities.catalog import Catalog
from api.errors import ApiError, unavailable
from api.ops_auth import OpsAccess
from config import Settings


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with (tests create apps with their own)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_client(request: Request) -> Client:
    """The process's one Temporal client, created in the app's lifespan (the VTEX-facing app's:
    the ops app shares its state)."""
    client: Client | None = request.app.state.client
    if client is None:  # The ops listener can answer before the other app's lifespan ran.
        raise unavailable("starting: not connected to Temporal yet")
    return client


async def get_catalog(request: Request) -> Catalog:
    """The simulated warehouse's catalog, read directly (never through Temporal)."""
    catalog: Catalog | None = getattr(request.app.state, "catalog", None)
    if catalog is None:
        catalog = request.app.state.catalog = Catalog.from_settings(request.app.state.settings)
    return catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
ClientDep = Annotated[Client, Depends(get_client)]


async def require_vtex_credentials(
    settings: SettingsDep,
    app_key: Annotated[str | None, Header(alias="X-VTEX-API-AppKey")] = None,
    app_token: Annotated[str | None, Header(alias="X-VTEX-API-AppToken")] = None,
) -> None:
    """Check the app key and token VTEX sends, when SELLER_APP_KEY/SELLER_APP_TOKEN are set."""
    if not settings.seller_auth_enabled:
        return
    key_ok = secrets.compare_digest((app_key or "").encode(), settings.seller_app_key.encode())
    token_ok = secrets.compare_digest(
        (app_token or "").encode(), settings.seller_app_token.encode()
    )
    if not (key_ok and token_ok):
        raise ApiError(
            401, "Unauthorized", "missing or wrong X-VTEX-API-AppKey / X-VTEX-API-AppToken"
        )


async def get_ops_access(request: Request) -> OpsAccess:
    """The ops listener's credentials (set by create_ops_app)."""
    access: OpsAccess = request.app.state.ops_access
    return access


OpsAccessDep = Annotated[OpsAccess, Depends(get_ops_access)]


async def require_ops_token(
    access: OpsAccessDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """`Authorization: Bearer <OPS_TOKEN>`, when OPS_TOKEN is set (api/ops_auth.py, rule 3)."""
    access.check_ops_token(authorization)


async def require_codec_caller(
    access: OpsAccessDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """OPS_TOKEN or a JWT of CODEC_JWKS_URL, when either is set (api/ops_auth.py, rule 2)."""
    await access.check_codec_caller(authorization)
