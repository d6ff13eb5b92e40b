#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for SECONDS each, two at a time (the CI machine
# has 2 cores), on a temporary copy of its committed seed corpus (tests/fuzz/corpus/<target>,
# never modified), with its dictionary (tests/fuzz/dict/<target>.dict). Builds nothing:
# build the targets first with
#   cmake --preset fuzz && cmake --build --preset fuzz
# (or point XREC_FUZZ_BUILD_DIR at another build of the fuzz targets).
#
# Prints, per target, the executions, executions per second and the final coverage (edges,
# libFuzzer's "cov:"), and exits non-zero, naming the target, when
#   - the target found something (crash, sanitizer report, timeout, out-of-memory, leak):
#     the log's tail and the saved input are printed; turn the input into a regression test;
#   - its coverage is below its floor in tests/fuzz/coverage_floors.txt ("target edges",
#     about 90% of what a 60 s run reaches): the target stopped exercising its parser;
#   - the target has no floor, or its binary is missing.
#
# usage: tests/fuzz/run.sh SECONDS
set -u -o pipefail

secs=${1:-}
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 SECONDS (per target)" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${XREC_FUZZ_BUILD_DIR:-$root/build/fuzz}/tests/fuzz
floors=$here/coverage_floors.txt
max_len=4096      # bytes: the seeds are a few hundred; parsers' interesting states are near
timeout_s=5       # per input: far above any input's run time, so a hit is a hang
rss_mb=2048       # also the largest single allocation (-malloc_limit_mb defaults to it)

targets=()
for src in "$here"/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done

work=$(mktemp -d "${TMPDIR:-/tmp}/xrec_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

run_one() {
  local t=$1 dir=$work/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp "$here/corpus/$t"/* "$dir/corpus/" 2>/dev/null || true
  local dict=()
  [ -f "$here/dict/$t.dict" ] && dict=("-dict=$here/dict/$t.dict")
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin/$t" -max_total_time="$secs" -max_len=$max_len -timeout=$timeout_s -rss_limit_mb=$rss_mb \
      -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" >"$dir/log" 2>&1
  echo $? >"$dir/rc"
}

start=$(date +%s)
for t in "${targets[@]}"; do
  if [ ! -x "$bin/$t" ]; then
    echo "FAIL $t: no binary at $bin/$t (build the fuzz preset first)" >&2
    echo 127 >"$work/missing_$t"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
  run_one "$t" &
done
wait

status=0
printf '%-20s %12s %10s %8s %8s  %s\n' target executions exec/s edges floor result
for t in "${targets[@]}"; do
  if [ -f "$work/missing_$t" ]; then status=1; continue; fi
  dir=$work/$t
  rc=$(cat "$dir/rc")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | awk '{print $2}')
  floor=$(awk -v t="$t" '$1 == t {print $2}' "$floors" 2>/dev/null)
  result=ok
  if [ "$rc" != 0 ]; then
    result="FINDING (exit $rc)"
  elif [ -z "$floor" ]; then
    result="NO FLOOR in tests/fuzz/coverage_floors.txt"
  elif [ -z "$cov" ] || [ "$cov" -lt "$floor" ]; then
    result="COVERAGE ${cov:-?} below the floor $floor"
  fi
  printf '%-20s %12s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${floor:--}" "$result"
  if [ "$result" != ok ]; then
    status=1
    if [ "$rc" != 0 ]; then
      echo "---- $t: last lines of the log" >&2
      tail -n 40 "$dir/log" >&2
      for a in "$dir"/artifacts/*; do
        [ -f "$a" ] || continue
        echo "---- $t: input $(basename "$a") (base64; reproduce: $bin/$t FILE)" >&2
        base64 "$a" | head -c 4000 >&2
        echo >&2
      done
    fi
  fi
done
echo "fuzzing: ${#targets[@]} targets, ${secs}s each, $(( $(date +%s) - start ))s wall"
if [ "$status" != 0 ]; then
  echo "fuzzing FAILED (see the targets marked above)" >&2
fi
exit "$status"
