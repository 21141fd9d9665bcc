"""What huge pages are worth to wsmem's blocks, in one process.

wsmem maps main blocks of 2 MiB and more 2 MiB aligned, in whole 2 MiB
pages, and advises them ``MADV_HUGEPAGE`` (``pyx/wsmem/_pages.pyx``).  Here
the cyclic benchmark's steps (``wsmem.benchmarks.cyclic``) run inside three
workspaces that differ only in that threshold when their block was mapped:
the default (2 MiB), never (no advice, 4 KiB pages), and 4 MiB (the default
until the blocks of the training step at rows=64 and of CG n=256, 2.6 and
3.9 MiB, were measured faster on huge pages), interleaved with the plain
step (tuned glibc: the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` raised, as
``bench/inprocess.py``).  The inputs of all of them are made under
:func:`wsmem.aligned_heap`.  Reported per case: each workspace's block size
and how much of it the kernel backed with huge pages (``AnonHugePages`` of its
mapping in /proc/self/smaps, after the run), and the median of the per-round
time ratios to plain and to the default, with confidence intervals (as
``bench/cyclic.py``).  NumPy's own handler (plain) also advises arrays of
4 MiB and more, but a heap array covers whole huge pages only in part.

Usage, from the repository root::

    python bench/hugepages.py [--cases train:512 cg:1024] [--rounds 31]

Writes ``bench/results/hugepages.txt``.
"""
import sys

from inprocess import case_name, cases_main, paired_cell, time_blocks  # bench/ is this script's directory

CASES = ["train:8", "train:64", "train:512", "train:4096", "cg:90", "cg:256", "cg:1024"]
NEVER = 2 ** 64 - 1
THRESHOLDS = {"2 MiB (default)": 2 << 20, "never": NEVER, "4 MiB": 4 << 20}


def measure(workload, size, rounds):
    import wsmem
    from wsmem import _pages
    from wsmem.benchmarks.cyclic import _MAKERS, _block_huge_kib

    with wsmem.aligned_heap():
        plain = _MAKERS[workload](size, False)
    fns, spaces = {"plain (tuned glibc)": plain}, {}
    for label, threshold in THRESHOLDS.items():
        old = _pages._set_huge_threshold(threshold)
        try:
            ws = wsmem.Workspace(f"hugepages_{workload}_{size}_{len(spaces)}")

            def cycle(ws=ws):
                with ws:
                    return plain()
            for _ in range(3):          # learns and maps its block here
                cycle()
        finally:
            _pages._set_huge_threshold(old)
        spaces[label] = ws
        fns[f"wsmem, huge from {label}"] = cycle
    times, n = time_blocks(fns, plain, rounds)
    lines = [f"{case_name(workload, size)}: {n} steps per block, {rounds} blocks each",
             f"  {'config':32s} {'median':>10s} {'mapping':>10s} {'huge':>10s}  "
             f"{'time/plain [CI]':>26s}  {'time/default [CI]':>26s}"]
    base, default = times["plain (tuned glibc)"], times["wsmem, huge from 2 MiB (default)"]
    for k, t in times.items():
        ws = spaces.get(k.replace("wsmem, huge from ", ""))
        block = huge = ""
        if ws is not None:
            mapped, anon = _block_huge_kib(ws) or (0, 0)
            block, huge = f"{mapped / 1024:.1f} MiB", f"{anon / 1024:.1f} MiB"
            if ws.stats().spilled_count:
                block += " (spilled)"
        cells = [paired_cell(t, ref) for ref in (base, default)]
        lines.append(f"  {k:32s} {sorted(t)[rounds // 2] * 1e6:8.1f}us {block:>10s} "
                     f"{huge:>10s}  {cells[0]:>26s}  {cells[1]:>26s}")
    for ws in spaces.values():
        ws.destroy()
    return "\n".join(lines)


def notes():
    from wsmem.benchmarks._env import thp_defrag, transparent_hugepage
    return [f"transparent_hugepage={transparent_hugepage()} defrag={thp_defrag()}",
            "ratios: median over rounds of this config's time / the reference's, paired by "
            "round (< 1: this config faster), with the confidence interval of that median"]


def main():
    return cases_main(__file__, "hugepages", __doc__, measure, CASES, 31, notes)


if __name__ == "__main__":
    sys.exit(main())
