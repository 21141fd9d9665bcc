"""Teardown: thread exit, interpreter exit and reference cycles release
everything exactly once, with no crash and no error output."""
import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np

import wsmem
from wsmem._workspace import live_workspaces


def _run(code):
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120,
                          env={"MALLOC_CHECK_": "3", "PYTHONMALLOC": "debug",
                               "PATH": "/usr/bin:/bin"})
    return proc


def test_interpreter_exit_with_live_workspaces_views_and_leaks():
    proc = _run("""
        import numpy as np, wsmem
        ws = wsmem.get_workspace("EXIT", track=True)
        other = wsmem.Workspace("OPEN")
        keep = []
        for i in range(5):
            with ws:
                a = wsmem.full(100, float(i))
                keep.append(np.asarray(a))          # escaped export (pinned)
                keep.append(np.ones(3) * i)         # escaped captured array
                keep.append(a[::2].__dlpack__(max_version=(1, 0)))   # unconsumed capsule
                cap = wsmem.asarray(np.arange(4.0))
        assert ws.leaks(), "expected tracked leaks"
        other.__enter__()                           # still open at exit
        stale = wsmem.empty(10)
        print("done", float(keep[0][0]), float(keep[-2][1]))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done 0.0 4.0"
    assert proc.stderr == "", proc.stderr


def test_thread_exit_releases_its_workspaces():
    before = {id(w) for w in live_workspaces()}
    views = []

    def worker():
        ws = wsmem.get_workspace("THREAD_EXIT")
        for i in range(3):
            with ws:
                a = wsmem.full(64, float(i))
                if i == 2:
                    views.append(np.asarray(a))     # outlives the thread
                    views.append(np.full(8, 7.0))   # captured, outlives the thread

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    gc.collect()
    # the thread's registry died with it; the workspace is gone once nothing
    # references it, while the views keep their bytes (and their block) alive
    assert views[0].tolist() == [2.0] * 64
    assert views[1].tolist() == [7.0] * 8
    del views[:]
    gc.collect()
    leftover = [w for w in live_workspaces() if id(w) not in before and w.name == "THREAD_EXIT"]
    assert leftover == []


def test_reference_cycle_through_a_view_is_collected_safely():
    # A user object holding the workspace and a view of its memory, in a
    # cycle: the collector must be able to free it in any order.
    class Holder:
        pass

    for _ in range(3):
        h = Holder()
        h.self = h
        h.ws = wsmem.Workspace("CYCLE")
        with h.ws:
            h.view = np.asarray(wsmem.full(16, 3.0))
            h.cap = np.ones(16)
        h.arr = wsmem.asarray(np.zeros(2))
        del h
        gc.collect()
    assert not [w for w in live_workspaces() if w.name == "CYCLE"]
