"""The MQTT server on its own, with stub policies, against real clients on loopback (no hub)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import aiomqtt
import pytest

from iothub.mqtt.policy import DisconnectReason, ServerOptions
from tests.mqtt.stubs import WAIT_S, RecordingHooks, TableAuthenticator, User, mqtt_server
from tests.mqtt_raw import connack_code, connect_packet, publish_packet, raw_connect, read_packet, subscribe_packet

DISCONNECT = bytes([0xE0, 0])
PINGREQ = bytes([0xC0, 0])
PINGRESP, PUBACK, SUBACK = 13, 4, 9


def client(port: int, client_id: str, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=client_id, timeout=WAIT_S, **kwargs)  # type: ignore[arg-type]


async def first_message(c: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT_S):
        return await anext(aiter(c.messages))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(WAIT_S):
        return await reader.read() == b""


async def test_connack_codes_come_from_the_authenticator_and_are_counted() -> None:
    alice = User("alice", publish=("alice/#",))
    auth = TableAuthenticator({"alice": (b"secret", alice)}, anonymous=False)
    async with mqtt_server(authenticator=auth) as s:
        port = s.port
        assert await connack_code(port, "a1", username="alice", password="secret") == 0x00
        assert await connack_code(port, "a2", username="alice", password="wrong") == 0x04
        assert await connack_code(port, "nobody") == 0x05
        will = ("bob/status", b"gone")  # a Will outside what the ACL lets alice publish
        assert await connack_code(port, "a3", username="alice", password="secret", will=will) == 0x05
        assert await connack_code(port, "", username="alice", password="secret", clean=False) == 0x02
        assert await connack_code(port, "", username="alice", password="secret") == 0x00  # an id is assigned
        assigned = await s.hooks.wait_for(lambda c: c[0] == "connect" and c[1].startswith("auto-"))
    assert assigned[2] == "alice"
    assert s.counters.counts == Counter({"connect ok": 2, "connect 0x04": 1, "connect 0x05": 2, "connect 0x02": 1})


@pytest.mark.parametrize(("protocol", "level"), [("MQIsdp", 3), ("MQTT", 3), ("MQTT", 5)])
async def test_another_mqtt_version_is_answered_0x01_and_closed(protocol: str, level: int) -> None:
    """[MQTT-3.1.2-2] an MQTT 3.1 client (``MQIsdp``, level 3) learns why instead of being dropped."""
    async with mqtt_server() as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(connect_packet("old-timer", protocol=protocol, level=level))
        async with asyncio.timeout(WAIT_S):
            assert await reader.readexactly(4) == b"\x20\x02\x00\x01"
        assert await closed_by_server(reader)
        writer.close()
    assert s.counters.counts == Counter({"connect 0x01": 1})
    assert not s.hooks.calls


async def test_a_publish_is_routed_between_two_clients_and_shown_to_the_hooks() -> None:
    async with mqtt_server(ws=True) as s, client(s.port, "sub") as sub:
        await sub.subscribe("room/+", qos=1)
        async with client(s.ports["mqtt_ws"], "pub", transport="websockets") as pub:
            await pub.publish("room/1", b"hello", qos=1)
            message = await first_message(sub)
    assert (str(message.topic), message.payload, message.qos) == ("room/1", b"hello", 1)
    assert ("publish", "pub", "room/1", b"hello") in s.hooks.calls
    assert ("subscribed", "sub", "room/+") in s.hooks.calls
    assert ("connect", "pub", "pub") in s.hooks.calls


async def test_acl_denials_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    bob = User("bob", publish=("bob/#",), subscribe=("bob/#",))
    async with mqtt_server(authenticator=TableAuthenticator({"bob": (b"pw", bob)})) as s:
        async with client(s.port, "bob", username="bob", password="pw") as c:
            granted = await c.subscribe("+/#", qos=1)
            assert [code.value for code in granted] == [0x80]  # type: ignore[union-attr]
            await c.publish("alice/x", b"forged", qos=1)  # acknowledged, but dropped
            await c.publish("$SYS/x", b"mine now", qos=1)  # [MQTT-4.7.2-1]
            await c.subscribe("bob/in", qos=1)
            await c.publish("bob/in", b"fine", qos=1)  # and the client is served on
            message = await first_message(c)
        assert message.payload == b"fine"
    assert s.counters.counts["acl_denied publish"] == 2
    assert s.counters.counts["acl_denied subscribe"] == 1
    assert [c[2] for c in s.hooks.calls if c[0] == "publish"] == ["bob/in"]
    logged = [r.getMessage() for r in caplog.records if r.name == "iothub.mqtt.server"]
    assert logged == ["MQTT client 'bob' may not subscribe '+/#' (logged once a minute)"]


async def test_a_client_that_repeats_a_protocol_error_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A device that reconnects to send the same oversized packet again is closed every time, counted
    every time, and logged once (it could otherwise fill the log at its reconnect rate)."""
    async with mqtt_server(ServerOptions(max_packet_bytes=1024)) as s:
        for client_id in ("echo", "echo", "echo", "other"):  # another client's mistake is its own line
            reader, writer, ack = await raw_connect(s.port, client_id)
            assert ack.body[1] == 0
            writer.write(publish_packet("x/state", b"x" * 2048, qos=1, packet_id=1))
            assert await closed_by_server(reader)
            writer.close()
    assert s.counters.counts["protocol_error"] == 4
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("iothub.mqtt")]
    assert logged == [
        f"closing MQTT client {client_id!r} (logged once a minute): a packet of 2059 bytes is over the 1024-byte limit"
        for client_id in ("echo", "other")
    ]


