"""Run the allocation microbenchmark (full, not quick) and keep its results.

Usage, from the repository root (wsmem built in place or installed)::

    python bench/alloc.py

Writes ``bench/results/alloc.txt`` (command, date, machine, Markdown table)
and ``bench/results/alloc.json`` (every number, per round).  The same suite
runs as ``python -m wsmem bench --suite alloc``; see wsmem/benchmarks/alloc.py
for the method.
"""
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:        # an in-place build is importable without installing
    sys.path.insert(0, ROOT)

from wsmem.benchmarks import alloc  # noqa: E402


def main():
    command = "python " + " ".join(shlex.quote(a) for a in
                                   [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                                   + sys.argv[1:])
    results = alloc.run(quick=False, progress=lambda m: print(m, file=sys.stderr, flush=True))
    results["command"] = command
    m = results["machine"]
    table = alloc.format_table(results)
    header = [
        f"command: {command}   (run from the repository root)",
        f"date:    {m['date_utc']}",
        f"machine: {m['cpu_model']}, {m['cpu_count']} logical cores, {m['platform']}, "
        f"{m['libc']}, transparent_hugepage={m['transparent_hugepage']}",
        f"versions: wsmem {m['wsmem']}, numpy {m['numpy']}, "
        f"python {m['python']} ({m['python_implementation']})",
        f"elapsed: {results['elapsed_s']} s",
        "",
    ]
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "alloc.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n" + table + "\n")
    with open(os.path.join(out_dir, "alloc.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(table)


if __name__ == "__main__":
    main()
