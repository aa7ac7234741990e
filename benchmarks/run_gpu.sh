#!/usr/bin/env bash
# GPU rows on a target with an NVIDIA GPU (T4, Jetson, H100...) and TensorRT 10 installed:
# YOLOX-S/M/L/X at 640, FP16 (and FP32), batch 1 and 8, TensorRT beside PyTorch and ONNX Runtime (CUDA; FP32
# only: its FP16 rows report "not available", the ONNX export being FP32).
#
#   benchmarks/run_gpu.sh [OUTPUT_DIR]        (default: benchmarks/results/gpu)
#
# Needs: pip install -e '.[trt]' (tensorrt, cuda-python) and, for the ONNX Runtime rows, onnxruntime-gpu.
# Backends that are missing on the target are reported as "not available: <reason>" rows.
set -euo pipefail
# paths given (OUTPUT_DIR, yolox-bench options) are the caller's, relative
# to where it runs; the defaults are the checkout's
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/benchmarks/results/gpu}"
shift || true

yolox-bench \
  --models s,m,l,x \
  --backends tensorrt,torch,onnxruntime \
  --half \
  --batch 1,8 \
  --device cuda \
  --iters 200 --warmup 50 \
  --output "$OUT" \
  "$@"
