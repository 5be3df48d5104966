"""The FastAPI app: the External Seller endpoints as VTEX calls them, and `/healthz`: nothing else
on the port VTEX reaches. Metrics, docs and the codec are the ops listener's (api/ops.py)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from temporalio.client import Client

import temporal_client
from api.errors import install_error_handlers
from api.metrics import install_metrics
from api.models import OrderPlacement, RequestOrderId
from api.routes import health, orders, simulation
from api.simulation import FulfillmentSimulation
from codec import data_converter
from config import Settings, get_settings


def create_app(
    settings: Settings | None = None, client: Client | None = None, *, freeze_gc: bool = False
) -> FastAPI:
    """The app; it connects its own Temporal client unless given one.

    Args:
        freeze_gc: Once started, hide every object alive then (modules, models, routes, the
            client: some 120,000) from the cycle collector: a full collection over them stalls
            every request in flight for 70-90 ms on a 2-core machine. For a process that serves
            one app (`python -m api`); tests, which build many apps in one process, would never
            free theirs.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.client is None:
            # Lazy: the API starts even while Temporal is still starting; /healthz tells. A
            # server that refuses its credentials (TLS, API key) stops it at once.
            try:
                app.state.client = await temporal_client.connect(
                    settings, data_converter=data_converter(settings.encryption_key), lazy=True
                )
            except temporal_client.TemporalRefusedError as err:
                app.state.start_error = str(err)  # python -m api ends with it
                raise
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield

    app = FastAPI(
        title="VTEX External Seller connector",
        summary="Order placement, dispatching and cancellation on durable Temporal workflows.",
        version="1.0.0",  # pyproject.toml's (tests/test_units.py checks they agree)
        lifespan=lifespan,
        # Served by the ops listener (api/ops.py), from `app.openapi()`.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.client = client
    app.state.start_error = None
    # Resolved once: Settings.shipping_table_path resolves a file name on every call.
    app.state.shipping_table_path = settings.shipping_table_path
    install_error_handlers(app)
    app.include_router(orders.router)
    app.include_router(simulation.router)
    app.include_router(health.router)
    install_metrics(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies the routes parse themselves."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (OrderPlacement, RequestOrderId, FulfillmentSimulation):
        model_schema = model.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    app.openapi_schema = schema
    return schema