async def test_an_acl_violation_can_cost_the_connection() -> None:
    auth = TableAuthenticator({"eve": (b"pw", User("eve", publish=("eve/#",)))})
    async with mqtt_server(ServerOptions(disconnect_on_acl_violation=True), authenticator=auth) as s:
        reader, writer, ack = await raw_connect(s.port, "eve", username="eve", password="pw")
        assert ack.body[1] == 0
        writer.write(publish_packet("adam/x", b"", qos=0))
        assert await closed_by_server(reader)
        assert await s.hooks.reason_for("eve") is DisconnectReason.ACL_VIOLATION
        writer.close()
    assert s.counters.counts["acl_denied publish"] == 1


async def test_the_hooks_hear_why_each_client_went() -> None:
    async with mqtt_server() as s:
        port = s.port
        reader, writer, _ = await raw_connect(port, "polite")
        writer.write(DISCONNECT)
        assert await s.hooks.reason_for("polite") is DisconnectReason.CLEAN
        writer.close()

        _, writer, _ = await raw_connect(port, "willed", will=("wills/willed", b"bye"))
        writer.transport.abort()
        assert await s.hooks.reason_for("willed") is DisconnectReason.WILL
        assert ("publish", "willed", "wills/willed", b"bye") in s.hooks.calls  # the Will was published

        _, writer, _ = await raw_connect(port, "vanished")
        writer.transport.abort()
        assert await s.hooks.reason_for("vanished") is DisconnectReason.DROPPED

        reader, writer, _ = await raw_connect(port, "quiet", keepalive=1)
        assert await closed_by_server(reader)  # after 1.5 s of silence
        assert await s.hooks.reason_for("quiet") is DisconnectReason.KEEPALIVE
        writer.close()

        reader, first, _ = await raw_connect(port, "twin")
        _, second, _ = await raw_connect(port, "twin")
        assert await closed_by_server(reader)
        assert await s.hooks.reason_for("twin") is DisconnectReason.TAKEN_OVER
        first.close()

        reader, writer, _ = await raw_connect(port, "unwanted")
        assert s.server.disconnect("unwanted")
        assert await closed_by_server(reader)
        assert await s.hooks.reason_for("unwanted") is DisconnectReason.CLOSED
        assert not s.server.disconnect("unwanted")
        writer.close()
        calls = len(s.hooks.calls)
    assert s.hooks.calls[calls:] == [("disconnect", "twin", DisconnectReason.SERVER_STOPPING)]
    second.close()


