"""One cyclic-benchmark step repeated N times, for instruction counting under
valgrind (see bench/results/callgrind_*.txt, cachegrind_*.txt):

    python bench/callgrind_step.py MODE N [train|cg] [size]

`size` is rows for train (default 64) and n for cg (default 90).  Run it
under ``valgrind --tool=callgrind`` (or cachegrind) for two values of N and
take the difference of the counts over the difference of N; peers run the
numpy mode with LD_PRELOAD or MALLOC_* settings (bench/callgrind_run.sh).

MODE: ``numpy``, ``wsmem`` and ``limit`` are the cyclic benchmark's configs
(``make_step``); the rest take the wsmem config apart, its inputs made under
:func:`wsmem.aligned_heap` as there: ``aligned`` is the plain step with no
workspace, ``emptyws`` an empty ``with ws:`` block before it (the frame
alone, paid with the caches as the step left them), ``capfalse`` the step
inside a ``capture=False`` workspace (frame and NumPy's handler switched,
NumPy allocating as outside).
"""
import os
import sys

os.environ["OPENBLAS_NUM_THREADS"] = "1"
from wsmem.benchmarks.cyclic import _MAKERS, make_step  # noqa: E402

MODES = ("numpy", "wsmem", "limit", "aligned", "emptyws", "capfalse")


def split_step(mode, workload, size):
    import wsmem
    wsmem.aligned_heap()
    plain = _MAKERS[workload](size, False)
    if mode == "aligned":
        return plain
    ws = wsmem.Workspace("callgrind_step", capture=(mode != "capfalse"))
    if mode == "emptyws":
        def step():
            with ws:
                pass
            return plain()
    else:
        def step():
            with ws:
                return plain()
    return step


mode, n = sys.argv[1], int(sys.argv[2])
if mode not in MODES:
    sys.exit(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
workload = sys.argv[3] if len(sys.argv) > 3 else "train"
size = int(sys.argv[4]) if len(sys.argv) > 4 else (64 if workload == "train" else 90)
if mode in ("numpy", "wsmem", "limit"):
    step, ws = make_step(mode, workload, size)
else:
    step = split_step(mode, workload, size)
for _ in range(3):
    step()
for _ in range(n):
    step()
