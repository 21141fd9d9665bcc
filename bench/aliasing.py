"""Where a ufunc's output lies relative to its input modulo 4096 bytes.

Ufuncs on float64 buffers carved out of one page-aligned array, the input
A on a page boundary and the output B at distance d (bytes, modulo 4096)
from it: ``maximum(A, 0, out=B)``, ``multiply(B, 2, out=B)``,
``negative(A, out=B)``, ``exp(B, out=B)``, ``add(A, B, out=B)``; 4 MiB
buffers (the training step's temporaries at rows=512) and 8100 elements
(CG n=90's).  An output a little *after* its input modulo 4096 (or 8 bytes
before it: vector loads span 32 bytes) makes loads falsely wait on recent
stores to the same low address bits ("4K aliasing").  This is what
an allocator's placement can cost or save a streaming step; see
docs/design.md ("Tried: large arrays on a page") for what wsmem did with it.

Usage, from the repository root::

    python bench/aliasing.py [--rounds 31]

Writes ``bench/results/aliasing.txt``.
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SIZES = [512 * 1024, 8100]         # float64 elements: 4 MiB; CG n=90
DISTANCES = [0, 8, 16, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
             3584, 4032, 4088]


def offsets_section(N, rounds):
    import numpy as np
    from wsmem.benchmarks._env import time_interleaved

    base = np.empty(3 * N + 2048, dtype=np.float64)
    first = (-base.ctypes.data) % 4096 // 8        # index of a page boundary

    def buf(k, off_bytes):
        start = first + k * (N + 1024) + off_bytes // 8
        return base[start:start + N]

    rng = np.random.default_rng(0)

    def kernel(a, b):
        def run():
            np.maximum(a, 0, out=b)
            np.multiply(b, 2.0, out=b)
            np.negative(a, out=b)
            np.exp(b, out=b)
            np.add(a, b, out=b)
        return run

    fns = {}
    for d in DISTANCES:
        a, b = buf(0, 0), buf(1, d)
        a[:] = rng.standard_normal(N)
        fns[d] = kernel(a, b)
    calls = 5 if N * 8 >= (1 << 20) else 200
    times = time_interleaved(fns, rounds, calls)
    ref = statistics.median(times[0])
    lines = [f"{N} float64 ({N * 8 / 1024:.1f} KiB) buffers, 5 ufuncs per call, {calls} calls "
             f"per block, {rounds} blocks each",
             f"  {'B-A mod 4096':>13s} {'median us/call':>15s} {'vs d = 0':>9s}"]
    for d in DISTANCES:
        med = statistics.median(times[d])
        lines.append(f"  {d:13d} {med * 1e6:15.1f} {med / ref:8.3f}x")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=31)
    args = p.parse_args()
    from wsmem.benchmarks._env import write_script_results
    write_script_results(__file__, "aliasing", [
        "distance modulo 4096 from a ufunc's input (A, on a page) to its output (B)"],
        (offsets_section(n, args.rounds) for n in SIZES))


if __name__ == "__main__":
    sys.exit(main())
