#!/usr/bin/env bash
# Runs one WAVE node on its embedded defaults (http://127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The first build compiles every dependency, C libraries included (several
# minutes on a small machine): cargo shows its progress on stderr.
exec cargo run --release -p sfu -- serve "$@"
