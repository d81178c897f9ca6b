"""Webhook delivery against real receivers on loopback: retries, 410, timeouts, Retry-After,
signatures (verified with the ``standardwebhooks`` package), many endpoints, the address guard."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from iothub.bridge.webhooks import WebhookSender, retry_after_s
from iothub.hub import outbox
from iothub.hub.core import Hub
from iothub.runner import Running, serve
from tests.bridge.receiver import Received, Reply, receiver
from tests.conftest import WAIT_S, hub_settings, mqtt_client, unique_id

FAST: dict[str, Any] = {
    "allow_private_targets": True,
    "retry_schedule_s": [0.2, 0.2, 0.2, 0.2],
    "jitter": 0,
    "timeout_s": 2,
    "poll_s": 0.2,
    "breaker_failures": 1000,
}


async def start(tmp_path: Path, **webhooks: Any) -> AsyncIterator[tuple[Running, httpx.AsyncClient]]:
    async with serve(hub_settings(tmp_path / "data", webhooks={**FAST, **webhooks})) as running:
        headers = {"Authorization": f"Bearer {running.hub.first_token}"}
        base = f"http://{running.address('http')}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S, headers=headers) as http:
            yield running, http


@pytest.fixture
async def hub_http(tmp_path: Path) -> AsyncIterator[tuple[Running, httpx.AsyncClient]]:
    async for pair in start(tmp_path):
        yield pair


async def add_endpoint(http: httpx.AsyncClient, url: str, events: list[str] | None = None) -> dict[str, Any]:
    answer = await http.post("/api/v1/webhooks", json={"url": url, "events": events or ["device.online"]})
    assert answer.status_code == 201, answer.text
    endpoint: dict[str, Any] = answer.json()
    assert endpoint["secret"].startswith("whsec_")
    return endpoint


async def go_online(hub: Running, device_id: str) -> None:
    """Connect as the device and leave: a device.online (and a device.offline) event."""
    async with mqtt_client(hub, device_id):
        pass


async def deliveries(http: httpx.AsyncClient, endpoint_id: str) -> list[dict[str, Any]]:
    answer = await http.get("/api/v1/webhooks/deliveries", params={"endpoint": endpoint_id})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["deliveries"]
    return found


async def wait_delivery(http: httpx.AsyncClient, endpoint_id: str, state: str) -> dict[str, Any]:
    """The endpoint's first delivery once it reaches ``state``, with its attempt log."""
    async with asyncio.timeout(WAIT_S):
        while True:
            found = await deliveries(http, endpoint_id)
            if found and found[-1]["state"] == state:
                detail = await http.get(f"/api/v1/webhooks/deliveries/{found[-1]['id']}")
                result: dict[str, Any] = detail.json()
                return result
            await asyncio.sleep(0.05)  # polling the REST API, bounded by the timeout above


async def poll(http: httpx.AsyncClient, path: str, check: Any) -> Any:
    """GET ``path`` until ``check(answer)`` holds; bounded in time."""
    async with asyncio.timeout(WAIT_S):
        while not check(answer := (await http.get(path)).json()):  # noqa: ASYNC110 - bounded; no event over REST
            await asyncio.sleep(0.05)
    return answer


def failing(times: int, reply: Reply) -> Any:
    """An answer that gives ``reply`` to each message's first ``times`` attempts, then 200."""
    seen: Counter[str] = Counter()

    def answer(got: Received) -> Reply:
        seen[got.msg_id] += 1
        return reply if seen[got.msg_id] <= times else Reply(200)

    return answer


async def test_a_receiver_failing_twice_gets_the_event_once_by_webhook_id(
    hub_http: tuple[Running, httpx.AsyncClient],
) -> None:
    hub, http = hub_http
    async with receiver(failing(2, Reply(500))) as r:
        endpoint = await add_endpoint(http, r.url)
        device_id = unique_id("wh")
        await go_online(hub, device_id)
        await r.wait_for(lambda got: len(got) >= 3)
        accepted = r.accepted()
        assert len(accepted) == 1
        assert [g.msg_id for g in r.received] == [accepted[0].msg_id] * 3  # one webhook-id across retries
        body = accepted[0].json()
        assert body["type"] == "device.online"
        assert body["data"]["device_id"] == device_id
        assert body["data"]["online"] is True
        delivery = await wait_delivery(http, endpoint["id"], "delivered")
        assert [a["status"] for a in delivery["attempts_log"]] == [500, 500, 200]
        assert delivery["msg_id"] == accepted[0].msg_id
        assert delivery["attempts_log"][0]["response"] == "status 500"
        assert r.connections == 1  # the endpoint's connection was reused


