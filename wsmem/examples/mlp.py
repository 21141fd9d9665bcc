"""A multilayer perceptron in plain NumPy, trained with and without workspaces.

The network: ``n_features -> 256 -> 256 -> n_classes`` (ReLU, softmax
cross-entropy), float64, SGD with momentum (one velocity array per parameter:
the updater state), minibatches of 256, on a synthetic, seeded classification
problem made in code (:func:`make_dataset`: Gaussian mixtures, three blobs per
class).

The math is written once (:func:`forward`, :func:`backward`,
:func:`sgd_momentum`).  Each takes a ``scope`` function: ``scope(array_type)``
returns the context manager under which arrays of that
:class:`~wsmem.ArrayType` are made.  That is the whole difference between the
two trainers:

- :func:`train_plain`: ``scope`` returns a null context; NumPy allocates from
  the heap as usual.  No wsmem anywhere.
- :func:`train_ws`: ``scope`` is :meth:`WorkspaceMgr.scope
  <wsmem.WorkspaceMgr.scope>` of :func:`example_mgr` (DL4J's LayerWorkspaceMgr
  layout: activations, activation gradients + parameter gradients, FF/BP
  working memory and updater working memory each in its own workspace;
  parameters and updater state on the heap), and the data loader runs
  through :func:`wsmem.prefetch` when this wsmem has it.

With ``capture=True`` (the default) NumPy's own allocations inside ``with ws:``
come from ``ws``, and entering a workspace that is already open makes it
current again *without* a reset.  So a layer computes its pre-activation in
working memory and re-enters the activations workspace for its output: the
zero-copy equivalent of DL4J's ``leverageTo(ACTIVATIONS, ret)``::

    with scope(ArrayType.FF_WORKING_MEM):          # a new cycle per layer
        z = x @ w + b                               # working memory
        with scope(ArrayType.ACTIVATIONS):          # re-entered: no reset
            a = np.maximum(z, 0.0)                  # lives until backprop

Both trainers give the same loss curve to the last bit (every recorded loss
``==``).  :func:`evaluate` runs a held-out set through an inference workspace,
one cycle per batch; after the first batch it allocates nothing (no spills,
the same ``cycle_bytes`` every batch).  :func:`parallel_train` is the
parallel-trainer pattern: worker threads with their own workspaces (the
manager's per-thread registry) take batches from one shared stream and
compute gradients; the averaged gradient updates the shared parameters; the
result equals a sequential computation bit for bit.

Run ``python -m wsmem.examples.mlp`` (``--help`` for sizes); docs/example.md
walks through it and shows measured numbers.

Examples
--------
>>> from wsmem.examples import mlp
>>> data = mlp.make_dataset(n_train=512, n_test=256, seed=1)
>>> cfg = mlp.TrainConfig(hidden=(32, 32), epochs=1, batch_size=64)
>>> plain = mlp.train_plain(data, cfg)
>>> ws = mlp.train_ws(data, cfg, prefetch=False)
>>> plain.losses == ws.losses, len(ws.losses), ws.steady_state
(True, 8, True)
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ContextManager

import numpy as np

import wsmem
from wsmem import ArrayType, WorkspaceConfig, WorkspaceMgr, WorkspaceStats

__all__ = [
    "Dataset", "TrainConfig", "TrainResult", "EvalResult", "BatchStats",
    "make_dataset", "init_params", "batches", "example_mgr", "forward", "backward",
    "sgd_momentum", "train_step", "PlainTrainer", "WsTrainer", "train_plain", "train_ws",
    "evaluate", "parallel_train",
    "has_prefetch", "INFERENCE_WORKSPACE", "main",
]

Params = list[tuple[np.ndarray, np.ndarray]]     # [(W, b), ...] per layer
Scope = Callable[[ArrayType], ContextManager[Any]]

INFERENCE_WORKSPACE = "WS_INFERENCE"

# ---------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification problem: float64 features, int64 labels in ``[0, n_classes)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def make_dataset(n_train: int = 20_000, n_test: int = 4_096, n_features: int = 64,
                 n_classes: int = 10, *, blobs_per_class: int = 3, spread: float = 0.3,
                 seed: int = 0) -> Dataset:
    """Gaussian mixtures: each class is ``blobs_per_class`` unit-variance blobs.

    Blob centres are standard normal times ``spread * sqrt(n_features) / 4``
    (so neighbouring classes overlap a little and a linear model is not
    enough).  Deterministic for a given ``seed``.

    Examples
    --------
    >>> d = make_dataset(n_train=100, n_test=20, n_features=8, n_classes=3)
    >>> d.x_train.shape, d.y_test.shape, d.x_train.dtype, int(d.y_train.max()) < 3
    ((100, 8), (20,), dtype('float64'), True)
    """
    if min(n_train, n_test, n_features, n_classes, blobs_per_class) < 1:
        raise ValueError("n_train, n_test, n_features, n_classes and blobs_per_class "
                         "must all be >= 1")
    rng = np.random.default_rng(seed)
    scale = spread * math.sqrt(n_features) / 4
    centres = rng.standard_normal((n_classes * blobs_per_class, n_features)) * scale
    n = n_train + n_test
    blob = rng.integers(0, n_classes * blobs_per_class, n)
    x = centres[blob] + rng.standard_normal((n, n_features))
    y = (blob % n_classes).astype(np.int64)
    return Dataset(x[:n_train].copy(), y[:n_train].copy(), x[n_train:].copy(),
                   y[n_train:].copy(), n_classes)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, epoch: int = 0,
            seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled minibatches ``(x[idx], y[idx])`` of one epoch (the last may be short).

    The order depends only on ``(seed, epoch)``.  Each batch is a fresh copy,
    as a real loader's would be.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def has_prefetch() -> bool:
    """Whether this wsmem has :func:`wsmem.prefetch`."""
    return callable(getattr(wsmem, "prefetch", None))


def _prefetched(items: Iterable, use: bool | None, buffer: int) -> Iterable:
    """The one-line switch: ``items`` through ``wsmem.prefetch`` (``use=None``: when
    this wsmem has it)."""
    if use is None:
        use = has_prefetch()
    if not use:
        return items
    if not has_prefetch():
        raise RuntimeError("prefetch=True, but this wsmem has no wsmem.prefetch; pass "
                           "prefetch=False (or None to use it when available)")
    return wsmem.prefetch(items, buffer=buffer)


def _nd(a):
    """An ndarray for a batch item: prefetch hands out WsArrays (zero-copy view)."""
    return a.numpy() if isinstance(a, wsmem.WsArray) else a


def _close(it) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()

# ---------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters (the defaults are the worked example's)."""

    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    epochs: int = 3
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or not self.hidden or \
                min(self.hidden) < 1:
            raise ValueError(f"bad TrainConfig {self}: batch_size, epochs and every hidden "
                             "width must be >= 1")


