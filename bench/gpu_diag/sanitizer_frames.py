# Run from the repository root on a machine with CuPy and a CUDA device; output in bench/results/gpu_diag_sanitizer_frames.txt
"""Under compute-sanitizer: does prefetch(device=0) leave device-ring bytes pinned?"""
import gc, sys, threading, time
import numpy as np, cupy as cp, wsmem
from wsmem._workspace import live_workspaces

def pinned():
    return {w.name: w.stats().pinned_bytes for w in live_workspaces() if w.stats().pinned_bytes}

def case(n):
    items = [np.asfortranarray(np.arange(12.0).reshape(3, 4) + k) for k in range(6)]
    it = wsmem.prefetch(iter(items), buffer=2, device=0)
    t0 = time.perf_counter()
    with it:
        for k, x in enumerate(it):
            assert (cp.asnumpy(x) == items[k]).all()
        t1 = time.perf_counter()
    t2 = time.perf_counter()
    print(n, "loop %.3f s close %.3f s" % (t1 - t0, t2 - t1), "thread alive:", it._thread.is_alive(),
          "pinned with x alive:", pinned(), "x refs:", sys.getrefcount(x), flush=True)
    return it._thread

for n in range(6):
    th = case(n)
    gc.collect()
    print(n, "after return: pinned", pinned(), "thread alive", th.is_alive(), flush=True)
    if pinned():
        for w in live_workspaces():
            print("  ", w.name, w.stats())
        time.sleep(1.0); gc.collect()
        print(n, "after 1 s: pinned", pinned(), "thread alive", th.is_alive(), flush=True)
        for o in gc.get_objects():
            if isinstance(o, cp.ndarray) and o.nbytes == 96:
                print("   live cupy", o.shape, o.flags.f_contiguous,
                      [type(r).__name__ + ":" + repr(r)[:150] for r in gc.get_referrers(o)][:5])
