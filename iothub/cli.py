"""The ``iothub`` command."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from iothub import __version__
from iothub.cli_alerts import rules, webhooks
from iothub.cli_watch import command, publish, watch
from iothub.hub.errors import HubError
from iothub.hub.fleet import iso
from iothub.hub.records import DeviceRecord, TokenRecord
from iothub.hub.registry import Registry, Role, Scope
from iothub.hub.settings import Settings, load_settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "debug":
        # amqtt logs every connection at INFO and some client mistakes at WARNING; keep its errors only.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        # amqtt logs a listener that cannot bind, with a traceback, before raising; the runner's one
        # line names the setting instead.
        logging.getLogger("amqtt.broker").addFilter(lambda r: not r.getMessage().startswith("Broker startup failed"))
        logging.getLogger("transitions").setLevel(logging.WARNING)
        logging.getLogger("websockets").setLevel(logging.WARNING)


class _Main(click.Group):
    """The ``iothub`` group: the hub's own errors (settings, registry, store), from any verb, end the
    command as one line, ``Error: <message>``, and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iothub")
def main() -> None:
    """iothub: an IoT device hub with MQTT at its core.

    Settings come from ./iothub.toml (optional) and IOTHUB_* environment variables
    (nested with __, e.g. IOTHUB_HTTP__PORT=0); options given here win. An IOTHUB_*
    variable that names no setting is refused.
    """


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the store lives [./iothub-data].")
@click.option("--host", help="Address every listener binds [127.0.0.1].")
@click.option("--mqtt-port", type=int, help="MQTT TCP port; 0 picks a free port [1883].")
@click.option("--mqtt-ws-port", type=int, help="MQTT over WebSocket port; 0 picks a free port [8083].")
@click.option(
    "--http-port", type=int, help="HTTP port (REST, SSE, WebSocket, dashboard, /metrics); 0 picks a free port [8080]."
)
@click.option("--grpc-port", type=int, help="gRPC port (iothub.v1, health, reflection); 0 picks a free port [50051].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]")
def run(
    config_file: Path | None,
    data_dir: Path | None,
    host: str | None,
    mqtt_port: int | None,
    mqtt_ws_port: int | None,
    http_port: int | None,
    grpc_port: int | None,
    log_level: str | None,
) -> None:
    """Run the hub: embedded broker, ingest, store, presence, alerts, webhooks, HTTP API and gRPC API.

    Prints the addresses it bound; a port in use stops it with the setting named.
    SIGINT/SIGTERM drain, flush the store and exit 0.
    """
    mqtt = _given(host=host, port=mqtt_port, ws_port=mqtt_ws_port)
    http = _given(host=host, port=http_port)
    grpc = _given(host=host, port=grpc_port)
    settings = _settings(config_file, _given(data_dir=data_dir, log_level=log_level, mqtt=mqtt, http=http, grpc=grpc))
    _setup_logging(settings.log_level)
    from iothub.runner import run_forever

    run_forever(settings)


def _given(**options: Any) -> dict[str, Any]:
    """The options given on the command line (click passes None for the others), as setting overrides."""
    return {name: value for name, value in options.items() if value is not None and value != {}}


def _settings(config_file: Path | None, overrides: dict[str, Any]) -> Settings:
    return load_settings(config_file, **overrides)


def _registry(config_file: Path | None, data_dir: Path | None, *, create: bool = False) -> Registry:
    """The registry of the data dir; only verbs that add to it (``create``) may start a new one."""
    settings = _settings(config_file, {} if data_dir is None else {"data_dir": data_dir})
    path = settings.data_dir / "registry.db"
    if not create and not path.is_file():
        default = Settings.model_fields["data_dir"].default
        raise click.ClickException(f"no hub data in {settings.data_dir} (--data-dir; the default is ./{default})")
    return Registry(path)


def _registry_options(fn: Any) -> Any:
    fn = click.option("--data-dir", type=click.Path(path_type=Path), help="The hub's data dir [./iothub-data].")(fn)
    return click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file.")(fn)


def _device(record: DeviceRecord) -> dict[str, Any]:
    """A device as the REST API shows it: times in ISO 8601."""
    return {**record.view(), "created": iso(record.created), "secret_rotated": iso(record.secret_rotated)}


def _token(record: TokenRecord) -> dict[str, Any]:
    return {**record.view(), "created": iso(record.created), "revoked": iso(record.revoked)}


