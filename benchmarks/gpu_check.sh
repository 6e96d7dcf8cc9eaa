#!/usr/bin/env bash
# Every GPU check of the project in one call of a lent GPU machine (the device tool):
#   1. nvidia-smi and the torch build;
#   2. the tests marked `gpu` (CUDA fast path, no host synchronisation in the step loop,
#      kept-graph HVPs, batched landscape evaluation, vectorised trials; skipped without CUDA);
#   3. benchmarks/bench_gpu.py (C2 training vs a plain loop, 5 vectorised F1/C1 trials,
#      C2 sharpness and Hessian seconds).
# Everything it measures lands in $OUT (or ./gpu-out), written as it goes, so a run cut
# short by its time limit still returns the sections it finished. About 6 minutes on an H200.
#
# Usage, from the repository root:  bash benchmarks/gpu_check.sh
# It uses the machine's own python3 with PyTorch (no install): the package is imported
# from src/, and its other dependencies (numpy, scipy, safetensors, typer, tqdm,
# matplotlib) are already there on the lent machines.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$py" -c 'import numpy, scipy, torch, sharpminima; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "numpy", numpy.__version__, "scipy", scipy.__version__,
"sharpminima", sharpminima.__version__)'
} 2>&1 | tee "$out/env.txt"

timeout "${TEST_TIMEOUT:-150}" "$py" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests 2>&1 | tee "$out/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

timeout "${BENCH_TIMEOUT:-400}" "$py" benchmarks/bench_gpu.py --out "$out" 2>&1 | tee "$out/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu tests exit $tests_rc, bench_gpu exit $bench_rc" | tee -a "$out/env.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