async def test_durable_ack_holds_the_puback_until_the_ticket_is_committed() -> None:
    async with mqtt_server(hooks=RecordingHooks(tickets=True)) as s:
        reader, writer, _ = await raw_connect(s.port, "sensor")
        writer.write(publish_packet("t/1", b"a", qos=1, packet_id=1))
        writer.write(publish_packet("t/2", b"b", qos=1, packet_id=2))
        writer.write(PINGREQ)
        assert (await read_packet(reader)).kind == PINGRESP  # it came first: both PUBACKs wait
        s.server.committed(1)
        assert [(p.kind, p.packet_id) for p in [await read_packet(reader)]] == [(PUBACK, 1)]
        writer.write(PINGREQ)
        assert (await read_packet(reader)).kind == PINGRESP  # the second still waits
        s.server.committed(2)
        assert [(p.kind, p.packet_id) for p in [await read_packet(reader)]] == [(PUBACK, 2)]
        writer.close()


async def test_without_durable_ack_the_puback_goes_at_once() -> None:
    async with mqtt_server(ServerOptions(durable_ack=False), hooks=RecordingHooks(tickets=True)) as s:
        reader, writer, _ = await raw_connect(s.port, "sensor")
        writer.write(publish_packet("t/1", b"a", qos=1, packet_id=1))
        writer.write(PINGREQ)
        assert [(await read_packet(reader)).kind for _ in range(2)] == [PUBACK, PINGRESP]
        writer.close()


async def test_past_max_connections_a_client_is_refused_at_once() -> None:
    async with mqtt_server(ServerOptions(max_connections=1)) as s:
        _, writer, ack = await raw_connect(s.port, "first")
        assert ack.body[1] == 0
        reader, other = await asyncio.open_connection("127.0.0.1", s.port)  # no CONNECT needed
        async with asyncio.timeout(WAIT_S):
            assert await reader.readexactly(4) == b"\x20\x02\x00\x03"
        other.close()
        writer.close()
    assert s.counters.counts["connect full"] == 1


async def test_a_subscription_of_a_persistent_session_outlives_its_connection() -> None:
    async with mqtt_server() as s:
        reader, writer, _ = await raw_connect(s.port, "keeper", clean=False)
        writer.write(subscribe_packet(1, "news/+", 1))
        assert (await read_packet(reader)).kind == SUBACK
        writer.write(DISCONNECT)
        await s.hooks.reason_for("keeper")
        writer.close()
        s.server.route(None, "news/a", b"while away", 1)
        reader, writer, ack = await raw_connect(s.port, "keeper", clean=False)
        assert ack.body[0] == 1  # session present
        queued = await read_packet(reader)
        assert (queued.topic, queued.payload, queued.qos) == ("news/a", b"while away", 1)
        writer.close()


