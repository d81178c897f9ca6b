"""A client's session state fed values, no sockets."""

from __future__ import annotations

from iothub.mqtt.codec import PUBACK, PUBCOMP, PUBREC, PUBREL, PacketReader, Publish
from iothub.mqtt.sessions import Limits, Message, Session
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
