"""``python -m twisted_mqtt [options]``: run the broker in the foreground, as ``twistd -n mqtt``."""

from __future__ import annotations

import select
import sys
from typing import TYPE_CHECKING, Callable, List, Optional

from twisted.python import usage

if TYPE_CHECKING:
    from twisted_mqtt.service import BrokerService

PROGRAM = "python -m twisted_mqtt"


def main(argv: Optional[List[str]] = None,
         configure: Optional[Callable[[BrokerService], None]] = None) -> int:
    """Parse options, start the broker and run the reactor until it stops; ``configure`` may
    adjust the service (install hooks, say) before it starts.  On Linux the reactor is
    ``twisted_mqtt.reactor.MQTTReactor`` unless one is installed already."""
    if "twisted.internet.reactor" not in sys.modules and hasattr(select, "epoll"):
        from twisted_mqtt.reactor import install

        install()
    from twisted.logger import globalLogBeginner

    from twisted_mqtt.config import CONFIG_ERROR_EXIT, log_output, option_error
    from twisted_mqtt.tap import Options, makeService
    from twisted_mqtt.workers import Supervisor

    options = Options()
    options.synopsis = f"Usage: {PROGRAM} [options]"
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:  # one line, the same status as ``twistd mqtt``
        line, status = option_error(error, PROGRAM)
        print(line, file=sys.stderr)
        return status
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([log_output(options).start(reactor)])

    service = makeService(options, reactor)
    if configure is not None:
        if isinstance(service, Supervisor):  # the workers would run without it
            print(f"{PROGRAM}: configuration error: --workers starts `python -m twisted_mqtt` "
                  "processes, which this program's configuration of the broker would not "
                  "reach", file=sys.stderr)
            return CONFIG_ERROR_EXIT
        configure(service)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
