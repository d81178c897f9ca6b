"""The HTTP app (one port: REST, SSE, ``/metrics``, ``/healthz``) and the server that runs it.

:class:`HttpServer` binds its socket itself (so port 0 works and the port is known at once) and runs
uvicorn inside the hub's event loop; the hub, not uvicorn, owns SIGINT/SIGTERM.

Handlers raise errors; :data:`ERROR_STATUS`, the one exception table, turns each into its status and
a JSON body ``{"error": "<the error's message>"}`` (the bridge's tree is drawn in
:mod:`iothub.bridge`; the hub's errors are mapped where they cross into HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope as ASGIScope

from iothub import __version__
from iothub.bridge import admin, alerts_api, control, errors, rest, sse, ws
from iothub.bridge.auth import requires
from iothub.bridge.uvicorn_ws import HubWebSocketProtocol
from iothub.hub import commands, registry, twin
from iothub.hub import errors as hub_errors
from iothub.hub.core import Hub
from iothub.hub.external import BrokerUnavailable
from iothub.hub.registry import Scope
from iothub.hub.settings import HttpSettings

ERROR_STATUS: dict[type[Exception], int] = {
    errors.BadRequest: 400,  # a parameter or a request body (``request body: ...``) the bridge refuses
    errors.TooLarge: 413,  # a request body over http.max_body_bytes
    errors.NotFound: 404,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.Unavailable: 503,
    registry.NotFound: 404,
    registry.AlreadyExists: 409,
    registry.RegistryError: 400,
    commands.UnknownDevice: 404,
    commands.DeviceOffline: 409,
    commands.CommandTimeout: 504,
    commands.BadCommand: 400,
    commands.HubUnavailable: 503,  # the external broker is unreachable
    BrokerUnavailable: 503,  # the same, for a twin's desired state
    twin.VersionConflict: 409,
    twin.DesiredTooLarge: 413,  # a desired state the device could not report back (ingest.max_payload_bytes)
    hub_errors.AlertsError: 400,  # a rule, webhook endpoint or delivery request refused
    hub_errors.UnknownName: 404,
    hub_errors.NameTaken: 409,
}
"""Each error a handler may raise, and its HTTP status; the most specific class wins."""
ERROR_HEADERS: dict[type[Exception], dict[str, str]] = {
    errors.Unauthorized: {"WWW-Authenticate": 'Bearer realm="iothub"'},
}


async def healthz(request: Request) -> JSONResponse:
    """Liveness, open to load balancers and probes; says nothing about the fleet."""
    return JSONResponse({"status": "ok", "version": __version__})


@requires(Scope.READ)
async def metrics(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    return Response(hub.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer an error from :data:`ERROR_STATUS` with its status and ``{"error": message}``."""
    kind = next(k for k in type(exc).__mro__ if k in ERROR_STATUS)
    return JSONResponse({"error": str(exc)}, status_code=ERROR_STATUS[kind], headers=ERROR_HEADERS.get(kind))


STATIC = Path(__file__).parent / "static"


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class _RevalidatedFiles(StaticFiles):
    """The dashboard's scripts and styles, revalidated on every load (a 304 when unchanged), so a
    browser never runs an upgraded page with modules cached from the previous version."""

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: os.stat_result, scope: ASGIScope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


ALL_PARTS = frozenset({"http", "sse", "ws"})


def create_app(hub: Hub, parts: frozenset[str] = ALL_PARTS) -> Starlette:
    """The HTTP app; ``parts`` picks its routes: ``http`` (REST API and dashboard), ``sse``, ``ws``.
    ``/healthz`` and ``/metrics`` are always there."""
    api = [
        Route("/", dashboard),
        Mount("/static", _RevalidatedFiles(directory=STATIC), name="static"),
        *rest.routes,
        *admin.routes,
        *control.routes,
        *alerts_api.routes,
    ]
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            *(sse.routes if "sse" in parts else []),
            *(ws.routes if "ws" in parts else []),
            *(api if "http" in parts else []),
        ],
        exception_handlers={HTTPException: http_error, **dict.fromkeys(ERROR_STATUS, api_error)},
    )
    app.state.hub = hub
    app.state.sse = sse.SseHub(hub, hub.settings.sse)
    app.state.ws = ws.WsHub(hub, hub.settings.ws)
    return app


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to the hub's runner


class HttpServer:
    """``async with HttpServer(app, settings) as http``: ``http.port`` is bound on entry."""

    def __init__(self, app: Starlette, settings: HttpSettings) -> None:
        self._app = app
        self.settings = settings
        self.port = 0
        self._tasks = asyncio.TaskGroup()
        self._server: _EmbeddedServer | None = None

    async def __aenter__(self) -> HttpServer:
        sock = socket.create_server((self.settings.host, self.settings.port), reuse_port=False)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        ws_settings = self._app.state.ws.settings
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            ws=HubWebSocketProtocol,
            ws_max_size=ws_settings.max_message_bytes,
            ws_ping_interval=ws_settings.ping_interval_s,
            ws_ping_timeout=ws_settings.ping_timeout_s,
            ws_per_message_deflate=False,  # per-client compression of every frame: CPU the fan-out needs
        )
        self._server = _EmbeddedServer(config)
        await self._tasks.__aenter__()
        self._tasks.create_task(self._app.state.sse.run(), name="iothub-sse")
        self._tasks.create_task(self._app.state.sse.watch(), name="iothub-sse-watch")
        self._tasks.create_task(self._app.state.ws.run(), name="iothub-ws")
        self._tasks.create_task(self._app.state.ws.watch(), name="iothub-ws-watch")
        self._tasks.create_task(self._server.serve(sockets=[sock]), name="iothub-http")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._app.state.sse.close()  # streams end first, or uvicorn would wait for them
        self._app.state.ws.close()  # WebSocket clients hear 1001 (uvicorn's own shutdown says 1012)
        with contextlib.suppress(TimeoutError):
            await self._app.state.ws.wait_closed(2 * ws.CLOSE_TIMEOUT_S)
        if self._server is not None:
            self._server.should_exit = True
        await self._tasks.__aexit__(None, None, None)
