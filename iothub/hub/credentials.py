"""Secrets and their hashes. Pure apart from the randomness of new secrets.

Device and service-account secrets are 192-bit random strings the hub generates, never chosen by
people, so their hash only has to keep the registry useless to whoever copies it. A slow password
hash (argon2id, bcrypt) exists to make guessing a *low-entropy* password expensive; nobody can
enumerate 2^192 candidates however fast the hash, so SHA-256 protects these secrets as well as
argon2id does, at about 1 us per check instead of 5 ms and 8 MiB. That is what lets 5,000 devices
come back within seconds of a hub restart (argon2id bounds a cold start to a few hundred checks per
second on two cores). They are stored as ``sha256$<hex>``.

Hashes written by earlier versions are argon2id (``$argon2id$...``): they keep verifying, and
:func:`needs_rehash` tells the caller to store :func:`hash_secret` of the secret after its next
successful check. API tokens are stored as plain SHA-256 hex (random too, looked up by hash).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)  # earlier versions' secret hashes
TOKEN_PREFIX = "iothub_"
SHA256_PREFIX = "sha256$"


def new_secret() -> str:
    """192 random bits, URL-safe, never starting with ``-``: command-line tools (argparse, click) would
    take such a secret for an option (``--secret -x...``)."""
    while (secret := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return secret


def hash_secret(secret: str) -> str:
    return SHA256_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def is_fast(hashed: str) -> bool:
    """Whether ``hashed`` verifies in microseconds (SHA-256), not milliseconds (argon2id)."""
    return hashed.startswith(SHA256_PREFIX)


def needs_rehash(hashed: str) -> bool:
    """Whether ``hashed`` is of an earlier kind, to be replaced after the secret's next successful check."""
    return not is_fast(hashed)


def verify_secret(secret: str, hashed: str) -> bool:
    if is_fast(hashed):
        return hmac.compare_digest(hash_secret(secret), hashed)
    try:
        return bool(_hasher.verify(secret, hashed))
    except Exception:  # a malformed stored hash verifies nothing
        return False


def hash_secret_argon2(secret: str) -> str:
    """An argon2id hash as earlier versions stored them (kept to verify those, and to test that)."""
    return _hasher.hash(secret)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
