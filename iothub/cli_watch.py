"""``iothub watch ...``: tail a running hub's live channels, or receive its webhooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from iothub.cli_remote import F, command, make_target, publish, run_async, target_options

__all__ = ["command", "publish", "watch"]  # every client verb, for the iothub group


@click.group()
def watch() -> None:
    """Tail a channel of a running hub, one event per line: time, device, type, values.

    --json prints each event's JSON instead. --count N exits 0 after N events; --timeout S
    exits 3 if they have not come by then, saying what it waited for and what it saw
    (without --count, --timeout is how long to watch). Bad filters and unreachable hubs
    are one-line errors with exit status 1.
    """


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for given in values for v in given.split(",") if v.strip())


def _selection_options() -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        options = [
            click.option("--device", "devices", multiple=True, help="Only this device (or a,b); repeat for more."),
            click.option("--label", "labels", multiple=True, help="Only devices with label key=value; repeatable."),
            click.option("--metric", "metrics", multiple=True, help="Only these metrics of telemetry; repeatable."),
            click.option(
                "--type", "types", multiple=True, help="telemetry, status, command_result, alert; repeatable [all]."
            ),
        ]
        options.append(
            click.option("--from", "resume_from", type=click.IntRange(0), help="Replay the events after this id first.")
        )
        options += [
            click.option("--count", type=click.IntRange(1), help="Exit 0 after this many events."),
            click.option(
                "--timeout",
                type=click.FloatRange(0, min_open=True),
                help="Exit 3 if --count events have not come in this many seconds; without --count, watch this long.",
            ),
            click.option("--json", "as_json", is_flag=True, help="One JSON object per line."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _watch(channel: str, target: Any, options: dict[str, Any]) -> None:
    from iothub.watch import Selection
    from iothub.watch.channels import open_channel
    from iothub.watch.run import watch as run_watch

    selection = Selection(
        devices=_split(options["devices"]), labels=tuple(options["labels"]), metrics=_split(options["metrics"]),
        types=_split(options["types"]), resume_from=options.get("resume_from"),
    )  # fmt: skip
    as_json = options["as_json"]
    where = {"mqtt": target.mqtt_url, "ws": target.ws_url, "grpc": target.grpc_address}.get(channel, target.base)

    def emit(event: Any) -> None:
        click.echo(event.json() if as_json else event.line())

    waiting_for = f"{selection.describe()} on {channel} {where}"

    def ready() -> None:
        click.echo(f"watching {waiting_for}", err=True)

    async def main() -> None:
        opened = open_channel(channel, target, selection)
        await run_watch(opened, emit, count=options["count"], timeout_s=options["timeout"], waiting_for=waiting_for,
                        on_ready=ready)  # fmt: skip

    run_async(main())


@watch.command("sse")
@_selection_options()
@target_options("http")
def watch_sse(config_file: Path | None, url: str | None, token: str | None, **options: Any) -> None:
    """The Server-Sent Events stream, /api/v1/stream (needs a read token)."""
    _watch("sse", make_target(config_file, url=url, token=token), options)


@watch.command("ws")
@_selection_options()
@target_options("http")
def watch_ws(config_file: Path | None, url: str | None, token: str | None, **options: Any) -> None:
    """The WebSocket live protocol, /api/v1/ws (needs a read token)."""
    _watch("ws", make_target(config_file, url=url, token=token), options)


@watch.command("grpc")
@_selection_options()
@target_options("grpc")
def watch_grpc(config_file: Path | None, grpc_address: str | None, token: str | None, **options: Any) -> None:
    """The gRPC API's TelemetryService.Subscribe (needs a read token; plaintext)."""
    _watch("grpc", make_target(config_file, grpc_address=grpc_address, token=token), options)


@watch.command("mqtt")
@_selection_options()
@target_options("mqtt")
def watch_mqtt(
    config_file: Path | None, mqtt_url: str | None, username: str | None, password: str | None, **options: Any
) -> None:
    """What devices publish, read from the broker as a service account (svc:NAME).

    No event ids (no --from) and no labels (no --label); a payload the hub would refuse
    shows as 'invalid' with the reason.
    """
    _watch("mqtt", make_target(config_file, mqtt_url=mqtt_url, username=username, password=password), options)


@watch.command("webhooks")
@click.option("--listen", "port", type=click.IntRange(0, 65535), required=True, help="Port to receive on; 0 picks one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--secret", help="The endpoint's whsec_ secret: check each signature (a bad one is answered 401).")
@click.option("--status", type=click.IntRange(200, 599), default=204, show_default=True,
              help="What to answer a delivery (e.g. 500 or 429 to see the hub retry).")  # fmt: skip
@click.option("--count", type=click.IntRange(1), help="Exit 0 after this many deliveries.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    help="Exit 3 if --count deliveries have not come in this many seconds; without --count, listen this long.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per delivery.")
def watch_webhooks(
    port: int, host: str, secret: str | None, status: int, count: int | None, timeout: float | None, as_json: bool
) -> None:
    """Receive webhook deliveries and print each with whether its signature verifies.

    Point an endpoint here (iothub webhooks add http://127.0.0.1:PORT/ --events ...; a hub
    needs webhooks.allow_private_targets for a loopback receiver). The address is printed on
    stderr once listening.
    """
    from iothub.watch.receiver import Receiver
    from iothub.watch.run import watch as run_watch

    def listening(url: str) -> None:
        click.echo(f"listening on {url} (answering {status})", err=True)

    def emit(delivery: Any) -> None:
        click.echo(json.dumps(delivery.event().data) if as_json else delivery.line())

    async def main() -> None:
        receiver = Receiver(host, port, secret, status, announce=listening)
        waiting_for = f"deliveries on {host}:{port}"
        await run_watch(receiver, emit, count=count, timeout_s=timeout, waiting_for=waiting_for)

    run_async(main())
