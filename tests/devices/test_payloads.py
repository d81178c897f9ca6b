import json
from typing import Any

import pytest

from iothub.devices import PayloadError, RejectReason, decode_status, decode_telemetry
from iothub.devices.payloads import CommandResponse, decode_response

NOW = 1_790_000_000_000
LIMITS: dict[str, Any] = {"now_ms": NOW, "max_bytes": 1024, "max_future_ms": 300_000}


def telemetry(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_a_full_message_decodes() -> None:
    t = decode_telemetry(
        telemetry(ts="2026-09-21T10:00:00+02:00", seq=7, metrics={"t": 21.5, "n": 3, "open": False, "mode": "eco"}),
        **LIMITS,
    )
    assert t.ts == 1_789_977_600_000
    assert t.seq == 7
    assert t.metrics == {"t": 21.5, "n": 3, "open": False, "mode": "eco"}
    assert isinstance(t.metrics["open"], bool)


def test_ts_may_be_epoch_ms_or_absent() -> None:
    assert decode_telemetry(telemetry(ts=NOW - 5, metrics={"a": 1}), **LIMITS).ts == NOW - 5
    assert decode_telemetry(telemetry(metrics={"a": 1}), **LIMITS).ts is None


@pytest.mark.parametrize(
    ("payload", "reason", "message"),
    [
        (b"{not json", RejectReason.MALFORMED_JSON, "invalid JSON"),
        (b"[1, 2]", RejectReason.INVALID, "payload"),
        (telemetry(metrics={}), RejectReason.INVALID, "metrics: Dictionary should have at least 1 item"),
        (
            telemetry(metrics={"t": "1"}, extra=1),
            RejectReason.INVALID,
            "extra: Extra inputs are not permitted",
        ),
        (telemetry(metrics={"t": [1]}), RejectReason.INVALID, "metrics.t: must be a finite number"),
        (telemetry(metrics={"t": None}), RejectReason.INVALID, "metrics.t: must be a finite number"),
        (telemetry(metrics={"t": "x" * 257}), RejectReason.INVALID, "string of at most 256"),
        (b'{"metrics": {"t": NaN}}', RejectReason.INVALID, "metrics.t"),
        (telemetry(metrics={"bad name": 1}), RejectReason.INVALID, "metrics.bad name.\\[key\\]"),
        (telemetry(metrics={"t": 1}, seq=-1), RejectReason.INVALID, "seq: Input should be greater than"),
        (telemetry(metrics={"t": 1}, seq="1"), RejectReason.INVALID, "seq: Input should be a valid integer"),
        (telemetry(metrics={"t": 1}, ts=True), RejectReason.INVALID, "ts: Input should be a valid integer"),
        (
            telemetry(metrics={"t": 1}, ts="yesterday"),
            RejectReason.INVALID,
            "neither epoch milliseconds nor RFC 3339",
        ),
        (telemetry(metrics={"t": 1}, ts="2026-01-01T00:00:00"), RejectReason.INVALID, "has no UTC offset"),
        (telemetry(metrics={"t": 1}, ts=NOW + 301_000), RejectReason.TS_IN_FUTURE, "301 s in the future"),
        (telemetry(metrics={"t": 1}, ts=1_790_000_000), RejectReason.TS_OUT_OF_RANGE, "not seconds"),
        (b"\xff\xfe{}", RejectReason.NOT_UTF8, "not UTF-8"),
        (telemetry(metrics={"t": "x" * 2000}), RejectReason.TOO_LARGE, "exceeds the limit of 1024"),
    ],
)
def test_bad_telemetry_is_refused_with_a_reason(payload: bytes, reason: RejectReason, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as info:
        decode_telemetry(payload, **LIMITS)
    assert info.value.reason is reason


def test_many_errors_are_summarised() -> None:
    payload = telemetry(metrics={f"m{i}": [i] for i in range(6)})
    with pytest.raises(PayloadError, match="and 3 more"):
        decode_telemetry(payload, **LIMITS)


def test_status_decodes_and_validates() -> None:
    s = decode_status(b'{"online": false, "reason": "battery"}', **LIMITS)
    assert (s.online, s.reason) == (False, "battery")
    with pytest.raises(PayloadError, match="online: Input should be a valid boolean"):
        decode_status(b'{"online": "yes"}', **LIMITS)
    with pytest.raises(PayloadError) as info:
        decode_status(json.dumps({"online": True, "ts": NOW + 10**9}).encode(), **LIMITS)
    assert info.value.reason is RejectReason.TS_IN_FUTURE


def test_responses_must_be_consistent() -> None:
    assert decode_response(b'{"id": "r1", "ok": true, "result": {"a": 1}}', max_bytes=1024).result == {"a": 1}
    with pytest.raises(PayloadError, match="must say what failed"):
        decode_response(b'{"id": "r1", "ok": false}', max_bytes=1024)
    with pytest.raises(PayloadError, match="carries no error"):
        decode_response(b'{"id": "r1", "ok": true, "error": "x"}', max_bytes=1024)
    assert CommandResponse(id="r", ok=False, error="boom").error == "boom"
