"""What the registry stores, as values: devices, service accounts, API tokens, and their scopes and roles."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Scope(enum.StrEnum):
    """API token scopes; each includes the ones before it."""

    READ = "read"
    COMMAND = "command"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


class Role(enum.StrEnum):
    """Service-account roles on the MQTT side."""

    OBSERVER = "observer"  # subscribe to everything, publish nothing
    SERVICE = "service"  # publish and subscribe everywhere (the hub's own bridges, operators)


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    name: str
    type: str
    labels: dict[str, str]
    enabled: bool
    created: int
    secret_hash: str = field(repr=False)
    secret_rotated: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "labels": self.labels,
            "enabled": self.enabled,
            "created": self.created,
            "secret_rotated": self.secret_rotated,
        }


@dataclass(frozen=True)
class AccountRecord:
    name: str
    role: Role
    secret_hash: str = field(repr=False)
    created: int = 0


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    scope: Scope
    created: int
    revoked: int | None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scope": self.scope.value, "created": self.created,
                "revoked": self.revoked}  # fmt: skip
