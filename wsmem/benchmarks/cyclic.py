"""Cyclic-step benchmark: unchanged NumPy code per step, seven memory set-ups (two of them zero-allocation limits).

Two workloads, each one *step* repeated many times:

- ``train``: DESIGN.md's training-style step, ``h = x @ w; h = np.maximum(h, 0);
  y = h * 2 + 1; z = np.exp(-y); s = float(z.sum())`` with ``x`` of shape
  ``(rows, 256)`` and ``w`` of shape ``(256, 1024)``, float64.  Sizes are
  ``rows`` = 8, 64, 512, 4096: temporaries of 64 KiB, 512 KiB, 4 MiB, 32 MiB.
- ``cg``: a workload the allocator was not designed around: conjugate
  gradient on the 2-D Poisson problem (5-point Laplacian, Dirichlet
  boundary) on an ``n x n`` grid, the operator applied matrix-free with NumPy
  slicing.  One step is a whole solve of :data:`CG_ITERS` iterations from
  ``x0 = 0``, written as a textbook would (``x = x + alpha * p`` etc.), so every
  iteration makes and drops ~10 vector-sized temporaries inside the one cycle;
  ``s`` is the final squared residual norm.  Sizes are ``n`` = 90, 256, 1024:
  vectors of 63 KiB, 512 KiB, 8 MiB.

Configurations, each in its own process (a worker started as
``python -m wsmem.benchmarks.cyclic --worker CONFIG WORKLOAD SIZE``):

- ``numpy``: plain NumPy, glibc malloc;
- ``glibc_tuned``: glibc with ``MALLOC_MMAP_THRESHOLD_`` and
  ``MALLOC_TRIM_THRESHOLD_`` set to 4294967296 (environment, read at start);
- ``jemalloc``, ``mimalloc``: the Debian libraries through ``LD_PRELOAD``
  (skipped, with a note, when the library is not installed);
- ``limit``: the same arithmetic with preallocated buffers and ``out=``
  arguments, rewritten in place where the math allows it (``maximum(h, 0,
  out=h)``, ``add(x, tmp, out=x)``), so a step allocates nothing: the
  zero-allocation limit as such code is usually written; its inputs and
  buffers are made under :func:`wsmem.aligned_heap`;
- ``limit_same``: the zero-allocation limit of the unchanged program: its
  very ufunc calls, each writing out of place into a preallocated buffer as
  the unchanged code writes into a new array, a buffer taken again (most
  recently freed first) once the result it held is dead in the unchanged
  code.  It allocates nothing and keeps the program's arithmetic, memory
  traffic and live ranges, so it is what a memory layer could reach at best;
  ``limit`` also changes the program (an in-place ufunc reads and writes
  one buffer: less memory traffic), which no memory layer can do for
  unchanged code.  Aligned heap as ``limit``; ``train`` and ``cg`` only.
  Both limits also run with the raw-allocator hook a capturing workspace
  installs (:func:`wsmem.align_ufunc_buffers`: NumPy's ufunc buffers
  page-aligned and kept per thread), since 2026-11-24: without it, their
  ufunc buffers sat wherever glibc's heap put them and the limits' CG
  times moved with that;
- ``wsmem``: :func:`wsmem.aligned_heap` before the inputs are made (the
  arrays a loop makes before it starts are outside every cycle: this puts
  them on cache lines, as jemalloc and mimalloc do and glibc does not), then
  the unchanged NumPy step inside ``with ws:`` for a workspace created once
  (default config: ``capture=True``, ``learning="first_loop"``).

Not run by default (``--configs`` or ``bench/luck.py --configs`` name them):
``wsmem_grow`` (``spill="reallocate"``), and two that tell wsmem's arrays
apart from the rest of the process's memory: ``wsmem_mimalloc`` (the wsmem
worker with mimalloc preloaded, so NumPy's other allocations, such as its
iterators, come from mimalloc) and ``wsmem_tcache`` (the wsmem worker with
glibc's per-thread cache raised to 4 KiB blocks,
``GLIBC_TUNABLES=glibc.malloc.tcache_max=4096``).

Method: for one workload and size, the workers are started one after the
other; each builds its inputs, runs :data:`WARMUP_STEPS` steps (the workspace
learns its size in the first) and calibrates how many steps make a batch of
about ``target_s``.  Then in every round each worker runs one batch, in a
fresh random order each round (seeded), while the others wait on their stdin;
a batch first runs a tenth of its steps untimed (it starts on the caches and
TLB the previous worker's batch left), then reports its time per step and its
minor page faults per step (``ru_minflt`` delta over the timed steps).
Reported: the median over rounds (and min/max, to show the noise), peak RSS (``ru_maxrss`` of the worker at the end, warm-up included),
and for wsmem ``ws.stats().spilled_count`` after every batch (steady state:
0).  Every worker returns its ``s`` after warm-up and after every batch; each
must equal plain NumPy's (to a relative 1e-9) or the results say MISMATCH.

BLAS runs single-threaded in every worker (``OPENBLAS_NUM_THREADS=1`` etc.,
``blas_threads`` to change it): the machine this was written on has 2 shared
cores, and a spinning BLAS pool made timings noise rather than allocator.
"""
from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable

from wsmem.benchmarks._compare import _median_ci, _paired_ratio, _paired_ratio_ci  # noqa: F401

__all__ = ["DESCRIPTION", "CONFIGS", "DEFAULT_CONFIGS", "WORKLOADS", "SIZES", "CG_ITERS",
           "run", "make_step", "train_limit_step", "train_same_calls_step",
           "format_table", "worker_main", "config_available", "run_worker_once"]

DESCRIPTION = ("cyclic NumPy steps (training-style step; matrix-free 2-D Poisson CG) "
               "in one process per config: glibc, tuned glibc, jemalloc, mimalloc, "
               "zero-allocation limit, wsmem")

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
MIMALLOC = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
_BIG = "4294967296"

