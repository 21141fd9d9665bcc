"""Does a preloaded allocator speed up the parts of a step that allocate nothing?

Runs the training step's zero-allocation limit (preallocated ``out=``
buffers) and the wsmem step, each under glibc and under ``LD_PRELOAD``
mimalloc, in paired fresh processes (the four back to back, ``--pairs``
times), and prints each process's median time per step and the mean ratio
glibc/mimalloc of each pair.  If mimalloc speeds up the limit, which makes
no data allocation in its step, its edge is outside what any in-cycle
allocator can reach (the program's own arrays, NumPy's and BLAS's internal
mallocs), not in how temporaries are served.

Usage, from the repository root::

    python bench/preload_ab.py [--rows 8 512] [--pairs 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIMALLOC = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"


def child(config, rows, batches, steps):
    sys.path.insert(0, ROOT)
    from wsmem.benchmarks.cyclic import make_step
    step, ws = make_step(config, "train", rows)
    for _ in range(20):
        step()
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    print(statistics.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 512])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "ROWS"))
    args = p.parse_args()
    if args.child:
        rows = int(args.child[1])
        steps = max(5, int(0.2 / (rows * 20e-6)))     # ~0.2 s batches
        return child(args.child[0], rows, 9, steps)
    print("command: python bench/preload_ab.py " + " ".join(sys.argv[1:]))
    print(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; OPENBLAS_NUM_THREADS=1; "
          "times: median of 9 batches of ~0.2 s per process")
    env0 = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for rows in args.rows:
        res = {}
        for _ in range(args.pairs):
            for config in ("limit", "wsmem"):
                for alloc in ("glibc", "mimalloc"):
                    env = dict(env0)
                    if alloc == "mimalloc":
                        env["LD_PRELOAD"] = MIMALLOC
                    out = subprocess.run([sys.executable, __file__, "--child", config, str(rows)],
                                         env=env, capture_output=True, text=True, check=True)
                    res.setdefault((config, alloc), []).append(float(out.stdout))
        print(f"\ntrain rows={rows}: time per step (us), one process per cell")
        for config in ("limit", "wsmem"):
            g, m = res[config, "glibc"], res[config, "mimalloc"]
            ratios = [a / b for a, b in zip(g, m)]
            print(f"  {config:5s} glibc    " + " ".join(f"{t * 1e6:7.1f}" for t in g))
            print(f"  {config:5s} mimalloc " + " ".join(f"{t * 1e6:7.1f}" for t in m))
            print(f"  {config:5s} glibc/mimalloc per pair: "
                  + " ".join(f"{r:.2f}" for r in ratios)
                  + f"; median {statistics.median(ratios):.2f}; "
                  f"mimalloc faster in {sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    sys.exit(main())
