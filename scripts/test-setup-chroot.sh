#!/usr/bin/env bash
# Tests scripts/setup.sh on a fresh Debian: a minimal root filesystem from
# debootstrap, this checkout copied in, `setup.sh` then `setup.sh --test`
# run inside it as root, each run twice (the second must print nothing), and
# the tools the tests need checked from inside. Not part of test.sh or CI:
# it downloads a few hundred MB of packages and takes many minutes.
#
#   sudo scripts/test-setup-chroot.sh [WORKDIR]
#
# WORKDIR (default /var/tmp/wave-setup-chroot) holds a pristine base system,
# made once and reused, and the root that is recreated from it every run.
# Needs root, debootstrap, and the network for Debian's mirror, PyPI and npm.
# DEBIAN_MIRROR and DEBIAN_SUITE override the mirror and release (default:
# the first Debian mirror in /etc/apt/sources.list*, bookworm).
# Rust is not installed by setup.sh; the host's toolchain is bind-mounted
# read-only so setup.sh's version check sees one, as a user's rustup would.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

[ "$(id -u)" -eq 0 ] || { echo "test-setup-chroot: run as root (debootstrap, chroot, mount)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "test-setup-chroot: apt-get install debootstrap" >&2; exit 1; }

work=${1:-/var/tmp/wave-setup-chroot}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-$( (grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null || true) |
  head -n1 | tr -d ' ')}
mirror=${mirror:-http://deb.debian.org/debian}
base=$work/base
root=$work/root

log() { echo "== test-setup-chroot: $*"; }

if [ ! -x "$base/usr/bin/apt-get" ]; then
  log "debootstrap $suite (minbase) from $mirror into $base"
  rm -rf "$base"
  debootstrap --variant=minbase "$suite" "$base" "$mirror"
fi

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -l "${mounts[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
bind() {
  local from=$1 to=$root$2
  mkdir -p "$to"
  mount --bind "$from" "$to"
  mounts+=("$to")
  if [ "${3:-}" = ro ]; then
    mount -o remount,bind,ro "$to"
  fi
}

log "fresh root from the base"
rm -rf "$root"
cp -a "$base" "$root"
# Packages must not start services inside the chroot (they would bind the
# host's ports): the standard policy-rc.d for chroots.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/proc" "$root/dev"
mount -t proc proc "$root/proc"
mounts+=("$root/proc")
bind /dev /dev
bind /dev/pts /dev/pts
# Downloaded packages are kept between runs (the system itself is fresh).
mkdir -p "$work/apt-archives/partial"
bind "$work/apt-archives" /var/cache/apt/archives
# A user's rustup toolchain, read-only.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
have_rust=false
if [ -d "$rustup_home" ] && [ -d "$cargo_home/bin" ]; then
  bind "$rustup_home" /root/.rustup ro
  bind "$cargo_home/bin" /root/.cargo/bin ro
  have_rust=true
fi

# The host's own extra certificate authorities (a network that inspects
# TLS needs its CA on every machine, this one included): installed where
# Debian's ca-certificates picks them up, and named to npm and pip as the
# host names them.
tls_env=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  tls_env=(NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  log "using the host's extra CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi

log "copying the checkout (tracked files) to /src"
mkdir -p "$root/src"
git ls-files -z | tar -C "$repo" --null -T - -cf - | tar -C "$root/src" -xf -

# A login-like environment: what a user has after `rustup` on a fresh system.
in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 "${tls_env[@]}" \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "$1"
}

failures=0
check() {
  local what=$1 cmd=$2
  if in_root "$cmd" >/dev/null 2>&1; then
    log "ok: $what"
  else
    log "FAIL: $what ($cmd)"
    failures=$((failures + 1))
  fi
}

# Run a setup mode twice: the first installs (its output shown), the second
# must succeed and print nothing.
run_twice() {
  local args=$1 out
  log "setup.sh $args (first run)"
  local start=$SECONDS
  if ! in_root "cd /src && ./scripts/setup.sh $args"; then
    log "FAIL: setup.sh $args exited non-zero"
    failures=$((failures + 1))
    return
  fi
  log "setup.sh $args took $((SECONDS - start)) s"
  out=$(in_root "cd /src && ./scripts/setup.sh $args" 2>&1) || {
    log "FAIL: second setup.sh $args exited non-zero: $out"
    failures=$((failures + 1))
    return
  }
  if [ -n "$out" ]; then
    log "FAIL: second setup.sh $args printed: $out"
    failures=$((failures + 1))
  else
    log "ok: second setup.sh $args printed nothing"
  fi
}

# What a failing step looks like: no apt sources, so apt-get update has
# nothing and `apt-get install` fails; setup.sh must say which step and show
# apt's own words, not exit 1 in silence.
log "a failing step is loud"
mv "$root/etc/apt/sources.list.d" "$root/etc/apt/sources.list.d.off" 2>/dev/null || true
[ -f "$root/etc/apt/sources.list" ] && mv "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.off"
loud=$(in_root "cd /src && ./scripts/setup.sh" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] && grep -q "setup: FAILED: apt-get install" <<<"$loud" && grep -q "  | " <<<"$loud"; then
  log "ok: exit $rc with the step and its output:"
  sed 's/^/    /' <<<"$loud" | head -n 12
else
  log "FAIL: a failing apt-get was not reported (exit $rc): $loud"
  failures=$((failures + 1))
fi
mv "$root/etc/apt/sources.list.d.off" "$root/etc/apt/sources.list.d" 2>/dev/null || true
[ -f "$root/etc/apt/sources.list.off" ] && mv "$root/etc/apt/sources.list.off" "$root/etc/apt/sources.list"

if ! $have_rust; then
  log "no rustup toolchain on the host: setup.sh must stop at the Rust check"
fi

run_twice ""
check "node runs" "node --version"
check "npm runs" "npm --version"
check "web/ has hls.js" "test -f /src/web/node_modules/hls.js/package.json"
check "no chromium without --test" "! command -v chromium"
check "no firefox-esr without --test" "! command -v firefox-esr"
check "no coturn without --test" "! command -v turnserver"
check "no ffmpeg without --test" "! command -v ffmpeg"

run_twice "--test"
check "nats-server runs" "nats-server --version"
check "chromium is installed" "test -x /usr/bin/chromium"
check "firefox-esr runs" "firefox-esr --version"
check "ffmpeg runs" "ffmpeg -version"
check "coturn's binaries are there" "command -v turnserver && command -v turnutils_uclient"
check "coturn.service is masked" "test \"\$(readlink /etc/systemd/system/coturn.service)\" = /dev/null"
check "e2e/ has playwright-core" "test -f /src/e2e/node_modules/playwright-core/package.json"
check "e2e/ has puppeteer-core" "test -f /src/e2e/node_modules/puppeteer-core/package.json"
check "node --test finds the e2e files by glob" "cd /src/e2e && ls tests/*.test.mjs"
in_root 'echo "versions: node $(node --version), npm $(npm --version), $(nats-server --version), $(rustc --version 2>/dev/null || echo no rustc)"'

if [ "$failures" -ne 0 ]; then
  log "$failures check(s) failed"
  exit 1
fi
log "all checks passed"
