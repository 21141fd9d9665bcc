"""Run the cyclic-step benchmark (full, not quick) and keep its results.

Usage, from the repository root (wsmem built in place or installed; the peer
allocators from ``apt-get install libjemalloc2 libmimalloc2.0``)::

    python bench/cyclic.py

Writes ``bench/results/cyclic.txt`` (command, date, machine, Markdown tables,
targets) and ``bench/results/cyclic.json`` (every number, per round).  The
same suite runs as ``python -m wsmem bench --suite cyclic``; see
wsmem/benchmarks/cyclic.py for the method.  Run it on a quiet machine: the
configs are interleaved and medians taken, but a busy machine still widens
the min..max spread recorded in the table.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wsmem.benchmarks import save_full_run  # noqa: E402  (an in-place build works too)

if __name__ == "__main__":
    print(save_full_run("cyclic", __file__))
