"""The registry verbs of the ``iothub`` command, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from iothub.cli import main
from iothub.hub.credentials import verify_secret
from iothub.hub.fleet import iso
from iothub.hub.registry import Registry


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args[:2], *args[2:], "--data-dir", str(tmp_path)] if len(args) > 1 else args)
    return result.exit_code, result.output


def test_devices_verbs(tmp_path: Path) -> None:
    code, out = run(tmp_path, "devices", "add", "th-1", "--type", "thermostat", "--label", "site=berlin")
    assert code == 0
    secret = re.search(r"secret: (\S+)", out)
    assert secret
    assert verify_secret(secret[1], Registry(tmp_path / "registry.db").device("th-1").secret_hash)
    assert run(tmp_path, "devices", "add", "th-1")[0] == 1
    code, out = run(tmp_path, "devices", "list", "--json")
    assert json.loads(out)[0]["labels"] == {"site": "berlin"}
    assert "th-1" in run(tmp_path, "devices", "list")[1]
    shown = json.loads(run(tmp_path, "devices", "show", "th-1")[1])
    assert shown["type"] == "thermostat"
    created = Registry(tmp_path / "registry.db").device("th-1").created
    assert shown["created"] == shown["secret_rotated"] == iso(created)  # as the REST API shows it
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", shown["created"])
    assert json.loads(run(tmp_path, "devices", "list", "--json")[1])[0]["created"] == shown["created"]
    assert run(tmp_path, "devices", "disable", "th-1")[1].strip() == "device th-1 disabled"
    assert not Registry(tmp_path / "registry.db").device("th-1").enabled
    assert run(tmp_path, "devices", "enable", "th-1")[1].strip() == "device th-1 enabled"
    assert "new secret for th-1" in run(tmp_path, "devices", "rotate-secret", "th-1")[1]
    assert run(tmp_path, "devices", "remove", "th-1")[0] == 0
    for verb in ("show", "disable", "enable", "rotate-secret", "remove"):
        code, out = run(tmp_path, "devices", verb, "th-1")
        assert (code, "no device 'th-1'" in out) == (1, True), verb
    code, out = run(tmp_path, "devices", "add", "x", "--label", "nolabel")
    assert code == 2
    assert "is not key=value" in out


def test_tokens_and_accounts_verbs(tmp_path: Path) -> None:
    code, out = run(tmp_path, "tokens", "create", "--scope", "read", "--name", "grafana")
    assert code == 0
    token_id = re.search(r"token (\S+) \(read\)", out)
    assert token_id
    listed = json.loads(run(tmp_path, "tokens", "list", "--json")[1])
    assert listed[0]["name"] == "grafana"
    assert listed[0]["revoked"] is None
    assert listed[0]["created"].endswith("Z")
    assert "active" in run(tmp_path, "tokens", "list")[1]
    assert run(tmp_path, "tokens", "revoke", token_id[1])[0] == 0
    assert "revoked" in run(tmp_path, "tokens", "list")[1]
    assert run(tmp_path, "tokens", "revoke", "nope")[0] == 1
    assert "svc:bridge (service)" in run(tmp_path, "accounts", "add", "bridge", "--role", "service")[1]
    assert run(tmp_path, "accounts", "add", "bridge", "--role", "service")[0] == 1
    assert "svc:bridge  service" in run(tmp_path, "accounts", "list")[1]
    assert run(tmp_path, "accounts", "remove", "bridge")[0] == 0
    assert run(tmp_path, "accounts", "remove", "bridge")[0] == 1


def test_bad_settings_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[http]\nport = -1\n")
    result = CliRunner().invoke(main, ["devices", "list", "--config", str(config)])
    assert result.exit_code == 1
    assert "setting http.port" in result.output


@pytest.mark.parametrize(
    "verb",
    [("devices", "list"), ("devices", "show", "x"), ("devices", "disable", "x"), ("devices", "remove", "x"),
     ("tokens", "list"), ("tokens", "revoke", "x"), ("accounts", "list"), ("accounts", "remove", "x")],
)  # fmt: skip
def test_verbs_that_only_read_or_change_refuse_a_data_dir_without_hub_data(
    tmp_path: Path, verb: tuple[str, ...]
) -> None:
    typo = tmp_path / "typo"
    result = CliRunner().invoke(main, [*verb, "--data-dir", str(typo)])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: no hub data in {typo} (--data-dir; the default is ./iothub-data)\n",
    )
    assert not typo.exists()  # nothing was created there


def test_verbs_that_add_make_the_first_registry(tmp_path: Path) -> None:
    for verb in (
        ("devices", "add", "th-1"),
        ("tokens", "create", "--scope", "read"),
        ("accounts", "add", "a", "--role", "observer"),
    ):
        data = tmp_path / "-".join(verb[:2])
        assert CliRunner().invoke(main, [*verb, "--data-dir", str(data)]).exit_code == 0, verb
        assert (data / "registry.db").is_file()
