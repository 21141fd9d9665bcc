"""GPU suite: ``cupy.empty`` per cycle plus a small kernel, wsmem's device
workspace against CuPy's pools, RMM and raw cudaMalloc.

Each cycle allocates ``ALLOCS`` arrays of one size, runs one elementwise
kernel over them, and drops them.  Two figures per allocator and size:

- ``alloc_us``: host time per ``cupy.empty`` (the allocator's bookkeeping);
- ``cycle_us``: wall time per whole cycle, synchronized (what a loop pays).

And one for wsmem: device memory reserved after learning over the cycle's
peak need (``footprint``).  Peers: CuPy's default ``MemoryPool``,
``MemoryAsyncPool`` (cudaMallocAsync), RMM's pool and arena resources
through ``rmm.allocators.cupy.rmm_cupy_allocator`` when ``rmm`` imports, and
raw cudaMalloc (CuPy without a pool).  All run in one process on one GPU,
interleaved round by round; ratios are per-round and paired.
"""
from __future__ import annotations

import statistics
import time

DESCRIPTION = "GPU: cupy.empty + a kernel per cycle vs CuPy pools, RMM, cudaMalloc"

ALLOCS = 8
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]


def unavailable() -> str | None:
    """Why this suite cannot run here (CuPy or a CUDA device missing), or None."""
    from wsmem import _gpu
    return _gpu.unavailable("the gpu suite", fallback="leave it out of --suite")


def _peers():
    """name -> (setup() -> allocator callable or None, teardown())."""
    import cupy

    peers = {}
    pool = cupy.cuda.MemoryPool()
    peers["cupy_pool"] = (lambda: pool.malloc, pool.free_all_blocks)
    try:
        apool = cupy.cuda.MemoryAsyncPool()
        peers["cupy_async_pool"] = (lambda: apool.malloc, apool.free_all_blocks)
    except Exception:
        pass
    peers["cudaMalloc"] = (lambda: cupy.cuda.memory._malloc, lambda: None)
    try:
        import rmm
        from rmm.allocators.cupy import rmm_cupy_allocator
    except Exception:
        return peers
    base = rmm.mr.CudaMemoryResource()
    resources = {"rmm_pool": rmm.mr.PoolMemoryResource(base, initial_pool_size=1 << 30),
                 "rmm_arena": rmm.mr.ArenaMemoryResource(base)}
    saved = []

    def rmm_setup(mr):
        def setup():
            saved.append(rmm.mr.get_current_device_resource())
            rmm.mr.set_current_device_resource(mr)
            return rmm_cupy_allocator
        return setup

    def rmm_teardown():
        rmm.mr.set_current_device_resource(saved.pop())
    for name, mr in resources.items():
        peers[name] = (rmm_setup(mr), rmm_teardown)
    return peers


def _kernel():
    import cupy
    return cupy.ElementwiseKernel("float32 x", "float32 y", "y = x * 2.0f + 1.0f",
                                  "wsmem_bench_axpb")


def _cycle(nbytes, kernel):
    import cupy
    n = nbytes // 4
    t0 = time.perf_counter()
    arrs = [cupy.empty(n, dtype=cupy.float32) for _ in range(ALLOCS)]
    t_alloc = time.perf_counter() - t0
    for i in range(1, ALLOCS):
        kernel(arrs[i - 1], arrs[i])
    del arrs
    return t_alloc


def _measure(nbytes, cycles, kernel, wrap):
    import cupy
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    t_alloc = 0.0
    t0 = time.perf_counter()
    for _ in range(cycles):
        with wrap():
            t_alloc += _cycle(nbytes, kernel)
    stream.synchronize()
    total = time.perf_counter() - t0
    return total / cycles * 1e6, t_alloc / (cycles * ALLOCS) * 1e6


def run(quick=False, *, tiny=False, rounds=None, progress=None, **_ignored) -> dict:
    """Measure every allocator at every size (see the module docstring)."""
    import contextlib

    import cupy

    import wsmem
    from wsmem.benchmarks._env import machine_info

    reason = unavailable()
    if reason:
        raise RuntimeError(f"gpu suite unavailable: {reason}")
    say = progress or (lambda msg: None)
    sizes = SIZES[:2] if tiny else SIZES[:4] if quick else SIZES
    rounds = rounds or (1 if tiny else 3 if quick else 7)
    cycles_for = {s: max(5, min(200, (256 << 20) // (s * ALLOCS))) for s in sizes}
    kernel = _kernel()
    peers = _peers()
    failed: dict = {}
    dev = cupy.cuda.Device()
    gpu_name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    rows = []
    for size in sizes:
        cycles = 3 if tiny else cycles_for[size]
        times = {name: [] for name in list(peers) + ["wsmem"]}
        allocs = {name: [] for name in times}
        ws = wsmem.Workspace(f"bench_gpu_{size}", location="device")
        with ws:                                 # learning cycle
            _cycle(size, kernel)
        for r in range(rounds):
            for name, (setup, teardown) in list(peers.items()):
                alloc = setup()
                try:
                    with cupy.cuda.using_allocator(alloc):
                        _measure(size, 2, kernel, contextlib.nullcontext)   # warm
                        t, a = _measure(size, cycles, kernel, contextlib.nullcontext)
                except Exception as exc:        # e.g. no cudaMallocAsync support
                    say(f"gpu: {name} dropped ({type(exc).__name__}: {exc})")
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    del peers[name], times[name], allocs[name]
                    continue
                finally:
                    teardown()
                times[name].append(t)
                allocs[name].append(a)
            t, a = _measure(size, cycles, kernel, lambda: ws)
            times["wsmem"].append(t)
            allocs["wsmem"].append(a)
            say(f"gpu {size >> 10} KiB round {r + 1}/{rounds}: wsmem {t:.1f} us/cycle")
        st = ws.stats()
        need = ALLOCS * (-(-size // 256) * 256)
        for name in times:
            row = {"bytes": size, "config": name,
                   "cycle_us": statistics.median(times[name]),
                   "alloc_us": statistics.median(allocs[name])}
            if name != "wsmem":
                row["wsmem_cycle_ratio"] = statistics.median(
                    [p / w for p, w in zip(times[name], times["wsmem"])])
                row["wsmem_alloc_ratio"] = statistics.median(
                    [p / w for p, w in zip(allocs[name], allocs["wsmem"])])
            else:
                row["capacity"] = st.capacity
                row["footprint"] = st.capacity / need
            rows.append(row)
        ws.destroy()
    return {"suite": "gpu", "gpu": gpu_name, "machine": machine_info(),
            "method": (f"{ALLOCS} cupy.empty float32 arrays + {ALLOCS - 1} elementwise "
                       f"kernels per cycle; median of {rounds} interleaved rounds; "
                       "ratios = peer / wsmem per round (> 1: wsmem faster)"),
            "rows": rows, "dropped_peers": failed}


def format_table(results: dict) -> str:
    """Markdown table of run()'s results."""
    lines = [f"GPU: {results.get('gpu', '?')}; {results.get('method', '')}", "",
             "| size | config | cycle | per cupy.empty | wsmem cycle speedup | "
             "wsmem alloc speedup | footprint |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        size = r["bytes"]
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
        lines.append(
            f"| {label} | {r['config']} | {r['cycle_us']:.1f} us | {r['alloc_us']:.2f} us | "
            + (f"{r['wsmem_cycle_ratio']:.2f}x | {r['wsmem_alloc_ratio']:.2f}x | - |"
               if "wsmem_cycle_ratio" in r else
               f"- | - | {r['footprint']:.2f}x need |"))
    return "\n".join(lines)
