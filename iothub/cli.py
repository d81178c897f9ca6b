"""The ``iothub`` command."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import click

from iothub import __version__
from iothub.cli_alerts import rules, webhooks
from iothub.cli_common import data_options, registry_of
from iothub.cli_registry import accounts, devices, tokens
from iothub.cli_watch import command, publish, watch
from iothub.hub.errors import HubError
from iothub.hub.settings import load_settings


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
        # aiomqtt's own logger says ERROR for every connection the broker drops (a hub restarting);
        # the simulator logs such losses itself, once per kind.
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)


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
@click.option(
    "--only",
    metavar="NAMES",
    help="Run only these components, comma-separated: ingest, alerts, webhooks, http, sse, ws, grpc "
    "(needs an external broker, broker.url, and this process's own broker.client_id) [all].",
)
def run(
    config_file: Path | None,
    data_dir: Path | None,
    host: str | None,
    mqtt_port: int | None,
    mqtt_ws_port: int | None,
    http_port: int | None,
    grpc_port: int | None,
    log_level: str | None,
    only: str | None,
) -> None:
    """Run the hub: broker, ingest, store, presence, alerts, webhooks, HTTP API and gRPC API.

    The broker is the embedded one, or an external one when broker.url is set
    (IOTHUB_BROKER__URL=mqtt://user:pass@host:1883): then several hub processes
    can share the work, each running the components --only names.

    Prints the addresses it bound; a port in use stops it with the setting named.
    SIGINT/SIGTERM drain, flush the store and exit 0.
    """
    mqtt = _given(host=host, port=mqtt_port, ws_port=mqtt_ws_port)
    http = _given(host=host, port=http_port)
    grpc = _given(host=host, port=grpc_port)
    settings = load_settings(
        config_file, **_given(data_dir=data_dir, log_level=log_level, mqtt=mqtt, http=http, grpc=grpc)
    )
    _setup_logging(settings.log_level)
    from iothub.runner import components, run_forever

    parts = components(only, settings)
    _setup_logging(settings.log_level)
    run_forever(settings, parts)


def _given(**options: Any) -> dict[str, Any]:
    """The options given on the command line (click passes None for the others), as setting overrides."""
    return {name: value for name, value in options.items() if value is not None and value != {}}


for group in (devices, tokens, accounts, rules, webhooks, watch, command, publish):
    main.add_command(group)


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
@data_options
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
        registry = registry_of(config_file, data_dir, create=True)
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
