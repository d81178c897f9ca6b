"""Expectations on events, and the readable report of why none of the events that came matched.

Pure: an :class:`Expectation` says whether an event matches and, when it does not, why (the first
difference, in words). :func:`report` is the failure message of ``client.expect(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from iothub.watch.events import WatchEvent, format_value

Where: TypeAlias = Mapping[str, Any] | Callable[[WatchEvent], bool] | None
SHOWN = 10  # events listed in a failure report
_MISSING = object()


@dataclass(frozen=True)
class Expectation:
    """``type`` (``telemetry``, ``status``, ``command_result``, ``alert``), ``device`` (None: any),
    ``where``: a mapping of field -> expected value (telemetry: its metrics; other events: their
    fields; a value may be a predicate, ``lambda t: t > 20``), or a predicate of the whole event."""

    type: str
    device: str | None = None
    where: Where = None

    def mismatch(self, event: WatchEvent) -> str | None:
        """None when ``event`` matches; otherwise the first reason it does not."""
        if event.type != self.type:
            return f"type is {event.type}, not {self.type}"
        if self.device is not None and event.device_id != self.device:
            return f"device is {event.device_id}, not {self.device}"
        if self.where is None:
            return None
        if callable(self.where):
            return None if self.where(event) else f"{_name(self.where)} is false for it"
        values = event.values
        for key, wanted in self.where.items():
            got = values.get(key, _MISSING)
            if got is _MISSING:
                return f"no {key} (it has {', '.join(values) or 'nothing'})"
            if callable(wanted):
                if not wanted(got):
                    return f"{key}={format_value(got)} fails {_name(wanted)}"
            elif got != wanted:
                return f"{key} is {format_value(got)}, not {format_value(wanted)}"
        return None

    def describe(self) -> str:
        text = f"a {self.type} event"
        if self.device is not None:
            text += f" from {self.device}"
        if callable(self.where):
            text += f" where {_name(self.where)}"
        elif self.where:
            conditions = (
                f"{k} passes {_name(v)}" if callable(v) else f"{k}={format_value(v)}" for k, v in self.where.items()
            )
            text += " where " + " and ".join(conditions)
        return text


def _name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", "")
    return "the predicate" if name in ("", "<lambda>") else f"{name}()"


def report(expectation: Expectation, channel: str, timeout_s: float, seen: Sequence[WatchEvent]) -> str:
    """The failure message: what was expected, how long, and the last :data:`SHOWN` events with the
    reason each did not match."""
    lines = [f"expected {expectation.describe()} on {channel} within {timeout_s:g} s"]
    if not seen:
        lines.append("  nothing arrived")
        return "\n".join(lines)
    shown = seen[-SHOWN:]
    older = len(seen) - len(shown)
    lines.append(
        f"  {len(seen)} event{'s' if len(seen) != 1 else ''} arrived, none matched"
        + (f"; the last {len(shown)}:" if older else ":")
    )
    for event in shown:
        ident = f"#{event.id} " if event.id is not None else ""
        lines.append(f"  - {ident}{event.line()}")
        lines.append(f"      {expectation.mismatch(event) or 'matched, but an earlier expect took it'}")
    return "\n".join(lines)
