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
    print(save_full_run("cyclic", os.path.join(HERE, "results"), command))


if __name__ == "__main__":
    main()
