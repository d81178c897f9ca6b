"""The gRPC server itself: health, reflection, shutdown, keepalive and its counters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from iothub.bridge.grpc import GrpcServer
from iothub.runner import Running, describe, serve
from iothub.v1 import telemetry_pb2, telemetry_pb2_grpc
from tests.bridge.grpc.conftest import Metadata, bearer
from tests.conftest import WAIT_S, hub_settings, mqtt_client, unique_id

SERVICES = {
    "iothub.v1.DeviceService",
    "iothub.v1.TelemetryService",
    "iothub.v1.CommandService",
    "iothub.v1.HubService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def test_health_says_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "iothub.v1.TelemetryService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_every_service_and_describes_them(channel: grpc.aio.Channel) -> None:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    async with asyncio.timeout(WAIT_S):
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="iothub.v1.HubService"))
        described = await call.read()
    call.cancel()
    assert {s.name for s in listed.list_services_response.service} == SERVICES
    assert described.file_descriptor_response.file_descriptor_proto  # what grpcurl needs to call it


async def test_shutdown_drains_not_serving_then_streams_end_unavailable(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(serve(hub_settings(tmp_path / "data")))
        channel = grpc.aio.insecure_channel(running.address("grpc"))
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        stream = telemetry_pb2_grpc.TelemetryServiceStub(channel).Subscribe(
            telemetry_pb2.SubscribeRequest(), metadata=bearer(running.hub.first_token)
        )
        async with asyncio.timeout(WAIT_S):
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            await stream.wait_for_connection()
    try:
        async with asyncio.timeout(WAIT_S):
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await stream.code() == grpc.StatusCode.UNAVAILABLE
        assert "the hub is shutting down; resume with resume_from" in await stream.details()
    finally:
        await channel.close()


async def test_the_bound_port_is_printed_and_counted(hub: Running, channel: grpc.aio.Channel, admin: Metadata) -> None:
    assert f"grpc=127.0.0.1:{hub.ports['grpc']}" in describe(hub)
    device = unique_id()
    call = telemetry_pb2_grpc.TelemetryServiceStub(channel).Subscribe(telemetry_pb2.SubscribeRequest(), metadata=admin)
    async with asyncio.timeout(WAIT_S):
        await call.wait_for_connection()
        metrics = hub.hub.metrics.render().decode()
        assert 'iothub_stream_clients{channel="grpc"} 1.0' in metrics
        async with mqtt_client(hub, device):
            await call.read()
    call.cancel()
    assert 'iothub_stream_frames_sent_total{channel="grpc"} 1.0' in hub.hub.metrics.render().decode()


@contextlib.asynccontextmanager
async def freezable_proxy(target_port: int) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP proxy to ``target_port``; once the event is set it forwards nothing more either way,
    as a dead host or a dropped link would (the sockets stay open)."""
    frozen = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # until cancelled: swallow everything
                writer.write(chunk)
                await writer.drain()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.extend((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(pipe(source, sink))
            tasks.add(task)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], frozen
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        await server.wait_closed()


async def test_keepalive_ends_the_streams_of_a_client_that_vanished(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", grpc={"port": 0, "keepalive_s": 0.5, "keepalive_timeout_s": 0.5})
    async with serve(settings) as running, freezable_proxy(running.ports["grpc"]) as (port, frozen):
        consumers = running.hub.metrics.render
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = telemetry_pb2_grpc.TelemetryServiceStub(channel).Subscribe(
            telemetry_pb2.SubscribeRequest(), metadata=bearer(running.hub.first_token)
        )
        try:
            async with asyncio.timeout(WAIT_S):
                await call.wait_for_connection()
                assert 'iothub_stream_clients{channel="grpc"} 1.0' in consumers().decode()
                frozen.set()  # the client's host is gone: nothing answers the hub's pings
                for _ in range(int(WAIT_S / 0.05)):  # polling a condition, bounded in count and time
                    if 'iothub_stream_clients{channel="grpc"} 0.0' in consumers().decode():
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the stream of a client that vanished is still open")
        finally:
            call.cancel()
            await channel.close()


async def test_a_client_that_stops_reading_is_ended_and_counted(tmp_path: Path) -> None:
    settings = hub_settings(
        tmp_path / "data", grpc={"port": 0, "send_timeout_s": 1, "queue_size": 100_000, "max_dropped": 10**6}
    )
    async with serve(settings) as running, grpc.aio.insecure_channel(running.address("grpc")) as channel:
        call = telemetry_pb2_grpc.TelemetryServiceStub(channel).Subscribe(
            telemetry_pb2.SubscribeRequest(), metadata=bearer(running.hub.first_token)
        )
        async with asyncio.timeout(WAIT_S):
            await call.wait_for_connection()  # ... and never reads
        device = unique_id()
        big = json.dumps({"metrics": {f"m{n}": "x" * 250 for n in range(200)}}).encode()  # about 55 KB
        metrics = running.hub.metrics.render
        async with mqtt_client(running, device) as client:
            for _ in range(30):  # bounded: far more than the flow-control windows and socket buffers hold
                for _ in range(20):
                    await client.publish(f"devices/{device}/telemetry", big, qos=0)
                await asyncio.sleep(0.1)  # paced, so the watchdog's one-second look comes around
                if 'iothub_stream_disconnected_slow_total{channel="grpc"} 1.0' in metrics().decode():
                    break
        call.cancel()
    assert 'iothub_stream_disconnected_slow_total{channel="grpc"} 1.0' in metrics().decode()
    assert 'iothub_stream_clients{channel="grpc"} 0.0' in metrics().decode()


class _BrokenHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """A health service that fails to take its first status: a step after the server started."""

    async def set(self, service: str, status: object) -> None:
        raise RuntimeError("health is broken")


async def test_a_server_that_fails_to_start_is_stopped(hub: Running) -> None:
    server = GrpcServer(hub.hub, hub.hub.settings.grpc.model_copy(update={"port": 0}))
    server.health = _BrokenHealth()
    with pytest.raises(RuntimeError, match="health is broken"):
        async with server:
            raise AssertionError("entered a server whose health failed")
    assert server.port
    with pytest.raises(ConnectionRefusedError):  # nothing listens on its port any more
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), WAIT_S)
