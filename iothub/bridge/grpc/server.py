"""The gRPC server: ``async with GrpcServer(hub, settings) as server`` binds ``server.port``.

A ``grpc.aio`` server in the hub's event loop (uvloop's too) with the ``iothub.v1`` services, the
standard ``grpc.health.v1`` service (SERVING; NOT_SERVING while draining) and server reflection.
Entering binds ``grpc.host``/``grpc.port`` (0 picks a free port, read back as :attr:`port`); a port
in use fails with the same OSError as the other listeners, so the runner names the setting. Leaving
drains: health NOT_SERVING, no new calls, live streams end with UNAVAILABLE (resume from the last
event id), unary calls in flight get ``grpc.grace_s`` to finish, then the rest are cancelled.

Keepalive: the server pings a connection idle for ``grpc.keepalive_s`` and closes it when the ping
is not answered within ``grpc.keepalive_timeout_s``, so a client that vanished without closing its
connection (a dead host, a dropped link) ends its streams instead of holding them open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from iothub.bridge.grpc.commands import CommandService
from iothub.bridge.grpc.connect import HubService
from iothub.bridge.grpc.devices import DeviceService
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.streams import GrpcStreams
from iothub.bridge.grpc.telemetry import TelemetryService
from iothub.hub.core import Hub
from iothub.hub.settings import GrpcSettings

log = logging.getLogger(__name__)
MIN_CLIENT_PING_S = 10  # clients may ping this often; more often is answered with GOAWAY (grpc's policy)


class Service(Protocol):
    def handlers(self) -> Handlers: ...


class GrpcServer:
    def __init__(self, hub: Hub, settings: GrpcSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.port = 0
        self.streams = GrpcStreams(hub, settings)
        self.health = health.aio.HealthServicer()
        self._services: list[Service] = [
            DeviceService(hub, self.streams),
            TelemetryService(hub, self.streams),
            CommandService(hub),
            HubService(hub, self.streams),
        ]
        self._server: grpc.aio.Server | None = None
        self._tasks = asyncio.TaskGroup()

    async def __aenter__(self) -> GrpcServer:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),  # a second hub on the same port must fail, not share it
                ("grpc.keepalive_time_ms", int(s.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
                ("grpc.http2.ping_timeout_ms", int(s.keepalive_timeout_s * 1000)),  # bounds a ping with no ack too
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_S * 1000),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        )
        handlers = [service.handlers() for service in self._services]
        server.add_generic_rpc_handlers([h.generic() for h in handlers])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [h.name for h in handlers]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        self.port = self._bind(server)
        await server.start()
        try:
            for name in ["", *names]:
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            await self._tasks.__aenter__()
        except BaseException:  # not entered: nothing will leave it, so stop the server here
            await server.stop(None)
            raise
        self._server = server
        self._tasks.create_task(self.streams.run(), name="iothub-grpc-streams")
        self._tasks.create_task(self.streams.watch(), name="iothub-grpc-watch")
        return self

    def _bind(self, server: grpc.aio.Server) -> int:
        host, port = self.settings.host, self.settings.port or 0
        if port:
            # grpc would log its own line and say only "Failed to bind": binding the address first
            # fails with the reason (in use, not an address of this host) in the OSError every
            # listener of the hub fails with, so the runner names the setting.
            with socket.create_server((host, port)):
                pass
        try:
            return server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        except RuntimeError:  # taken in between: the same error, from a second look
            with socket.create_server((host, port)):
                pass
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.health.enter_graceful_shutdown()  # NOT_SERVING for every service
        self.streams.close()  # live streams end with UNAVAILABLE
        if self._server is not None:
            await self._server.stop(self.settings.grace_s)
        await self._tasks.__aexit__(None, None, None)
