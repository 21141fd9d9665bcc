"""What one `with` frame of each kind costs hot, in a tight loop.

Each figure is the best of 7 loops of 100,000 frames, in ns per frame,
loop overhead included; every kind runs in a context of its own.  Kinds:
``ws`` (a capturing workspace), ``ws capture=False``, ``scope_out``, and
``ws + scope_out`` (a ``scope_out()`` frame inside ``with ws:``).

``--tree DIR`` imports wsmem from another checkout (built in place), to
compare two versions in alternating processes.

Usage, from the repository root::

    python bench/frame_hot.py [--tree DIR]
"""
import argparse
import contextvars
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(a.tree))
    import wsmem

    ws = wsmem.Workspace("frame_hot")
    nc = wsmem.Workspace("frame_hot_nocap", capture=False)

    def f_ws():
        with ws:
            pass

    def f_nc():
        with nc:
            pass

    def f_so():
        with wsmem.scope_out():
            pass

    def f_ws_so():
        with ws:
            with wsmem.scope_out():
                pass

    def best(f):
        t = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(100_000):
                f()
            t = min(t, (time.perf_counter() - t0) / 100_000)
        return t * 1e9

    print(f"wsmem from {os.path.dirname(wsmem.__file__)}; ns per frame, hot")
    for name, f in (("ws", f_ws), ("ws capture=False", f_nc), ("scope_out", f_so),
                    ("ws + scope_out", f_ws_so)):
        print(f"  {name:18s} {contextvars.copy_context().run(best, f):7.0f}")
    ws.destroy()
    nc.destroy()


if __name__ == "__main__":
    main()
