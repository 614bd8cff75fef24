#!/usr/bin/env bash
# `make setup`: install runsc the Debian way, and fetch the 2022 build for the compatibility tests.
#   tools/setup-runsc.sh COMPAT_DIR
# - A runsc on PATH that no Debian package owns (e.g. a gVisor release the operator installed)
#   is kept as it is.
# - On Debian bookworm: a bookworm-backports source (mirror taken from the host's own sources,
#   tools/apt_backports.py) and runsc from it (0.0~20240729: snapshots need it).  Elsewhere the
#   distribution's runsc.
# - On bookworm, bookworm's own runsc (0.0~20221219) is extracted, not installed, into COMPAT_DIR
#   (apt-get download + dpkg-deb -x): `make test` runs a compatibility subset against it.
set -euo pipefail
COMPAT_DIR=${1:?usage: setup-runsc.sh COMPAT_DIR}
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

current=$(command -v runsc || true)
if [ -n "$current" ] && ! dpkg -S "$(readlink -f "$current")" >/dev/null 2>&1; then
  echo "setup: keeping the operator's runsc at $current ($("$current" --version 2>/dev/null | head -n1))"
  exit 0
fi
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "$codename" = bookworm ]; then
  "$PYTHON" tools/apt_backports.py
  if ! dpkg-query -W -f='${Version}' runsc 2>/dev/null | grep -q bpo; then
    echo "setup: installing runsc from bookworm-backports"
    apt-get update -qq
    apt-get install -y -qq -t bookworm-backports runsc >/dev/null
  fi
  if [ ! -x "$COMPAT_DIR/usr/bin/runsc" ]; then
    echo "setup: extracting bookworm's runsc (the 2022 build) into $COMPAT_DIR for the compatibility tests"
    work=$(mktemp -d)
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root runsc/bookworm)
    mkdir -p "$COMPAT_DIR"
    dpkg-deb -x "$work"/runsc_*.deb "$COMPAT_DIR"
    rm -rf "$work"
  fi
elif ! dpkg -s runsc >/dev/null 2>&1; then
  echo "setup: installing runsc"
  apt-get update -qq
  apt-get install -y -qq runsc >/dev/null
fi
echo "setup: runsc $(runsc --version | head -n1 | awk '{print $NF}') at $(command -v runsc)"
