"""Where the training step's gap to the zero-allocation limit comes from.

The cyclic benchmark's ``limit`` rewrites the training step in place: every
ufunc writes into the one buffer it reads (``maximum(h, 0, out=h)`` ...).
The unchanged step writes each result into a new array, so its ufuncs read
one buffer and write another.  That is a different program, with more
memory traffic, and no allocator can turn it into the in-place one.  This
script separates the two parts, in one process (tuned glibc), blocks
interleaved in a random order per round:

- ``wsmem``: the unchanged step in ``with ws:`` (the reference);
- ``same calls, reused``: the unchanged step's ufunc calls, each result
  written out of place into a buffer made before the loop, a buffer reused
  once the result it held is dead in the unchanged code (``h = x @ w``'s
  buffer takes ``h * 2``; where NumPy's temporary elision makes ``+ 1`` in
  place, from 256 KiB, it is in place here too): four buffers.  Zero
  allocations, the unchanged step's arithmetic and live ranges: what an
  allocator could reach at best (the cyclic benchmark's ``limit_same``,
  ``wsmem.benchmarks.cyclic.train_same_calls_step``);
- ``same calls, own``: the same with one buffer per result, no reuse
  (what preallocating "the arrays the code makes" gives);
- ``limit (in place)``: the cyclic benchmark's limit;
- ``plain (tuned glibc)``: the unchanged step, for scale.

All inputs and buffers are made under :func:`wsmem.aligned_heap`, and every
set-up's result must equal the unchanged step's (relative 1e-9).  Reported
per size: the median time per step and the median of the per-round ratios
to wsmem's time (< 1: faster than wsmem) with its confidence interval.

Usage, from the repository root::

    python bench/limit_gap.py [--cases train:512 train:4096] [--rounds 21]

Writes ``bench/results/limit_gap.txt``.
"""
import sys

from inprocess import cases_main, paired_table, ratio_note, time_blocks  # bench/ is this script's directory

CASES = ["train:8", "train:64", "train:512", "train:4096"]


def measure(workload, size, rounds):
    import numpy as np
    import wsmem
    from wsmem.benchmarks.cyclic import (TRAIN_OUT, _train_inputs, train_limit_step,
                                         train_same_calls_step, train_step)

    if workload != "train":
        raise SystemExit("limit_gap: only the train workload has a same-calls form")
    with wsmem.aligned_heap():
        x, w = _train_inputs(size)
        plain = train_step(x, w)
        limit = train_limit_step(x, w, np.empty((size, TRAIN_OUT)))
        reused = train_same_calls_step(x, w, reuse=True)
        own = train_same_calls_step(x, w, reuse=False)
    ws = wsmem.Workspace(f"limit_gap_{workload}_{size}")

    def in_ws():
        with ws:
            return plain()

    fns = {"wsmem": in_ws, "same calls, reused": reused, "same calls, own": own,
           "limit (in place)": limit, "plain (tuned glibc)": plain}
    want = plain()
    for k, f in fns.items():
        for _ in range(3):          # warm up; wsmem learns its block
            got = f()
        if abs(got - want) > 1e-9 * abs(want):
            raise SystemExit(f"limit_gap: {k} returned {got!r}, the unchanged step {want!r}")
    times, n = time_blocks(fns, plain, rounds)
    lines = paired_table(workload, size, n, rounds, times, "wsmem", "set-up", "wsmem", 24)
    st = ws.stats()
    lines.append(f"  (wsmem: {st.last_cycle_bytes} bytes per cycle, "
                 f"{st.spilled_count} spills in the last cycle)")
    ws.destroy()
    return "\n".join(lines)


def main():
    return cases_main(__file__, "limit_gap", __doc__, measure, CASES, 21, lambda: [
        ratio_note("this set-up", "wsmem", "< 1: faster than wsmem")])


if __name__ == "__main__":
    sys.exit(main())
