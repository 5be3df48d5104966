"""The codec server: the Temporal UI sends payloads here to show them decrypted.

`POST /codec/decode` and `/codec/encode` take and answer Temporal's `Payloads` as JSON, as the
UI's "Codec Server" setting expects; `make run` starts the UI pointed at them. They are served on
the ops listener only (api/ops.py), never on the port VTEX calls: they answer only when
PAYLOAD_ENCRYPTION_KEY is set, to the UI's origin (CORS), and to the callers api/ops_auth.py
lets in (OPS_TOKEN, the UI's OIDC token); VTEX's credentials do not open them.
"""

from __future__ import annotations

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


async def _payloads(request: Request) -> Payloads:
    # The same bounded reader as the order endpoints: size cap, depth cap, no 500 on odd JSON.
    body = await read_json(request, CODEC_MAX_BODY_BYTES)
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequest", "body: Temporal Payloads, a JSON object, expected")
    try:
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as err:
        raise ApiError(400, "InvalidRequest", f"expected Temporal Payloads as JSON: {err}") from err


def _codec(settings: SettingsDep) -> EncryptionCodec:
    if not settings.encryption_key:
        raise ApiError(404, "NotFound", "payload encryption is off (PAYLOAD_ENCRYPTION_KEY)")
    return EncryptionCodec.from_setting(settings.encryption_key)


@router.post("/decode", summary="Decrypt payloads for the Temporal UI")
async def decode(request: Request, settings: SettingsDep) -> JSONResponse:
    """Payloads in, the same payloads decrypted out."""
    codec = _codec(settings)
    payloads = await _payloads(request)
    try:
        decoded = await codec.decode(payloads.payloads)
    except InvalidTag as err:
        # Not sealed by this key (or altered): cryptography says so without a message.
        raise ApiError(400, "InvalidRequest", "a payload does not decrypt with its key") from err
    except (ValueError, DecodeError) as err:
        raise ApiError(400, "InvalidRequest", f"a payload cannot be decoded: {err}") from err
    return JSONResponse(json_format.MessageToDict(Payloads(payloads=decoded)))


@router.post("/encode", summary="Encrypt payloads for the Temporal UI")
async def encode(request: Request, settings: SettingsDep) -> JSONResponse:
    """Payloads in, the same payloads encrypted out (the UI's "send signal" and such)."""
    codec = _codec(settings)
    payloads = await _payloads(request)
    encoded = await codec.encode(payloads.payloads)
    return JSONResponse(json_format.MessageToDict(Payloads(payloads=encoded)))
