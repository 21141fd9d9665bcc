"""wsmem against tuned glibc and the zero-allocation limit, in one process.

``bench/cyclic.py`` gives every config its own processes, which is the only
way to compare allocators chosen by ``LD_PRELOAD``; but per-process luck
(memory layout, what else ran) moves a step by several percent, so small
differences hide in it.  Here the set-ups that can share a process run
in one: plain NumPy on glibc with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` raised (the script re-executes itself with them
set: glibc reads them at start), the ``out=`` limit, and the same step inside
``with ws:``; and, to tell the cost of the ``with ws:`` frame from that of
the captured allocations, the step inside ``with ws:`` of a ``capture=False``
workspace (frames pushed and popped, NumPy's handler switched, NumPy
allocating as it does outside), the plain step after an empty ``with ws:``
block (the frame's cost, paid once per step with the caches as the step
left them), and the plain step between one context-variable set and its
reset (the floor under any frame: NumPy keeps its handler in a context
variable).  The inputs of all of them are made under
:func:`wsmem.aligned_heap`, as in the cyclic benchmark's wsmem and limit
workers.  Interleaved blocks of ~0.03 s (``--rounds`` of each; each block
after untimed warm-in calls, a fresh random order each round:
``time_interleaved``, ``bench/harness_ab.py``); reported: the
minimum, quartile and median time per step, the median relative to plain,
and the median of the per-round ratios to plain with its confidence interval
(as ``bench/cyclic.py``; rounds are measured back to back, so this is the
sharper comparison), and how much of wsmem's block the kernel backed with
huge pages.

``--under mimalloc`` (or ``jemalloc``) runs the same measurement in
processes with that allocator preloaded (``LD_PRELOAD``, the Debian
library ``bench/cyclic.py`` uses) instead of tuned glibc: then "plain" is
the step with NumPy's temporaries served by that allocator, in the same
process as wsmem's step, so the comparison with each peer is free of the
per-process luck described below (results in
``bench/results/inprocess_<allocator>.txt``).

One process is not enough from rows=64 up: a process's memory layout
(which physical pages it gets) moves a step by several percent there (the
training step at rows=64 measured wsmem at 1.015x to 1.115x of plain's time
in the three processes of one run, ``bench/results/inprocess.txt``), and
within one process that luck is the same in every round, so the confidence
interval does not show it.  Each case therefore runs in
``--processes`` fresh processes (3 by default); the summary gives each
process's paired ratio and their median, and the full tables follow.

Usage, from the repository root::

    python bench/inprocess.py [--cases train:64 cg:90] [--rounds 41] [--processes 3]
                              [--under glibc_tuned|mimalloc|jemalloc]

Writes ``bench/results/inprocess.txt`` (``inprocess_mimalloc.txt``,
``inprocess_jemalloc.txt`` with ``--under``).
"""
import argparse
import contextvars
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLAS1 = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296", **_BLAS1}
# The process's allocator for NumPy's own (uncaptured) allocations: tuned
# glibc, or a Debian library preloaded as bench/cyclic.py's peers are.
UNDER = ("glibc_tuned", "mimalloc", "jemalloc")


def _under_env(under):
    if under == "glibc_tuned":
        return dict(_ENV)
    from wsmem.benchmarks.cyclic import JEMALLOC, MIMALLOC
    lib = MIMALLOC if under == "mimalloc" else JEMALLOC
    if not os.path.exists(lib):
        sys.exit(f"--under {under}: {lib} is not installed (apt-get install "
                 f"{'libmimalloc2.0' if under == 'mimalloc' else 'libjemalloc2'})")
    return dict(_BLAS1, LD_PRELOAD=lib)


def under_label(under):
    return "tuned glibc" if under == "glibc_tuned" else under


def tuned_process(script, under="glibc_tuned"):
    """Re-execute `script` (with this process's arguments) under `_ENV` (or,
    for `under` "mimalloc"/"jemalloc", with that library preloaded) unless
    it is in force already (glibc reads its thresholds at start, a preload
    acts only at start), then make the checkout importable.  Returns the
    results header line for the environment."""
    sys.path.insert(0, ROOT)
    env = _under_env(under)
    if any(os.environ.get(k) != v for k, v in env.items()) or \
            ("LD_PRELOAD" in os.environ and "LD_PRELOAD" not in env):
        base = {k: v for k, v in os.environ.items() if k not in _ENV and k != "LD_PRELOAD"}
        os.execve(sys.executable, [sys.executable, os.path.abspath(script)] + sys.argv[1:],
                  dict(base, **env))
    return "environment: " + " ".join(f"{k}={v}" for k, v in env.items())


