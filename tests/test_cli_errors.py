"""A user's first mistakes with the real ``iothub`` command: one line naming the problem, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
IOTHUB = [sys.executable, "-m", "iothub"]


def iothub(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run the command; return its exit code and the lines of stderr that are not INFO logs."""
    result = subprocess.run(
        [*IOTHUB, *args], capture_output=True, text=True, cwd=tmp_path, timeout=30, env={**os.environ, **(env or {})}
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, [line for line in result.stderr.splitlines() if " INFO " not in line]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening: nobody else gets it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


FREE = {"--mqtt-port": "0", "--mqtt-ws-port": "0", "--http-port": "0", "--grpc-port": "0"}


@pytest.mark.parametrize(
    ("option", "setting"),
    [
        ("--mqtt-port", "mqtt.port [IOTHUB_MQTT__PORT]"),
        ("--mqtt-ws-port", "mqtt.ws_port [IOTHUB_MQTT__WS_PORT]"),
        ("--http-port", "http.port [IOTHUB_HTTP__PORT]"),
        ("--grpc-port", "grpc.port [IOTHUB_GRPC__PORT]"),
    ],
)
def test_a_busy_port_names_the_setting(tmp_path: Path, taken_port: int, option: str, setting: str) -> None:
    ports = {**FREE, option: str(taken_port)}
    code, errors = iothub(tmp_path, "run", "--data-dir", "data", *(x for kv in ports.items() for x in kv))
    assert code == 1
    assert errors == [
        f"Error: setting {setting}: port {taken_port} on 127.0.0.1 is already in use "
        f"(`ss -tanp 'sport = :{taken_port}'` shows by what); choose another, or 0 for a free one"
    ]


def test_two_listeners_on_one_port_are_named_together(tmp_path: Path, taken_port: int) -> None:
    port = str(taken_port)
    code, errors = iothub(tmp_path, "run", "--data-dir", "data", "--mqtt-port", port, "--mqtt-ws-port", "0",
                          "--http-port", port, "--grpc-port", "0")  # fmt: skip
    assert code == 1
    assert errors == [
        "Error: settings mqtt.port [IOTHUB_MQTT__PORT] and http.port [IOTHUB_HTTP__PORT] are the same port, "
        f"{port}: give each listener its own"
    ]


def test_a_broker_state_file_that_is_not_one_is_named_and_kept(tmp_path: Path) -> None:
    """It holds the persistent sessions and retained messages: the hub neither starts without them
    unasked nor overwrites the file."""
    state = tmp_path / "data" / "broker.db"
    state.parent.mkdir()
    state.write_bytes(b"this is not a database\n" * 100)
    code, errors = iothub(tmp_path, "run", "--data-dir", "data", *(x for kv in FREE.items() for x in kv))
    assert code == 1
    assert errors == [
        "Error: cannot open the broker state data/broker.db: file is not a database; "
        "move it aside to start without the saved sessions and retained messages"
    ]
    assert state.read_bytes() == b"this is not a database\n" * 100


def test_a_broken_config_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('data_dir = "x"\n[http\nport = 1\n')
    code, errors = iothub(tmp_path, "run", "--config", "broken.toml")
    assert code == 1
    assert errors == [
        "Error: config file broken.toml: Expected ']' at the end of a table declaration (at line 2, column 6)"
    ]


def test_a_mistyped_environment_variable_is_refused(tmp_path: Path) -> None:
    code, errors = iothub(tmp_path, "run", env={"IOTHUB_HTTPX__PORT": "1"})
    assert code == 1
    assert errors == ["Error: setting IOTHUB_HTTPX__PORT: no such setting (did you mean IOTHUB_HTTP__PORT?)"]


def test_several_bad_settings_are_listed_one_per_line(tmp_path: Path) -> None:
    code, errors = iothub(tmp_path, "run", env={"IOTHUB_MQTT__MAX_INFLIGHT": "0", "IOTHUB_HTTP__PORT": "x"})
    assert code == 1
    assert errors == [
        "Error: invalid settings:",
        "  setting mqtt.max_inflight [IOTHUB_MQTT__MAX_INFLIGHT]: Input should be greater than or equal to 1 (got '0')",
        "  setting http.port [IOTHUB_HTTP__PORT]: Input should be a valid integer, unable to parse string as an integer"
        " (got 'x')",
    ]


def test_a_broker_address_that_is_not_a_url_says_the_form(tmp_path: Path) -> None:
    code, errors = iothub(tmp_path, "simulate", "--anonymous", "--broker", "127.0.0.1:1883")
    assert code == 1
    assert errors == ["Error: broker URL '127.0.0.1:1883': expected mqtt://host:port, e.g. mqtt://127.0.0.1:1883"]


def test_a_fleet_that_never_connects_says_why_and_fails(tmp_path: Path, refusing_port: int) -> None:
    broker = f"mqtt://127.0.0.1:{refusing_port}"
    code, errors = iothub(tmp_path, "simulate", "--anonymous", "--devices", "2", "--duration", "1", "--broker", broker)
    assert code == 1
    warning, error = errors
    assert warning.endswith(f"cannot connect to 127.0.0.1:{refusing_port}: connection refused (retrying with backoff)")
    assert error.startswith(f"Error: no device could connect to {broker}: ")
    assert error.endswith(" x connection refused")


@pytest.mark.parametrize(
    ("host", "error"),
    [
        (  # TEST-NET-1, never an address of this machine
            "192.0.2.1",
            "Error: setting mqtt.host [IOTHUB_MQTT__HOST] 192.0.2.1 / http.host [IOTHUB_HTTP__HOST] 192.0.2.1 / "
            "grpc.host [IOTHUB_GRPC__HOST] 192.0.2.1: cannot listen on 192.0.2.1:0: cannot assign requested address",
        ),
        (
            "nohost.invalid",
            "Error: setting mqtt.host [IOTHUB_MQTT__HOST] 'nohost.invalid' / http.host [IOTHUB_HTTP__HOST] "
            "'nohost.invalid' / grpc.host [IOTHUB_GRPC__HOST] 'nohost.invalid': cannot listen there: ",
        ),
    ],
)
def test_an_address_the_hub_cannot_listen_on_names_the_host_setting(tmp_path: Path, host: str, error: str) -> None:
    code, errors = iothub(
        tmp_path, "run", "--data-dir", "data", "--host", host, *(x for kv in FREE.items() for x in kv)
    )
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(error)


def test_a_corrupt_registry_is_named(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "registry.db").write_text("garbage\n")
    error = "Error: cannot open the registry at data/registry.db: file is not a database"
    assert iothub(tmp_path, "devices", "list", "--data-dir", "data") == (1, [error])
    assert iothub(tmp_path, "run", "--data-dir", "data", *(x for kv in FREE.items() for x in kv)) == (1, [error])


def test_a_data_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    error = "Error: cannot open the registry at afile/registry.db: afile is not a directory"
    assert iothub(tmp_path, "tokens", "create", "--scope", "read", "--data-dir", "afile") == (1, [error])
    assert iothub(tmp_path, "simulate", "--data-dir", "afile", "--devices", "1", "--duration", "1") == (1, [error])
    no_data = "Error: no hub data in afile (--data-dir; the default is ./iothub-data)"
    assert iothub(tmp_path, "devices", "list", "--data-dir", "afile") == (1, [no_data])


@pytest.mark.parametrize("prefix", ["bad prefix", "p" * 60])
def test_a_simulator_prefix_that_makes_bad_ids_is_refused_up_front(tmp_path: Path, prefix: str) -> None:
    code, errors = iothub(tmp_path, "simulate", "--prefix", prefix, "--devices", "10", "--data-dir", "data")
    assert (code, errors) == (
        1,
        [
            f"Error: prefix {prefix!r}: device ids PREFIX-NNNN must follow [A-Za-z0-9_.-]{{1,64}}, "
            f"and '{prefix}-0009' does not"
        ],
    )
    assert not (tmp_path / "data").exists()  # nothing registered


def test_a_credentials_file_without_a_device_is_refused_before_connecting(tmp_path: Path, refusing_port: int) -> None:
    (tmp_path / "creds.json").write_text('{"sim-0000": "s0", "sim-0002": "s2"}')
    broker = f"mqtt://127.0.0.1:{refusing_port}"
    code, errors = iothub(tmp_path, "simulate", "--credentials", "creds.json", "--devices", "4", "--broker", broker)
    assert (code, errors) == (1, ["Error: no secret for sim-0001 (and 1 more) in creds.json"])  # no connect attempt
