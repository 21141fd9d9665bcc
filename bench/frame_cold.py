"""What one `with ws:` frame costs when it runs with cold caches, as it does in a loop.

In a loop ``for ...: with ws: step()`` the frame runs once per step, right
after the step has pushed wsmem's code and data (and CPython's for the
frame) out of the caches, so what a frame costs there is mostly how many
distinct cache lines it touches, not its instruction count (``timeit``
loops run it hot).  This times one call of each set-up right after reading
a buffer larger than the L2 cache (``--evict-mib``, 6 MiB by default),
set-ups in a fresh random order each round, each set-up in a context of
its own (as a loop's frames follow one another with nothing else setting
context variables in between), and reports the median over rounds minus
that of an empty function call:

- ``null cm``: a ``with`` over a Python object whose ``__enter__`` and
  ``__exit__`` do nothing (the ``with`` protocol and two Python calls);
- ``C null cm``: a ``with`` over ``wsmem._workspace._NullFrame``, whose
  ``__enter__`` and ``__exit__`` are C, bound as Workspace's are, and do
  nothing (the ``with`` protocol itself: the floor of a C-level frame;
  "n/a" for a ``--tree`` without it);
- ``var set/reset``: one context-variable set and its reset, no ``with``
  (what NumPy's handler variable costs any frame at the least);
- ``scope_out``: ``with wsmem.scope_out():`` (NumPy's handler variable set
  to its default and put back, no workspace);
- ``ws capture=False`` and ``ws``: an empty cycle of a workspace, without
  and with capture.

``--tree DIR`` imports wsmem from another checkout (built in place), to
compare two versions in alternating processes.

Usage, from the repository root::

    python bench/frame_cold.py [--rounds 800] [--evict-mib 6] [--tree DIR] [--skip ROWS]

Prints one line per set-up (nothing is written: quote runs in
``bench/results/`` with the command).
"""
import argparse
import contextvars
import os
import random
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=800)
    p.add_argument("--evict-mib", type=float, default=6.0)
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--skip", default="", help="rows to leave out of the mix, comma-separated")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(a.tree))
    import numpy as np
    import wsmem

    big = np.ones(int(a.evict_mib * (1 << 20)) // 8)
    ws = wsmem.Workspace("frame_cold")
    nc = wsmem.Workspace("frame_cold_nocap", capture=False)
    var = contextvars.ContextVar("frame_cold")

    class Null:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    null = Null()
    null_c = getattr(wsmem._workspace, "_NullFrame", None)
    null_c = null_c() if null_c is not None else None

    def f_none():
        pass

    def f_null():
        with null:
            pass

    def f_null_c():
        with null_c:
            pass

    def f_var():
        t = var.set(1)
        var.reset(t)

    def f_scope():
        with wsmem.scope_out():
            pass

    def f_nc():
        with nc:
            pass

    def f_ws():
        with ws:
            pass

    fns = {"none": f_none, "null cm": f_null, "C null cm": f_null_c,
           "var set/reset": f_var, "scope_out": f_scope, "ws capture=False": f_nc,
           "ws": f_ws}
    if null_c is None:
        del fns["C null cm"]
    for k in filter(None, a.skip.split(",")):
        if k not in fns or k == "none":
            p.error(f"--skip: no row {k!r} to leave out (rows: {', '.join(list(fns)[1:])})")
        del fns[k]
    contexts = {k: contextvars.copy_context() for k in fns}
    clock = time.perf_counter_ns
    times = {k: [] for k in fns}
    keys = list(fns)
    for _ in range(a.rounds):
        random.shuffle(keys)
        for k in keys:
            big.sum()                   # evict: the frame runs as after a step
            f = fns[k]
            run = contexts[k].run
            t0 = clock()
            run(f)
            times[k].append(clock() - t0)
    base = statistics.median(times["none"])
    print(f"wsmem from {os.path.dirname(wsmem.__file__)}; {a.rounds} rounds, "
          f"{a.evict_mib:g} MiB read before each call")
    if null_c is None:
        print(f"  {'C null cm':18s} n/a (no wsmem._workspace._NullFrame in this tree)")
    for k in fns:
        m = statistics.median(times[k])
        print(f"  {k:18s} median {m:7.0f} ns   over an empty call {m - base:7.0f} ns")
    ws.destroy()
    nc.destroy()


if __name__ == "__main__":
    main()
