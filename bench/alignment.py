"""How much does the alignment of a loop's long-lived inputs cost the training step?

The training step of ``bench/cyclic.py`` (``x @ w`` and four elementwise
ufuncs, zero-allocation ``out=`` form so nothing but the inputs' placement
differs) runs in one process with the same ``x`` and ``w`` copied to
addresses 0, 16, 32 and 48 bytes past a cache line (glibc puts an mmap-served
array, 128 KiB and up, 16 bytes past a page), and with ``x`` and ``w`` made
under :func:`wsmem.aligned_heap`.  The variants run in interleaved blocks of
~0.05 s (``--rounds`` of them each, the garbage collector off); reported are the minimum and median time
per step and the ratio of medians to the cache-line-aligned variant.  One
process, so no process-to-process noise: what differs is the address.

Usage, from the repository root::

    python bench/alignment.py [--rows 8 64 512] [--rounds 31]

Writes ``bench/results/alignment.txt``.
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import wsmem  # noqa: E402
from wsmem.benchmarks._env import time_interleaved, write_script_results  # noqa: E402
from wsmem.benchmarks.cyclic import TRAIN_OUT, _train_inputs  # noqa: E402
from wsmem.benchmarks.cyclic import train_limit_step as limit_step  # noqa: E402


def placed(a, offset):
    """A copy of `a` whose data starts `offset` bytes past a 4096-byte boundary."""
    buf = np.empty(a.nbytes + 8192, np.uint8)
    start = (-buf.ctypes.data) % 4096 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def measure(rows, rounds):
    x, w = _train_inputs(rows)
    with wsmem.aligned_heap():
        h = np.empty((rows, TRAIN_OUT))
        xa, wa = _train_inputs(rows)
    variants = {f"+{off} B": limit_step(placed(x, off), placed(w, off), h)
                for off in (0, 16, 32, 48)}
    variants["glibc (as made)"] = limit_step(x, w, h)
    variants["aligned_heap"] = limit_step(xa, wa, h)
    addr = {"glibc (as made)": (x.ctypes.data % 64, w.ctypes.data % 64),
            "aligned_heap": (xa.ctypes.data % 64, wa.ctypes.data % 64)}
    ref = {f"+{off} B": off for off in (0, 16, 32, 48)}
    n = max(3, int(0.05 / (rows * 20e-6)))
    for f in variants.values():
        for _ in range(5):
            f()
    values = {f() for f in variants.values()}
    assert len({round(v, 6) for v in values}) == 1, values
    times = time_interleaved(variants, rounds, n)
    base = statistics.median(times["+0 B"])
    lines = [f"train rows={rows} (w {w.nbytes >> 10} KiB, x {x.nbytes >> 10} KiB), "
             f"{n} steps per block, {rounds} blocks each",
             f"  {'x, w placed':18s} {'x%64,w%64':>10s} {'min us':>9s} {'median us':>10s} "
             f"{'median vs +0 B':>15s}"]
    for k, t in times.items():
        med = statistics.median(t)
        where = addr.get(k, (ref.get(k), ref.get(k)))
        lines.append(f"  {k:18s} {str(where[0]) + ',' + str(where[1]):>10s} "
                     f"{min(t) * 1e6:9.1f} {med * 1e6:10.1f} {med / base:14.3f}x")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--rounds", type=int, default=31)
    args = p.parse_args()
    write_script_results(__file__, "alignment", [
        "times: zero-allocation training step (out= buffers); only the inputs' addresses differ"],
        (measure(rows, args.rounds) for rows in args.rows))


if __name__ == "__main__":
    sys.exit(main())
