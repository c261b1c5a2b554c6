"""``python -m twisted_mqtt [options]``: run the broker in the foreground, as ``twistd -n mqtt``."""

from __future__ import annotations

import sys
from typing import List, Optional

from twisted.python import usage


def main(argv: Optional[List[str]] = None) -> int:
    """Parse options, start the broker and run the reactor until it stops."""
    from twisted.logger import globalLogBeginner

    from twisted_mqtt.logs import text_log_observer
    from twisted_mqtt.tap import Options, makeService

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        print(f"{sys.argv[0]}: {error}\n{options}", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([text_log_observer(sys.stdout)])
    from twisted.internet import reactor

    service = makeService(options, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
