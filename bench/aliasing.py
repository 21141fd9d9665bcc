"""Where a ufunc's output lies relative to its input modulo 4096 bytes.

Ufuncs on 4 MiB float64 buffers carved out of one page-aligned array at
chosen page offsets (A input, B output): ``maximum(A, 0, out=B)``,
``multiply(B, 2, out=B)``, ``negative(A, out=B)``, ``exp(B, out=B)``.  An
output a little *after* its input modulo 4096 makes loads falsely wait on
recent stores to the same low address bits ("4K aliasing").  This is what
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

N = 512 * 1024                     # float64 elements: 4 MiB
OFFSETS = [(0, 0), (0, 16), (0, 64), (0, 128), (0, 2048), (16, 0), (64, 0), (0, 4032)]


def offsets_section(rounds):
    import numpy as np
    from wsmem.benchmarks._env import time_interleaved

    base = np.empty(3 * N + 512, dtype=np.float64)
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
        return run

    fns = {}
    for oa, ob in OFFSETS:
        a, b = buf(0, oa), buf(1, ob)
        a[:] = rng.standard_normal(N)
        fns[(oa, ob)] = kernel(a, b)
    times = time_interleaved(fns, rounds, 5)
    ref = statistics.median(times[(0, 0)])
    lines = [f"4 MiB buffers, 4 ufuncs per call, 5 calls per block, {rounds} blocks each",
             f"  {'A at':>6s} {'B at':>6s} {'B-A mod 4096':>13s} {'median us':>10s} "
             f"{'vs B-A = 0':>11s}"]
    for (oa, ob), t in times.items():
        med = statistics.median(t)
        lines.append(f"  {oa:6d} {ob:6d} {(ob - oa) % 4096:13d} {med * 1e6:10.1f} "
                     f"{med / ref:10.3f}x")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=31)
    args = p.parse_args()
    from wsmem.benchmarks._env import write_script_results
    write_script_results(__file__, "aliasing", [
        "page offsets of a ufunc's input (A) and output (B), 4 MiB float64 buffers"],
        [offsets_section(args.rounds)])


if __name__ == "__main__":
    sys.exit(main())
