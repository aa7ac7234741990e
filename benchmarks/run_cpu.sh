#!/usr/bin/env bash
# The recorded CPU benchmark: YOLOX-Nano, -Tiny and -S on every CPU backend, FP32 and INT8, with the host line.
#
#   benchmarks/run_cpu.sh [OUTPUT_DIR]        (default: benchmarks/results/cpu)
#
# Run it on a quiet machine (nothing else using the CPU). Extra arguments after OUTPUT_DIR go to yolox-bench.
# INT8 rows exist where a format quantises (OpenVINO via NNCF); the others report "not available: <reason>".
# Real weights are taken from ../shared/assets/weights (or set WEIGHTS_DIR); variants without a checkpoint
# there are timed with seeded random weights (see benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# PyTorch (used by the shared post-processing and the torch backend) and NCNN each bundle their own libgomp.
# With OpenMP's default wait policy their idle threads spin, and on a 2-core machine two spinning pools in
# one process starve each other: the NCNN and torch rows then measure that contention (NCNN full pipeline
# 550 ms instead of 20 ms, torch 2.3 s instead of 57 ms in one measurement here). PASSIVE makes idle
# OpenMP threads sleep. The value is recorded in the host line; set OMP_WAIT_POLICY yourself to override.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
OUT="${1:-benchmarks/results/cpu}"
shift || true
WEIGHTS_ARGS=()
if [[ -n "${WEIGHTS_DIR:-}" ]]; then WEIGHTS_ARGS=(--weights-dir "$WEIGHTS_DIR"); fi

yolox-bench \
  --models nano,tiny,s \
  --backends onnxruntime,openvino,ncnn,torch \
  --int8 \
  --batch 1 \
  --device cpu \
  --iters 200 --warmup 20 \
  --output "$OUT" \
  --cache-dir "${CACHE_DIR:-$OUT/../cache}" \
  "${WEIGHTS_ARGS[@]}" "$@"
