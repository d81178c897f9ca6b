"""The registry: devices, service accounts and API tokens, in ``{data_dir}/registry.db`` (SQLite).

It is separate from the telemetry store, so it stays put whichever store backend runs. The hub and
the ``iothub devices|accounts|tokens`` commands may use it at the same time (WAL); the hub notices
another process's changes through ``PRAGMA data_version`` (see :meth:`Registry.changed`). Writes
made through this object are also told at once to the listeners of :meth:`Registry.on_device_change`.
The records it stores are values of :mod:`iothub.hub.records`.

Errors::

    RegistryError       a bad id, label or name; or a registry file that cannot be opened (named)
    ├── NotFound        no such device, account or token
    └── AlreadyExists   the id or name is taken
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iothub.devices import is_valid_id
from iothub.hub.credentials import hash_secret, hash_token, new_secret, new_token
from iothub.hub.errors import HubError
from iothub.hub.records import AccountRecord, DeviceRecord, Role, Scope, TokenRecord

__all__ = [
    "AccountRecord", "AlreadyExists", "DeviceListener", "DeviceRecord", "NotFound", "Registry", "RegistryError", "Role",
    "Scope", "TokenRecord",
]  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    labels TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created INTEGER NOT NULL,
    secret_hash TEXT NOT NULL,
    secret_rotated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    revoked INTEGER
);
CREATE TABLE IF NOT EXISTS twins (
    device_id TEXT PRIMARY KEY,
    desired TEXT NOT NULL,
    desired_version INTEGER NOT NULL,
    reported TEXT NOT NULL,
    reported_version INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
"""


class RegistryError(HubError):
    """Base of the registry's errors."""


class NotFound(RegistryError):
    pass


class AlreadyExists(RegistryError):
    pass


DeviceListener = Callable[[str, "DeviceRecord | None"], None]
"""Called with a device id and its record after it is added or changed (``None``: removed)."""


def _now() -> int:
    return time.time_ns() // 1_000_000


def _check_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not is_valid_id(key) or not isinstance(value, str) or len(value) > 128:
            raise RegistryError(f"label {key!r}: keys follow [A-Za-z0-9_.-]{{1,64}}, values are strings of <= 128")


def _open(path: Path) -> sqlite3.Connection:
    db = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        if db is not None:
            db.close()
        if isinstance(exc, FileExistsError | NotADirectoryError):  # the data dir, or a parent, is a file
            blocker = next((d for d in path.parents if d.exists() and not d.is_dir()), path.parent)
            reason = f"{blocker} is not a directory"
        else:
            reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RegistryError(f"cannot open the registry at {path}: {reason}") from None
    return db


