"""Teardown: thread exit, interpreter exit and reference cycles release
everything exactly once, with no crash and no error output."""
import gc
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np

import wsmem
from wsmem._workspace import live_workspaces


# Passed through to the child: where wsmem is imported from, and the
# sanitizer runtime of an ASan build (tests/run_asan.py).
_PASS_ENV = ("PYTHONPATH", "LD_PRELOAD", "ASAN_OPTIONS")


def _run(code):
    env = {"MALLOC_CHECK_": "3", "PYTHONMALLOC": "debug", "PATH": "/usr/bin:/bin"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, env=env)
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


def test_interpreter_exit_with_everything_running():
    # Everything at once, exiting with sys.exit() from inside an open cycle:
    # tracked leaks, an open file-backed workspace, a ring, two running
    # prefetch threads (slow loader; full queue), a daemon thread blocked
    # inside its own open cycle holding views, the GC window on, and a fork()
    # child that exits through the normal interpreter shutdown too.
    proc = _run("""
        import os, sys, threading, time, warnings
        import numpy as np, wsmem
        # Python >= 3.12 warns that fork() with threads may deadlock; this
        # script forks with threads on purpose (the child must exit cleanly).
        warnings.filterwarnings("ignore", "This process .* is multi-threaded",
                                DeprecationWarning)
        wsmem.set_gc_window(1000)
        ws = wsmem.get_workspace("EXIT_ALL", track=True)
        keep = []
        for i in range(3):
            with ws:
                keep.append(np.asarray(wsmem.full(64, float(i))))
                keep.append(np.full(8, float(i)))
        assert len(ws.leaks()) == 6, ws.leaks()
        mm = wsmem.Workspace("EXIT_MMAP", location="mmap", learning="none",
                             initial_size=1 << 16)
        mm.__enter__()
        m = np.asarray(wsmem.full(100, 7.0))           # live export of the file pages
        mm.__exit__(None, None, None)
        ring = wsmem.Workspace("EXIT_RING", reset="endofbuffer_reached", learning="none",
                               initial_size=1 << 16)
        with ring:
            r = [wsmem.full(100, float(i)) for i in range(10)]

        def slow():
            while True:
                time.sleep(0.02)
                yield np.ones(10)

        it1 = wsmem.prefetch(slow(), buffer=2)
        it2 = wsmem.prefetch((np.full(1000, i) for i in iter(int, 1)), buffer=4)
        b1, b2 = next(it1), next(it2)
        inside = threading.Event()

        def stuck():
            w = wsmem.get_workspace("EXIT_THREAD")
            with w:
                v = np.asarray(wsmem.full(32, 1.0))
                c = np.ones(32)
                inside.set()
                threading.Event().wait()

        threading.Thread(target=stuck, daemon=True).start()
        inside.wait(10)
        time.sleep(0.1)
        pid = os.fork()
        if pid == 0:
            # the child: inherited everything, exits the normal way
            try:
                next(it1)
            except wsmem.WorkspaceError:
                pass
            with ws:
                x = np.ones(100) + wsmem.full(100, 1.0)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("done", float(m[0]), float(r[-1][0]), float(b2[0]))
        with ws:
            a = wsmem.full(10, 1.0)
            sys.exit(0)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done 7.0 9.0 0.0"
    assert proc.stderr == "", proc.stderr


def test_workspace_in_a_garbage_cycle_with_a_surviving_captured_array():
    # The collector used to clear the Workspace's fields (tp_clear) before
    # deallocating it; __dealloc__ then could not detach the NumPy handler,
    # and freeing the surviving array touched the dead workspace (SIGSEGV).
    # Run with the plain allocator: -X dev's debug hooks hid the crash.
    code = textwrap.dedent("""
        import gc, numpy as np, wsmem
        gc.disable()
        for order in range(2):
            if order:
                lst = []
                lst.append(lst)
                ws = wsmem.Workspace("CYCLE", initial_size=1 << 20, learning="none")
            else:
                ws = wsmem.Workspace("CYCLE", initial_size=1 << 20, learning="none")
                lst = []
                lst.append(lst)
            lst.append(ws)
            with ws:
                keep = np.ones(1000)
            del ws, lst
            assert gc.collect() > 0
            assert float(keep.sum()) == 1000.0
            del keep
        print("ok")
    """)
    env = {"PATH": "/usr/bin:/bin"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "ok"
