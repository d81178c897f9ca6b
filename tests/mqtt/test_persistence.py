"""Sessions and retained messages through a snapshot saved to SQLite and restored into a new server; a
state file that cannot be used is refused by name, and a failed save keeps the previous one."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from iothub.mqtt.persistence import BrokerState, Snapshot, StateError
from tests.mqtt.stubs import mqtt_server
from tests.mqtt_raw import ack_packet, raw_connect, read_packet, subscribe_packet

DISCONNECT = bytes([0xE0, 0])
BINARY = bytes(range(256))


async def test_a_persistent_session_and_retained_messages_survive_a_new_server(tmp_path: Path) -> None:
    state = BrokerState(tmp_path / "broker.db")
    state.open()
    try:
        async with mqtt_server() as s:
            reader, writer, _ = await raw_connect(s.port, "sleeper", clean=False)
            writer.write(subscribe_packet(1, "news/+", 1))
            assert (await read_packet(reader)).kind == 9
            s.server.route(None, "news/seen", b"acknowledged", 1)
            seen = await read_packet(reader)
            writer.write(ack_packet(4, seen.packet_id))
            writer.write(DISCONNECT)
            await s.hooks.reason_for("sleeper")
            writer.close()
            s.server.route(None, "news/queued", BINARY, 1)  # queued while it is away
            s.server.route(None, "other/kept", b"retained", 1, retain=True)
            assert s.server.dirty
            state.save(s.server.snapshot())
        async with mqtt_server() as s:
            s.server.restore(state.load())
            reader, writer, ack = await raw_connect(s.port, "sleeper", clean=False)
            assert ack.body[0] == 1  # session present
            queued = await read_packet(reader)
            assert (queued.topic, queued.payload, queued.retain) == ("news/queued", BINARY, False)
            writer.write(ack_packet(4, queued.packet_id))
            with pytest.raises(TimeoutError):  # the message acknowledged before the snapshot is not replayed
                await read_packet(reader, within=0.5)
            writer.write(subscribe_packet(2, "other/#", 1))
            assert (await read_packet(reader)).kind == 9
            retained = await read_packet(reader)
            assert (retained.topic, retained.payload, retained.retain) == ("other/kept", b"retained", True)
            writer.close()
    finally:
        state.close()


def _saved(path: Path) -> None:
    """A good state file with a few hundred retained messages (several pages of them)."""
    state = BrokerState(path)
    state.open()
    state.save(Snapshot(retained=[(f"t/{n}", b"x" * 100, 1) for n in range(300)]))
    state.close()


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database\n" * 100)


def _damaged(path: Path) -> None:
    _saved(path)
    with path.open("r+b") as f:
        f.seek(4096)  # page 2 onwards: the tables' rows
        f.write(b"\xab" * 8192)


def _other_layout(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sessions (name TEXT)")
    db.commit()
    db.close()


def _unrelated(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE readings (ts INTEGER, value REAL)")
    db.commit()
    db.close()


def _a_directory(path: Path) -> None:
    path.mkdir()


def _open_and_load(state: BrokerState) -> Snapshot:
    state.open()
    return state.load()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_not_sqlite, "cannot open the broker state {path}: file is not a database"),
        (_damaged, "cannot read the broker state {path}: database disk image is malformed"),
        (_other_layout, "cannot open the broker state {path}: no such column: client_id"),
        (_unrelated, "cannot open the broker state {path}: it holds none of the broker's tables, but readings"),
        (_a_directory, "cannot open the broker state {path}: unable to open database file"),
    ],
    ids=["not sqlite", "damaged", "other layout", "unrelated", "a directory"],
)
def test_an_unusable_state_file_is_refused_by_name_and_left_alone(
    tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    path = tmp_path / "broker.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    state = BrokerState(path)
    with pytest.raises(StateError) as refused:
        _open_and_load(state)  # either step may find the problem
    state.close()
    assert str(refused.value) == (
        problem.format(path=path) + "; move it aside to start without the saved sessions and retained messages"
    )
    if before is not None:
        assert path.read_bytes() == before  # nothing of it was overwritten


def test_a_failed_save_keeps_the_previous_one_and_the_file_usable(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    first = Snapshot(retained=[("a", b"first", 1)], sessions=[("c1", 7)])
    second = Snapshot(retained=[("a", b"second", 1)], sessions=[("c1", 9)])
    state = BrokerState(path)
    state.open()
    try:
        state.save(first)
        refuse = sqlite3.connect(path)
        refuse.execute("CREATE TRIGGER refuse BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(StateError, match=re.escape(f"cannot save the broker state to {path}: disk full") + "$"):
            state.save(second)
        assert state.load() == first  # the half-done save was rolled back
        refuse.execute("DROP TRIGGER refuse")
        refuse.close()
        state.save(second)
        assert state.load() == second
    finally:
        state.close()
