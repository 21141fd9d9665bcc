"""The pytest plugin: --wsmem-leaks, --wsmem-capture and the wsmem_workspace fixture.

Each inner session runs in a subprocess: an inner test that leaks on purpose
must not leave pinned memory in this process (conftest checks that).
"""
import os
import re

import pytest

import wsmem
from run_numpy_suite import plugin_args

pytest_plugins = ["pytester"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(wsmem.__file__)))


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("WSMEM_TRACK", raising=False)

    def run(*args):
        return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider",
                                             *args)
    return run


LEAKY = '''
import numpy as np
import wsmem

kept = []

def test_clean(wsmem_workspace):
    with wsmem_workspace:
        total = float(np.exp(-np.ones(1000)).sum())
    assert total > 0

def test_escaped_view(wsmem_workspace):
    for _ in range(2):
        with wsmem_workspace:
            a = wsmem_workspace.zeros(1000)
            kept.append(np.asarray(a))        # escapes its cycle: pins its memory

def test_captured_numpy_array(wsmem_workspace):
    with wsmem_workspace:
        kept.append(np.ones(5000))            # NumPy's own allocation, captured
'''


def test_leaks_option_fails_leaking_tests_with_tracebacks(run, pytester):
    pytester.makepyfile(test_leaky=LEAKY)
    result = run("--wsmem-leaks", "-v")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*test_clean PASSED*", "*test_escaped_view FAILED*",
                                 "*test_captured_numpy_array FAILED*"])
    # The failure sections only: the short summary repeats each message (in
    # full when CI is set: pytest then does not truncate it).
    sections = "\n".join(line for line in out.splitlines() if not line.startswith("FAILED "))
    held = [int(m) for m in re.findall(r"left (\d+) bytes of workspace memory pinned",
                                       sections)]
    assert len(held) == 2 and 2 * 8000 <= held[0] <= 2 * 8000 + 4 * 128, out  # line-rounded
    assert "(2 allocation(s))" in out
    assert "a view of a (1000,) float64 array" in out
    assert "a NumPy array allocated in the workspace" in out
    # allocation sites of both kinds of leak, from the test file itself
    assert "a = wsmem_workspace.zeros(1000)" in out and "kept.append(np.ones(5000))" in out
    assert "_pytest" not in out.split("short test summary")[0]     # pytest frames trimmed
    assert out.count("allocated at:") >= 2, out
    assert "in test_escaped_view" in out and "in test_captured_numpy_array" in out
    assert "allocation site unknown" not in out


def test_without_the_option_leaks_pass(run, pytester):
    pytester.makepyfile(test_leaky=LEAKY)
    run().assert_outcomes(passed=3)


def test_leaks_before_the_test_are_not_blamed_on_it(run, pytester):
    pytester.makepyfile(test_order='''
import numpy as np
import wsmem

ws = wsmem.Workspace("module_ws")
with ws:
    early = np.asarray(ws.zeros(100))       # pinned at import, before any test

def test_later_and_clean():
    with ws:
        float(np.ones(10).sum())
''')
    run("--wsmem-leaks").assert_outcomes(passed=1)


def test_failing_test_is_reported_as_its_own_failure(run, pytester):
    pytester.makepyfile(test_fail='''
import numpy as np

def test_fails(wsmem_workspace):
    with wsmem_workspace:
        v = np.asarray(wsmem_workspace.zeros(10))
    assert v.size == 0
''')
    result = run("--wsmem-leaks")
    result.assert_outcomes(failed=1)
    assert "assert 10 == 0" in result.stdout.str()
    assert "pinned by escaped views" not in result.stdout.str()


def test_fixture_gives_each_test_a_fresh_destroyed_workspace(run, pytester):
    pytester.makepyfile(test_fixture='''
import wsmem
seen = []

def test_one(wsmem_workspace):
    assert isinstance(wsmem_workspace, wsmem.Workspace)
    assert wsmem_workspace.name == "test_one" and wsmem_workspace.stats().cycles == 0
    with wsmem_workspace:
        wsmem.empty(10)
    seen.append(wsmem_workspace)

def test_two(wsmem_workspace):
    assert wsmem_workspace is not seen[0] and seen[0].is_destroyed
    assert wsmem_workspace.stats().cycles == 0
''')
    run("-p", "no:randomly").assert_outcomes(passed=2)


def test_help_lists_the_option(run):
    result = run("--help")
    result.stdout.fnmatch_lines(["*--wsmem-leaks*", "*--wsmem-capture*",
                                 "*--wsmem-spill-everything*"])


