"""What the ``with ws:`` frame costs inside the training step, timed in place.

One process (tuned glibc not needed: nothing here goes to malloc in steady
state).  Each step enters the workspace, runs the unchanged training step,
drops its arrays and leaves; ``time.perf_counter_ns`` around ``__enter__``,
around the ``del`` of the step's three arrays (their frees through the
handler) and around ``__exit__`` (the frame's restore and the cycle's end).
These are the costs with the caches as the step leaves them, which a
``timeit`` loop of an empty ``with ws:`` cannot show.

Usage, from the repository root::

    python bench/frame_in_step.py [--rows 8 64 512 4096] [--steps 200]

Prints one line per size (mean microseconds over the timed steps, after 3
untimed ones).
"""
import argparse
import sys
import time


def measure(rows, steps):
    import numpy as np
    import wsmem
    from wsmem.benchmarks.cyclic import _train_inputs

    with wsmem.aligned_heap():
        x, w = _train_inputs(rows)
    ws = wsmem.Workspace(f"frame_in_step_{rows}")
    pc = time.perf_counter_ns
    acc = [0, 0, 0, 0]
    for r in range(steps + 3):
        t0 = pc()
        ws.__enter__()
        t1 = pc()
        h = x @ w
        h = np.maximum(h, 0)
        y = h * 2 + 1
        z = np.exp(-y)
        float(z.sum())
        t2 = pc()
        del h, y, z
        t3 = pc()
        ws.__exit__(None, None, None)
        t4 = pc()
        if r >= 3:
            for i, d in enumerate((t1 - t0, t3 - t2, t4 - t3, t2 - t1)):
                acc[i] += d
    ws.destroy()
    enter, free, leave, body = (a / steps / 1000 for a in acc)
    return (f"rows={rows}: enter {enter:.2f} us, the step's 3 frees {free:.2f} us, "
            f"exit {leave:.2f} us; the step body {body:.1f} us "
            f"(frame {100 * (enter + leave) / body:.2f}% of it)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64, 512, 4096])
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    for rows in a.rows:
        steps = a.steps if rows < 4096 else max(10, a.steps // 20)
        print(measure(rows, steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
