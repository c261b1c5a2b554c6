"""Topic matching: ``topics.matches`` and ``topics.SubscriptionTree`` (sections 4.7 and 4.8).

* ``matches(filter, topic)``: ``+`` matches exactly one level (possibly empty), ``#`` any number
  of levels including the parent level [MQTT-4.7.1-1 (3.1.1), MQTT-4.7.1-2 (3.1.1)], no
  normalisation [MQTT-4.7.3-4], topics starting with ``$`` never matched by a filter starting
  with a wildcard [MQTT-4.7.2-1].
* ``SubscriptionTree``: add/replace/remove per client id, the same matches as ``matches`` for
  normal subscriptions and shared groups ``$share/{name}/{filter}`` [MQTT-4.8.2-1, MQTT-4.8.2-2],
  the match cache invalidated by every change, empty branches pruned on removal.
* A property test: ``tree.match`` agrees with a brute-force ``matches`` over random filters and
  topics; another one: ``RetainedIndex.match`` agrees with it too, after random stores and
  deletions, and prunes its empty branches.
* Topics of thousands of levels are matched and removed without recursion; the level limit
  (``maximum_topic_levels``) is checked in one place, ``levels_within``.

Every label cited in this module is checked to exist in the specification text
(``test_cited_labels_exist``); a label followed by "(3.1.1)" is one of MQTT 3.1.1, any other
one of MQTT 5.0.
"""

from __future__ import annotations

import sys
from typing import Dict, List, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spec import check_cited_labels
from twisted_mqtt.errors import ProtocolError, TopicFilterInvalid, TopicNameInvalid
from twisted_mqtt.topics import (
    RetainedIndex,
    SubscriptionTree,
    levels_within,
    matches,
    split_shared,
    validate_topic_filter,
    validate_topic_name,
)


def _normal(tree: SubscriptionTree, topic: str) -> Dict[str, object]:
    """The normal (non-shared) subscribers matching ``topic``: client id -> entry."""
    normal, _ = tree.match(topic)
    return dict(normal)


def _groups(tree: SubscriptionTree, topic: str) -> Dict[str, Set[str]]:
    """The shared groups matching ``topic``: their ``$share/...`` filter -> member ids."""
    _, shared = tree.match(topic)
    return {group.topic_filter: set(group.members) for group in shared}


# -- matches() -----------------------------------------------------------------------------------

MATCHES = [
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a", False),
    ("a", "a/b", False),
    # single level wildcard
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),  # an empty level is a level
    ("+/b", "a/b", True),
    ("+/+", "/b", True),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "/a", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    # multi level wildcard, including the parent level
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("a/#", "a", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("+/#", "a", True),
    # no normalisation
    ("a/b", "A/b", False),
    ("a//b", "a/b", False),
    ("a//b", "a//b", True),
    ("a/b/", "a/b", False),
    ("a/b ", "a/b", False),
    # $ topics
    ("#", "$SYS/broker", False),
    ("+/broker", "$SYS/broker", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+/uptime", "$SYS/broker/uptime", True),
    ("a/+", "a/$b", True),  # only a leading $ is special
    ("a/#", "a/$b", True),
]


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHES)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    """``+`` matches one whole level, ``#`` the parent and any child levels [MQTT-4.7.1-1
    (3.1.1), MQTT-4.7.1-2 (3.1.1)]; levels are compared character for character
    [MQTT-4.7.3-4, MQTT-4.7.3-4 (3.1.1)]; a filter starting with a wildcard never matches a
    ``$`` topic [MQTT-4.7.2-1]."""
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHES)
def test_tree_agrees_with_matches_table(topic_filter: str, topic: str, expected: bool) -> None:
    """The tree gives the same answers as ``matches`` on the table above, for normal and shared
    subscriptions [MQTT-4.7.2-1, MQTT-4.7.3-4]."""
    tree = SubscriptionTree()
    tree.add(topic_filter, "c", "entry")
    tree.add("$share/g/" + topic_filter, "m", "shared entry")
    assert ("c" in _normal(tree, topic)) is expected
    groups = _groups(tree, topic)
    assert (groups == {"$share/g/" + topic_filter: {"m"}}) is expected
    assert expected or groups == {}


# -- split_shared ---------------------------------------------------------------------------------


