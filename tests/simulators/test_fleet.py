"""The simulator as a real fleet of MQTT clients against a real hub."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from typing import Any

import pytest

from iothub.hub.events import EventType
from iothub.runner import Running
from iothub.simulators.fleet import FleetConfig, run_fleet
from tests.conftest import EventWaiter, device_secret, service_client


def config(hub: Running, **kwargs: Any) -> FleetConfig:
    """A fleet whose devices are registered with the hub, as ``iothub simulate`` would do."""
    cfg = FleetConfig(host="127.0.0.1", port=hub.ports["mqtt"], seed=1, **kwargs)
    credentials = {device_id: device_secret(hub, device_id) for device_id in cfg.device_ids()}
    return dataclasses.replace(cfg, credentials=credentials)


async def test_a_fleet_reports_and_stops_cleanly(hub: Running, events: EventWaiter) -> None:
    cfg = config(hub, devices=6, rate=50, qos=1, messages=5, prefix="fleet")
    async with asyncio.timeout(20):
        stats = await run_fleet(cfg)
    assert stats.sent == 30
    assert stats.connects == 6
    for device_id in cfg.device_ids():
        await events.status_of(device_id, online=False)
        state = hub.hub.fleet.get(device_id)
        assert state is not None
        assert state.messages == 5
        assert state.seq_gaps == 0
        assert (state.reason.value, state.detail) == ("reported_offline", "shutdown")
    kinds = {tuple(sorted(hub.hub.fleet.devices[d].latest)) for d in cfg.device_ids()}
    assert kinds == {
        ("heating", "humidity", "setpoint", "temperature"),
        ("energy", "power", "voltage"),
        ("battery", "charging", "lat", "lon", "speed"),
    }


async def test_devices_answer_commands(hub: Running, events: EventWaiter) -> None:
    cfg = config(hub, devices=1, rate=5, prefix="cmd")
    stop = asyncio.Event()
    device = cfg.device_ids()[0]
    fleet = asyncio.create_task(run_fleet(cfg, stop))
    try:
        await events.status_of(device, online=True)
        async with service_client(hub, "operator") as operator:  # garbage the device must survive
            await operator.publish(f"devices/{device}/commands/ping", b"not a request", qos=1)
        send = hub.hub.commands.send
        ping = await send(device, "ping", {})
        setpoint = await send(device, "set_setpoint", {"setpoint": 19.5})
        bad_rate = await send(device, "set_rate", {"rate": -1})
        unknown = await send(device, "fly", {})
        event = await events.until(lambda e: e.type == EventType.COMMAND_RESULT and e.data["request_id"] == ping.id)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            stats = await fleet
    assert ping.ok
    assert ping.result is not None
    assert ping.result["pong"] is True
    assert setpoint.result == {"setpoint": 19.5}
    assert (bad_rate.ok, bad_rate.error) == (False, "args.rate must be a number of messages per second in (0, 1000]")
    assert unknown.error == "unknown command 'fly' for a thermostat"
    assert event.data["name"] == "ping"
    assert stats.commands == 4


async def test_chaos_drops_fire_wills_and_devices_come_back(hub: Running, events: EventWaiter) -> None:
    cfg = config(hub, devices=3, rate=20, chaos=0.5, prefix="chaos")
    stop = asyncio.Event()
    fleet = asyncio.create_task(run_fleet(cfg, stop))
    try:
        dropped = await events.until(lambda e: e.type == EventType.STATUS and e.data["reason"] == "last_will")
        back = await events.until(
            lambda e: (
                e.type == EventType.STATUS
                and e.device_id == dropped.device_id
                and e.data["online"]
                and e.id > dropped.id
            )
        )
    finally:
        stop.set()
        async with asyncio.timeout(10):
            stats = await fleet
    assert back.id > dropped.id
    assert stats.chaos_drops >= 1
    assert stats.connects > 3


async def test_chaos_drops_are_logged_quietly_and_counted(
    hub: Running, events: EventWaiter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="iothub.simulators")
    cfg = config(hub, devices=4, rate=20, chaos=0.5, prefix="quiet")
    stop = asyncio.Event()
    fleet = asyncio.create_task(run_fleet(cfg, stop))
    try:
        for _ in range(5):  # five connections dropped, as the hub saw them
            await events.until(lambda e: e.type == EventType.STATUS and e.data["reason"] == "last_will")
    finally:
        stop.set()
        async with asyncio.timeout(10):
            stats = await fleet
    gc.collect()  # a future whose exception nobody read is reported when it is collected
    assert stats.chaos_drops >= 5
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]
    drops = [r for r in caplog.records if r.getMessage().endswith("chaos: dropping the connection")]
    assert len(drops) == stats.chaos_drops
    assert {r.levelno for r in drops} == {logging.DEBUG}
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "chaos" in r.getMessage()]
    assert info == [f"chaos dropped {stats.chaos_drops} connections (each is logged at debug level)"]


async def test_a_reboot_restarts_the_sequence(hub: Running, events: EventWaiter) -> None:
    cfg = config(hub, devices=1, rate=50, prefix="reboot")
    device = cfg.device_ids()[0]
    stop = asyncio.Event()
    fleet = asyncio.create_task(run_fleet(cfg, stop))
    try:
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 10)
        result = await hub.hub.commands.send(device, "reboot", {})
        assert result.result == {"rebooting": True}
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 0)
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 3)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await fleet
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert state.duplicates == 0


async def test_an_unreachable_broker_is_retried_until_stopped() -> None:
    cfg = FleetConfig(host="127.0.0.1", port=1, devices=2, duration=1.0, prefix="nobroker")
    async with asyncio.timeout(10):
        stats = await run_fleet(cfg)
    assert stats.connects == 0
    assert stats.connect_errors >= 2
    assert stats.connect_failures == {"connection refused": stats.connect_errors}


async def test_refused_connections_say_why(hub: Running, caplog: pytest.LogCaptureFixture) -> None:
    anonymous = FleetConfig(host="127.0.0.1", port=hub.ports["mqtt"], devices=2, duration=0.5, prefix="anon")
    async with asyncio.timeout(10):
        stats = await run_fleet(anonymous)
    assert stats.connects == 0
    assert set(stats.connect_failures) == {"refused by the broker: not authorised (CONNACK 0x05)"}
    wrong = dataclasses.replace(anonymous, prefix="wrong", credentials={"wrong-0000": "x", "wrong-0001": "y"})
    async with asyncio.timeout(10):
        stats = await run_fleet(wrong)
    assert set(stats.connect_failures) == {"refused by the broker: bad username or password (CONNACK 0x04)"}
    n = stats.connect_errors
    assert (
        f"{n} connect errors ({n} x refused by the broker: bad username or password (CONNACK 0x04))" in stats.summary()
    )
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("iothub.simulators") and r.levelno >= logging.WARNING
    ]
    where = f"127.0.0.1:{hub.ports['mqtt']}"
    assert warnings == [  # the first failure of each kind, not one per attempt
        f"cannot connect to {where}: refused by the broker: not authorised (CONNACK 0x05) (retrying with backoff)",
        f"cannot connect to {where}: refused by the broker: bad username or password (CONNACK 0x04) "
        "(retrying with backoff)",
    ]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="needs QoS 1 or 2"):
        FleetConfig(rate=0, qos=0)
    for url in ("http://x", "127.0.0.1:1883", "mqtt://h:1883/path", "mqtt://:1883"):
        with pytest.raises(ValueError, match=r"expected mqtt://host:port, e\.g\. mqtt://127\.0\.0\.1:1883$"):
            FleetConfig.from_url(url)
    with pytest.raises(ValueError, match="Port out of range"):
        FleetConfig.from_url("mqtt://h:99999")
    assert FleetConfig.from_url("mqtt://10.1.2.3").port == 1883
    with pytest.raises(ValueError, match="unknown profile"):
        FleetConfig(profiles=("toaster",))
