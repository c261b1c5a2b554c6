"""Build of twisted-mqtt-broker: the metadata is in setup.cfg; this file adds the optional
compiled codec.

With ``TWISTED_MQTT_COMPILE=1`` in the environment, on CPython, ``twisted_mqtt/codec.py`` is
also compiled with mypyc into an extension module, which Python imports in its place (the
figures are in docs/performance.md).  The build then needs mypy and mypy-zope, which are
fetched for it, and a C compiler with the interpreter's headers; when the compilation fails,
the pure-Python codec is installed alone (``pip install -v`` shows why).  PyPy always runs the
pure-Python codec.
"""

import os
import platform
import sys
import sysconfig
from typing import Any, List

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

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


class AllOrNone(build_ext):  # type: ignore[misc]
    """Builds the compiled modules together or not at all: mypyc makes a module's extension
    and a shared one it imports, and the first without the second would not import."""

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except (BaseError, CCompilerError, OSError) as error:
            self.warn(f"the codec stays pure Python: compiling it failed ({error})")
            for extension in self.extensions:  # what this build made, and an earlier one's
                for built in (self.get_ext_fullpath(extension.name), in_source(extension.name)):
                    if os.path.exists(built):
                        os.remove(built)
            self.extensions = []  # nothing to install or to copy beside the sources


def in_source(name: str) -> str:
    """Where the extension module ``name`` sits beside the sources (an editable install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, *name.split(".")) + sysconfig.get_config_var("EXT_SUFFIX")


def extensions() -> List[Any]:
    """The compiled modules' extensions; none when mypyc is not there yet (setuptools first
    runs this file to learn the build's requirements)."""
    if not wanted():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print(f"setup.py: compiling the codec needs {' and '.join(BUILD_REQUIRES)}",
              file=sys.stderr)
        return []
    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=extensions(), setup_requires=BUILD_REQUIRES if wanted() else [],
      cmdclass={"build_ext": AllOrNone})
