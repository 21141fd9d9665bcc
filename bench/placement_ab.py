"""wsmem placement policies for large captured arrays, A/B in one process.

``bench/placement.py`` shows where each allocator puts the training step's
temporaries: mimalloc puts every large array at the same page offset, so a
ufunc's output never lies a little after its input modulo 4096 ("4K
aliasing", ``bench/aliasing.py``).  Here the cyclic benchmark's steps run in
workspaces that differ only in the placement policy their large
allocations were made under (``wsmem._capture._set_placement``), interleaved
with the plain step (tuned glibc, as ``bench/inprocess.py``); the inputs of
all are made under :func:`wsmem.aligned_heap`.  Policies:

- ``off``: a plain bump (each array right after the one before);
- ``same >= T``: arrays of T bytes and more start at page offset 64
  (header at the page start), the skipped bytes left free;
- ``alt >= T``: as ``same``, alternately at page offsets 64 and 2112.

Reported per case: the median time per step and the median of the
per-round ratios time / ``off``'s time (< 1: the policy is faster) with its
confidence interval.

Usage, from the repository root::

    python bench/placement_ab.py [--cases train:512 cg:1024] [--rounds 21]

Writes ``bench/results/placement_ab.txt``.
"""
import sys

from inprocess import cases_main, paired_table, ratio_note, time_blocks  # bench/ is this script's directory

CASES = ["train:8", "train:64", "train:512", "train:4096", "cg:90", "cg:256", "cg:1024"]
OFF = 2 ** 64 - 1
POLICIES = {"off": (OFF, 1), "same >= 1 MiB": (1 << 20, 1), "alt >= 1 MiB": (1 << 20, 2),
            "same >= 256 KiB": (256 << 10, 1), "same >= 32 KiB": (32 << 10, 1)}


def measure(workload, size, rounds):
    import wsmem
    from wsmem import _capture
    from wsmem.benchmarks.cyclic import _MAKERS

    with wsmem.aligned_heap():
        plain = _MAKERS[workload](size, False)
    fns, spaces = {"plain (tuned glibc)": plain}, []
    for label, (threshold, mode) in POLICIES.items():
        ws = wsmem.Workspace(f"placement_{workload}_{size}_{len(spaces)}")
        spaces.append(ws)

        def cycle(ws=ws, threshold=threshold, mode=mode):
            _capture._set_placement(threshold, mode)
            with ws:
                return plain()
        for _ in range(3):          # learns and maps its block
            cycle()
        fns[label] = cycle
    _capture._set_placement(OFF, 1)
    times, n = time_blocks(fns, plain, rounds)
    lines = paired_table(workload, size, n, rounds, times, "off", "policy", "off", 20,
                         more="  spilled")
    for ws, k in zip(spaces, POLICIES):
        if ws.stats().spilled_count:
            lines.append(f"  ({k}: spilled in its last cycle)")
        ws.destroy()
    return "\n".join(lines)


def main():
    return cases_main(__file__, "placement_ab", __doc__, measure, CASES, 21, lambda: [
        ratio_note("this policy", "off", "< 1: this policy faster")])


if __name__ == "__main__":
    sys.exit(main())