async def _stuck_subscriber(port: int, client_id: str, **kwargs: object) -> asyncio.StreamWriter:
    """A client with a tiny receive buffer that subscribes to ``flood/#`` and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(connect_packet(client_id, **kwargs))  # type: ignore[arg-type]
    assert (await read_packet(reader)).body[1] == 0
    writer.write(subscribe_packet(1, "flood/#", 0))
    assert (await read_packet(reader)).kind == SUBACK
    return writer


async def _flood(port: int, megabytes: int) -> None:
    """Publish ``megabytes`` MiB at QoS 0 to ``flood/x``; returns once the server has taken all of it."""
    reader, writer, _ = await raw_connect(port, "flooder")
    chunk = publish_packet("flood/x", b"f" * 65_536)
    for _ in range(megabytes * 16):
        writer.write(chunk)
        await writer.drain()
    writer.write(PINGREQ)  # answered after everything before it was handled
    assert (await read_packet(reader)).kind == PINGRESP
    writer.close()


async def test_a_client_that_stopped_reading_is_closed_when_the_server_says_so() -> None:
    """Unsent bytes must not keep a closed connection alive: presence, the Will and shutdown go on."""
    async with mqtt_server() as s:
        writer = await _stuck_subscriber(s.port, "stuck", will=("wills/stuck", b"gone"))
        try:
            await _flood(s.port, megabytes=16)
            assert s.server.disconnect("stuck")
            assert await s.hooks.reason_for("stuck") is DisconnectReason.CLOSED
            assert ("publish", "stuck", "wills/stuck", b"gone") in s.hooks.calls
            assert "stuck" not in dict(s.server.connected())
        finally:
            writer.transport.abort()


class GatedHooks(RecordingHooks):
    """Holds every ``on_subscribed`` until :attr:`gate` is set: a connection busy in its own handling."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def on_subscribed(self, client_id: str, principal: User, topic_filter: str) -> None:
        await super().on_subscribed(client_id, principal, topic_filter)
        await self.gate.wait()


async def test_a_connection_taken_over_while_closing_is_not_reported_again() -> None:
    """Closed (here by the application) but still busy when its successor arrives: the successor's
    takeover is the last word on it, with no second disconnect and no Will after the new connect."""
    hooks = GatedHooks()
    async with mqtt_server(hooks=hooks) as s:
        reader, writer, _ = await raw_connect(s.port, "twin", will=("wills/twin", b"gone"))
        writer.write(subscribe_packet(1, "cmd/#", 1))
        await hooks.wait_for(lambda c: c[0] == "subscribed")  # now busy in on_subscribed
        assert s.server.disconnect("twin")
        _, successor, _ = await raw_connect(s.port, "twin")
        hooks.gate.set()
        async with asyncio.timeout(WAIT_S):
            await reader.read()  # its SUBACK, then the end: closed
        writer.close()
        ping_reader, pinger, _ = await raw_connect(s.port, "after")  # a round trip through the server
        pinger.write(PINGREQ)
        assert (await read_packet(ping_reader)).kind == PINGRESP
        twin_calls = [c for c in hooks.calls if c[1] == "twin" and c[0] in ("connect", "disconnect", "publish")]
        assert twin_calls == [
            ("connect", "twin", "twin"),
            ("disconnect", "twin", DisconnectReason.TAKEN_OVER),
            ("connect", "twin", "twin"),
        ]
        pinger.close()
        successor.close()


async def test_pingreq_is_answered_and_keeps_a_client_that_only_pings_alive() -> None:
    """[MQTT-3.12.4-1] PINGRESP for every PINGREQ; a ping is traffic [MQTT-3.1.2-24], so a client that
    pings more often than its keepalive stays connected well past 1.5x it, and is closed once it stops."""
    async with mqtt_server() as s:
        reader, writer, _ = await raw_connect(s.port, "pinger", keepalive=1)
        loop = asyncio.get_running_loop()
        until = loop.time() + 4.0  # well past 1.5 s, the server's limit for silence
        while loop.time() < until:  # bounded in time, and by the wait for each answer
            writer.write(PINGREQ)
            answer = await read_packet(reader)
            assert (answer.kind, answer.body) == (PINGRESP, b"")
            await asyncio.sleep(0.25)  # the client's pace: a ping every quarter of its keepalive
        assert not [c for c in s.hooks.calls if c[0] == "disconnect"], "a pinging client was closed"
        assert await closed_by_server(reader)  # silent now: closed after 1.5 s
        assert await s.hooks.reason_for("pinger") is DisconnectReason.KEEPALIVE
        writer.close()
