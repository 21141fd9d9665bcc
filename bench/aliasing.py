"""Where an output lies relative to its input modulo 4096 bytes, and what
placing wsmem's large captured arrays on pages gains.

Part 1, ufuncs on 4 MiB float64 buffers carved out of one page-aligned
array at chosen page offsets (A input, B output): ``maximum(A, 0, out=B)``,
``multiply(B, 2, out=B)``, ``negative(A, out=B)``, ``exp(B, out=B)``.  An
output a little *after* its input modulo 4096 makes loads falsely wait on
recent stores to the same low address bits ("4K aliasing").

Part 2, the cyclic benchmark's steps inside ``with ws:`` with page placement
of large captured arrays on (the default: 256 KiB and more) and off
(``wsmem._capture._set_page_place_min``), one workspace each, interleaved
blocks in one process; the ratio is off's time over on's, paired by round.

Usage, from the repository root::

    python bench/aliasing.py [--cases train:512 cg:90] [--rounds 31]

Writes ``bench/results/aliasing.txt``.
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

N = 512 * 1024                     # float64 elements: 4 MiB
OFFSETS = [(0, 0), (0, 16), (0, 64), (0, 128), (0, 2048), (16, 0), (64, 0), (0, 4032)]
CASES = ["train:8", "train:64", "train:512", "cg:90", "cg:256"]


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


def placement_section(workload, size, rounds):
    import time

    import wsmem
    from wsmem import _capture
    from wsmem.benchmarks.cyclic import _MAKERS
    from wsmem.benchmarks._env import time_interleaved

    with wsmem.aligned_heap():
        step = _MAKERS[workload](size, False)
    default = _capture._set_page_place_min(1 << 62)   # read the default
    _capture._set_page_place_min(default)
    spaces = {"on": wsmem.Workspace(f"aliasing_on_{workload}_{size}"),
              "off": wsmem.Workspace(f"aliasing_off_{workload}_{size}")}
    limits = {"on": default, "off": 1 << 62}

    def cycle(key):
        ws, limit = spaces[key], limits[key]

        def run():
            _capture._set_page_place_min(limit)
            try:
                with ws:
                    return step()
            finally:
                _capture._set_page_place_min(default)
        return run

    fns = {k: cycle(k) for k in spaces}
    for f in fns.values():
        for _ in range(3):
            f()
    t0 = time.perf_counter()
    fns["on"]()
    steps = max(1, int(0.05 / (time.perf_counter() - t0)))
    times = time_interleaved(fns, rounds, steps)
    ratios = sorted(off / on for on, off in zip(times["on"], times["off"]))
    spills = {k: ws.stats().spilled_count for k, ws in spaces.items()}
    q = len(ratios) // 4
    return (f"{workload} {size}: {steps} steps per block, {rounds} blocks; median step "
            f"on {statistics.median(times['on']) * 1e6:.1f} us, off "
            f"{statistics.median(times['off']) * 1e6:.1f} us; off/on paired median "
            f"{statistics.median(ratios):.3f} (quartiles {ratios[q]:.3f}..{ratios[-q - 1]:.3f}); "
            f"spilled_count after the last cycle {spills['on']}, {spills['off']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=CASES, metavar="WORKLOAD:SIZE")
    p.add_argument("--rounds", type=int, default=31)
    args = p.parse_args()
    cases = []
    for c in args.cases:
        wl, _, size = c.partition(":")
        if wl not in ("train", "cg") or not size.isdigit():
            p.error(f"--cases: {c!r} is not train:ROWS or cg:N")
        cases.append((wl, int(size)))
    from wsmem.benchmarks._env import write_script_results
    write_script_results(__file__, "aliasing", [
        "part 1: page offsets of a ufunc's input (A) and output (B); "
        "part 2: page placement of large captured arrays on (default threshold) vs off"],
        _sections(args.rounds, cases))


def _sections(rounds, cases):
    yield offsets_section(rounds)
    for wl, size in cases:
        yield placement_section(wl, size, rounds)


if __name__ == "__main__":
    sys.exit(main())
