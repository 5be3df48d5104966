"""One error shape for every answer that is not a success:
`{"error": {"code": "...", "message": "..."}}`.

Bad input is a 4xx that says which field is wrong; Temporal being out of reach is a 503 the
marketplace retries; nothing a client sends can produce a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.models import Error, ErrorBody, ErrorDetail

log = logging.getLogger("api")

# The order workflow's refusals (ApplicationError types) that the API answers with 409 Conflict.
CONFLICT_TYPES = frozenset(
    {
        "MarketplaceOrderIdMismatch",
        "OrderCanceled",
        "OrderExpired",
        "OrderInvoiced",
        "OutOfStock",
        "ReservationFailed",
        "OrderAlreadyDispatched",
        # An operator's action that makes no sense now (api/operator_actions.py).
        "ActionRefused",
    }
)


class ApiError(Exception):
    """An answer other than success, with its status, stable code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON answer."""
        body = ErrorBody(error=Error(code=self.code, message=self.message, details=self.details))
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=self.status, headers=self.headers
        )


def not_found(order_id: str) -> ApiError:
    """The 404 of an order this seller does not have."""
    return ApiError(404, "OrderNotFound", f"order {order_id} not found")


def unavailable(message: str) -> ApiError:
    """A 503 the marketplace should retry: nothing was lost, the retry joins the same work."""
    return ApiError(503, "ServiceUnavailable", message, headers={"Retry-After": "2"})


def invalid_request(errors: Sequence[Any]) -> ApiError:
    """A 400 naming every field that is wrong, as `items[0].quantity`."""
    details = [
        ErrorDetail(field=field_path(error.get("loc", ())), message=error.get("msg", "invalid"))
        for error in errors
    ]
    first = details[0] if details else ErrorDetail(field="body", message="invalid")
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(400, "InvalidRequest", f"{first.field}: {first.message}{more}", details)


def field_path(loc: Sequence[Any]) -> str:
    """`("body", "items", 0, "quantity")` -> `items[0].quantity`."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


# No body is read beyond this size: a larger one is refused before it is held in memory.
MAX_BODY_BYTES = 1024 * 1024


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The body's JSON (parse_json), read only up to `limit` bytes: a larger one is refused
    before it is held in memory, whether it says its size (`Content-Length`) or streams it."""
    return parse_json(await read_body(request, limit), request.headers.get("content-type"))


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body's bytes, read only up to `limit` (413 beyond) and within the app's
    REQUEST_BODY_TIMEOUT_SECONDS (408 beyond, and the connection closed)."""
    too_large = ApiError(413, "PayloadTooLarge", f"the body is over {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    # Both apps keep the settings in their state (the ops app shares the VTEX app's).
    seconds = request.app.state.settings.request_body_timeout_seconds
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as err:
        raise ApiError(
            408,
            "RequestTimeout",
            f"the body did not arrive within {seconds:g} s ({size} of "
            f"{declared or 'an unknown number of'} bytes)",
            headers={"Connection": "close"},
        ) from err
    return b"".join(chunks)


def parse_json(raw: bytes, content_type: str | None) -> Any:
    """The JSON of a request body, or the 4xx that says why it is not."""
    if content_type and "json" not in content_type.lower():
        raise ApiError(415, "UnsupportedMediaType", f"send application/json, not {content_type}")
    if not raw.strip():
        raise ApiError(400, "InvalidRequest", "the body is empty; a JSON object is expected")
    try:
        payload = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as err:
        raise too_deep() from err
    except ValueError as err:
        # Also an integer of more than 4,300 digits, which Python refuses to convert.
        raise malformed(f"the body is not valid JSON: {err}") from err
    if nesting_depth(payload) > MAX_JSON_DEPTH:
        raise too_deep()
    try:
        # A lone UTF-16 surrogate ("\ud800") is valid JSON but no Unicode text: nothing after
        # this (pydantic's JSON for Temporal, the answer) could encode it, and the order's
        # workflow would start before the answer failed. Keys count too.
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError as err:
        raise malformed("the body holds a lone UTF-16 surrogate, which is not text") from err
    return payload


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), and no JSON answer could carry them back.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond what a JSON number holds")
    return value


def malformed(message: str) -> ApiError:
    """The 400 of a body that is not JSON this service can read."""
    return ApiError(400, "MalformedJson", message)


# VTEX's bodies nest about five levels deep; far deeper is an attack on the parsers after ours.
MAX_JSON_DEPTH = 32


def too_deep() -> ApiError:
    """The 400 of a body nested beyond MAX_JSON_DEPTH."""
    return malformed(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")


def nesting_depth(value: Any) -> int:
    """How deeply `value` nests lists and objects, counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def validation_error(err: ValidationError) -> ApiError:
    """A pydantic validation error as a 400."""
    return invalid_request(err.errors(include_url=False))


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure, expected or not, through the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, err: RequestValidationError) -> JSONResponse:
        return invalid_request(err.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NotFound", 405: "MethodNotAllowed"}
        return ApiError(
            err.status_code, codes.get(err.status_code, "HttpError"), str(err.detail)
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, "InternalError", "unexpected error; it was logged").response()