CAPTURED = '''
import numpy as np
import pytest
import wsmem

seen = {}

@pytest.fixture
def made_in_fixture():
    assert wsmem.current_workspace() is None       # fixtures run outside the cycle
    return np.arange(100.0)

def test_body_runs_in_a_cycle(made_in_fixture):
    ws = wsmem.current_workspace()
    assert ws is not None and ws.name == "pytest-wsmem-capture" and ws.is_open
    a = np.exp(-made_in_fixture)                    # NumPy's own allocation
    assert ws.stats().cycle_bytes >= a.nbytes
    seen["ws"], seen["debug"] = ws, wsmem.get_debug_mode_name().value
    seen["fixture_bytes"] = made_in_fixture.copy()

def test_same_workspace_next_cycle():
    ws = wsmem.current_workspace()
    assert ws is seen["ws"] and ws.stats().cycles >= 1
    assert wsmem.get_debug_mode_name().value == seen["debug"]

@pytest.fixture
def destroyer():
    yield
    seen["ws"].destroy()                            # in teardown: the cycle has ended

def test_workspace_destroyed_after_this_body(destroyer):
    seen["kept"] = np.ones(1000) * 3                # captured, outlives the workspace

def test_a_destroyed_workspace_is_replaced():
    ws = wsmem.current_workspace()
    assert ws is not seen["ws"] and ws.is_open and not ws.is_destroyed
    assert seen["ws"].is_destroyed and float(seen["kept"].sum()) == 3000.0
    assert float((np.ones(10) + 1).sum()) == 20.0

def test_other_thread_is_not_captured():
    import threading
    out = {}
    def work():
        out["ws"] = wsmem.current_workspace()
        out["sum"] = float((np.ones(100) * 2).sum())
    t = threading.Thread(target=work)
    t.start(); t.join()
    assert out == {"ws": None, "sum": 200.0}

def test_fails_inside_the_cycle():
    assert float(np.ones(4).sum()) == 5.0
'''


@pytest.mark.parametrize("option, debug", [("--wsmem-capture", "disabled"),
                                           ("--wsmem-spill-everything", "spill_everything")])
def test_capture_option_runs_each_test_body_in_a_cycle(run, pytester, option, debug):
    pytester.makepyfile(test_captured=CAPTURED)
    result = run(option, "-p", "no:randomly")
    result.assert_outcomes(passed=5, failed=1)
    out = result.stdout.str()
    assert "assert 4.0 == 5.0" in out
    mode = " in debug mode 'spill_everything'" if debug != "disabled" else ""
    m = re.search(r"wsmem --wsmem-capture: (\d+) test bodies ran inside a cycle" + re.escape(mode)
                  + r" \((\d+) of them allocated there\); the workspace served (\d+) bytes, "
                  r"(\d+) allocations spilled", out)
    assert m, out
    cycles, active, served, spilled = map(int, m.groups())
    # six bodies; two of them allocate nothing in the main thread
    assert cycles == 6 and active == 4 and served >= 800 + 8000 + 80, out
    if debug == "spill_everything":      # every allocation of every body spilled
        assert spilled >= 7, out


@pytest.mark.parametrize("env", [None, "0"])
def test_capture_summary_says_whether_ufunc_buffers_were_aligned(run, pytester, monkeypatch,
                                                                 env):
    # NumPy's suite under --wsmem-capture is the widest check of the raw
    # allocator hook, so its summary must say whether the hook was live.
    import subprocess
    import sys
    if env is None:
        monkeypatch.delenv("WSMEM_ALIGN_BUFFERS", raising=False)
    else:
        monkeypatch.setenv("WSMEM_ALIGN_BUFFERS", env)
    probe = subprocess.run(
        [sys.executable, "-c", "import wsmem; wsmem.Workspace('probe'); "
         "print(wsmem.ufunc_buffers_aligned())"],
        capture_output=True, text=True, check=True, env=os.environ.copy())
    want = {"True": "yes", "False": "no"}[probe.stdout.strip()]
    if env == "0":
        assert want == "no"
    pytester.makepyfile(test_captured=CAPTURED)
    out = run("--wsmem-capture", "-p", "no:randomly").stdout.str()
    m = re.search(r"NumPy's ufunc buffers page-aligned \(wsmem.align_ufunc_buffers\): "
                  r"(yes|no)", out)
    assert m, out
    assert m.group(1) == want, out


def test_capture_replaces_a_workspace_a_huge_test_grew(run, pytester):
    pytester.makepyfile(test_huge='''
import numpy as np
import wsmem

seen = []

def test_huge():
    seen.append(wsmem.current_workspace())
    big = np.empty(300 << 17)                 # 300 MiB, never touched: no RSS
    seen.append(big)

def test_next():
    ws = wsmem.current_workspace()
    assert seen[0].is_destroyed and ws is not seen[0]
    assert ws.stats().capacity == 0           # a fresh workspace, learning again
    seen[1][:4] = 1.0                         # the kept array outlives its workspace
    assert float(seen[1][:4].sum()) == 4.0
''')
    result = run("--wsmem-capture", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert "the workspace was replaced 1 time(s) after a test grew its block past 256 MiB" \
        in result.stdout.str()


def test_capture_without_the_option_leaves_tests_alone(run, pytester):
    pytester.makepyfile(test_plain='''
import numpy as np
import wsmem

def test_plain():
    assert wsmem.current_workspace() is None
    assert float(np.ones(3).sum()) == 3.0
''')
    result = run()
    result.assert_outcomes(passed=1)
    assert "--wsmem-capture:" not in result.stdout.str()


def test_capture_with_leaks_flags_arrays_kept_past_the_test(run, pytester):
    pytester.makepyfile(test_kept='''
import numpy as np

kept = []

def test_keeps_a_result():
    kept.append(np.ones(3000) + 1)          # captured, outlives the test's cycle

def test_clean():
    assert float((np.ones(3000) + 1).sum()) == 6000.0
''')
    result = run("--wsmem-capture", "--wsmem-leaks", "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_keeps_a_result FAILED*", "*test_clean PASSED*"])
    out = result.stdout.str()
    assert "workspace 'pytest-wsmem-capture'" in out and "kept.append(np.ones(3000) + 1)" in out
