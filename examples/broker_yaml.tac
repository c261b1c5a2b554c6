"""A broker as a twistd application file, built from the same YAML file as
``twistd mqtt --config``:

    MQTT_CONFIG=examples/broker.yaml twistd -ny examples/broker_yaml.tac

The file is read and checked exactly as ``twistd mqtt --config $MQTT_CONFIG`` reads it (a
mistake ends start-up with its one-line message and exit status 78), the service is the one
``twistd mqtt`` builds, and the log follows the file's ``logging`` section.  The service can as
well be one child among others of an existing ``Application``.
"""

import os
import sys

from twisted.application.service import Application
from twisted.logger import ILogObserver
from twisted.python.usage import UsageError

from twisted_mqtt.config import CONFIG_ERROR_EXIT, log_output, options_from_file
from twisted_mqtt.tap import makeService

path = os.environ.get("MQTT_CONFIG", "broker.yaml")
try:
    options = options_from_file(path)
except UsageError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT)

application = Application("mqtt")
application.setComponent(ILogObserver, log_output(options).start())
makeService(options).setServiceParent(application)