def init_params(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int = 0) -> Params:
    """He-initialised weights and zero biases, on the heap: ``[(W, b), ...]``."""
    rng = np.random.default_rng(seed)
    sizes = (n_in, *hidden, n_out)
    return [(rng.standard_normal((a, b)) * math.sqrt(2.0 / a), np.zeros(b))
            for a, b in zip(sizes[:-1], sizes[1:])]


def _no_scope(array_type: ArrayType) -> ContextManager[None]:
    """The plain trainer's scope: every array wherever NumPy puts it (the heap)."""
    return contextlib.nullcontext()


def _affine(x, w, b):
    z = x @ w
    z += b
    return z


def _relu(z):
    return np.maximum(z, 0.0)


def _relu_backward(delta, a):
    """dL/dz from dL/da for a = relu(z) (a > 0 exactly where z > 0)."""
    return delta * (a > 0.0)


def _softmax_xent(logits, y):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    loss = -float((shifted[rows, y] - np.log(s[:, 0])).mean())
    grad = e / s
    grad[rows, y] -= 1.0
    grad /= n
    return loss, grad


def forward(params: Params, x: np.ndarray, scope: Scope = _no_scope) -> list[np.ndarray]:
    """Activations ``[x, a_1, ..., logits]``.

    Each layer's pre-activation lives in ``FF_WORKING_MEM`` (one cycle per
    layer); each output (ReLU, or the logits) in ``ACTIVATIONS``, whose
    workspace the caller keeps open for the whole step (re-entering it does
    not reset it).
    """
    acts = [x]
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        if i == last:
            with scope(ArrayType.ACTIVATIONS):
                acts.append(_affine(acts[-1], w, b))
            break
        with scope(ArrayType.FF_WORKING_MEM):
            z = _affine(acts[-1], w, b)
            with scope(ArrayType.ACTIVATIONS):
                acts.append(_relu(z))
            del z                          # dies inside its cycle: reusable at once
    return acts