async def test_a_queued_delivery_goes_out_at_once_and_telemetry_costs_the_sender_nothing(tmp_path: Path) -> None:
    async for hub, http in start(tmp_path, poll_s=60):  # no help from polling
        assert "webhooks" not in [sub.name for sub in hub.hub.bus._subs]
        async with receiver() as r:
            await add_endpoint(http, r.url)
            await go_online(hub, unique_id("wh"))
            await r.wait_for(lambda got: len(got) == 1)  # the store's write nudged the sender


async def test_the_first_attempt_is_at_once_and_the_schedule_holds_the_delays_before_each_retry(
    tmp_path: Path,
) -> None:
    async for hub, http in start(tmp_path, retry_schedule_s=[0.6, 0.2]):
        async with receiver(lambda _: Reply(500)) as r:
            endpoint = await add_endpoint(http, r.url)
            await go_online(hub, unique_id("wh"))
            delivery = await wait_delivery(http, endpoint["id"], "dead")
            assert [a["status"] for a in delivery["attempts_log"]] == [500, 500, 500]  # one attempt, two retries
            gaps = [later.at - earlier.at for earlier, later in zip(r.received, r.received[1:], strict=False)]
            assert gaps[0] >= 0.55, f"the first retry came {gaps[0]:.2f} s after the attempt, not 0.6 s"


async def test_410_disables_the_endpoint(
    hub_http: tuple[Running, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    hub, http = hub_http
    async with receiver(lambda _: Reply(410)) as gone, receiver() as witness:
        endpoint = await add_endpoint(http, gone.url + "?token=s3cret")  # a URL may carry a secret
        await go_online(hub, unique_id("wh"))
        await gone.wait_for(lambda got: len(got) == 1)
        shown = await poll(http, f"/api/v1/webhooks/{endpoint['id']}", lambda e: not e["enabled"])
        assert shown["disabled_reason"].startswith("410 Gone")
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("iothub")]
        assert any(endpoint["id"] in m and "disabled" in m for m in logged)
        assert not [m for m in logged if "s3cret" in m or str(gone.port) in m]
        await add_endpoint(http, witness.url)
        await go_online(hub, unique_id("wh"))  # a disabled endpoint gets nothing new
        await witness.wait_for(lambda got: len(got) == 1)
        assert len(gone.received) == 1


async def test_a_timeout_is_retried(tmp_path: Path) -> None:
    async for hub, http in start(tmp_path, timeout_s=0.5):
        async with receiver(failing(1, Reply(200, delay_s=2))) as r:
            endpoint = await add_endpoint(http, r.url)
            await go_online(hub, unique_id("wh"))
            delivery = await wait_delivery(http, endpoint["id"], "delivered")
            outcomes = [(a["outcome"], a["status"]) for a in delivery["attempts_log"]]
            assert outcomes == [("timeout", None), ("delivered", 200)]


async def test_retry_after_is_honoured_on_429_and_503(hub_http: tuple[Running, httpx.AsyncClient]) -> None:
    hub, http = hub_http
    for status in (429, 503):
        async with receiver(failing(1, Reply(status, headers={"Retry-After": "1"}))) as r:
            await add_endpoint(http, r.url)
            await go_online(hub, unique_id("wh"))
            await r.wait_for(lambda got: len(got) >= 2)
            gap = r.received[1].at - r.received[0].at
            assert gap >= 0.95, f"retried {gap:.2f} s after a {status} with Retry-After: 1"


async def test_a_hostile_retry_after_is_ignored_and_the_hub_keeps_delivering(
    hub_http: tuple[Running, httpx.AsyncClient],
) -> None:
    hub, http = hub_http
    async with receiver(failing(1, Reply(429, headers={"Retry-After": "\u00b2"}))) as r:  # "²".isdigit() is True
        endpoint = await add_endpoint(http, r.url)
        await go_online(hub, unique_id("wh"))
        delivery = await wait_delivery(http, endpoint["id"], "delivered")
        assert [(a["outcome"], a["status"]) for a in delivery["attempts_log"]] == [("failed", 429), ("delivered", 200)]
        await go_online(hub, unique_id("wh"))  # the sender is still running
        await r.wait_for(lambda got: len(r.accepted()) >= 2)


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "1.5", "-1", "+3", "Mon, 99 Foo 1 x"])
def test_retry_after_reads_only_digits_or_a_date(value: str) -> None:
    assert retry_after_s(value, time.time()) is None


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_s(" 120 ", 0.0) == 120.0
    assert retry_after_s("Thu, 01 Jan 1970 00:01:00 GMT", 0.0) == 60.0


