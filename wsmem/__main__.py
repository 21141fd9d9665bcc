"""Command line: ``python -m wsmem bench`` and ``python -m wsmem info``.

>>> from wsmem.__main__ import main
>>> main(["info"])  # doctest: +ELLIPSIS
wsmem ...
0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "build_parser"]

_DEFAULT_OUT = "wsmem-bench"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_info(args) -> int:
    import dataclasses

    import numpy as np

    import wsmem
    from wsmem.benchmarks._env import (cpu_model, cuda_devices, cuda_status, cupy_status,
                                       hugetlb_pages, matplotlib_status, thp_defrag,
                                       transparent_hugepage)

    print(f"wsmem {wsmem.__version__} ({os.path.dirname(wsmem.__file__)})")
    print(f"numpy {np.__version__}")
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)")
    print(f"transparent hugepages: {transparent_hugepage()} (defrag: {thp_defrag()}); "
          f"wsmem asks for them (MADV_HUGEPAGE) on blocks of 2 MiB and more")
    print(f"hugetlb pages: {hugetlb_pages()}")
    print(f"cupy: {cupy_status()}")
    print(f"cuda: {cuda_status()}")
    for line in cuda_devices():
        print(f"  {line}")
    print(f"plots: {matplotlib_status()}")
    from wsmem._config import tracking_forced
    print(f"allocation tracking (WSMEM_TRACK): {'on' if tracking_forced() else 'off'}")
    print("default WorkspaceConfig:")
    for field in dataclasses.fields(wsmem.WorkspaceConfig):
        value = getattr(wsmem.WorkspaceConfig(), field.name)
        print(f"  {field.name} = {value!s}")
    return 0


def _suite_list(value: str) -> list[str]:
    """``--suite`` value: one name or a comma-separated list of names."""
    from wsmem.benchmarks import suite_names

    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty suite list")
    for name in names:
        if name not in suite_names():
            raise argparse.ArgumentTypeError(
                f"invalid choice: {name!r} (choose from {', '.join(suite_names())})")
    return names


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _charts(per_suite: list, out_dir: str) -> list[str]:
    """One ratio bar chart per suite (SUITE.png); [] and a hint without matplotlib."""
    from wsmem._plot import PLOT_HINT, plot_comparison, try_import_pyplot

    if not per_suite:
        return []
    if try_import_pyplot() is None:
        print(f"(no charts: {PLOT_HINT})", flush=True)
        return []
    paths = []
    for name, rows in per_suite:
        if rows:
            path = os.path.join(out_dir, f"{name}.png")
            plot_comparison(rows, path, f"{name}: wsmem speed-up over each peer "
                                        f"(peer time / wsmem time)")
            paths.append(path)
    return paths


def _cmd_bench(args) -> int:
    from wsmem.benchmarks import get_suite, suite_names
    from wsmem.benchmarks._compare import comparison_rows, format_comparison

    names = [n for group in (args.suite or [suite_names()]) for n in group]
    suites = [get_suite(name) for name in dict.fromkeys(names)]   # keep order, drop repeats
    os.makedirs(args.out, exist_ok=True)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    command = " ".join(["python -m wsmem"] + args.argv)
    t_all = time.perf_counter()
    per_suite = []          # (suite name, comparison rows)
    skipped = []
    for i, suite in enumerate(suites, 1):
        tag = f"[{suite.name}]"
        try:
            module = suite.load()
            reason = module.unavailable() if hasattr(module, "unavailable") else None
        except ImportError as exc:
            reason = f"cannot import {suite.module} ({exc})"
        if reason:
            print(f"{tag} skipped: {reason}", flush=True)
            skipped.append({"suite": suite.name, "reason": reason})
            continue
        _progress(f"{tag} suite {i}/{len(suites)}: running ({mode}) ...")
        t0 = time.perf_counter()
        try:
            results = module.run(quick=args.quick, tiny=args.tiny, rounds=args.rounds,
                                 progress=_progress)
        except NotImplementedError as exc:     # a placeholder suite, not written yet
            print(f"{tag} skipped: not implemented ({exc})", flush=True)
            skipped.append({"suite": suite.name, "reason": f"not implemented ({exc})"})
            continue
        results["command"] = command
        table = module.format_table(results)
        path = os.path.join(args.out, f"{suite.name}.json")
        _write(path, json.dumps(results, indent=2) + "\n")
        _write(os.path.join(args.out, f"{suite.name}.txt"), table + "\n")
        print(f"## {suite.name}\n\n{table}\n", flush=True)
        per_suite.append((suite.name, comparison_rows(results, module)))
        _progress(f"{tag} done in {time.perf_counter() - t0:.1f} s; results in {path}")

    rows = [r for _, suite_rows in per_suite for r in suite_rows]
    if rows:
        table = format_comparison(rows)
        print(f"## wsmem against each peer (all suites)\n\n{table}\n", flush=True)
        _write(os.path.join(args.out, "comparison.txt"), table + "\n")
        _write(os.path.join(args.out, "comparison.json"),
               json.dumps({"command": command, "mode": mode, "rows": rows,
                           "skipped": skipped}, indent=2) + "\n")
    charts = _charts(per_suite, args.out)
    if charts:
        print("charts: " + ", ".join(charts), flush=True)
    _progress(f"bench: {len(per_suite)} suite(s) run, {len(skipped)} skipped, in "
              f"{time.perf_counter() - t_all:.1f} s; results in {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``wsmem`` argument parser (subcommands ``bench`` and ``info``)."""
    from wsmem.benchmarks import get_suite, suite_names

    parser = argparse.ArgumentParser(
        prog="python -m wsmem",
        description="wsmem: workspace (cyclic arena) memory for NumPy. "
                    "Run benchmarks or show the environment.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info", help="print versions, CPU, huge-page settings, CuPy/CUDA, default config",
        description="Print wsmem/numpy/python versions, the CPU model, the transparent "
                    "and hugetlb huge-page settings, whether CuPy imports and which CUDA "
                    "devices it sees, whether matplotlib (charts) is installed, and the "
                    "default WorkspaceConfig.")
    info.set_defaults(func=_cmd_info)

    suites_help = "; ".join(f"{n}: {get_suite(n).summary}" for n in suite_names())
    bench = sub.add_parser(
        "bench", help="run benchmark suites, print tables, save JSON and charts",
        description="Run benchmark suites. Progress goes to stderr; a Markdown table "
                    "per suite and one comparison table (wsmem against each peer, all "
                    "suites) to stdout. Into --out: SUITE.json (all numbers, machine "
                    "info, method), SUITE.txt (the table), comparison.txt/.json, and "
                    "SUITE.png ratio charts when matplotlib is installed. "
                    f"Suites: {suites_help}.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--suite", action="append", type=_suite_list, metavar="NAME[,NAME]",
                       help="suites to run, comma-separated or repeated (default: all; "
                            "suites that cannot run here, such as gpu without CUDA, are "
                            "skipped with a note). Choices: " + ", ".join(suite_names()))
    bench.add_argument("--quick", action="store_true",
                       help="fewer, shorter rounds (a few seconds per suite); "
                            "numbers are noisier")
    bench.add_argument("--out", metavar="DIR", default=_DEFAULT_OUT,
                       help=f"directory for results and charts (default: ./{_DEFAULT_OUT}/)")
    # Hidden knobs for the test suite: plumbing checks, not measurements.
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m wsmem`` and the ``wsmem`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "rounds", None) is not None and args.rounds < 1:
        print(f"wsmem bench: --rounds={args.rounds} must be >= 1", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
