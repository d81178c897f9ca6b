"""Topic filters: validation, matching, filter-within-filter, and the trie that must agree; no sockets."""

from __future__ import annotations

import random

import pytest

from iothub.mqtt.routing import SubscriptionTrie
from iothub.mqtt.topics import filter_within, matches, valid_filter


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+/c", "a/b/c", True),
        ("+/+", "/b", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("devices/+/status", "devices/d1/status", True),
        ("devices/+/status", "devices/d1/telemetry", False),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "allowed", "inside"),
    [
        ("devices/a/commands/reboot", "devices/a/commands/#", True),
        ("devices/a/commands/+", "devices/a/commands/#", True),
        ("devices/a/commands/#", "devices/a/commands/#", True),
        ("devices/a/commands", "devices/a/commands/#", True),  # '#' includes the parent level
        ("devices/a/#", "devices/a/commands/#", False),
        ("devices/+/commands/#", "devices/a/commands/#", False),
        ("#", "devices/a/commands/#", False),
        ("+/a/commands/x", "devices/a/commands/#", False),
        ("devices/a/state/desired", "devices/a/state/desired", True),
        ("devices/a/state/+", "devices/a/state/desired", False),
        ("devices/a/state/desired/x", "devices/a/state/desired", False),
        ("devices/a/state", "devices/a/state/desired", False),
        ("a/b", "a/+", True),
        ("a/+", "a/+", True),
        ("a/#", "a/+", False),  # amqtt's own ACL lets this through
        ("$SYS/x", "+/x", False),  # a leading wildcard does not match "$" topics
        ("$SYS/#", "#", False),
        ("$SYS/x", "$SYS/+", True),
    ],
)
def test_filter_within(topic_filter: str, allowed: str, inside: bool) -> None:
    assert filter_within(topic_filter, allowed) is inside


def test_filters_are_validated() -> None:
    assert all(valid_filter(f) for f in ["a", "a/+/b", "#", "+", "a/#", "/", "+/+"])
    assert not any(valid_filter(f) for f in ["", "a/#/b", "a#", "a/b+", "##"])


def test_the_trie_matches_like_the_filter_function() -> None:
    rng = random.Random(7)
    words = ["a", "b", "$s", ""]
    filters = {"/".join(rng.choice([*words, "+"]) for _ in range(rng.randint(1, 3))) for _ in range(60)}
    filters |= {f + "/#" for f in list(filters)[:20]} | {"#", "+/#"}
    trie = SubscriptionTrie()
    for n, f in enumerate(sorted(filters)):
        trie.add(f, f"c{n}", n % 3)
    for _ in range(500):
        topic = "/".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        want = {f"c{n}" for n, f in enumerate(sorted(filters)) if matches(f, topic)}
        assert set(trie.match(topic)) == want, topic
    for n, f in enumerate(sorted(filters)):
        assert trie.remove(f, f"c{n}")
    assert len(trie) == 0
    assert not trie.match("a/b")
    assert not trie.remove("a/b/c", "nobody")


def test_a_client_with_overlapping_filters_gets_one_copy_at_the_highest_qos() -> None:
    trie = SubscriptionTrie()
    trie.add("a/+", "c", 0)
    trie.add("a/#", "c", 2)
    trie.add("a/b", "d", 1)
    assert trie.match("a/b") == {"c": 2, "d": 1}


def test_removing_what_is_not_there_says_so() -> None:
    trie = SubscriptionTrie()
    trie.add("a/b", "one", 1)
    assert trie.remove("a/c", "one") is False  # no such filter
    assert trie.remove("a/b", "two") is False  # the filter, but not this client
    assert trie.remove("a/b", "one") is True
    assert trie.remove("a/b", "one") is False  # not twice
    assert len(trie) == 0
    assert trie.match("a/b") == {}


def test_removing_the_last_subscriber_prunes_its_branch() -> None:
    """A trie that only ever grew would hold every filter ever used by every client that came and went."""
    trie = SubscriptionTrie()
    trie.add("x/y/z", "one", 0)
    trie.add("x/y", "two", 0)
    trie.remove("x/y/z", "one")
    assert list(trie._root.children) == ["x"]
    assert list(trie._root.children["x"].children["y"].children) == []  # z went, y stays for "two"
    trie.remove("x/y", "two")
    assert trie._root.children == {}


def test_one_copy_at_the_best_qos_whatever_the_order_of_the_filters() -> None:
    for filters in (["a/+", "a/#", "a/b"], ["a/b", "a/#", "a/+"]):
        trie = SubscriptionTrie()
        for qos, topic_filter in enumerate(filters):
            trie.add(topic_filter, "c", qos)
        assert trie.match("a/b") == {"c": 2}
