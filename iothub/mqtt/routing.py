"""Subscriptions as a trie of topic levels: matching costs the depth of the topic, not the number of filters.

``match(topic)`` walks the topic's levels once, following the literal child, the ``+`` child and
collecting ``#`` at every level (``#`` also matches the parent level [MQTT-4.7.1-2]). A filter that
starts with a wildcard does not match a topic that starts with ``$`` [MQTT-4.7.2-1]. A client
with several matching filters receives the message once, at the highest of their QoS
[MQTT-3.3.5-1].
"""

from __future__ import annotations


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, int] = {}  # client id -> granted QoS


class SubscriptionTrie:
    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if client_id not in node.subscribers:
            self._count += 1
        node.subscribers[client_id] = qos

    def remove(self, topic_filter: str, client_id: str) -> bool:
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        if path[-1].subscribers.pop(client_id, None) is None:
            return False
        self._count -= 1
        for depth in range(len(levels), 0, -1):  # prune empty branches
            node = path[depth]
            if node.subscribers or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> dict[str, int]:
        """Client id -> QoS of its best matching subscription, for every client with a match."""
        out: dict[str, int] = {}
        levels = topic.split("/")
        last = len(levels)
        dollar = topic.startswith("$")
        nodes = [self._root]
        for depth, level in enumerate(levels):
            following: list[_Node] = []
            for node in nodes:
                children = node.children
                if not children:
                    continue
                if depth or not dollar:
                    hash_node = children.get("#")
                    if hash_node is not None:
                        _merge(out, hash_node.subscribers)
                    plus = children.get("+")
                    if plus is not None:
                        following.append(plus)
                exact = children.get(level)
                if exact is not None:
                    following.append(exact)
            if not following:
                return out
            nodes = following
            if depth + 1 == last:
                for node in nodes:
                    _merge(out, node.subscribers)
                    hash_node = node.children.get("#")  # "a/#" matches "a" itself
                    if hash_node is not None:
                        _merge(out, hash_node.subscribers)
        return out


def _merge(out: dict[str, int], subscribers: dict[str, int]) -> None:
    if not subscribers:
        return
    if not out:
        out.update(subscribers)
        return
    for client_id, qos in subscribers.items():
        if out.get(client_id, -1) < qos:
            out[client_id] = qos
