"""Allocation microbenchmark: ``np.empty`` vs the workspace allocation paths.

One *cycle* is one training-style step: 100 allocations of the same size,
all kept alive until the end of the cycle, then all dropped together.  For
``np.empty`` the arrays are held in a list that is dropped at cycle end (no
workspace is open, so NumPy allocates from the heap).  For the workspace
variants the cycle is one ``with ws:`` block, and the list is dropped just
before the block ends.  The time of a cycle therefore includes freeing (or
the workspace reset), and "ns per allocation" is cycle time / 100.

Variants (each size gets its own fresh workspace per variant, default config,
``learning="first_loop"``):

- ``np.empty``: the peer;
- ``wsmem.empty``: module-level function, allocates in the innermost open
  workspace;
- ``ws.empty``: method on the workspace object;
- ``np.asarray(wsmem.empty)``: a zero-copy ndarray view of a workspace array
  (NumPy imports it through the buffer protocol, which it always tries first).
- ``wsmem.empty(...).numpy()``: the same view built directly in Cython.

Method: every variant is warmed up first (the workspace learns its size in
its first cycle), then the number of cycles per round is calibrated so a
round takes about ``target_s``.  Rounds are interleaved (every variant once
per round, starting variant rotated), with the garbage collector disabled as
``timeit`` does.  The reported time is the median over rounds; the ratio is
``median(np.empty) / median(variant)``, so a ratio above 1 means the wsmem
variant is faster.  After each timed round the workspace's ``spilled_count``
(which describes its last cycle) is read: in steady state it must be 0.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Callable

import numpy as np

import wsmem
from wsmem.benchmarks._env import machine_info

__all__ = ["DESCRIPTION", "SIZES", "VARIANTS", "ALLOCS_PER_CYCLE", "run", "format_table"]

DESCRIPTION = ("allocation microbenchmark: 100 float64 arrays per cycle, np.empty vs "
               "wsmem.empty, ws.empty, np.asarray(wsmem.empty) and .numpy()")

ALLOCS_PER_CYCLE = 100
SIZES = (64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)  # bytes per array
_DTYPE = np.dtype(np.float64)

# (rounds, target seconds per round) per mode.  "tiny" is for tests: it checks
# the plumbing, not the speed.
_MODES = {"full": (11, 0.020), "quick": (7, 0.004), "tiny": (3, 0.0005)}
_WARMUP_CYCLES = 3   # >= 1 learning cycle plus steady-state cycles before calibration

_PER_CYCLE = range(ALLOCS_PER_CYCLE)

CycleFn = Callable[[int], int]   # cycles(n) -> elapsed ns for n cycles


def _np_empty_cycles(shape, dtype, ws) -> CycleFn:
    empty = np.empty

    def cycles(n):
        clock = time.perf_counter_ns
        t0 = clock()
        for _ in range(n):
            held = [empty(shape, dtype) for _ in _PER_CYCLE]
            del held  # cycle end: the step's arrays die together
        return clock() - t0
    return cycles


def _in_ws_cycles(pick_empty):
    """Cycle timer allocating with ``pick_empty(ws)`` (bound before the loop)."""
    def make(shape, dtype, ws) -> CycleFn:
        empty = pick_empty(ws)

        def cycles(n):
            clock = time.perf_counter_ns
            t0 = clock()
            for _ in range(n):
                with ws:
                    held = [empty(shape, dtype) for _ in _PER_CYCLE]
                    del held
            return clock() - t0
        return cycles
    return make


_wsmem_empty_cycles = _in_ws_cycles(lambda ws: wsmem.empty)
_ws_empty_cycles = _in_ws_cycles(lambda ws: ws.empty)


def _view_cycles(to_ndarray):
    def make(shape, dtype, ws) -> CycleFn:
        empty = wsmem.empty

        def cycles(n):
            clock = time.perf_counter_ns
            t0 = clock()
            for _ in range(n):
                with ws:
                    held = [to_ndarray(empty(shape, dtype)) for _ in _PER_CYCLE]
                    del held  # views pin their memory: drop them inside the cycle
            return clock() - t0
        return cycles
    return make


_asarray_cycles = _view_cycles(np.asarray)
_numpy_cycles = _view_cycles(wsmem.WsArray.numpy)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of allocating; ``make(shape, dtype, ws)`` returns its cycle timer."""

    key: str
    label: str
    uses_workspace: bool
    make: Callable[..., CycleFn]


