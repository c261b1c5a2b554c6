"""Topic names and topic filters: validation and matching rules of section 4.7 and 4.8."""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Any, Callable, Dict, Iterator, List, MutableMapping, Optional, Tuple, TypeVar

from twisted_mqtt.errors import ProtocolError, TopicFilterInvalid, TopicNameInvalid

SHARE_PREFIX = "$share/"

V = TypeVar("V")


def levels_within(topic: str, maximum_levels: int) -> bool:
    """Whether a topic name, or a filter without its ``$share/{name}/`` prefix, has at most
    ``maximum_levels`` levels (``Capabilities.maximum_topic_levels``)."""
    return topic.count("/") < maximum_levels


def validate_topic_name(topic: str, maximum_levels: Optional[int] = None) -> None:
    """Raise ``TopicNameInvalid`` unless ``topic`` is a usable (non-empty) topic name of at
    most ``maximum_levels`` levels (no limit when None)."""
    if "+" in topic or "#" in topic:
        raise TopicNameInvalid(f"wildcard in topic name {topic!r}", "MQTT-3.3.2-2")
    if maximum_levels is not None and not levels_within(topic, maximum_levels):
        raise TopicNameInvalid(f"topic name of more than {maximum_levels} levels")


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


def validate_topic_filter(topic_filter: str, maximum_levels: Optional[int] = None) -> None:
    """Raise ``TopicFilterInvalid`` (or ``ProtocolError`` for a bad share) for a bad filter or
    one of more than ``maximum_levels`` levels (no limit when None)."""
    if not topic_filter:
        raise TopicFilterInvalid("empty topic filter", "MQTT-4.7.3-1")
    _, plain = split_shared(topic_filter)
    if maximum_levels is not None and not levels_within(plain, maximum_levels):
        raise TopicFilterInvalid(f"topic filter of more than {maximum_levels} levels")
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


N = TypeVar("N", "_Node", "_Level")


