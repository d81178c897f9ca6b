"""The log throttle: once per key per interval, in bounded memory."""

from __future__ import annotations

from iothub.mqtt.throttle import Throttle


def test_a_key_is_due_once_per_interval() -> None:
    throttle = Throttle(interval_s=60.0)
    assert throttle.due("a", now=100.0)
    assert not throttle.due("a", now=100.0)
    assert not throttle.due("a", now=159.9)
    assert throttle.due("b", now=159.9)  # keys are independent
    assert throttle.due("a", now=160.0)
    assert not throttle.due("a", now=219.9)  # the interval restarts when the key is let through


def test_it_holds_at_most_max_keys() -> None:
    throttle = Throttle(interval_s=60.0, max_keys=2)
    assert throttle.due("a", now=0.0)
    assert throttle.due("b", now=30.0)
    assert throttle.due("c", now=70.0)  # full: "a" (whose interval ended) is forgotten, "b" is kept
    assert not throttle.due("b", now=71.0)
    assert throttle.due("d", now=72.0)  # full of live keys: all are forgotten
    assert throttle.due("b", now=73.0)
    assert len(throttle._last) <= 2