def backward(params: Params, acts: list[np.ndarray], y: np.ndarray,
             scope: Scope = _no_scope) -> tuple[float, Params]:
    """Loss and parameter gradients ``[(dW, db), ...]``.

    Per layer, from the output down: ``dL/dz`` in ``BP_WORKING_MEM`` (one
    cycle per layer); the parameter gradients and the epsilon handed to the
    layer below (``dL/da``) in ``ACTIVATION_GRAD``, which the caller keeps
    open until the update.
    """
    grads: list = [None] * len(params)
    loss = math.nan
    delta = None                  # dL/d(output of layer i), ACTIVATION_GRAD
    for i in range(len(params) - 1, -1, -1):
        w = params[i][0]
        with scope(ArrayType.BP_WORKING_MEM):
            if i == len(params) - 1:
                loss, dz = _softmax_xent(acts[-1], y)
            else:
                dz = _relu_backward(delta, acts[i + 1])
            with scope(ArrayType.ACTIVATION_GRAD):
                grads[i] = (acts[i].T @ dz, dz.sum(axis=0))
                delta = dz @ w.T if i > 0 else None
            del dz
    return loss, grads


def sgd_momentum(params: Params, velocity: Params, grads: Params, lr: float,
                 momentum: float, scope: Scope = _no_scope) -> None:
    """``v = momentum * v - lr * g; p += v`` in place (temporaries: UPDATER_WORKING_MEM)."""
    with scope(ArrayType.UPDATER_WORKING_MEM):
        for p_layer, v_layer, g_layer in zip(params, velocity, grads):
            for p, v, g in zip(p_layer, v_layer, g_layer):
                v *= momentum
                v -= lr * g
                p += v


def train_step(params: Params, velocity: Params, x: np.ndarray, y: np.ndarray,
               cfg: TrainConfig, scope: Scope = _no_scope) -> float:
    """One minibatch: forward, backward, update.  Returns the loss."""
    with scope(ArrayType.ACTIVATIONS), scope(ArrayType.ACTIVATION_GRAD):
        acts = forward(params, x, scope)
        loss, grads = backward(params, acts, y, scope)
        del acts
        sgd_momentum(params, velocity, grads, cfg.lr, cfg.momentum, scope)
        del grads
    return loss


def example_mgr() -> WorkspaceMgr:
    """The example's layout (that of DL4J's MultiLayerNetwork, gradients split out).

    - ACTIVATIONS -> ``WS_ACT`` (a cycle per step)
    - ACTIVATION_GRAD -> ``WS_GRAD`` (epsilons and parameter gradients; a cycle per step)
    - FF_WORKING_MEM, BP_WORKING_MEM -> ``WS_WORK`` (a cycle per layer)
    - UPDATER_WORKING_MEM -> ``WS_UPDATER`` (a cycle per update)
    - INPUT, FF_CACHE -> the heap

    Every workspace learns its size in its first cycle and, like DL4J's
    working memory, grows when a later cycle needs more (``spill=
    "reallocate"``): the first step sizes everything, later steps allocate
    nothing.  (``WorkspaceMgr.for_mode(WorkspaceMode.ENABLED)`` works too; it
    shares one workspace between activations and their gradients and spills
    externally instead of growing.)
    """
    cfg = WorkspaceConfig(learning="first_loop", spill="reallocate")
    return WorkspaceMgr({
        ArrayType.ACTIVATIONS: ("WS_ACT", cfg),
        ArrayType.ACTIVATION_GRAD: ("WS_GRAD", cfg),
        ArrayType.FF_WORKING_MEM: ("WS_WORK", cfg),
        ArrayType.BP_WORKING_MEM: ("WS_WORK", cfg),
        ArrayType.UPDATER_WORKING_MEM: ("WS_UPDATER", cfg),
    }, scoped_out={ArrayType.INPUT, ArrayType.FF_CACHE})


def _mgr_workspaces(mgr: WorkspaceMgr) -> dict[str, wsmem.Workspace]:
    """This thread's workspaces of ``mgr``, by name (created when missing)."""
    out = {}
    for t in ArrayType:
        try:
            ws = mgr.workspace(t)
        except ValueError:          # unconfigured type
            continue
        if ws is not None:
            out[ws.name] = ws
    return out

