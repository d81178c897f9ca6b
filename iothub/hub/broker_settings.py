"""The ``broker`` settings section: an external MQTT broker, and ``broker.url`` parsed as a value."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class BrokerAddress:
    transport: Literal["tcp", "websockets"]
    tls: bool
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    path: str | None  # WebSocket path

    def __str__(self) -> str:
        """The address without credentials, for logs."""
        scheme = {("tcp", False): "mqtt", ("tcp", True): "mqtts", ("websockets", False): "ws"}.get(
            (self.transport, self.tls), "wss"
        )
        return f"{scheme}://{self.host}:{self.port}{self.path or ''}"


_SCHEMES = {"mqtt": ("tcp", False, 1883), "mqtts": ("tcp", True, 8883), "ws": ("websockets", False, 80),
            "wss": ("websockets", True, 443)}  # fmt: skip


def broker_address(url: str) -> BrokerAddress:
    """Parse ``broker.url``; ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"scheme {parts.scheme!r} is not one of mqtt, mqtts, ws, wss")
    transport, tls, default_port = _SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("no host")
    path = (parts.path or "/mqtt") if transport == "websockets" else None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return BrokerAddress(transport, tls, parts.hostname, port, username, password, path)  # type: ignore[arg-type]


CLIENT_ID_FORM = "iothub-{hostname}"


def default_client_id() -> str:
    """``broker.client_id`` unless set: this host's name after ``iothub-``, at most 64 characters."""
    return CLIENT_ID_FORM.format(hostname=socket.gethostname())[:64]


class BrokerSettings(BaseModel):
    """An external MQTT broker (unset ``url``: the embedded one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        default=None,
        description="an external MQTT broker: mqtt://user:pass@host:1883, mqtts://, ws://, wss://; unset = embedded",
    )
    group: str = Field(
        default="iothub", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="shared-subscription group of the hubs"
    )
    client_id: str = Field(
        default_factory=default_client_id,
        min_length=1,
        description="this hub's MQTT client id: one per hub process, stable across restarts; required with --only",
    )
    cafile: Path | None = Field(default=None, description="CA for mqtts:// and wss:// (default: the system's)")
    keepalive_s: int = Field(
        default=30, ge=5, le=65535, description="MQTT keepalive with the broker: a silent link is pinged this often"
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="the first connection must succeed by then")
    publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a command, twin or hub/status publish waits for the broker (to connect and acknowledge)",
    )
    reconnect_max_s: float = Field(default=10.0, gt=0, description="longest wait between reconnect attempts")
    tail_poll_s: float = Field(
        default=0.05, gt=0, le=10, description="how often the shared event log is read for other hubs' events"
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        if url is not None:
            broker_address(url)
        return url
