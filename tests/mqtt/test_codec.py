"""The MQTT codec, routing trie and session state fed values, no sockets."""

from __future__ import annotations

import random

import pytest

from iothub.mqtt.codec import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Ack,
    PacketReader,
    ProtocolViolation,
    Publish,
    Simple,
    Subscribe,
    Unsubscribe,
    encode_publish,
)
from iothub.mqtt.routing import SubscriptionTrie
from iothub.mqtt.server import valid_filter
from iothub.mqtt.sessions import Limits, Message, Session
from iothub.mqtt.topics import matches
from tests.mqtt_raw import ack_packet, packet, publish_packet, subscribe_packet


def decode(data: bytes, max_packet: int = 1 << 20) -> list[object]:
    reader = PacketReader(max_packet)
    reader.feed(data)
    return list(reader.packets())


def test_packets_split_anywhere_decode_the_same() -> None:
    big = b"p" * 300  # a two-byte remaining length
    stream = (
        publish_packet("a/b", big, qos=1, packet_id=5, retain=True)
        + subscribe_packet(2, "a/#", 2)
        + ack_packet(PUBREL, 9)
        + packet(10, 2, b"\x00\x03\x00\x01x")
        + bytes([0xC0, 0])
    )
    expected = [
        Publish("a/b", big, 1, True, False, 5),
        Subscribe(2, [("a/#", 2)]),
        Ack(PUBREL, 9),
        Unsubscribe(3, ["x"]),
        Simple(12),
    ]
    assert decode(stream) == expected
    reader = PacketReader(1 << 20)
    got: list[object] = []
    for i in range(len(stream)):  # one byte at a time
        reader.feed(stream[i : i + 1])
        got.extend(reader.packets())
    assert got == expected


def test_encode_publish_round_trips() -> None:
    data = encode_publish(b"t/\xc3\xa9", b"\x00\xff", 2, False, 77, dup=True)
    assert decode(data) == [Publish("t/é", b"\x00\xff", 2, False, True, 77)]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (packet(3, 6, b"\x00\x01a"), "QoS 3"),
        (publish_packet("a/+", b""), "wildcards"),
        (packet(3, 0, b"\x00\x00"), "non-empty"),
        (packet(3, 0, b"\x00\x02\xff\xfe"), "UTF-8"),
        (packet(3, 0, b"\x00\x02a\x00"), r"U\+0000"),
        (packet(4, 1, b"\x00\x01"), "reserved flags"),
        (packet(4, 0, b"\x00\x01\x02"), "exactly a packet id"),
        (packet(8, 2, b"\x00\x01"), "without a filter"),
        (packet(8, 2, b"\x00\x01\x00\x01a\x03"), "QoS byte"),
        (packet(8, 2, b"\x00\x01\x00\x01a"), "QoS byte"),
        (packet(10, 2, b"\x00\x01"), "without a filter"),
        (packet(2, 0, b"\x00\x00"), "may not send"),
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "remaining length"),
        (packet(3, 2, b"\x00\x01a"), "packet id"),
        (packet(3, 0, b"\x00\x05ab"), "runs past"),
    ],
)
def test_protocol_violations_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolViolation, match=problem):
        decode(data)


def test_an_oversized_packet_is_refused_before_its_body_arrives() -> None:
    reader = PacketReader(1000)
    reader.feed(publish_packet("a", b"x" * 2000)[:4])
    with pytest.raises(ProtocolViolation, match="over the 1000-byte limit"):
        reader.packets()


def test_filters_are_validated() -> None:
    assert all(valid_filter(f) for f in ["a", "a/+/b", "#", "+", "a/#", "/", "+/+"])
    assert not any(valid_filter(f) for f in ["", "a/#/b", "a#", "a/b+", "##"])


def test_the_trie_matches_like_the_filter_function() -> None:
    rng = random.Random(7)
    words = ["a", "b", "$s", ""]
    filters = {"/".join(rng.choice([*words, "+"]) for _ in range(rng.randint(1, 3))) for _ in range(60)}
    filters |= {f + "/#" for f in list(filters)[:20]} | {"#", "+/#"}
    trie = SubscriptionTrie()
    for n, f in enumerate(sorted(filters)):
        trie.add(f, f"c{n}", n % 3)
    for _ in range(500):
        topic = "/".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        want = {f"c{n}" for n, f in enumerate(sorted(filters)) if matches(f, topic)}
        assert set(trie.match(topic)) == want, topic
    for n, f in enumerate(sorted(filters)):
        assert trie.remove(f, f"c{n}")
    assert len(trie) == 0
    assert not trie.match("a/b")
    assert not trie.remove("a/b/c", "nobody")


def test_a_client_with_overlapping_filters_gets_one_copy_at_the_highest_qos() -> None:
    trie = SubscriptionTrie()
    trie.add("a/+", "c", 0)
    trie.add("a/#", "c", 2)
    trie.add("a/b", "d", 1)
    assert trie.match("a/b") == {"c": 2, "d": 1}


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.congested = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def test_session_flow_window_resend_and_qos2() -> None:
    drops: list[str] = []
    session = Session("c", clean=False, limits=Limits(2, 3, drops.append))
    link = FakeLink()
    session.attach(link)
    for n in range(4):
        session.deliver(Message("t", str(n).encode()), 2 if n == 0 else 1)
    assert [p.payload for p in map(_publish, link.sent)] == [b"0", b"1"]  # the window is 2
    session.acknowledged(PUBACK, 2)  # "1" is QoS 1
    assert _publish(link.sent[-1]).payload == b"2"
    session.acknowledged(PUBREC, 1)
    assert link.sent[-1] == ack_packet(PUBREL, 1)
    session.acknowledged(PUBACK, 1)  # the wrong ack for a QoS 2 message changes nothing
    session.detach()
    session.deliver(Message("t", b"offline 0"), 0)  # QoS 0 is not kept for an absent client
    for n in range(4):
        session.deliver(Message("t", f"away {n}".encode()), 1)
    assert drops == ["c", "c"]  # the queue holds 3: "3" and "away 0" went
    again = FakeLink()
    session.attach(again)
    assert again.sent[0] == ack_packet(PUBREL, 1)  # QoS 2 past PUBREC: PUBREL again
    resent = _publish(again.sent[1])
    assert (resent.payload, resent.dup, resent.packet_id) == (b"2", True, 3)
    session.acknowledged(PUBCOMP, 1)
    assert [_publish(p).payload for p in again.sent[2:]] == [b"away 1"]


def test_a_clean_session_forgets_everything_when_detached() -> None:
    session = Session("c", clean=True, limits=Limits(1, 10))
    link = FakeLink()
    session.attach(link)
    session.deliver(Message("t", b"a"), 1)
    session.deliver(Message("t", b"b"), 1)
    session.detach()
    session.deliver(Message("t", b"c"), 1)
    assert not session.inflight
    assert not session.queue


def test_a_congested_link_queues_qos0_and_drops_it_when_the_client_goes() -> None:
    session = Session("c", clean=False, limits=Limits(5, 10))
    link = FakeLink()
    session.attach(link)
    link.congested = True
    session.deliver(Message("t", b"zero"), 0)
    session.deliver(Message("t", b"one"), 1)
    assert not link.sent
    assert len(session.queue) == 2
    link.congested = False
    session.pump()
    assert [_publish(p).payload for p in link.sent] == [b"zero", b"one"]
    link.congested = True
    session.deliver(Message("t", b"zero again"), 0)
    session.detach()
    assert not session.queue


def _publish(data: bytes) -> Publish:
    (decoded,) = decode(data)
    assert isinstance(decoded, Publish)
    return decoded