async def test_signatures_verify_also_across_a_secret_rotation(hub_http: tuple[Running, httpx.AsyncClient]) -> None:
    hub, http = hub_http
    async with receiver() as r:
        endpoint = await add_endpoint(http, r.url)
        await go_online(hub, unique_id("wh"))
        await r.wait_for(lambda got: len(got) == 1)
        old = Webhook(endpoint["secret"])
        first = r.received[0]
        assert old.verify(first.body, first.headers)["type"] == "device.online"
        with pytest.raises(WebhookVerificationError):
            old.verify(first.body.replace(b"online", b"offline", 1), first.headers)  # a changed body fails

        rotated = (await http.post(f"/api/v1/webhooks/{endpoint['id']}/secret")).json()
        assert rotated["secret"] != endpoint["secret"]
        assert rotated["previous_secret_until"] is not None
        await go_online(hub, unique_id("wh"))
        await r.wait_for(lambda got: len(got) == 2)
        second = r.received[1]
        assert len(second.headers["webhook-signature"].split(" ")) == 2  # both signatures during the rotation
        Webhook(rotated["secret"]).verify(second.body, second.headers)
        old.verify(second.body, second.headers)  # receivers still on the old secret keep working


async def test_one_dead_endpoint_among_100_leaves_the_others_unaffected(tmp_path: Path) -> None:
    async for hub, http in start(tmp_path, timeout_s=30):
        async with receiver() as alive, receiver(lambda _: Reply(200, delay_s=60)) as dead:
            for _ in range(99):
                await add_endpoint(http, alive.url)
            await add_endpoint(http, dead.url)
            started = time.monotonic()
            for _ in range(3):
                await go_online(hub, unique_id("wh"))
            await alive.wait_for(lambda got: len(got) == 99 * 3)
            assert time.monotonic() - started < WAIT_S
            assert len({g.msg_id for g in alive.received}) == 3  # one webhook-id per message, on every endpoint
            assert dead.received == []  # still waiting for its answers


async def test_a_private_target_is_refused_without_the_setting(tmp_path: Path) -> None:
    async for hub, http in start(tmp_path, allow_private_targets=False):
        async with receiver() as r:
            answer = await http.post("/api/v1/webhooks", json={"url": r.url, "events": ["device.online"]})
            assert answer.status_code == 400
            assert "127.0.0.1 is a loopback address" in answer.json()["error"]
            assert "IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS" in answer.json()["error"]
            numeric = await http.post("/api/v1/webhooks", json={"url": "http://0x7f.1/", "events": ["device.online"]})
            assert (numeric.status_code, numeric.json()["error"]) == (
                400,
                "url 'http://0x7f.1/': 0x7f.1 is an address in a numeric form; write an IPv4 address as a.b.c.d",
            )
            # A name is checked once resolved: localhost (added while the setting was on, say).
            endpoint, _ = hub.hub.webhooks.add(f"http://localhost:{r.port}/hook", ["device.online"])
            await go_online(hub, unique_id("wh"))
            delivery = await wait_delivery(http, endpoint["id"], "pending")
            async with asyncio.timeout(WAIT_S):
                while not delivery["attempts_log"]:
                    delivery = await wait_delivery(http, endpoint["id"], "pending")
            attempt = delivery["attempts_log"][0]
            assert attempt["outcome"] == "refused"
            assert "resolves to 127.0.0.1, a loopback address" in attempt["response"]
            assert r.received == []


async def until(check: Any) -> None:
    """Wait for ``check()`` to hold; bounded in time (the state polled has no event to wait on)."""
    async with asyncio.timeout(WAIT_S):
        while not check():  # noqa: ASYNC110 - bounded by the timeout above
            await asyncio.sleep(0.01)


