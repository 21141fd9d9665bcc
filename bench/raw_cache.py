"""The raw hook's block cache, A/B in one process.

wsmem's raw-domain hook (``wsmem.align_ufunc_buffers``) keeps, per thread,
a few freed blocks of the sizes glibc serves from its bins rather than its
per-thread cache: NumPy's iterators (1,033 to 4,096 bytes) and the
page-aligned ufunc buffers (32 to 512 KiB), and hands them to the
thread's next requests (``docs/design.md``, "What the hook keeps").  Here the
cyclic benchmark's steps run with that cache on and off
(``wsmem._capture._set_raw_cache``), inside a workspace and as plain NumPy
(the hook serves every raw allocation of the process once installed),
interleaved as in ``bench/inprocess.py`` (tuned glibc; the inputs made
under :func:`wsmem.aligned_heap`).  Also reported: the cache's hits per
step inside the workspace.

Reported per case: the median time per step and the median of the
per-round ratios time / ``wsmem, cache off``'s time (< 1: faster) with its
confidence interval.

Usage, from the repository root::

    python bench/raw_cache.py [--cases cg:90 train:8] [--rounds 21]

Writes ``bench/results/raw_cache.txt``.
"""
import sys

from inprocess import cases_main, paired_table, ratio_note, time_blocks  # bench/ is this script's directory

CASES = ["train:8", "train:64", "train:512", "train:4096", "cg:90", "cg:256", "cg:1024"]
OFF = "wsmem, cache off"


def measure(workload, size, rounds):
    import wsmem
    from wsmem import _capture
    from wsmem.benchmarks.cyclic import _MAKERS

    with wsmem.aligned_heap():
        plain = _MAKERS[workload](size, False)
    ws = wsmem.Workspace(f"raw_cache_{workload}_{size}")

    def in_ws(on):
        def cycle():
            _capture._set_raw_cache(on)
            with ws:
                return plain()
        return cycle

    def outside(on):
        def step():
            _capture._set_raw_cache(on)
            return plain()
        return step

    fns = {OFF: in_ws(False), "wsmem, cache on": in_ws(True),
           "plain, cache off": outside(False), "plain, cache on": outside(True)}
    for fn in fns.values():         # the workspace learns its size; the hook is on
        for _ in range(3):
            fn()
    if not wsmem.ufunc_buffers_aligned():
        raise SystemExit("the raw hook is not installed here; nothing to measure")
    before = _capture._raw_cache_info()
    for _ in range(10):
        fns["wsmem, cache on"]()
    after = _capture._raw_cache_info()
    hits = (after["hits"] - before["hits"]) / 10
    misses = (after["misses"] - before["misses"]) / 10
    times, n = time_blocks(fns, plain, rounds)
    _capture._set_raw_cache(True)
    lines = paired_table(workload, size, n, rounds, times, OFF, "config", "off", 20,
                         f"; cache hits per step {hits:g}, misses {misses:g}")
    ws.destroy()
    return "\n".join(lines)


def main():
    return cases_main(__file__, "raw_cache", __doc__, measure, CASES, 21, lambda: [
        ratio_note("this config", f"'{OFF}'", "< 1: faster")])


if __name__ == "__main__":
    sys.exit(main())
