"""The codec server: the Temporal UI sends payloads here to show them decrypted.

`POST /codec/decode` and `/codec/encode` take and answer Temporal's `Payloads` as JSON, as the
UI's "Codec Server" setting expects; `make run` starts the UI pointed at them. They are served on
the ops listener only (api/ops.py), never on the port VTEX calls: they answer only when
PAYLOAD_ENCRYPTION_KEY is set, to the UI's origin (CORS), and to the callers api/ops_auth.py
lets in (OPS_TOKEN, the UI's OIDC token); VTEX's credentials do not open them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload, Payloads

from api.deps import SettingsDep, require_codec_caller
from api.errors import ApiError, parse_json, read_body
from codec import EncryptionCodec
from config import Settings

router = APIRouter(
    prefix="/codec", tags=["Operations"], dependencies=[Depends(require_codec_caller)]
)


# The Temporal UI sends whole payloads, which Temporal allows up to 2 MB each (an order's input
# nears 1 MiB before encryption and base64): room for a few of them, still bounded.
CODEC_MAX_BODY_BYTES = 8 * 1024 * 1024


# The UI sends the payloads of one event field at a time: a few, each with a few metadata
# entries. More is not the UI.
CODEC_MAX_PAYLOADS = 1_000
CODEC_MAX_METADATA = 64
# Parsing, AES-GCM and JSON of up to 8 MiB run here, one call at a time, off the event loop that
# also serves VTEX's calls (a 6 MiB body stalled a simulation for 3 s when they ran on it).
_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")


def _parsed(raw: bytes, content_type: str | None) -> Payloads:
    body = parse_json(raw, content_type)
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequest", "body: Temporal Payloads, a JSON object, expected")
    payloads = body.get("payloads")
    if isinstance(payloads, list):
        if len(payloads) > CODEC_MAX_PAYLOADS:
            raise ApiError(
                400, "InvalidRequest", f"at most {CODEC_MAX_PAYLOADS} payloads in one call"
            )
        for payload in payloads:
            metadata = payload.get("metadata") if isinstance(payload, dict) else None
            if isinstance(metadata, dict) and len(metadata) > CODEC_MAX_METADATA:
                raise ApiError(
                    400,
                    "InvalidRequest",
                    f"at most {CODEC_MAX_METADATA} metadata entries a payload",
                )
    try:
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as err:
        raise ApiError(400, "InvalidRequest", f"expected Temporal Payloads as JSON: {err}") from err


def _codec(settings: SettingsDep) -> EncryptionCodec:
    if not settings.encryption_key:
        raise ApiError(404, "NotFound", "payload encryption is off (PAYLOAD_ENCRYPTION_KEY)")
    return EncryptionCodec.from_setting(settings.encryption_key)


def _as_json(payloads: Sequence[Payload]) -> bytes:
    # Each payload on its own: copying them into one Payloads message holds the GIL (and so the
    # event loop) for as long as the copy takes.
    body = {"payloads": [json_format.MessageToDict(payload) for payload in payloads]}
    return json.dumps(body).encode()


def _decoded(codec: EncryptionCodec, raw: bytes, content_type: str | None) -> bytes:
    payloads = _parsed(raw, content_type)
    try:
        decoded = asyncio.run(codec.decode(payloads.payloads))
    except InvalidTag as err:
        # Not sealed by this key (or altered): cryptography says so without a message.
        raise ApiError(400, "InvalidRequest", "a payload does not decrypt with its key") from err
    except (ValueError, DecodeError) as err:
        raise ApiError(400, "InvalidRequest", f"a payload cannot be decoded: {err}") from err
    return _as_json(decoded)


def _encoded(codec: EncryptionCodec, raw: bytes, content_type: str | None) -> bytes:
    return _as_json(asyncio.run(codec.encode(_parsed(raw, content_type).payloads)))


async def _in_the_codec_thread(
    work: Callable[[EncryptionCodec, bytes, str | None], bytes],
    request: Request,
    settings: Settings,
) -> Response:
    codec = _codec(settings)
    # Only the reading on the event loop; the parsing, the crypto and the answer's JSON in the
    # codec's thread.
    raw = await read_body(request, CODEC_MAX_BODY_BYTES)
    content_type = request.headers.get("content-type")
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(_WORK, work, codec, raw, content_type)
    return Response(answer, media_type="application/json")


@router.post("/decode", summary="Decrypt payloads for the Temporal UI")
async def decode(request: Request, settings: SettingsDep) -> Response:
    """Payloads in, the same payloads decrypted out."""
    return await _in_the_codec_thread(_decoded, request, settings)


@router.post("/encode", summary="Encrypt payloads for the Temporal UI")
async def encode(request: Request, settings: SettingsDep) -> Response:
    """Payloads in, the same payloads encrypted out (the UI's "send signal" and such)."""
    return await _in_the_codec_thread(_encoded, request, settings)
