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
# paths given (OUTPUT_DIR, WEIGHTS_DIR, COCO_DIR, CACHE_DIR, yolox-bench options) are the caller's, relative
# to where it runs; the defaults are the checkout's
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Leave OMP_WAIT_POLICY unset: NCNN's OpenMP threads synchronise between its many small layers, and with
# PASSIVE they sleep and wake at each one (YOLOX-Nano's NCNN call: 45 ms instead of 18 ms here). The CPU
# pipeline does its post-processing in numpy, so no second OpenMP pool competes with the runtime's.
OUT="${1:-$ROOT/benchmarks/results/cpu}"
shift || true
WEIGHTS_ARGS=()
if [[ -n "${WEIGHTS_DIR:-}" ]]; then WEIGHTS_ARGS=(--weights-dir "$WEIGHTS_DIR"); fi
# AP of the rows with real weights (FP32 and INT8 side by side) on the shared coco-tiny val, when present
EVAL_ARGS=()
COCO="${COCO_DIR:-$ROOT/../shared/assets/coco-tiny}"
if [[ -d "$COCO" ]]; then EVAL_ARGS=(--with-eval "$COCO"); fi

yolox-bench \
  --models nano,tiny,s \
  --backends onnxruntime,openvino,ncnn,torch \
  --int8 \
  --batch 1 \
  --device cpu \
  --iters 200 --warmup 20 \
  --output "$OUT" \
  --cache-dir "${CACHE_DIR:-$OUT/../cache}" \
  ${WEIGHTS_ARGS[@]+"${WEIGHTS_ARGS[@]}"} ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"} "$@"  # (bash < 4.4: empty arrays under set -u)
