"""Where each allocator puts the training step's temporaries, and what it costs.

For every cyclic config (``wsmem.benchmarks.cyclic.CONFIGS``: glibc, tuned
glibc, jemalloc, mimalloc, wsmem), in a process of its own with that
config's environment and ``LD_PRELOAD``, the training step of
``bench/cyclic.py`` runs written out one allocation at a time, in the order
NumPy allocates and frees for ``h = x @ w; h = maximum(h, 0);
y = h * 2 + 1; z = exp(-y); z.sum()``::

    A = x @ w; B = maximum(A, 0); free A; C = B * 2; C += 1;
    D = -C; E = exp(D); free D; sum(E); free B, C, E

and reports, after warm-up, each ufunc's output address minus its input
address modulo 4096 (an output a few to ~128 bytes *after* its input modulo
4096 makes its loads wait on stores with the same low address bits, "4K
aliasing"; ``bench/aliasing.py`` measures the window on the machine at
hand), each array's address modulo 4096, and which earlier array's memory
it reuses.  Then it times that written-out step and the cyclic benchmark's
own step, medians of interleaved blocks, in the same process.

The step written out keeps the original's allocation order but is not the
benchmark: it is a way to read the placements, and its times say whether
they matter on the machine at hand.

Usage, from the repository root::

    python bench/placement.py [--rows 512 64] [--rounds 15]

Writes ``bench/results/placement.txt``.
"""
import argparse
import json
import os
import subprocess
import sys

CONFIGS = ("numpy", "glibc_tuned", "jemalloc", "mimalloc", "wsmem")
UFUNCS = (("maximum", "A", "B"), ("multiply", "B", "C"), ("negative", "C", "D"),
          ("exp", "D", "E"))


def child(config, rows, rounds):
    import numpy as np
    import wsmem
    from wsmem.benchmarks._env import time_interleaved
    from wsmem.benchmarks.cyclic import _make_train, _train_inputs

    x, w = _train_inputs(rows)
    seen = {}

    def written_out(record=False):
        A = x @ w
        B = np.maximum(A, 0)
        a = A.ctypes.data
        del A
        C = B * 2
        C += 1
        D = -C
        E = np.exp(D)
        d = D.ctypes.data
        del D
        s = float(E.sum())
        if record:
            seen.update(A=a, B=B.ctypes.data, C=C.ctypes.data, D=d, E=E.ctypes.data)
        return s

    step = _make_train(rows, False)
    fns = {"written out": written_out, "benchmark step": lambda record=False: step()}
    if config == "wsmem":
        ws = wsmem.Workspace(f"placement_{rows}")

        def in_cycle(fn):
            def run(record=False):
                with ws:
                    return fn(record)
            return run
        fns = {k: in_cycle(fn) for k, fn in fns.items()}
    for _ in range(4):
        fns["written out"]()
        fns["benchmark step"]()
    fns["written out"](True)
    times = time_interleaved(fns, rounds, max(1, int(0.02 / (rows * 2e-5))))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"addr": seen, "median_s": med}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[512, 64])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        config, rows, rounds = args.child
        print(json.dumps(child(config, int(rows), int(rounds))))
        return 0
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from wsmem.benchmarks import cyclic
    from wsmem.benchmarks._env import machine_info
    out = [f"command: python bench/placement.py --rows {' '.join(map(str, args.rows))} "
           f"--rounds {args.rounds}", f"machine: {machine_info()}", ""]
    for rows in args.rows:
        out.append(f"training step, rows={rows} ({rows * cyclic.TRAIN_OUT * 8 // 1024} KiB "
                   "temporaries)")
        out.append(f"  {'config':12s} " + " ".join(f"{u + ' ' + i + '->' + o:>16s}"
                                                   for u, i, o in UFUNCS)
                   + "   addresses mod 4096 (A B C D E)   reuse     written out  step")
        for config in CONFIGS:
            ok, note = cyclic.config_available(config)
            if not ok:
                out.append(f"  {config:12s} {note}")
                continue
            r = subprocess.run([sys.executable, __file__, "--child", config, str(rows),
                                str(args.rounds)], capture_output=True, text=True,
                               env=cyclic._worker_env(config, 1), check=False)
            if r.returncode:
                out.append(f"  {config:12s} failed: {r.stderr.strip()[-500:]}")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            a = res["addr"]
            dists = " ".join(f"{(a[o] - a[i]) % 4096:16d}" for _, i, o in UFUNCS)
            mods = " ".join(f"{a[k] % 4096:4d}" for k in "ABCDE")
            reuse = ",".join(f"{k}={j}" for k in "BCDE" for j in "ABCD"
                             if j < k and a[k] == a[j]) or "-"
            med = res["median_s"]
            out.append(f"  {config:12s} {dists}   {mods:30s}   {reuse:8s}"
                       f"  {med['written out'] * 1e6:8.1f}us {med['benchmark step'] * 1e6:8.1f}us")
        out.append("")
    text = "\n".join(out)
    print(text)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "placement.txt")
    with open(path, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
