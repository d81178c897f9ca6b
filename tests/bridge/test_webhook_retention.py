"""Retention: delivered and dead webhook deliveries, attempts and alert history older than their
retention are pruned by a running hub; pending deliveries and alerts still firing stay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from iothub.hub import outbox
from iothub.hub.ingest import now_ms
from iothub.runner import serve
from tests.conftest import WAIT_S, hub_settings

DAY_MS = 86_400_000


def seed(path: Path, now: int) -> None:
    """Old and recent rows of every kind, as a hub running for months would have left them."""
    old, recent = now - 40 * DAY_MS, now - 1 * DAY_MS
    conn = outbox.connect(path)
    try:
        conn.execute(
            "INSERT INTO webhook_endpoints (id, url, events, secret, created, enabled) VALUES (?, ?, ?, ?, ?, 0)",
            ("ep_1", "http://192.0.2.1/hook", json.dumps(["device.online"]), "whsec_x", old),
        )
        for i, (state, updated) in enumerate(
            [("delivered", old), ("dead", old), ("pending", old), ("delivered", recent)], start=1
        ):
            conn.execute(
                "INSERT INTO webhook_outbox (id, msg_id, endpoint_id, type, body, created, state, attempts, next_at,"
                " updated) VALUES (?, ?, 'ep_1', 'device.online', '{}', ?, ?, 1, ?, ?)",
                (i, f"msg_{i}", updated, state, updated, updated),
            )
            conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, ts, status, latency_ms, outcome, response)"
                " VALUES (?, 1, ?, 500, 1.0, 'failed', '')",
                (i, updated),
            )
        history = [
            ("hot", "a", "firing", old), ("hot", "a", "resolved", old),  # over: both go
            ("hot", "b", "firing", old),  # still firing: stays
            ("hot", "c", "firing", old), ("hot", "c", "resolved", recent),  # the firing goes
        ]  # fmt: skip
        for event_id, (rule, device, state, ts) in enumerate(history, start=1):
            conn.execute(
                "INSERT INTO alert_history (event_id, ts, rule, device_id, state, data) VALUES (?, ?, ?, ?, ?, '{}')",
                (event_id, ts, rule, device, state),
            )
    finally:
        conn.close()


def remaining(path: Path) -> tuple[list[tuple[int, str]], list[int], list[tuple[str, str]]]:
    conn = outbox.connect(path)
    try:
        deliveries = conn.execute("SELECT id, state FROM webhook_outbox ORDER BY id").fetchall()
        attempts = [i for (i,) in conn.execute("SELECT delivery_id FROM webhook_attempts ORDER BY delivery_id")]
        history = conn.execute("SELECT device_id, state FROM alert_history ORDER BY id").fetchall()
    finally:
        conn.close()
    return deliveries, attempts, history


async def test_rows_past_retention_are_pruned_and_the_rest_stays(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "iothub.db"
    seed(db, now_ms())
    settings = hub_settings(data_dir, webhooks={"retention_days": 30}, alerts={"retention_days": 30})
    expected = ([(3, "pending"), (4, "delivered")], [4], [("b", "firing"), ("c", "resolved")])
    async with serve(settings):
        async with asyncio.timeout(WAIT_S):
            while (found := await asyncio.to_thread(remaining, db)) != expected:  # noqa: ASYNC110 - bounded
                await asyncio.sleep(0.05)
    assert found == expected
