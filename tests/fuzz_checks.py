"""Schemathesis checks of our own, loaded by tests/test_fuzzing.py (SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def errors_in_the_json_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx answers `{"error": {"code": ..., "message": ...}}`."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and error.get("code") and error.get("message")):
        raise AssertionError(f"{response.status_code} without the JSON error shape: {body!r}")
    return None
