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

# SDXL (GPU_BENCH_MODEL=sdxl): an SDXL model made by sdfarm-mkmodel (two text
# encoders, two tokenizers), benchmarked; the diffusers side says why it is not there.
GPU_BENCH_MODEL=sdxl GPU_BENCH_DEVICE=cpu GPU_BENCH_SKIP_BUILD=1 BUILD_DIR="$build" GPU_BENCH_WORK="$work/x" \
  GPU_BENCH_CONFIG="$shared/models/tiny-sdxl" SDFARM_SHARED_DIR="$shared" GPU_BENCH_SIZE=64 GPU_BENCH_STEPS=2 \
  GPU_BENCH_BATCHES=1 OMP_NUM_THREADS=1 bash "$repo/scripts/gpu-bench" >"$work/xl.json" 2>"$work/xl-err.txt" ||
  fail "gpu-bench sdxl (cpu smoke run) failed: $(cat "$work/xl-err.txt")"
[ -f "$work/x/model-tiny-sdxl/text_encoder_2/config.json" ] && [ -d "$work/x/model-tiny-sdxl/tokenizer_2" ] ||
  fail "no SDXL model was made: $(ls -R "$work/x" | head -30)"
python3 - "$work/xl.json" <<'PY' || fail "bad SDXL JSON: $(cat "$work/xl.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["model"] == "sdxl" and d["width"] == 64 and [r["batch"] for r in d["sdfarm"]] == [1], d
assert d["sdfarm"][0]["images_per_second"] > 0, d
assert "StableDiffusionXLPipeline" in d["diffusers_unavailable"], d
PY
rc=0
GPU_BENCH_MODEL=sd3 GPU_BENCH_DEVICE=cpu bash "$repo/scripts/gpu-bench" >"$work/out3" 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "sd15, sd21 or sdxl" "$work/out3" || fail "an unknown model should exit 2 naming the choices: $rc $(cat "$work/out3")"

if ! command -v nvidia-smi >/dev/null; then
  rc=0
  GPU_BENCH_SKIP_BUILD=1 BUILD_DIR="$build" SDFARM_SHARED_DIR="$shared" bash "$repo/scripts/gpu-bench" \
    >"$work/out2" 2>&1 || rc=$?
  [ $rc -eq 2 ] || fail "without a GPU the default mode should exit 2, got $rc: $(cat "$work/out2")"
  grep -q "CUDA machine" "$work/out2" || fail "no clear line without a GPU: $(cat "$work/out2")"
fi
echo "gpu-bench plumbing ok"
