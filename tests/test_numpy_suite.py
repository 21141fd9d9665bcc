"""NumPy's own tests, run with every test body inside a wsmem cycle.

A part of NumPy's installed suite (ufuncs, their math, array functions,
``numpy.lib``'s function base, ``numpy.linalg``) runs three times through
``tests/run_numpy_suite.py``: plain, under ``--wsmem-capture`` and under
``--wsmem-spill-everything``.  Every test that passes plain must pass in both
wsmem modes: existing NumPy code runs unchanged inside ``with ws:``.  The whole
suite is run the same way by hand (``python tests/run_numpy_suite.py``;
docs/reliability.md).  About 1 min per mode on 2 cores.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PART = ["numpy._core.tests.test_ufunc", "numpy._core.tests.test_umath",
        "numpy._core.tests.test_numeric", "numpy.lib.tests.test_function_base",
        "numpy.linalg"]


@pytest.mark.skipif(importlib.util.find_spec("numpy._core.tests") is None,
                    reason="NumPy was installed without its tests")
def test_numpy_tests_pass_with_every_body_in_a_cycle():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "run_numpy_suite.py"),
                           *PART], capture_output=True, text=True, env=env, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "REGRESSION" not in out and "CRASHED" not in out, out
    passed = {m: int(n) for m, n in re.findall(r"^(\w+): exit status \d+, \d+ s, (\d+) passed",
                                               out, re.M)}
    # the same tests ran in every mode, thousands of them
    assert set(passed) == {"plain", "capture", "spill_everything"}, out
    assert passed["plain"] > 5000 and len(set(passed.values())) == 1, out
    # and the wsmem modes really served them from the workspace
    served = [int(b) for b in re.findall(r"the workspace served (\d+) bytes", out)]
    cycles = [int(c) for c in re.findall(r"(\d+) test bodies ran inside a cycle", out)]
    assert len(served) == 2 and min(served) > 10 << 20, out
    assert len(cycles) == 2 and min(cycles) >= passed["plain"], out
