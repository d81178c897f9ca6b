"""The settings table of docs/configuration.md is the one the settings model gives, row for row."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from iothub.hub.settings import Settings
from iothub.hub.settings_doc import BEGIN, END, PAGE, leaves, main, render, replace_table, rows
from iothub.hub.settings_env import unknown_variables


def test_the_docs_table_is_the_one_the_model_gives() -> None:
    page = PAGE.read_text()
    assert page == replace_table(page, render()), (
        "docs/configuration.md's settings table differs from the settings model: run scripts/settings-table"
    )


def test_every_setting_has_a_one_line_description() -> None:
    missing = [name for name, field in leaves(Settings) if not field.description or "\n" in field.description]
    assert missing == []


def test_one_row_per_setting_with_the_variable_the_hub_reads() -> None:
    table = rows(Settings)
    names = [r.setting.strip("`") for r in table]
    assert names == [name for name, _ in leaves(Settings)]
    assert len(set(names)) == len(names)
    assert {"mqtt.tls.require_client_cert", "store.influx.bucket", "ws.ping_timeout_s", "client.url"} <= set(names)
    variables = {r.variable.split("`")[1] for r in table}
    assert unknown_variables(dict.fromkeys(variables, "1"), Settings) == []
    assert unknown_variables({"IOTHUB_MQTT__TLS": "1"}, Settings) == []  # a section: no row, still accepted


def test_defaults_are_shown_as_a_user_writes_them() -> None:
    shown = {r.setting.strip("`"): (r.variable, r.default) for r in rows(Settings)}
    assert shown["mqtt.port"] == ("`IOTHUB_MQTT__PORT`", "1883")
    assert shown["mqtt.durable_ack"][1] == "true"
    assert shown["mqtt.allow_anonymous"][1] == "false"
    assert shown["mqtt.tls.port"][1] == "unset"
    assert shown["store.influx.token"][1] == "unset"  # an empty secret
    assert shown["store.influx.org"][1] == "unset"
    assert shown["broker.client_id"][1] == "`iothub-{hostname}`"  # not this machine's name
    assert socket.gethostname() not in render()
    assert shown["broker.tail_poll_s"][1] == "0.05"
    assert shown["ingest.max_future_skew_s"][1] == "300"
    assert shown["data_dir"][1] == "`iothub-data`"
    assert shown["webhooks.retry_schedule_s"] == (
        "`IOTHUB_WEBHOOKS__RETRY_SCHEDULE_S` (JSON)",
        "`[5, 300, 1800, 7200, 18000, 36000, 36000]`",
    )
    assert shown["rules"] == ("`IOTHUB_RULES` (JSON)", "`[]`")


class _Cluster(BaseModel):
    url: str | None = Field(default=None, description="peer hubs, a|b")
    size: int = 3  # no description


class _Grown(Settings):
    cluster: _Cluster = _Cluster()


def test_a_new_setting_needs_a_description_and_changes_the_table() -> None:
    with pytest.raises(ValueError, match=r"^setting cluster.size: give it a one-line Field\(description=\.\.\.\)$"):
        rows(_Grown)

    class Described(_Cluster):
        size: int = Field(default=3, description="hubs in the cluster")

    class Grown(Settings):
        cluster: Described = Described()

    table = render(Grown)
    assert "| `cluster.url` | `IOTHUB_CLUSTER__URL` | unset | peer hubs, a\\|b |\n" in table
    assert table.endswith("| `cluster.size` | `IOTHUB_CLUSTER__SIZE` | 3 | hubs in the cluster |\n")
    page = PAGE.read_text()
    assert replace_table(page, table) != page


def test_a_computed_default_must_say_how_it_is_shown() -> None:
    class Odd(BaseModel):
        name: str = Field(default_factory=socket.gethostname, description="a name")

    class Grown(Settings):
        odd: Odd = Odd()

    with pytest.raises(ValueError, match=r"^setting odd.name: its default is computed"):
        render(Grown)


def test_the_script_rewrites_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"# Settings\n\nprose\n\n{BEGIN}\n| stale | row |\n{END}\n\n```toml\nport = 1\n```\n")
    assert main([str(page)]) == 0
    assert page.read_text() == f"# Settings\n\nprose\n\n{BEGIN}\n{render()}{END}\n\n```toml\nport = 1\n```\n"
    assert main([str(page)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{page}: settings table rewritten",
        f"{page}: settings table unchanged",
    ]

    page.write_text("# Settings\n\nno markers\n")
    assert main([str(page)]) == 1
    assert capsys.readouterr().err.startswith(f"settings-table: {page}: the page has no settings table between ")
    assert page.read_text() == "# Settings\n\nno markers\n"
