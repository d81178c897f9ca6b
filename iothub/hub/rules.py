"""Alert rules: what they say (pydantic models, from the settings file, REST or the CLI) and how one
rule judges one device (pure functions over :class:`AlertState`, no I/O, no clock of their own).

Two kinds, told apart by ``kind``:

* ``metric``: a device's metric compared with a threshold (``>``, ``<``, ``>=``, ``<=``, ``==``) or
  with a range (``outside``: below ``range[0]`` or above ``range[1]``). It fires once the condition
  has held for ``for_s`` seconds (0: at the first breaching value), and resolves when the value
  crosses ``clear`` (hysteresis; for ``>``/``>=`` a ``clear`` at or below the threshold, for ``<``/``<=``
  at or above it; unset: the threshold itself). Booleans count as 1 and 0; strings never match.
* ``offline``: a device offline for longer than ``offline_for_s``; resolves when it is back online.
  The evaluator counts from when the device went offline, or from when it started watching (the
  hub started, the rule was added, the device was registered) if that is later: a registered
  device that never connected fires too.

``select`` narrows the devices: ``devices`` (ids) and ``labels`` (every one must match); both empty
means every device.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, TypeAdapter, model_validator

from iothub.devices.topics import ID_PATTERN

Name = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
Value = bool | int | float | str


class Op(enum.StrEnum):
    GT = ">"
    LT = "<"
    GE = ">="
    LE = "<="
    EQ = "=="
    OUTSIDE = "outside"


class Transition(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN compares with nothing


class Selector(_Model):
    devices: tuple[Name, ...] = ()
    labels: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], str] = Field(default_factory=dict)

    def matches(self, device_id: str, labels: Mapping[str, str]) -> bool:
        if self.devices and device_id not in self.devices:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


class MetricRule(_Model):
    kind: Literal["metric"]
    name: Name
    metric: Name
    op: Op
    threshold: float | None = None
    range: tuple[float, float] | None = None
    clear: float | None = Field(default=None, description="the value that resolves a firing alert (hysteresis)")
    for_s: float = Field(default=0.0, ge=0, le=86_400 * 7, description="how long the condition must hold")
    select: Selector = Selector()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.op is Op.OUTSIDE:
            if self.range is None or self.threshold is not None:
                raise ValueError("op 'outside' takes range [low, high] and no threshold")
            if self.range[0] >= self.range[1]:
                raise ValueError(f"range {list(self.range)}: low must be below high")
            if self.clear is not None:
                raise ValueError("op 'outside' takes no clear value")
            return self
        if self.threshold is None or self.range is not None:
            raise ValueError(f"op {self.op.value!r} takes a threshold and no range")
        if self.clear is not None:
            if self.op is Op.EQ:
                raise ValueError("op '==' takes no clear value")
            if self.op in (Op.GT, Op.GE) and self.clear > self.threshold:
                raise ValueError(f"clear {self.clear} must not be above threshold {self.threshold} for {self.op.value}")
            if self.op in (Op.LT, Op.LE) and self.clear < self.threshold:
                raise ValueError(f"clear {self.clear} must not be below threshold {self.threshold} for {self.op.value}")
        return self


class OfflineRule(_Model):
    kind: Literal["offline"]
    name: Name
    offline_for_s: float = Field(gt=0, le=86_400 * 30, description="how long a device may be offline")
    select: Selector = Selector()


KINDS = ("metric", "offline")
KIND_ERROR = "rule_kind"


def _kind(value: object) -> object:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


Rule = Annotated[
    Annotated[MetricRule, Tag("metric")] | Annotated[OfflineRule, Tag("offline")],
    Discriminator(
        _kind, custom_error_type=KIND_ERROR, custom_error_message=f"'kind' must be one of {', '.join(KINDS)}"
    ),
]


RULE = TypeAdapter(Rule)
"""Validates a rule given as a dict or JSON (a request body, a stored row)."""


@dataclass(slots=True)
class AlertState:
    """One rule's view of one device."""

    firing: bool = False
    pending_since: int | None = None  # epoch ms the condition started to hold
    value: Value | None = None  # the last value judged (metric rules)


def _number(value: Value) -> float | None:
    if isinstance(value, str):
        return None
    return float(value)


def _holds(op: Op, value: float, threshold: float, low_high: tuple[float, float] | None) -> bool:
    if op is Op.GT:
        return value > threshold
    if op is Op.GE:
        return value >= threshold
    if op is Op.LT:
        return value < threshold
    if op is Op.LE:
        return value <= threshold
    if op is Op.EQ:
        return value == threshold
    assert low_high is not None
    return value < low_high[0] or value > low_high[1]


def breached(rule: MetricRule, value: float) -> bool:
    return _holds(rule.op, value, rule.threshold or 0.0, rule.range)


def cleared(rule: MetricRule, value: float) -> bool:
    """Whether a firing alert resolves at ``value``: the condition no longer holds at ``clear``."""
    line = rule.clear if rule.clear is not None else rule.threshold
    return not _holds(rule.op, value, line or 0.0, rule.range)


def on_value(rule: MetricRule, state: AlertState, value: Value, now_ms: int) -> Transition | None:
    """Judge a new value of the rule's metric at ``now_ms``; the transition it causes, if any."""
    number = _number(value)
    if number is None:
        return None
    state.value = value
    if state.firing:
        if cleared(rule, number):
            state.firing, state.pending_since = False, None
            return Transition.RESOLVED
        return None
    if not breached(rule, number):
        state.pending_since = None
        return None
    if state.pending_since is None:
        state.pending_since = now_ms
    return on_tick(rule, state, now_ms)


def on_presence(state: AlertState, online: bool, since_ms: int) -> Transition | None:
    """An offline rule told of a presence change (``since_ms``: when it happened)."""
    if online:
        state.pending_since = None
        if state.firing:
            state.firing = False
            return Transition.RESOLVED
        return None
    if not state.firing and state.pending_since is None:
        state.pending_since = since_ms
    return None


def on_tick(rule: MetricRule | OfflineRule, state: AlertState, now_ms: int) -> Transition | None:
    """Time passed: a condition that has held long enough fires."""
    if state.firing or state.pending_since is None:
        return None
    hold_s = rule.for_s if isinstance(rule, MetricRule) else rule.offline_for_s
    if now_ms - state.pending_since >= hold_s * 1000:
        state.firing = True
        return Transition.FIRING
    return None


def due_at(rule: MetricRule | OfflineRule, state: AlertState) -> int | None:
    """When :func:`on_tick` could next fire this state (epoch ms), or None."""
    if state.firing or state.pending_since is None:
        return None
    hold_s = rule.for_s if isinstance(rule, MetricRule) else rule.offline_for_s
    return state.pending_since + round(hold_s * 1000)
