"""The registry verbs of the ``iothub`` command, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from iothub.cli import main
from iothub.hub.credentials import verify_secret
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
    assert json.loads(run(tmp_path, "devices", "show", "th-1")[1])["type"] == "thermostat"
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
