#!/bin/sh
# Runs every GPU test binary of a build under compute-sanitizer's memcheck, racecheck, synccheck
# and initcheck, each binary whole (all its test cases) once per tool. Exits 1 when any run
# reports an error or fails, after running them all; prints one line per binary and tool.
#
#   tools/gpu-sanitize/run.sh [BUILD_DIR] [TOOLS...]     (default: build, all four tools)
#   tools/gpu-sanitize/run.sh --binaries DIR [TOOLS...]  (every executable test_* in DIR: the GPU
#                                                        test binaries, carried to the GPU machine)
#
# Logs go to $GPU_SANITIZE_LOGS (default: ./gpu-sanitize-logs), one per binary and tool. With
# $GPU_SANITIZE_TIMEOUT (seconds) a run that takes longer is stopped and reported as a failure.
# $GPU_SANITIZE_FILTER, when set, is passed to every binary as its test-case filter (Catch2).
# The longest cases under racecheck split further by environment (unset, each runs whole):
# ATOM_TEST_GEMM_ROWS=1,3,16 keeps those row counts of a test_gpu_gemm shape; ATOM_TEST_HF_LAYER=l
# and ATOM_TEST_HF_SHARD=i/n keep one layer and every n-th policy point of a test_model_hf_gpu
# case. Run the pieces as parallel processes, each with its own GPU_SANITIZE_LOGS.
set -u
if [ "${1:-}" = "--binaries" ]; then
  bins=$(find -L "$2" -maxdepth 1 -name 'test_*' -type f -perm -u+x | sort)
  shift 2
else
  build=${1:-build}
  [ $# -gt 0 ] && shift
  bins=$(ctest --test-dir "$build" -L gpu -N -V 2>/dev/null |
         sed -n 's/^[0-9]*: Test command: \([^ ]*\).*/\1/p' | sort -u)
fi
tools=${*:-memcheck racecheck synccheck initcheck}
logs=${GPU_SANITIZE_LOGS:-gpu-sanitize-logs}
limit=${GPU_SANITIZE_TIMEOUT:-0}
bounded=""
[ "$limit" -gt 0 ] && bounded="timeout $limit"
mkdir -p "$logs"
if [ -z "$bins" ]; then
  echo "gpu-sanitize: no GPU test binaries found" >&2
  exit 1
fi
status=0
for bin in $bins; do
  for tool in $tools; do
    extra=""
    [ "$tool" = memcheck ] && extra="--leak-check full"
    log="$logs/$(basename "$bin").$tool.log"
    # shellcheck disable=SC2086
    $bounded compute-sanitizer --tool "$tool" $extra --error-exitcode 99 "$bin" \
      ${GPU_SANITIZE_FILTER:+"$GPU_SANITIZE_FILTER"} > "$log" 2>&1
    rc=$?
    if [ $rc -eq 124 ]; then
      summary="stopped after ${limit} s"
    else
      summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
    fi
    if [ $rc -eq 0 ]; then
      echo "clean   $(basename "$bin") $tool: $summary"
    else
      echo "FAILED  $(basename "$bin") $tool (exit $rc): $summary, see $log"
      status=1
    fi
  done
done
exit $status
