"""The hub on an external broker (a real Mosquitto started by the test): the simulator's devices
reach the store, SSE and WebSocket; commands go through the same connection; a restarted broker
gets the hub back, subscribed again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
import httpx
import pytest
from click.testing import CliRunner

from iothub.cli import main
from iothub.hub.errors import SettingsError
from iothub.hub.external import ExternalBroker
from iothub.hub.registry import Registry
from iothub.runner import Running, components, serve, startup_error
from iothub.simulators.fleet import FleetConfig, run_fleet
from iothub.v1 import commands_pb2, commands_pb2_grpc
from tests.bridge.sse_client import open_stream
from tests.bridge.ws_client import ws_client
from tests.conformance.brokers import _free_port, mosquitto
from tests.conftest import WAIT_S, EventWaiter, hub_settings, telemetry, unique_id


@asynccontextmanager
async def external_hub(
    tmp_path: Path, port: int, broker_settings: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    broker = {"url": f"mqtt://127.0.0.1:{port}", "client_id": unique_id("hub"), "reconnect_max_s": 0.5}
    broker.update(broker_settings or {})
    async with serve(hub_settings(tmp_path / "data", broker=broker, **overrides)) as running:
        yield running


def admin(running: Running) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {running.hub.first_token}"}
    return httpx.AsyncClient(base_url=f"http://{running.address('http')}", headers=headers, timeout=WAIT_S)


async def test_simulated_devices_reach_store_sse_and_websocket(tmp_path: Path) -> None:
    prefix = unique_id("sim")
    config_devices, messages = 3, 5
    async with mosquitto(tmp_path) as port, external_hub(tmp_path, port) as running, admin(running) as http:
        events = EventWaiter(running.hub.bus.subscribe("test"))
        async with open_stream(http, params={"types": "telemetry"}) as sse, ws_client(running) as ws:
            await ws.subscribe("all", types=["telemetry", "status"])
            config = FleetConfig(port=port, devices=config_devices, rate=50, messages=messages, prefix=prefix, seed=1)
            async with asyncio.timeout(WAIT_S * 2):
                await run_fleet(config)
            ids = config.device_ids()
            for device_id in ids:
                await events.status_of(device_id, online=False)  # the devices said goodbye on their status topic
            sent = [(d, n) for d in ids for n in range(messages)]
            by_sse: set[tuple[str, int]] = set()
            by_ws: set[tuple[str, int]] = set()
            async with asyncio.timeout(WAIT_S * 2):
                while len(by_sse) < len(sent):
                    event = (await sse.next()).json
                    by_sse.add((event["device_id"], event["seq"]))
                while len(by_ws) < len(sent):
                    frame = await ws.until(lambda f: f.get("type") == "event" and f["event"] == "telemetry")
                    by_ws.add((frame["data"]["device_id"], frame["data"]["seq"]))
            assert by_ws == by_sse
            assert {d for d, _ in by_sse} == set(ids)
            assert len(by_sse) == len(sent)
        for device_id in ids:
            body = (await http.get(f"/api/v1/devices/{device_id}")).json()
            assert body["online"] is False
            assert body["reason"] == "reported_offline"
            metric = sorted(body["latest"])[0]
            history = (await http.get(f"/api/v1/devices/{device_id}/telemetry", params={"metric": metric})).json()
            assert len(history["series"][metric]) == messages


async def test_commands_and_responses_go_through_the_external_broker(tmp_path: Path) -> None:
    device = unique_id()
    async with mosquitto(tmp_path) as port, external_hub(tmp_path, port) as running, admin(running) as http:
        events = EventWaiter(running.hub.bus.subscribe("test"))
        running.hub.registry.add_device(device, type="test")
        will = aiomqtt.Will(f"devices/{device}/status", json.dumps({"online": False}).encode(), qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", port, identifier=device, will=will, timeout=WAIT_S) as client:
            await client.subscribe(f"devices/{device}/commands/+", qos=1)
            await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1, retain=True)
            await events.status_of(device, online=True)

            async def answer() -> None:
                async for message in client.messages:
                    request = json.loads(bytes(message.payload))
                    reply = {"id": request["id"], "ok": True, "result": {"echo": request["args"]["x"]}}
                    await client.publish(f"devices/{device}/responses", json.dumps(reply).encode(), qos=1)
                    return

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(answer())
                response = await http.post(f"/api/v1/devices/{device}/commands/echo", json={"args": {"x": 7}})
            assert response.status_code == 200, response.text
            assert response.json()["result"] == {"echo": 7}


async def test_a_restarted_broker_gets_the_hub_back_subscribed(tmp_path: Path) -> None:
    """Mosquitto without persistence forgets the hub's session: the hub must subscribe again."""
    device = unique_id()
    port = _free_port()
    first: Any = mosquitto(tmp_path / "one", port=port)
    await first.__aenter__()
    try:
        async with external_hub(tmp_path, port) as running:
            events = EventWaiter(running.hub.bus.subscribe("test"))
            broker = running.hub.broker
            assert isinstance(broker, ExternalBroker)
            await first.__aexit__(None, None, None)
            first = None
            async with mosquitto(tmp_path / "two", port=port):
                async with asyncio.timeout(WAIT_S):
                    await broker.wait_connections(2)
                async with aiomqtt.Client("127.0.0.1", port, identifier=device, timeout=WAIT_S) as client:
                    await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}, seq=0), qos=1)
                event = await events.telemetry_from(device)
                assert event.data["metrics"] == {"t": 1}
    finally:
        if first is not None:
            await first.__aexit__(None, None, None)


