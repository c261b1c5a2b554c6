"""Topic names and topic filters: validation and matching rules of section 4.7 and 4.8."""

from __future__ import annotations

from typing import Optional, Tuple

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