# ---------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """The inference workspace after one evaluation batch (its cycle)."""

    cycle_bytes: int
    spilled_count: int
    spilled_bytes: int
    capacity: int
    pages: int
    minor_faults: int         # ru_minflt delta over the batch (whole process)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracy on a held-out set; ``batches`` only when run in a workspace."""

    accuracy: float
    correct: int
    total: int
    batches: tuple[BatchStats, ...] = ()

    @property
    def steady(self) -> bool:
        """After the first batch: no spill, the same ``cycle_bytes`` and capacity."""
        rest = self.batches[1:]
        if not self.batches:
            return False
        first = self.batches[1] if rest else self.batches[0]
        return all(b.spilled_count == 0 and b.cycle_bytes == first.cycle_bytes
                   and b.capacity == first.capacity for b in rest)


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def evaluate(params: Params, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
             workspace: wsmem.Workspace | None = None) -> EvalResult:
    """Accuracy of ``params`` on ``(x, y)``, batch by batch (in-place evaluation).

    With ``workspace`` every batch is one cycle of it, and all of the batch's
    arrays (activations, logits, argmax, comparison) come from it: after the
    first batch (which teaches the workspace its size) nothing is allocated.
    Only a count leaves the cycle.
    """
    n = len(x)
    correct = 0
    stats = []
    cm = workspace if workspace is not None else contextlib.nullcontext()
    for start in range(0, n, batch_size):
        f0 = _minflt()
        with cm:
            logits = forward(params, x[start:start + batch_size])[-1]
            correct += int(np.count_nonzero(logits.argmax(axis=1) ==
                                            y[start:start + batch_size]))
            del logits
        if workspace is not None:
            f1 = _minflt()
            st = workspace.stats()
            stats.append(BatchStats(st.cycle_bytes, st.spilled_count, st.spilled_bytes,
                                    st.capacity, st.pages, f1 - f0))
    return EvalResult(correct / max(n, 1), correct, n, tuple(stats))

# ---------------------------------------------------------------- training


def _start(data: Dataset, cfg: TrainConfig):
    params = init_params(data.n_features, cfg.hidden, data.n_classes, cfg.seed)
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    return params, velocity


