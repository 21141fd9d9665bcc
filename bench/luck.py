"""Many fresh processes per config: how far per-process luck moves a step.

``bench/cyclic.py`` runs 5 worker processes per config and takes, per
round, the median over them.  On a VM a process's memory layout (which
physical pages its inputs, temporaries and workspace block got) moves the
step by several percent, and with 5 processes two or three unlucky ones
move a config's median.  Here each config gets ``--processes`` fresh
workers (the cyclic benchmark's own worker, environment and step:
``wsmem.benchmarks.cyclic``), started one at a time in a fresh random
config order per repetition; each worker warms up, times ``--batches``
batches of ``--target-s`` seconds and quits.  A worker's time is the
median of its batches; a config's time is the median over its workers.

Reported per config: that median, every worker's time (sorted), and the
config's median time over the first config's (with wsmem first, as by
default: > 1 means wsmem is faster, the convention of the cyclic tables),
with a 95% bootstrap interval over workers (both configs' workers
resampled, 2,000 times): an interval that holds 1.0 is a difference that
this many workers cannot tell from per-process luck.  The interval covers
the spread of workers, which the cyclic table's intervals (over rounds)
do not.

Usage, from the repository root::

    python bench/luck.py [--case train:8] [--processes 15]
                         [--configs wsmem,mimalloc,limit,numpy] [--batches 7]

Prints the table (quote runs in ``bench/results/`` with the command) and
writes every worker's time to ``--json`` when given.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ratio_ci(these, ref, draws=2000, seed=12345):
    """95% bootstrap interval of ``median(these) / median(ref)``, each
    list resampled with replacement (workers are independent)."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(these, k=len(these))) /
                    statistics.median(rng.choices(ref, k=len(ref))) for _ in range(draws))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def main(argv=None):
    from wsmem.benchmarks import cyclic as C

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="train:8", help="workload:size, e.g. train:8 or cg:256")
    p.add_argument("--processes", type=int, default=15)
    p.add_argument("--configs", default="wsmem,mimalloc,limit,numpy")
    p.add_argument("--batches", type=int, default=7)
    p.add_argument("--target-s", type=float, default=0.1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    workload, size = a.case.split(":")
    size = int(size)
    configs = a.configs.split(",")
    for c in configs:
        if c not in C.CONFIGS:
            p.error(f"unknown config {c!r}; choose from {', '.join(C.CONFIGS)}")
        ok, why = C.config_available(c)
        if not ok:
            p.error(why)
    times = {c: [] for c in configs}
    t_start = time.time()
    for _ in range(a.processes):
        order = configs[:]
        random.shuffle(order)
        for c in order:
            w = C._Worker(c, workload, size, a.target_s, 1)
            try:
                w.read()
                ts = [w.ask("run")["time_per_step_s"] for _ in range(a.batches)]
                w.close()
            finally:
                w.proc.wait()
            times[c].append(statistics.median(ts))
    med = {c: statistics.median(v) for c, v in times.items()}
    first = configs[0]
    print(f"{workload} {size}: {a.processes} fresh worker processes per config, each the "
          f"median of {a.batches} batches of ~{a.target_s:g} s; {time.time() - t_start:.0f} s")
    for c in configs:
        v = sorted(times[c])
        spread = v[-1] / v[0]
        lo, hi = median_ratio_ci(times[c], times[first])
        print(f"  {c:12s} median {med[c] * 1e6:9.1f} us  this/{first} {med[c] / med[first]:.4f} "
              f"[{lo:.3f}..{hi:.3f}]  max/min {spread:.3f}")
        print("      workers (us): " + " ".join(f"{x * 1e6:.1f}" for x in v))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"case": a.case, "processes": a.processes, "batches": a.batches,
                       "target_s": a.target_s, "times_s": times}, f, indent=1)


if __name__ == "__main__":
    main()
