#!/usr/bin/env bash
# The one test command: installs what is missing, then runs formatting, lints,
# every Rust test (unit, scenario, HTTP conformance against the real binary)
# and the browser end-to-end tests against the real `sfu` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "== cargo build (release binaries for end-to-end tests)"
cargo build --quiet --release --workspace --bins
echo "== cargo test"
cargo test --quiet --workspace
if [ -f e2e/package.json ]; then
  echo "== browser end-to-end (Chromium + playwright-core)"
  (cd e2e && WAVE_BIN_DIR="$PWD/../target/release" node --test --test-concurrency=1 tests/)
fi
