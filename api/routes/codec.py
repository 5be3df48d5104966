"""The codec server: the Temporal UI sends payloads here to show them decrypted.

`POST /codec/decode` and `/codec/encode` take and answer Temporal's `Payloads` as JSON, as the
UI's "Codec Server" setting expects; `make run` starts the UI pointed at them. They are served on
the ops listener only (api/ops.py), never on the port VTEX calls: they answer only when
PAYLOAD_ENCRYPTION_KEY is set, to the UI's origin (CORS), and to the callers api/ops_auth.py
lets in (OPS_TOKEN, the UI's OIDC token); VTEX's credentials do not open them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payloads

from api.deps import SettingsDep, require_codec_caller
from api.errors import ApiError, read_json
from codec import EncryptionCodec

router = APIRouter(
    prefix="/codec", tags=["Operations"], dependencies=[Depends(require_codec_caller)]
)


# The Temporal UI sends whole payloads, which Temporal allows up to 2 MB each (an order's input
# nears 1 MiB before encryption and base64): room for a few of them, still bounded.
CODEC_MAX_BODY_BYTES = 8 * 1024 * 1024


# The UI sends the payloads of one event field at a time: a few. More is not the UI.
CODEC_MAX_PAYLOADS = 1_000
# Parsing, AES-GCM and JSON of up to 8 MiB run here, one call at a time, off the event loop that
# also serves VTEX's calls (a 6 MiB body stalled a simulation for 3 s when they ran on it).
_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")


async def _payloads(request: Request) -> dict[str, Any]:
    # The same bounded reader as the order endpoints: size cap, depth cap, no 500 on odd JSON.
    body = await read_json(request, CODEC_MAX_BODY_BYTES)
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequest", "body: Temporal Payloads, a JSON object, expected")
    payloads = body.get("payloads")
    if isinstance(payloads, list) and len(payloads) > CODEC_MAX_PAYLOADS:
        raise ApiError(400, "InvalidRequest", f"at most {CODEC_MAX_PAYLOADS} payloads in one call")
    return body


def _parsed(body: dict[str, Any]) -> Payloads:
    try:
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as err:
        raise ApiError(400, "InvalidRequest", f"expected Temporal Payloads as JSON: {err}") from err


def _codec(settings: SettingsDep) -> EncryptionCodec:
    if not settings.encryption_key:
        raise ApiError(404, "NotFound", "payload encryption is off (PAYLOAD_ENCRYPTION_KEY)")
    return EncryptionCodec.from_setting(settings.encryption_key)


def _decoded(codec: EncryptionCodec, body: dict[str, Any]) -> dict[str, Any]:
    payloads = _parsed(body)
    try:
        decoded = asyncio.run(codec.decode(payloads.payloads))
    except InvalidTag as err:
        # Not sealed by this key (or altered): cryptography says so without a message.
        raise ApiError(400, "InvalidRequest", "a payload does not decrypt with its key") from err
    except (ValueError, DecodeError) as err:
        raise ApiError(400, "InvalidRequest", f"a payload cannot be decoded: {err}") from err
    return dict(json_format.MessageToDict(Payloads(payloads=decoded)))


def _encoded(codec: EncryptionCodec, body: dict[str, Any]) -> dict[str, Any]:
    encoded = asyncio.run(codec.encode(_parsed(body).payloads))
    return dict(json_format.MessageToDict(Payloads(payloads=encoded)))


@router.post("/decode", summary="Decrypt payloads for the Temporal UI")
async def decode(request: Request, settings: SettingsDep) -> JSONResponse:
    """Payloads in, the same payloads decrypted out."""
    codec = _codec(settings)
    body = await _payloads(request)
    loop = asyncio.get_running_loop()
    return JSONResponse(await loop.run_in_executor(_WORK, _decoded, codec, body))


@router.post("/encode", summary="Encrypt payloads for the Temporal UI")
async def encode(request: Request, settings: SettingsDep) -> JSONResponse:
    """Payloads in, the same payloads encrypted out (the UI's "send signal" and such)."""
    codec = _codec(settings)
    body = await _payloads(request)
    loop = asyncio.get_running_loop()
    return JSONResponse(await loop.run_in_executor(_WORK, _encoded, codec, body))
