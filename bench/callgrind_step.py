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
