"""MQTT topic-filter matching (MQTT 3.1.1 section 4.7), as a pure function."""

from __future__ import annotations


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` (a name, no wildcards) matches ``topic_filter``.

    ``+`` matches exactly one level, ``#`` (last level only) the parent level and everything below
    it; a filter starting with a wildcard never matches a topic starting with ``$`` [MQTT-4.7.2-1].
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    levels = topic.split("/")
    pattern = topic_filter.split("/")
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels):
            return False
        if want != "+" and want != levels[i]:
            return False
    return len(levels) == len(pattern)
