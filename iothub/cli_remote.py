"""The client verbs, which talk to a running hub: ``iothub command`` (REST) and ``iothub publish``
(MQTT as a service account); and where every client verb finds the hub (:func:`target_options`).

The hub's address and credentials come from options, else the ``client`` settings
(``IOTHUB_CLIENT__URL``, ``IOTHUB_CLIENT__TOKEN``, ``IOTHUB_CLIENT__MQTT_URL``,
``IOTHUB_CLIENT__USERNAME``, ``IOTHUB_CLIENT__PASSWORD``, ``IOTHUB_CLIENT__GRPC_ADDRESS``, or
``[client]`` in iothub.toml), else the hub's own listen settings (``http.port``, ``mqtt.port``,
``grpc.port``) on this machine.

Exit status: 0 done; 1 an error (one line, ``Error: ...``: the hub unreachable, a refused token, an
unknown or offline device, the device answered with an error); 2 a usage error; 3 a timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from iothub.hub.settings import load_settings

EXIT_TIMEOUT = 3
_LOCAL = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class TimedOut(click.ClickException):
    """What was waited for did not come: one line on stderr, ``Error: ...``, exit status 3."""

    exit_code = EXIT_TIMEOUT


F = TypeVar("F", bound=Callable[..., Any])


def target_options(kind: str) -> Callable[[F], F]:
    """The options that say where the hub is: ``http`` its URL and token, ``grpc`` its gRPC address
    and token, ``mqtt`` the broker and a service account."""

    def decorate(fn: F) -> F:
        if kind == "mqtt":
            fn = click.option("--password", help="The account's secret [client.password].")(fn)
            fn = click.option("--username", help="MQTT service account, svc:NAME [client.username].")(fn)
            fn = click.option("--mqtt-url", help="The broker, mqtt://host:port [client.mqtt_url, else mqtt.port].")(fn)
        else:
            fn = click.option("--token", help="API token [client.token, IOTHUB_CLIENT__TOKEN].")(fn)
            if kind == "grpc":
                help_ = "The gRPC API, host:port [client.grpc_address, else 127.0.0.1:GRPC.PORT]."
                fn = click.option("--grpc-address", help=help_)(fn)
            else:
                help_ = "The hub's HTTP URL [client.url, else http://127.0.0.1:HTTP.PORT]."
                fn = click.option("--url", help=help_)(fn)
        return click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file.")(fn)

    return decorate


def make_target(config_file: Path | None, **given: Any) -> Any:
    """A :class:`~iothub.watch.Target` from the options given, the client settings and the hub's own."""
    from iothub.simulators.fleet import parse_broker_url
    from iothub.watch import Target, WatchError

    settings = load_settings(config_file)
    client = settings.client
    url = given.get("url") or client.url or f"http://{_host(settings.http.host)}:{settings.http.port}"
    mqtt_url = given.get("mqtt_url") or client.mqtt_url or f"mqtt://{_host(settings.mqtt.host)}:{settings.mqtt.port}"
    grpc_port = settings.grpc.port or 50051
    grpc_address = given.get("grpc_address") or client.grpc_address or f"{_host(settings.grpc.host)}:{grpc_port}"
    try:
        mqtt_host, mqtt_port = parse_broker_url(mqtt_url)
        return Target(
            url=url, token=given.get("token") or client.token, mqtt_host=mqtt_host, mqtt_port=mqtt_port,
            username=given.get("username") or client.username, password=given.get("password") or client.password,
            grpc_address=grpc_address,
        )  # fmt: skip
    except (ValueError, WatchError) as exc:
        raise click.ClickException(str(exc)) from None


def _host(host: str) -> str:
    return _LOCAL.get(host, host)


def run_async(coroutine: Any) -> Any:
    """Run a client coroutine; its :class:`~iothub.watch.WatchError` ends the command as one line
    (a timeout with :data:`EXIT_TIMEOUT`), Ctrl-C with status 130."""
    from iothub.watch import WatchError, WatchTimeout

    try:
        return asyncio.run(coroutine)
    except WatchTimeout as exc:
        raise TimedOut(str(exc)) from None
    except WatchError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)


@click.command()
@click.argument("device_id")
@click.argument("name")
@click.option("--args", "args_json", default="{}", help="The command's arguments, a JSON object [{}].")
@click.option("--timeout", type=click.FloatRange(0, 300, min_open=True), default=10.0, show_default=True,
              help="Seconds the device has to answer.")  # fmt: skip
@click.option(
    "--queue", is_flag=True, help="If the device is offline, send it when it reconnects (within the timeout)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the hub's answer as JSON.")
@target_options("http")
def command(
    device_id: str, name: str, args_json: str, timeout: float, queue: bool, as_json: bool,
    config_file: Path | None, url: str | None, token: str | None,
) -> None:  # fmt: skip
    """Send command NAME to device DEVICE_ID through a running hub and print its answer.

    Exits 0 when the device answered ok; 1 when it answered with an error, is unknown or
    offline, or the hub refused; 3 when it did not answer within --timeout.
    """
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(args, dict):
        raise click.BadParameter("must be a JSON object, like '{\"setpoint\": 20}'", param_hint="--args")
    target = make_target(config_file, url=url, token=token)
    from iothub.watch.remote import send_command

    answer = run_async(send_command(target, device_id, name, args, timeout, queue))
    if as_json:
        click.echo(json.dumps(answer))
    elif answer.get("ok"):
        click.echo(f"{device_id} {name}: ok {json.dumps(answer.get('result', {}))} ({answer.get('latency_ms')} ms)")
    if not answer.get("ok"):
        raise click.ClickException(f"{device_id} {name}: the device answered with an error: {answer.get('error')}")


@click.command()
@click.argument("topic")
@click.argument("payload")
@click.option("--qos", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option("--retain", is_flag=True, help="Ask the broker to keep it for new subscribers.")
@target_options("mqtt")
def publish(
    topic: str, payload: str, qos: int, retain: bool, config_file: Path | None, mqtt_url: str | None,
    username: str | None, password: str | None,
) -> None:  # fmt: skip
    """Publish PAYLOAD ('-' reads standard input) on TOPIC as an MQTT service account.

    The account needs the service role (iothub accounts add NAME --role service). With QoS 1 or 2
    it returns once the broker has acknowledged the message. Exits 1 when the broker cannot be
    reached or refuses the account.
    """
    data = sys.stdin.buffer.read() if payload == "-" else payload.encode()
    target = make_target(config_file, mqtt_url=mqtt_url, username=username, password=password)
    from iothub.watch.remote import publish_message

    run_async(publish_message(target, topic, data, qos, retain))
    click.echo(f"published {len(data)} bytes on {topic} (QoS {qos}{', retained' if retain else ''})")
