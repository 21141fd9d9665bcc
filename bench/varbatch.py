"""Run the cyclic benchmark's variable-length batch workload and keep its results.

Usage, from the repository root (wsmem built in place or installed; the peer
allocators from ``apt-get install libjemalloc2 libmimalloc2.0``)::

    python bench/varbatch.py

A step is 8 batches of an MLP's forward and backward pass, 1/8 to all of
the size's rows, the smallest first (wsmem/benchmarks/cyclic.py,
``_make_batch``); wsmem makes each batch its own cycle.  Runs the default configs
of ``bench/cyclic.py`` plus ``wsmem_grow``: the same workspace with
``spill="reallocate"``, the setting the PerformanceWarning and
docs/recipes.md ("Variable-length batches") point to.  Writes
``bench/results/varbatch.txt`` and ``bench/results/varbatch.json``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wsmem.benchmarks import save_full_run  # noqa: E402  (an in-place build works too)
from wsmem.benchmarks.cyclic import DEFAULT_CONFIGS  # noqa: E402

if __name__ == "__main__":
    print(save_full_run("cyclic", __file__, out_name="varbatch",
                        sizes={"batch": (256, 1024)},
                        configs=DEFAULT_CONFIGS + ("wsmem_grow",)))
