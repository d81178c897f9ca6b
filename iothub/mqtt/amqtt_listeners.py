"""The one module that touches amqtt: its listeners (TCP, TLS, MQTT over WebSocket), pinned to 0.12.1.

amqtt binds the sockets, builds the TLS context and runs the WebSocket server with the ``mqtt``
subprotocol. Each accepted connection goes, as a :class:`~.transport.Transport`, to the callable it
was given (the server's :meth:`~.server.MqttServer.serve`); amqtt's CONNECT handling, sessions and
delivery are not used (see :mod:`.server` for the rules they break). The overrides of amqtt's
private methods, which are not an API (hence the exact pin), are all in :class:`_Listeners`:

* ``ws_connected`` hands the connection over instead of running amqtt's client handler (which,
  among other things, leaves a client over ``max_connections`` waiting without a CONNACK); TCP and
  TLS connections never reach it: their server is built with :class:`~.transport.TcpTransport` as
  its protocol, so they go straight to the server without a StreamReader/StreamWriter;
* ``_create_ssl_context`` can require client certificates;
* ``_create_server_instance`` listens with a backlog of ``ListenerConfig.backlog`` (asyncio's default
  of 100 makes a reconnect storm lose SYNs, and each lost one costs its client a 1 s retransmission;
  the kernel caps it at ``net.core.somaxconn``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import websockets
from amqtt.broker import Broker
from websockets.asyncio.server import ServerConnection

from iothub.mqtt.transport import TcpTransport, Transport, WebSocketTransport

AMQTT_VERSION = "0.12.1"
if version("amqtt") != AMQTT_VERSION:  # pragma: no cover - pyproject pins it
    raise ImportError(
        f"iothub needs amqtt {AMQTT_VERSION} exactly (its private methods are overridden), not {version('amqtt')}"
    )

Accept = Callable[[Transport], Awaitable[None]]
_PORT_NAMES = {"default": "mqtt", "ws": "mqtt_ws", "tls": "mqtts"}


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """Where to listen; port 0 picks a free port. WebSocket and TLS are off unless given a port."""

    host: str = "127.0.0.1"
    port: int = 1883
    ws_port: int | None = None
    tls_port: int | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None  # CA of client certificates
    require_client_cert: bool = False
    backlog: int = 4096  # connections waiting to be accepted

    def amqtt_config(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}
        if self.ws_port is not None:
            listeners["ws"] = {"type": "ws", "bind": f"{self.host}:{self.ws_port}"}
        if self.tls_port is not None:
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"{self.host}:{self.tls_port}",
                "ssl": True,
                "certfile": str(self.certfile),
                "keyfile": str(self.keyfile),
                **({"cafile": str(self.cafile)} if self.cafile else {}),
            }
        # No plugins: amqtt's defaults ($SYS, event and packet loggers) cost 28-38% of throughput, and
        # nothing of amqtt past accepting a connection runs anyway.
        return {"listeners": listeners, "plugins": {}}


class _Listeners(Broker):  # type: ignore[misc]  # amqtt ships no type information
    def __init__(self, config: ListenerConfig, accept: Accept) -> None:
        super().__init__(config.amqtt_config())
        self._accept = accept
        self._require_client_cert = config.require_client_cert
        self._backlog = config.backlog

    async def ws_connected(self, websocket: ServerConnection, listener_name: str) -> None:
        await self._accept(WebSocketTransport(websocket))

    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: str | None, port: int, ssl_context: ssl.SSLContext | None
    ) -> Any:
        if listener_type == "ws":
            return await websockets.serve(
                partial(self.ws_connected, listener_name=listener_name), address, port, ssl=ssl_context,
                subprotocols=[websockets.Subprotocol("mqtt")], backlog=self._backlog,
            )  # fmt: skip
        accept = self._accept
        return await asyncio.get_running_loop().create_server(
            lambda: TcpTransport(accept), address, port, reuse_address=True, ssl=ssl_context, backlog=self._backlog
        )

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        if self._require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class AmqttListeners:
    """``async with AmqttListeners(config, server.serve) as listeners``: bound on entry (``ports`` says
    where: ``mqtt``, ``mqtt_ws``, ``mqtts``), closed on exit. Close the server's connections first."""

    def __init__(self, config: ListenerConfig, accept: Accept) -> None:
        self.config = config
        self._accept = accept
        self._broker: _Listeners | None = None
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> AmqttListeners:
        broker = _Listeners(self.config, self._accept)
        await broker.start()
        self._broker = broker
        for name, server in broker._servers.items():
            self.ports[_PORT_NAMES[name]] = server.instance.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
