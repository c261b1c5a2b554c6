"""Topic names and topic filters: validation and matching rules of section 4.7 and 4.8."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted_mqtt.errors import ProtocolError, TopicFilterInvalid, TopicNameInvalid

SHARE_PREFIX = "$share/"


def validate_topic_name(topic: str) -> None:
    """Raise ``TopicNameInvalid`` unless ``topic`` is a usable (non-empty) topic name."""
    if "+" in topic or "#" in topic:
        raise TopicNameInvalid(f"wildcard in topic name {topic!r}", "MQTT-3.3.2-2")


def split_shared(topic_filter: str) -> Tuple[Optional[str], str]:
    """Split ``$share/group/filter`` into ``(group, filter)``; ``(None, filter)`` otherwise."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, sep, rest = topic_filter[len(SHARE_PREFIX):].partition("/")
    if not group or "+" in group or "#" in group:
        raise ProtocolError(f"invalid share name in {topic_filter!r}", "MQTT-4.8.2-1")
    if not sep or not rest:
        raise ProtocolError(f"shared subscription without filter: {topic_filter!r}", "MQTT-4.8.2-2")
    return group, rest


def validate_topic_filter(topic_filter: str) -> None:
    """Raise ``TopicFilterInvalid`` (or ``ProtocolError`` for a bad share) for a bad filter."""
    if not topic_filter:
        raise TopicFilterInvalid("empty topic filter", "MQTT-4.7.3-1")
    _, plain = split_shared(topic_filter)
    if "+" not in plain and "#" not in plain:
        return
    levels = plain.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise TopicFilterInvalid(f"misplaced '#' in {topic_filter!r}", "MQTT-4.7.1-1")
        if "+" in level and level != "+":
            raise TopicFilterInvalid(f"'+' not alone in a level: {topic_filter!r}", "MQTT-4.7.1-2")


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the (non-shared) ``topic_filter`` [MQTT-4.7.2-1]."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    return levels_match(topic_filter, topic)


def levels_match(topic_filter: str, topic: str) -> bool:
    """Whether ``topic``'s levels match ``topic_filter``'s: ``+`` one level, ``#`` any number,
    including none (``a/#`` covers ``a``); no special case for topics starting with ``$``."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class SharedGroup:
    """The members of one shared subscription ``$share/{name}/{filter}``, with a round-robin
    cursor."""

    __slots__ = ("topic_filter", "members", "cursor")

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        self.members: dict[str, Any] = {}
        self.cursor = 0


class _Node:
    __slots__ = ("children", "subscribers", "shared")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, Any] = {}
        self.shared: dict[str, SharedGroup] = {}


class SubscriptionTree:
    """Subscriptions by topic filter, in a trie of levels, with a cache of topic -> matches.

    Each subscription stores an opaque ``entry`` per client id.  ``match(topic)`` returns the
    entries of normal subscriptions and the member dicts of shared groups that match.  The cache
    is cleared on every change, so a topic is matched against the trie once between changes.
    """

    __slots__ = ("_root", "_cache", "_cache_limit", "count")

    def __init__(self, cache_limit: int = 100_000) -> None:
        self._root = _Node()
        self._cache: dict[str, Match] = {}
        self._cache_limit = cache_limit
        self.count = 0

    def add(self, topic_filter: str, client_id: str, entry: Any) -> bool:
        """Add or replace a subscription; True if it did not exist before."""
        group, plain = split_shared(topic_filter)
        node = self._root
        for level in plain.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if group is None:
            target = node.subscribers
        else:
            shared = node.shared.get(group)
            if shared is None:
                shared = node.shared[group] = SharedGroup(topic_filter)
            target = shared.members
        new = client_id not in target
        target[client_id] = entry
        self.count += new
        self._cache.clear()
        return new

    def remove(self, topic_filter: str, client_id: str) -> bool:
        """Remove a subscription; True if it existed."""
        group, plain = split_shared(topic_filter)
        path = [self._root]
        levels = plain.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        if group is None:
            target = node.subscribers
        else:
            shared = node.shared.get(group)
            target = shared.members if shared is not None else {}
        if target.pop(client_id, None) is None:
            return False
        if group is not None and not target:
            del node.shared[group]
        self.count -= 1
        self._cache.clear()
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.children or node.subscribers or node.shared:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> Match:
        """Entries of the subscriptions matching ``topic``: ``(normal, shared)``."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        normal: list[tuple[str, Any]] = []
        shared: list[SharedGroup] = []
        levels = topic.split("/")
        dollar = topic.startswith("$")
        self._walk(self._root, levels, 0, dollar, normal, shared)
        result = (normal, shared)
        if len(self._cache) >= self._cache_limit:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _walk(
        self,
        node: _Node,
        levels: list[str],
        depth: int,
        dollar: bool,
        normal: list[tuple[str, Any]],
        shared: list[SharedGroup],
    ) -> None:
        children = node.children
        wild = not (dollar and depth == 0)
        if wild:
            hash_node = children.get("#")
            if hash_node is not None:
                self._collect(hash_node, levels, normal, shared)
        if depth == len(levels):
            self._collect(node, levels, normal, shared)
            return
        child = children.get(levels[depth])
        if child is not None:
            self._walk(child, levels, depth + 1, dollar, normal, shared)
        if wild:
            plus = children.get("+")
            if plus is not None:
                self._walk(plus, levels, depth + 1, dollar, normal, shared)

    @staticmethod
    def _collect(
        node: _Node,
        levels: list[str],
        normal: list[tuple[str, Any]],
        shared: list[SharedGroup],
    ) -> None:
        if node.subscribers:
            normal.extend(node.subscribers.items())
        if node.shared:
            shared.extend(node.shared.values())


Match = Tuple[List[Tuple[str, Any]], List[SharedGroup]]