def test_split_shared() -> None:
    """``$share/{ShareName}/{filter}`` splits into its share name and filter; a missing or
    wildcard share name, or a missing filter, is a Protocol Error [MQTT-4.8.2-1,
    MQTT-4.8.2-2]."""
    assert split_shared("a/b") == (None, "a/b")
    assert split_shared("$share/g/a/#") == ("g", "a/#")
    assert split_shared("$share/g/+") == ("g", "+")
    assert split_shared("$shared/g/a") == (None, "$shared/g/a")
    for bad in ("$share//a", "$share/g", "$share/g/", "$share/+/a", "$share/#/a", "$share/a#/b"):
        with pytest.raises(ProtocolError):
            split_shared(bad)


# -- SubscriptionTree -----------------------------------------------------------------------------


def test_tree_add_replace_remove() -> None:
    """``add`` tells a new subscription from a replaced one and ``remove`` an existing one from
    an unknown one (the broker uses both for Retain Handling 1 [MQTT-3.3.1-10] and UNSUBACK
    [MQTT-3.10.4-1]); ``count`` follows."""
    tree = SubscriptionTree()
    assert tree.add("a/b", "c1", 1) is True
    assert tree.add("a/b", "c2", 2) is True
    assert tree.add("a/b", "c1", 3) is False  # replaced [MQTT-3.8.4-3]
    assert tree.count == 2
    assert _normal(tree, "a/b") == {"c1": 3, "c2": 2}
    assert tree.remove("a/b", "c1") is True
    assert tree.remove("a/b", "c1") is False
    assert tree.remove("a/c", "c2") is False
    assert tree.remove("x/y/z", "c2") is False
    assert tree.count == 1
    assert _normal(tree, "a/b") == {"c2": 2}


def test_tree_wildcards() -> None:
    """``+`` and ``#`` in the tree, ``#`` matching the parent level [MQTT-4.7.1-1 (3.1.1),
    MQTT-4.7.1-2 (3.1.1)]."""
    tree = SubscriptionTree()
    for client_id, topic_filter in [("exact", "a/b/c"), ("plus", "a/+/c"), ("hash", "a/#"),
                                    ("all", "#"), ("plus2", "+/+"), ("plushash", "+/b/#")]:
        tree.add(topic_filter, client_id, topic_filter)
    assert set(_normal(tree, "a/b/c")) == {"exact", "plus", "hash", "all", "plushash"}
    assert set(_normal(tree, "a/b")) == {"hash", "all", "plus2", "plushash"}
    assert set(_normal(tree, "a")) == {"hash", "all"}
    assert set(_normal(tree, "x/b")) == {"all", "plus2", "plushash"}
    assert set(_normal(tree, "x/y/c")) == {"all"}
    assert set(_normal(tree, "a/x/c/d")) == {"hash", "all"}


def test_tree_dollar_topics() -> None:
    """Filters starting with ``#`` or ``+`` do not match topics starting with ``$``; filters
    naming the ``$`` level do [MQTT-4.7.2-1]."""
    tree = SubscriptionTree()
    tree.add("#", "all", 0)
    tree.add("+/broker/#", "plus", 0)
    tree.add("$SYS/#", "sys", 0)
    tree.add("$SYS/+/uptime", "uptime", 0)
    tree.add("$share/g/#", "shared-all", 0)
    tree.add("$share/g/$SYS/#", "shared-sys", 0)
    assert set(_normal(tree, "$SYS/broker/uptime")) == {"sys", "uptime"}
    assert set(_normal(tree, "$SYS")) == {"sys"}
    assert _groups(tree, "$SYS/broker/uptime") == {"$share/g/$SYS/#": {"shared-sys"}}
    assert set(_normal(tree, "x/broker/uptime")) == {"all", "plus"}
    assert _groups(tree, "x") == {"$share/g/#": {"shared-all"}}


