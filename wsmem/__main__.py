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
    from wsmem.benchmarks._env import cpu_model, cupy_status, transparent_hugepage

    print(f"wsmem {wsmem.__version__} ({os.path.dirname(wsmem.__file__)})")
    print(f"numpy {np.__version__}")
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)")
    print(f"transparent hugepages: {transparent_hugepage()}")
    print(f"cupy: {cupy_status()}")
    print("default WorkspaceConfig:")
    for field in dataclasses.fields(wsmem.WorkspaceConfig):
        value = getattr(wsmem.WorkspaceConfig(), field.name)
        print(f"  {field.name} = {value!s}")
    return 0


def _cmd_bench(args) -> int:
    from wsmem.benchmarks import get_suite, suite_names

    names = args.suite or suite_names()
    suites = []
    for name in dict.fromkeys(names):          # keep order, drop repeats
        try:
            suites.append(get_suite(name))
        except KeyError as exc:
            print(f"wsmem bench: {exc.args[0]}", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    for suite in suites:
        module = suite.load()
        _progress(f"[{suite.name}] running ({mode}) ...")
        t0 = time.perf_counter()
        results = module.run(quick=args.quick, tiny=args.tiny, rounds=args.rounds,
                             progress=_progress)
        results["command"] = " ".join(["python -m wsmem"] + args.argv)
        table = module.format_table(results)
        path = os.path.join(args.out, f"{suite.name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, f"{suite.name}.txt"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
        print(f"## {suite.name}\n\n{table}\n", flush=True)
        _progress(f"[{suite.name}] done in {time.perf_counter() - t0:.1f} s; "
                  f"results in {path}")
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
        "info", help="print versions, CPU, transparent hugepage mode, CuPy, default config",
        description="Print wsmem/numpy/python versions, the CPU model, the transparent "
                    "hugepage setting, whether CuPy imports, and the default "
                    "WorkspaceConfig.")
    info.set_defaults(func=_cmd_info)

    suites_help = "; ".join(f"{n}: {get_suite(n).summary}" for n in suite_names())
    bench = sub.add_parser(
        "bench", help="run benchmark suites, print tables, save JSON",
        description="Run benchmark suites. Progress goes to stderr, a Markdown table "
                    "per suite to stdout, and SUITE.json (all numbers, machine info, "
                    "method) plus SUITE.txt (the table) into --out. "
                    f"Suites: {suites_help}.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--suite", action="append", choices=suite_names(), metavar="NAME",
                       help="suite to run (repeatable; default: all). Choices: "
                            + ", ".join(suite_names()))
    bench.add_argument("--quick", action="store_true",
                       help="fewer, shorter rounds (a few seconds per suite); "
                            "numbers are noisier")
    bench.add_argument("--out", metavar="DIR", default=_DEFAULT_OUT,
                       help=f"directory for the JSON results (default: ./{_DEFAULT_OUT}/)")
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
