"""Customer data encrypted at rest in Temporal: a payload codec with AES-GCM.

With PAYLOAD_ENCRYPTION_KEY set, every payload the API and the workers hand to Temporal (workflow
inputs, update arguments and results, activity inputs and results, query answers) is encrypted
before it leaves the process, so the history Temporal stores holds no customer name, address or
document in clear. The key setting is a comma-separated list of `key-id:base64-key` (32-byte AES
keys): the first one encrypts, every one decrypts, and each payload names its key id in its
metadata, so keys rotate by putting a new key first and keeping the old ones after it for as long
as orders written with them may be read.

`python -m codec new-key [key-id]` prints a fresh key entry. The Temporal UI shows decrypted
payloads through the codec routes of the API's ops listener (api/routes/codec.py, api/ops.py).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole payload (its metadata included), the key id in the clear."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        """Encrypt with `keys[current]`; decrypt with whichever key a payload names."""
        if current not in keys:
            raise ValueError(f"no key {current!r}")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current = current

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids, the one that encrypts first."""
        return [self._current, *(key_id for key_id in self._ciphers if key_id != self._current)]

    @classmethod
    def from_setting(cls, setting: str) -> EncryptionCodec:
        """From PAYLOAD_ENCRYPTION_KEY: `id:base64key[,id:base64key...]`, the first encrypts."""
        keys: dict[str, bytes] = {}
        for entry in (part.strip() for part in setting.split(",")):
            if not entry:
                continue
            key_id, _, encoded = entry.partition(":")
            try:
                key = base64.b64decode(encoded, validate=True)
            except ValueError as err:
                raise ValueError(f"PAYLOAD_ENCRYPTION_KEY: key {key_id!r} is not base64") from err
            if not key_id or len(key) != 32:
                raise ValueError(
                    f"PAYLOAD_ENCRYPTION_KEY: {key_id or '?'!r} must be key-id:base64 of 32 bytes"
                )
            keys[key_id] = key
        if not keys:
            raise ValueError("PAYLOAD_ENCRYPTION_KEY holds no key")
        return cls(keys, current=next(iter(keys)))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload with the current key."""
        cipher = self._ciphers[self._current]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(
                    metadata={
                        "encoding": ENCODING,
                        KEY_ID_METADATA: self._current.encode(),
                    },
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt what this codec encrypted; pass anything else through as it is."""
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode()
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                raise ValueError(f"payload encrypted with key {key_id!r}, which is not configured")
            nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            decoded.append(Payload.FromString(cipher.decrypt(nonce, sealed, None)))
        return decoded


def data_converter(encryption_key: str) -> DataConverter:
    """The pydantic data converter, encrypting payloads when a key is configured."""
    if not encryption_key:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter, payload_codec=EncryptionCodec.from_setting(encryption_key)
    )


def encryption_problem(setting: str, required: bool) -> str | None:
    """Why a process must not start with this PAYLOAD_ENCRYPTION_KEY, or None: a key that does
    not parse, or none while REQUIRE_PAYLOAD_ENCRYPTION says customer data must not reach
    Temporal in clear."""
    if setting:
        try:
            EncryptionCodec.from_setting(setting)
        except ValueError as err:
            return str(err)
        return None
    if required:
        return (
            "REQUIRE_PAYLOAD_ENCRYPTION is true but PAYLOAD_ENCRYPTION_KEY is not set: customer "
            "data would reach Temporal in clear. Set PAYLOAD_ENCRYPTION_KEY (or the file "
            "payload_encryption_key in SECRETS_DIR); python -m codec new-key makes one"
        )
    return None


def encryption_line(setting: str) -> str:
    """What a process says at start about its payloads: encrypted, with which key (its id,
    never the key), or not. `setting` must have passed `encryption_problem`."""
    if not setting:
        return (
            "payloads: NOT encrypted (PAYLOAD_ENCRYPTION_KEY is not set): customer data is "
            "stored in Temporal in clear"
        )
    current, *older = EncryptionCodec.from_setting(setting).key_ids
    also = f"; older key(s) {', '.join(older)} decrypt only" if older else ""
    return f"payloads: encrypted (AES-256-GCM) with key id {current}{also}"


def new_key_entry(key_id: str | None = None) -> str:
    """A fresh `key-id:base64key` entry for PAYLOAD_ENCRYPTION_KEY."""
    key_id = key_id or datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


if __name__ == "__main__":
    if sys.argv[1:2] != ["new-key"]:
        sys.exit("usage: python -m codec new-key [key-id]")
    print(new_key_entry(sys.argv[2] if len(sys.argv) > 2 else None))