def test_tree_shared_groups() -> None:
    """Shared subscriptions are grouped by share name and filter [MQTT-4.8.2-1, MQTT-4.8.2-2]:
    one group object per ``$share/{name}/{filter}`` holding its members, apart from the normal
    subscriptions on the same filter; a group disappears with its last member."""
    tree = SubscriptionTree()
    assert tree.add("$share/g1/a/+", "m1", "e1") is True
    assert tree.add("$share/g1/a/+", "m2", "e2") is True
    assert tree.add("$share/g2/a/+", "m1", "e3") is True
    assert tree.add("$share/g1/a/#", "m3", "e4") is True
    assert tree.add("a/+", "m1", "normal") is True
    assert tree.add("$share/g1/a/+", "m1", "e1'") is False
    assert tree.count == 5
    normal, shared = tree.match("a/b")
    assert normal == [("m1", "normal")]
    by_filter = {group.topic_filter: dict(group.members) for group in shared}
    assert by_filter == {
        "$share/g1/a/+": {"m1": "e1'", "m2": "e2"},
        "$share/g2/a/+": {"m1": "e3"},
        "$share/g1/a/#": {"m3": "e4"},
    }
    assert _groups(tree, "a") == {"$share/g1/a/#": {"m3"}}
    assert tree.remove("$share/g1/a/+", "m3") is False
    assert tree.remove("$share/g9/a/+", "m1") is False
    assert tree.remove("$share/g2/a/+", "m1") is True
    assert "$share/g2/a/+" not in _groups(tree, "a/b")
    assert tree.remove("$share/g1/a/+", "m1") is True
    assert tree.remove("$share/g1/a/+", "m2") is True
    assert set(_groups(tree, "a/b")) == {"$share/g1/a/#"}
    assert _normal(tree, "a/b") == {"m1": "normal"}


def test_tree_removal_prunes() -> None:
    """Removing the last subscription under a branch removes the now empty nodes, so the trie
    does not grow with subscriptions that come and go."""
    tree = SubscriptionTree()
    tree.add("a/b/c/d", "c1", 0)
    tree.add("a/b", "c2", 0)
    tree.add("$share/g/a/b/x", "c3", 0)
    tree.remove("a/b/c/d", "c1")
    root = tree._root
    node_b = root.children["a"].children["b"]
    assert set(node_b.children) == {"x"}
    tree.remove("$share/g/a/b/x", "c3")
    assert node_b.children == {}
    assert node_b.shared == {}
    tree.remove("a/b", "c2")
    assert root.children == {}
    assert tree.count == 0
    assert tree.match("a/b") == ([], [])


def test_tree_cache_invalidated() -> None:
    """A cached match is not served after a subscription is added, replaced or removed."""
    tree = SubscriptionTree()
    assert tree.match("a/b") == ([], [])
    tree.add("a/#", "c1", 1)
    assert _normal(tree, "a/b") == {"c1": 1}
    tree.add("a/#", "c1", 2)
    assert _normal(tree, "a/b") == {"c1": 2}
    tree.add("$share/g/a/b", "c2", 3)
    assert _groups(tree, "a/b") == {"$share/g/a/b": {"c2"}}
    tree.remove("a/#", "c1")
    assert _normal(tree, "a/b") == {}
    tree.remove("$share/g/a/b", "c2")
    assert tree.match("a/b") == ([], [])


def test_tree_cache_limit() -> None:
    """The match cache is bounded: it is emptied when it reaches its limit."""
    tree = SubscriptionTree(cache_limit=3)
    tree.add("#", "c", 0)
    for i in range(10):
        assert _normal(tree, f"t/{i}") == {"c": 0}
        assert len(tree._cache) <= 3


# -- property test ------------------------------------------------------------------------------

