"""MQTT authentication and topic ACL for the embedded broker (the policies of :mod:`iothub.mqtt.policy`).

Who may connect (:class:`Authenticator`):

* a device: username = its id, password = its secret, client id = its id; or a TLS client
  certificate whose CN is its id (a username, if given, must match);
* a service account: username ``svc:{name}``, password = its secret (roles: observer, service);
* anyone, when ``mqtt.allow_anonymous`` is set (development only).

Refusals carry the MQTT 3.1.1 CONNACK code: 0x02 client id is not the device id (or, for a service
account, is a registered device's id: it would take that device's connection and session), 0x04 unknown
device or wrong secret (the same code for both), 0x05 disabled device, anonymous access off, or (the
server's check, through the ACL) a Will on a topic the client may not publish to.

What each may do (:class:`TopicAcl`: :func:`may_publish`, :func:`may_subscribe`), with MQTT wildcard
semantics: a filter is allowed only if every topic it can match is allowed, so
``devices/+/commands/#`` or ``#`` are refused to a device even though they include its own topics.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
from dataclasses import dataclass

from iothub.devices import TopicError, TopicKind
from iothub.devices import parse as parse_topic
from iothub.hub.credentials import hash_secret, is_fast, needs_rehash, verify_secret
from iothub.hub.registry import Registry, Role
from iothub.mqtt.codec import BAD_CREDENTIALS, IDENTIFIER_REJECTED, NOT_AUTHORIZED
from iothub.mqtt.policy import Credentials, Refusal
from iothub.mqtt.topics import filter_within

log = logging.getLogger(__name__)

SERVICE_PREFIX = "svc:"
_DEVICE_PUBLISHES = frozenset({TopicKind.TELEMETRY, TopicKind.STATUS, TopicKind.RESPONSE, TopicKind.STATE_REPORTED})
_CACHE_LIMIT = 100_000


class PrincipalKind(enum.StrEnum):
    DEVICE = "device"
    SERVICE = "service"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    name: str
    role: Role | None = None
    registered_device: bool = False  # a device, or (development mode) an anonymous client using a device's id

    @property
    def in_fleet(self) -> bool:
        """Whether its connection is a device's presence (from CONNECT on)."""
        return self.kind is PrincipalKind.DEVICE or self.registered_device


def device_subscriptions(device_id: str) -> tuple[str, str]:
    return f"devices/{device_id}/commands/#", f"devices/{device_id}/state/desired"


def may_publish(principal: Principal, topic: str) -> bool:
    if principal.kind is PrincipalKind.ANONYMOUS:
        return True
    if principal.kind is PrincipalKind.SERVICE:
        return principal.role is Role.SERVICE
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return False
    return parsed is not None and parsed.device_id == principal.name and parsed.kind in _DEVICE_PUBLISHES


def may_subscribe(principal: Principal, topic_filter: str) -> bool:
    if principal.kind is not PrincipalKind.DEVICE:
        return True
    return any(filter_within(topic_filter, allowed) for allowed in device_subscriptions(principal.name))


class TopicAcl:
    """The topic rules above as the MQTT server's ACL."""

    may_publish = staticmethod(may_publish)  # plain functions: the server calls one per message
    may_subscribe = staticmethod(may_subscribe)


class _Slow(Exception):
    """An argon2id hash must be checked: off the event loop."""


class Authenticator:
    """Checks credentials against the registry.

    Anonymous clients, certificates and SHA-256 secret hashes (what the hub writes) are checked on the
    event loop: a registry lookup and a hash of microseconds, no thread hop. Only a secret still
    hashed with argon2id (written by an earlier version) takes a worker thread; once verified, its hash
    is replaced by the SHA-256 one, so each secret pays that once, and verified argon2 secrets are
    cached (by their hash) meanwhile.
    """

    def __init__(self, registry: Registry, allow_anonymous: bool) -> None:
        self.registry = registry
        self.allow_anonymous = allow_anonymous
        self._verified: set[tuple[str, str]] = set()  # (stored argon2 hash, sha256 of the presented secret)
        # argon2 takes 8 MiB and ~5 ms per check: a reconnect storm queues here instead of
        # spending a thread and 8 MiB on every waiting client.
        self._hashing = asyncio.Semaphore(os.cpu_count() or 2)

    async def authenticate(self, credentials: Credentials) -> Principal | Refusal:
        c = credentials
        password = None if c.password is None else c.password.decode(errors="replace")  # not UTF-8: no match
        args = (c.client_id, c.username, password, c.certificate_cn)
        try:
            return self._authenticate(*args, slow=False)
        except _Slow:
            pass
        async with self._hashing:
            return await asyncio.to_thread(self._authenticate, *args, slow=True)

    def _authenticate(
        self, client_id: str, username: str | None, password: str | None, peer_cn: str | None, *, slow: bool
    ) -> Principal | Refusal:
        if peer_cn is not None:
            if username is not None and username != peer_cn:
                return Refusal(BAD_CREDENTIALS, f"username {username!r} differs from certificate CN {peer_cn!r}")
            return self._device(client_id, peer_cn, None, cert_verified=True, slow=slow)
        if username is None:
            if self.allow_anonymous:
                registered = self.registry.find_device(client_id) is not None
                return Principal(PrincipalKind.ANONYMOUS, client_id, registered_device=registered)
            return Refusal(NOT_AUTHORIZED, "anonymous access is off (mqtt.allow_anonymous)")
        if username.startswith(SERVICE_PREFIX):
            name = username[len(SERVICE_PREFIX) :]
            account = self.registry.find_account(name)
            if account is None or password is None or not self._verify(password, account.secret_hash, slow):
                return Refusal(BAD_CREDENTIALS, f"service account {name!r}: unknown or wrong secret")
            if self.registry.find_device(client_id) is not None:  # it would take the device's session over
                return Refusal(
                    IDENTIFIER_REJECTED, f"service account {name!r} may not use device {client_id!r}'s client id"
                )
            if slow and needs_rehash(account.secret_hash):  # in the worker thread: a registry write
                self.registry.upgrade_account_hash(name, account.secret_hash, hash_secret(password))
            return Principal(PrincipalKind.SERVICE, name, account.role)
        return self._device(client_id, username, password, cert_verified=False, slow=slow)

    def _device(
        self, client_id: str, device_id: str, password: str | None, *, cert_verified: bool, slow: bool
    ) -> Principal | Refusal:
        device = self.registry.find_device(device_id)
        if device is None:
            return Refusal(BAD_CREDENTIALS, f"unknown device {device_id!r}")
        if not cert_verified:
            if password is None or not self._verify(password, device.secret_hash, slow):
                return Refusal(BAD_CREDENTIALS, f"device {device_id!r}: missing or wrong secret")
            if slow and needs_rehash(device.secret_hash):  # in the worker thread: a registry write
                self.registry.upgrade_secret_hash(device_id, device.secret_hash, hash_secret(password))
        if not device.enabled:
            return Refusal(NOT_AUTHORIZED, f"device {device_id!r} is disabled")
        if client_id != device_id:
            return Refusal(IDENTIFIER_REJECTED, f"device {device_id!r} must connect with client id {device_id!r}")
        return Principal(PrincipalKind.DEVICE, device_id, registered_device=True)

    def _verify(self, secret: str, stored_hash: str, slow: bool) -> bool:
        if is_fast(stored_hash):
            return verify_secret(secret, stored_hash)
        key = (stored_hash, hashlib.sha256(secret.encode()).hexdigest())
        if key in self._verified:
            return True
        if not slow:
            raise _Slow
        if not verify_secret(secret, stored_hash):
            return False
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified.add(key)
        return True
