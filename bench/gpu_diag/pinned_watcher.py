# Run from the repository root on a machine with CuPy and a CUDA device; output in bench/results/gpu_diag_pinned_watcher.txt
"""Device diagnostics: who keeps workspace bytes pinned after the GPU tests."""
import gc, sys, threading, time
import numpy as np, cupy as cp, wsmem
from wsmem._workspace import live_workspaces

def pinned():
    return {w.name: w.stats().pinned_bytes for w in live_workspaces() if w.stats().pinned_bytes}

def holders(label):
    gc.collect()
    print(label, "pinned:", pinned(), "threads:", [t.name for t in threading.enumerate()])
    for w in live_workspaces():
        if w.stats().pinned_bytes:
            try:
                for lk in w.leaks():
                    print("  leak:", str(lk)[:600])
            except Exception as e:
                print("  leaks() failed", e)
    for o in gc.get_objects():
        if isinstance(o, (np.ndarray, cp.ndarray)) and o.nbytes in (96, 1 << 23, 128):
            print("  obj", type(o).__name__, o.shape, o.dtype, "refs:",
                  [type(r).__name__ + ":" + repr(r)[:120] for r in gc.get_referrers(o)][:6])

print("cupy", cp.__version__)
ws = wsmem.Workspace("gpu0", location="pinned", track=True)
with ws:
    h = wsmem.full((1 << 20,), 2.0)
    d = cp.asarray(h.numpy())
    print("sum", float(d.sum()))
    del h, d
ws.destroy()
holders("after pinned asarray")
cp.cuda.get_current_stream().synchronize()
cp.cuda.alloc_pinned_memory(1)
holders("after alloc_pinned_memory(1)")

items = [np.asfortranarray(np.arange(12.0).reshape(3, 4) + k) for k in range(6)]
with wsmem.prefetch(iter(items), buffer=2, device=0) as it:
    for k, x in enumerate(it):
        assert (cp.asnumpy(x) == items[k]).all()
del x, it
holders("after prefetch fortran")
time.sleep(2)
holders("after prefetch fortran + 2 s")
