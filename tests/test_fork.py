"""fork(): the child can create and use workspaces, cannot write into memory
the parent still uses (file-backed workspaces, other threads' workspaces),
finds wsmem's locks free, and the parent is unaffected (wsmem/_fork.py)."""
import os
import signal
import threading
import time
import traceback

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, _gc

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_TIMEOUT_S = 30


class Fork:
    """Run `child()` in a fork()ed child that reports back through a pipe.

    The child exits with os._exit: 0 when child() returned, 1 (and its
    traceback on the pipe) when it raised; SIGALRM kills a child that hangs.
    `go()` / `wait_go()` order a step of the parent before the child goes on.
    """

    def __init__(self, child):
        self.err_r, err_w = os.pipe()
        go_r, self.go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                       # ---- the child
            code = 1
            try:
                os.close(self.err_r)
                os.close(self.go_w)
                self._go_r = go_r
                signal.alarm(CHILD_TIMEOUT_S)
                child(self)
                code = 0
            except BaseException:               # noqa: BLE001 - reported to the parent
                try:
                    os.write(err_w, traceback.format_exc().encode()[-6000:])
                except BaseException:           # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        os.close(err_w)
        os.close(go_r)

    def wait_go(self):                          # child side
        assert os.read(self._go_r, 1) == b"g"

    def go(self):                               # parent side
        os.write(self.go_w, b"g")

    def join(self):
        """Wait for the child; assert it exited 0, with its traceback if not."""
        deadline = time.monotonic() + CHILD_TIMEOUT_S + 5
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                pytest.fail("fork child hung")
            time.sleep(0.01)
        report = b""
        while chunk := os.read(self.err_r, 65536):
            report += chunk
        os.close(self.err_r)
        os.close(self.go_w)
        assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
        assert os.WEXITSTATUS(status) == 0, report.decode(errors="replace")


def test_child_creates_and_uses_workspaces(workspace_factory):
    make = workspace_factory("FORKHOST")
    ws = make()
    for i in range(3):                          # learned, steady block
        with ws:
            wsmem.full(1000, float(i))
    with ws:
        a = wsmem.full(1000, 5.0)
        kept = np.asarray(a)                    # pinned export of the parent
        cap = np.full(1000, 6.0)                # captured by the parent's workspace

        def child(f):
            # inherited, owned by this (forking) thread, private copy-on-write memory
            assert float(a.sum()) == 5000.0 and float(kept.sum()) == 5000.0
            b = wsmem.full(1000, -1.0)          # allocates in the inherited open cycle
            assert b.workspace is ws
            np.asarray(a)[...] = -2.0           # the child's copy only
            t = np.full(1000, -3.0)             # captured in the child's copy
            assert float(b.sum()) == -1000.0 and float(t.sum()) == -3000.0
            fresh = wsmem.Workspace("CHILD_NEW", learning="none", initial_size=1 << 16)
            for i in range(50):
                with fresh:
                    x = wsmem.full(500, float(i))
                    y = x * 2 + np.ones(500)
                    assert float(y.sum()) == 500 * (2 * i + 1)
            assert fresh.stats().cycles == 50
            assert fresh.stats().spilled_count == 0
            fresh.destroy()

        fork = Fork(child)
        fork.join()
        # the parent's bytes and its workspace are unaffected
        assert float(a.sum()) == 5000.0
        assert float(kept.sum()) == 5000.0
        assert float(cap.sum()) == 6000.0
        c = wsmem.full(1000, 7.0)
        assert float(c.sum()) == 7000.0
    del kept, cap
    with ws:
        assert float(wsmem.full(10, 1.0).sum()) == 10.0


