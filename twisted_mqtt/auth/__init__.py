"""Authentication and authorisation hooks shipped with the broker."""

from __future__ import annotations

import ipaddress

from zope.interface import implementer

from twisted_mqtt.interfaces import ClientInfo, ConnectRequest, IAuthenticator, IAuthorizer


@implementer(IAuthenticator)
class DenyAll:
    """Refuses every connection: the library's default until an authenticator is installed."""

    def authenticate(self, request: ConnectRequest) -> bool:
        """Refuse."""
        return False


@implementer(IAuthenticator)
class AllowAll:
    """Accepts every connection (``--allow-anonymous``)."""

    def authenticate(self, request: ConnectRequest) -> bool:
        """Accept."""
        return True


def is_local(address: str | None) -> bool:
    """Whether a peer address is loopback or a local (Unix socket / in-memory) peer."""
    if address is None:
        return True
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@implementer(IAuthenticator)
class LocalOnly:
    """Accepts clients from loopback addresses and Unix sockets only: the command line's default
    without authentication configuration, as in Mosquitto 2."""

    def authenticate(self, request: ConnectRequest) -> bool:
        """Accept local peers."""
        address = request.client.address
        if address is not None and address.startswith("::ffff:"):
            address = address[7:]
        return is_local(address)


@implementer(IAuthorizer)
class AllowAllTopics:
    """Lets every client publish and subscribe to every topic (but ``$SYS``, which the broker
    itself keeps read-only)."""

    def may_publish(self, client: ClientInfo, topic: str) -> bool:
        """Allow."""
        return True

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> bool:
        """Allow."""
        return True

    def may_receive(self, client: ClientInfo, topic: str) -> bool:
        """Allow."""
        return True


@implementer(IAuthenticator)
class Anonymous:
    """Accepts clients that give neither a user name nor a password, and has no opinion about
    the others (``--allow-anonymous`` next to other authentication)."""

    def authenticate(self, request: ConnectRequest) -> bool | None:
        """Accept anonymous clients."""
        if request.client.username is None and request.password is None:
            return True
        return None
