"""Alert rules: their validation, and the pure judgement of values, presence and time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from iothub.hub.errors import AlertsError
from iothub.hub.rulebook import parse_rule
from iothub.hub.rules import AlertState, MetricRule, OfflineRule, Selector, Transition, on_presence, on_tick, on_value
from iothub.hub.settings import Settings


def metric(**spec: Any) -> MetricRule:
    rule = parse_rule({"kind": "metric", "name": "r", "metric": "t", **spec})
    assert isinstance(rule, MetricRule)
    return rule


def run(rule: MetricRule, values: list[tuple[int, float]]) -> list[tuple[int, Transition]]:
    state = AlertState()
    out = []
    for now, value in values:
        t = on_value(rule, state, value, now)
        if t is not None:
            out.append((now, t))
    return out


def test_a_threshold_fires_once_and_resolves_below_clear() -> None:
    rule = metric(op=">", threshold=30, clear=28)
    got = run(rule, [(0, 25), (1, 31), (2, 35), (3, 29), (4, 31), (5, 28), (6, 27.9), (7, 31)])
    assert got == [(1, Transition.FIRING), (5, Transition.RESOLVED), (7, Transition.FIRING)]


def test_without_clear_the_threshold_resolves() -> None:
    assert run(metric(op="<", threshold=10), [(0, 9), (1, 10)]) == [(0, Transition.FIRING), (1, Transition.RESOLVED)]
    assert run(metric(op=">=", threshold=10), [(0, 10), (1, 9.9)]) == [(0, "firing"), (1, "resolved")]
    assert run(metric(op="<=", threshold=0, clear=2), [(0, 0), (1, 2), (2, 2.1)]) == [(0, "firing"), (2, "resolved")]
    assert run(metric(op="==", threshold=1), [(0, True), (1, False)]) == [(0, "firing"), (1, "resolved")]


def test_outside_a_range() -> None:
    rule = metric(op="outside", range=[10, 20])
    assert run(rule, [(0, 15), (1, 21), (2, 5), (3, 10)]) == [(1, "firing"), (3, "resolved")]


def test_for_waits_until_the_condition_has_held_long_enough() -> None:
    rule = metric(op=">", threshold=30, for_s=5)
    state = AlertState()
    assert on_value(rule, state, 31, 0) is None
    assert on_value(rule, state, 29, 3000) is None  # broke off: the clock starts again
    assert on_value(rule, state, 31, 4000) is None
    assert on_tick(rule, state, 8999) is None
    assert on_tick(rule, state, 9000) is Transition.FIRING
    assert on_tick(rule, state, 20000) is None  # firing already: no second firing
    assert on_value(rule, state, 40, 21000) is None


def test_strings_never_match() -> None:
    assert run(metric(op="==", threshold=0), [(0, "0")]) == []  # type: ignore[list-item]


def test_offline_for_fires_after_the_time_and_resolves_online() -> None:
    rule = parse_rule({"kind": "offline", "name": "gone", "offline_for_s": 60})
    assert isinstance(rule, OfflineRule)
    state = AlertState()
    assert on_presence(state, False, 1000) is None
    assert on_tick(rule, state, 60_999) is None
    assert on_tick(rule, state, 61_000) is Transition.FIRING
    assert on_presence(state, False, 62_000) is None
    assert on_presence(state, True, 63_000) is Transition.RESOLVED
    assert on_presence(state, True, 64_000) is None


def test_selectors() -> None:
    assert Selector().matches("a", {})
    assert Selector(devices=("a",)).matches("a", {})
    assert not Selector(devices=("a",)).matches("b", {})
    by_label = Selector(labels={"site": "berlin"})
    assert by_label.matches("x", {"site": "berlin", "floor": "2"})
    assert not by_label.matches("x", {"site": "paris"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"op": ">", "threshold": 30, "clear": 31}, "clear 31.0 must not be above threshold 30.0"),
        ({"op": "<", "threshold": 30, "clear": 29}, "clear 29.0 must not be below threshold 30.0"),
        ({"op": "==", "threshold": 1, "clear": 1}, "op '==' takes no clear value"),
        ({"op": "outside", "threshold": 1}, "op 'outside' takes range"),
        ({"op": "outside", "range": [5, 1]}, "range [5.0, 1.0]: low must be below high"),
        ({"op": "outside", "range": [1, 5], "clear": 2}, "op 'outside' takes no clear value"),
        ({"op": ">"}, "op '>' takes a threshold and no range"),
        ({"op": "!=", "threshold": 1}, "op: Input should be"),
        ({"op": ">", "threshold": 1, "for_s": -1}, "for_s: Input should be greater than or equal to 0"),
        ({"op": ">", "threshold": 1, "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(AlertsError, match="^rule: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        metric(**spec)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"op": ">", "threshold": float("nan")}, "threshold"),
        ({"op": "<", "threshold": float("inf")}, "threshold"),
        ({"op": ">", "threshold": 1, "clear": float("-inf")}, "clear"),
        ({"op": "outside", "range": [0, float("inf")]}, "range.1"),
        ({"op": ">", "threshold": 1, "for_s": float("nan")}, "for_s"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(AlertsError, match=rf"^rule: metric\.{field}: Input should be a finite number$"):
        metric(**spec)
    with pytest.raises(AlertsError, match=rf"^rule: metric\.{field}: Input should be a finite number$"):
        parse_rule(json.dumps({"kind": "metric", "name": "r", "metric": "t", **spec}))  # NaN, Infinity in JSON


def test_a_rule_needs_a_known_kind_and_a_valid_name() -> None:
    with pytest.raises(AlertsError, match=r"^rule: field 'kind': 'weather' is not one of metric, offline$"):
        parse_rule({"kind": "weather", "name": "x"})
    with pytest.raises(AlertsError, match=r"^rule: field 'kind': missing \(one of metric, offline\)$"):
        parse_rule('{"name": "x"}')
    with pytest.raises(AlertsError, match=r"^rule: expected an object, got list$"):
        parse_rule("[]")
    with pytest.raises(AlertsError, match=r"rule: metric\.name: String should match pattern"):
        parse_rule({"kind": "metric", "name": "a/b", "metric": "t", "op": ">", "threshold": 1})
    with pytest.raises(AlertsError, match=r"rule: offline\.offline_for_s: Input should be greater than 0"):
        parse_rule({"kind": "offline", "name": "x", "offline_for_s": 0})


def test_the_settings_file_names_a_bad_kind_and_a_non_finite_number() -> None:
    with pytest.raises(ValidationError, match="'kind' must be one of metric, offline"):
        Settings(rules=[{"kind": "weird", "name": "x"}])
    with pytest.raises(ValidationError, match="threshold\n  Input should be a finite number"):
        Settings(rules=[{"kind": "metric", "name": "x", "metric": "t", "op": ">", "threshold": float("inf")}])
