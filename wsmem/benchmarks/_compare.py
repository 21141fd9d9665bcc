"""One comparison table across suites: wsmem against each peer.

Every suite reports its own way (ns per allocation, time per step, epoch
time).  :func:`comparison_rows` turns a suite's results into rows of one
shape::

    {"suite", "workload", "size", "wsmem", "wsmem_time_s",
     "peers": {peer label: peer time / wsmem time}, "best_peer"}

plus, for cyclic rows, ``"ci": {peer label: (lo, hi)}``: the run's confidence
interval of the paired ratio against its fastest peer.  A ratio > 1 means wsmem is faster than that peer.  A suite module may define
``comparison(results) -> list[dict]`` to provide these rows itself (the GPU
suite does); the built-in suites are adapted here, from the numbers they
already store, so nothing is measured twice.

>>> rows = comparison_rows({"suite": "example", "rows": [
...     {"config": "plain", "label": "plain NumPy", "epoch_time_s": 0.2},
...     {"config": "ws", "label": "WorkspaceMgr", "epoch_time_s": 0.1,
...      "ratio_vs_plain": 2.0}]})
>>> rows[0]["peers"], rows[0]["best_peer"]
({'plain NumPy': 2.0}, 'plain NumPy')
"""
from __future__ import annotations

import math
import statistics
from types import ModuleType
from typing import Any, Callable

__all__ = ["comparison_rows", "format_comparison"]

Row = dict[str, Any]


def _paired_ratio(peer_times, times):
    """Median over rounds of peer/this time, each round measured back to back."""
    return statistics.median(a / b for a, b in zip(peer_times, times))


def _median_ci(values, level=0.95):
    """Distribution-free confidence interval of the median of ``values``.

    The order statistics ``x(k)..x(n+1-k)`` (1-based) for the largest ``k``
    whose coverage ``1 - 2 P(Binomial(n, 1/2) < k)`` is at least ``level``;
    with too few values for ``level``, ``min..max`` and its coverage.
    Returns ``(lo, hi, coverage)``: 9 rounds give ``x(2)..x(8)``, 96.1%.
    """
    xs = sorted(values)
    n = len(xs)

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def _paired_ratio_ci(peer_times, times):
    """`_median_ci` of the per-round ratios peer/this time."""
    return _median_ci([a / b for a, b in zip(peer_times, times)])


def _fmt_bytes(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 0.05 else f"{v:.1f} {unit}"
    return f"{n} B"


def _fmt_time(t: float) -> str:
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    if t >= 1e-6:
        return f"{t * 1e6:.3g} µs"
    return f"{t * 1e9:.3g} ns"


def _best(peers: dict[str, float]) -> str | None:
    # The best peer is the fastest one: the smallest ratio peer/wsmem.
    return min(peers, key=peers.__getitem__) if peers else None


def _alloc(results: Row) -> list[Row]:
    by = {(r["size_bytes"], r["variant"]): r for r in results["rows"]}
    out = []
    for (size, variant), r in by.items():
        if variant != "wsmem_empty":
            continue
        base = by.get((size, "np_empty"))
        peers = {base["label"]: base["ns_per_alloc"] / r["ns_per_alloc"]} if base else {}
        out.append({"suite": "alloc", "workload": "allocation, 100 arrays/cycle",
                    "size": r["size"], "wsmem": r["label"],
                    "wsmem_time_s": r["ns_per_alloc"] * 1e-9, "peers": peers,
                    "best_peer": _best(peers)})
    return out


_CYCLIC_NAMES = {"train": ("training step", "rows"), "cg": ("CG, 2-D Poisson", "n")}


def _cyclic(results: Row) -> list[Row]:
    from wsmem.benchmarks.cyclic import LIMITS      # cyclic imports this module
    labels = {c["key"]: c["label"] for c in results.get("configs", [])}
    out = []
    for r in results["rows"]:
        if r["config"] != "wsmem":
            continue
        peers = {labels.get(k, k): r[f"ratio_vs_{k}"] for k in labels
                 if k != "wsmem" and r.get(f"ratio_vs_{k}") is not None}
        workload, param = _CYCLIC_NAMES.get(r["workload"], (r["workload"], "size"))
        size = f"{param}={r['size']}"
        if "temp_bytes" in r:
            size += f" ({_fmt_bytes(r['temp_bytes'])})"
        # The best peer has the lowest paired ratio; the out= limits are not
        # peers (they are the same math without allocations).
        limits = {labels.get(k) for k in LIMITS}
        best = _best({k: v for k, v in peers.items() if k not in limits})
        row = {"suite": "cyclic", "workload": workload, "size": size,
               "wsmem": r["label"], "wsmem_time_s": r["time_per_step_s"],
               "peers": peers, "best_peer": best}
        if r.get("ratio_vs_best_peer_ci") and r.get("best_peer") in labels:
            # the run's interval is against its fastest peer (by median time)
            lo, hi, _ = r["ratio_vs_best_peer_ci"]
            row["ci"] = {labels[r["best_peer"]]: (lo, hi)}
        out.append(row)
    return out


def _example(results: Row) -> list[Row]:
    base = next((r for r in results["rows"] if r["config"] == "plain"), None)
    out = []
    for r in results["rows"]:
        if r["config"] == "plain" or base is None:
            continue
        peers = {base["label"]: r["ratio_vs_plain"]}
        out.append({"suite": "example", "workload": f"MLP epoch, {r['label']}",
                    "size": "-", "wsmem": r["label"], "wsmem_time_s": r["epoch_time_s"],
                    "peers": peers, "best_peer": _best(peers)})
    return out


_ADAPTERS: dict[str, Callable[[Row], list[Row]]] = {
    "alloc": _alloc, "cyclic": _cyclic, "example": _example,
}


def comparison_rows(results: Row, module: ModuleType | None = None) -> list[Row]:
    """Rows of the combined table for one suite's `results` ([] if unknown).

    `module` is the suite's module: its ``comparison(results)`` wins when it
    has one.
    """
    fn = getattr(module, "comparison", None) if module is not None else None
    if fn is None:
        fn = _ADAPTERS.get(results.get("suite", ""))
    return list(fn(results)) if fn is not None else []


def format_comparison(rows: list[Row]) -> str:
    """The combined Markdown table: one line per workload and size.

    ``vs best peer`` and ``vs each peer`` are peer time / wsmem time (> 1:
    wsmem faster).
    """
    head = ["| suite | workload | size | wsmem time | best peer | vs best peer | vs each peer |",
            "|---|---|---|---:|---|---:|---|"]
    body = []
    for r in rows:
        best = r["best_peer"]
        each = ", ".join(f"{k} {v:.2f}x" for k, v in r["peers"].items()) or "-"
        body.append(f"| {r['suite']} | {r['workload']} | {r['size']} | "
                    f"{_fmt_time(r['wsmem_time_s'])} | {best or '-'} | "
                    f"{r['peers'][best]:.2f}x | {each} |" if best else
                    f"| {r['suite']} | {r['workload']} | {r['size']} | "
                    f"{_fmt_time(r['wsmem_time_s'])} | - | - | {each} |")
    note = ("\nRatios are peer time / wsmem time: > 1 means wsmem is faster, < 1 slower. "
            "Best peer: the fastest one (lowest ratio; cyclic's out= limits are not peers). "
            "wsmem time per allocation (alloc), per step (cyclic), per epoch (example).")
    return "\n".join(head + body) + "\n" + note
