#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time, one after another,
# and prints per target: runs, execs/s, coverage, crashes found.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# A benchmark-style run, not part of scripts/test.sh or CI: it needs a
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each
# target starts from its corpus (fuzz/corpus/<target>, kept between runs)
# and the inputs kept in fuzz/regressions/<target> (seeds and past finds,
# replayed on stable by sfu/tests/fuzz_regressions.rs). A crash, timeout or
# out-of-memory input is left in fuzz/artifacts/<target>/: minimize it
# (`cargo +nightly fuzz tmin <target> <file>`), fix the parser, and keep
# it in fuzz/regressions/<target>/. Exits 1 when any target found one.
# libFuzzer stops a target at its first panic, even one the code contains
# (rtmp_session: rml_rtmp's, see ingest::rtmp::feed); to go past those run
# `cargo +nightly fuzz run <target> -- -fork=1 -ignore_crashes=1`.
set -euo pipefail

secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz (cargo install cargo-fuzz)" >&2
  exit 2
fi
# libopus, FDK AAC and openh264 are C, linked uninstrumented: AddressSanitizer
# reports their globals as ODR violations at start, which are not findings.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}
# The workspace's dependency versions, plus libfuzzer-sys.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "building ${#targets[@]} targets (nightly, sanitizer coverage; minutes the first time)..."
for t in "${targets[@]}"; do
  if ! cargo +nightly fuzz build "$t" >build.log 2>&1; then
    tail -20 build.log >&2
    echo "fuzz.sh: $t does not build" >&2
    exit 2
  fi
done
rm -f build.log

found=0
printf '%-14s %6s %12s %10s %7s %7s %8s\n' target seconds runs execs/s cov ft crashes
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  started="artifacts/$t/.started"
  touch "$started"
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb also
  # bounds a single allocation (unbounded allocations are findings).
  cargo +nightly fuzz run "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || true
  new=$(find "artifacts/$t" -type f ! -name '*.log' ! -name '.*' -newer "$started")
  crashes=$(printf '%s' "$new" | grep -c . || true)
  [ "$crashes" -gt 0 ] && found=1
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-14s %6s %12s %10s %7s %7s %8s\n' "$t" "$secs" "${runs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    grep -E 'ERROR: libFuzzer|panicked at|SUMMARY' "$log" | head -3 | sed 's/^/    /'
    printf '%s\n' "$new" | sed 's/^/    input: fuzz\//'
  fi
done
exit "$found"
