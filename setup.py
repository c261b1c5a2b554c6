"""Build of twisted-mqtt-broker: the metadata is in setup.cfg; this file adds the optional
compiled codec.

With ``TWISTED_MQTT_COMPILE=1`` in the environment, on CPython, ``twisted_mqtt/codec.py`` is
also compiled with mypyc into an extension module, which Python imports in its place (the
figures are in docs/performance.md).  The build then needs mypy and mypy-zope, which are
fetched for it, and a C compiler with the interpreter's headers; when the compilation fails,
the pure-Python codec is installed alone and pip says why.  PyPy always runs the pure-Python
codec.
"""

import os
import platform
import sys
from typing import Any, List

from setuptools import setup

COMPILED = ["twisted_mqtt/codec.py"]
"""The modules compiled when asked: the decoder's loops and the encoders are most of the
broker's own work per message."""

BUILD_REQUIRES = ["mypy>=1.11", "mypy-zope>=1.0"]
"""What compiling needs: mypyc comes with mypy, which reads the project's mypy settings in
pyproject.toml, plugin included."""


def wanted() -> bool:
    """Whether this build compiles the codec."""
    return (os.environ.get("TWISTED_MQTT_COMPILE") == "1"
            and platform.python_implementation() == "CPython")


def extensions() -> List[Any]:
    """The compiled modules' extensions, each optional; none when mypyc is not there yet
    (setuptools first runs this file to learn the build's requirements)."""
    if not wanted():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print(f"setup.py: compiling the codec needs {' and '.join(BUILD_REQUIRES)}",
              file=sys.stderr)
        return []
    built = mypycify(COMPILED, opt_level="3")
    for extension in built:
        extension.optional = True
    return built


setup(ext_modules=extensions(), setup_requires=BUILD_REQUIRES if wanted() else [])
