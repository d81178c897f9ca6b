from pathlib import Path

import pytest

from iothub.hub.errors import SettingsError
from iothub.hub.settings import load_settings


def test_defaults_bind_loopback_on_the_design_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.ws_port) == ("127.0.0.1", 1883, 8083)
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert s.data_dir == Path("iothub-data")
    assert s.ingest.max_payload_bytes == 64 * 1024


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
            r"setting http.port \[IOTHUB_HTTP__PORT\]: Input should be a valid integer",
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