class Registry:
    """Thread-safe; every call is a short SQLite transaction (use it off the event loop for hashing)."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the registry; :class:`RegistryError` naming the file when that fails."""
        self.path = path
        self._lock = threading.Lock()
        self._db = _open(path)
        self._version = -1
        self._listeners: list[DeviceListener] = []

    def on_device_change(self, listener: DeviceListener) -> None:
        """Call ``listener`` after each device write through this object: add, update, enable, remove.

        It runs in the thread that wrote, once the write is committed.
        """
        self._listeners.append(listener)

    def _device_changed(self, device_id: str, record: DeviceRecord | None) -> None:
        for listener in self._listeners:  # outside self._lock: a listener may read the registry
            listener(device_id, record)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(str(exc)) from None

    def changed(self) -> bool:
        """True when the registry changed since the last call (by any process)."""
        with self._lock:
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            total = self._db.total_changes
        current = hash((version, total))
        if current == self._version:
            return False
        self._version = current
        return True

    # -- devices -----------------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        name: str | None = None,
        type: str = "generic",
        labels: dict[str, str] | None = None,
    ) -> tuple[DeviceRecord, str]:
        """Register a device; returns it and its secret (shown once, stored hashed)."""
        if not is_valid_id(device_id):
            raise RegistryError(f"device id {device_id!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
        if not is_valid_id(type):
            raise RegistryError(f"device type {type!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
        labels = labels or {}
        _check_labels(labels)
        secret = new_secret()
        now = _now()
        try:
            self._change(
                "INSERT INTO devices VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                (device_id, name or device_id, type, json.dumps(labels), now, hash_secret(secret), now),
            )
        except AlreadyExists:
            raise AlreadyExists(f"device {device_id!r} already exists") from None
        record = self.device(device_id)
        self._device_changed(device_id, record)
        return record, secret

    def device(self, device_id: str) -> DeviceRecord:
        rows = self._query("SELECT * FROM devices WHERE id = ?", (device_id,))
        if not rows:
            raise NotFound(f"no device {device_id!r}")
        return self._device(rows[0])

    def find_device(self, device_id: str) -> DeviceRecord | None:
        rows = self._query("SELECT * FROM devices WHERE id = ?", (device_id,))
        return self._device(rows[0]) if rows else None

    def devices(self) -> list[DeviceRecord]:
        return [self._device(row) for row in self._query("SELECT * FROM devices ORDER BY id")]

    def device_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM devices")[0][0])

    def device_labels(self) -> dict[str, dict[str, str]]:
        """Every registered device's labels (what the hub keeps in memory for routing)."""
        return {i: json.loads(labels) for i, labels in self._query("SELECT id, labels FROM devices")}

    @staticmethod
    def _device(row: tuple[Any, ...]) -> DeviceRecord:
        i, name, type_, labels, enabled, created, secret_hash, rotated = row
        return DeviceRecord(i, name, type_, json.loads(labels), bool(enabled), created, secret_hash, rotated)

    def update_device(
        self,
        device_id: str,
        *,
        name: str | None = None,
        type: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> DeviceRecord:
        current = self.device(device_id)
        if type is not None and not is_valid_id(type):
            raise RegistryError(f"device type {type!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
        if labels is not None:
            _check_labels(labels)
        self._change(
            "UPDATE devices SET name = ?, type = ?, labels = ? WHERE id = ?",
            (name or current.name, type or current.type, json.dumps(current.labels if labels is None else labels),
             device_id),
        )  # fmt: skip
        record = self.device(device_id)
        self._device_changed(device_id, record)
        return record

    def set_enabled(self, device_id: str, enabled: bool) -> DeviceRecord:
        if not self._change("UPDATE devices SET enabled = ? WHERE id = ?", (int(enabled), device_id)):
            raise NotFound(f"no device {device_id!r}")
        record = self.device(device_id)
        self._device_changed(device_id, record)
        return record

    def rotate_secret(self, device_id: str) -> tuple[DeviceRecord, str]:
        secret = new_secret()
        rows = self._change(
            "UPDATE devices SET secret_hash = ?, secret_rotated = ? WHERE id = ?",
            (hash_secret(secret), _now(), device_id),
        )
        if not rows:
            raise NotFound(f"no device {device_id!r}")
        return self.device(device_id), secret

    def upgrade_secret_hash(self, device_id: str, old_hash: str, new_hash: str) -> bool:
        """Replace an earlier kind of hash of the same secret; False if the secret changed meanwhile."""
        sql = "UPDATE devices SET secret_hash = ? WHERE id = ? AND secret_hash = ?"
        return self._change(sql, (new_hash, device_id, old_hash)) > 0

    def remove_device(self, device_id: str) -> None:
        if not self._change("DELETE FROM devices WHERE id = ?", (device_id,)):
            raise NotFound(f"no device {device_id!r}")
        self._change("DELETE FROM twins WHERE device_id = ?", (device_id,))
        self._device_changed(device_id, None)

    # -- service accounts --------------------------------------------------------------------------

    def add_account(self, name: str, role: Role) -> tuple[AccountRecord, str]:
        if not is_valid_id(name):
            raise RegistryError(f"account name {name!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
        secret = new_secret()
        try:
            self._change("INSERT INTO accounts VALUES (?, ?, ?, ?)", (name, role.value, hash_secret(secret), _now()))
        except AlreadyExists:
            raise AlreadyExists(f"account {name!r} already exists") from None
        return self.account(name), secret

    def account(self, name: str) -> AccountRecord:
        rows = self._query("SELECT name, role, secret_hash, created FROM accounts WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no account {name!r}")
        n, role, secret_hash, created = rows[0]
        return AccountRecord(n, Role(role), secret_hash, created)

    def find_account(self, name: str) -> AccountRecord | None:
        try:
            return self.account(name)
        except NotFound:
            return None

    def accounts(self) -> list[AccountRecord]:
        rows = self._query("SELECT name, role, secret_hash, created FROM accounts ORDER BY name")
        return [AccountRecord(n, Role(r), h, c) for n, r, h, c in rows]

    def upgrade_account_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        """:meth:`upgrade_secret_hash` for a service account."""
        sql = "UPDATE accounts SET secret_hash = ? WHERE name = ? AND secret_hash = ?"
        return self._change(sql, (new_hash, name, old_hash)) > 0

    def remove_account(self, name: str) -> None:
        if not self._change("DELETE FROM accounts WHERE name = ?", (name,)):
            raise NotFound(f"no account {name!r}")

    # -- API tokens --------------------------------------------------------------------------------

    def create_token(self, scope: Scope, name: str = "") -> tuple[TokenRecord, str]:
        """A new API token; returns it and its plaintext (shown once, stored as SHA-256)."""
        token = new_token()
        token_id = hash_token(token)[:12]
        self._change(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
            (token_id, name, scope.value, hash_token(token), _now()),
        )
        return self.token(token_id), token

    def token(self, token_id: str) -> TokenRecord:
        rows = self._query("SELECT id, name, scope, created, revoked FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            raise NotFound(f"no token {token_id!r}")
        i, name, scope, created, revoked = rows[0]
        return TokenRecord(i, name, Scope(scope), created, revoked)

    def tokens(self) -> list[TokenRecord]:
        rows = self._query("SELECT id, name, scope, created, revoked FROM tokens ORDER BY created")
        return [TokenRecord(i, n, Scope(s), c, r) for i, n, s, c, r in rows]

    def lookup_token(self, token: str) -> TokenRecord | None:
        """The token's record if it exists (revoked or not); ``None`` for an unknown token."""
        rows = self._query("SELECT id, name, scope, created, revoked FROM tokens WHERE hash = ?", (hash_token(token),))
        if not rows:
            return None
        i, name, scope, created, revoked = rows[0]
        return TokenRecord(i, name, Scope(scope), created, revoked)

    def revoke_token(self, token_id: str) -> TokenRecord:
        if not self._change("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (_now(), token_id)):
            self.token(token_id)  # raises NotFound for an unknown id
        return self.token(token_id)

    # -- twins -------------------------------------------------------------------------------------

    def twin(self, device_id: str) -> tuple[dict[str, Any], int, dict[str, Any], int]:
        """``(desired, desired_version, reported, reported_version)``; empty documents at version 0."""
        rows = self._query(
            "SELECT desired, desired_version, reported, reported_version FROM twins WHERE device_id = ?",
            (device_id,),
        )
        if not rows:
            return {}, 0, {}, 0
        desired, dv, reported, rv = rows[0]
        return json.loads(desired), dv, json.loads(reported), rv

    def twins(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Every device's desired document and version (to re-announce them at start)."""
        rows = self._query("SELECT device_id, desired, desired_version FROM twins WHERE desired_version > 0")
        return {d: (json.loads(doc), v) for d, doc, v in rows}

    def save_twin(
        self, device_id: str, desired: dict[str, Any], desired_version: int, reported: dict[str, Any],
        reported_version: int,
    ) -> None:  # fmt: skip
        self._change(
            "INSERT INTO twins VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
            " desired = excluded.desired, desired_version = excluded.desired_version,"
            " reported = excluded.reported, reported_version = excluded.reported_version, updated = excluded.updated",
            (device_id, json.dumps(desired), desired_version, json.dumps(reported), reported_version, _now()),
        )