def _print(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


for verb in (rules, webhooks, watch, command, publish):
    main.add_command(verb)


@main.group()
def devices() -> None:
    """Register and manage devices (MQTT username = device id, password = its secret)."""


@devices.command("add")
@click.argument("device_id")
@click.option("--name", help="Display name [the id].")
@click.option("--type", "device_type", default="generic", show_default=True)
@click.option("--label", "labels", multiple=True, help="key=value; repeat for more.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_registry_options
def devices_add(
    device_id: str, name: str | None, device_type: str, labels: tuple[str, ...], as_json: bool,
    config_file: Path | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Register a device and print its secret (shown this once)."""
    parsed = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise click.BadParameter(f"{label!r} is not key=value", param_hint="--label")
        parsed[key] = value
    record, secret = _registry(config_file, data_dir, create=True).add_device(device_id, name, device_type, parsed)
    text = f"device {record.id} registered\nsecret: {secret}\n(shown once; connect with username {record.id})"
    _print({**_device(record), "secret": secret}, as_json, text)


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_registry_options
def devices_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List registered devices."""
    records = _registry(config_file, data_dir).devices()
    lines = [f"{'ID':24} {'TYPE':14} {'ENABLED':8} LABELS"] + [
        f"{r.id:24} {r.type:14} {'yes' if r.enabled else 'no':8} {' '.join(f'{k}={v}' for k, v in r.labels.items())}"
        for r in records
    ]
    _print([_device(r) for r in records], as_json, "\n".join(lines))


@devices.command("show")
@click.argument("device_id")
@_registry_options
def devices_show(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Show one device's registry entry (as JSON)."""
    record = _registry(config_file, data_dir).device(device_id)
    click.echo(json.dumps(_device(record), indent=2))


def _set_enabled(device_id: str, enabled: bool, config_file: Path | None, data_dir: Path | None) -> None:
    _registry(config_file, data_dir).set_enabled(device_id, enabled)
    click.echo(f"device {device_id} {'enabled' if enabled else 'disabled'}")


@devices.command("disable")
@click.argument("device_id")
@_registry_options
def devices_disable(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Refuse the device's connections (a running hub also disconnects it)."""
    _set_enabled(device_id, False, config_file, data_dir)


@devices.command("enable")
@click.argument("device_id")
@_registry_options
def devices_enable(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Let a disabled device connect again."""
    _set_enabled(device_id, True, config_file, data_dir)


@devices.command("rotate-secret")
@click.argument("device_id")
@_registry_options
def devices_rotate(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Give the device a new secret (the old one stops working) and print it once."""
    _, secret = _registry(config_file, data_dir).rotate_secret(device_id)
    click.echo(f"new secret for {device_id}: {secret}")


@devices.command("remove")
@click.argument("device_id")
@_registry_options
def devices_remove(device_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove a device from the registry (its stored telemetry stays)."""
    _registry(config_file, data_dir).remove_device(device_id)
    click.echo(f"device {device_id} removed")


@main.group()
def tokens() -> None:
    """API tokens for HTTP (Authorization: Bearer ...): scopes read < command < admin."""


@tokens.command("create")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), required=True)
@click.option("--name", default="", help="What the token is for.")
@_registry_options
def tokens_create(scope: str, name: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Create a token and print it (shown this once; stored hashed)."""
    record, token = _registry(config_file, data_dir, create=True).create_token(Scope(scope), name)
    click.echo(f"token {record.id} ({record.scope}): {token}")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_registry_options
def tokens_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List tokens (never their values)."""
    records = _registry(config_file, data_dir).tokens()
    lines = [f"{'ID':14} {'SCOPE':8} {'STATE':8} NAME"] + [
        f"{t.id:14} {t.scope.value:8} {'revoked' if t.revoked else 'active':8} {t.name}" for t in records
    ]
    _print([_token(t) for t in records], as_json, "\n".join(lines))


@tokens.command("revoke")
@click.argument("token_id")
@_registry_options
def tokens_revoke(token_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Revoke a token by its id (from 'tokens list')."""
    _registry(config_file, data_dir).revoke_token(token_id)
    click.echo(f"token {token_id} revoked")


@main.group()
def accounts() -> None:
    """MQTT service accounts (username svc:NAME): observer subscribes anywhere, service also publishes."""


@accounts.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@_registry_options
def accounts_add(name: str, role: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Create a service account and print its secret (shown this once)."""
    _, secret = _registry(config_file, data_dir, create=True).add_account(name, Role(role))
    click.echo(f"account svc:{name} ({role})\nsecret: {secret}")


@accounts.command("list")
@_registry_options
def accounts_list(config_file: Path | None, data_dir: Path | None) -> None:
    """List service accounts."""
    for account in _registry(config_file, data_dir).accounts():
        click.echo(f"svc:{account.name}  {account.role.value}")


@accounts.command("remove")
@click.argument("name")
@_registry_options
def accounts_remove(name: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove a service account."""
    _registry(config_file, data_dir).remove_account(name)
    click.echo(f"account svc:{name} removed")


@main.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="Broker URL, mqtt://host:port.")
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=10, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Telemetry messages per second per device; 0 publishes as fast as the broker acks.",
)
@click.option("--qos", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option(
    "--chaos",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Chance per device per second of dropping the connection ungracefully (the Will fires).",
)
@click.option("--prefix", default="sim", show_default=True, help="Device ids are PREFIX-0000, PREFIX-0001, ...")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Choice(["thermostat", "power_meter", "tracker"]),
    help="Signal profiles to cycle through [all three].",
)
@click.option("--keepalive", type=click.IntRange(1, 65535), default=30, show_default=True, help="MQTT keepalive, s.")
@click.option("--duration", type=click.FloatRange(0), default=0, help="Stop after this many seconds [run until ^C].")
@click.option("--count", "messages", type=click.IntRange(0), default=0, help="Stop each device after N messages.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible signals and chaos.")
@click.option(
    "--credentials",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="JSON file of device id -> secret, instead of registering the fleet locally.",
)
@click.option("--anonymous", is_flag=True, help="Connect without credentials (a hub with mqtt.allow_anonymous).")
@_registry_options
def simulate(
    broker: str,
    count: int,
    rate: float,
    qos: int,
    chaos: float,
    prefix: str,
    profiles: tuple[str, ...],
    keepalive: int,
    duration: float,
    messages: int,
    seed: int | None,
    credentials: Path | None,
    anonymous: bool,
    config_file: Path | None,
    data_dir: Path | None,
) -> None:
    """Run a fleet of simulated devices against any MQTT broker.

    Each device publishes realistic telemetry with seq numbers, announces itself on
    devices/{id}/status (its Last Will says offline), answers commands and reconnects with backoff.

    By default the fleet is registered in the local hub's registry (--data-dir) and its secrets kept
    in DATA_DIR/simulator-credentials.json; --credentials or --anonymous do without.

    A device that cannot connect retries with backoff; the first failure of each kind is logged
    (connection refused, or the broker's CONNACK code). Exits 1 when no device ever connected.
    """
    _setup_logging("info")
    from iothub.provision import CREDENTIALS_FILE, provision_fleet, read_credentials
    from iothub.simulators.fleet import FleetConfig, run_fleet

    try:
        config = FleetConfig.from_url(
            broker,
            devices=count,
            rate=rate,
            qos=qos,
            chaos=chaos,
            prefix=prefix,
            profiles=profiles or ("thermostat", "power_meter", "tracker"),
            keepalive=keepalive,
            duration=duration or None,
            messages=messages or None,
            seed=seed,
        )
    except ValueError as exc:  # the broker URL, or options that do not go together
        raise click.ClickException(str(exc)) from None
    if credentials is not None:
        try:
            secrets = read_credentials(credentials)
        except (ValueError, KeyError, TypeError) as exc:
            raise click.ClickException(
                f"credentials file {credentials}: expected JSON of id -> secret ({exc})"
            ) from None
        missing = [d for d in config.device_ids() if d not in secrets]  # it would connect anonymously
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise click.ClickException(f"no secret for {missing[0]}{more} in {credentials}")
        config = dataclasses.replace(config, credentials=secrets)
    elif not anonymous:
        registry = _registry(config_file, data_dir, create=True)
        types = {d: config.profiles[i % len(config.profiles)] for i, d in enumerate(config.device_ids())}
        secrets = provision_fleet(registry, types, registry.path.parent / CREDENTIALS_FILE)
        registry.close()
        config = dataclasses.replace(config, credentials=secrets)
    try:
        stats = asyncio.run(run_fleet(config))
    except KeyboardInterrupt:
        return
    click.echo(stats.summary())
    if stats.connects == 0:
        raise click.ClickException(f"no device could connect to {broker}: {stats.failures() or 'no attempt ended'}")
