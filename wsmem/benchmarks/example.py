"""Worked-example benchmark: the MLP of :mod:`wsmem.examples.mlp`, with and without workspaces.

Configurations, each in its own process (a worker started as ``python -m
wsmem.benchmarks.example --worker CONFIG ...``), so that peak RSS is per
configuration:

- ``plain``: :class:`~wsmem.examples.mlp.PlainTrainer`: plain NumPy, the
  loader in the training thread, no wsmem;
- ``ws``: :class:`~wsmem.examples.mlp.WsTrainer` with ``prefetch=False``:
  the example's :class:`~wsmem.WorkspaceMgr` layout (activations, gradients,
  FF/BP working memory, updater working memory each in a workspace), the
  loader in the training thread;
- ``ws_prefetch``: the same with the loader through :func:`wsmem.prefetch`
  (only when this wsmem has it).

Workload: the example's MLP (``64 -> 256 -> 256 -> 10``, float64, ReLU,
softmax cross-entropy, SGD with momentum, minibatches of 256) on
:func:`~wsmem.examples.mlp.make_dataset` (20,000 training and 4,096 held-out
samples in a full run).  One *epoch* is timed (every minibatch: loader,
forward, backward, update), then one evaluation pass over the held-out set
(in the inference workspace for the ws configs).

Method: the workers start one after the other; each makes the data and the
model, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), and
runs one warm-up epoch and evaluation (the workspaces learn their sizes in
its first step).  Then in every round each worker trains one more epoch, in
an order rotated per round, while the others wait on their stdin.  All
workers run the same epochs in the same order, so their losses must be equal
to plain's, every one, ``==`` on floats; the table says MISMATCH otherwise.
Reported: the median epoch time over rounds (min..max), the median over rounds
of the paired per-round ratio plain / config (> 1: faster than plain), the
median evaluation time, minor page faults per training step (``ru_minflt``
over an epoch), and the peak RSS of the worker while it trained (``VmHWM``
after the reset: warm-up and timed epochs, not the data generation), with
the RSS at the reset for scale.  For the ws configs: whether any workspace
grew after the first step (steady state) and whether evaluation allocated
after its first batch.

BLAS runs single-threaded in every worker (``blas_threads`` to change it), as
in the ``cyclic`` suite: on a small shared machine a spinning BLAS pool makes
timings noise.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

from wsmem.benchmarks._compare import _paired_ratio

__all__ = ["DESCRIPTION", "CONFIGS", "MODES", "run", "format_table", "worker_main",
           "config_available", "run_worker_once"]

DESCRIPTION = ("worked example: MLP training epoch and held-out evaluation, plain NumPy vs "
               "WorkspaceMgr (and + prefetch), one process per config")

CONFIGS = {
    "plain": "plain NumPy",
    "ws": "WorkspaceMgr",
    "ws_prefetch": "WorkspaceMgr + prefetch",
}

# mode -> rounds and problem size (hidden widths: the example's unless given)
MODES = {
    "full": {"rounds": 9, "procs": 2, "n_train": 20_000, "n_test": 4_096,
             "hidden": (256, 256)},
    "quick": {"rounds": 3, "procs": 1, "n_train": 5_120, "n_test": 1_024,
              "hidden": (256, 256)},
    "tiny": {"rounds": 1, "procs": 1, "n_train": 512, "n_test": 256, "hidden": (32, 32)},
}
BATCH_SIZE = 256

# --------------------------------------------------------------------------
# Worker


def _minflt() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_main(config: str, n_train: int, n_test: int, hidden: tuple[int, ...],
                stdin=None, stdout=None) -> int:
    """One worker: set up, warm up, print a ready line, then answer ``run``/``quit``.

    Every reply is one JSON line on ``stdout``.
    """
    import gc

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout

    def send(obj):
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    if config not in CONFIGS:
        send({"error": f"unknown config {config!r}; known: {', '.join(CONFIGS)}"})
        return 2
    from wsmem.examples import mlp
    if config == "ws_prefetch" and not mlp.has_prefetch():
        send({"error": "this wsmem has no wsmem.prefetch"})
        return 2
    data = mlp.make_dataset(n_train=n_train, n_test=n_test)
    cfg = mlp.TrainConfig(hidden=hidden, batch_size=BATCH_SIZE)
    if config == "plain":
        trainer = mlp.PlainTrainer(data, cfg)
    else:
        trainer = mlp.WsTrainer(data, cfg, prefetch=config == "ws_prefetch")
    gc.collect()
    rss_setup = _status_kib("VmRSS")
    hwm_reset = _reset_peak_rss()
    clock = time.perf_counter

    def epoch():
        f0 = _minflt()
        t0 = clock()
        losses = trainer.run_epoch()
        t = clock() - t0
        f1 = _minflt()
        t0 = clock()
        ev = trainer.evaluate()
        t_eval = clock() - t0
        out = {"epoch": trainer.epoch - 1, "epoch_time_s": t, "steps": len(losses),
               "faults_per_step": (f1 - f0) / max(len(losses), 1), "losses": losses,
               "eval_time_s": t_eval, "accuracy": ev.accuracy}
        if config != "plain":
            out["steady_state"] = trainer.steady_state
            out["eval_steady"] = ev.steady
            out["eval_cycle_bytes"] = sorted({b.cycle_bytes for b in ev.batches})
            out["eval_spills_after_first"] = sum(b.spilled_count for b in ev.batches[1:])
        return out

    try:
        warm = epoch()
        send({"ready": True, "config": config, "pid": os.getpid(), "warmup": warm,
              "rss_setup_kib": rss_setup, "peak_rss_reset": hwm_reset})
        for line in stdin:
            cmd = line.strip()
            if cmd == "run":
                send(epoch())
            elif cmd == "quit" or not cmd:
                break
            else:
                send({"error": f"unknown command {cmd!r}"})
        final = {"done": True, "maxrss_kib": _maxrss_kib(),
                 "peak_rss_kib": _status_kib("VmHWM") if hwm_reset else None,
                 "rss_end_kib": _status_kib("VmRSS")}
        if config != "plain":
            st = trainer.stats()
            final["workspace_capacity_bytes"] = {n: s.capacity for n, s in st.items()}
        send(final)
    finally:
        trainer.close()
    return 0

# --------------------------------------------------------------------------
# Driver


def config_available(config: str) -> tuple[bool, str]:
    """Whether ``config`` can run here, and a note when it cannot."""
    if config == "ws_prefetch":
        from wsmem.examples.mlp import has_prefetch
        if not has_prefetch():
            return False, "ws_prefetch skipped: this wsmem has no wsmem.prefetch"
    return True, ""


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker_env(blas_threads: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                        "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_", "WSMEM_TRACK")}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(blas_threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_root(), env.get("PYTHONPATH")]))
    return env


class _Worker:
    def __init__(self, config, n_train, n_test, hidden, blas_threads):
        self.config = config
        cmd = [sys.executable, "-m", "wsmem.benchmarks.example", "--worker", config,
               "--n-train", str(n_train), "--n-test", str(n_test),
               "--hidden", ",".join(map(str, hidden))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=_worker_env(blas_threads), cwd=_root())

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.proc.wait()
            raise RuntimeError(f"example worker {self.config} died "
                               f"(rc={self.proc.returncode}): {err.strip()[-2000:]}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"example worker {self.config}: {msg['error']}")
        return msg

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> dict:
        try:
            return self.ask("quit")
        finally:
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_worker_once(config: str, *, n_train: int = 512, n_test: int = 256,
                    hidden=(32, 32), epochs: int = 1, blas_threads: int = 1) -> dict:
    """Start one worker, run ``epochs`` timed epochs, quit: ready + epochs + final."""
    w = _Worker(config, n_train, n_test, tuple(hidden), blas_threads)
    try:
        ready = w.read()
        runs = [w.ask("run") for _ in range(epochs)]
        final = w.close()
    except BaseException:
        w.kill()
        raise
    return {"ready": ready, "epochs": runs, "final": final}


def _merge(epochs: list[dict]) -> dict:
    """One config's epochs of one round (one per process): medians of the times and
    faults; every flag must hold in every process."""
    out = dict(epochs[0])
    for key in ("epoch_time_s", "eval_time_s", "faults_per_step"):
        out[key] = statistics.median(e[key] for e in epochs)
    for key in ("steady_state", "eval_steady"):
        if key in out:
            out[key] = all(e[key] for e in epochs)
    if "eval_spills_after_first" in out:
        out["eval_spills_after_first"] = max(e["eval_spills_after_first"] for e in epochs)
        out["eval_cycle_bytes"] = sorted({b for e in epochs for b in e["eval_cycle_bytes"]})
    return out


def run(quick: bool = False, *, tiny: bool = False, rounds: int | None = None,
        target_s: float | None = None, configs=None, blas_threads: int = 1,
        n_train: int | None = None, n_test: int | None = None,
        progress: Callable[[str], None] | None = None) -> dict:
    """Run the example benchmark (one worker process per config); JSON-ready results.

    Parameters
    ----------
    quick : bool
        3 rounds on 2,560 training samples (~10 s) instead of 7 rounds on
        20,000.
    tiny : bool
        One round of a tiny network on 512 samples: plumbing only (tests).
    rounds : int, optional
        Override the number of timed epochs per config.
    target_s : float, optional
        Accepted for the suite interface; a round is one epoch, so unused.
    configs : iterable of str, optional
        Subset of :data:`CONFIGS` (default: all available here).
    n_train, n_test : int, optional
        Override the problem size.

    Returns
    -------
    dict
        ``suite``, ``machine``, ``method``, ``rows`` (one per config),
        ``skipped``, ``all_match`` (every loss of every config ``==``
        plain's), ``steady_state_ok`` (no workspace grew after the first
        step; evaluation allocated nothing after its first batch).
    """
    from wsmem.benchmarks._env import machine_info, select_configs
    mode = "tiny" if tiny else "quick" if quick else "full"
    m = MODES[mode]
    rounds = m["rounds"] if rounds is None else int(rounds)
    procs = m["procs"]
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    n_train = m["n_train"] if n_train is None else int(n_train)
    n_test = m["n_test"] if n_test is None else int(n_test)
    hidden = m["hidden"]
    # "plain" is always run: the reference for losses and ratios
    use, skipped = select_configs("example", CONFIGS, configs, config_available, progress,
                                  require=("plain",))

    t_start = time.perf_counter()
    order = [(k, p) for p in range(procs) for k in use]
    workers, ready, got, final = {}, {}, {w: [] for w in order}, {}
    failed: dict[str, str] = {}     # config -> why its worker died (it is dropped)

    def fail(key, exc):
        if key[0] == "plain":
            raise exc               # no reference: nothing to compare with
        failed[key[0]] = str(exc)
        if progress is not None:
            progress(f"example: {key[0]} FAILED: {str(exc)[-300:]}")
        for other in [o for o in order if o[0] == key[0]]:
            if other in workers:
                workers[other].kill()
            order.remove(other)

    try:
        for key in list(order):        # one at a time: set-up and warm-up alone
            if key[0] in failed:
                continue
            workers[key] = _Worker(key[0], n_train, n_test, hidden, blas_threads)
            try:
                ready[key] = workers[key].read()
            except RuntimeError as exc:
                fail(key, exc)
                continue
            if progress is not None:
                progress(f"example: {key[0]} #{key[1]} ready (warm-up epoch "
                         f"{ready[key]['warmup']['epoch_time_s']:.2f} s)")
        for r in range(rounds):
            start = r % len(order)
            for key in order[start:] + order[:start]:
                if key[0] in failed:
                    continue
                try:
                    got[key].append(workers[key].ask("run"))
                except RuntimeError as exc:
                    fail(key, exc)
            if progress is not None:
                parts = ", ".join(f"{k}#{p} {got[k, p][-1]['epoch_time_s']:.3f} s"
                                  for k, p in order)
                progress(f"example: round {r + 1}/{rounds}: {parts}")
        for key in order:
            final[key] = workers[key].close()
    finally:
        for w in workers.values():
            w.kill()
    use = [k for k in use if k not in failed]
    skipped += [f"{k} FAILED (worker died; left out of the table): "
                f"{why.strip().splitlines()[-1][:600]}" for k, why in failed.items()]

    def losses_of(key):
        return [ready[key]["warmup"]["losses"]] + [e["losses"] for e in got[key]]

    ref = losses_of(("plain", 0))
    rows = []
    for k in use:
        keys = [(k, p) for p in range(procs)]
        # a config's epoch in round r: median over its processes
        epochs = [_merge([got[key][r] for key in keys]) for r in range(rounds)]
        times = [e["epoch_time_s"] for e in epochs]
        evals = [e["eval_time_s"] for e in epochs]
        peaks = [final[key]["peak_rss_kib"] for key in keys]
        first = ready[keys[0]]
        row = {
            "config": k, "label": CONFIGS[k],
            "epoch_time_s": statistics.median(times),
            "epoch_time_min_s": min(times), "epoch_time_max_s": max(times),
            "epoch_time_rounds_s": times,
            "warmup_epoch_time_s": statistics.median(ready[key]["warmup"]["epoch_time_s"]
                                                     for key in keys),
            "steps_per_epoch": epochs[0]["steps"],
            "eval_time_s": statistics.median(evals),
            "eval_time_rounds_s": evals,
            "faults_per_step": statistics.median(e["faults_per_step"] for e in epochs),
            "accuracy": epochs[-1]["accuracy"],
            "rss_setup_kib": first["rss_setup_kib"],
            "peak_rss_kib": None if None in peaks else max(peaks),
            "peak_rss_whole_process_kib": max(final[key]["maxrss_kib"] for key in keys),
            "losses_match_plain": all(losses_of(key) == ref for key in keys),
            "n_losses": sum(len(x) for x in ref),
        }
        if k != "plain":
            row["steady_state"] = all(e["steady_state"] for e in epochs)
            row["eval_steady"] = all(e["eval_steady"] for e in epochs)
            row["eval_spills_after_first"] = max(e["eval_spills_after_first"] for e in epochs)
            row["eval_cycle_bytes"] = sorted({b for e in epochs for b in e["eval_cycle_bytes"]})
            row["workspace_capacity_bytes"] = final[keys[0]]["workspace_capacity_bytes"]
        rows.append(row)
    by = {r["config"]: r for r in rows}
    for r in rows:
        r["ratio_vs_plain"] = _paired_ratio(by["plain"]["epoch_time_rounds_s"],
                                            r["epoch_time_rounds_s"])
        r["eval_ratio_vs_plain"] = _paired_ratio(by["plain"]["eval_time_rounds_s"],
                                                 r["eval_time_rounds_s"])
        if r["peak_rss_kib"] and by["plain"]["peak_rss_kib"]:
            r["peak_rss_vs_plain"] = r["peak_rss_kib"] / by["plain"]["peak_rss_kib"]
    return {
        "suite": "example",
        "schema": 1,
        "machine": machine_info(),
        "method": {
            "mode": mode, "rounds": rounds, "processes_per_config": procs, "n_train": n_train, "n_test": n_test,
            "hidden": list(hidden), "batch_size": BATCH_SIZE, "blas_threads": blas_threads,
            "configs": {k: CONFIGS[k] for k in use},
            "statistic": "epoch and evaluation time: median over interleaved rounds (one "
                         "epoch per worker per round, rotated order); ratio: median over "
                         "rounds of the paired per-round ratio plain / config (> 1: config "
                         "faster); faults = ru_minflt over an epoch / steps; peak RSS = "
                         "VmHWM after a reset at the end of set-up (warm-up and timed "
                         "epochs)",
        },
        "configs": [{"key": k, "label": CONFIGS[k]} for k in use],
        "skipped": skipped,
        "rows": rows,
        "all_match": all(r["losses_match_plain"] for r in rows),
        "steady_state_ok": all(r.get("steady_state", True) and r.get("eval_steady", True)
                               for r in rows),
        "elapsed_s": round(time.perf_counter() - t_start, 3),
    }

# --------------------------------------------------------------------------
# Formatting


def _fmt_s(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.0f} ms"


def format_table(results: dict) -> str:
    """Markdown: one line per config."""
    m = results["method"]
    lines = [f"### MLP {m['n_train']} samples, {len(m['hidden']) + 1} layers "
             f"({'-'.join(map(str, m['hidden']))} hidden), batch {m['batch_size']}, float64",
             ""]
    header = ["config", "epoch (min..max)", "vs plain", "first epoch", "eval", "eval vs plain",
              "faults/step", "peak RSS (at set-up)", "RSS vs plain", "steady", "losses"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for r in results["rows"]:
        rss = "-" if r["peak_rss_kib"] is None else \
            f"{r['peak_rss_kib'] / 1024:.1f} MiB ({r['rss_setup_kib'] / 1024:.1f})"
        steady = "-" if "steady_state" not in r else \
            ("yes" if r["steady_state"] and r["eval_steady"] else "**no**")
        cells = [r["label"],
                 f"{_fmt_s(r['epoch_time_s'])} ({_fmt_s(r['epoch_time_min_s'])}.."
                 f"{_fmt_s(r['epoch_time_max_s'])})",
                 f"{r['ratio_vs_plain']:.2f}x", _fmt_s(r["warmup_epoch_time_s"]),
                 _fmt_s(r["eval_time_s"]), f"{r['eval_ratio_vs_plain']:.2f}x",
                 f"{r['faults_per_step']:,.1f}", rss,
                 "-" if "peak_rss_vs_plain" not in r else f"{r['peak_rss_vs_plain']:.2f}x",
                 steady,
                 "same" if r["losses_match_plain"] else "**MISMATCH**"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    steps = results["rows"][0]["steps_per_epoch"]
    lines.append(f"Epoch: {steps} training steps (loader, forward, backward, update); time "
                 f"is the median of {m['rounds']} interleaved rounds after one warm-up "
                 "epoch ('first epoch', where the workspaces learn their sizes). "
                 "'vs plain': median of the paired per-round ratio plain / config "
                 "(> 1: faster than plain). 'eval': one pass over "
                 f"{m['n_test']} held-out samples. Peak RSS: VmHWM of the worker "
                 "from the end of set-up (data and model made) to exit; in brackets the "
                 f"RSS at set-up. BLAS threads = {m['blas_threads']}.")
    n = results["rows"][0]["n_losses"]
    if results["all_match"]:
        lines.append(f"Losses: all {n} recorded losses of every config equal plain's (==).")
    else:
        bad = ", ".join(r["config"] for r in results["rows"] if not r["losses_match_plain"])
        lines.append(f"**MISMATCH**: losses differ from plain's for {bad}.")
    ws_rows = [r for r in results["rows"] if "steady_state" in r]
    if ws_rows:
        r = ws_rows[0]
        caps = ", ".join(f"{n} {c / 1024:.0f} KiB"
                         for n, c in r["workspace_capacity_bytes"].items())
        if results["steady_state_ok"]:
            lines.append(f"Steady: no workspace grew after the first step, and evaluation "
                         f"spilled nothing after its first batch (cycle_bytes "
                         f"{', '.join(map(str, r['eval_cycle_bytes']))} every batch).")
        else:
            lines.append("WARNING: a workspace grew after the first step, or evaluation "
                         "spilled after its first batch (see 'steady').")
        lines.append(f"Workspaces ({r['label']}): {caps}.")
    for note in results.get("skipped", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)

# --------------------------------------------------------------------------


def _main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m wsmem.benchmarks.example",
                                description="example benchmark worker (internal) or a run")
    p.add_argument("--worker", metavar="CONFIG")
    p.add_argument("--n-train", type=int, default=MODES["full"]["n_train"])
    p.add_argument("--n-test", type=int, default=MODES["full"]["n_test"])
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        return worker_main(args.worker, args.n_train, args.n_test, hidden)
    res = run(quick=args.quick, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
