"""Data-parallel training of the example MLP: worker threads, per-thread workspaces.

The parallel-trainer pattern (DL4J's ParallelWrapper, synchronous flavour):
one stream of batches (through :func:`wsmem.prefetch` when available) feeds a
shared queue; worker threads take batches as they come free and compute
gradients, each in its *own* workspaces (one :class:`~wsmem.WorkspaceMgr`
resolves names in the per-thread registry); the main thread averages the
gradients of a step in batch order and updates the shared parameters.
Because the reduction order is fixed, the result equals a sequential
computation of the same steps bit for bit, whichever worker took which batch.

Examples
--------
>>> from wsmem.examples import mlp, parallel
>>> data = mlp.make_dataset(n_train=512, n_test=64, seed=2)
>>> res = parallel.parallel_train(2, data, mlp.TrainConfig(hidden=(32,), batch_size=64,
...                                                        epochs=1), prefetch=False)
>>> res.steps, sum(res.batches_per_worker), res.matches_sequential
(4, 8, True)
"""
from __future__ import annotations

import dataclasses
import math
import queue
import threading

import numpy as np

import wsmem
from wsmem import ArrayType, WorkspaceMgr
from wsmem.examples.mlp import (Dataset, Params, TrainConfig, _close, _mgr_workspaces, _nd,
                                _no_scope, _prefetched, _start, backward, batches,
                                example_mgr, forward, has_prefetch, sgd_momentum)

__all__ = ["ParallelResult", "parallel_train"]


@dataclasses.dataclass
class ParallelResult:
    """What :func:`parallel_train` recorded."""

    losses: list[float]                   # one per batch, in stream order
    params: Params
    n_threads: int
    steps: int
    batches_per_worker: list[int]         # how many batches each worker took
    worker_workspaces: list[dict[str, int]]   # per worker: name -> id(workspace)
    prefetch: bool
    matches_sequential: bool | None = None   # None when check=False


def _stream(data: Dataset, cfg: TrainConfig, total: int):
    """``total`` batches of the epoch sequence (epochs repeat as needed)."""
    epoch = 0
    while total > 0:
        for item in batches(data.x_train, data.y_train, cfg.batch_size, epoch=epoch,
                            seed=cfg.seed):
            yield item
            total -= 1
            if total == 0:
                return
        epoch += 1


def _reduce_and_update(params, velocity, slots, acc, cfg, scope):
    """Average the gradients of one step in slot order, then the momentum update."""
    for j, layer in enumerate(acc):
        for m, a in enumerate(layer):
            np.copyto(a, slots[0][j][m])
            for k in range(1, len(slots)):
                a += slots[k][j][m]
            a /= len(slots)
    sgd_momentum(params, velocity, acc, cfg.lr, cfg.momentum, scope)


def _empty_grads(params: Params) -> Params:
    return [(np.empty_like(w), np.empty_like(b)) for w, b in params]


def _sequential_reference(n_threads, data, cfg, steps):
    """The same steps in one thread, without workspaces or prefetch."""
    params, velocity = _start(data, cfg)
    slots = [_empty_grads(params) for _ in range(n_threads)]
    acc = _empty_grads(params)
    losses = []
    it = _stream(data, cfg, steps * n_threads)
    for _ in range(steps):
        for k in range(n_threads):
            x, y = next(it)
            acts = forward(params, x)
            loss, grads = backward(params, acts, y)
            for dst, src in zip(slots[k], grads):
                np.copyto(dst[0], src[0])
                np.copyto(dst[1], src[1])
            losses.append(loss)
        _reduce_and_update(params, velocity, slots, acc, cfg, _no_scope)
    return losses, params


