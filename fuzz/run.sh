#!/usr/bin/env bash
# Coverage-guided fuzzing of one target on the stable toolchain:
#   fuzz/run.sh TARGET [RUNS] [extra libFuzzer flags...]
# Builds the targets with SanitizerCoverage (the flags cargo-fuzz passes),
# then runs TARGET for RUNS executions (default 10,000,000) over a scratch
# corpus (fuzz/corpus/TARGET, not kept in the repository) started from
# fuzz/seeds/TARGET. Crashes land in fuzz/artifacts/TARGET/.
#   MERGE=1 fuzz/run.sh TARGET   minimises the scratch corpus into the seeds.
#   BUILD=0 skips the build (the binary is already there).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [RUNS] [libFuzzer flags...]}
runs=${2:-10000000}
shift $(($# >= 2 ? 2 : 1))

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks --cfg fuzzing"
export CARGO_TARGET_DIR=target/instrumented
triple=$(rustc -vV | sed -n "s/^host: //p")
if [ "${BUILD:-1}" = 1 ]; then
  # --target keeps the flags off build scripts and proc macros.
  nice -n 15 cargo build --release --target "$triple" --bin "$target"
fi
bin=$CARGO_TARGET_DIR/$triple/release/$target

seeds=seeds/$target
corpus=corpus/$target
mkdir -p "$seeds" "$corpus" "artifacts/$target"
dict=()
[ -f "$target.dict" ] && dict=("-dict=$target.dict")

if [ "${MERGE:-0}" = 1 ]; then
  # Keep only the inputs that add coverage: a few dozen files at most.
  fresh=$(mktemp -d)
  nice -n 15 "$bin" -merge=1 "$fresh" "$seeds" "$corpus" "${dict[@]}" >/dev/null 2>&1
  rm -f "$seeds"/*
  cp "$fresh"/* "$seeds"/ 2>/dev/null || true
  rm -rf "$fresh"
  echo "$target: $(ls "$seeds" | wc -l) seeds"
  exit 0
fi

exec nice -n 15 "$bin" "$corpus" "$seeds" -runs="$runs" -rss_limit_mb=2048 -timeout=10 \
  -max_len=4096 -print_final_stats=1 -artifact_prefix="artifacts/$target/" "${dict[@]}" "$@"