def _descend(root: N, topic: str, make: Callable[[], N]) -> N:
    """The node of ``topic``'s levels below ``root``, made (with ``make``) where missing."""
    node = root
    for level in topic.split("/"):
        child = node.children.get(level)
        if child is None:
            child = node.children[level] = make()
        node = child
    return node


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
        node = _descend(self._root, plain, _Node)
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

    def group(self, topic_filter: str) -> Optional[SharedGroup]:
        """The members of the shared subscription ``topic_filter`` (``$share/GROUP/FILTER``),
        or None when it has none."""
        group, plain = split_shared(topic_filter)
        node: Optional[_Node] = self._root
        for level in plain.split("/"):
            node = node.children.get(level) if node is not None else None
        return node.shared.get(group) if node is not None and group is not None else None

    def match(self, topic: str) -> Match:
        """Entries of the subscriptions matching ``topic``: ``(normal, shared)``."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        normal: list[tuple[str, Any]] = []
        shared: list[SharedGroup] = []
        levels = topic.split("/")
        last = len(levels)
        dollar = topic.startswith("$")
        # Depth first, without recursion (a topic may have thousands of levels): at each node
        # the ``#`` child, then the exact child's subtree, then the ``+`` child's (kept on
        # ``stack`` meanwhile).
        stack: list[Any] = []
        node = self._root
        depth = 0
        while True:
            children = node.children
            if children:
                wild = depth or not dollar  # [MQTT-4.7.2-1]
                if wild:
                    hash_node = children.get("#")
                    if hash_node is not None:
                        if hash_node.subscribers:
                            normal.extend(hash_node.subscribers.items())
                        if hash_node.shared:
                            shared.extend(hash_node.shared.values())
                if depth < last:
                    if wild:
                        plus = children.get("+")
                        if plus is not None:
                            stack.append((plus, depth + 1))
                    child = children.get(levels[depth])
                    if child is not None:
                        node = child
                        depth += 1
                        continue
                    if not stack:
                        break
                    node, depth = stack.pop()
                    continue
            if depth == last:
                if node.subscribers:
                    normal.extend(node.subscribers.items())
                if node.shared:
                    shared.extend(node.shared.values())
            if not stack:
                break
            node, depth = stack.pop()
        result = (normal, shared)
        if len(self._cache) >= self._cache_limit:
            self._cache.clear()
        self._cache[topic] = result
        return result


Match = Tuple[List[Tuple[str, Any]], List[SharedGroup]]


class _Level:
    __slots__ = ("children", "topic")

    def __init__(self) -> None:
        self.children: Dict[str, _Level] = {}
        self.topic: Optional[str] = None  # set when a value is stored under this topic


class RetainedIndex(MutableMapping[str, V]):
    """Values (retained messages) by topic name, also indexed by level, so that ``match``
    costs what the filter reaches rather than what is stored; with ``deadline`` (a value's
    expiry time, or None), also by deadline, so that ``pop_expired`` costs what expires."""

    __slots__ = ("_values", "_root", "visited", "_deadline", "_deadlines")

    def __init__(self, deadline: Optional[Callable[[V], Optional[float]]] = None) -> None:
        self._values: Dict[str, V] = {}
        self._root = _Level()
        self.visited = 0
        """How many levels ``match`` has visited so far (a measure of its work)."""
        self._deadline = deadline
        self._deadlines: List[Tuple[float, str]] = []  # a heap; entries of replaced values stay

    def __getitem__(self, topic: str) -> V:
        return self._values[topic]

    def get(self, topic: str, default: Any = None) -> Any:
        return self._values.get(topic, default)

    def __contains__(self, topic: object) -> bool:
        return topic in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __setitem__(self, topic: str, value: V) -> None:
        if topic not in self._values:
            _descend(self._root, topic, _Level).topic = topic
        self._values[topic] = value
        if self._deadline is not None:
            at = self._deadline(value)
            if at is not None:
                deadlines = self._deadlines
                heappush(deadlines, (at, topic))
                if len(deadlines) > 2 * len(self._values) + 64:  # drop stale entries
                    values = self._values
                    deadlines[:] = [(t, k) for t, k in deadlines
                                    if k in values and self._deadline(values[k]) == t]
                    heapify(deadlines)

    def pop_expired(self, now: float) -> List[str]:
        """Remove the values whose deadline is ``now`` or earlier; return their topics."""
        expired: List[str] = []
        deadlines = self._deadlines
        deadline = self._deadline
        values = self._values
        while deadlines and deadlines[0][0] <= now:
            at, topic = heappop(deadlines)
            value = values.get(topic)
            if value is not None and deadline is not None and deadline(value) == at:
                del self[topic]
                expired.append(topic)
        return expired

    def __delitem__(self, topic: str) -> None:
        del self._values[topic]
        levels = topic.split("/")
        path = [self._root]
        for level in levels:
            path.append(path[-1].children[level])
        path[-1].topic = None
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.children or node.topic is not None:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def match(self, topic_filter: str) -> List[V]:
        """The values stored under the topics that match the (non-shared) ``topic_filter``."""
        if "+" not in topic_filter and "#" not in topic_filter:
            self.visited += 1
            found = self._values.get(topic_filter)
            return [] if found is None else [found]
        levels = topic_filter.split("/")
        last = len(levels)
        topics: List[str] = []
        stack: List[Tuple[_Level, int]] = [(self._root, 0)]
        visited = 0
        while stack:
            node, depth = stack.pop()
            visited += 1
            if depth == last:
                if node.topic is not None:
                    topics.append(node.topic)
                continue
            level = levels[depth]
            if level == "#":  # this level (``a/#`` covers ``a``) and every one below
                subtree = [(name, child) for name, child in reversed(node.children.items())
                           if depth or not name.startswith("$")]  # [MQTT-4.7.2-1]
                if node.topic is not None:
                    topics.append(node.topic)
                while subtree:
                    _, below = subtree.pop()
                    visited += 1
                    if below.topic is not None:
                        topics.append(below.topic)
                    subtree.extend(reversed(below.children.items()))
            elif level == "+":
                for name, child in reversed(node.children.items()):
                    if depth or not name.startswith("$"):
                        stack.append((child, depth + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, depth + 1))
        self.visited += visited
        values = self._values
        return [values[topic] for topic in topics]
