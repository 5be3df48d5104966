"""GET /healthz: whether the API reaches Temporal."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from temporalio.service import RPCError

from api.deps import ClientDep, SettingsDep
from api.errors import unavailable

router = APIRouter(tags=["Operations"])


@router.get("/healthz")
async def healthz(client: ClientDep, settings: SettingsDep) -> dict[str, str]:
    """200 once the API reaches Temporal, 503 before."""
    try:
        await client.service_client.check_health(timeout=timedelta(seconds=2))
    except (RPCError, RuntimeError) as err:
        raise unavailable(f"Temporal at {settings.temporal_address} not reachable: {err}") from err
    return {"status": "ok", "temporal": settings.temporal_address}
