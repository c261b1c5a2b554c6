"""An epoll reactor that hands ready sockets straight to their transports.

Twisted's ``EPollReactor`` wraps every readiness event in ``log.callWithLogger``, which builds
and pushes a legacy logging context (the ``system`` prefix of ``twisted.python.log`` messages)
around each ``doRead`` and ``doWrite``: a few microseconds per event, a large share of a small
packet's cost when many clients each send a little.  ``MQTTReactor`` handles a plain "readable"
or "writable" event by calling ``doRead`` or ``doWrite`` itself, with Twisted's error handling
(an exception is logged as an unhandled error with the selectable's log prefix and disconnects
it); every other event (hang-up, error, both directions at once, a closed descriptor) goes
through Twisted's own path.  Everything else is Twisted's epoll reactor.

What it changes: legacy ``twisted.python.log`` messages emitted while a socket is read or
written carry no ``system`` prefix unless they pass one.  The broker logs through
``twisted.logger`` with its own namespaces and fields, so its log lines are the same.

``python -m twisted_mqtt`` installs it on Linux; ``twistd --reactor=mqtt`` selects it (the
plugin in ``twisted/plugins/twisted_mqtt_plugin.py``); an application embedding the broker
calls ``twisted_mqtt.reactor.install()`` before anything imports ``twisted.internet.reactor``.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Optional

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.python import log

_READABLE = select.EPOLLIN
_WRITABLE = select.EPOLLOUT


class MQTTReactor(EPollReactor):
    """``EPollReactor`` without the per-event logging context on plain reads and writes."""

    def doPoll(self, timeout: Optional[float]) -> None:
        """Wait for events (at most ``timeout`` seconds, or for ever if None) and handle them."""
        try:
            events = self._poller.poll(-1 if timeout is None else timeout,
                                       len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            reading = event == _READABLE
            if not reading and event != _WRITABLE:
                log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                continue
            try:
                if selectable.fileno() == -1:  # closed under us: Twisted's path disconnects it
                    self._doReadOrWrite(selectable, fd, event)
                    continue
                why = selectable.doRead() if reading else selectable.doWrite()
            except BaseException:
                why = sys.exc_info()[1]
                log.err(system=_log_prefix(selectable))
            if why:
                self._disconnectSelectable(selectable, why, reading)

    doIteration = doPoll  # what the main loop calls (EPollReactor aliases it the same way)


def _log_prefix(selectable: object) -> str:
    """The selectable's log prefix, as ``log.callWithLogger`` would have set it."""
    try:
        return str(selectable.logPrefix())  # type: ignore[attr-defined]
    except Exception:
        return "(buggy logPrefix method)"


def install() -> MQTTReactor:
    """Install an ``MQTTReactor`` as the global reactor and return it.  Call it before anything
    imports ``twisted.internet.reactor`` (else ``ReactorAlreadyInstalledError``)."""
    reactor = MQTTReactor()
    installReactor(reactor)
    return reactor
