from pathlib import Path

import pytest
from pydantic import BaseModel

from iothub.hub.errors import SettingsError
from iothub.hub.settings import Settings, load_settings
from iothub.hub.settings_env import unknown_variables


def test_defaults_bind_loopback_on_the_design_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.ws_port) == ("127.0.0.1", 1883, 8083)
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert s.data_dir == Path("iothub-data")
    assert s.ingest.max_payload_bytes == 64 * 1024
    assert s.http.max_body_bytes == 1024 * 1024


def test_environment_nested_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('data_dir = "/srv/iothub"\n[http]\nport = 9000\n[mqtt]\nport = 1884\n')
    monkeypatch.setenv("IOTHUB_MQTT__PORT", "0")
    s = load_settings(config)
    assert s.data_dir == Path("/srv/iothub")
    assert s.http.port == 9000
    assert s.mqtt.port == 0  # the environment wins over the file


def test_iothub_toml_in_the_working_directory_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iothub.toml").write_text("[ingest]\nbatch_size = 7\n")
    assert load_settings().ingest.batch_size == 7


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        (
            "IOTHUB_HTTP__PORT",
            "abc",
            r"^setting http.port \[IOTHUB_HTTP__PORT\]: Input should be a valid integer, "
            r"unable to parse string as an integer \(got 'abc'\)$",  # one problem: one line
        ),
        (
            "IOTHUB_MQTT__PORT",
            "70000",
            r"setting mqtt.port \[IOTHUB_MQTT__PORT\]: .*less than or equal to 65535",
        ),
        ("IOTHUB_STORE__BACKEND", "oracle", r"setting store.backend .*'sqlite'"),
        (
            "IOTHUB_INGEST__MAX_PAYLOAD_BYTES",
            "1",
            r"setting ingest.max_payload_bytes .*greater than or equal to 64",
        ),
        (
            "IOTHUB_HTTP__MAX_BODY_BYTES",
            "100",
            r"setting http.max_body_bytes .*greater than or equal to 1024",
        ),
        ("IOTHUB_LOG_LEVEL", "loud", r"setting log_level \[IOTHUB_LOG_LEVEL\]"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_unknown_keys_and_missing_files_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[http]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"setting http.prot .*Extra inputs are not permitted"):
        load_settings(config)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_unknown_environment_variables_are_refused_with_the_closest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTHUB_HTTPX__PORT", "1")
    with pytest.raises(
        SettingsError, match=r"^setting IOTHUB_HTTPX__PORT: no such setting \(did you mean IOTHUB_HTTP__PORT\?\)$"
    ):
        load_settings()
    monkeypatch.delenv("IOTHUB_HTTPX__PORT")
    monkeypatch.setenv("IOTHUB_KAFKA__BROKERS", "mqtt://elsewhere:1883")
    monkeypatch.setenv("IOTHUB_STORE__REMOTE__URL", "http://influx")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value).splitlines() == [
        "invalid settings:",
        "  setting IOTHUB_KAFKA__BROKERS: no such setting (known: IOTHUB_DATA_DIR, IOTHUB_LOG_LEVEL, IOTHUB_MQTT__*, "
        "IOTHUB_BROKER__*, IOTHUB_HTTP__*, IOTHUB_INGEST__*, IOTHUB_STORE__*, IOTHUB_FANOUT__*, IOTHUB_SSE__*, "
        "IOTHUB_WS__*, IOTHUB_GRPC__*, IOTHUB_ALERTS__*, IOTHUB_WEBHOOKS__*, IOTHUB_CLIENT__*, IOTHUB_RULES)",
        "  setting IOTHUB_STORE__REMOTE__URL: no such setting "
        "(known: IOTHUB_STORE__BACKEND, IOTHUB_STORE__INFLUX__*, IOTHUB_STORE__EVENT_RETENTION)",
    ]


def test_other_products_iothub_variables_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Azure IoT Hub's tools read IOTHUB_CONNECTION_STRING and the like: they must not stop this hub."""
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", "HostName=x.azure-devices.net;SharedAccessKey=k")
    monkeypatch.setenv("IOTHUB_DEVICE_CONNECTION_STRING", "HostName=x;DeviceId=d;SharedAccessKey=k")
    assert load_settings().http.port == 8080
    for mine in ("IOTHUB_PORT", "IOTHUB_DATADIR", "IOTHUB_LOG_LEVL"):  # a single word, or close to a setting
        monkeypatch.setenv(mine, "1")
        with pytest.raises(SettingsError, match=f"setting {mine}: no such setting"):
            load_settings()
        monkeypatch.delenv(mine)


def test_every_setting_of_the_model_is_accepted_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOTHUB_MQTT__TLS__REQUIRE_CLIENT_CERT", "false")
    monkeypatch.setenv("IOTHUB_HTTP", '{"port": 9001}')  # a whole section, as JSON
    monkeypatch.setenv("iothub_ingest__batch_size", "9")  # names are not case-sensitive
    s = load_settings()
    assert (s.http.port, s.ingest.batch_size) == (9001, 9)

    # Names come from the model: what a new field or section adds is known at once.
    class Extra(BaseModel):
        url: str = ""

    class Grown(Settings):
        cluster: Extra = Extra()
        labels: dict[str, str] = {}

    environ = {"IOTHUB_CLUSTER__URL": "x", "IOTHUB_LABELS__SITE": "x", "IOTHUB_MQTT__PORT": "1", "PATH": "/bin"}
    assert unknown_variables(environ, Grown) == []
    assert unknown_variables({**environ, "IOTHUB_CLUSTER__URI": "x"}, Grown) == [
        "setting IOTHUB_CLUSTER__URI: no such setting (did you mean IOTHUB_CLUSTER__URL?)"
    ]


def test_a_broken_config_file_is_named_with_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('data_dir = "x"\n[http\nport = 1\n')
    with pytest.raises(SettingsError, match=r"^config file .*broken.toml: Expected ']' .*\(at line 2, column 6\)$"):
        load_settings(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'data_dir = "\xff"\n')
    with pytest.raises(SettingsError, match=r"^config file .*binary.toml: not UTF-8 text \(byte 12\)$"):
        load_settings(binary)
    with pytest.raises(SettingsError, match=r"^config file .* is not a file$"):
        load_settings(tmp_path)
    unreadable = Path("/proc/self/mem")  # a regular file whose first bytes cannot be read
    with pytest.raises(SettingsError, match=r"^config file /proc/self/mem: cannot read it: Input/output error$"):
        load_settings(unreadable)


def test_a_section_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTHUB_MQTT", "port=1")
    with pytest.raises(SettingsError, match=r"^setting mqtt \[IOTHUB_MQTT\]: expected a JSON object \(Expecting value"):
        load_settings()


def test_a_validator_message_stands_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTHUB_BROKER__URL", "http://x")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert (
        str(refused.value)
        == "setting broker.url [IOTHUB_BROKER__URL]: scheme 'http' is not one of mqtt, mqtts, ws, wss"
    )
