"""The real ``iothub`` command, as a user runs it: hub and simulator in their own processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from iothub.v1 import devices_pb2, devices_pb2_grpc

pytestmark = pytest.mark.e2e
IOTHUB = [sys.executable, "-m", "iothub"]
DEADLINE_S = 20.0


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``iothub run`` on free ports; yields it and its addresses, plus the first-start token."""
    env = {**os.environ, "IOTHUB_DATA_DIR": str(tmp_path / "data")}
    with subprocess.Popen(
        [*IOTHUB, "run", "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the hub prints its addresses once bound
            match = re.match(r"iothub listening: mqtt=(\S+) mqtt_ws=(\S+) http=(\S+) grpc=(\S+)", line)
            assert match, f"unexpected first line {line!r}"
            token = re.search(r"token was created \(shown once\): (\S+)", proc.stdout.readline())
            assert token, "no first-start token printed"
            yield proc, {"mqtt": match[1], "mqtt_ws": match[2], "http": match[3], "grpc": match[4],
                         "token": token[1], "data_dir": env["IOTHUB_DATA_DIR"]}  # fmt: skip
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def poll(url: str, token: str, check: Any, deadline: float = DEADLINE_S) -> Any:
    """GET ``url`` until ``check(json)`` is truthy; bounded in time."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = httpx.get(url, timeout=5, headers={"Authorization": f"Bearer {token}"}).json()
        if result := check(last):
            return result
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {deadline} s; last answer: {json.dumps(last)[:2000]}")


def test_run_simulate_kill_and_stop(hub_process: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, addr = hub_process
    http, token = addr["http"], addr["token"]
    auth = {"Authorization": f"Bearer {token}"}
    keepalive = 2
    # The simulator registers its fleet in the hub's registry (the same data dir), then connects.
    sim = subprocess.Popen(
        [
            *IOTHUB,
            "simulate",
            "--broker",
            f"mqtt://{addr['mqtt']}",
            "--devices",
            "5",
            "--rate",
            "10",
            "--keepalive",
            str(keepalive),
            "--prefix",
            "e2e",
            "--seed",
            "3",
            "--data-dir",
            addr["data_dir"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def all_online_with_data(body: dict[str, Any]) -> bool:
            devices = body["devices"]
            return len(devices) == 5 and all(d["online"] and d["messages"] >= 3 for d in devices)

        poll(f"{http}/api/v1/devices", token, all_online_with_data)
        series = httpx.get(
            f"{http}/api/v1/devices/e2e-0000/telemetry", params={"metric": "temperature"}, headers=auth
        ).json()
        assert len(series["series"]["temperature"]) >= 3
    finally:
        sim.kill()  # an ungraceful end: the broker sees the sockets drop
        sim.wait(5)

    def all_offline(body: dict[str, Any]) -> list[dict[str, Any]] | None:
        devices = body["devices"]
        return devices if all(not d["online"] for d in devices) else None

    devices = poll(f"{http}/api/v1/devices", token, all_offline)
    # the broker saw the sockets drop and sent the Wills, rather than waiting out the keepalive
    assert {d["reason"] for d in devices} == {"last_will"}

    assert {d["type"] for d in devices} == {"thermostat", "power_meter", "tracker"}
    assert httpx.get(f"{http}/api/v1/devices").status_code == 401
    # The gRPC API of the real `iothub run` (on uvloop when installed) sees the same fleet.
    with grpc.insecure_channel(addr["grpc"]) as channel:
        listed = devices_pb2_grpc.DeviceServiceStub(channel).ListDevices(
            devices_pb2.ListDevicesRequest(id_prefix="e2e-"),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=DEADLINE_S,
        )
    assert [(d.id, d.presence.reason) for d in listed.devices] == [(d["id"], "last_will") for d in devices]
    metrics = httpx.get(f"{http}/metrics", headers=auth).text
    stored = float(re.search(r"^iothub_messages_stored_total (\S+)$", metrics, re.M)[1])  # type: ignore[index]
    assert stored >= 15

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "hub stopped" in stderr


def test_sigint_exits_cleanly(hub_process: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, addr = hub_process
    assert httpx.get(f"{addr['http']}/healthz").json()["status"] == "ok"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_bad_settings_fail_with_the_setting_named(tmp_path: Path) -> None:
    env = {**os.environ, "IOTHUB_HTTP__PORT": "eighty"}
    result = subprocess.run([*IOTHUB, "run"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert result.returncode != 0
    assert "setting http.port [IOTHUB_HTTP__PORT]" in result.stderr


def test_a_second_hub_on_the_same_ports_says_which(
    tmp_path: Path, hub_process: tuple[subprocess.Popen[str], dict[str, str]]
) -> None:
    _, addr = hub_process
    taken = addr["mqtt"].rsplit(":", 1)[1]
    result = subprocess.run(
        [*IOTHUB, "run", "--mqtt-port", taken, "--mqtt-ws-port", "0", "--http-port", "0", "--grpc-port", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [  # amqtt's own report of the failure (and its traceback) is left out
        f"Error: setting mqtt.port [IOTHUB_MQTT__PORT]: port {taken} on 127.0.0.1 is already in use "
        f"(`ss -tanp 'sport = :{taken}'` shows by what); choose another, or 0 for a free one"
    ]


def test_every_verb_has_help() -> None:
    verbs = [[], ["run"], ["simulate"], ["devices"], ["tokens"], ["accounts"], ["devices", "add"],
             ["devices", "rotate-secret"], ["tokens", "create"], ["accounts", "add"]]  # fmt: skip
    for verb in verbs:
        result = subprocess.run([*IOTHUB, *verb, "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        assert "Usage: " in result.stdout
