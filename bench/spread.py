"""How far apart identical configurations run: the floor under a ratio.

In one process, ``--copies`` workspaces of the same configuration run the
same cyclic-benchmark step (``wsmem.benchmarks.cyclic``), interleaved
blocks, and each is compared with the first, paired by round.  Nothing
differs between them but where their arenas lie: their addresses modulo
4096 relative to the step's inputs and the physical pages behind them (L2
sets).  Blocks are interleaved by ``time_interleaved`` (untimed warm-in
calls before each block, a fresh random order each round).
The same is done for plain NumPy: ``--copies`` copies of the step's
inputs, each on its own heap allocation.  A difference between two
allocators smaller than this spread cannot be credited to either.

Usage, from the repository root::

    python bench/spread.py [--cases train:8 cg:90] [--copies 4] [--rounds 21]

Writes ``bench/results/spread.txt``.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

CASES = ["train:8", "train:64", "train:512", "cg:90", "cg:256"]


def spread_section(workload, size, copies, rounds):
    import wsmem
    from wsmem.benchmarks._compare import _paired_ratio, _paired_ratio_ci
    from wsmem.benchmarks._env import time_interleaved
    from wsmem.benchmarks.cyclic import _MAKERS

    fns = {}
    with wsmem.aligned_heap():
        step = _MAKERS[workload](size, False)
    for i in range(copies):
        ws = wsmem.Workspace(f"spread_{workload}_{size}_{i}")

        def cycle(ws=ws):
            with ws:
                return step()
        fns[f"wsmem{i}"] = cycle
    for i in range(copies):
        fns[f"numpy{i}"] = _MAKERS[workload](size, False)   # its own inputs
    for f in fns.values():
        for _ in range(3):
            f()
    t0 = time.perf_counter()
    fns["wsmem0"]()
    steps = max(1, int(0.05 / (time.perf_counter() - t0)))
    times = time_interleaved(fns, rounds, steps)
    lines = [f"{workload} {size}: {steps} steps per block, {rounds} blocks; median step "
             f"wsmem0 {statistics.median(times['wsmem0']) * 1e6:.1f} us, numpy0 "
             f"{statistics.median(times['numpy0']) * 1e6:.1f} us"]
    for kind in ("wsmem", "numpy"):
        cells = []
        for i in range(1, copies):
            first, other = times[f"{kind}0"], times[f"{kind}{i}"]
            lo, hi, _ = _paired_ratio_ci(first, other)
            cells.append(f"{kind}0/{kind}{i} {_paired_ratio(first, other):.3f} "
                         f"[{lo:.3f}..{hi:.3f}]")
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=CASES, metavar="WORKLOAD:SIZE")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args()
    if args.copies < 2:
        p.error("--copies: need at least 2 to compare")
    from wsmem.benchmarks._env import parse_cases, write_script_results
    cases = parse_cases(p, args.cases)
    write_script_results(__file__, "spread", [
        "identical configurations in one process, each over the first, paired by round "
        "(median [confidence interval of the median, as bench/cyclic.py]; > 1: the other copy "
        "is faster)"],
        (spread_section(wl, size, args.copies, args.rounds) for wl, size in cases))


if __name__ == "__main__":
    sys.exit(main())