def time_blocks(fns, plain, rounds):
    """``time_interleaved(fns, rounds, n)`` with n steps per block, n sized
    so that a block of the plain step takes about 30 ms.  Returns
    ``(times, n)``."""
    from wsmem.benchmarks._env import time_interleaved
    t0 = time.perf_counter()
    plain()
    n = max(1, int(0.03 / max(time.perf_counter() - t0, 1e-6)))
    return time_interleaved(fns, rounds, n), n


def paired_cell(times, ref):
    """``"ratio [lo..hi]"``: the median of the per-round ratios of `times` to
    `ref` (paired by round) and its confidence interval, as every in-process
    script prints it."""
    from wsmem.benchmarks._compare import _paired_ratio, _paired_ratio_ci
    lo, hi, _ = _paired_ratio_ci(times, ref)
    return f"{_paired_ratio(times, ref):.4f} [{lo:.4f}..{hi:.4f}]"


def paired_rows(times, ref_key, width, indent="  "):
    """One line per set-up of `times`: its name, median time and
    `paired_cell` against ``times[ref_key]`` (bench/harness_ab.py,
    bench/placement_ab.py)."""
    return [f"{indent}{k:{width}s} {statistics.median(t) * 1e6:8.1f}us  "
            f"{paired_cell(t, times[ref_key])}" for k, t in times.items()]


def paired_table(workload, size, n, rounds, times, ref_key, column, ref_label, width,
                 extra="", more=""):
    """A case's lines as the A/B scripts print them (bench/limit_gap.py,
    bench/placement_ab.py, bench/raw_cache.py): the block line (`extra`
    appended), a header (`column`, the median, ``time/<ref_label> [CI]``,
    then `more`) and `paired_rows` against ``times[ref_key]``."""
    return [f"{case_name(workload, size)}: {n} steps per block, {rounds} blocks each{extra}",
            f"  {column:{width}s} {'median':>10s}  {f'time/{ref_label} [CI]':>26s}{more}",
            *paired_rows(times, ref_key, width)]


def ratio_note(this, ref, reading):
    """The results header's line on what the ratios are: `this` set-up's
    time over `ref`'s, `reading` saying which way is faster."""
    return (f"ratios: median over rounds of {this}'s time / {ref}'s, paired by round "
            f"({reading}), with the confidence interval of that median")


