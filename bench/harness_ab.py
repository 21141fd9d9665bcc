"""Does the in-process timing harness charge one function for another's block?

``wsmem.benchmarks._env.time_interleaved`` times blocks of calls of several
functions in turn.  Here it is checked against itself on functions whose
true times are known to be equal, in one tuned-glibc process (as
``bench/inprocess.py``), inputs made under :func:`wsmem.aligned_heap`:

- ``step``, and ``step again``: the very same cyclic-benchmark step object
  under a second name (an A/A pair: any difference is the harness's; the
  rotated order runs it right after ``copy`` in every round);
- ``wrapped``: ``step`` called through a one-line Python function (~40 ns
  more per call);
- ``copy``: the same step built again, on its own inputs (another place in
  memory: a genuine, if small, difference is possible);
- ``wsmem``: ``step`` inside ``with ws:``.

Two harnesses are compared: the one ``bench/inprocess.py`` used up to this
change (the order rotated per round, which keeps every function's
predecessor the same in every round; no untimed calls before a block) and
the current ``time_interleaved`` (untimed warm-in calls before each block, a
fresh seeded random order per round).  Reported: each function's median
per-round ratio to ``step`` with its confidence interval (``_paired_ratio``,
as every in-process script); under a sound harness the A/A pair and
``wrapped`` read 1.00.

First, the cause: the time of each of the first steps after a block of the
same step, and after a block of ``copy`` (median over repetitions).

Usage, from the repository root::

    python bench/harness_ab.py [--cases train:8 cg:90] [--rounds 41]

Writes ``bench/results/harness_ab.txt``.
"""
import statistics
import sys
import time

from inprocess import case_name, cases_main, paired_rows  # bench/ is this script's directory

CASES = ["train:8", "train:64", "cg:90"]
BINS = [(0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 50), (50, 100)]


def rotated_no_warm(fns, rounds, steps):
    """The harness before this change: order rotated per round, no warm-in."""
    import gc
    names = list(fns)
    times = {k: [] for k in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for j in range(len(names)):
                k = names[(r + j) % len(names)]
                t0 = time.perf_counter()
                for _ in range(steps):
                    fns[k]()
                times[k].append((time.perf_counter() - t0) / steps)
    finally:
        gc.enable()
    return times


def first_steps(step, other, n, reps):
    """Per-step times of `step` right after a block of itself and right after
    a block of `other`: the median over `reps` repetitions, binned."""
    import gc
    clock = time.perf_counter
    traces = {"after itself": [], "after copy": []}
    gc.disable()
    try:
        for _ in range(reps):
            for label, prev in (("after itself", step), ("after copy", other)):
                for _ in range(n):
                    prev()
                tr = []
                for _ in range(n):
                    t0 = clock()
                    step()
                    tr.append(clock() - t0)
                traces[label].append(tr)
    finally:
        gc.enable()
    lines = [f"  per-step time of the first {n} steps of a block (median of {reps}):",
             "  " + " " * 14 + "".join(f"{f'[{a},{b})':>10s}" for a, b in BINS if b <= n)]
    for label, trs in traces.items():
        med = [statistics.median(tr[i] for tr in trs) for i in range(n)]
        lines.append(f"  {label:14s}" + "".join(
            f"{statistics.mean(med[a:b]) * 1e6:8.1f}us" for a, b in BINS if b <= n))
    return lines


def measure(workload, size, rounds):
    import wsmem
    from wsmem.benchmarks._env import time_interleaved
    from wsmem.benchmarks.cyclic import _MAKERS

    with wsmem.aligned_heap():
        step = _MAKERS[workload](size, False)
        copy = _MAKERS[workload](size, False)
    ws = wsmem.Workspace(f"harness_ab_{workload}_{size}")

    def wrapped():
        return step()

    def in_ws():
        with ws:
            return step()

    # In this order the rotated harness runs "step again" right after "copy"
    # in every round.
    fns = {"step": step, "copy": copy, "step again": step, "wrapped": wrapped, "wsmem": in_ws}
    for f in fns.values():
        for _ in range(3):
            f()
    t0 = time.perf_counter()
    step()
    n = max(1, int(0.03 / max(time.perf_counter() - t0, 1e-6)))
    lines = [f"{case_name(workload, size)}: {n} steps per block, {rounds} blocks each"]
    lines += first_steps(step, copy, min(100, max(20, n // 2)), 30)
    for label, times in (("rotated order, no warm-in (before)",
                          rotated_no_warm(fns, rounds, n)),
                         (f"random order, {max(1, n // 5)} warm-in calls (time_interleaved)",
                          time_interleaved(fns, rounds, n))):
        lines.append(f"  harness: {label}")
        lines += paired_rows(times, "step", 12, indent="    ")
    ws.destroy()
    return "\n".join(lines)


def main():
    return cases_main(__file__, "harness_ab", __doc__, measure, CASES, 41, lambda: [
        "ratios: median over rounds of the function's time / step's, paired by round, "
        "with the confidence interval of that median; A/A pairs should read 1.00"])


if __name__ == "__main__":
    sys.exit(main())
