#!/usr/bin/env bash
# scripts/gpu-bench's own plumbing on the CPU (CI has no GPU): with the
# binaries of this build, a model made from the tiny-sd configs, two batch
# sizes at 64x64, the script prints one JSON document with a row per batch
# whose figures come from sdfarm-engine-bench, and exits 0. On a machine
# without nvidia-smi, the default (CUDA) mode refuses with a clear line.
#   tests/scripts/gpu_bench_test.sh <repository root> <build dir> <shared dir>
set -euo pipefail
repo=$1 build=$2 shared=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/sdfarm-gpu-bench-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

GPU_BENCH_DEVICE=cpu GPU_BENCH_SKIP_BUILD=1 BUILD_DIR="$build" GPU_BENCH_WORK="$work/w" \
  GPU_BENCH_CONFIG="$shared/models/tiny-sd" SDFARM_SHARED_DIR="$shared" GPU_BENCH_SIZE=64 GPU_BENCH_STEPS=2 \
  GPU_BENCH_BATCHES=1,2 OMP_NUM_THREADS=1 bash "$repo/scripts/gpu-bench" >"$work/out.json" 2>"$work/err.txt" ||
  fail "gpu-bench (cpu smoke run) failed: $(cat "$work/err.txt")"
python3 - "$work/out.json" <<'PY' || fail "bad JSON: $(cat "$work/out.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["benchmark"] == "gpu-bench" and d["device"] == "cpu" and d["width"] == 64 and d["steps"] == 2, d
assert [r["batch"] for r in d["sdfarm"]] == [1, 2], d["sdfarm"]
for r in d["sdfarm"]:
    assert r["images_per_second"] > 0 and r["step_ms"] > 0 and r["decode_seconds"] > 0, r
assert d["sdfarm_best"]["batch"] in (1, 2), d
PY
grep -q "weights are random" "$work/err.txt" || fail "the model was not made by sdfarm-mkmodel: $(cat "$work/err.txt")"

if ! command -v nvidia-smi >/dev/null; then
  rc=0
  GPU_BENCH_SKIP_BUILD=1 BUILD_DIR="$build" SDFARM_SHARED_DIR="$shared" bash "$repo/scripts/gpu-bench" \
    >"$work/out2" 2>&1 || rc=$?
  [ $rc -eq 2 ] || fail "without a GPU the default mode should exit 2, got $rc: $(cat "$work/out2")"
  grep -q "CUDA machine" "$work/out2" || fail "no clear line without a GPU: $(cat "$work/out2")"
fi
echo "gpu-bench plumbing ok"