class PlainTrainer:
    """Plain NumPy training, one epoch at a time: no workspaces, loader in this thread.

    Attributes
    ----------
    params, velocity : list of (W, b)
        The parameters and the updater state (momentum), on the heap.
    epoch : int
        Epochs run so far (the next epoch's shuffle depends on it).
    """

    def __init__(self, data: Dataset, cfg: TrainConfig = TrainConfig()) -> None:
        self.data, self.cfg = data, cfg
        self.params, self.velocity = _start(data, cfg)
        self.epoch = 0

    def _loader(self) -> Iterable:
        return batches(self.data.x_train, self.data.y_train, self.cfg.batch_size,
                       epoch=self.epoch, seed=self.cfg.seed)

    def _step(self, x, y) -> float:
        return train_step(self.params, self.velocity, x, y, self.cfg)

    def run_epoch(self) -> list[float]:
        """Train one epoch; the loss of every minibatch."""
        losses = []
        loader = self._loader()
        try:
            for x, y in loader:
                losses.append(self._step(x, y))
                del x, y        # a prefetched batch must not outlive its window
        finally:
            _close(loader)
        self.epoch += 1
        return losses

    def evaluate(self) -> EvalResult:
        """Accuracy on the held-out set."""
        return evaluate(self.params, self.data.x_test, self.data.y_test, self.cfg.batch_size)

    def close(self) -> None:
        """Release what the trainer holds besides its parameters (nothing here)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WsTrainer(PlainTrainer):
    """The same training with workspaces: the math of :class:`PlainTrainer`, placed
    by ``mgr``, and the loader through :func:`wsmem.prefetch` (when available).

    Parameters
    ----------
    mgr : WorkspaceMgr, optional
        Where each array type lives (default :func:`example_mgr`).
    prefetch : bool, optional
        Run the loader through ``wsmem.prefetch(loader, buffer=buffer)``;
        None (default): when this wsmem has it.
    buffer : int
        Prefetch depth.

    Notes
    -----
    The workspaces come from this thread's registry, so the trainer belongs
    to the thread that made it.  ``close()`` destroys them (and the inference
    workspace :data:`INFERENCE_WORKSPACE`).
    """

    def __init__(self, data: Dataset, cfg: TrainConfig = TrainConfig(), *,
                 mgr: WorkspaceMgr | None = None, prefetch: bool | None = None,
                 buffer: int = 8) -> None:
        super().__init__(data, cfg)
        self.mgr = example_mgr() if mgr is None else mgr
        self.prefetch = has_prefetch() if prefetch is None else bool(prefetch)
        self.buffer = buffer
        self.workspaces = _mgr_workspaces(self.mgr)       # name -> this thread's workspace
        self.inference = wsmem.get_workspace(INFERENCE_WORKSPACE)
        # capacity of every workspace after the first step (None before it)
        self._first_capacity: dict[str, int] | None = None
        # the prefetch iterator over all epochs (made by the first epoch)
        self._stream = None

    def _loader(self) -> Iterable:
        if not self.prefetch:
            return super()._loader()
        if self._stream is None:
            # One prefetch stream for the whole run (its ring workspace is learned
            # once); the thread reads ahead into the next epoch.
            self._stream = _prefetched(self._epochs(), True, self.buffer)
        return itertools.islice(self._stream, -(-len(self.data.x_train) //
                                               self.cfg.batch_size))

    def _epochs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self.epoch
        while True:
            yield from batches(self.data.x_train, self.data.y_train, self.cfg.batch_size,
                               epoch=epoch, seed=self.cfg.seed)
            epoch += 1

    def _step(self, x, y) -> float:
        loss = train_step(self.params, self.velocity, _nd(x), _nd(y), self.cfg,
                          self.mgr.scope)
        if self._first_capacity is None:
            self._first_capacity = self._capacities()
        return loss

    def _capacities(self) -> dict[str, int]:
        return {n: w.stats().capacity for n, w in self.workspaces.items()}

    @property
    def steady_state(self) -> bool | None:
        """True when no workspace grew after the first step: with ``spill=
        "reallocate"`` every spill grows the block, so no step after the first
        spilled (None before the first step)."""
        if self._first_capacity is None:
            return None
        return self._first_capacity == self._capacities()

    def evaluate(self) -> EvalResult:
        """Accuracy on the held-out set, in the inference workspace (a cycle per batch)."""
        return evaluate(self.params, self.data.x_test, self.data.y_test, self.cfg.batch_size,
                        workspace=self.inference)

    def stats(self) -> dict[str, WorkspaceStats]:
        """Stats of the trainer's workspaces, the inference one included."""
        out = {n: w.stats() for n, w in self.workspaces.items()}
        out[self.inference.name] = self.inference.stats()
        return out

    def close(self) -> None:
        if self._stream is not None:
            _close(self._stream)
            self._stream = None
        for w in [*self.workspaces.values(), self.inference]:
            if not w.is_destroyed:
                w.destroy()


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_plain` / :func:`train_ws` recorded."""

    losses: list[float]                  # one per minibatch, in order
    accuracies: list[float]              # held-out accuracy after each epoch
    epoch_times_s: list[float]           # training time of each epoch (no evaluation)
    eval_times_s: list[float]            # time of each evaluation
    params: Params
    last_eval: EvalResult | None = None
    workspaces: dict[str, WorkspaceStats] = dataclasses.field(default_factory=dict)
    steady_state: bool | None = None     # ws: no workspace grew after the first step
    prefetch: bool = False


def _train(trainer: PlainTrainer, evaluate_each_epoch: bool) -> TrainResult:
    res = TrainResult([], [], [], [], trainer.params)
    for _ in range(trainer.cfg.epochs):
        t0 = time.perf_counter()
        res.losses.extend(trainer.run_epoch())
        res.epoch_times_s.append(time.perf_counter() - t0)
        if evaluate_each_epoch:
            t0 = time.perf_counter()
            res.last_eval = trainer.evaluate()
            res.eval_times_s.append(time.perf_counter() - t0)
            res.accuracies.append(res.last_eval.accuracy)
    return res


def train_plain(data: Dataset, cfg: TrainConfig = TrainConfig(), *,
                evaluate_each_epoch: bool = True) -> TrainResult:
    """Train ``cfg.epochs`` epochs with plain NumPy (:class:`PlainTrainer`)."""
    return _train(PlainTrainer(data, cfg), evaluate_each_epoch)


def train_ws(data: Dataset, cfg: TrainConfig = TrainConfig(), *,
             mgr: WorkspaceMgr | None = None, prefetch: bool | None = None,
             buffer: int = 8, evaluate_each_epoch: bool = True,
             gc_window_ms: int | None = None) -> TrainResult:
    """Train ``cfg.epochs`` epochs with workspaces (:class:`WsTrainer`).

    The same losses as :func:`train_plain`, bit for bit.  ``gc_window_ms``:
    ``wsmem.set_gc_window(gc_window_ms)`` for the run (Python's collector
    then runs only at cycle ends; Python's default is restored after).  The
    workspaces are destroyed at the end; their stats are in the result.
    """
    if gc_window_ms is not None:
        wsmem.set_gc_window(gc_window_ms)
    try:
        with WsTrainer(data, cfg, mgr=mgr, prefetch=prefetch, buffer=buffer) as trainer:
            res = _train(trainer, evaluate_each_epoch)
            res.workspaces = trainer.stats()
            res.steady_state = trainer.steady_state
            res.prefetch = trainer.prefetch
    finally:
        if gc_window_ms is not None:
            wsmem.toggle_periodic_gc(True)
    return res

# ---------------------------------------------------------------- parallel training


def parallel_train(n_threads: int, data: Dataset, cfg: TrainConfig = TrainConfig(),
                   **kwargs):
    """Data-parallel training with per-thread workspaces: see
    :func:`wsmem.examples.parallel.parallel_train` (same arguments)."""
    from wsmem.examples.parallel import parallel_train as run
    return run(n_threads, data, cfg, **kwargs)

# ---------------------------------------------------------------- command line


def _fmt_bytes(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    """``python -m wsmem.examples.mlp``: train both ways, compare, run the parallel demo."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m wsmem.examples.mlp", description=__doc__
                                .split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-test", type=int, default=4_096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="parallel_train workers (0: skip)")
    p.add_argument("--no-prefetch", action="store_true")
    args = p.parse_args(argv)
    data = make_dataset(n_train=args.n_train, n_test=args.n_test)
    cfg = TrainConfig(epochs=args.epochs)
    plain = train_plain(data, cfg)
    ws = train_ws(data, cfg, prefetch=False if args.no_prefetch else None)
    print(f"data: {args.n_train} train / {args.n_test} test, {data.n_features} features, "
          f"{data.n_classes} classes; net {data.n_features}-"
          f"{'-'.join(map(str, cfg.hidden))}-{data.n_classes}, batch {cfg.batch_size}")
    for name, r in (("plain", plain), ("workspaces" + (" + prefetch" if ws.prefetch else ""),
                                      ws)):
        times = ", ".join(f"{t:.2f}" for t in r.epoch_times_s)
        print(f"{name:>24}: epoch times [{times}] s, final loss {r.losses[-1]:.6f}, "
              f"accuracy {r.accuracies[-1]:.4f}")
    same = plain.losses == ws.losses
    print(f"same loss curve to the bit: {same} ({len(ws.losses)} losses)")
    print(f"workspaces steady after the first step: {ws.steady_state}")
    for name, st in ws.workspaces.items():
        print(f"  {name:>14}: capacity {_fmt_bytes(st.capacity)}, cycles {st.cycles}, "
              f"peak cycle {_fmt_bytes(st.peak_cycle_bytes)}")
    ev = ws.last_eval
    print(f"evaluation: {len(ev.batches)} batches, cycle_bytes "
          f"{sorted({b.cycle_bytes for b in ev.batches[1:]})}, spills after the first: "
          f"{sum(b.spilled_count for b in ev.batches[1:])}, steady: {ev.steady}")
    ok = same and ws.steady_state and ev.steady
    if args.threads > 0:
        par = parallel_train(args.threads, data, TrainConfig(epochs=1),
                             prefetch=False if args.no_prefetch else None)
        print(f"parallel_train({args.threads}): {par.steps} steps, batches per worker "
              f"{par.batches_per_worker}, matches sequential: {par.matches_sequential}")
        ok = ok and bool(par.matches_sequential)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
