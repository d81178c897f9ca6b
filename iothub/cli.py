"""The ``iothub`` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click

from iothub import __version__
from iothub.hub.errors import HubError, SettingsError
from iothub.hub.settings import Settings, load_settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "debug":
        # amqtt logs every connection at INFO and some client mistakes at WARNING; keep its errors only.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        logging.getLogger("websockets").setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iothub")
def main() -> None:
    """iothub: an IoT device hub with MQTT at its core.

    Settings come from ./iothub.toml (optional) and IOTHUB_* environment variables
    (nested with __, e.g. IOTHUB_HTTP__PORT=0); options given here win.
    """


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the store lives [./iothub-data].")
@click.option("--host", help="Address every listener binds [127.0.0.1].")
@click.option("--mqtt-port", type=int, help="MQTT TCP port; 0 picks a free port [1883].")
@click.option("--mqtt-ws-port", type=int, help="MQTT over WebSocket port; 0 picks a free port [8083].")
@click.option(
    "--http-port", type=int, help="HTTP port (REST, /metrics, /healthz); 0 picks a free port [8080]."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]")
def run(
    config_file: Path | None,
    data_dir: Path | None,
    host: str | None,
    mqtt_port: int | None,
    mqtt_ws_port: int | None,
    http_port: int | None,
    log_level: str | None,
) -> None:
    """Run the hub: embedded broker, ingest, store, presence and HTTP API.

    Prints the addresses it bound. SIGINT/SIGTERM drain, flush the store and exit 0.
    """
    overrides: dict[str, Any] = {}
    mqtt: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if log_level is not None:
        overrides["log_level"] = log_level
    if host is not None:
        mqtt["host"] = http["host"] = host
    if mqtt_port is not None:
        mqtt["port"] = mqtt_port
    if mqtt_ws_port is not None:
        mqtt["ws_port"] = mqtt_ws_port
    if http_port is not None:
        http["port"] = http_port
    if mqtt:
        overrides["mqtt"] = mqtt
    if http:
        overrides["http"] = http
    settings = _settings(config_file, overrides)
    _setup_logging(settings.log_level)
    from iothub.runner import run_forever

    try:
        run_forever(settings)
    except HubError as exc:
        raise click.ClickException(str(exc)) from None


def _settings(config_file: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config_file, **overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="mqtt://host:port")
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
@click.option(
    "--prefix", default="sim", show_default=True, help="Device ids are PREFIX-0000, PREFIX-0001, ..."
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Choice(["thermostat", "power_meter", "tracker"]),
    help="Signal profiles to cycle through [all three].",
)
@click.option(
    "--keepalive", type=click.IntRange(1, 65535), default=30, show_default=True, help="MQTT keepalive, s."
)
@click.option(
    "--duration", type=click.FloatRange(0), default=0, help="Stop after this many seconds [run until ^C]."
)
@click.option(
    "--count", "messages", type=click.IntRange(0), default=0, help="Stop each device after N messages."
)
@click.option("--seed", type=int, default=None, help="Seed for reproducible signals and chaos.")
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
) -> None:
    """Run a fleet of simulated devices against any MQTT broker.

    Each device publishes realistic telemetry with seq numbers, announces itself on
    devices/{id}/status (its Last Will says offline), answers commands and reconnects with backoff.
    """
    _setup_logging("info")
    from iothub.simulators.fleet import FleetConfig, run_fleet

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
    try:
        stats = asyncio.run(run_fleet(config))
    except KeyboardInterrupt:
        return
    click.echo(stats.summary())