VARIANTS = (
    Variant("np_empty", "np.empty", False, _np_empty_cycles),
    Variant("wsmem_empty", "wsmem.empty", True, _wsmem_empty_cycles),
    Variant("ws_empty", "ws.empty", True, _ws_empty_cycles),
    Variant("asarray_wsmem_empty", "np.asarray(wsmem.empty)", True, _asarray_cycles),
    Variant("numpy_wsmem_empty", "wsmem.empty(...).numpy()", True, _numpy_cycles),
)
_PEER = VARIANTS[0]


def _calibrate(cycles: CycleFn, target_ns: int) -> int:
    """Cycles per round so that one round takes about ``target_ns``."""
    n = 1
    while True:
        t = max(cycles(n), 1)
        if t >= target_ns // 4 or n >= 1 << 20:
            return max(1, round(n * target_ns / t))
        n *= 2


def _format_size(nbytes: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def _bench_size(nbytes, rounds, target_ns, progress):
    """Time every variant at one array size; returns one row per variant."""
    shape = (nbytes // _DTYPE.itemsize,)
    workspaces, timers, ns, spilled, capacity = {}, {}, {}, {}, {}
    try:
        for v in VARIANTS:
            ws = wsmem.Workspace(f"bench_alloc_{v.key}_{nbytes}") if v.uses_workspace else None
            workspaces[v.key] = ws
            timers[v.key] = v.make(shape, _DTYPE, ws)
            timers[v.key](_WARMUP_CYCLES)       # the workspace learns here
            ns[v.key], spilled[v.key] = [], 0
        per_round = {k: _calibrate(t, target_ns) for k, t in timers.items()}
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for r in range(rounds):
                start = r % len(VARIANTS)
                for v in VARIANTS[start:] + VARIANTS[:start]:
                    n = per_round[v.key]
                    elapsed = timers[v.key](n)
                    ns[v.key].append(elapsed / (n * ALLOCS_PER_CYCLE))
                    ws = workspaces[v.key]
                    if ws is not None:
                        # stats() describes the last finished cycle
                        spilled[v.key] = max(spilled[v.key], ws.stats().spilled_count)
        finally:
            if gc_was_enabled:
                gc.enable()
        for key, ws in workspaces.items():
            if ws is not None:
                capacity[key] = ws.stats().capacity
    finally:
        timers.clear()
        for ws in workspaces.values():
            if ws is not None:
                ws.destroy()

    peer = statistics.median(ns[_PEER.key])
    rows = []
    for v in VARIANTS:
        med = statistics.median(ns[v.key])
        rows.append({
            "size_bytes": nbytes,
            "size": _format_size(nbytes),
            "variant": v.key,
            "label": v.label,
            "ns_per_alloc": med,
            "ns_per_alloc_min": min(ns[v.key]),
            "ns_per_alloc_max": max(ns[v.key]),
            "ns_per_alloc_rounds": ns[v.key],
            "ratio_vs_np_empty": peer / med,
            "cycles_per_round": per_round[v.key],
            "steady_spilled_count": spilled[v.key] if v.uses_workspace else None,
            "workspace_capacity": capacity.get(v.key),
        })
    if progress is not None:
        parts = ", ".join(f"{r['label']} {r['ns_per_alloc']:.0f} ns" for r in rows)
        progress(f"alloc {_format_size(nbytes)}: {parts}")
    return rows


def run(quick: bool = False, *, tiny: bool = False, rounds: int | None = None,
        target_s: float | None = None, sizes=None,
        progress: Callable[[str], None] | None = None) -> dict:
    """Run the allocation benchmark and return JSON-ready results.

    Parameters
    ----------
    quick : bool
        7 rounds of ~4 ms per variant and size (a few seconds in all) instead
        of 11 rounds of ~20 ms.
    tiny : bool
        3 rounds of ~0.5 ms: checks the plumbing only (used by the tests).
    rounds, target_s : optional
        Override the number of rounds and the seconds per round.
    sizes : iterable of int, optional
        Array sizes in bytes (default: :data:`SIZES`).
    progress : callable, optional
        Receives one line per finished size.

    Returns
    -------
    dict
        ``suite``, ``machine`` (see :func:`wsmem.benchmarks._env.machine_info`),
        ``method`` (the parameters used), ``rows`` (one per size and variant,
        with ``ns_per_alloc`` (median), ``ratio_vs_np_empty`` and
        ``steady_spilled_count``), ``steady_state_ok`` (no workspace spilled
        after warm-up) and ``elapsed_s``.

    Examples
    --------
    >>> from wsmem.benchmarks import alloc
    >>> res = alloc.run(tiny=True, sizes=[1024])
    >>> [r["variant"] for r in res["rows"]]
    ['np_empty', 'wsmem_empty', 'ws_empty', 'asarray_wsmem_empty', 'numpy_wsmem_empty']
    >>> res["steady_state_ok"]
    True
    """
    mode = "tiny" if tiny else "quick" if quick else "full"
    default_rounds, default_target = _MODES[mode]
    rounds = default_rounds if rounds is None else int(rounds)
    target_s = default_target if target_s is None else float(target_s)
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    if not target_s > 0:
        raise ValueError(f"target_s={target_s} must be > 0")
    sizes = tuple(SIZES if sizes is None else sizes)
    for s in sizes:
        if s < _DTYPE.itemsize or s % _DTYPE.itemsize:
            raise ValueError(f"size {s} must be a positive multiple of 8 bytes (float64)")
    if wsmem.current_workspace() is not None:
        raise RuntimeError("run the alloc benchmark with no workspace open: np.empty "
                           "would be captured by the open workspace")

    t0 = time.perf_counter()
    rows = []
    for nbytes in sizes:
        rows.extend(_bench_size(nbytes, rounds, int(target_s * 1e9), progress))
    return {
        "suite": "alloc",
        "schema": 1,
        "machine": machine_info(),
        "method": {
            "mode": mode,
            "allocs_per_cycle": ALLOCS_PER_CYCLE,
            "dtype": str(_DTYPE),
            "rounds": rounds,
            "target_s_per_round": target_s,
            "warmup_cycles": _WARMUP_CYCLES,
            "statistic": "median over rounds of ns per allocation (cycle time / "
                         f"{ALLOCS_PER_CYCLE}, freeing included); ratio = "
                         "np.empty / variant (> 1: wsmem faster)",
            "interleaved": True,
            "gc_disabled_while_timing": True,
            "workspace_config": repr(wsmem.WorkspaceConfig()),
        },
        "variants": [{"key": v.key, "label": v.label} for v in VARIANTS],
        "rows": rows,
        "steady_state_ok": all(not r["steady_spilled_count"] for r in rows),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }


def format_table(results: dict) -> str:
    """Markdown table: one line per size, ns per allocation and ratio per variant."""
    labels = {v["key"]: v["label"] for v in results["variants"]}
    keys = list(labels)
    by_size: dict[int, dict[str, dict]] = {}
    for row in results["rows"]:
        by_size.setdefault(row["size_bytes"], {})[row["variant"]] = row
    header = ["size"] + [f"{labels[k]} ns/alloc" + ("" if k == _PEER.key else " (ratio)")
                         for k in keys]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    for nbytes in sorted(by_size):
        cells = [_format_size(nbytes)]
        for k in keys:
            row = by_size[nbytes].get(k)
            if row is None:
                cells.append("-")
                continue
            cell = f"{row['ns_per_alloc']:,.0f}"
            if k != _PEER.key:
                cell += f" ({row['ratio_vs_np_empty']:.2f}x)"
                if row["steady_spilled_count"]:
                    cell += f" [spilled {row['steady_spilled_count']}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    m = results["method"]
    lines.append("")
    lines.append(f"{m['allocs_per_cycle']} {m['dtype']} arrays per cycle, kept alive "
                 f"until cycle end; median of {m['rounds']} interleaved rounds of "
                 f"~{m['target_s_per_round'] * 1e3:g} ms; ratio = np.empty time / "
                 "variant time (> 1: wsmem faster).")
    if results["steady_state_ok"]:
        lines.append("Steady state: spilled_count == 0 in every workspace after warm-up.")
    else:
        bad = [f"{r['label']} @ {r['size']}: {r['steady_spilled_count']}"
               for r in results["rows"] if r["steady_spilled_count"]]
        lines.append("WARNING: workspaces still spilled after warm-up: " + "; ".join(bad))
    return "\n".join(lines)