@pytest.mark.parametrize("open_at_fork", [False, True], ids=["closed", "open"])
def test_inherited_mmap_workspace_refused_in_child(tmp_path, open_at_fork):
    path = tmp_path / "shared.bin"
    ws = wsmem.Workspace("FORKMMAP", location="mmap", learning="none", initial_size=1 << 20,
                         allocation="strict", mmap_path=str(path))
    ws.__enter__()
    a = wsmem.full(1024, 1.0)
    if not open_at_fork:
        ws.__exit__(None, None, None)

    def child(f):
        if open_at_fork:
            # the cycle is open and current: every allocation path is refused
            with pytest.raises(WorkspaceError, match="inherited through fork"):
                wsmem.empty(1024)
            with pytest.raises(WorkspaceError, match="mmap"):
                ws.empty(1024)
            with pytest.raises(WorkspaceError, match="Create a new workspace"):
                wsmem.zeros(10)
            t = np.full(1024, -9.0)             # NumPy's temporary: heap, not the file
            assert not (a.ptr <= t.ctypes.data < a.ptr + (1 << 20))
            assert float(a.sum()) == 1024.0     # inherited arrays stay readable
            f.wait_go()                         # the parent has allocated more now
            t[...] = -8.0
            ws.__exit__(None, None, None)       # leaving the inherited cycle is fine
        else:
            f.wait_go()
        with pytest.raises(WorkspaceError, match="inherited through fork.*mmap"):
            ws.__enter__()
        assert not ws.is_open
        with pytest.raises(WorkspaceError, match="fork"):
            ws.destroy()
        # a new file-backed workspace of the child's own is fine
        own = wsmem.Workspace("CHILD_MMAP", location="mmap", learning="none",
                              initial_size=1 << 16, mmap_path=str(tmp_path / "child.bin"))
        with own:
            z = wsmem.full(100, 3.0)
            assert float(z.sum()) == 300.0
        own.destroy()

    fork = Fork(child)
    if not open_at_fork:
        ws.__enter__()
    try:
        b = wsmem.full(4096, 2.0)               # where the child would have allocated
        fork.go()
        fork.join()
        assert float(b.sum()) == 8192.0, "the child wrote into the parent's file pages"
        if not open_at_fork:
            assert a.is_valid is False
        else:
            assert float(a.sum()) == 1024.0
    finally:
        ws.__exit__(None, None, None)
        ws.destroy()


def test_other_threads_workspace_disowned_in_child():
    box = {}
    started, release = threading.Event(), threading.Event()

    def worker():
        box["ws"] = w = wsmem.Workspace("FORK_OTHER_THREAD", learning="none",
                                        initial_size=1 << 16)
        with w:
            box["a"] = np.asarray(wsmem.full(64, 4.0))
        started.set()
        release.wait(30)
        w.destroy()

    t = threading.Thread(target=worker)
    t.start()
    started.wait(30)
    try:
        w = box["ws"]

        def child(f):
            with pytest.raises(WorkspaceError, match="thread that owned it does not exist"):
                w.__enter__()
            assert float(box["a"].sum()) == 256.0    # its exported bytes stay readable

        Fork(child).join()
    finally:
        release.set()
        t.join(30)
    del box["a"]


def test_gc_window_lock_is_free_in_child():
    held, release = threading.Event(), threading.Event()

    def holder():
        with _gc._lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    threading.Timer(0.3, release.set).start()
    # fork() waits for the holder (register_at_fork's `before` takes the lock),
    # so the child never inherits it held
    t0 = time.monotonic()

    def child(f):
        assert _gc._lock.acquire(timeout=2), "the GC-window lock is held in the child"
        _gc._lock.release()
        wsmem.set_gc_window(1000)
        wsmem.toggle_periodic_gc(True)

    fork = Fork(child)
    waited = time.monotonic() - t0
    fork.join()
    t.join(30)
    assert waited >= 0.2, waited
    assert _gc._lock.acquire(blocking=False), "parent's lock left held"
    _gc._lock.release()


def test_prefetch_iterator_in_child_raises_and_new_one_works():
    items = [np.full(256, float(i)) for i in range(20)]
    it = wsmem.prefetch(items, buffer=2)
    first = next(it)
    assert float(first[0]) == 0.0

    def child(f):
        with pytest.raises(WorkspaceError, match="before fork"):
            next(it)
        with pytest.raises(StopIteration):
            next(it)                            # closed
        mine = wsmem.prefetch([np.full(8, float(i)) for i in range(30)], buffer=3)
        got = [float(b[0]) for b in mine]
        assert got == [float(i) for i in range(30)]

    Fork(child).join()
    rest = [float(b[0]) for b in it]            # the parent's thread is unaffected
    assert rest == [float(i) for i in range(1, 20)]
    del first


def test_fork_handlers_leave_parent_state_alone():
    ws = wsmem.Workspace("FORK_PARENT_STATE")
    with ws:
        wsmem.full(10, 1.0)
    Fork(lambda f: None).join()
    with ws:                                    # still owned by this thread
        assert float(wsmem.full(10, 2.0).sum()) == 20.0
    ws.destroy()
