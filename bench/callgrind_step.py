"""One training step (rows=64, 512 KiB temporaries) repeated N times, for
instruction counting under valgrind (see bench/results/callgrind_train64.txt
and cachegrind_train64.txt): python bench/callgrind_step.py {numpy,wsmem,limit} N
"""
import os, sys
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np, wsmem
from wsmem.benchmarks.cyclic import _make_train
mode, n = sys.argv[1], int(sys.argv[2])
step = _make_train(64, mode == "limit")
if mode == "wsmem":
    ws = wsmem.Workspace("CG"); inner = step
    def step():
        with ws: return inner()
for _ in range(3): step()
for _ in range(n): step()
