# Run from the repository root on a machine with CuPy and a CUDA device; output in bench/results/gpu_diag_step_overhead.txt
"""Why is the CuPy training step slower under wsmem than under CuPy's pool?"""
import time, contextlib
import cupy as cp, wsmem
from wsmem.benchmarks import gpu

w = cp.random.default_rng(0).standard_normal((256, 1024), dtype=cp.float32)
pool = cp.cuda.MemoryPool()
for rows in (8, 64, 512):
    x = cp.random.default_rng(1).standard_normal((rows, 256), dtype=cp.float32)
    log = []
    def logging_alloc(n):
        log.append(n)
        return pool.malloc(n)
    with cp.cuda.using_allocator(logging_alloc):
        gpu._step(x, w); cp.cuda.Device().synchronize()
        log.clear(); gpu._step(x, w); cp.cuda.Device().synchronize()
    print(f"rows={rows}: allocations per step {log}")
    ws = wsmem.Workspace(f"d{rows}", location="device")
    for i in range(4):
        with ws:
            gpu._step(x, w)
        s = ws.stats()
        print(f"  cycle {i}: capacity={s.capacity} cycle_bytes={s.cycle_bytes} peak={s.peak_cycle_bytes} spilled={s.spilled_count}/{s.spilled_bytes} pages={s.pages}")
    for rep in range(3):
        res = {}
        for name, wrap, alloc in (("pool", contextlib.nullcontext, pool.malloc), ("wsmem", lambda: ws, None), ("empty-with", lambda: ws, None)):
            ctx = cp.cuda.using_allocator(alloc) if alloc else contextlib.nullcontext()
            with ctx:
                cp.cuda.Device().synchronize(); t0 = time.perf_counter()
                for _ in range(300):
                    with wrap():
                        if name != "empty-with":
                            gpu._step(x, w)
                cp.cuda.Device().synchronize(); res[name] = (time.perf_counter() - t0) / 300 * 1e6
        s = ws.stats()
        print(f"  rep {rep}: " + ", ".join(f"{k} {v:.1f} us" for k, v in res.items()) + f"; spilled={s.spilled_count} capacity={s.capacity} pages={s.pages}")
    # host-side cost only: time the launches without the GPU wait
    for name, wrap, alloc in (("pool", contextlib.nullcontext, pool.malloc), ("wsmem", lambda: ws, None)):
        ctx = cp.cuda.using_allocator(alloc) if alloc else contextlib.nullcontext()
        with ctx:
            cp.cuda.Device().synchronize(); t0 = time.perf_counter()
            for _ in range(50):
                with wrap():
                    gpu._step(x, w)
            t1 = time.perf_counter(); cp.cuda.Device().synchronize()
            print(f"  host-side per step {name}: {(t1 - t0) / 50 * 1e6:.1f} us (queue not full)")
    ws.destroy()
