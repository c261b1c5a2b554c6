"""The settings of MQTT bridges: Mosquitto's topic rules, what a ``bridges:`` entry of the
configuration file holds, and the ``--bridge``, ``--bridge-topic`` and ``--bridge-option``
options (``twisted_mqtt.bridges.mqtt`` runs the bridges)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Tuple

from twisted_mqtt._value import value
from twisted_mqtt.config import (
    Boolean,
    Check,
    Integer,
    Invalid,
    ListOf,
    Maybe,
    Text,
    _shown,
    _unknown,
    endpoint_files,
)
from twisted_mqtt.errors import CodecError
from twisted_mqtt.topics import matches, validate_topic_filter

DIRECTIONS = ("out", "in", "both")
PROTOCOLS = {"3.1.1": 4, "5": 5}
"""The protocol versions a bridge speaks to its remote, by name: the MQTT protocol level."""
DEFAULT_QUEUE_MESSAGES = 10_000
DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024
DEFAULT_INFLIGHT = 100


class RuleError(ValueError):
    """A topic rule that cannot be used; its text says why and what is expected."""


@value
class TopicRule:
    """One ``topic`` rule of a bridge, as Mosquitto's ``topic pattern [[[out|in|both] qos]
    local-prefix remote-prefix]``: a message on ``local_prefix + X`` here, X matching
    ``pattern``, is ``remote_prefix + X`` there, and the other way round."""

    pattern: str
    direction: str = "out"
    qos: int = 0
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def local_filter(self) -> str:
        """The filter subscribed to here (``out`` and ``both``)."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """The filter subscribed to on the remote (``in`` and ``both``)."""
        return self.remote_prefix + self.pattern

    @property
    def exports(self) -> bool:
        """Whether messages published here go to the remote."""
        return self.direction != "in"

    @property
    def imports(self) -> bool:
        """Whether messages published on the remote come here."""
        return self.direction != "out"

    def to_remote(self, topic: str) -> str:
        """The remote topic of ``topic`` (a topic matching ``local_filter``)."""
        return self.remote_prefix + topic[len(self.local_prefix):]

    def to_local(self, topic: str) -> Optional[str]:
        """The local topic of a remote ``topic``, or None if this rule does not import it."""
        if not self.imports or not matches(self.remote_filter, topic):
            return None
        return self.local_prefix + topic[len(self.remote_prefix):]

    def __str__(self) -> str:
        return " ".join(_quoted(part) for part in (self.pattern, self.direction, str(self.qos),
                                                    self.local_prefix, self.remote_prefix))


def _quoted(word: str) -> str:
    return word if word else '""'


def make_rule(pattern: str, direction: str = "out", qos: int = 0, local_prefix: str = "",
              remote_prefix: str = "") -> TopicRule:
    """A checked rule; ``RuleError`` saying what is wrong (Mosquitto's constraints: prefixes
    without wildcards, a pattern or a prefix given, both resulting filters valid)."""
    if direction not in DIRECTIONS:
        raise RuleError(f"direction must be out, in or both, not {direction!r}")
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise RuleError(f"QoS must be 0, 1 or 2, not {qos!r}")
    if (local_prefix + pattern).startswith("$share/") or (
            remote_prefix + pattern).startswith("$share/"):
        raise RuleError("a shared subscription ($share/) cannot be bridged")
    for which, prefix in (("local", local_prefix), ("remote", remote_prefix)):
        if "+" in prefix or "#" in prefix:
            raise RuleError(f"the {which} prefix {prefix!r} must not contain + or #")
    if not pattern and not (local_prefix and remote_prefix):
        raise RuleError('an empty pattern ("") needs both a local and a remote prefix (the '
                        "topics they name are mapped to each other)")
    rule = TopicRule(pattern, direction, qos, local_prefix, remote_prefix)
    for which, topic_filter in (("local", rule.local_filter), ("remote", rule.remote_filter)):
        try:
            validate_topic_filter(topic_filter)
        except CodecError as error:
            raise RuleError(f"the {which} filter {topic_filter!r} is not valid: {error}") from None
    return rule


def parse_rule(text: str) -> TopicRule:
    """A rule from Mosquitto's words ``pattern [direction [qos [local-prefix
    remote-prefix]]]``; ``""`` is an empty word.  ``RuleError`` if it cannot be used."""
    words = [("" if word == '""' else word) for word in text.split()]
    if not 1 <= len(words) <= 5 or len(words) == 4:
        raise RuleError(f"expected 'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]', "
                        f"not {text!r}")
    qos: Any = 0
    if len(words) >= 3:
        try:
            qos = int(words[2])
        except ValueError:
            qos = words[2]
    return make_rule(words[0], words[1] if len(words) >= 2 else "out", qos,
                     *(words[3:5] if len(words) == 5 else ()))


@dataclass(frozen=True)
class BridgeSettings:
    """Everything one bridge needs: what ``bridges:`` entries and ``--bridge`` options give."""

    name: str
    address: str
    """A Twisted client endpoint string, e.g. ``tcp:host=broker.example:port=1883`` or
    ``tls:broker.example:8883:trustRoots=/etc/ssl/ca:certificate=c.pem:privateKey=k.pem``."""
    topics: Tuple[TopicRule, ...] = ()
    client_id: Optional[str] = None
    """The client id on the remote (default: HOSTNAME.NAME, as Mosquitto's)."""
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    protocol: str = "5"
    clean_start: bool = False
    session_expiry: int = 3600
    """MQTT 5: seconds the remote keeps the bridge's session (subscriptions and QoS 1/2 messages
    for it) while it is away."""
    keepalive: int = 60
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    inflight: int = DEFAULT_INFLIGHT
    notifications: bool = True

    @property
    def protocol_level(self) -> int:
        """4 (MQTT 3.1.1) or 5."""
        return PROTOCOLS[self.protocol]

    @property
    def remote_client_id(self) -> str:
        """The client id the bridge connects with."""
        return self.client_id or f"{socket.gethostname()}.{self.name}"

    @property
    def local_id(self) -> str:
        """The client id of the bridge's messages here (excluded from its ``out`` rules)."""
        return f"$bridge/{self.name}"


# -- configuration: ``bridges:`` entries and the ``--bridge`` options ---------------------------


class BridgeName(Text):
    """A bridge's name: letters, digits, ``_``, ``-`` and ``.``."""

    expected = "a name of letters, digits, _, - and ."

    def __call__(self, value: Any) -> str:
        name = super().__call__(value)
        if not all(char.isascii() and (char.isalnum() or char in "_-.") for char in name):
            self.refuse(value)
        return name


CLIENT_FILE_ARGUMENTS = ("trustRoots", "certificate", "privateKey")
"""The arguments of a ``tls:`` client endpoint that name a CA directory, certificate or key."""


class ClientEndpoint(Text):
    """A Twisted client endpoint string Twisted can parse (its certificate files read)."""

    expected = ("a Twisted client endpoint string, e.g. tcp:host=broker.example:port=1883 or "
                "tls:broker.example:8883:trustRoots=/etc/ssl/ca")

    def __call__(self, value: Any) -> str:
        from twisted.internet import endpoints, reactor

        address = super().__call__(value)
        for name, path in endpoint_files(address, CLIENT_FILE_ARGUMENTS):
            try:
                if name == "trustRoots":
                    os.listdir(path)
                else:
                    with open(path, "rb"):
                        pass
            except OSError as error:
                what = ("a directory of CA certificates" if name == "trustRoots"
                        else "a readable certificate or key file")
                raise Invalid(f"cannot read {name}={path}: {error.strerror or error}; expected "
                              f"{what}") from None
        try:
            endpoints.clientFromString(reactor, address)
        except Exception as error:
            raise Invalid(f"bad endpoint {address!r}: {str(error) or type(error).__name__}; "
                          f"expected {self.expected}") from None
        return address


class Rule(Check):
    """A topic rule: Mosquitto's words, or a mapping of ``RULE_KEYS``."""

    expected = ("'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]' or {pattern, "
                "direction, qos, local_prefix, remote_prefix}")

    def __call__(self, value: Any) -> TopicRule:
        try:
            if isinstance(value, str):
                return parse_rule(value)
            if not isinstance(value, dict):
                self.refuse(value)
            for key in value:
                if key not in RULE_KEYS:
                    raise _unknown(key, list(RULE_KEYS))
            if "pattern" not in value:
                raise Invalid("missing pattern; expected e.g. pattern: sensors/#")
            fields: Dict[str, Any] = {key: ("" if item is None else item)
                                      for key, item in value.items()}
            return make_rule(**fields)
        except RuleError as error:
            raise Invalid(str(error)) from None


RULE_KEYS = ("pattern", "direction", "qos", "local_prefix", "remote_prefix")


class Secret(Text):
    """Text never shown in an error (a password)."""

    def refuse(self, value: Any) -> NoReturn:
        raise Invalid(f"expected {self.expected} (quoted, in YAML), not a "
                      f"{type(value).__name__}; the value is not shown")


class ProtocolName(Check):
    """3.1.1 or 5."""

    expected = "3.1.1 or 5"

    def __call__(self, value: Any) -> str:
        text = str(value) if isinstance(value, (str, int)) and value is not True else ""
        if text not in PROTOCOLS:
            self.refuse(value)
        return text


BRIDGE_KEYS: Dict[str, Tuple[Check, Any, str]] = {
    "name": (BridgeName(), None, "the bridge's name (required), in logs, $SYS and metrics"),
    "address": (ClientEndpoint(), None,
                "the remote broker (required): a Twisted client endpoint string (tcp:, tls: "
                "with trustRoots, certificate and privateKey, unix:)"),
    "topics": (ListOf(Rule(), "topic rules"), [],
               "topic rules: 'PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]' "
               "(Mosquitto's topic), or mappings of those five"),
    "client_id": (Maybe(Text()), None, "the client id on the remote; null: HOSTNAME.NAME"),
    "username": (Maybe(Text()), None, "the user name on the remote"),
    "password": (Maybe(Secret()), None, "the password on the remote"),
    "protocol": (ProtocolName(), "5", "the MQTT version spoken to the remote: 3.1.1 or 5"),
    "clean_start": (Boolean(), False,
                    "start a new session on the remote at each connection (false: the remote "
                    "keeps the bridge's subscriptions and QoS 1/2 messages while it is away)"),
    "session_expiry": (Integer(0, 0xFFFFFFFF), 3600,
                       "MQTT 5: seconds the remote keeps the bridge's session"),
    "keepalive": (Integer(0, 65535), 60, "keep alive with the remote, seconds"),
    "queue_messages": (Integer(0), DEFAULT_QUEUE_MESSAGES,
                       "outbound QoS 1/2 messages queued while the remote is down (more are "
                       "dropped)"),
    "queue_bytes": (Integer(0), DEFAULT_QUEUE_BYTES,
                    "topic and payload bytes of the outbound messages queued while the remote "
                    "is down"),
    "inflight": (Integer(1, 65535), DEFAULT_INFLIGHT,
                 "messages sent to the remote and not yet acknowledged, at most"),
    "notifications": (Boolean(), True,
                      "publish the retained state here: $SYS/broker/connection/NAME/state and "
                      "$SYS/broker/bridges/NAME/status"),
}
"""The keys of one ``bridges:`` entry: (check, default, meaning)."""


def check_bridge(entry: Any) -> BridgeSettings:
    """A bridge's settings from a ``bridges:`` entry; ``Invalid`` (with the key's path) for a
    mistake."""
    if not isinstance(entry, dict):
        raise Invalid(f"expected a mapping of {', '.join(BRIDGE_KEYS)}, not {_shown(entry)}")
    for key in entry:
        if key not in BRIDGE_KEYS:
            raise _unknown(key, list(BRIDGE_KEYS))
    values: Dict[str, Any] = {}
    for key, (check, default, _) in BRIDGE_KEYS.items():
        if default is None and key in ("name", "address") and key not in entry:
            raise Invalid(f"missing {key}; expected e.g. {key}: "
                          f"{'cloud' if key == 'name' else 'tcp:host=broker.example:port=1883'}")
        try:
            values[key] = check(entry.get(key, default))
        except Invalid as error:
            raise Invalid(error.problem, f".{key}{error.path}", error.key) from None
    values["topics"] = tuple(values["topics"])
    if not values["topics"]:
        raise Invalid("a bridge needs at least one topic rule", ".topics")
    return BridgeSettings(**values)


class Bridges(Check):
    """A list of ``bridges:`` entries, their names distinct."""

    expected = "a list of bridges, each a mapping of name, address, topics..."

    def __call__(self, value: Any) -> List[BridgeSettings]:
        if not isinstance(value, list):
            self.refuse(value)
        bridges: List[BridgeSettings] = []
        for index, entry in enumerate(value):
            try:
                bridge = check_bridge(entry)
            except Invalid as error:
                raise Invalid(error.problem, f"[{index}]{error.path}", error.key) from None
            if any(other.name == bridge.name for other in bridges):
                raise Invalid(f"a second bridge named {bridge.name!r}", f"[{index}].name")
            bridges.append(bridge)
        return bridges


TEXT_KEYS = ("client_id", "username", "password")
"""The keys whose ``--bridge-option`` value is taken as it is written (not read as YAML)."""


def _yaml_scalar(text: str) -> Any:
    """``text`` read as a YAML scalar (``true``, ``5``, ``3.1.1``), or as it is."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def bridges_from_options(addresses: List[str], topics: List[str],
                         settings: List[str]) -> List[BridgeSettings]:
    """The bridges ``--bridge NAME=ADDRESS``, ``--bridge-topic NAME=RULE`` and
    ``--bridge-option NAME.KEY=VALUE`` give; ``ConfigError`` naming the option for a mistake."""
    from twisted_mqtt.config import ConfigError

    def split(item: str, option: str, shape: str) -> Tuple[str, str]:
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ConfigError(f"expected {shape}, not {item!r}", path=f"--{option}")
        return name, text

    entries: Dict[str, Dict[str, Any]] = {}
    for item in addresses:
        name, address = split(item, "bridge", "NAME=ADDRESS")
        if name in entries:
            raise ConfigError(f"a second bridge named {name!r}", path="--bridge")
        entries[name] = {"name": name, "address": address, "topics": []}
    for option, items, shape in (("bridge-topic", topics, "NAME=RULE"),
                                 ("bridge-option", settings, "NAME.KEY=VALUE")):
        for item in items:
            name, text = split(item, option, shape)
            name, dot, key = name.partition(".")
            if (option == "bridge-option") != bool(dot and key):
                raise ConfigError(f"expected {shape}, not {item!r}", path=f"--{option}")
            entry = entries.get(name)
            if entry is None:
                raise ConfigError(f"no --bridge {name}=ADDRESS for {item!r}", path=f"--{option}")
            if option == "bridge-topic":
                entry["topics"].append(text)
            else:
                entry[key] = text if key in TEXT_KEYS else _yaml_scalar(text)
    bridges = []
    for name, entry in entries.items():
        try:
            bridges.append(check_bridge(entry))
        except Invalid as error:
            raise ConfigError(error.problem, path=f"--bridge {name}{error.path}") from None
    return bridges
