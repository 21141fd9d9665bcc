"""One cyclic-benchmark step repeated N times, for instruction counting under
valgrind (see bench/results/callgrind_*.txt):

    python bench/callgrind_step.py {numpy,wsmem,limit} N [train|cg] [size]

`size` is rows for train (default 64) and n for cg (default 90).  Run it
under ``valgrind --tool=callgrind`` for two values of N and take the
difference of the instruction counts over the difference of N; peers run
the numpy mode with LD_PRELOAD or MALLOC_* settings (bench/callgrind_run.sh).
"""
import os
import sys

os.environ["OPENBLAS_NUM_THREADS"] = "1"
from wsmem.benchmarks.cyclic import make_step  # noqa: E402

mode, n = sys.argv[1], int(sys.argv[2])
workload = sys.argv[3] if len(sys.argv) > 3 else "train"
size = int(sys.argv[4]) if len(sys.argv) > 4 else (64 if workload == "train" else 90)
step, ws = make_step(mode if mode in ("wsmem", "limit") else "numpy", workload, size)
for _ in range(3):
    step()
for _ in range(n):
    step()
