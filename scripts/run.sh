#!/usr/bin/env bash
# Runs one WAVE node on its embedded defaults (http://127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --quiet --release -p sfu -- serve "$@"
