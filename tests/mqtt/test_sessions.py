"""A client's session state fed values, no sockets."""

from __future__ import annotations

from iothub.mqtt.codec import PUBACK, PUBCOMP, PUBREC, PUBREL, PacketReader, Publish, encode_publish
from iothub.mqtt.sessions import Limits, Message, Outgoing, Session
from tests.mqtt_raw import ack_packet


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
    reader = PacketReader(1 << 20)
    reader.feed(data)
    (decoded,) = reader.packets()
    assert isinstance(decoded, Publish)
    return decoded


def test_a_new_session_is_empty() -> None:
    session = Session("c", clean=False, limits=Limits(1, 1))
    assert (session.subscriptions, session.awaiting_rel, session.link, session.dropped) == ({}, set(), None, 0)
    assert (session.inflight, list(session.queue), session.next_packet_id) == ({}, [], 0)


def test_qos0_waits_behind_what_the_window_holds_back() -> None:
    """Per-topic order [MQTT-4.6.0-6]: a QoS 0 message does not overtake QoS 1 waiting for the window."""
    session = Session("c", clean=False, limits=Limits(1, 10))
    link = FakeLink()
    session.attach(link)
    session.deliver(Message("t", b"first"), 1)
    session.deliver(Message("t", b"second"), 1)  # the window (1) is full: queued
    session.deliver(Message("t", b"third"), 0)
    assert [_publish(p).payload for p in link.sent] == [b"first"]
    session.acknowledged(PUBACK, _publish(link.sent[0]).packet_id or 0)
    assert [_publish(p).payload for p in link.sent] == [b"first", b"second", b"third"]


def test_qos0_goes_out_at_once_with_its_flags() -> None:
    session = Session("c", clean=True, limits=Limits(1, 1))
    link = FakeLink()
    session.attach(link)
    session.deliver(Message("t", b"now", retain=True), 0)
    assert link.sent == [encode_publish(b"t", b"now", 0, True, None)]


def test_drops_are_counted_per_session() -> None:
    session = Session("c", clean=False, limits=Limits(1, 2))
    for n in range(5):
        session.deliver(Message("t", b"%d" % n), 1)
    assert session.dropped == 3
    assert [item.message.payload for item in session.queue] == [b"3", b"4"]


def test_an_absent_session_is_not_pumped() -> None:
    session = Session("c", clean=False, limits=Limits(5, 5))
    session.deliver(Message("t", b"kept"), 1)
    session.pump()  # no link: nothing to send through, nothing lost
    assert [item.message.payload for item in session.queue] == [b"kept"]


def test_retain_and_packet_ids_survive_queueing_and_resending() -> None:
    session = Session("c", clean=False, limits=Limits(5, 5))
    session.deliver(Message("r", b"kept", retain=True), 1)  # queued while away
    link = FakeLink()
    session.attach(link)
    sent = _publish(link.sent[0])
    assert (sent.retain, sent.packet_id, sent.dup) == (True, 1, False)
    session.detach()
    again = FakeLink()
    session.attach(again)
    resent = _publish(again.sent[0])
    assert (resent.retain, resent.packet_id, resent.dup) == (True, 1, True)


def test_packet_ids_wrap_from_65535_to_1_and_skip_those_in_flight() -> None:
    session = Session("c", clean=False, limits=Limits(10, 10))
    held = Outgoing(Message("t", b"held"), 1)
    held.packet_id = 1
    session.restore(65534, [held], [])
    link = FakeLink()
    session.attach(link)
    for n in range(3):
        session.deliver(Message("t", b"%d" % n), 1)
    assert [_publish(p).packet_id for p in link.sent] == [1, 65535, 2, 3]  # 1 resent first, then new ids


def test_restore_brings_back_in_flight_and_queued_messages() -> None:
    session = Session("c", clean=False, limits=Limits(2, 10))
    first = Outgoing(Message("t", b"in flight"), 1)
    first.packet_id = 7
    second = Outgoing(Message("t", b"released"), 2)
    second.packet_id, second.released = 8, True
    session.restore(8, [first, second], [Outgoing(Message("t", b"queued"), 1)])
    assert session.next_packet_id == 8
    link = FakeLink()
    session.attach(link)
    resent = _publish(link.sent[0])
    assert (resent.payload, resent.packet_id, resent.dup) == (b"in flight", 7, True)
    assert link.sent[1] == ack_packet(PUBREL, 8)
    assert len(link.sent) == 2  # the window (2) is full: "queued" waits
    session.acknowledged(PUBACK, 7)
    queued = _publish(link.sent[2])
    assert (queued.payload, queued.packet_id) == (b"queued", 9)


def test_a_persistent_session_keeps_its_qos1_queue_when_the_client_goes() -> None:
    session = Session("c", clean=False, limits=Limits(5, 10))
    link = FakeLink()
    session.attach(link)
    link.congested = True
    session.deliver(Message("t", b"zero"), 0)
    session.deliver(Message("t", b"one"), 1)
    session.detach()
    assert [(item.message.payload, item.qos) for item in session.queue] == [(b"one", 1)]


def test_a_message_keeps_its_topic_as_text_and_as_bytes() -> None:
    message = Message("caf\u00e9/1", b"p")
    assert (message.topic, message.topic_bytes, message.retain) == ("caf\u00e9/1", b"caf\xc3\xa9/1", False)


def test_whether_a_session_subscribes_to_a_topic() -> None:
    session = Session("c", clean=False, limits=Limits(1, 1))
    assert not session.subscribes("devices/c/commands/x")
    session.subscriptions["devices/c/state/desired"] = 1
    assert not session.subscribes("devices/c/commands/x")
    session.subscriptions["devices/c/commands/+"] = 1
    assert session.subscribes("devices/c/commands/x")
    assert not session.subscribes("devices/d/commands/x")
