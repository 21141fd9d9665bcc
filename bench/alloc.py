"""Run the allocation microbenchmark (full, not quick) and keep its results.

Usage, from the repository root (wsmem built in place or installed)::

    python bench/alloc.py

Writes ``bench/results/alloc.txt`` (command, date, machine, Markdown table)
and ``bench/results/alloc.json`` (every number, per round).  The same suite
runs as ``python -m wsmem bench --suite alloc``; see wsmem/benchmarks/alloc.py
for the method.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wsmem.benchmarks import save_full_run  # noqa: E402  (an in-place build works too)

if __name__ == "__main__":
    print(save_full_run("alloc", __file__))