# key -> (label, extra environment, preloaded library or None)
CONFIGS = {
    "numpy": ("NumPy (glibc)", {}, None),
    "glibc_tuned": ("glibc tuned", {"MALLOC_MMAP_THRESHOLD_": _BIG,
                                    "MALLOC_TRIM_THRESHOLD_": _BIG}, None),
    "jemalloc": ("jemalloc", {}, JEMALLOC),
    "mimalloc": ("mimalloc", {}, MIMALLOC),
    "limit": ("limit (out=)", {}, None),
    "limit_same": ("limit, same calls (out=)", {}, None),
    "wsmem": ("wsmem", {}, None),
    "wsmem_grow": ("wsmem, spill='reallocate'", {}, None),
    "wsmem_mimalloc": ("wsmem under mimalloc", {}, MIMALLOC),
    "wsmem_tcache": ("wsmem, tcache to 4 KiB",
                     {"GLIBC_TUNABLES": "glibc.malloc.tcache_max=4096"}, None),
}
DEFAULT_CONFIGS = ("numpy", "glibc_tuned", "jemalloc", "mimalloc", "limit", "limit_same",
                   "wsmem")
PEERS = ("numpy", "glibc_tuned", "jemalloc", "mimalloc")
# The zero-allocation limits: not peers (no allocator), compared against.
LIMITS = ("limit", "limit_same")
# The workloads with a same-calls form (``limit_same``); the others skip it.
SAME_CALLS_WORKLOADS = ("train", "cg")
WSMEM_CONFIGS = {"wsmem": {}, "wsmem_grow": {"spill": "reallocate"},
                 "wsmem_mimalloc": {}, "wsmem_tcache": {}}

TRAIN_IN, TRAIN_OUT = 256, 1024
CG_ITERS = 10
# batch: layer widths, and each step's batch sizes as fractions of the size
# (max rows).  The first batch is the smallest: first_loop learning sees it.
BATCH_DIMS = (256, 512, 512, 10)
BATCH_FRACTIONS = (1 / 8, 1, 3 / 8, 5 / 8, 1 / 4, 7 / 8, 1 / 2, 3 / 4)
WORKLOADS = {
    "train": ("training-style step: x @ w, maximum, *2+1, exp(-y), sum",
              "rows", lambda rows: rows * TRAIN_OUT * 8),
    "cg": (f"2-D Poisson CG, {CG_ITERS} iterations per step, matrix-free slicing matvec",
           "n", lambda n: n * n * 8),
    "batch": (f"variable-length batches: MLP {BATCH_DIMS[0]}-{BATCH_DIMS[1]}-{BATCH_DIMS[2]}-"
              f"{BATCH_DIMS[3]} forward and backward, {len(BATCH_FRACTIONS)} batches of "
              "1/8..1 x max rows per step, one cycle each",
              "max rows", lambda rows: rows * BATCH_DIMS[1] * 8),
}
SIZES = {"train": (8, 64, 512, 4096), "cg": (90, 256, 1024)}
QUICK_SIZES = {"train": (64, 4096), "cg": (256,)}
TINY_SIZES = {"train": (8,), "cg": (16,)}
# Not in the default run (SIZES): bench/varbatch.py runs it, with
# DEFAULT_CONFIGS plus "wsmem_grow".

# (rounds, target seconds per batch) per mode.
# mode: (rounds, seconds per batch, worker processes per config)
_MODES = {"full": (9, 0.2, 5), "quick": (3, 0.06, 1), "tiny": (1, 0.002, 1)}
WARMUP_STEPS = 3
RTOL = 1e-9

# --------------------------------------------------------------------------
# Workloads (run inside the workers)


def _train_inputs(rows):
    import numpy as np
    rng = np.random.default_rng(12345)
    x = rng.standard_normal((rows, TRAIN_IN))
    w = rng.standard_normal((TRAIN_IN, TRAIN_OUT)) * (1.0 / 16)
    return x, w


def _make_train(rows, limit):
    """The training step: plain (`limit` false), its in-place ``out=`` form
    (True) or its same-calls form (``"same"``)."""
    import numpy as np
    x, w = _train_inputs(rows)
    if not limit:
        return train_step(x, w)
    if limit == "same":
        return train_same_calls_step(x, w)
    return train_limit_step(x, w, np.empty((rows, TRAIN_OUT)))


def train_step(x, w):
    """The training step as NumPy code is written: a new array per result."""
    import numpy as np

    def step():
        h = x @ w
        h = np.maximum(h, 0)
        y = h * 2 + 1
        z = np.exp(-y)
        return float(z.sum())
    return step


def train_limit_step(x, w, h):
    """The training step's zero-allocation form: the same ufunc calls, in
    place into the preallocated buffer `h` (``(rows, TRAIN_OUT)`` float64)."""
    import numpy as np
    matmul, maximum, multiply, add, negative, exp = (
        np.matmul, np.maximum, np.multiply, np.add, np.negative, np.exp)

    def step_limit():
        matmul(x, w, out=h)
        maximum(h, 0, out=h)
        multiply(h, 2, out=h)
        add(h, 1, out=h)
        negative(h, out=h)
        exp(h, out=h)
        return float(h.sum())
    return step_limit


