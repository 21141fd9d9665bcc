"""Run the allocation microbenchmark (full, not quick) and keep its results.

Usage, from the repository root (wsmem built in place or installed)::

    python bench/alloc.py

Writes ``bench/results/alloc.txt`` (command, date, machine, Markdown table)
and ``bench/results/alloc.json`` (every number, per round).  The same suite
runs as ``python -m wsmem bench --suite alloc``; see wsmem/benchmarks/alloc.py
for the method.
"""

import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:        # an in-place build is importable without installing
    sys.path.insert(0, ROOT)

from wsmem.benchmarks import save_full_run  # noqa: E402


def main():
    command = "python " + " ".join(shlex.quote(a) for a in
                                   [os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                                   + sys.argv[1:])
    print(save_full_run("alloc", os.path.join(HERE, "results"), command))


if __name__ == "__main__":
    main()