_LEVELS = ["a", "b", "", "$x", "a$"]
_topics = st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4).map("/".join)


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(_LEVELS + ["+", "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    plain = "/".join(levels) or "+"  # a filter is at least one character long [MQTT-4.7.3-1]
    if draw(st.integers(0, 4)) == 0:
        return "$share/" + draw(st.sampled_from(["g", "h"])) + "/" + plain
    return plain


@settings(max_examples=300, deadline=None)
@given(
    subscriptions=st.lists(st.tuples(_filters(), st.sampled_from(["c1", "c2", "c3", "c4"])),
                           max_size=12),
    removals=st.lists(st.integers(0, 11), max_size=6),
    topics=st.lists(_topics, min_size=1, max_size=6),
)
def test_tree_match_agrees_with_brute_force(subscriptions: List[Tuple[str, str]],
                                            removals: List[int], topics: List[str]) -> None:
    """For random filters (with ``+``, ``#``, ``$`` levels and shared groups), after random
    removals, ``tree.match(topic)`` finds exactly the subscriptions ``matches`` accepts
    [MQTT-4.7.2-1, MQTT-4.7.3-4].
    The broker routes by this tree, so a topic is sent only on a matching filter
    [MQTT-3.3.2-3, MQTT-3.3.2-3 (3.1.1), MQTT-4.7.3-4 (3.1.1)]."""
    tree = SubscriptionTree()
    live: Dict[Tuple[str, str], int] = {}
    for index, (topic_filter, client_id) in enumerate(subscriptions):
        assert tree.add(topic_filter, client_id, index) is ((topic_filter, client_id) not in live)
        live[(topic_filter, client_id)] = index
    keys = list(live)
    for removal in removals:
        if removal < len(keys):
            key = keys[removal]
            assert tree.remove(*key) is (key in live)
            live.pop(key, None)
    assert tree.count == len(live)
    for topic in topics:
        normal, shared = tree.match(topic)
        expected_normal = sorted(index for (f, c), index in live.items()
                                 if split_shared(f)[0] is None and matches(f, topic))
        assert sorted(index for _, index in normal) == expected_normal
        owner = {index: c for (f, c), index in live.items()}
        assert all(owner[index] == c for c, index in normal)
        got_shared = {(g.topic_filter, c): index for g in shared for c, index in g.members.items()}
        expected_shared = {(f, c): index for (f, c), index in live.items()
                           if split_shared(f)[0] is not None and matches(split_shared(f)[1], topic)}
        assert got_shared == expected_shared
        assert len({g.topic_filter for g in shared}) == len(shared)


@settings(max_examples=300, deadline=None)
@given(
    stored=st.lists(st.tuples(_topics, st.booleans()), max_size=15),
    filters=st.lists(_filters().filter(lambda f: not f.startswith("$share/")), min_size=1,
                     max_size=6),
)
def test_retained_index_agrees_with_brute_force(stored: List[Tuple[str, bool]],
                                                filters: List[str]) -> None:
    """For random stores (True) and deletions (False), ``RetainedIndex.match(filter)`` finds
    exactly the topics ``matches`` accepts [MQTT-4.7.2-1, MQTT-4.7.1-2 (3.1.1)], without
    duplicates; it stays a mapping equal to a plain dict, and deleting everything leaves no
    level behind."""
    index: RetainedIndex[str] = RetainedIndex()
    plain: Dict[str, str] = {}
    for topic, store in stored:
        if store:
            index[topic] = plain[topic] = topic
        elif topic in plain:
            del index[topic], plain[topic]
    assert index == plain and len(index) == len(plain) and list(index) == list(plain)
    for topic_filter in filters:
        expected = sorted(t for t in plain if matches(topic_filter, t))
        assert sorted(index.match(topic_filter)) == expected
    for topic in list(plain):
        del index[topic]
    assert index == {} and not index._root.children


DEEP = "a/" * (sys.getrecursionlimit() + 200) + "b"


def test_tree_deep_topics() -> None:
    """A subscription tree and a retained index hold, match and remove topics of more levels
    than the interpreter lets a function recurse."""
    tree = SubscriptionTree()
    filters = [DEEP, DEEP[:-1] + "+", "+/" + DEEP[2:], "a/#"]
    for topic_filter in filters:
        tree.add(topic_filter, topic_filter, topic_filter)
    assert sorted(_normal(tree, DEEP)) == sorted(filters)
    for topic_filter in filters:
        assert tree.remove(topic_filter, topic_filter)
    assert tree.match(DEEP) == ([], []) and not tree._root.children
    index: RetainedIndex[int] = RetainedIndex()
    index[DEEP] = 1
    assert [index.match(f) for f in filters] == [[1]] * 4
    del index[DEEP]
    assert not index._root.children


def test_level_limit() -> None:
    """``levels_within`` counts levels (``/`` separators plus one, empty levels included); the
    validators raise the right error past a limit, and a shared filter's levels are counted
    after ``$share/{name}/``."""
    assert levels_within("a/b/c", 3) and not levels_within("a/b/c", 2)
    assert levels_within("/", 2) and not levels_within("//", 2)
    validate_topic_name("a/b", 2)
    with pytest.raises(TopicNameInvalid, match="more than 2 levels"):
        validate_topic_name("a/b/c", 2)
    validate_topic_filter("$share/g/a/#", 2)
    with pytest.raises(TopicFilterInvalid, match="more than 2 levels"):
        validate_topic_filter("a/+/#", 2)
    validate_topic_filter("a/+/#")  # no limit given


# -- cited labels -------------------------------------------------------------------------------


def test_cited_labels_exist() -> None:
    """Each label cited in this module names a normative statement of the specification."""
    check_cited_labels(sys.modules[__name__])
