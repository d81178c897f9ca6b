"""Runs the hub with its bridges until told to stop; the one place that composes hub and bridges.

``serve(settings)`` is an async context manager (what tests and benchmarks use); ``run(settings)`` is
what ``iothub run`` calls: it prints the bound addresses, waits for SIGINT/SIGTERM, then leaves in
order: drain gRPC (health NOT_SERVING, streams end), stop accepting HTTP, stop webhook delivery (what
is unsent stays in the outbox), close the broker, drain and flush ingest, close the store. A listener
that cannot bind (port in use, address not here) stops ``run`` with a :class:`SettingsError` naming
the setting, not a traceback; so does a store or saved broker state that cannot be used, with its
:class:`~iothub.hub.errors.StoreError` naming the file.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from iothub.bridge.grpc import GrpcServer
from iothub.bridge.http import HttpServer, create_app
from iothub.bridge.webhooks import WebhookSender
from iothub.hub.core import HUB_COMPONENTS, Hub
from iothub.hub.errors import HubError, SettingsError
from iothub.hub.external import ExternalBroker
from iothub.hub.settings import Settings
from iothub.hub.settings_env import env_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    hub: Hub
    ports: dict[str, int]
    parts: frozenset[str] = frozenset()

    def address(self, name: str) -> str:
        settings = self.hub.settings
        host = {"http": settings.http.host, "grpc": settings.grpc.host}.get(name, settings.mqtt.host)
        return f"{host}:{self.ports[name]}"


COMPONENTS = ("ingest", "alerts", "webhooks", "http", "sse", "ws", "grpc")
"""What ``iothub run --only`` picks from: ingest (device messages to the store), alerts (the
evaluator), webhooks (delivery), http (REST API and dashboard), sse and ws (the live streams),
grpc (the gRPC API).
``/healthz`` and ``/metrics`` are always served."""


def components(only: str | None, settings: Settings) -> frozenset[str]:
    """The components ``--only`` names (all when None); a :class:`SettingsError` for a name that is
    none of :data:`COMPONENTS`, for a subset without an external broker, or without its own
    ``broker.client_id`` (the default is the same for every process on a host: they would take each
    other's broker session over, in turn, for as long as they run)."""
    if only is None:
        return frozenset(COMPONENTS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        what = f"unknown component {unknown[0]!r}" if unknown else "no component named"
        raise SettingsError(f"--only: {what} (choose from {', '.join(COMPONENTS)})")
    chosen = frozenset(names)
    if chosen != frozenset(COMPONENTS) and settings.broker.url is None:
        raise SettingsError(
            "--only runs part of a hub beside others and needs an external broker: set broker.url "
            f"[{env_name('broker.url')}] (the embedded broker feeds only its own process)"
        )
    if chosen != frozenset(COMPONENTS) and "client_id" not in settings.broker.model_fields_set:
        raise SettingsError(
            f"--only runs part of a hub beside others: set broker.client_id [{env_name('broker.client_id')}] "
            f"to a name of this process's own (the default, {settings.broker.client_id}, is the same for every "
            "process on this host, and they would take each other's broker session over)"
        )
    return chosen


@asynccontextmanager
async def serve(settings: Settings, parts: frozenset[str] = frozenset(COMPONENTS)) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(Hub(settings, parts & HUB_COMPONENTS))
        if "webhooks" in parts:
            await stack.enter_async_context(WebhookSender(hub))
        http = await stack.enter_async_context(HttpServer(create_app(hub, parts), settings.http))
        ports = {**hub.ports, "http": http.port}
        if "grpc" in parts and settings.grpc.port is not None:
            grpc = await stack.enter_async_context(GrpcServer(hub, settings.grpc))
            ports["grpc"] = grpc.port
        await asyncio.to_thread(hub.make_first_token)
        yield Running(hub, ports, parts)


def tune_gc() -> None:
    """Keep the cyclic garbage collector out of the tail latency of a long-running hub.

    Measured with 1,000 SSE clients: full collections walking everything built at start-up (modules,
    broker, registry) put p99 at 160 ms; frozen start-up objects and rarer young collections: 34 ms.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


_FEW_FILES = 4096


def raise_open_files() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard one: each MQTT connection is a descriptor.

    Returns ``(soft, hard)`` after the attempt; the hard limit itself needs privileges to raise.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.debug("open files: soft limit raised from %d to %d (the hard limit)", soft, wanted)
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("open files: cannot raise the soft limit %d to %d: %s", soft, wanted, exc)
    if soft != resource.RLIM_INFINITY and soft < _FEW_FILES:
        log.warning(
            "open files: the limit is %d (hard limit %d), which bounds MQTT connections to fewer than that;"
            " raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) to serve more",
            soft,
            hard,
        )
    return soft, hard


def describe(running: Running) -> str:
    hub = running.hub
    if isinstance(hub.broker, ExternalBroker):
        parts = [f"broker={hub.broker.address} client_id={hub.broker.settings.client_id}"]
    else:
        parts = [f"mqtt={running.address('mqtt')}"]
    if "mqtt_ws" in running.ports:
        parts.append(f"mqtt_ws={running.address('mqtt_ws')}")
    parts.append(f"http=http://{running.address('http')}")
    if "grpc" in running.ports:
        parts.append(f"grpc={running.address('grpc')}")
    if running.parts != frozenset(COMPONENTS):
        parts.append("only=" + ",".join(c for c in COMPONENTS if c in running.parts))
    return "iothub listening: " + " ".join(parts)


async def run(
    settings: Settings, on_ready: Callable[[Running], None] | None = None, parts: frozenset[str] = frozenset(COMPONENTS)
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    raise_open_files()
    try:
        async with AsyncExitStack() as stack:
            try:
                running = await stack.enter_async_context(serve(settings, parts))
            except Exception as exc:
                error = startup_error(exc, settings)
                if error is None:
                    raise
                raise error from None
            tune_gc()
            print(describe(running), flush=True)
            if running.hub.first_token is not None:
                print(
                    f"first start: an admin API token was created (shown once): {running.hub.first_token}\n"
                    f"  try: curl -H 'Authorization: Bearer {running.hub.first_token}' "
                    f"http://{running.address('http')}/api/v1/devices",
                    flush=True,
                )
            if on_ready is not None:
                on_ready(running)
            await stop.wait()
            log.info("stopping: draining ingest and closing clients")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# asyncio, uvloop and socket.create_server all put the address in the message, in these forms:
# "error while attempting to bind on address ('127.0.0.1', 1883): address already in use",
# "Address already in use (while attempting to bind on address ('127.0.0.1', 8080))".
_BIND_ADDRESS = re.compile(r"bind on address \('([^']*)', (\d+)")


def startup_error(exc: BaseException, settings: Settings) -> HubError | None:
    """The one-line error for a hub that could not start, or None for failures that are not start-up problems.

    The failure may arrive wrapped (a task group's ExceptionGroup, amqtt's BrokerError around the
    OSError). The hub's own error (a store or saved broker state it cannot use) says what is wrong;
    otherwise the address in the OSError's message says which listener, hence which setting.
    """
    told = next((e for e in _causes(exc) if isinstance(e, HubError)), None)
    if told is not None:
        return told
    failure = next((e for e in _causes(exc) if isinstance(e, OSError)), None)
    if failure is None:
        return None
    reason = os.strerror(failure.errno).lower() if failure.errno and failure.errno > 0 else str(failure)
    hosts = {"mqtt.host": settings.mqtt.host, "http.host": settings.http.host, "grpc.host": settings.grpc.host}
    if isinstance(failure, socket.gaierror):  # a host name that does not resolve
        unresolved = [f"{n} [{env_name(n)}] {h!r}" for n, h in hosts.items() if not _is_address(h)]
        return SettingsError(f"setting {' / '.join(unresolved) or 'host'}: cannot listen there: {failure.strerror}")
    found = _BIND_ADDRESS.search(str(failure))
    if found is None:
        return SettingsError(f"cannot start the hub: {failure}")
    host, port = found[1], int(found[2])
    listeners = {
        "mqtt.port": (settings.mqtt.host, settings.mqtt.port),
        "mqtt.ws_port": (settings.mqtt.host, settings.mqtt.ws_port),
        "mqtt.tls.port": (settings.mqtt.host, settings.mqtt.tls.port),
        "http.port": (settings.http.host, settings.http.port),
        "grpc.port": (settings.grpc.host, settings.grpc.port),
    }
    named = [name for name, (_, value) in listeners.items() if value == port and port != 0]
    if len(named) > 1:
        clash = " and ".join(f"{name} [{env_name(name)}]" for name in named)
        return SettingsError(f"settings {clash} are the same port, {port}: give each listener its own")
    if failure.errno == errno.EADDRNOTAVAIL or not named:
        at_fault = [f"{n} [{env_name(n)}] {h}" for n, h in hosts.items() if h == host]
        return SettingsError(f"setting {' / '.join(at_fault) or 'host'}: cannot listen on {host}:{port}: {reason}")
    setting = f"{named[0]} [{env_name(named[0])}]"
    if failure.errno == errno.EADDRINUSE:
        return SettingsError(
            f"setting {setting}: port {port} on {host} is already in use ({_who_holds(port)} shows by what); "
            "choose another, or 0 for a free one"
        )
    return SettingsError(f"setting {setting}: cannot listen on {host}:{port}: {reason}")


def _who_holds(port: int) -> str:
    """The command that shows what holds a port, on this system."""
    return f"`ss -tanp 'sport = :{port}'`" if sys.platform.startswith("linux") else f"`lsof -i :{port}`"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: the members of a group and its cause, depth first."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [current.__cause__]  # not __context__: an error raised while handling another is not it
        if isinstance(current, BaseExceptionGroup):
            inner = [*current.exceptions, *inner]
        pending.extend(reversed([e for e in inner if e is not None]))


def run_forever(settings: Settings, parts: frozenset[str] = frozenset(COMPONENTS)) -> None:
    """Run on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(settings, parts=parts))
        return
    if sys.version_info >= (3, 12):
        uvloop.run(run(settings, parts=parts))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(settings, parts=parts))