def numpy_elides(nbytes, right=False):
    """Whether NumPy's temporary elision makes ``a * 2 + 1``'s ``+ 1`` in
    place for float64 arrays of `nbytes` here, or with `right`, the ``+``
    of ``b + a * 2`` (the temporary on the right of a commutative operator).
    NumPy does both from 256 KiB, where its build and the running Python
    allow it; measured with :mod:`tracemalloc` (that rule, when tracemalloc
    is already on)."""
    import tracemalloc

    import numpy as np
    if tracemalloc.is_tracing():
        return nbytes >= 256 << 10
    a = np.ones(max(1, nbytes // 8))
    tracemalloc.start()
    try:
        y = _elide_probe_right(a, a) if right else _elide_probe(a)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del y
    return peak < 1.5 * a.nbytes


def _elide_probe(a):
    return a * 2 + 1


def _elide_probe_right(b, a):
    return b + a * 2


def train_same_calls_step(x, w, reuse=True):
    """The unchanged training step's own ufunc calls, each out of place into
    a buffer made here: the zero-allocation limit of the unchanged program.

    With `reuse`, a buffer is taken again once the unchanged code's result
    in it is dead (``h = x @ w``'s buffer takes ``h * 2``), as an ideal
    allocator would reuse it: four buffers.  Without, every result has its
    own.  The ``+ 1`` of ``h * 2 + 1`` is in place where NumPy's temporary
    elision makes the unchanged code's in place (:func:`numpy_elides`), and
    out of place where it does not.
    """
    import numpy as np
    matmul, maximum, multiply, add, negative, exp = (
        np.matmul, np.maximum, np.multiply, np.add, np.negative, np.exp)
    shape = (x.shape[0], w.shape[1])
    elide = numpy_elides(shape[0] * shape[1] * 8)
    h1, h2 = np.empty(shape), np.empty(shape)
    t = h1 if reuse else np.empty(shape)        # h * 2: x @ w's result is dead
    y = t if elide else np.empty(shape)         # + 1: in place only where elided
    ny = h1 if reuse and not elide else np.empty(shape)   # -y: h * 2 is dead
    z = np.empty(shape)

    def step_same():
        matmul(x, w, out=h1)            # h = x @ w
        maximum(h1, 0, out=h2)          # h = np.maximum(h, 0)
        multiply(h2, 2, out=t)          # y = h * 2 + 1
        add(t, 1, out=y)
        negative(y, out=ny)             # z = np.exp(-y)
        exp(ny, out=z)
        return float(z.sum())
    return step_same


def _cg_rhs(n):
    import numpy as np
    rng = np.random.default_rng(2024)
    return rng.standard_normal((n, n))


def _make_cg(n, limit):
    import numpy as np
    b = _cg_rhs(n)
    iters = CG_ITERS

    if not limit:
        def laplacian(u):
            """5-point Laplacian (times h^2), zero Dirichlet boundary."""
            au = 4 * u
            au[1:, :] -= u[:-1, :]
            au[:-1, :] -= u[1:, :]
            au[:, 1:] -= u[:, :-1]
            au[:, :-1] -= u[:, 1:]
            return au

        def step():
            x = np.zeros_like(b)
            r = b - laplacian(x)
            p = r.copy()
            rs = np.vdot(r, r)
            for _ in range(iters):
                ap = laplacian(p)
                alpha = rs / np.vdot(p, ap)
                x = x + alpha * p
                r = r - alpha * ap
                rs_new = np.vdot(r, r)
                p = r + (rs_new / rs) * p
                rs = rs_new
            return float(rs)
        return step

    if limit == "same":
        return _cg_same_calls_step(b, iters)
    x, r, p, ap, tmp = (np.empty_like(b) for _ in range(5))
    multiply, subtract, add, vdot = np.multiply, np.subtract, np.add, np.vdot

    def laplacian_into(u, au):
        multiply(u, 4, out=au)
        subtract(au[1:, :], u[:-1, :], out=au[1:, :])
        subtract(au[:-1, :], u[1:, :], out=au[:-1, :])
        subtract(au[:, 1:], u[:, :-1], out=au[:, 1:])
        subtract(au[:, :-1], u[:, 1:], out=au[:, :-1])

    def step_limit():
        x.fill(0)
        laplacian_into(x, ap)
        subtract(b, ap, out=r)
        p[...] = r
        rs = vdot(r, r)
        for _ in range(iters):
            laplacian_into(p, ap)
            alpha = rs / vdot(p, ap)
            multiply(p, alpha, out=tmp)
            add(x, tmp, out=x)
            multiply(ap, alpha, out=tmp)
            subtract(r, tmp, out=r)
            rs_new = vdot(r, r)
            multiply(p, rs_new / rs, out=tmp)
            add(r, tmp, out=p)
            rs = rs_new
        return float(rs)
    return step_limit


def _cg_same_calls_step(b, iters):
    """The unchanged CG step's own ufunc calls, each out of place into a
    preallocated vector taken as an ideal allocator would give it: from a
    pool of six, the most recently freed first, given back where the
    unchanged code's result dies.  Where NumPy's temporary elision makes the
    unchanged ``x + alpha * p`` and ``r + (rs_new / rs) * p`` add into their
    temporary (:func:`numpy_elides`, from 256 KiB), this form adds into it
    too.  A step after a first one records which vector each result gets;
    later steps replay that order (no pool bookkeeping)."""
    import numpy as np
    multiply, subtract, add, vdot, copyto = (np.multiply, np.subtract, np.add, np.vdot,
                                             np.copyto)
    elide = numpy_elides(b.nbytes, right=True)

    def run(take, give):
        def laplacian(u):
            au = multiply(4, u, out=take())            # au = 4 * u
            subtract(au[1:, :], u[:-1, :], out=au[1:, :])
            subtract(au[:-1, :], u[1:, :], out=au[:-1, :])
            subtract(au[:, 1:], u[:, :-1], out=au[:, 1:])
            subtract(au[:, :-1], u[:, 1:], out=au[:, :-1])
            return au

        def scaled(op, a, c, v, in_place):
            """``op(a, c * v)``: into the temporary ``c * v`` where NumPy's
            elision puts it (`in_place`), else into a vector of its own."""
            t = multiply(c, v, out=take())
            if in_place:
                return op(a, t, out=t)
            out = op(a, t, out=take())
            give(t)
            return out

        x = take()                                  # x = np.zeros_like(b)
        x.fill(0)
        au = laplacian(x)
        r = subtract(b, au, out=take())                 # r = b - laplacian(x)
        give(au)
        p = take()                                  # p = r.copy()
        copyto(p, r)
        rs = vdot(r, r)
        ap = None
        for _ in range(iters):
            new_ap = laplacian(p)                   # ap = laplacian(p)
            if ap is not None:
                give(ap)
            ap = new_ap
            alpha = rs / vdot(p, ap)
            xn = scaled(add, x, alpha, p, elide)    # x = x + alpha * p
            give(x)
            x = xn
            rn = scaled(subtract, r, alpha, ap, False)  # r = r - alpha * ap
            give(r)
            r = rn
            rs_new = vdot(r, r)
            pn = scaled(add, r, rs_new / rs, p, elide)  # p = r + (rs_new / rs) * p
            give(p)
            p = pn
            rs = rs_new
        for v in (x, r, p, ap):                     # the step's end: all dead
            if v is not None:
                give(v)
        return float(rs)

    pool = [np.empty_like(b) for _ in range(6)]     # most vectors live at once
    order = []

    def take():
        order.append(pool.pop())
        return order[-1]

    for _ in range(2):              # record the order of a step after a step
        order.clear()
        run(take, pool.append)
    replay = tuple(order)

    def nothing(v):
        pass

    def step_same():
        return run(iter(replay).__next__, nothing)
    return step_same


def _no_same_calls(workload):
    """Why `workload` cannot run ``limit_same``, and what to run instead."""
    return (f"workload {workload!r} has no same-calls limit; limit_same runs "
            f"{' and '.join(SAME_CALLS_WORKLOADS)} (use config 'limit')")


def _batch_inputs(rows):
    import numpy as np
    d0, d1, d2, d3 = BATCH_DIMS
    rng = np.random.default_rng(777)
    x = rng.standard_normal((rows, d0))
    labels = rng.integers(0, d3, rows)
    ws_ = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in ((d0, d1), (d1, d2), (d2, d3))]
    sizes = [max(1, int(round(f * rows))) for f in BATCH_FRACTIONS]
    return x, labels, ws_, sizes


def _make_batch(rows, limit, cycle=None):
    """One step: every batch size of BATCH_FRACTIONS once, each batch a
    forward and backward pass (softmax cross-entropy, gradients of the three
    weight matrices; no update, so every step computes the same).  `cycle`
    (a workspace) wraps each batch in its own cycle."""
    import numpy as np
    if limit == "same":
        raise ValueError(_no_same_calls("batch"))
    x, labels, (w1, w2, w3), sizes = _batch_inputs(rows)
    if not limit:
        def one(b):
            xb, yb = x[:b], labels[:b]
            h1 = np.maximum(xb @ w1, 0)
            h2 = np.maximum(h1 @ w2, 0)
            lg = h2 @ w3
            lg = lg - lg.max(axis=1, keepdims=True)
            p = np.exp(lg)
            p /= p.sum(axis=1, keepdims=True)
            rows_b = np.arange(b)
            loss = -np.log(p[rows_b, yb]).sum() / b
            p[rows_b, yb] -= 1
            p /= b
            g3 = h2.T @ p
            d2 = (p @ w3.T) * (h2 > 0)
            g2 = h1.T @ d2
            d1 = (d2 @ w2.T) * (h1 > 0)
            g1 = xb.T @ d1
            return float(loss) + float((g1 * g1).sum() + (g2 * g2).sum() + (g3 * g3).sum())

        if cycle is None:
            def step():
                return sum(one(b) for b in sizes)
        else:
            def step():
                total = 0.0
                for b in sizes:
                    with cycle:
                        total += one(b)
                return total
        return step
    return _batch_limit_step(x, labels, (w1, w2, w3), sizes)


def _batch_limit_step(x, labels, weights, sizes):
    """The batch step's zero-allocation form: the same arithmetic into
    buffers of the largest batch, used through their leading rows."""
    import numpy as np
    w1, w2, w3 = weights
    d0, d1, d2, d3 = BATCH_DIMS
    rows = x.shape[0]
    h1, h2, t1, t2 = (np.empty((rows, d)) for d in (d1, d2, d1, d2))
    m1, m2 = np.empty((rows, d1), bool), np.empty((rows, d2), bool)
    lg, mx, ps = np.empty((rows, d3)), np.empty((rows, 1)), np.empty((rows, 1))
    g1, g2, g3 = np.empty((d0, d1)), np.empty((d1, d2)), np.empty((d2, d3))
    s1, s2, s3 = np.empty((d0, d1)), np.empty((d1, d2)), np.empty((d2, d3))
    picked = np.empty(rows)
    flat = np.arange(rows) * d3 + labels            # p[rows_b, yb] as flat indices
    mm, mxm, sub, ex, div, mul, gt, lg_, tk = (np.matmul, np.maximum, np.subtract, np.exp,
                                               np.divide, np.multiply, np.greater, np.log,
                                               np.take)

    def one(b):
        xb = x[:b]
        a1, a2, L = h1[:b], h2[:b], lg[:b]
        mxm(mm(xb, w1, out=a1), 0, out=a1)
        mxm(mm(a1, w2, out=a2), 0, out=a2)
        mm(a2, w3, out=L)
        np.max(L, axis=1, keepdims=True, out=mx[:b])
        sub(L, mx[:b], out=L)
        ex(L, out=L)
        np.sum(L, axis=1, keepdims=True, out=ps[:b])
        div(L, ps[:b], out=L)
        pf = L.reshape(-1)
        pk = picked[:b]
        lg_(tk(pf, flat[:b], out=pk), out=pk)
        loss = -pk.sum() / b
        np.subtract.at(pf, flat[:b], 1)
        div(L, b, out=L)
        mm(a2.T, L, out=g3)
        e2, e1 = t2[:b], t1[:b]
        mul(mm(L, w3.T, out=e2), gt(a2, 0, out=m2[:b]), out=e2)
        mm(a1.T, e2, out=g2)
        mul(mm(e2, w2.T, out=e1), gt(a1, 0, out=m1[:b]), out=e1)
        mm(xb.T, e1, out=g1)
        return float(loss) + float(mul(g1, g1, out=s1).sum() + mul(g2, g2, out=s2).sum()
                                   + mul(g3, g3, out=s3).sum())

    def step_limit():
        return sum(one(b) for b in sizes)
    return step_limit


_MAKERS = {"train": _make_train, "cg": _make_cg, "batch": _make_batch}


def make_step(config, workload, size):
    """The step a config runs, and its workspace (None but for the wsmem configs).

    The workload's step (its in-place ``out=`` form for ``"limit"``, its
    same-calls form for ``"limit_same"``); for ``"wsmem"``
    (and ``"wsmem_grow"``: ``spill="reallocate"``) the same step as one cycle
    of a fresh workspace, or for ``"batch"`` one cycle per batch.  The wsmem
    configs and the limits turn on :func:`wsmem.aligned_heap` for this
    context before the inputs are made.  The peers differ only by their
    process environment (``LD_PRELOAD``, ``MALLOC_*``).
    """
    if config in WSMEM_CONFIGS or config in LIMITS:
        import wsmem
        # The inputs (and the limit's buffers) are made before the loop,
        # outside any cycle: on the aligned heap, cache-line aligned as
        # jemalloc and mimalloc place them (glibc: 16 bytes into a line).
        wsmem.aligned_heap()
    if config in LIMITS:
        # NumPy's own raw allocations (ufunc buffers, iterators) are
        # allocations too: the limits get the raw hook (page-aligned ufunc
        # buffers, per-thread block cache) that a capturing workspace
        # installs in the wsmem workers, so only the arrays differ.
        wsmem.align_ufunc_buffers(True)
    if config not in WSMEM_CONFIGS:
        form = {"limit": True, "limit_same": "same"}.get(config, False)
        return _MAKERS[workload](size, form), None
    ws = wsmem.Workspace(f"bench_cyclic_{workload}_{size}", **WSMEM_CONFIGS[config])
    if workload == "batch":                         # a cycle per batch, inside the step
        return _make_batch(size, False, cycle=ws), ws
    step = _MAKERS[workload](size, False)

    def cycle():
        with ws:
            return step()
    return cycle, ws

# --------------------------------------------------------------------------
# Worker: one process per configuration, driven over stdin/stdout


def _minflt():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _maxrss_kib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _preloaded():
    """Which peer allocator libraries are mapped into this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except OSError:
        return None
    return sorted(name for name in ("jemalloc", "mimalloc") if f"lib{name}" in maps)


def _block_huge_kib(ws):
    """[block mapping KiB, of it on huge pages KiB] for ws's main block, or
    None (no /proc/self/smaps): a block the kernel could not back with huge
    pages runs large steps several percent slower (bench/hugepages.py)."""
    import numpy as np
    from wsmem.benchmarks._env import mapping_huge_kib
    with ws:
        probe = np.empty(1)          # the cycle's first bump: the main block's start
        found = mapping_huge_kib(probe.ctypes.data)
        del probe
    return None if found is None else list(found)


def worker_main(config, workload, size, target_s, warmup=WARMUP_STEPS, stdin=None,
                stdout=None) -> int:
    """Run one worker: warm up, print a ready line, then answer ``run``/``quit``.

    Every reply is one JSON line on ``stdout``.
    """
    import gc

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout

    def send(obj):
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    if config not in CONFIGS or workload not in _MAKERS:
        send({"error": f"unknown config/workload {config!r}/{workload!r}"})
        return 2
    if config == "limit_same" and workload not in SAME_CALLS_WORKLOADS:
        # refused before make_step turns on the aligned heap and the raw hook
        send({"error": _no_same_calls(workload)})
        return 2
    rss_start = _maxrss_kib()
    if config in WSMEM_CONFIGS:
        import wsmem
        if wsmem.current_workspace() is not None:
            send({"error": "a workspace is already open"})
            return 2
    step, ws = make_step(config, workload, size)

    gc.collect()
    gc.disable()   # as timeit does; the steps make no reference cycles
    clock = time.perf_counter
    s_values = [step() for _ in range(max(1, warmup))]
    # calibrate: steps per batch so a batch takes about target_s
    n, t = 1, 0.0
    while True:
        t0 = clock()
        for _ in range(n):
            step()
        t = clock() - t0
        if t >= target_s / 4 or n >= 1 << 20:
            break
        n *= 2
    steps = max(1, math.ceil(n * target_s / max(t, 1e-9)))
    warm_in = max(1, steps // 10)
    cycles_per_step = len(BATCH_FRACTIONS) if workload == "batch" else 1
    ready = {"ready": True, "config": config, "workload": workload, "size": size,
             "steps_per_batch": steps, "s_warmup": s_values, "rss_start_kib": rss_start,
             "pid": os.getpid(), "preloaded": _preloaded()}
    if ws is not None:
        st = ws.stats()
        ready["ws_capacity"] = st.capacity
        ready["ws_peak_cycle_bytes"] = st.peak_cycle_bytes
    send(ready)

    for line in stdin:
        cmd = line.strip()
        if cmd == "run":
            # Untimed steps first: a batch starts on the caches and TLB the
            # previous worker's batch left (bench/results/harness_ab.txt: the
            # first step after another step's block ran 1.6x slower).
            for _ in range(warm_in):
                step()
            f0 = _minflt()
            t0 = clock()
            for _ in range(steps):
                s = step()
            t = clock() - t0
            f1 = _minflt()
            reply = {"time_per_step_s": t / steps, "faults_per_step": (f1 - f0) / steps,
                     "steps": steps, "s": s}
            if ws is not None:
                # the most any cycle of the batch spilled (a step may be
                # several cycles; the history keeps the last 1024)
                h = ws.history()
                k = min(len(h.cycle), steps * cycles_per_step)
                reply["spilled_count"] = int(h.spilled_count[-k:].max())
                reply["spilled_bytes"] = int(h.spilled_bytes[-k:].max())
                reply["ws_capacity"] = ws.stats().capacity
            send(reply)
        elif cmd == "quit" or not cmd:
            break
        else:
            send({"error": f"unknown command {cmd!r}"})
    final = {"done": True, "maxrss_kib": _maxrss_kib()}
    if ws is not None:
        st = ws.stats()
        final["ws_capacity"] = st.capacity
        final["ws_peak_cycle_bytes"] = st.peak_cycle_bytes
        final["ws_pages"] = st.pages
        final["ws_huge"] = _block_huge_kib(ws)
        ws.destroy()
    send(final)
    gc.enable()
    return 0

# --------------------------------------------------------------------------
# Driver


def config_available(config) -> tuple[bool, str]:
    """Whether ``config`` can run here, and a note when it cannot."""
    lib = CONFIGS[config][2]
    if lib is not None and not os.path.exists(lib):
        return False, f"{config} skipped: {lib} not found (apt-get install " \
                      f"{'libjemalloc2' if 'jemalloc' in lib else 'libmimalloc2.0'})"
    return True, ""


def _root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker_env(config, blas_threads):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                        "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_")}
    label, extra, lib = CONFIGS[config]
    env.update(extra)
    if lib is not None:
        env["LD_PRELOAD"] = lib
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(blas_threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_root(), env.get("PYTHONPATH")]))
    env.pop("WSMEM_TRACK", None)
    return env


class _Worker:
    def __init__(self, config, workload, size, target_s, blas_threads):
        self.config = config
        cmd = [sys.executable, "-m", "wsmem.benchmarks.cyclic", "--worker", config,
               workload, str(size), "--target-s", repr(target_s)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=_worker_env(config, blas_threads), cwd=_root())

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.proc.wait()
            raise RuntimeError(f"cyclic worker {self.config} died "
                               f"(rc={self.proc.returncode}): {err.strip()[-2000:]}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"cyclic worker {self.config}: {msg['error']}")
        return msg

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        try:
            return self.ask("quit")
        finally:
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_worker_once(config, workload, size, *, target_s=0.002, blas_threads=1,
                    batches=1) -> dict:
    """Start one worker, run ``batches`` batches, quit; ready + batches + final."""
    w = _Worker(config, workload, size, target_s, blas_threads)
    try:
        ready = w.read()
        runs = [w.ask("run") for _ in range(batches)]
        final = w.close()
    except BaseException:
        w.kill()
        raise
    return {"ready": ready, "batches": runs, "final": final}


def _s_matches(s, ref):
    return s == ref or abs(s - ref) <= RTOL * max(abs(ref), 1e-300)


def _fill_ratios(rows):
    """Set each row's ratios to the peers and the limit, its best peer and
    RSS over NumPy's, from the rows of one workload and size."""
    by = {r["config"]: r for r in rows}
    peers = [by[k] for k in PEERS if k in by]
    for r in rows:
        t = r["time_rounds_s"]
        for k in list(PEERS) + list(LIMITS):
            if k in by:
                r[f"ratio_vs_{k}"] = _paired_ratio(by[k]["time_rounds_s"], t)
        # The best peer for this row: the lowest paired ratio peer/this (as
        # the comparison table picks it).  In a noisy run the peer with the
        # lowest median time can have a higher paired ratio.
        best_peer = min(peers, key=lambda p: r[f"ratio_vs_{p['config']}"]) if peers else None
        if best_peer is not None:
            r["best_peer"] = best_peer["config"]
            r["ratio_vs_best_peer"] = r[f"ratio_vs_{best_peer['config']}"]
            r["ratio_vs_best_peer_ci"] = list(_paired_ratio_ci(best_peer["time_rounds_s"], t))
        if "numpy" in by:
            r["rss_vs_numpy"] = r["peak_rss_kib"] / by["numpy"]["peak_rss_kib"]


def _bench_one(workload, size, configs, rounds, target_s, blas_threads, progress, procs=1):
    """Run `rounds` interleaved rounds.  Each config has `procs` independent
    worker processes (a process's memory layout alone moves small steps by
    several percent); a round runs one batch on every worker, in a fresh
    random order.  A config's time in a round is the median over its processes."""
    # limit_same exists for some workloads only (SAME_CALLS_WORKLOADS)
    configs = [k for k in configs if k != "limit_same" or workload in SAME_CALLS_WORKLOADS]
    workers, ready, batches, final = {}, {}, {k: [] for k in configs}, {}
    per_proc = {k: [[] for _ in range(procs)] for k in configs}   # time per step, per round
    order = [(k, p) for p in range(procs) for k in configs]
    try:
        for k, p in order:           # one at a time: warm-up and calibration alone
            workers[k, p] = _Worker(k, workload, size, target_s, blas_threads)
            first = workers[k, p].read()      # warm-up report (s, steps per batch)
            ready.setdefault(k, first)
        rng = random.Random(0)        # seeded: a run's order can be repeated
        for r in range(rounds):
            # A fresh order each round: a rotated one keeps every worker's
            # predecessor (whose caches and TLB its batch starts on) the same.
            this_round = list(order)
            rng.shuffle(this_round)
            got = {k: [] for k in configs}
            for k, p in this_round:
                got[k].append(workers[k, p].ask("run"))
                per_proc[k][p].append(got[k][-1]["time_per_step_s"])
            for k in configs:
                batches[k].append(_merge_round(got[k]))
        huge = []
        for k, p in order:
            f = workers[k, p].close()
            if f.get("ws_huge"):
                huge.append(f["ws_huge"])
            prev = final.get(k)
            if prev is None or f["maxrss_kib"] > prev["maxrss_kib"]:
                final[k] = f
    finally:
        for w in workers.values():
            w.kill()

    ref = ready["numpy"]["s_warmup"][0] if "numpy" in ready else None
    rows = []
    for k in configs:
        times = [b["time_per_step_s"] for b in batches[k]]
        faults = [b["faults_per_step"] for b in batches[k]]
        s_all = ready[k]["s_warmup"] + [s for b in batches[k] for s in b.get("s_all", [b["s"]])]
        if ref is None:
            ref = s_all[0]
        lib = CONFIGS[k][2]
        if lib is not None and ready[k].get("preloaded") is not None and \
                k not in ready[k]["preloaded"]:
            raise RuntimeError(f"cyclic: LD_PRELOAD={lib} did not load in the {k} worker")
        bad = [s for s in s_all if not _s_matches(s, ref)]
        row = {
            "workload": workload, "size": size,
            "temp_bytes": WORKLOADS[workload][2](size),
            "config": k, "label": CONFIGS[k][0],
            "time_per_step_s": statistics.median(times),
            "time_min_s": min(times), "time_max_s": max(times),
            "time_rounds_s": times,
            # Each worker process's median over the rounds: how far processes
            # of one config differ (memory layout), which the paired ratio's
            # interval, over rounds, does not cover.
            "time_procs_s": [statistics.median(v) for v in per_proc[k]],
            "faults_per_step": statistics.median(faults),
            "faults_rounds": faults,
            "peak_rss_kib": final[k]["maxrss_kib"],
            "start_rss_kib": ready[k]["rss_start_kib"],
            "steps_per_batch": ready[k]["steps_per_batch"],
            "s": s_all[-1], "s_ref": ref,
            "s_max_rel_err": max(abs(s - ref) / max(abs(ref), 1e-300) for s in s_all),
            "s_matches": not bad,
        }
        if k in WSMEM_CONFIGS:
            row["steady_spilled_count"] = max(b["spilled_count"] for b in batches[k])
            row["steady_spilled_bytes"] = max(b["spilled_bytes"] for b in batches[k])
            row["ws_capacity"] = final[k]["ws_capacity"]
            row["ws_peak_cycle_bytes"] = final[k]["ws_peak_cycle_bytes"]
            if huge:         # the worker whose block had the least on huge pages
                row["ws_block_kib"], row["ws_huge_kib"] = min(huge, key=lambda h: h[1])
        rows.append(row)
    _fill_ratios(rows)
    if progress is not None:
        parts = ", ".join(f"{r['config']} {_fmt_time(r['time_per_step_s'])}" for r in rows)
        progress(f"cyclic {workload} {WORKLOADS[workload][1]}={size}: {parts}")
        for r in rows:
            if not r["s_matches"]:
                progress(f"cyclic MISMATCH: {workload} {size} {r['config']} s={r['s']!r} "
                         f"vs numpy {r['s_ref']!r}")
    return rows


def _merge_round(batches):
    """One config's batches of one round (one per process) as one record:
    medians of the numbers, the worst spill count, every s."""
    if len(batches) == 1:
        return batches[0]
    out = dict(batches[0])
    for key in ("time_per_step_s", "faults_per_step"):
        out[key] = statistics.median(b[key] for b in batches)
    for key in ("spilled_count", "spilled_bytes"):
        if key in out:
            out[key] = max(b[key] for b in batches)
    out["s_all"] = [b["s"] for b in batches]
    return out


def _procs_ratio(row):
    """max/min of a row's per-process median times, or None (no row, one
    process, or no times)."""
    t = () if row is None else row.get("time_procs_s", ())
    return max(t) / min(t) if len(t) > 1 and min(t) > 0 else None


def _process_spread(*rows):
    """The largest max/min - 1 of the per-process median times of `rows`
    (None where a row is missing or ran in one process)."""
    ratios = [_procs_ratio(r) for r in rows]
    return None if None in ratios else max(ratios) - 1


def _targets(rows):
    """The targets from the brief, evaluated on the rows (met or not, with numbers)."""
    out = []
    for wl in WORKLOADS:
        sizes = sorted({r["size"] for r in rows if r["workload"] == wl})
        for size in sizes:
            by = {r["config"]: r for r in rows if r["workload"] == wl and r["size"] == size}
            for key in WSMEM_CONFIGS:
                if key in by:
                    out.extend(_targets_of(by, key, wl, size))
    return out


def _targets_of(by, key, wl, size):
    """The targets for one wsmem config's row (``by``: the size's rows by config)."""
    out = []
    ws = by[key]
    name = f"{wl} {WORKLOADS[wl][1]}={size}"
    if key != "wsmem":
        name += f" ({CONFIGS[key][0]})"
    if "ratio_vs_best_peer" in ws:
        detail = f"best peer {ws['best_peer']}"
        ci = ws.get("ratio_vs_best_peer_ci")
        spread = _process_spread(ws, by.get(ws["best_peer"]))
        if ci is not None:
            lo, hi, cov = ci
            detail += f"; {cov:.0%} CI of the paired ratio {lo:.2f}..{hi:.2f}"
            if lo < 1.0 <= hi:
                detail += ": the interval holds 1.0, a tie within this run's noise"
            elif hi < 1.0:
                if spread is not None and 1.0 - ws["ratio_vs_best_peer"] < spread:
                    detail += (": slower beyond the round-to-round noise, but by less than "
                               "the worker processes of one config differ")
                else:
                    detail += ": slower beyond this run's noise"
        if spread is not None:
            detail += (f"; worker processes' medians differ by up to {spread:.1%} within "
                       f"one config (process luck, which the interval does not cover)")
        out.append({"target": f"{name}: wsmem >= 1.0x best of peers",
                    "value": ws["ratio_vs_best_peer"],
                    "met": ws["ratio_vs_best_peer"] >= 1.0,
                    "detail": detail})
    if "ratio_vs_limit" in ws:
        out.append({"target": f"{name}: wsmem within 10% of limit (ratio >= 0.909)",
                    "value": ws["ratio_vs_limit"],
                    "met": ws["ratio_vs_limit"] >= 1 / 1.1,
                    "detail": "the in-place out= rewrite"})
    if "ratio_vs_limit_same" in ws:
        out.append({"target": f"{name}: wsmem within 10% of the same-calls limit "
                              "(ratio >= 0.909)",
                    "value": ws["ratio_vs_limit_same"],
                    "met": ws["ratio_vs_limit_same"] >= 1 / 1.1,
                    "detail": "the unchanged program's calls, zero allocations"})
    if "rss_vs_numpy" in ws:
        out.append({"target": f"{name}: wsmem peak RSS <= 1.3x NumPy's",
                    "value": ws["rss_vs_numpy"], "met": ws["rss_vs_numpy"] <= 1.3})
    if wl == "train" and size == 64 and "ratio_vs_numpy" in ws:
        out.append({"target": f"{name}: wsmem >= 1.8x plain NumPy (512 KiB temps)",
                    "value": ws["ratio_vs_numpy"], "met": ws["ratio_vs_numpy"] >= 1.8})
    if "faults_per_step" in ws:
        out.append({"target": f"{name}: wsmem no page faults in steady state (< 1 per step)",
                    "value": ws["faults_per_step"], "met": ws["faults_per_step"] < 1})
    return out


def run(quick: bool = False, *, tiny: bool = False, rounds: int | None = None,
        target_s: float | None = None, sizes: dict | None = None, configs=None,
        blas_threads: int = 1, progress: Callable[[str], None] | None = None) -> dict:
    """Run the cyclic benchmark (workers in subprocesses) and return JSON-ready results.

    Parameters
    ----------
    quick : bool
        3 rounds of ~60 ms batches at fewer sizes (train rows 64 and 4096,
        cg n 256) with one worker per config, instead of 9 rounds of ~0.2 s
        at every size with 5 worker processes per config.
    tiny : bool
        One round of tiny batches at tiny sizes: plumbing only (tests).
    rounds, target_s : optional
        Override rounds and seconds per batch.
    sizes : dict, optional
        ``{"train": (rows, ...), "cg": (n, ...)}``; a workload left out is not run.
    configs : iterable of str, optional
        Subset of :data:`CONFIGS` (default: :data:`DEFAULT_CONFIGS`, those
        available here).
    blas_threads : int
        Threads for BLAS in every worker (default 1).

    Returns
    -------
    dict
        ``suite``, ``machine``, ``method``, ``rows`` (one per workload, size,
        config), ``skipped`` (notes on configs that could not run),
        ``all_match`` (every config computed plain NumPy's ``s``),
        ``steady_state_ok`` (wsmem spilled nothing after warm-up), ``targets``.
    """
    from wsmem.benchmarks._env import machine_info, select_configs
    mode = "tiny" if tiny else "quick" if quick else "full"
    default_rounds, default_target, procs = _MODES[mode]
    rounds = default_rounds if rounds is None else int(rounds)
    target_s = default_target if target_s is None else float(target_s)
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    if not target_s > 0:
        raise ValueError(f"target_s={target_s} must be > 0")
    if sizes is None:
        sizes = TINY_SIZES if tiny else QUICK_SIZES if quick else SIZES
    sizes = {wl: tuple(int(s) for s in v) for wl, v in sizes.items()}
    for wl in sizes:
        if wl not in WORKLOADS:
            raise ValueError(f"unknown workload {wl!r}; known: {', '.join(WORKLOADS)}")
    use, skipped = select_configs("cyclic", CONFIGS,
                                  DEFAULT_CONFIGS if configs is None else configs,
                                  config_available, progress)

    t0 = time.perf_counter()
    rows = []
    for wl, wl_sizes in sizes.items():
        for size in wl_sizes:
            rows.extend(_bench_one(wl, size, use, rounds, target_s, blas_threads, progress,
                                   procs))
    return {
        "suite": "cyclic",
        "schema": 1,
        "machine": machine_info(),
        "method": {
            "mode": mode,
            "rounds": rounds,
            "processes_per_config": procs,
            "target_s_per_batch": target_s,
            "warmup_steps": WARMUP_STEPS,
            "cg_iters_per_step": CG_ITERS,
            "blas_threads": blas_threads,
            "configs": {k: {"label": CONFIGS[k][0], "env": CONFIGS[k][1],
                            "ld_preload": CONFIGS[k][2]} for k in use},
            "workloads": {wl: WORKLOADS[wl][0] for wl in sizes},
            "statistic": "time per step: median over interleaved rounds (every worker "
                         "runs one batch per round (after untimed warm-in steps, a tenth of "
                         "a batch), in a random order per round; a config's time in a "
                         "round is the median over its worker processes); ratio: median "
                         "over rounds of the paired per-round ratio other / this (> 1: "
                         "this faster); faults = ru_minflt delta over a batch / steps; "
                         "peak RSS = largest ru_maxrss at worker exit",
            "s_rtol": RTOL,
        },
        "configs": [{"key": k, "label": CONFIGS[k][0]} for k in use],
        "skipped": skipped,
        "rows": rows,
        "all_match": all(r["s_matches"] for r in rows),
        "steady_state_ok": all(not r.get("steady_spilled_count") for r in rows),
        "targets": _targets(rows),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }

# --------------------------------------------------------------------------
# Formatting


def _fmt_time(t):
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


from wsmem.benchmarks._compare import _fmt_bytes  # noqa: E402


def format_table(results: dict) -> str:
    """Markdown: one table per workload, a line per size and config."""
    lines = []
    rows = results["rows"]
    for wl in dict.fromkeys(r["workload"] for r in rows):
        desc, dim, _ = WORKLOADS[wl]
        lines.append(f"### {wl}: {desc}")
        lines.append("")
        header = [dim, "temporaries", "config", "time/step (min..max)", "vs NumPy",
                  "vs best peer", "vs limit", "vs same-calls limit", "faults/step", "peak RSS",
                  "RSS vs NumPy", "spilled", "huge pages"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header)))
                     + "|")
        for r in (r for r in rows if r["workload"] == wl):
            def ratio(key):
                v = r.get(key)
                return "-" if v is None else f"{v:.2f}x"
            best = ratio("ratio_vs_best_peer")
            if "ratio_vs_best_peer_ci" in r and best != "-":
                lo, hi, _ = r["ratio_vs_best_peer_ci"]
                best += f" [{lo:.2f}..{hi:.2f}]"
            if "best_peer" in r and best != "-":
                best += f" ({r['best_peer']})"
            cfg = r["label"] + ("" if r["s_matches"] else " **MISMATCH**")
            cells = [str(r["size"]), _fmt_bytes(r["temp_bytes"]), cfg,
                     f"{_fmt_time(r['time_per_step_s'])} ({_fmt_time(r['time_min_s'])}.."
                     f"{_fmt_time(r['time_max_s'])})",
                     ratio("ratio_vs_numpy"), best, ratio("ratio_vs_limit"),
                     ratio("ratio_vs_limit_same"),
                     f"{r['faults_per_step']:,.1f}",
                     f"{r['peak_rss_kib'] / 1024:,.1f} MiB", ratio("rss_vs_numpy"),
                     "-" if "steady_spilled_count" not in r else str(r["steady_spilled_count"]),
                     "-" if "ws_huge_kib" not in r else
                     f"{r['ws_huge_kib'] / 1024:.0f} of {r['ws_block_kib'] / 1024:.1f} MiB"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    m = results["method"]
    procs = m.get("processes_per_config", 1)
    lines.append(f"Time: median of {m['rounds']} interleaved rounds, batches of "
                 f"~{m['target_s_per_batch']:g} s, {procs} worker process(es) per config "
                 f"(median over them per round), BLAS threads = {m['blas_threads']}; "
                 "ratios: median over rounds of the paired per-round ratio other config's "
                 "time / this row's time (> 1: this row faster), with [a..b] the "
                 "distribution-free confidence interval of that median (order statistics "
                 "of the per-round ratios; 96% for 9 rounds); 'spilled' = wsmem "
                 "spilled_count after warm-up, the most in any cycle; 'huge pages' = how much of "
                 "wsmem's block mapping the kernel backed with huge pages "
                 "(AnonHugePages, the least over its worker processes).")
    spread = [r["time_max_s"] / r["time_min_s"] for r in rows if r["time_min_s"] > 0]
    if spread:
        lines.append(f"Noise: max/min time over rounds per row: median "
                     f"{statistics.median(spread):.2f}x, worst {max(spread):.2f}x.")
    procs_spread = [x for x in map(_procs_ratio, rows) if x is not None]
    if procs_spread:
        lines.append(f"Process luck: max/min of one config's per-process median times: "
                     f"median {statistics.median(procs_spread):.3f}x, worst "
                     f"{max(procs_spread):.3f}x (the intervals above, over rounds, do "
                     "not cover it).")
    for note in results.get("skipped", []):
        lines.append(f"Note: {note}")
    if results["all_match"]:
        lines.append("Results: every config computed the same s as plain NumPy "
                     f"(rtol {m['s_rtol']:g}).")
    else:
        bad = [f"{r['workload']} {r['size']} {r['config']}: {r['s']!r} vs {r['s_ref']!r}"
               for r in rows if not r["s_matches"]]
        lines.append("**MISMATCH** with plain NumPy: " + "; ".join(bad))
    if not results["steady_state_ok"]:
        lines.append("WARNING: wsmem still spilled after warm-up.")
    targets = results.get("targets") or []
    if targets:
        lines.append("")
        lines.append("Targets:")
        for t in targets:
            extra = f" ({t['detail']})" if t.get("detail") else ""
            lines.append(f"- {'met' if t['met'] else 'NOT met'}: {t['target']}: "
                         f"{t['value']:.3f}{extra}")
    return "\n".join(lines)

# --------------------------------------------------------------------------


def _main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m wsmem.benchmarks.cyclic",
                                description="cyclic benchmark worker (internal) or a run")
    p.add_argument("--worker", nargs=3, metavar=("CONFIG", "WORKLOAD", "SIZE"))
    p.add_argument("--target-s", type=float, default=0.25)
    p.add_argument("--warmup", type=int, default=WARMUP_STEPS)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        config, workload, size = args.worker
        return worker_main(config, workload, int(size), args.target_s, args.warmup)
    res = run(quick=args.quick, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
