"""The one settings object, read from ``iothub.toml`` and ``IOTHUB_*`` variables, validated once.

Precedence (highest first): values passed in code, environment (``IOTHUB_HTTP__PORT=0``), the TOML
file (``[http] port = 0``), defaults. Port 0 means "pick a free port". An ``IOTHUB_*`` variable that
names no setting is refused like an unknown key in the file: a typo never passes for a default.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pydantic_settings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from iothub.hub.broker_settings import BrokerSettings
from iothub.hub.errors import SettingsError
from iothub.hub.rules import Rule
from iothub.hub.settings_env import ENV_DELIMITER, ENV_PREFIX, env_name, foreign_variables, unknown_variables

log = logging.getLogger(__name__)

Port = Annotated[int, Field(ge=0, le=65535)]
DEFAULT_CONFIG_FILE = Path("iothub.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    port: Port | None = Field(default=None, description="MQTT over TLS; unset to disable")
    certfile: Path | None = Field(
        default=None, description="the broker's certificate chain (PEM); needed with a TLS port"
    )
    keyfile: Path | None = Field(default=None, description="the private key of certfile (PEM); needed with a TLS port")
    cafile: Path | None = Field(default=None, description="CA that signs device client certificates (CN = device id)")
    require_client_cert: bool = Field(
        default=False, description="refuse TLS clients without a certificate signed by cafile"
    )

    @model_validator(mode="after")
    def _files_exist(self) -> Self:
        if self.port is None:
            return self
        if self.certfile is None or self.keyfile is None:
            raise ValueError("a TLS port needs certfile and keyfile")
        for name in ("certfile", "keyfile", "cafile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        if self.require_client_cert and self.cafile is None:
            raise ValueError("require_client_cert needs cafile")
        return self


class MqttSettings(_Section):
    host: str = Field(default="127.0.0.1", description="address the embedded broker binds")
    port: Port = Field(default=1883, description="the embedded broker's MQTT (TCP) port")
    ws_port: Port | None = Field(default=8083, description="MQTT over WebSocket; unset to disable")
    tls: TlsSettings = TlsSettings()
    allow_anonymous: bool = Field(default=False, description="let clients in without credentials (development)")
    max_connections: int | None = Field(
        default=None, ge=1, description="more clients are refused at once with CONNACK 0x03; unset = no limit"
    )
    acl_violation: Literal["drop", "disconnect"] = Field(
        default="drop",
        description="a publish to a forbidden topic is dropped; disconnect also closes the client that sent it",
    )
    durable_ack: bool = Field(
        default=True, description="acknowledge QoS 1/2 device messages only once the store has committed them"
    )
    max_inflight: int = Field(
        default=20, ge=1, le=65535, description="unacknowledged QoS 1/2 messages per client; the rest wait in its queue"
    )
    max_queued: int = Field(
        default=1000,
        ge=1,
        description="messages queued per client (offline or window full); past this the oldest are dropped"
        " (iothub_mqtt_dropped_total)",
    )
    max_packet_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="a larger packet closes the connection (iothub_mqtt_protocol_errors_total)",
    )
    max_unacked: int = Field(
        default=1000, ge=1, description="a client's messages waiting for the store before the hub stops reading from it"
    )
    checkpoint_s: float = Field(
        default=2.0, gt=0, description="how often changed persistent sessions and retained messages are saved"
    )


class HttpSettings(_Section):
    host: str = Field(default="127.0.0.1", description="address the HTTP server binds")
    port: Port = Field(default=8080, description="REST, SSE, WebSocket, dashboard and /metrics")
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="a larger JSON request body is refused with 413"
    )


class IngestSettings(_Section):
    max_payload_bytes: int = Field(
        default=64 * 1024,
        ge=64,
        le=16 * 1024 * 1024,
        description="a larger device message is rejected as too_large; also bounds a twin's desired state",
    )
    max_future_skew_s: float = Field(
        default=300.0, ge=0, description="a device ts further ahead of the hub's clock is rejected as ts_in_future"
    )
    queue_size: int = Field(
        default=100_000, ge=100, description="messages waiting for the store; past this they are rejected as queue_full"
    )
    batch_size: int = Field(default=2000, ge=1, description="most messages written in one store transaction")
    seq_window: int = Field(
        default=64, ge=1, le=4096, description="recent seq numbers remembered per device to drop duplicates"
    )


class InfluxSettings(_Section):
    """InfluxDB 2.x / Cloud (or anything that takes ``/api/v2/write``) for telemetry points."""

    url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://", description="the server's base URL")
    org: str = Field(default="", description="organisation (name or id); needed with backend influxdb")
    bucket: str = Field(default="iothub", min_length=1, description="bucket the points are written to")
    token: SecretStr = Field(default=SecretStr(""), description="API token with write (and read) access")
    measurement: str = Field(default="telemetry", min_length=1, description="measurement of every point")
    tag_labels: tuple[str, ...] = Field(default=(), description="device labels written as tags besides device_id")
    timeout_s: float = Field(default=10.0, gt=0, description="one write or query with no answer by then fails")


class StoreSettings(_Section):
    backend: Literal["sqlite", "influxdb"] = Field(
        default="sqlite", description="where telemetry points go; events and the registry stay in SQLite"
    )
    influx: InfluxSettings = InfluxSettings()

    @model_validator(mode="after")
    def _influx_complete(self) -> Self:
        if self.backend == "influxdb" and not self.influx.org:
            raise ValueError("backend 'influxdb' needs store.influx.org [IOTHUB_STORE__INFLUX__ORG]")
        return self

    event_retention: int = Field(
        default=1_000_000, ge=1000, description="events kept for consumers to resume from; older ones are pruned"
    )


class FanoutSettings(_Section):
    queue_size: int = Field(
        default=10_000, ge=1, description="events buffered per consumer before the oldest are dropped"
    )


class _StreamSection(_Section):
    """What every live channel (SSE, WebSocket) bounds per client."""

    queue_size: int = Field(default=1000, ge=1, description="events buffered per client before the oldest drop")
    max_dropped: int = Field(default=10_000, ge=1, description="events a client may lose before it is disconnected")
    replay_limit: int = Field(
        default=100_000, ge=1, description="most events replayed on one resume; past it a gap says the rest was skipped"
    )
    send_timeout_s: float = Field(default=30.0, gt=0, description="a write blocked this long ends the connection")


class SseSettings(_StreamSection):
    heartbeat_s: float = Field(default=15.0, gt=0, description="a comment line is sent on a stream idle this long")
    retry_ms: int = Field(default=3000, ge=100, description="reconnect delay suggested to clients")


class WsSettings(_StreamSection):
    max_message_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="a larger client frame closes with 1009"
    )
    ping_interval_s: float = Field(default=20.0, gt=0, description="the hub pings each client this often")
    ping_timeout_s: float = Field(default=20.0, gt=0, description="a client that does not answer is dropped")
    auth_timeout_s: float = Field(default=10.0, gt=0, description="time to send 'auth' when no token came")
    max_subscriptions: int = Field(default=100, ge=1, description="subscriptions per connection")
    max_pending_commands: int = Field(default=100, ge=1, description="commands awaiting results per connection")


class GrpcSettings(_StreamSection):
    """Stream limits (``queue_size`` ...) apply to each server stream and each Connect subscription."""

    host: str = Field(default="127.0.0.1", description="address the gRPC server binds")
    port: Port | None = Field(default=50051, description="gRPC API; unset to disable")
    keepalive_s: float = Field(default=30.0, gt=0, description="an idle connection is pinged this often")
    keepalive_timeout_s: float = Field(
        default=10.0, gt=0, description="a ping unanswered this long closes the connection (dead client)"
    )
    max_subscriptions: int = Field(default=100, ge=1, description="subscriptions per Connect stream")
    max_pending_commands: int = Field(default=100, ge=1, description="commands awaiting results per Connect stream")
    grace_s: float = Field(default=5.0, ge=0, description="how long calls in flight may finish at shutdown")


class AlertSettings(_Section):
    queue_size: int = Field(
        default=100_000, ge=100, description="events waiting for rule evaluation; the oldest drop when full"
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=36_500,
        description="alert history older than this is pruned (an alert still firing keeps its last transition)",
    )


DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18_000.0, 36_000.0, 36_000.0)


class WebhookSettings(_Section):
    allow_private_targets: bool = Field(
        default=False,
        description="let endpoints resolve to loopback, private, link-local or other non-global addresses",
    )
    retry_schedule_s: tuple[Annotated[float, Field(ge=0)], ...] = Field(
        default=DEFAULT_RETRY_SCHEDULE_S,
        max_length=50,
        description="delays before each retry (the first attempt is at once; [] for none); when the last retry fails"
        " the delivery is dead",
    )
    jitter: float = Field(default=0.1, ge=0, le=1, description="each retry delay varies by up to this fraction")
    timeout_s: float = Field(default=15.0, gt=0, le=300, description="an attempt with no answer by then fails")
    max_in_flight: int = Field(default=4, ge=1, le=256, description="attempts at once per endpoint")
    breaker_failures: int = Field(default=5, ge=1, description="failures in a row that pause an endpoint")
    breaker_pause_s: float = Field(default=30.0, gt=0, description="how long a tripped endpoint is left alone")
    max_retry_after_s: float = Field(default=86_400.0, gt=0, description="the longest Retry-After honoured")
    secret_overlap_s: float = Field(
        default=86_400.0, ge=0, description="how long the previous secret still signs after a rotation"
    )
    poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often the outbox is checked without a nudge (retries due, other processes' changes)",
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=36_500,
        description="delivered and dead deliveries and attempts older than this are pruned",
    )


class ClientSettings(_Section):
    """Where the ``iothub`` client verbs (watch, command, publish) find a running hub."""

    url: str | None = Field(default=None, description="the hub's HTTP base URL; unset: http.host and http.port")
    token: str | None = Field(
        default=None, description="API token for REST, SSE, WebSocket and gRPC (iothub tokens create)"
    )
    mqtt_url: str | None = Field(
        default=None, description="the broker, mqtt://host:port; unset: mqtt.host and mqtt.port"
    )
    grpc_address: str | None = Field(
        default=None, description="the gRPC API, host:port; unset: grpc.host and grpc.port"
    )
    username: str | None = Field(default=None, description="MQTT service account, svc:NAME (iothub accounts add)")
    password: str | None = Field(default=None, description="the service account's secret")


class Settings(BaseSettings):
    """Everything the hub reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        toml_file=DEFAULT_CONFIG_FILE,
    )

    data_dir: Path = Field(
        default=Path("iothub-data"),
        description="where the hub keeps its SQLite databases (shared by hub processes on one external broker)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log messages less severe than this are not shown"
    )
    mqtt: MqttSettings = MqttSettings()
    broker: BrokerSettings = BrokerSettings()
    http: HttpSettings = HttpSettings()
    ingest: IngestSettings = IngestSettings()
    store: StoreSettings = StoreSettings()
    fanout: FanoutSettings = FanoutSettings()
    sse: SseSettings = SseSettings()
    ws: WsSettings = WsSettings()
    grpc: GrpcSettings = GrpcSettings()
    alerts: AlertSettings = AlertSettings()
    webhooks: WebhookSettings = WebhookSettings()
    client: ClientSettings = ClientSettings()
    rules: tuple[Rule, ...] = Field(default=(), description="alert rules, a JSON list; more come over REST or the CLI")

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Self:
        names = [r.name for r in self.rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rules: the name {twice[0]!r} is used twice")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings once; raise :class:`SettingsError` naming each bad setting.

    ``config_file`` replaces ``./iothub.toml`` (which is optional); a named file must exist. Unknown
    ``IOTHUB_*`` environment variables, an unreadable or malformed file and invalid values are all
    refused here, each with a line naming the variable, file or setting.
    """
    if config_file is not None and not config_file.is_file():
        problem = "is not a file" if config_file.exists() else "does not exist"
        raise SettingsError(f"config file {config_file} {problem}")
    unknown = unknown_variables(os.environ, Settings)
    if unknown:
        raise SettingsError(_problems(unknown))
    for variable in foreign_variables(os.environ, Settings):
        log.info("ignoring %s: not an iothub setting", variable)
    path = DEFAULT_CONFIG_FILE if config_file is None else config_file
    try:
        if config_file is None:
            return Settings(**overrides)
        file_settings: type[Settings] = type(
            "Settings",
            (Settings,),
            {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})},
        )
        return file_settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    except tomllib.TOMLDecodeError as exc:  # the message ends with "(at line L, column C)"
        raise SettingsError(f"config file {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SettingsError(f"config file {exc.filename or path}: cannot read it: {exc.strerror or exc}") from None
    except pydantic_settings.SettingsError as exc:  # a whole section set from the environment, not as JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"{field[1]} [{env_name(field[1])}]" if field else "from the environment"
        raise SettingsError(f"setting {name}: expected a JSON object ({exc.__cause__ or exc})") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        secret = err["loc"][-1:] in (("url",), ("token",))  # may hold credentials: never echoed
        shown = "" if isinstance(got, dict) or secret else f" (got {got!r})"
        message = err["msg"].removeprefix("Value error, ")  # our own validators' messages stand alone
        lines.append(f"setting {name} [{env_name(name)}]: {message}{shown}")
    return _problems(lines)


def _problems(lines: list[str]) -> str:
    """One problem as its own line; several under a heading, one per line."""
    if len(lines) == 1:
        return lines[0]
    return "invalid settings:\n  " + "\n  ".join(lines)
