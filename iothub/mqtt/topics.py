"""Topic names and filters (MQTT 3.1.1 section 4.7) as pure functions: the one place that knows the rules.

* :func:`valid_filter`: ``#`` only as the whole last level, ``+`` only as a whole level.
* :func:`matches`: does a topic name match a filter. ``+`` matches exactly one level, ``#`` the parent
  level and everything below it; a filter starting with a wildcard never matches a topic starting
  with ``$`` [MQTT-4.7.2-1].
* :func:`filter_within`: does every topic one filter can match also match another filter (what an
  ACL needs before it grants a subscription with wildcards).

The subscription trie (:mod:`.routing`) walks topics its own way for speed; a randomized test holds it
to :func:`matches`.
"""

from __future__ import annotations


def valid_filter(topic_filter: str) -> bool:
    """[MQTT-4.7.1-2, 4.7.1-3] ``#`` only as the whole last level, ``+`` only as a whole level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` (a name, no wildcards) matches ``topic_filter``."""
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


def filter_within(topic_filter: str, allowed: str) -> bool:
    """True when every topic matching ``topic_filter`` also matches the filter ``allowed``."""
    if topic_filter.startswith("$") and allowed[:1] in ("+", "#"):
        return False  # "$x/..." topics are not matched by a leading wildcard [MQTT-4.7.2-1]
    want, have = topic_filter.split("/"), allowed.split("/")
    for i, level in enumerate(want):
        if i >= len(have):
            return False
        if have[i] == "#":
            return True
        if level == "#" or (level == "+" and have[i] != "+"):
            return False
        if have[i] != "+" and level != have[i]:
            return False
    # The filter ended: it is inside ``allowed`` if that ends here too, or continues with '#'
    # ('a/#' matches 'a' itself).
    return len(have) == len(want) or (len(have) == len(want) + 1 and have[-1] == "#")