def test_only_names_known_components_and_needs_an_external_broker(tmp_path: Path) -> None:
    embedded = hub_settings(tmp_path)
    external = hub_settings(tmp_path, broker={"url": "mqtt://127.0.0.1:1", "client_id": "hub-sse"})
    assert components(None, embedded) == components("ingest,alerts,webhooks,http,sse,ws,grpc", embedded)
    assert components(" sse, ws ", external) == {"sse", "ws"}
    with pytest.raises(SettingsError, match=r"^--only: unknown component 'grcp' \(choose from ingest, alerts,"):
        components("sse,grcp", external)
    with pytest.raises(SettingsError, match=r"^--only: no component named"):
        components(" , ", external)
    with pytest.raises(SettingsError, match=r"needs an external broker: set broker.url \[IOTHUB_BROKER__URL\]"):
        components("ingest", embedded)
    default_id = hub_settings(tmp_path, broker={"url": "mqtt://127.0.0.1:1"})
    assert components(None, default_id) == components("ingest,alerts,webhooks,http,sse,ws,grpc", embedded)
    own_id = r"^--only runs part of a hub beside others: set broker.client_id \[IOTHUB_BROKER__CLIENT_ID\] to a name"
    with pytest.raises(SettingsError, match=own_id):
        components("sse,ws", default_id)


def test_run_refuses_bad_only_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["run", "--data-dir", str(tmp_path)]
    external = {"IOTHUB_BROKER__URL": "mqtt://127.0.0.1:1"}
    unknown = runner.invoke(main, [*args, "--only", "sse,grcp"], env=external)
    assert (unknown.exit_code, unknown.output) == (
        1,
        "Error: --only: unknown component 'grcp' (choose from ingest, alerts, webhooks, http, sse, ws, grpc)\n",
    )
    embedded = runner.invoke(main, [*args, "--only", "sse"])
    assert embedded.exit_code == 1
    assert embedded.output.startswith("Error: --only runs part of a hub beside others and needs an external broker")
    shared_id = runner.invoke(main, [*args, "--only", "sse"], env=external)
    assert shared_id.exit_code == 1
    assert shared_id.output.startswith("Error: --only runs part of a hub beside others: set broker.client_id")
    assert shared_id.output.count("\n") == 1


async def test_an_unreachable_broker_stops_the_start_with_the_setting_named(tmp_path: Path) -> None:
    port = _free_port()
    settings = hub_settings(tmp_path, broker={"url": f"mqtt://u:secret@127.0.0.1:{port}", "connect_timeout_s": 1})
    with pytest.raises(Exception) as failed:  # noqa: PT011 (the runner reads the error out of the group)
        async with serve(settings):
            pass
    refused = startup_error(failed.value, settings)
    assert isinstance(refused, SettingsError)
    assert str(refused).startswith(
        f"setting broker.url [IOTHUB_BROKER__URL]: cannot connect to mqtt://127.0.0.1:{port}"
    )
    assert "secret" not in str(refused)