async def test_deliveries_claimed_while_stopping_are_released_not_sent(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", webhooks={**FAST, "retry_schedule_s": [600]})
    async with Hub(settings) as hub, receiver(failing(1, Reply(500))) as r:
        sender = WebhookSender(hub)
        await sender.__aenter__()
        stopped = False
        try:
            endpoint, _ = hub.webhooks.add(r.url, ["device.online"])
            await go_online(Running(hub, hub.ports), unique_id("wh"))
            await until(lambda: [(d["state"], d["attempts"]) for d in hub.webhooks.deliveries()] == [("pending", 1)])
            lock = outbox.connect(settings.data_dir / "iothub.db")
            try:
                lock.execute("BEGIN IMMEDIATE")  # the sender's next claim waits for this transaction
                lock.execute("UPDATE webhook_outbox SET next_at = 0")  # the retry is due (once committed)
                hub.outbox_nudge.set()
                await until(lambda: not hub.outbox_nudge.is_set())  # the sender is claiming
                stopping = asyncio.create_task(sender.__aexit__(None, None, None))
                stopped = True
                await until(sender._stopping.is_set)
                lock.execute("COMMIT")  # the claim returns the delivery, to a stopping sender
                async with asyncio.timeout(WAIT_S):
                    await stopping
            finally:
                lock.close()
        finally:
            if not stopped:
                await sender.__aexit__(None, None, None)
        assert len(r.received) == 1  # the first attempt only
        [delivery] = hub.webhooks.deliveries(endpoint["id"])
        assert (delivery["state"], delivery["attempts"]) == ("pending", 1)


async def test_a_locked_database_pauses_the_sender_without_stopping_the_hub(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async for hub, http in start(tmp_path, retry_schedule_s=[600]):
        async with receiver(failing(1, Reply(500))) as r:
            endpoint = await add_endpoint(http, r.url)
            await go_online(hub, unique_id("wh"))
            first = await wait_delivery(http, endpoint["id"], "pending")
            await poll(http, f"/api/v1/webhooks/deliveries/{first['id']}", lambda d: d["attempts"] == 1)
            lock = outbox.connect(hub.hub.settings.data_dir / "iothub.db")
            try:
                lock.execute("BEGIN IMMEDIATE")  # longer than the sender's busy timeout (5 s)
                lock.execute("UPDATE webhook_outbox SET next_at = 0")
                hub.hub.outbox_nudge.set()
                async with asyncio.timeout(3 * WAIT_S):  # the claim gives up after the busy timeout
                    while not any("could not claim deliveries" in m for m in caplog.messages):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                lock.execute("COMMIT")
            finally:
                lock.close()
            await r.wait_for(lambda got: len(got) == 2)  # the sender tried again, and the retry went out
            delivery = await wait_delivery(http, endpoint["id"], "delivered")
            assert [a["status"] for a in delivery["attempts_log"]] == [500, 200]


def test_an_outbox_of_an_earlier_version_gains_the_schedule_column(tmp_path: Path) -> None:
    path = tmp_path / "iothub.db"
    old = outbox.SCHEMA.replace("    schedule_from INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old != outbox.SCHEMA
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO webhook_outbox (msg_id, endpoint_id, type, body, created, attempts, next_at, updated)"
                 " VALUES ('m', 'ep', 'device.online', '{}', 0, 3, 0, 0)")  # fmt: skip
    conn.commit()
    conn.close()
    conn = outbox.connect(path)
    try:
        assert conn.execute("SELECT attempts, schedule_from FROM webhook_outbox").fetchall() == [(3, 0)]
    finally:
        conn.close()


async def test_a_disabled_endpoint_gets_no_deliveries_queued_for_new_events(
    hub_http: tuple[Running, httpx.AsyncClient],
) -> None:
    hub, http = hub_http
    async with receiver() as off, receiver() as witness:
        disabled = await add_endpoint(http, off.url)
        assert (await http.patch(f"/api/v1/webhooks/{disabled['id']}", json={"enabled": False})).status_code == 200
        await add_endpoint(http, witness.url)
        await go_online(hub, unique_id("wh"))
        await witness.wait_for(lambda got: len(got) == 1)  # its row was written with any row for the other
        assert await deliveries(http, disabled["id"]) == []
        assert (await http.patch(f"/api/v1/webhooks/{disabled['id']}", json={"enabled": True})).status_code == 200
        assert await deliveries(http, disabled["id"]) == []  # enabling sends what was queued: nothing
    assert off.received == []
