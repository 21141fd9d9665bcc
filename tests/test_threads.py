"""Per-thread workspaces (after ND4J's WorkspaceProviderTests testMultithreading*,
testWorkspacesSerialization and the workspace manager's per-thread registry)."""
import threading

import numpy as np
import pytest

import wsmem
from threadutil import run_in_thread as _in_thread
from wsmem import WorkspaceError


# ------------------------------------------------------------------ registry

def test_get_workspace_same_object_in_same_thread():
    a = wsmem.get_workspace("REG")
    b = wsmem.get_workspace("REG")
    assert a is b
    assert wsmem.thread_workspaces() == {"REG": a}
    c = wsmem.get_workspace("REG2", wsmem.WorkspaceConfig(initial_size=1024, learning="none"))
    assert c is not a
    assert c.config.initial_size == 1024
    assert set(wsmem.thread_workspaces()) == {"REG", "REG2"}


def test_get_workspace_with_other_config_refused():
    wsmem.get_workspace("REGCFG", spill="fail")
    assert wsmem.get_workspace("REGCFG", spill="fail").config.spill is wsmem.SpillPolicy.FAIL
    with pytest.raises(ValueError, match="different config"):
        wsmem.get_workspace("REGCFG", spill="external")


def test_get_workspace_differs_between_threads():
    main = wsmem.get_workspace("SHARED_NAME")

    def worker():
        w1 = wsmem.get_workspace("SHARED_NAME")
        w2 = wsmem.get_workspace("SHARED_NAME")
        same = w1 is w2
        with w1:
            total = float(wsmem.ones(10).sum())
        names = set(wsmem.thread_workspaces())
        wsmem.destroy_thread_workspaces()
        return w1, same, total, names, w1.is_destroyed

    other, same, total, names, destroyed = _in_thread(worker)
    assert same
    assert other is not main
    assert total == 10.0
    assert names == {"SHARED_NAME"}
    assert destroyed
    # the other thread's cleanup did not touch this thread's workspace
    assert not main.is_destroyed
    assert wsmem.get_workspace("SHARED_NAME") is main


def test_destroy_thread_workspaces():
    a = wsmem.get_workspace("D1")
    b = wsmem.get_workspace("D2")
    with a:
        x = wsmem.ones(3)
    wsmem.destroy_thread_workspaces()
    assert a.is_destroyed and b.is_destroyed
    assert wsmem.thread_workspaces() == {}
    assert not x.is_valid
    fresh = wsmem.get_workspace("D1")
    assert fresh is not a and not fresh.is_destroyed


def test_destroy_thread_workspaces_refused_while_open():
    a = wsmem.get_workspace("OPEN1")
    with a:
        with pytest.raises(WorkspaceError, match="open"):
            wsmem.destroy_thread_workspaces()
        assert not a.is_destroyed
    wsmem.destroy_thread_workspaces()
    assert a.is_destroyed


def test_destroyed_workspace_leaves_registry():
    a = wsmem.get_workspace("GONE")
    a.destroy()
    assert "GONE" not in wsmem.thread_workspaces()
    b = wsmem.get_workspace("GONE")
    assert b is not a


# ------------------------------------------------------------------ ownership

def test_foreign_thread_cannot_enter():
    ws = wsmem.Workspace("OWNED")

    def enter():
        with ws:
            pass

    with pytest.raises(WorkspaceError, match="thread"):
        _in_thread(enter)
    assert not ws.is_open
    assert ws.stats().cycles == 0
    with ws:                                # still fine in its own thread
        assert float(wsmem.ones(2).sum()) == 2.0
    ws.destroy()


def test_foreign_thread_cannot_allocate_or_destroy():
    ws = wsmem.Workspace("OWNED2")
    with ws:
        with pytest.raises(WorkspaceError, match="thread"):
            _in_thread(lambda: ws.empty(3))
        with pytest.raises(WorkspaceError, match="thread"):
            _in_thread(lambda: ws.zeros(3))
        assert ws.stats().offset == 0
    with pytest.raises(WorkspaceError, match="thread"):
        _in_thread(ws.destroy)
    assert not ws.is_destroyed
    with pytest.raises(WorkspaceError, match="thread"):
        _in_thread(ws.initialize)
    ws.destroy()


def test_foreign_thread_cannot_leverage_into_workspace():
    ws = wsmem.Workspace("OWNED3")

    def lev():
        a = wsmem.ones(3)                   # heap array in the worker
        return a.leverage_to(ws)

    with ws:
        with pytest.raises(WorkspaceError, match="thread"):
            _in_thread(lev)
    ws.destroy()


def test_current_workspace_is_per_thread():
    ws = wsmem.Workspace("PERTHREAD")
    with ws:
        seen = _in_thread(wsmem.current_workspace)
        assert seen is None
        a = _in_thread(lambda: wsmem.ones(3))     # heap: nothing open in that thread
        assert a.workspace is None
        assert wsmem.current_workspace() is ws
    ws.destroy()


def test_threads_run_cycles_concurrently():
    n_threads, n_cycles = 4, 50
    errors = []
    results = {}
    barrier = threading.Barrier(n_threads)

    def worker(k):
        try:
            ws = wsmem.get_workspace("LOOP")
            barrier.wait(10)
            ptrs = []
            for i in range(n_cycles):
                with ws:
                    a = wsmem.full(256, float(k))
                    b = wsmem.full(256, float(i))
                    c = a * 1000 + b
                    assert float(c[0]) == k * 1000 + i
                    ptrs.append(a.ptr)
            results[k] = (ws, ptrs[1:], ws.stats().cycles)
            wsmem.destroy_thread_workspaces()
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len({id(r[0]) for r in results.values()}) == n_threads
    for ws, ptrs, cycles in results.values():
        assert cycles == n_cycles
        assert len(set(ptrs)) == 1           # each thread reuses its own block
        assert ws.is_destroyed


def test_view_released_in_other_thread():
    ws = wsmem.Workspace("XVIEW", learning="none", initial_size=4096)
    with ws:
        v = np.asarray(wsmem.full(4, 1.0))
    assert ws.stats().pinned_bytes == 128
    box = [v]
    del v

    def drop():
        box.clear()

    _in_thread(drop)
    assert ws.stats().pinned_bytes == 0
    ws.destroy()