def cases_main(script, name, doc, measure, cases, rounds, notes=lambda: []):
    """main() of a script that times `measure(workload, size, rounds)` per
    case in one tuned-glibc process (bench/hugepages.py,
    bench/placement_ab.py): parses ``--cases`` and ``--rounds``, re-executes
    under tuned glibc, and writes ``bench/results/<name>.txt`` with
    ``notes()`` (called once the checkout is importable) under the header."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=cases, metavar="WORKLOAD:SIZE")
    p.add_argument("--rounds", type=int, default=rounds)
    args = p.parse_args()
    env_line = tuned_process(script)
    from wsmem.benchmarks._env import parse_cases, write_script_results
    parsed = parse_cases(p, args.cases)
    write_script_results(script, name, [env_line, *notes()],
                         (measure(workload, size, args.rounds) for workload, size in parsed))
    return 0


def measure(workload, size, rounds, under="glibc_tuned"):
    import numpy as np  # noqa: F401  (imported before wsmem, as a user would)
    import wsmem
    from wsmem.benchmarks._compare import _paired_ratio, _paired_ratio_ci
    from wsmem.benchmarks.cyclic import _MAKERS, _block_huge_kib

    with wsmem.aligned_heap():
        plain = _MAKERS[workload](size, False)
        limit = _MAKERS[workload](size, True)
    ws = wsmem.Workspace(f"inprocess_{workload}_{size}")
    frame_only = wsmem.Workspace(f"inprocess_nocap_{workload}_{size}", capture=False)
    empty = wsmem.Workspace(f"inprocess_empty_{workload}_{size}")
    var = contextvars.ContextVar(f"inprocess_{workload}_{size}")

    def in_ws():
        with ws:
            return plain()

    def in_frame_only():
        with frame_only:
            return plain()

    def after_empty_frame():
        with empty:
            pass
        return plain()

    def in_scope_out():
        # wsmem's frame with no workspace: NumPy's handler variable set to
        # NumPy's default and put back, what any frame must do at the least.
        with wsmem.scope_out():
            return plain()

    def in_var_set():
        token = var.set(size)
        try:
            return plain()
        finally:
            var.reset(token)

    plain_key = f"plain ({under_label(under)})"
    configs = {plain_key: plain, "limit (out=)": limit,
               "one contextvar set": in_var_set, "scope_out() frame": in_scope_out,
               "empty with ws: first": after_empty_frame,
               "ws, capture=False": in_frame_only, "wsmem": in_ws}
    values = set()
    for f in configs.values():
        for _ in range(3):
            values.add(round(f(), 6))
    times, n = time_blocks(configs, plain, rounds)
    spilled = ws.stats().spilled_count
    huge = _block_huge_kib(ws)
    for w in (ws, frame_only, empty):
        w.destroy()
    plain_times = times[plain_key]
    base = sorted(plain_times)[rounds // 2]
    lines = [f"{case_name(workload, size)}: {n} steps per block, "
             f"{rounds} blocks each; wsmem spilled_count after the last cycle: {spilled}; "
             f"wsmem's block on huge pages: "
             f"{'unknown' if huge is None else f'{huge[1] / 1024:.0f} of {huge[0] / 1024:.1f} MiB'}; "
             f"results {'agree' if len(values) == 1 else 'DIFFER: ' + repr(values)}",
             f"  {'config':21s} {'min':>10s} {'q25':>10s} {'median':>10s} {'median/plain':>13s}"
             f"  paired /plain [CI]"]
    paired = {}
    for k, t in times.items():
        paired[k] = _paired_ratio(t, plain_times)
        lo, hi, _ = _paired_ratio_ci(t, plain_times)
        t = sorted(t)
        lines.append(f"  {k:21s} {t[0] * 1e6:8.1f}us {t[rounds // 4] * 1e6:8.1f}us "
                     f"{t[rounds // 2] * 1e6:8.1f}us {t[rounds // 2] / base:12.3f}x  "
                     f"{paired[k]:.4f} [{lo:.4f}..{hi:.4f}]")
    return {"text": "\n".join(lines), "paired": paired, "huge": huge}


def case_name(workload, size):
    return f"{workload} {'rows' if workload == 'train' else 'n'}={size}"


def run_case(workload, size, rounds, processes, under="glibc_tuned"):
    """Measure one case in `processes` fresh processes (this script with
    ``--child``, under the same allocator); returns the section text: a
    summary of the paired ratios to plain per process and their median,
    then each process's table."""
    runs = []
    for _ in range(processes):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                              "--cases", f"{workload}:{size}", "--rounds", str(rounds),
                              "--under", under],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    heads = " ".join(f"{f'process {i + 1}':>10s}" for i in range(processes))
    lines = [f"{case_name(workload, size)}: paired time ratio to plain (> 1: slower), "
             f"per process, and their median",
             f"  {'config':21s} {heads} {'median':>8s}"]
    for k in runs[0]["paired"]:
        values = [r["paired"][k] for r in runs]
        lines.append(f"  {k:21s} " + " ".join(f"{v:10.4f}" for v in values)
                     + f" {statistics.median(values):8.4f}")
    lines.append("")
    for i, r in enumerate(runs):
        lines += [f"process {i + 1}: {r['text']}", ""]
    return "\n".join(lines).rstrip()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["train:64", "cg:90"],
                   help="WORKLOAD:SIZE, e.g. train:8 cg:1024")
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--processes", type=int, default=3,
                   help="fresh processes per case (default 3)")
    p.add_argument("--under", choices=UNDER, default="glibc_tuned",
                   help="the allocator NumPy's own allocations come from (preloaded for "
                        "mimalloc and jemalloc; default: glibc with raised thresholds)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds < 3 or args.processes < 1:
        p.error(f"--rounds must be at least 3 and --processes at least 1, got "
                f"{args.rounds} and {args.processes}")
    env_line = tuned_process(__file__, args.under)
    from wsmem.benchmarks._env import parse_cases, write_script_results
    cases = parse_cases(p, args.cases)
    if args.child:                  # one case, one JSON line for run_case
        result = measure(*cases[0], args.rounds, args.under)
        print(json.dumps(result))
        return 0
    name = "inprocess" if args.under == "glibc_tuned" else f"inprocess_{args.under}"
    write_script_results(__file__, name, [
        env_line, f"each case in {args.processes} fresh process(es)"],
        (run_case(workload, size, args.rounds, args.processes, args.under)
         for workload, size in cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
