#!/usr/bin/env bash
# Every GPU figure of docs/performance.md, one step after another, each step time-boxed.
# Usage: bash benchmarks/gpu_suite.sh [OUT_DIR] [STEP...]   (steps: see `case` below; default all)
# Logs and JSON go to OUT_DIR (default ./gpu-results). Needs a CUDA GPU and the project installed.
set -u
py=${PYTHON:-python3}
out=$(realpath -m "${1:-gpu-results}"); shift || true
steps=${*:-teacher teacher512 gn attn profile compile compile-nhwc compile-autotune e2e e2e-fast e2e512
  student student-graphs student-compile student-attn train train-attn loop tests}
mkdir -p "$out"
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5
run() {  # run NAME SECONDS COMMAND...: log to OUT_DIR/NAME.log, never stop the suite
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "=== $name exit $? ($(date +%T))"; grep -v "it/s\|tile/s]\|s/it" "$out/$name.log" | tail -n 40
}
for step in $steps; do
  case $step in
    teacher) run teacher 200 "$py" teacher_throughput.py --device cuda \
      --variants fp32,tf32,bf16,bf16+nhwc,bf16+nhwc+cudnn,fp16+nhwc --batch-sizes 1,16,64 \
      --baseline --breakdown --quality 32 --json "$out/teacher.json" ;;
    teacher512) run teacher512 100 "$py" teacher_throughput.py --device cuda --lr-size 128 \
      --variants bf16+nhwc --batch-sizes 1,8,16 --baseline --baseline-tiles 4 \
      --json "$out/teacher512.json" ;;
    e2e) run e2e 120 "$py" cache_teacher_e2e.py --device cuda --tiles 2048 --batch 64 \
      --shard-size 256 --precision fp16 ;;
    e2e-fast) run e2e-fast 300 "$py" cache_teacher_e2e.py --device cuda --tiles 1536 --batch 64 \
      --shard-size 256 --precision fp16 --compile default ;;
    e2e-dwt) run e2e-dwt 150 "$py" cache_teacher_e2e.py --device cuda --tiles 2048 --batch 64 \
      --shard-size 256 --precision fp16 --compile default --dwt ;;
    e2e512) run e2e512 150 "$py" cache_teacher_e2e.py --device cuda --tiles 512 --lr-size 128 \
      --batch 16 --shard-size 64 --precision fp16 --compile default ;;
    student) run student 150 "$py" student_latency.py --device cuda \
      --variants fp32,bf16,bf16+graphs --sizes 64,512 --batch-sizes 1,4,16,64,256 --runs 20 \
      --json "$out/student.json" ;;
    train) run train 300 "$py" train_step.py --device cuda --batch 64 --patch 64 \
      --skip-loader --warmup 5 --iters 20 ;;
    # The distill stage validates with pyiqa: install the [pipeline] or [eval] extra first.
    loop) run loop 120 "$py" train_step.py --device cuda --batch 64 --patch 64 --stride 8 \
      --skip-step --skip-loader --loop 100 --num-workers 4 ;;
    gn) run gn 90 "$py" teacher_throughput.py --device cuda \
      --variants bf16+gn32,bf16,fp16,bf16+nhwc --batch-sizes 64 --quality 16 ;;
    # Swin window attention: fused SDPA (default under autocast) against upstream's three ops.
    attn) run attn 120 "$py" teacher_throughput.py --device cuda \
      --variants fp16,fp16+bmmattn,bf16,bf16+bmmattn --batch-sizes 64 --quality 16 ;;
    profile) run profile 60 "$py" teacher_throughput.py --device cuda --variants bf16 \
      --batch-sizes 64 --profile ;;
    student-graphs) run student-graphs 240 "$py" student_latency.py --device cuda \
      --variants bf16+graphs --sizes 64,512 --batch-sizes 1 --warmup 3 --runs 20 ;;
    student-compile) run student-compile 150 "$py" student_latency.py --device cuda \
      --variants bf16+compile --sizes 64,512 --batch-sizes 4,256 --warmup 3 --runs 10 ;;
    # Student window attention: SDPA in the fused-kernel layout (windows as heads, head dim 10
    # padded to 16) against the official explicit ops, for inference and for the training step.
    student-attn) run student-attn 150 "$py" student_latency.py --device cuda \
      --variants bf16,bf16+opsattn --sizes 64 --batch-sizes 1,64,256 --runs 20 ;;
    train-attn) run train-attn 300 "$py" train_step.py --device cuda --batch 64 --patch 64 \
      --skip-loader --warmup 5 --iters 20 --configs bf16+fused,bf16+fused+opsattn ;;
    compile) run compile 420 "$py" teacher_throughput.py --device cuda \
      --variants fp16+compile,bf16+compile --batch-sizes 64 --quality 16 \
      --json "$out/teacher_compile.json" ;;
    # Levers beyond compile (docs/performance.md): NHWC removes cuDNN's layout transposes once
    # inductor owns the elementwise glue; autotune searches GEMM/conv kernels (long compile).
    compile-nhwc) run compile-nhwc 420 "$py" teacher_throughput.py --device cuda \
      --variants fp16+nhwc+compile --batch-sizes 64,128 --json "$out/teacher_nhwc.json" ;;
    compile-autotune) run compile-autotune 580 "$py" teacher_throughput.py --device cuda \
      --variants fp16+autotune --batch-sizes 64 --json "$out/teacher_autotune.json" ;;
    # Fixtures missing (../shared does not travel to a lent GPU machine) fail, not skip.
    tests) DTKD_REQUIRE_PARITY=1 run tests 300 "$py" -m pytest -q -p no:cacheprovider ../tests/test_teacher_cuda.py \
      ../tests/test_student_cuda.py ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
