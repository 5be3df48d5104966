"""The ops listener: what the people running the service use, on a port VTEX does not reach.

`GET /metrics` (the registry the VTEX-facing app's metrics middleware fills: one process),
`GET /docs` and `GET /openapi.json` (the VTEX-facing app's routes), `POST /codec/decode` and
`/codec/encode` (the payload codec the Temporal UI and the `temporal` CLI call), operators' actions
on an order (`POST /orders/{orderId}/resend-invoice`, `/retry-now`, `/stop-tracking`), the
price and stock changes the seller's own system reports (`POST /catalog/changes`), and
`GET /healthz`.
Who may call what: api/ops_auth.py. `python -m api` serves it on OPS_HOST:OPS_PORT beside the
VTEX-facing app on API_HOST:API_PORT, in one event loop (api/__main__.py). See
docs/ops-listener.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.deps import require_ops_token
from api.errors import ApiError, install_error_handlers
from api.ops_auth import OpsAccess
from api.routes import catalog_changes, codec, health, operator

CODEC_PREFIX = "/codec/"
# What the Temporal UI sends to the codec (its data encoder): JSON, the namespace, and its OIDC
# access token with TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true.
CODEC_ALLOW_HEADERS = "content-type, x-namespace, authorization"


def create_ops_app(api: FastAPI) -> FastAPI:
    """The ops app of `api` (create_app's): it shares its state, so its settings and its one
    Temporal client."""
    settings = api.state.settings
    ops = FastAPI(
        title=f"{api.title}: ops",
        version=api.version,
        # Its own /docs and /openapi.json (below) show the VTEX-facing app's routes, behind
        # OPS_TOKEN; FastAPI's would show this app's, to anyone.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    ops.state = api.state
    ops.state.ops_access = OpsAccess.from_settings(settings)
    install_error_handlers(ops)
    ops.include_router(health.router)
    ops.include_router(metrics.router, dependencies=[Depends(require_ops_token)])
    ops.include_router(_docs_router(api), dependencies=[Depends(require_ops_token)])
    ops.include_router(codec.router)
    ops.include_router(operator.router)
    ops.include_router(catalog_changes.router)
    ops.add_middleware(CodecCors, origins=settings.codec_origins)
    return ops


def _docs_router(api: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(api.openapi())

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{api.title} - docs")

    return router


class CodecCors:
    """CORS on the codec routes only, for the Temporal UI's origins (CODEC_CORS_ORIGINS).

    A preflight from one of them gets 200 and the Access-Control-Allow-* headers (POST; the
    headers the UI sends; credentials, for TEMPORAL_CODEC_INCLUDE_CREDENTIALS); its requests get
    Access-Control-Allow-Origin. A preflight or a request from any other origin gets a 403 and no
    allow header: nothing else is served to a page of another site, even one that a DNS
    rebinding put on this very address. A request with no Origin (the `temporal` CLI, curl) is
    not a browser's and passes. Starlette's CORSMiddleware answers refused preflights in plain
    text, and for every route.
    """

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        """Wrap `app`; `origins` as `scheme://host[:port]`, lower case."""
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CODEC_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if origin.lower() not in self.origins:
            refused = ApiError(
                403,
                "OriginNotAllowed",
                f"the codec does not answer pages of {origin} (CODEC_CORS_ORIGINS)",
                headers={"Vary": "Origin"},
            )
            await refused.response()(scope, receive, send)
            return
        allow = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
        }
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = allow | {
                "Vary": "Origin",
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": CODEC_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
            await Response(status_code=200, headers=preflight)(scope, receive, send)
            return

        async def with_allow(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers.update(allow)
                response_headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, with_allow)
