"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>".

With WEBHOOK_SECRET set, every delivery carries

    X-Whisperd-Timestamp: <unix seconds when this attempt was sent>
    X-Whisperd-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

The timestamp is inside the signed text, so a captured delivery cannot be replayed later
with a fresh timestamp; a receiver rejects timestamps outside a tolerance window.

This module uses the standard library only, so a receiver can copy it as it is.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Whisperd-Timestamp"
SIGNATURE_HEADER = "X-Whisperd-Signature"
_PREFIX = "sha256="


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int, body: bytes | str) -> str:
    """The X-Whisperd-Signature value, "sha256=<hex>", for this timestamp and raw body."""
    message = str(int(timestamp)).encode("ascii") + b"." + _as_bytes(body)
    digest = hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # HTTP header names are case-insensitive, and frameworks differ in how they spell them.
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_secs: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when `body` (the raw request body, before any JSON parsing) carries a valid
    signature from a sender holding `secret`, sent within `tolerance_secs` of now."""
    stamp = _header(headers, TIMESTAMP_HEADER)
    given = _header(headers, SIGNATURE_HEADER)
    if stamp is None or given is None:
        return False
    try:
        timestamp = int(stamp.strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_secs:
        return False
    expected = sign(secret, timestamp, body)
    # compare_digest: the time taken does not reveal how many leading characters matched.
    return hmac.compare_digest(expected.encode("ascii"), given.strip().encode("ascii", "replace"))
