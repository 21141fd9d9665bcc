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

A second workload, ``step``, is DESIGN.md's training-style step in CuPy,
float32: ``h = x @ w; h = maximum(h, 0); y = h*2 + 1; z = exp(-y); z.sum()``
with x of shape (rows, 256) and w (256, 1024), allocated once outside the
timed loop.  Five temporaries of ``rows * 4 KiB`` per step; ``cycle_us`` is
the time per step with launches queued back to back (one synchronize per
timed block), which is what a training loop sees.
"""
from __future__ import annotations

import statistics
import time

from wsmem.benchmarks._compare import _best, _paired_ratio

DESCRIPTION = ("GPU: cupy.empty + a kernel per cycle, and the training step in CuPy, "
               "vs CuPy pools, RMM, cudaMalloc")

ALLOCS = 8
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]
STEP_ROWS = [8, 64, 512, 4096]
STEP_K, STEP_N = 256, 1024


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


def _timed(work, cycles, wrap):
    """Run ``work()`` `cycles` times, each inside ``wrap()``, launches queued
    back to back with one synchronize: (microseconds per cycle, the sum of
    what `work` returned)."""
    import cupy
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    extra = 0.0
    t0 = time.perf_counter()
    for _ in range(cycles):
        with wrap():
            extra += work() or 0.0
    stream.synchronize()
    return (time.perf_counter() - t0) / cycles * 1e6, extra


def _measure(nbytes, cycles, kernel, wrap):
    """(us per cycle, us per cupy.empty) of the alloc workload."""
    t, t_alloc = _timed(lambda: _cycle(nbytes, kernel), cycles, wrap)
    return t, t_alloc / (cycles * ALLOCS) * 1e6


def _step(x, w):
    import cupy
    h = x @ w
    h = cupy.maximum(h, 0)
    y = h * 2 + 1
    z = cupy.exp(-y)
    z.sum()


def _interleave(peers, ws, rounds, measure, failed, say, label):
    """Time every peer (under its allocator) and wsmem, round by round.

    `measure(wrap, warm=False)` returns a tuple of figures, the first being
    the time per cycle.  The order rotates each round (the first block of a
    round can run slower), and every block, wsmem's too, follows a short
    untimed warm-in (``measure(..., warm=True)``).  Returns
    ``name -> list of per-round tuples``; a peer whose allocator fails is
    dropped from `peers` (and recorded in `failed`).
    """
    import contextlib

    import cupy
    times: dict = {name: [] for name in list(peers) + ["wsmem"]}
    for r in range(rounds):
        order = list(times)
        k = r % len(order)
        for name in order[k:] + order[:k]:
            if name == "wsmem":
                # warmed as every peer is: its block starts on the caches the
                # peer before it left (bench/harness_ab.py on the host)
                measure(lambda: ws, warm=True)
                times["wsmem"].append(measure(lambda: ws))
                continue
            setup, teardown = peers[name]
            ready = False
            try:
                alloc = setup()
                ready = True
                with cupy.cuda.using_allocator(alloc):
                    measure(contextlib.nullcontext, warm=True)
                    times[name].append(measure(contextlib.nullcontext))
            except Exception as exc:        # e.g. no cudaMallocAsync support
                say(f"gpu: {name} dropped ({type(exc).__name__}: {exc})")
                failed[name] = f"{type(exc).__name__}: {exc}"
                del peers[name], times[name]
            finally:
                if ready:
                    teardown()
        say(f"gpu {label} round {r + 1}/{rounds}: wsmem {times['wsmem'][-1][0]:.1f} us/cycle")
    return times


def _paired(times, name, k=0):
    """Paired ratio peer / wsmem of figure `k` (see ``_compare._paired_ratio``)."""
    return _paired_ratio([t[k] for t in times[name]], [t[k] for t in times["wsmem"]])


def run(quick=False, *, tiny=False, rounds=None, progress=None, **_ignored) -> dict:
    """Measure every allocator at every size (see the module docstring)."""
    import cupy

    import wsmem
    from wsmem.benchmarks._env import machine_info

    reason = unavailable()
    if reason:
        raise RuntimeError(f"gpu suite unavailable: {reason}")
    say = progress or (lambda msg: None)
    sizes = SIZES[:2] if tiny else SIZES[:4] if quick else SIZES
    step_rows = STEP_ROWS[:1] if tiny else STEP_ROWS[:3] if quick else STEP_ROWS
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
        ws = wsmem.Workspace(f"bench_gpu_{size}", location="device")
        with ws:                                 # learning cycle
            _cycle(size, kernel)

        def measure(wrap, warm=False, size=size, cycles=cycles):
            return _measure(size, 2 if warm else cycles, kernel, wrap)
        times = _interleave(peers, ws, rounds, measure, failed, say, f"{size >> 10} KiB")
        st = ws.stats()
        need = ALLOCS * (-(-size // 256) * 256)
        for name in times:
            row = {"workload": "alloc", "bytes": size, "config": name,
                   "cycle_us": statistics.median(t[0] for t in times[name]),
                   "alloc_us": statistics.median(t[1] for t in times[name])}
            if name != "wsmem":
                row["wsmem_cycle_ratio"] = _paired(times, name, 0)
                row["wsmem_alloc_ratio"] = _paired(times, name, 1)
            else:
                row["capacity"] = st.capacity
                row["footprint"] = st.capacity / need
            rows.append(row)
        ws.destroy()
    w = cupy.random.default_rng(0).standard_normal((STEP_K, STEP_N), dtype=cupy.float32)
    w *= 1.0 / STEP_K ** 0.5
    for nrows in step_rows:
        x = cupy.random.default_rng(1).standard_normal((nrows, STEP_K), dtype=cupy.float32)
        ws = wsmem.Workspace(f"bench_gpu_step_{nrows}", location="device")
        with ws:                                 # learning cycle
            _step(x, w)
        cycles = 3 if tiny else max(20, min(500, (1 << 30) // (nrows * STEP_N * 4 * 5)))

        def measure(wrap, warm=False, x=x, cycles=cycles):
            return _timed(lambda: _step(x, w), 3 if warm else cycles, wrap)[:1]
        times = _interleave(peers, ws, rounds, measure, failed, say, f"step rows={nrows}")
        st = ws.stats()
        for name in times:
            row = {"workload": "step", "rows": nrows, "bytes": nrows * STEP_N * 4,
                   "config": name, "cycle_us": statistics.median(t[0] for t in times[name])}
            if name != "wsmem":
                row["wsmem_cycle_ratio"] = _paired(times, name, 0)
            else:
                row["capacity"] = st.capacity
                row["footprint"] = st.capacity / max(1, st.peak_cycle_bytes)
            rows.append(row)
        ws.destroy()
        del x
    return {"suite": "gpu", "gpu": gpu_name, "machine": machine_info(),
            "method": (f"alloc: {ALLOCS} cupy.empty float32 arrays + {ALLOCS - 1} "
                       "elementwise kernels per cycle; step: x @ w, maximum, *2+1, exp, "
                       f"sum in float32, x (rows, {STEP_K}), w ({STEP_K}, {STEP_N}); "
                       f"median of {rounds} interleaved rounds; ratios = peer / wsmem "
                       "per round (> 1: wsmem faster)"),
            "rows": rows, "dropped_peers": failed}


def _label(nbytes):
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def format_table(results: dict) -> str:
    """Markdown tables of run()'s results: the alloc workload, then the step."""
    rows = results["rows"]
    lines = [f"GPU: {results.get('gpu', '?')}; {results.get('method', '')}", "",
             "| size | config | cycle | per cupy.empty | wsmem cycle speedup | "
             "wsmem alloc speedup | footprint |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("workload", "alloc") != "alloc":
            continue
        lines.append(
            f"| {_label(r['bytes'])} | {r['config']} | {r['cycle_us']:.1f} us | "
            f"{r['alloc_us']:.2f} us | "
            + (f"{r['wsmem_cycle_ratio']:.2f}x | {r['wsmem_alloc_ratio']:.2f}x | - |"
               if "wsmem_cycle_ratio" in r else
               f"- | - | {r['footprint']:.2f}x need |"))
    step = [r for r in rows if r.get("workload") == "step"]
    if step:
        lines += ["", "Training step (float32, CuPy):", "",
                  "| rows (temporary) | config | time per step | wsmem speedup | "
                  "footprint |", "|---:|---|---:|---:|---:|"]
        for r in step:
            lines.append(
                f"| {r['rows']} ({_label(r['bytes'])}) | {r['config']} | "
                f"{r['cycle_us']:.1f} us | "
                + (f"{r['wsmem_cycle_ratio']:.2f}x | - |" if "wsmem_cycle_ratio" in r else
                   f"- | {r['footprint']:.2f}x peak cycle |"))
    return "\n".join(lines)


def comparison(results: dict) -> list[dict]:
    """Rows for ``python -m wsmem bench``'s combined table (one per workload
    and size; peers' ratios are peer time / wsmem time per cycle)."""
    out = []
    by_key: dict = {}
    for r in results["rows"]:
        key = (r.get("workload", "alloc"), r["bytes"])
        by_key.setdefault(key, []).append(r)
    for (workload, nbytes), group in by_key.items():
        mine = next((r for r in group if r["config"] == "wsmem"), None)
        if mine is None:
            continue
        peers = {r["config"]: r["wsmem_cycle_ratio"] for r in group if r["config"] != "wsmem"}
        best = _best(peers)
        if workload == "step":
            name, size = "training step (CuPy)", f"rows={mine['rows']} ({_label(nbytes)})"
        else:
            name, size = f"{ALLOCS} cupy.empty + kernels", _label(nbytes)
        out.append({"suite": "gpu", "workload": name, "size": size, "wsmem": "wsmem",
                    "wsmem_time_s": mine["cycle_us"] * 1e-6, "peers": peers,
                    "best_peer": best})
    return out
