"""Charts: a workspace's memory timeline and benchmark ratio bars.

matplotlib is an optional dependency (``pip install 'wsmem[plot]'``); it is
imported only when a chart is drawn, with the non-interactive Agg backend, so
importing wsmem never needs it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from wsmem._stats import WorkspaceHistory
    from wsmem._workspace import Workspace

__all__ = ["plot_history", "plot_comparison", "PLOT_HINT", "try_import_pyplot"]

PLOT_HINT = "charts need matplotlib: pip install 'wsmem[plot]'"


def try_import_pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    import sys
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")        # no display needed; a backend already in use is kept
    import matplotlib.pyplot as plt
    return plt


def _require_pyplot() -> Any:
    plt = try_import_pyplot()
    if plt is None:
        raise ImportError(PLOT_HINT)
    return plt


def _unit(max_bytes: float) -> tuple[str, float]:
    for name, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if max_bytes >= 1 << shift:
            return name, float(1 << shift)
    return "bytes", 1.0


def _rising_tail(pinned: np.ndarray, min_run: int = 5) -> int | None:
    """Index where the trailing run of strictly rising pinned bytes starts,
    when it lasts at least `min_run` cycles (a leak's signature), else None."""
    i = len(pinned) - 1
    while i > 0 and pinned[i] > pinned[i - 1]:
        i -= 1
    return i + 1 if len(pinned) - 1 - i >= min_run and i + 1 < len(pinned) else None


def plot_history(ws: "Workspace | WorkspaceHistory", path: str | os.PathLike[str],
                 *, title: str | None = None) -> str:
    """Draw a workspace's per-cycle memory timeline into a PNG file.

    Three panels over the cycles kept by :meth:`Workspace.history`:

    1. memory: the block's capacity, the bytes each cycle allocated, and
       the part of them that spilled outside the block; the cycle where the
       workspace learned its size (and any later growth) is marked;
    2. pinned: bytes still held by live views when each cycle ended (a line
       that keeps rising is a leak; see ``ws.leaks()``);
    3. page faults per cycle (with ``track=True``; otherwise a note says so).

    Parameters
    ----------
    ws : Workspace or WorkspaceHistory
        The workspace (its ``history()`` is read) or a history already taken.
    path : str or path-like
        Output file; the format follows the extension (``.png``, ``.svg``...).
    title : str, optional
        Figure title (default: the workspace's name).

    Returns
    -------
    str
        `path`, as a string.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install 'wsmem[plot]'``).

    Examples
    --------
    >>> import numpy as np, wsmem, tempfile, os
    >>> ws = wsmem.Workspace("doc_plot")
    >>> for _ in range(5):
    ...     with ws:
    ...         y = np.exp(-np.ones(10_000))
    >>> out = os.path.join(tempfile.mkdtemp(), "timeline.png")
    >>> wsmem.plot_history(ws, out) == out  # doctest: +SKIP
    True
    >>> ws.destroy()
    """
    plt = _require_pyplot()
    h = ws.history() if hasattr(ws, "history") else ws
    path = os.fspath(path)
    cyc = h.cycle.astype(np.int64)
    n = len(cyc)
    cap = h.capacity.astype(float)
    used = h.cycle_bytes.astype(float)
    spilled = h.spilled_bytes.astype(float)
    pinned = h.pinned_bytes.astype(float)
    faults = h.page_faults
    measured = n > 0 and bool((faults >= 0).all())
    top = max([1.0, *cap, *used, *h.capacity_after.astype(float)])
    unit, div = _unit(top)
    punit, pdiv = _unit(max([1.0, *pinned]))

    nrows = 3
    fig, axes = plt.subplots(nrows, 1, sharex=True, figsize=(9, 7.2),
                             gridspec_kw={"height_ratios": [3, 1.4, 1.4]})
    ax, axp, axf = axes
    fig.suptitle(title or f"workspace {h.name!r}: memory per cycle "
                 f"({n} cycle{'s' if n != 1 else ''} kept)", fontsize=12)
    if n == 0:
        ax.text(0.5, 0.5, "no cycle has ended yet", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.fill_between(cyc, cap / div, step="mid", color="#4c72b0", alpha=0.18,
                        label="capacity (block the cycle ran with)")
        ax.step(cyc, cap / div, where="mid", color="#4c72b0", lw=1.8)
        ax.plot(cyc, used / div, color="#222222", lw=1.4, marker="o" if n <= 60 else None,
                ms=3, label="cycle bytes (allocated in the cycle)")
        if spilled.any():
            ax.bar(cyc, spilled / div, width=0.8, color="#dd5555", alpha=0.85,
                   label="spilled (outside the block)")
        ax.set_ylim(0, top / div * 1.45)
        # Events: learning, then growth (capacity changed at a cycle's end).
        changed = h.capacity_after != h.capacity
        for c, learned, after in zip(cyc[changed], h.learned[changed],
                                     h.capacity_after[changed]):
            what = "learned" if learned else "grew"
            ax.axvline(c + 0.5, color="#2a9d48" if learned else "#e08a00", ls="--", lw=1.2)
            ax.annotate(f"{what}: block = {after / div:.3g} {unit}", xy=(c + 0.5, top / div),
                        xytext=(4, 2), textcoords="offset points", fontsize=8.5,
                        color="#2a9d48" if learned else "#a05a00", va="bottom")
    ax.set_ylabel(unit)
    ax.grid(True, axis="y", alpha=0.3)
    if n:
        ax.legend(loc="upper right", fontsize=8.5, framealpha=0.9, ncol=2)
    ax.set_title("memory: capacity vs what each cycle used; red = spilled", fontsize=9.5,
                 loc="left")

    if n:
        axp.fill_between(cyc, pinned / pdiv, step="mid", color="#8e44ad", alpha=0.3)
        axp.step(cyc, pinned / pdiv, where="mid", color="#8e44ad", lw=1.5)
        start = _rising_tail(pinned)
        if start is not None:
            axp.axvline(cyc[start] - 0.5, color="#8e44ad", ls=":", lw=1.2)
            axp.annotate(f"rises every cycle since cycle {cyc[start]}: views escape "
                         "(see ws.leaks())", xy=(cyc[start] - 0.5, pinned.max() / pdiv),
                         xytext=(-6, -2), textcoords="offset points", ha="right",
                         va="top", fontsize=8.5, color="#6c2a8a")
    axp.set_ylim(bottom=0)
    axp.set_ylabel(punit)
    axp.grid(True, axis="y", alpha=0.3)
    axp.set_title("pinned at cycle end (memory held by live views)", fontsize=9.5,
                  loc="left")

    if measured:
        axf.bar(cyc, faults, width=0.8, color="#555555")
        axf.set_ylabel("faults")
        axf.set_title("minor page faults of the thread during the cycle", fontsize=9.5,
                      loc="left")
    else:
        axf.text(0.5, 0.5, "page faults not measured: create the workspace with "
                 "track=True (or set WSMEM_TRACK=1)", ha="center", va="center",
                 transform=axf.transAxes, fontsize=9, color="#666666")
        axf.set_yticks([])
        axf.set_title("minor page faults per cycle", fontsize=9.5, loc="left")
    axf.grid(True, axis="y", alpha=0.3)
    axf.set_xlabel("cycle")
    if n:
        axf.set_xlim(cyc[0] - 0.6, cyc[-1] + 0.6)
        axf.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                    title: str) -> str:
    """Bar chart of one suite's comparison rows: wsmem's speed-up over each peer.

    `rows` come from :func:`wsmem.benchmarks._compare.comparison_rows`.  One
    group of bars per workload and size, one bar per peer, height = peer
    time / wsmem time (right of the 1.0 line: wsmem faster).

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    """
    plt = _require_pyplot()
    path = os.fspath(path)
    peers: list[str] = []
    for r in rows:
        for p in r["peers"]:
            if p not in peers:
                peers.append(p)
    labels = [f"{r['workload']}, {r['size']}" if r["size"] != "-" else r["workload"]
              for r in rows]
    n, k = len(rows), max(len(peers), 1)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.19 * n * k + 0.25 * n))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ratios = [v for r in rows for v in r["peers"].values()]
    for j, p in enumerate(peers):
        ys = [i + (j - (k - 1) / 2) * height for i in range(n)]
        vals = [r["peers"].get(p, np.nan) for r in rows]
        bars = ax.barh(ys, vals, height=height * 0.92, label=p, color=colors[j % len(colors)])
        for bar, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.2f}x", xy=(v, bar.get_y() + bar.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7.5)
    ax.axvline(1.0, color="black", lw=1)
    if ratios and max(ratios) > 20:
        ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels, fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlabel("peer time / wsmem time   (> 1: wsmem faster; shaded: wsmem slower)")
    ax.set_title(title, fontsize=10.5, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="peer", title_fontsize=8)
    if ratios:
        ax.set_xlim(right=max(ratios) * (1.6 if max(ratios) > 20 else 1.15))
        left = ax.get_xlim()[0]
        ax.axvspan(left, 1.0, color="#999999", alpha=0.08, lw=0)
        ax.set_xlim(left=left)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
