"""The settings tables of the docs (every setting in configuration.md, a channel's sections on its
page) are the ones the settings model gives, row for row."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from iothub.hub.settings import Settings
from iothub.hub.settings_doc import DOCS, END, begin, leaves, main, pages, render, replace_tables, rows
from iothub.hub.settings_env import unknown_variables


def test_the_docs_tables_are_the_ones_the_model_gives() -> None:
    stale = [p.name for p in pages() if p.read_text() != replace_tables(p.read_text())]
    assert stale == [], f"settings tables differ from the settings model in {stale}: run scripts/settings-table"
    with_tables = {p.name: p.read_text() for p in pages()}
    assert begin() in with_tables["configuration.md"]  # every setting, in one place
    sections = {"websocket.md": ["ws"], "grpc.md": ["grpc"], "scale-out.md": ["broker", "store"],
                "webhooks.md": ["rules", "alerts", "webhooks"], "testing.md": ["client"]}  # fmt: skip
    for page, names in sections.items():
        assert begin(names) in with_tables[page], page


def test_a_page_table_holds_its_sections_only() -> None:
    table = render(sections=["ws", "store.influx"])
    names = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert names == [n for n, _ in leaves(Settings) if n.startswith(("ws.", "store.influx."))]
    assert "ws.ping_timeout_s" in names
    with pytest.raises(ValueError, match=r"^no setting in wss$"):
        render(sections=["wss"])


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
    page = (DOCS / "configuration.md").read_text()
    assert replace_tables(page, Grown) != page


def test_a_computed_default_must_say_how_it_is_shown() -> None:
    class Odd(BaseModel):
        name: str = Field(default_factory=socket.gethostname, description="a name")

    class Grown(Settings):
        odd: Odd = Odd()

    with pytest.raises(ValueError, match=r"^setting odd.name: its default is computed"):
        render(Grown)


def test_the_script_rewrites_only_the_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "configuration.md"
    stale = "| stale | row |\n"
    text = "# Settings\n\nprose\n\n{}\n{}{}\n\nmore\n\n{}\n{}{}\n\n```toml\nport = 1\n```\n"
    page.write_text(text.format(begin(), stale, END, begin(["client"]), stale, END))
    assert main([str(page)]) == 0
    assert page.read_text() == text.format(begin(), render(), END, begin(["client"]), render(sections=["client"]), END)
    assert main([str(page)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{page}: settings table rewritten",
        f"{page}: settings table unchanged",
    ]

    page.write_text("# Settings\n\nno markers\n")
    assert main([str(page)]) == 1
    assert capsys.readouterr().err.startswith(f"settings-table: {page}: the page has no settings table ")
    assert page.read_text() == "# Settings\n\nno markers\n"
    page.write_text(f"{begin()}\n| stale |\n")
    assert main([str(page)]) == 1
    assert "has no end marker" in capsys.readouterr().err