def parallel_train(n_threads: int, data: Dataset, cfg: TrainConfig = TrainConfig(), *,
                   steps: int | None = None, mgr: WorkspaceMgr | None = None,
                   prefetch: bool | None = None, buffer: int | None = None,
                   check: bool = True) -> ParallelResult:
    """Synchronous data-parallel SGD: ``n_threads`` workers, one shared batch stream.

    Each step the main thread takes ``n_threads`` batches from one stream
    (through :func:`wsmem.prefetch` when available) and puts them on a shared
    queue.  Worker threads take them as they come free and compute the
    gradients, each in its *own* workspaces: the one manager ``mgr`` resolves
    workspace names in the per-thread registry.  A worker copies its
    gradients into the heap slot of its batch; the main thread averages the
    slots in batch order and updates the shared parameters (updater working
    memory in its own workspace), then the next step starts.

    Parameters
    ----------
    steps : int, optional
        Number of updates (default: ``epochs * batches_per_epoch // n_threads``).
    check : bool
        Also compute the same steps sequentially (plain NumPy, one thread)
        and set ``matches_sequential``: every loss ``==`` and every parameter
        bit-identical.
    """
    if n_threads < 1:
        raise ValueError(f"n_threads={n_threads} must be >= 1")
    mgr = example_mgr() if mgr is None else mgr
    per_epoch = -(-len(data.x_train) // cfg.batch_size)
    steps = cfg.epochs * per_epoch // n_threads if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    buffer = max(8, 2 * n_threads) if buffer is None else int(buffer)
    if buffer < n_threads:
        raise ValueError(f"buffer={buffer} must be >= n_threads={n_threads}: a step "
                         "holds n_threads prefetched batches at once")
    use_prefetch = has_prefetch() if prefetch is None else bool(prefetch)

    params, velocity = _start(data, cfg)
    slots = [_empty_grads(params) for _ in range(n_threads)]    # heap, one per batch of a step
    acc = _empty_grads(params)
    tasks: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    taken = [0] * n_threads
    spaces: list[dict[str, int]] = [{} for _ in range(n_threads)]

    def worker(wid: int) -> None:
        try:
            spaces[wid] = {n: id(w) for n, w in _mgr_workspaces(mgr).items()}
            while True:
                item = tasks.get()
                if item is None:
                    return
                k, xb, yb = item
                with mgr.scope(ArrayType.ACTIVATIONS), mgr.scope(ArrayType.ACTIVATION_GRAD):
                    acts = forward(params, _nd(xb), mgr.scope)
                    loss, grads = backward(params, acts, _nd(yb), mgr.scope)
                    del acts
                    for dst, src in zip(slots[k], grads):   # hand-off: into the heap slot
                        np.copyto(dst[0], src[0])
                        np.copyto(dst[1], src[1])
                    del grads
                del item, xb, yb
                taken[wid] += 1
                done.put((k, loss, None))
        except BaseException as exc:       # reported to the main thread, which re-raises
            done.put((None, None, exc))
        finally:
            wsmem.destroy_thread_workspaces()

    threads = [threading.Thread(target=worker, args=(i,), name=f"mlp-worker-{i}",
                                daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    losses: list[float] = []
    stream = _prefetched(_stream(data, cfg, steps * n_threads), use_prefetch, buffer)
    it = iter(stream)
    try:
        for _ in range(steps):
            for k in range(n_threads):
                x, y = next(it)
                tasks.put((k, x, y))
            del x, y
            step_losses = [math.nan] * n_threads
            for _ in range(n_threads):
                k, loss, exc = done.get()
                if exc is not None:
                    raise RuntimeError("a parallel_train worker failed") from exc
                step_losses[k] = loss
            losses.extend(step_losses)
            _reduce_and_update(params, velocity, slots, acc, cfg, mgr.scope)
    finally:
        for _ in threads:
            tasks.put(None)
        for t in threads:
            t.join()
        _close(it)
        for name in {mgr.workspace_name(ArrayType.UPDATER_WORKING_MEM)} - {None}:
            ws = wsmem.thread_workspaces().get(name)
            if ws is not None and not ws.is_destroyed:
                ws.destroy()
    res = ParallelResult(losses, params, n_threads, steps, taken, spaces, use_prefetch)
    if check:
        ref_losses, ref_params = _sequential_reference(n_threads, data, cfg, steps)
        res.matches_sequential = ref_losses == losses and all(
            np.array_equal(a, b) for pa, pb in zip(ref_params, params)
            for a, b in zip(pa, pb))
    return res
