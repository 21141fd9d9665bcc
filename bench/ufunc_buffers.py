"""NumPy's ufunc buffers, 64-byte aligned or not: the step in a workspace.

A ufunc over strided operands (CG's stencil, ``au[:, 1:] -= u[:, :-1]``)
runs buffered: NumPy copies rows into scratch buffers of up to 8,192
elements that come from Python's raw allocator, on glibc 16-byte aligned
or not by the luck of the heap's history.  ``wsmem.align_ufunc_buffers``
(on from the first capturing workspace unless ``WSMEM_ALIGN_BUFFERS=0``)
puts those of 32 KiB and more on page boundaries (``--align`` picks another
alignment, for comparison).

Each cell is a fresh process (one at a time, cells in a random order per
repetition) that first keeps a ``malloc(k)`` of k = 1, 16, 32 or 48 bytes
(shifting where glibc puts what follows, as any program's history does),
then runs the cyclic benchmark's step inside ``with ws:`` ~0.8 s and reports
its median time per step over 8 batches.  Reported per case and
perturbation: the median over repetitions with the buffers aligned and
not, and their ratio (< 1: aligned is faster).

Usage, from the repository root::

    python bench/ufunc_buffers.py [--cases cg:256 cg:90 train:64] [--reps 3]

Prints the table; quote runs in ``bench/results/`` with the command.
"""
import argparse
import os
import random
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import ctypes, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
keep = ctypes.CDLL(None).malloc(int(sys.argv[4]))
import numpy as np, wsmem
wsmem._capture._set_raw_align(int(sys.argv[5]))
from wsmem.benchmarks.cyclic import _MAKERS
with wsmem.aligned_heap():
    step = _MAKERS[sys.argv[2]](int(sys.argv[3]), False)
ws = wsmem.Workspace("ufunc_buffers")
def cycle():
    with ws:
        return step()
for _ in range(5):
    cycle()
t0 = time.perf_counter(); cycle(); one = time.perf_counter() - t0
n = max(1, int(0.1 / max(one, 1e-6)))
times = []
for _ in range(8):
    t0 = time.perf_counter()
    for _ in range(n):
        cycle()
    times.append((time.perf_counter() - t0) / n)
print(statistics.median(times), int(wsmem.ufunc_buffers_aligned()))
"""


def run(case, k, aligned, align):
    workload, size = case.split(":")
    env = dict(os.environ, WSMEM_ALIGN_BUFFERS="1" if aligned else "0",
               OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, workload, size, str(k),
                          str(align)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    if int(out[1]) != int(aligned):
        raise RuntimeError(f"the child's buffer alignment is {out[1]}, asked {aligned}")
    return float(out[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["cg:256", "cg:90", "train:64"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--align", type=int, default=4096,
                   help="alignment of the aligned runs' buffers (default 4096, wsmem's)")
    a = p.parse_args(argv)
    perturb = (1, 16, 32, 48)
    cells = [(c, k, al) for c in a.cases for k in perturb for al in (False, True)]
    times = {cell: [] for cell in cells}
    for _ in range(a.reps):
        random.shuffle(cells)
        for cell in cells:
            times[cell].append(run(*cell, a.align))
    print(f"{a.reps} fresh processes per cell; buffers of 32 KiB and more aligned to "
          f"{a.align} bytes or not; time per step, median over the processes (us)")
    print(f"  {'case':10s} {'malloc(k)':>9s} {'not aligned':>12s} {'aligned':>10s} "
          f"{'aligned/not':>12s}")
    for c in a.cases:
        ratios = []
        for k in perturb:
            off = statistics.median(times[(c, k, False)])
            on = statistics.median(times[(c, k, True)])
            ratios.append(on / off)
            print(f"  {c:10s} {k:9d} {off * 1e6:12.1f} {on * 1e6:10.1f} {on / off:12.3f}")
        print(f"  {c:10s} {'median':>9s} {'':12s} {'':10s} {statistics.median(ratios):12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
