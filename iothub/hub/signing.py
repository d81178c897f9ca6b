"""Standard Webhooks signing: pure functions, no I/O.

A message is signed as ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the key that
the endpoint's secret ``whsec_<base64 key>`` carries. While a secret is being rotated, the message
carries one signature per valid secret, separated by spaces; a receiver accepts any that verifies.
See https://www.standardwebhooks.com/ (the ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` headers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
KEY_BYTES = 32


class SecretError(ValueError):
    """A secret that is not ``whsec_`` followed by a base64 key."""


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise SecretError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise SecretError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise SecretError("a webhook secret needs a key after whsec_")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, of ``body`` sent as message ``msg_id`` at ``timestamp`` (epoch s)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(msg_id: str, timestamp: int, body: bytes, secrets_: Iterable[str]) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given (newest first)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


TOLERANCE_S = 300


def check(
    secret: str, headers: dict[str, str], body: bytes, now_s: float, tolerance_s: float = TOLERANCE_S
) -> str | None:
    """None when one of the message's ``v1`` signatures verifies with ``secret`` and its timestamp is
    within ``tolerance_s`` of ``now_s``; otherwise why not. ``headers``: names in lower case."""
    msg_id, timestamp = headers.get("webhook-id"), headers.get("webhook-timestamp", "")
    if not msg_id:
        return "no webhook-id header"
    if not timestamp.isdigit():
        return f"webhook-timestamp {timestamp!r} is not epoch seconds"
    age = now_s - int(timestamp)
    if abs(age) > tolerance_s:
        return f"webhook-timestamp is {abs(age):.0f} s {'old' if age > 0 else 'ahead'} (over {tolerance_s:g} s off)"
    expected = sign(secret, msg_id, int(timestamp), body)
    given = headers.get("webhook-signature", "").split()
    if not given:
        return "no webhook-signature header"
    if any(hmac.compare_digest(expected, signature) for signature in given):
        return None
    return "signature does not match the secret"
