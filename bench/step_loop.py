"""Run one cyclic-benchmark step in a loop, for a profiler to watch.

The step and set-up of ``wsmem.benchmarks.cyclic`` (``make_step``) for one
config, warmed up, then run for ``SECONDS``; prints the time per step.
Meant to run under ``perf record`` (or with ``LD_PRELOAD`` set, as the
cyclic benchmark's peers are), e.g. the profiles behind design.md's "What
the hook keeps" (``bench/results/perf_cg90_malloc_xeon.txt``)::

    OPENBLAS_NUM_THREADS=1 perf record -o wsmem.data python bench/step_loop.py wsmem cg 90 5
    OPENBLAS_NUM_THREADS=1 LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 \\
        perf record -o mimalloc.data python bench/step_loop.py wsmem cg 90 5
    perf report -i wsmem.data --sort dso,sym --stdio

Usage: ``python bench/step_loop.py CONFIG WORKLOAD SIZE SECONDS``
(``CONFIG``: ``wsmem``, ``numpy``, ``limit``; ``WORKLOAD``: ``train``,
``cg``, ``batch``).  ``--no-raw-cache`` turns the raw hook's block cache off
(``wsmem._capture._set_raw_cache``).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    args = [a for a in argv if a != "--no-raw-cache"]
    if len(args) != 4:
        print(__doc__.split("Usage: ")[1].split("\n\n")[0], file=sys.stderr)
        return 2
    config, workload, size, seconds = args[0], args[1], int(args[2]), float(args[3])
    from wsmem.benchmarks import cyclic
    step, _ws = cyclic.make_step(config, workload, size)
    if "--no-raw-cache" in argv:
        from wsmem import _capture
        _capture._set_raw_cache(False)
    for _ in range(50):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            step()
        n += 20
    print(f"{config} {workload} {size}: {(time.perf_counter() - t0) / n * 1e6:.1f} us/step, "
          f"{n} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
