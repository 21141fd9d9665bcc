"""Run the worked-example benchmark (MLP, plain vs workspaces) in full and keep its results.

Usage, from the repository root (wsmem built in place or installed)::

    python bench/example.py

Writes ``bench/results/example.txt`` (command, date, machine, the Markdown
table) and ``bench/results/example.json`` (every number, per round).  The
same suite runs as ``python -m wsmem bench --suite example``; see
wsmem/benchmarks/example.py for the method.  Run it on a quiet machine: the
configs are interleaved and medians taken, but a busy machine still widens
the min..max spread recorded in the table.
"""
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:        # an in-place build is importable without installing
    sys.path.insert(0, ROOT)

from wsmem.benchmarks import example  # noqa: E402


def main():
    command = "python " + " ".join(shlex.quote(a) for a in
                                   [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                                   + sys.argv[1:])
    results = example.run(quick=False,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    results["command"] = command
    m = results["machine"]
    try:
        load = " ".join(open("/proc/loadavg", encoding="ascii").read().split()[:3])
    except OSError:
        load = "unknown"
    results["loadavg_at_end"] = load
    table = example.format_table(results)
    header = [
        f"command: {command}   (run from the repository root)",
        f"date:    {m['date_utc']}",
        f"machine: {m['cpu_model']}, {m['cpu_count']} logical cores, {m['platform']}, "
        f"{m['libc']}, transparent_hugepage={m['transparent_hugepage']}",
        f"versions: wsmem {m['wsmem']}, numpy {m['numpy']}, "
        f"python {m['python']} ({m['python_implementation']})",
        f"elapsed: {results['elapsed_s']} s; load average at end: {load}",
        "",
    ]
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "example.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n" + table + "\n")
    with open(os.path.join(out_dir, "example.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(table)


if __name__ == "__main__":
    main()
