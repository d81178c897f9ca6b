"""``iothub rules`` and ``iothub webhooks``, run in-process: on a data dir alone, and beside a
running hub that picks their changes up."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from iothub.cli import main
from iothub.runner import serve
from tests.bridge.receiver import Reply, receiver
from tests.conftest import WAIT_S, EventWaiter, hub_settings, mqtt_client, telemetry, unique_id
from tests.hub.test_alerts import store_bad_rule

PRIVATE_OK = {"IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true"}


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)], env=env)
    return result.exit_code, result.output


def test_rules_verbs(tmp_path: Path) -> None:
    assert run(tmp_path, "rules", "remove", "x") == (
        1,
        f"Error: no hub data in {tmp_path} (--data-dir; the default is ./iothub-data)\n",
    )
    args = ("rules", "add", "hot", "--metric", "temperature", "--op", ">", "--threshold", "30", "--clear", "28")
    assert run(tmp_path, *args, "--for", "5", "--label", "site=berlin") == (0, "rule hot added\n")
    assert run(tmp_path, "rules", "add", "gone", "--offline-for", "300", "--device", "d-1") == (0, "rule gone added\n")
    out = run(tmp_path, "rules", "list")[1]
    assert out.splitlines()[1:] == [
        "gone                 api       offline for 300 s devices=d-1",
        "hot                  api       temperature > 30 (clear 28) for 5 s site=berlin",
    ]
    listed = json.loads(run(tmp_path, "rules", "list", "--json")[1])
    assert listed[1] == {
        "kind": "metric", "name": "hot", "metric": "temperature", "op": ">", "threshold": 30.0, "range": None,
        "clear": 28.0, "for_s": 5.0, "select": {"devices": [], "labels": {"site": "berlin"}}, "source": "api",
    }  # fmt: skip
    assert run(tmp_path, *args) == (1, "Error: rule 'hot' exists already (remove it first)\n")
    bad = ("rules", "add", "warm", "--metric", "t", "--op", "outside", "--range", "5", "1")
    assert run(tmp_path, *bad) == (1, "Error: rule: metric: range [5.0, 1.0]: low must be below high\n")
    assert run(tmp_path, "rules", "add", "x", "--metric", "t")[0] == 2
    assert run(tmp_path, "rules", "remove", "gone") == (0, "rule gone removed\n")
    assert run(tmp_path, "rules", "remove", "gone") == (1, "Error: no rule named 'gone'\n")


def test_non_finite_numbers_are_refused_and_a_bad_stored_rule_is_listed(tmp_path: Path) -> None:
    for number in ("nan", "inf", "-inf"):
        args = ("rules", "add", "x11", "--metric", "t", "--op", ">", "--threshold", number)
        assert run(tmp_path, *args) == (1, "Error: rule: metric.threshold: Input should be a finite number\n")
    assert run(tmp_path, "rules", "add", "gone", "--offline-for", "300") == (0, "rule gone added\n")
    store_bad_rule(tmp_path)
    out = run(tmp_path, "rules", "list")
    assert out == (0, (
        "NAME                 SOURCE    RULE\n"
        "gone                 api       offline for 300 s\n"
        "x11                  api       INVALID, skipped: rule: metric: op '>' takes a threshold and no range"
        " (remove it: iothub rules remove x11)\n"
    ))  # fmt: skip
    assert json.loads(run(tmp_path, "rules", "list", "--json")[1])[1]["invalid"] == (
        "rule: metric: op '>' takes a threshold and no range"
    )
    assert run(tmp_path, "rules", "remove", "x11") == (0, "rule x11 removed\n")
    assert [r["name"] for r in json.loads(run(tmp_path, "rules", "list", "--json")[1])] == ["gone"]


def test_disable_says_new_events_are_not_queued(tmp_path: Path) -> None:
    code, out = run(tmp_path, "webhooks", "disable", "--help")
    assert code == 0
    assert "events that happen while it is disabled are not queued for it" in " ".join(out.split())


def test_webhooks_verbs(tmp_path: Path) -> None:
    assert run(tmp_path, "webhooks", "list")[0] == 1  # no hub data yet
    code, out = run(tmp_path, "webhooks", "add", "http://10.0.0.1/hook", "--events", "alert.firing")
    assert code == 1
    assert out == (
        "Error: url 'http://10.0.0.1/hook': 10.0.0.1 is a private address (set "
        "webhooks.allow_private_targets [IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS] to allow it)\n"
    )
    bad_port = run(tmp_path, "webhooks", "add", "http://example.com:99999/", "--events", "alert.firing")
    assert bad_port == (1, "Error: url 'http://example.com:99999/': port 99999 is not between 1 and 65535\n")
    numeric = run(tmp_path, "webhooks", "add", "http://2130706433/", "--events", "alert.firing", env=PRIVATE_OK)
    assert numeric == (1, "Error: url 'http://2130706433/': 2130706433 is an address in a numeric form;"
                          " write an IPv4 address as a.b.c.d\n")  # fmt: skip
    code, out = run(tmp_path, "webhooks", "add", "https://example.com/h", "--events", "alert.firing,device.offline")
    assert code == 0, out
    found = re.fullmatch(
        r"endpoint (ep_\w+) added for alert.firing, device.offline\nsecret: (whsec_\S+)\n\(shown once\)\n", out
    )
    assert found, out
    endpoint_id = found[1]
    code, out = run(tmp_path, "webhooks", "add", "https://example.com/h", "--events", "alert.fired")
    assert (code, out) == (1, "Error: events: 'alert.fired' is not one of alert.firing, alert.resolved, "
                              "device.online, device.offline\n")  # fmt: skip
    assert run(tmp_path, "webhooks", "disable", endpoint_id) == (0, f"endpoint {endpoint_id} disabled\n")
    assert json.loads(run(tmp_path, "webhooks", "list", "--json")[1])[0]["enabled"] is False
    assert run(tmp_path, "webhooks", "enable", endpoint_id) == (0, f"endpoint {endpoint_id} enabled\n")
    code, out = run(tmp_path, "webhooks", "rotate-secret", endpoint_id)
    assert code == 0
    assert out.startswith(f"new secret for {endpoint_id}: whsec_")
    assert found[2] not in out
    assert run(tmp_path, "webhooks", "redeliver", "7") == (1, "Error: no webhook delivery 7\n")
    assert run(tmp_path, "webhooks", "remove", endpoint_id) == (0, f"endpoint {endpoint_id} removed\n")
    assert run(tmp_path, "webhooks", "remove", endpoint_id) == (1, f"Error: no webhook endpoint {endpoint_id!r}\n")


async def poll_cli(data: Path, args: tuple[str, ...], check: Callable[[Any], bool]) -> Any:
    """Run a CLI verb (JSON output) until ``check`` holds on its answer; bounded in time."""
    async with asyncio.timeout(WAIT_S):
        while not check(answer := json.loads((await asyncio.to_thread(run, data, *args))[1])):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return answer


async def test_a_running_hub_uses_what_the_cli_changes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    webhooks = {"allow_private_targets": True, "retry_schedule_s": [0.1], "jitter": 0, "poll_s": 0.2}
    answers = {"status": 500}
    async with serve(hub_settings(data, webhooks=webhooks)) as hub, receiver(lambda _: Reply(answers["status"])) as r:
        events = EventWaiter(hub.hub.bus.subscribe("test"))
        code, out = await asyncio.to_thread(
            run, data, "webhooks", "add", r.url, "--events", "alert.firing", env=PRIVATE_OK
        )
        assert code == 0, out
        code, out = await asyncio.to_thread(
            run, data, "rules", "add", "hot", "--metric", "temperature", "--op", ">", "--threshold", "30"
        )
        assert code == 0, out
        async with asyncio.timeout(WAIT_S):
            while "hot" not in hub.hub.alerts.rules:  # noqa: ASYNC110 - the evaluator rereads rules each second
                await asyncio.sleep(0.05)
        device_id = unique_id("cli")
        async with mqtt_client(hub, device_id) as dev:
            await dev.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 31}), qos=1)
        await events.until(lambda e: e.type == "alert" and e.device_id == device_id)
        await r.wait_for(lambda got: len(got) == 2)  # both attempts of the schedule failed: a dead letter
        dead = await poll_cli(data, ("webhooks", "deliveries", "--state", "dead", "--json"), bool)
        code, out = await asyncio.to_thread(run, data, "webhooks", "redeliver", str(dead[0]["id"]))
        assert (code, out) == (0, f"delivery {dead[0]['id']} ({dead[0]['msg_id']}) is pending again\n")
        await r.wait_for(lambda got: len(got) == 4)  # a fresh schedule: an attempt and a retry again
        shown_args = ("webhooks", "deliveries", "--id", str(dead[0]["id"]), "--json")
        await poll_cli(data, shown_args, lambda d: d["state"] == "dead")
        answers["status"] = 204
        assert (await asyncio.to_thread(run, data, "webhooks", "redeliver", str(dead[0]["id"])))[0] == 0
        await r.wait_for(lambda got: len(got) == 5)
        assert {g.msg_id for g in r.received} == {dead[0]["msg_id"]}
        shown = await poll_cli(data, shown_args, lambda d: d["state"] == "delivered")
        assert shown["attempts"] == 5  # every attempt is kept and counted, redeliveries' too
        code, readable = await asyncio.to_thread(run, data, *shown_args[:-1])  # without --json
        assert code == 0
        assert readable.splitlines()[0] == (
            f"delivery {shown['id']} ({shown['msg_id']}): alert.firing to {shown['endpoint_id']}, delivered, 5 attempts"
        )
        assert readable.splitlines()[3].split() == ["ATTEMPT", "TIME", "STATUS", "LATENCY", "OUTCOME", "RESPONSE"]
        assert [line.split()[0:3:2] for line in readable.splitlines()[4:]] == [
            ["1", "500"], ["2", "500"], ["3", "500"], ["4", "500"], ["5", "204"]
        ]  # fmt: skip
        assert [(a["attempt"], a["status"]) for a in shown["attempts_log"]] == [
            (1, 500), (2, 500), (3, 500), (4, 500), (5, 204)
        ]  # fmt: skip
