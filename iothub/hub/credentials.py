"""Secrets and their hashes. Pure apart from the randomness of new secrets.

Device and service-account secrets are 192-bit random strings the hub generates, so their hash only
has to keep the registry useless to whoever copies it: argon2id with a light cost (t=1, 8 MiB,
about 5 ms) keeps a fleet's reconnect storm affordable. API tokens are looked up on every request,
so they are stored as SHA-256 (they too are random, never chosen by people).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
TOKEN_PREFIX = "iothub_"


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret: str, hashed: str) -> bool:
    try:
        return bool(_hasher.verify(secret, hashed))
    except Exception:  # a malformed stored hash verifies nothing
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
