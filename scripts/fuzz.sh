#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see fuzz/README.md) over the committed corpus and new
# inputs: `--short` (what the test command runs: an unoptimised build, which compiles in about
# a third of the time and runs ~1k inputs/s, 15 s per target) or `--long`
# [SECONDS] (an optimised build, SECONDS per target, 120 by default). Installs cargo-fuzz
# (pinned) into .tools/cargo-fuzz; needs a nightly toolchain (rustup's `nightly`), which it
# tries to install when missing. New inputs go to a temp dir, not to the committed corpus; a
# crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION="0.13.2"
TARGETS=(envelope request_bodies device query tokens)
mode="${1:---short}"
seconds=15 build=(--dev)
if [ "$mode" = "--long" ]; then
  seconds="${2:-120}" build=(-O)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain; installing it with rustup" >&2
  if ! rustup toolchain install nightly --profile minimal >&2; then
    echo "fuzz: SKIPPED: cargo-fuzz needs a nightly toolchain and rustup could not install one" >&2
    exit 0
  fi
fi
tools="$PWD/.tools/cargo-fuzz"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools" >&2
  cargo install --quiet --locked --root "$tools" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
export PATH="$tools/bin:$PATH"

cargo +nightly fuzz build "${build[@]}"
work="$(mktemp -d "${TMPDIR:-/tmp}/msgxc-fuzz-XXXXXX")"
trap 'rm -rf "$work"' EXIT
total=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if ! cargo +nightly fuzz run "${build[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -max_len=4096 > "$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED (its input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log")"
  total=$((total + ${runs:-0}))
  echo "fuzz: $t: ${runs:-0} executions in ${seconds}s, no crash" >&2
done
echo "fuzz: $total executions over ${#TARGETS[@]} targets, no crash" >&2
