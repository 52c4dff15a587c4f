#!/usr/bin/env bash
# The one test command: installs what is missing, then runs formatting, lints,
# every Rust test (unit, simulated-time scenarios, protocol and HTTP tests
# against the real binaries) and the browser end-to-end tests against the
# real `sfu` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test

echo "== cargo fmt --check"
cargo fmt --all --check
# Lints and tests both on the release profile: the binaries the tests start
# are the ones the browser tests and users run, and the build scripts' C
# (aws-lc, openh264, FDK AAC) compile once for both, not once per profile.
# Builds show cargo's progress (the first one takes several minutes); the
# test run itself is quiet.
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo test (release)"
cargo test --release --workspace --no-run
cargo test --quiet --release --workspace
if [ -f e2e/package.json ]; then
  echo "== browser end-to-end (Chromium + playwright-core)"
  cargo build --quiet --release -p sfu
  (cd e2e && WAVE_BIN_DIR="$PWD/../target/release" node --test --test-concurrency=1 tests/*.test.mjs)
fi
echo "== deploy/ (manifests, compose, local cluster)"
./deploy/test.sh
