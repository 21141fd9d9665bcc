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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wsmem.benchmarks import save_full_run  # noqa: E402  (an in-place build works too)

if __name__ == "__main__":
    print(save_full_run("example", __file__))
