"""The WebSocket bridge refusing what it must: bad frames (an error frame, the connection stays up),
limits, tokens and oversized frames (close codes). A real ``websockets`` client against a running hub."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iothub.hub.registry import Scope
from iothub.runner import Running, serve
from tests.bridge.ws_client import WsClient, ws_client
from tests.conftest import WAIT_S, hub_settings, mqtt_client, unique_id


@pytest.fixture
async def client(hub: Running) -> AsyncIterator[WsClient]:
    async with ws_client(hub) as connection:
        yield connection


def token(hub: Running, scope: Scope) -> str:
    _, secret = hub.hub.registry.create_token(scope, f"ws-{scope}")
    return secret


S = {"subscription": "s"}


R = {"ref": "r"}


SUBSCRIBE = {"type": "subscribe", "id": "s"}


COMMAND = {"type": "command", "ref": "r", "device": "d", "name": "x"}


@pytest.mark.parametrize(
    ("frame", "code", "message", "extra"),
    [
        ("{nope", "bad_json", "not JSON", {}),
        ([1, 2], "bad_json", "expected a JSON object, got list", {}),
        ({"type": "subscribe_all"}, "unknown_type", "has type 'subscribe_all'; known types: auth,", {}),
        ({"id": "s"}, "unknown_type", "message has no 'type'", S),
        ({"type": "subscribe"}, "bad_message", "subscribe: field 'id': field required", {}),
        ({**SUBSCRIBE, "device": ["a"]}, "bad_message", "field 'device': extra", S),
        ({**SUBSCRIBE, "resume_from": -1}, "bad_message", "field 'resume_from'", S),
        ({**SUBSCRIBE, "resume_from": "x"}, "bad_message", "field 'resume_from'", S),
        ({**SUBSCRIBE, "types": ["weather"]}, "bad_filter", "field 'types': 'weather' is not one of", S),
        ({**SUBSCRIBE, "labels": ["berlin"]}, "bad_filter", "field 'labels': 'berlin' is not key=value", S),
        ({**SUBSCRIBE, "devices": ["a b"]}, "bad_filter", "field 'devices'", S),
        ({**SUBSCRIBE, "resume_from": 10**9}, "bad_resume", f"resume_from {10**9} is ahead of the newest event", S),
        ({"type": "unsubscribe", "id": "s"}, "unknown_subscription", "no subscription 's'", S),
        ({**COMMAND, "name": None}, "bad_message", "command: field 'name': input should be a valid string", R),
        ({**COMMAND, "timeout": 0}, "bad_message", "field 'timeout'", R),
        ({**COMMAND, "args": [1]}, "bad_message", "field 'args'", R),
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_connection_stays(
    client: WsClient, frame: object, code: str, message: str, extra: dict[str, str]
) -> None:
    await client.connection.send(frame if isinstance(frame, str) else json.dumps(frame))
    error = await client.next()
    assert error["type"] == "error"
    assert error["code"] == code
    assert message in error["message"], error["message"]
    assert {k: error[k] for k in ("ref", "subscription") if k in error} == extra
    await client.send("ping", data=1)
    assert await client.next() == {"type": "pong", "data": 1}


async def test_duplicate_ids_and_limits(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"max_subscriptions": 2, "max_pending_commands": 1})
    async with serve(settings) as running, ws_client(running) as client:
        await client.subscribe("a")
        await client.send("subscribe", id="a")
        assert (await client.next())["code"] == "duplicate_subscription"
        await client.subscribe("b")
        await client.send("subscribe", id="c")
        limit = await client.next()
        assert (limit["code"], limit["subscription"]) == ("too_many_subscriptions", "c")
        running.hub.registry.add_device("quiet")
        device = unique_id()
        async with mqtt_client(running, device) as mqtt:
            await mqtt.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
            await client.until(lambda f: f.get("event") == "status" and f["data"]["device_id"] == device)
            await client.send("command", ref="r", device=device, name="x", timeout=WAIT_S)
            await client.send("command", ref="r", device=device, name="x")
            await client.send("command", ref="s", device=device, name="x")
            errors = [await client.until(lambda f: f["type"] == "error") for _ in range(2)]
    assert [(e["code"], e["ref"]) for e in errors] == [("duplicate_ref", "r"), ("too_many_commands", "s")]


async def test_close_codes_for_tokens(hub: Running) -> None:
    async with ws_client(hub, "iothub_nope") as wrong:
        assert await wrong.closed() == (4401, "unknown API token")
    async with ws_client(hub, header=False) as first_not_auth:
        await first_not_auth.send("subscribe", id="s")
        assert await first_not_auth.closed() == (4401, "authenticate first: send 'auth' before 'subscribe'")
    async with ws_client(hub, header=False) as garbage:
        await garbage.connection.send("hello")
        code, reason = await garbage.closed()
        assert (code, reason.startswith("authenticate first: not JSON")) == (4401, True)
    reader = token(hub, Scope.READ)
    async with ws_client(hub, reader) as read_only:
        await read_only.subscribe("s")  # a read token may subscribe...
        await read_only.send("command", ref="r", device="d", name="x")  # ...but not command
        code, reason = await read_only.closed()
    assert code == 4403
    assert reason.endswith("has scope 'read'; commands need 'command'")


async def test_no_token_in_time_closes(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"auth_timeout_s": 0.3})
    async with serve(settings) as running, ws_client(running, header=False) as silent:
        code, reason = await silent.closed()
    assert code == 4401
    assert reason.startswith("no token within 0.3 s")


async def test_a_revoked_token_ends_the_connection(hub: Running) -> None:
    record, secret = hub.hub.registry.create_token(Scope.READ, "to-revoke")
    async with ws_client(hub, secret) as client:
        await client.subscribe("s")
        hub.hub.registry.revoke_token(record.id)
        code, reason = await client.closed()
    assert (code, reason) == (4401, f"API token {record.id!r} has been revoked")


async def test_an_oversized_frame_closes_with_1009(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"max_message_bytes": 1024})
    async with serve(settings) as running, ws_client(running) as client:
        await client.send("ping", data="x" * 900)
        assert (await client.next())["type"] == "pong"  # just under the limit
        await client.send("ping", data="x" * 2000)
        code, _ = await client.closed()
    assert code == 1009