async def test_commands_through_an_unreachable_broker_fail_as_unavailable(tmp_path: Path) -> None:
    """REST 503, gRPC UNAVAILABLE, WebSocket status ``unavailable``; the WebSocket session stays up."""
    device = unique_id()
    port = _free_port()
    broker: Any = mosquitto(tmp_path / "broker", port=port)
    await broker.__aenter__()
    try:
        async with external_hub(tmp_path, port, {"publish_timeout_s": 0.3}) as running, admin(running) as http:
            events = EventWaiter(running.hub.bus.subscribe("test"))
            running.hub.registry.add_device(device, type="test")
            async with aiomqtt.Client("127.0.0.1", port, identifier=device, timeout=WAIT_S) as client:
                await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1, retain=True)
                await events.status_of(device, online=True)
            await broker.__aexit__(None, None, None)
            broker = None
            response = await http.post(f"/api/v1/devices/{device}/commands/echo", json={"args": {}})
            assert response.status_code == 503, response.text
            assert "not reachable" in response.json()["error"]
            async with ws_client(running) as ws:
                await ws.send("command", ref="c1", device=device, name="echo", timeout=5)
                frame = await ws.until(lambda f: f.get("type") == "command_result")
                assert (frame["ref"], frame["status"]) == ("c1", "unavailable")
                await ws.send("ping", data="still here")
                assert (await ws.until(lambda f: f.get("type") == "pong"))["data"] == "still here"
            async with grpc.aio.insecure_channel(running.address("grpc")) as channel:
                stub = commands_pb2_grpc.CommandServiceStub(channel)
                metadata = (("authorization", f"Bearer {running.hub.first_token}"),)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SendCommand(
                        commands_pb2.SendCommandRequest(device_id=device, name="echo"),
                        metadata=metadata,
                        timeout=WAIT_S,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if broker is not None:
            await broker.__aexit__(None, None, None)


async def test_a_missing_cafile_stops_the_start_with_the_setting_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    settings = hub_settings(tmp_path, broker={"url": "mqtts://127.0.0.1:1", "cafile": str(missing)})
    with pytest.raises(Exception) as failed:  # noqa: PT011 (the runner reads the error out of the group)
        async with asyncio.timeout(WAIT_S), serve(settings):
            pass
    refused = startup_error(failed.value, settings)
    assert isinstance(refused, SettingsError)
    assert str(refused).startswith(f"setting broker.cafile [IOTHUB_BROKER__CAFILE]: cannot load {missing}: ")


DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def refusing(tmp_path: Path, *patterns: str) -> str:
    """Mosquitto configuration refusing anonymous clients the subscriptions ``patterns`` (SUBACK 0x80).
    Its plain ``acl_file`` does not refuse a SUBSCRIBE (it filters deliveries); the dynamic security
    plugin does. The broker stays root to read the file in the test's private temporary directory."""
    acls = [{"acltype": "subscribePattern", "topic": p, "priority": 0, "allow": False} for p in patterns]
    config = {
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": True,
                             "unsubscribe": True},
        "clients": [], "groups": [{"groupname": "anonymous", "roles": [{"rolename": "refuse"}]}],
        "roles": [{"rolename": "refuse", "acls": acls}], "anonymousGroup": "anonymous",
    }  # fmt: skip
    path = tmp_path / "dynsec.json"
    path.write_text(json.dumps(config))
    return f"user root\nplugin {DYNSEC}\nplugin_opt_config_file {path}\n"


async def test_a_refused_subscription_stops_the_start_naming_the_filter(tmp_path: Path) -> None:
    async with mosquitto(tmp_path / "broker", extra=refusing(tmp_path, "devices/+/responses")) as port:
        settings = hub_settings(tmp_path / "data", broker={"url": f"mqtt://127.0.0.1:{port}", "connect_timeout_s": 5})
        with pytest.raises(Exception) as failed:  # noqa: PT011 (the runner reads the error out of the group)
            async with asyncio.timeout(WAIT_S), serve(settings):
                pass
    refused = startup_error(failed.value, settings)
    assert isinstance(refused, SettingsError)
    assert str(refused) == (
        f"setting broker.url [IOTHUB_BROKER__URL]: the broker mqtt://127.0.0.1:{port} refused the subscription"
        " to devices/+/responses (check its ACL)"
    )


async def test_a_hub_with_a_new_data_dir_learns_the_retained_status_and_state(tmp_path: Path) -> None:
    """Mosquitto sends no retained message to a shared subscription: the hub reads them without one."""
    device = unique_id()
    data = tmp_path / "data"
    data.mkdir()
    registry = Registry(data / "registry.db")
    try:
        registry.add_device(device, type="test")
    finally:
        registry.close()
    async with mosquitto(tmp_path / "broker") as port:
        async with aiomqtt.Client("127.0.0.1", port, identifier=device, timeout=WAIT_S) as client:
            await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1, retain=True)
            state = json.dumps({"version": 3, "state": {"led": "on"}}).encode()
            await client.publish(f"devices/{device}/state/reported", state, qos=1, retain=True)
        async with external_hub(tmp_path, port) as running:
            broker = running.hub.broker
            assert isinstance(broker, ExternalBroker)
            async with asyncio.timeout(WAIT_S):
                assert await broker.wait_retained_read() == 2
        # Stopped: ingest has drained what the read handed it.
        assert running.hub.fleet.get(device) is not None
        assert running.hub.fleet.get(device).online  # type: ignore[union-attr]
    registry = Registry(data / "registry.db")
    try:
        _, _, reported, reported_version = registry.twin(device)
    finally:
        registry.close()
    assert (reported_version, reported) == (3, {"led": "on"})
