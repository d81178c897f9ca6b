"""Authentication and the topic ACL, pure and through the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from iothub.hub.auth import Principal, PrincipalKind, may_publish, may_subscribe
from iothub.hub.credentials import hash_secret, hash_secret_argon2, verify_secret
from iothub.hub.registry import Role
from iothub.runner import Running, serve
from tests.conftest import (
    WAIT_S,
    EventWaiter,
    _secrets,
    device_secret,
    hub_settings,
    mqtt_client,
    service_client,
    telemetry,
    unique_id,
)
from tests.mqtt_raw import connack_code

DEVICE = Principal(PrincipalKind.DEVICE, "a")


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("devices/a/telemetry", True),
        ("devices/a/status", True),
        ("devices/a/responses", True),
        ("devices/a/state/reported", True),
        ("devices/a/state/desired", False),
        ("devices/a/commands/x", False),
        ("devices/b/telemetry", False),
        ("devices/a/other", False),
        ("hub/status", False),
        ("devices/a b/telemetry", False),
    ],
)
def test_device_publish_rules(topic: str, allowed: bool) -> None:
    assert may_publish(DEVICE, topic) is allowed


def test_service_and_observer_rules() -> None:
    service = Principal(PrincipalKind.SERVICE, "s", Role.SERVICE)
    observer = Principal(PrincipalKind.SERVICE, "o", Role.OBSERVER)
    assert may_publish(service, "devices/x/commands/y")
    assert not may_publish(observer, "devices/x/commands/y")
    assert may_subscribe(observer, "#")
    assert may_subscribe(DEVICE, "devices/a/state/desired")
    assert not may_subscribe(DEVICE, "devices/b/state/desired")


async def test_connack_codes(hub: Running) -> None:
    port = hub.ports["mqtt"]
    device = unique_id()
    secret = device_secret(hub, device)
    assert await connack_code(port, device, username=device, password=secret) == 0x00
    assert await connack_code(port, device, username=device, password="wrong") == 0x04
    assert await connack_code(port, device, username=device) == 0x04  # no password
    assert await connack_code(port, "ghost", username="ghost", password="x") == 0x04
    assert await connack_code(port, "someone") == 0x05  # anonymous access is off by default
    assert await connack_code(port, "other-id", username=device, password=secret) == 0x02
    assert await connack_code(port, "svc-x", username="svc:nobody", password="x") == 0x04
    will = (f"devices/{unique_id()}/status", b'{"online": false}')
    assert await connack_code(port, device, username=device, password=secret, will=will) == 0x05
    hub.hub.registry.set_enabled(device, False)
    assert await connack_code(port, device, username=device, password=secret) == 0x05
    hub.hub.registry.set_enabled(device, True)
    _, new_secret = hub.hub.registry.rotate_secret(device)
    assert await connack_code(port, device, username=device, password=secret) == 0x04
    assert await connack_code(port, device, username=device, password=new_secret) == 0x00
    metrics = hub.hub.metrics.render().decode()
    assert 'iothub_mqtt_connects_total{result="0x04"} 5.0' in metrics
    assert 'iothub_mqtt_connects_total{result="0x02"} 1.0' in metrics


def test_secrets_are_hashed_with_sha256_and_earlier_argon2_hashes_still_verify() -> None:
    new = hash_secret("s3cret")
    assert new.startswith("sha256$")
    assert verify_secret("s3cret", new)
    assert not verify_secret("s3cret!", new)
    legacy = hash_secret_argon2("s3cret")
    assert verify_secret("s3cret", legacy)
    assert not verify_secret("other", legacy)
    assert not verify_secret("s3cret", "sha256$not-hex")
    assert not verify_secret("s3cret", "$argon2id$damaged")


async def test_an_argon2_hash_is_replaced_after_its_next_successful_login(hub: Running) -> None:
    """A registry written by an earlier version (argon2id) keeps working; each hash is upgraded once."""
    port, registry = hub.ports["mqtt"], hub.hub.registry
    device = unique_id()
    secret = device_secret(hub, device)
    _, account_secret = registry.add_account("legacy", Role.SERVICE)
    with contextlib.closing(sqlite3.connect(registry.path)) as db, db:
        db.execute("UPDATE devices SET secret_hash = ? WHERE id = ?", (hash_secret_argon2(secret), device))
        db.execute("UPDATE accounts SET secret_hash = ? WHERE name = ?", (hash_secret_argon2(account_secret), "legacy"))
    legacy = registry.device(device).secret_hash
    assert legacy.startswith("$argon2id$")
    assert await connack_code(port, device, username=device, password="wrong") == 0x04
    assert registry.device(device).secret_hash == legacy  # a failed login changes nothing
    assert await connack_code(port, device, username=device, password=secret) == 0x00
    upgraded = registry.device(device).secret_hash
    assert upgraded.startswith("sha256$")
    assert verify_secret(secret, upgraded)
    assert await connack_code(port, device, username=device, password=secret) == 0x00  # the new hash
    assert await connack_code(port, device, username=device, password="wrong") == 0x04
    assert await connack_code(port, "svc-legacy", username="svc:legacy", password=account_secret) == 0x00
    assert registry.account("legacy").secret_hash == hash_secret(account_secret)


async def test_anonymous_access_when_allowed(tmp_path: Path) -> None:
    async with serve(hub_settings(tmp_path / "data", mqtt={"allow_anonymous": True})) as running:
        assert await connack_code(running.ports["mqtt"], "anyone") == 0x00


async def test_a_device_can_neither_read_nor_write_another(hub: Running, events: EventWaiter) -> None:
    a, b = unique_id("a"), unique_id("b")
    async with mqtt_client(hub, a) as dev_a, mqtt_client(hub, b) as dev_b:
        # Subscriptions outside its own commands and desired state are refused (SUBACK 0x80) ...
        for topic_filter in (f"devices/{b}/commands/#", "devices/+/commands/#", "#", f"devices/{a}/#", "+/+/+"):
            granted = await dev_a.subscribe(topic_filter, qos=1)
            assert [code.value for code in granted] == [0x80], topic_filter  # type: ignore[union-attr]
        granted = await dev_a.subscribe(f"devices/{a}/commands/+", qos=1)
        assert [code.value for code in granted] == [1]  # type: ignore[union-attr]
        # ... and publishing as B is dropped and counted; B's own data is untouched.
        await dev_a.publish(f"devices/{b}/telemetry", telemetry({"forged": 1}), qos=1)
        await dev_b.publish(f"devices/{b}/telemetry", telemetry({"real": 1}), qos=1)
        event = await events.telemetry_from(b)
        assert event.data["metrics"] == {"real": 1}
        # A still receives its own commands.
        async with service_client(hub, "operator") as operator:
            await operator.publish(f"devices/{a}/commands/ping", b'{"id": "1"}', qos=1)
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(dev_a.messages))
        assert str(message.topic) == f"devices/{a}/commands/ping"
    state = hub.hub.fleet.get(b)
    assert state is not None
    assert "forged" not in state.latest
    metrics = hub.hub.metrics.render().decode()
    assert 'iothub_acl_denied_total{action="publish"} 1.0' in metrics
    assert 'iothub_acl_denied_total{action="subscribe"} 5.0' in metrics


async def test_observers_read_but_do_not_write(hub: Running) -> None:
    device = unique_id()
    async with service_client(hub, "watch", Role.OBSERVER) as observer, mqtt_client(hub, device) as dev:
        await observer.subscribe("devices/#", qos=1)
        await observer.publish(f"devices/{device}/commands/x", b'{"id": "1"}', qos=1)  # refused
        await dev.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(observer.messages))
        assert str(message.topic) == f"devices/{device}/telemetry"


async def test_acl_violation_can_disconnect(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", mqtt={"acl_violation": "disconnect"})
    async with serve(settings) as running:
        events = EventWaiter(running.hub.bus.subscribe("t"))
        device = unique_id()
        client = mqtt_client(running, device)
        await client.__aenter__()
        await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
        await events.status_of(device, online=True)
        await client.publish("devices/someone-else/telemetry", telemetry({"t": 1}), qos=0)
        offline = await events.status_of(device, online=False)
        assert offline.data["reason"] == "acl_violation"
        with contextlib.suppress(aiomqtt.MqttError):  # the hub already closed it
            await client.__aexit__(None, None, None)


async def test_disabling_a_connected_device_disconnects_it(hub: Running, events: EventWaiter, http: object) -> None:
    device = unique_id()
    client = mqtt_client(hub, device)
    await client.__aenter__()
    await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
    await events.status_of(device, online=True)
    hub.hub.registry.set_enabled(device, False)  # as `iothub devices disable` in another process would
    offline = await events.status_of(device, online=False)  # the hub polls the registry every second
    assert offline.data["reason"] == "disabled"
    with contextlib.suppress(aiomqtt.MqttError):  # the hub already closed it
        await client.__aexit__(None, None, None)


async def test_a_service_account_cannot_take_a_devices_place(hub: Running, events: EventWaiter) -> None:
    """Connecting with a device's client id would take over its connection, its persistent session
    and the commands queued for it: even an account that may read everything may not do that."""
    device = unique_id()
    async with mqtt_client(hub, device, clean_session=False) as client:
        await client.subscribe(f"devices/{device}/commands/#", qos=1)
        await events.status_of(device, online=True)
        key = (str(hub.hub.registry.path), "svc:watcher")
        _, _secrets[key] = hub.hub.registry.add_account("watcher", Role.OBSERVER)
        code = await connack_code(
            hub.ports["mqtt"], device, username="svc:watcher", password=_secrets[key], clean=False
        )
        assert code == 0x02
        result = asyncio.create_task(hub.hub.commands.send(device, "ping", {}, timeout_s=WAIT_S))
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))  # the device is still the one connected
        assert str(message.topic) == f"devices/{device}/commands/ping"
        result.cancel()
    assert await connack_code(hub.ports["mqtt"], "svc-watcher", username="svc:watcher", password=_secrets[key]) == 0
