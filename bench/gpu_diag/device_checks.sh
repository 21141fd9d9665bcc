#!/bin/bash
# Run on the lent GPU machine from the repository root (device tool, `run`):
#   bash bench/gpu_diag/device_checks.sh        -> logs under $OUT (or /tmp/out)
# Builds in place with the machine's python3 (Python 3.12, CuPy, Cython), runs
# the whole suite, compute-sanitizer memcheck on the gpu tests and the tiny gpu
# bench, and the cold-frame bench on this Python.
#   bash bench/gpu_diag/device_checks.sh gpu    -> the GPU-related test files only
set -o pipefail                 # each "exit N" line is its sanitizer run's status
export PYTHONUNBUFFERED=1 PYTHONPATH=.   # scripts under bench/ import this tree
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  date -u; git log -1 --format='tree %h %s' 2>/dev/null | cut -c1-100
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, numpy, cupy, Cython; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cython', Cython.__version__)"
  lscpu | grep -E 'Model name|^CPU\(s\)'
} 2>&1 | tee "$OUT/env.txt"
python3 setup.py build_ext --inplace -j16 >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import wsmem._capture as c; print('direct switch:', c._direct_switch())" 2>&1 | tee -a "$OUT/env.txt"
if [ "$1" = gpu ]; then
  tests="tests/test_gpu.py tests/test_cli.py tests/test_prefetch.py tests/test_bad_input.py tests/test_oom.py tests/test_capture.py tests/test_scopes.py"
else
  tests="--deselect tests/test_docs.py::test_python_blocks_pass_mypy"   # mypy is not there
fi
python3 -m pytest -q -p no:cacheprovider -rs $tests 2>&1 | tee "$OUT/suite.log" | tail -40
compute-sanitizer --tool memcheck --error-exitcode 9 --show-backtrace no python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider \
    --deselect tests/test_gpu.py::TestOnGPU::test_device_oom_raises_overflow_and_workspace_survives 2>&1 \
    | tail -8 | tee "$OUT/memcheck.log"
echo "exit $?" | tee -a "$OUT/memcheck.log"
compute-sanitizer --tool memcheck --error-exitcode 9 --show-backtrace no python3 -m wsmem bench --suite gpu --tiny --out /tmp/sb 2>&1 \
    | tail -4 | tee -a "$OUT/memcheck.log"
echo "exit $?" | tee -a "$OUT/memcheck.log"
python3 bench/frame_cold.py --rounds 600 2>&1 | tee "$OUT/frame_cold.txt"
python3 bench/gpu_diag/frame_parts.py 2>&1 | tee "$OUT/frame_parts.txt"
python3 -m wsmem bench --suite gpu --out "$OUT/gpu" 2>&1 | tail -40
