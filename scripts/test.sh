#!/usr/bin/env bash
# The one test command: installs what is missing, then runs formatting, lints,
# every Rust test (unit, simulated-time scenarios, protocol and HTTP tests
# against the real binaries) and the browser end-to-end tests against the
# real `sfu` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --quiet --workspace --all-targets -- -D warnings
# Tests run on the release profile: the binaries they start are the ones the
# browser tests and users run, and the workspace compiles once, not twice.
echo "== cargo test (release)"
cargo test --quiet --release --workspace
if [ -f e2e/package.json ]; then
  echo "== browser end-to-end (Chromium + playwright-core)"
  cargo build --quiet --release -p sfu
  (cd e2e && WAVE_BIN_DIR="$PWD/../target/release" node --test --test-concurrency=1 tests/)
fi
