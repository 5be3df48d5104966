"""`POST /catalog/changes` on the ops listener: price and stock changes the seller's own system
(its ERP) reports, applied to the catalog in one transaction, each change id once, and told to the
marketplace as a catalog load's are (the outbox, change_relay.py). Behind OPS_TOKEN like the rest
of the listener. The work is `Catalog.apply_changes` (activities/catalog.py), which the command
`python -m activities.catalog change` runs too; this module parses, calls and maps."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from activities.catalog import CatalogChanges, CatalogChangesAnswer, ChangeIdReused, UnknownSku
from api.deps import CatalogDep, require_ops_token
from api.errors import ApiError, read_json, unavailable, validation_error
from api.models import ErrorBody

router = APIRouter(
    prefix="/catalog",
    tags=["Catalog"],
    dependencies=[Depends(require_ops_token)],
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong OPS_TOKEN"},
        403: {"model": ErrorBody, "description": "OriginNotAllowed: a web page's call"},
        409: {"model": ErrorBody, "description": "ChangeIdReused: nothing applied"},
        415: {"model": ErrorBody, "description": "Not application/json"},
        422: {"model": ErrorBody, "description": "UnknownSku, InvalidRequest: nothing applied"},
        503: {"model": ErrorBody, "description": "The catalog's database unreachable: retry"},
    },
)


# Reports are written one at a time, in a thread of their own: waiting for the warehouse's write
# lock (a catalog load in another process; up to SQLite's busy timeout), they must not hold the
# default pool's threads, in which the VTEX-facing port's simulations read the catalog within 2 s.
# The transaction takes its SKUs' locks anyway: two reports at once would mostly wait on each other.
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-changes")


@router.post("/changes", response_model=CatalogChangesAnswer)
async def report_changes(request: Request, catalog: CatalogDep) -> CatalogChangesAnswer:
    """Apply price and stock changes in their order, all or none; a change id applied before is
    answered `applied: false` and changes nothing."""
    # As the operators' actions: not for pages (a browser's cross-site POST carries an Origin),
    # and JSON only, which a page cannot send to another site without a preflight.
    if "origin" in request.headers:
        raise ApiError(403, "OriginNotAllowed", "price and stock changes are not for web pages")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    try:
        # Strict: `"stock": "5"` or `"price": 19.9` is a mistake upstream, not a number to guess.
        batch = CatalogChanges.model_validate(await read_json(request), strict=True)
    except ValidationError as err:
        # The house's error (`InvalidRequest`, each field named), as a 422: the body is JSON,
        # and the changes it holds are what cannot be applied.
        invalid = validation_error(err)
        raise ApiError(422, invalid.code, invalid.message, invalid.details) from err
    try:
        # A blocking transaction: off the event loop, which also serves the VTEX-facing port.
        loop = asyncio.get_running_loop()
        applied = await loop.run_in_executor(_WRITER, catalog.apply_changes, batch.changes)
    except UnknownSku as err:
        raise ApiError(422, err.code, str(err)) from err
    except ChangeIdReused as err:
        raise ApiError(409, err.code, str(err)) from err
    except (SQLAlchemyError, OSError) as err:
        raise unavailable(
            "the catalog could not be written; send the same changes again (any applied "
            "already are answered applied: false)"
        ) from err
    return CatalogChangesAnswer(changes=applied)
