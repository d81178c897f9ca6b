"""The outbox database's shared pieces: one transaction helper for every writer of the outbox
tables, and the newest-first filtered listing of history and deliveries."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from iothub.hub import outbox
from iothub.hub.webhook_admin import WebhookAdmin


def endpoint_ids(path: Path) -> list[str]:
    with closing(outbox.connect(path)) as other:  # another connection sees only what was committed
        return [i for (i,) in other.execute("SELECT id FROM webhook_endpoints ORDER BY id")]


def test_a_transaction_commits_or_rolls_back_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "iothub.db"
    conn = outbox.connect(path)
    insert = "INSERT INTO webhook_endpoints (id, url, events, secret, created) VALUES (?, 'http://x', '[]', 's', 0)"
    try:
        with outbox.transaction(conn):
            conn.execute(insert, ("ep_a",))
            conn.execute(insert, ("ep_b",))

        def half_way() -> None:
            with outbox.transaction(conn):
                conn.execute(insert, ("ep_c",))
                raise RuntimeError("half way")

        with pytest.raises(RuntimeError):
            half_way()
        assert not conn.in_transaction
        assert endpoint_ids(path) == ["ep_a", "ep_b"]
    finally:
        conn.close()


def test_deliveries_are_listed_newest_first_by_the_filters_given(tmp_path: Path) -> None:
    admin = WebhookAdmin(tmp_path / "iothub.db")
    try:
        one, _ = admin.add("https://example.com/one", ["device.online"])
        two, _ = admin.add("https://example.com/two", ["device.online"])
        conn = admin._db()
        for n, (endpoint, state) in enumerate([(one, "pending"), (two, "dead"), (one, "dead"), (two, "pending")]):
            conn.execute(
                "INSERT INTO webhook_outbox (msg_id, endpoint_id, type, body, created, state, next_at, updated)"
                " VALUES (?, ?, 'device.online', '{}', 0, ?, 0, 0)",
                (f"msg_{n}", endpoint["id"], state),
            )
        assert [d["msg_id"] for d in admin.deliveries()] == ["msg_3", "msg_2", "msg_1", "msg_0"]
        assert [d["msg_id"] for d in admin.deliveries(endpoint_id=one["id"])] == ["msg_2", "msg_0"]
        assert [d["msg_id"] for d in admin.deliveries(state="dead")] == ["msg_2", "msg_1"]
        assert [d["msg_id"] for d in admin.deliveries(one["id"], "dead", limit=5)] == ["msg_2"]
        assert [d["msg_id"] for d in admin.deliveries(limit=1)] == ["msg_3"]
    finally:
        admin.close()
