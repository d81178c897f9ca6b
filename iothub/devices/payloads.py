"""Payload models of the device contract and their decoders.

Decoders are pure: they take the raw bytes (and, where time matters, ``now_ms``) and return a
validated model or raise :class:`PayloadError` whose ``reason`` says which rule was broken.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from iothub.devices.errors import PayloadError, RejectReason
from iothub.devices.topics import ID_PATTERN

MAX_METRICS = 256
MAX_STRING_VALUE = 256
# Timestamps before this are refused: they are almost always epoch seconds sent where ms are expected.
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

MetricName = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]


def _metric_value(value: Any) -> bool | int | float | str:
    """A metric value is a finite number, a boolean or a short string; one clear error otherwise."""
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, str) and len(value) <= MAX_STRING_VALUE:
        return value
    raise ValueError(f"must be a finite number, a boolean or a string of at most {MAX_STRING_VALUE} characters")


MetricValue = Annotated[bool | int | float | str, PlainValidator(_metric_value)]


def _ts_to_ms(value: Any) -> Any:
    """Accept epoch milliseconds (int or float) or an RFC 3339 string with an offset."""
    if value is None or isinstance(value, bool):
        return value  # bool is refused by the strict int field below
    if isinstance(value, int | float):
        return round(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts {value!r} is neither epoch milliseconds nor RFC 3339") from None
        if parsed.tzinfo is None:
            raise ValueError(f"ts {value!r} has no UTC offset")
        return round(parsed.timestamp() * 1000)
    return value


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Telemetry(_Contract):
    """``devices/{id}/telemetry``: ``{"ts": ..., "seq": ..., "metrics": {...}}``."""

    ts: StrictInt | None = Field(default=None, description="epoch milliseconds")
    seq: Annotated[StrictInt, Field(ge=0)] | None = None
    metrics: dict[MetricName, MetricValue] = Field(min_length=1, max_length=MAX_METRICS)

    _ts = field_validator("ts", mode="before")(_ts_to_ms)


class Status(_Contract):
    """``devices/{id}/status``: presence as the device (or its Last Will) declares it."""

    online: StrictBool
    ts: StrictInt | None = None
    reason: Annotated[StrictStr, StringConstraints(max_length=128)] | None = None

    _ts = field_validator("ts", mode="before")(_ts_to_ms)


class CommandRequest(_Contract):
    """``devices/{id}/commands/{name}``: what the hub asks of a device."""

    id: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)


class CommandResponse(_Contract):
    """``devices/{id}/responses``: the device's answer to a :class:`CommandRequest`."""

    id: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)]
    ok: StrictBool
    result: dict[str, Any] | None = None
    error: Annotated[StrictStr, StringConstraints(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _ok_matches_fields(self) -> Self:
        if self.ok and self.error is not None:
            raise ValueError("a response with ok=true carries no error")
        if not self.ok and not self.error:
            raise ValueError("a response with ok=false must say what failed in 'error'")
        return self


M = TypeVar("M", bound=_Contract)


class TwinDocument(_Contract):
    """``devices/{id}/state/desired`` and ``.../state/reported``: a versioned state document."""

    version: Annotated[StrictInt, Field(ge=0)]
    state: dict[str, Any]


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One line that names each failing field: ``metrics.temp: Input should be a valid number``."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            msg = f"invalid JSON: {err.get('ctx', {}).get('error', msg)}"
        parts.append(f"{where}: {msg}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _decode(model: type[M], payload: bytes, max_bytes: int) -> M:
    if len(payload) > max_bytes:
        raise PayloadError(
            f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}", reason=RejectReason.TOO_LARGE
        )
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 (byte {exc.start})", reason=RejectReason.NOT_UTF8) from None
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors(include_url=False)}
        reason = RejectReason.MALFORMED_JSON if "json_invalid" in kinds else RejectReason.INVALID
        raise PayloadError(describe(exc), reason=reason) from None


def _check_ts(ts: int | None, now_ms: int, max_future_ms: int) -> None:
    if ts is None:
        return
    if ts > now_ms + max_future_ms:
        ahead = (ts - now_ms) / 1000
        raise PayloadError(
            f"ts {_iso(ts)} is {ahead:.0f} s in the future (limit {max_future_ms // 1000} s)",
            reason=RejectReason.TS_IN_FUTURE,
        )
    if ts < MIN_TS_MS:
        raise PayloadError(
            f"ts {ts} is before 2000-01-01; ts is epoch milliseconds, not seconds",
            reason=RejectReason.TS_OUT_OF_RANGE,
        )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def decode_telemetry(payload: bytes, *, now_ms: int, max_bytes: int, max_future_ms: int) -> Telemetry:
    """Decode a telemetry payload; ``ts`` is checked against ``now_ms`` but left ``None`` if absent."""
    telemetry = _decode(Telemetry, payload, max_bytes)
    _check_ts(telemetry.ts, now_ms, max_future_ms)
    return telemetry


def decode_status(payload: bytes, *, now_ms: int, max_bytes: int, max_future_ms: int) -> Status:
    status = _decode(Status, payload, max_bytes)
    _check_ts(status.ts, now_ms, max_future_ms)
    return status


def decode_response(payload: bytes, *, max_bytes: int) -> CommandResponse:
    return _decode(CommandResponse, payload, max_bytes)


def decode_twin(payload: bytes, *, max_bytes: int) -> TwinDocument:
    return _decode(TwinDocument, payload, max_bytes)
