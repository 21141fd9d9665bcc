"""Per-thread workspaces (after ND4J's WorkspaceProviderTests testMultithreading*,
testWorkspacesSerialization and the workspace manager's per-thread registry)."""
import collections
import gc
import os
import sys
import threading

import numpy as np
import pytest

import wsmem
from wsmem._arena import PIN_LINE
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


def test_frame_closed_from_another_thread_leaves_no_current_workspace():
    # A generator suspended inside `with ws:` in thread T and finalized in
    # the main thread ends the cycle there; T's stack still holds the entry,
    # but the closed workspace is no longer T's current one: T allocates on
    # the heap (valid arrays, not stale ones), and `with ws:` works again.
    box, seen = {}, {}
    suspended, closed = threading.Event(), threading.Event()

    def owner():
        ws = wsmem.Workspace("closed_elsewhere")

        def gen():
            with ws:
                yield

        g = gen()
        next(g)
        box["g"], box["ws"] = g, ws
        suspended.set()
        closed.wait(10)
        seen["current"] = wsmem.current_workspace()
        a = wsmem.ones(4)
        seen["a"] = (a.workspace, a.is_valid, float(a.sum()))
        with ws:
            b = wsmem.ones(4)
            seen["b"] = (b.workspace is ws, b.is_valid, wsmem.current_workspace() is ws)
        seen["after"] = (wsmem.current_workspace(), ws.is_open)
        ws.destroy()

    t = threading.Thread(target=owner)
    t.start()
    assert suspended.wait(10)
    box["g"].close()                                  # __exit__ runs here, not in the owner
    assert not box["ws"].is_open
    closed.set()
    t.join(10)
    assert seen == {"current": None, "a": (None, True, 4.0), "b": (True, True, True),
                    "after": (None, False)}


def test_thread_reusing_a_dead_owners_ident_uses_its_own_frame_stack():
    # A workspace keeps its owner thread's frame stack for `with ws:`.  A new
    # thread may get the ident of the dead owner (pthread reuses them), and
    # then passes the owner check: its frames must go on its own stack, so
    # that current_workspace() there sees the workspace.
    made = {}

    def owner():
        made["ws"] = wsmem.Workspace("ident_reuse")
        made["ident"] = threading.get_ident()
        with made["ws"]:
            np.ones(10)

    _in_thread(owner)
    seen = {}

    def successor():
        if threading.get_ident() != made["ident"]:
            return
        with made["ws"]:
            seen["current"] = wsmem.current_workspace()
            with wsmem.scope_out():              # pushed on and popped off this
                seen["scoped"] = wsmem.current_workspace()   # thread's stack
            seen["back"] = wsmem.current_workspace()
        seen["after"] = wsmem.current_workspace()
        made["ws"].destroy()

    for _ in range(20):
        _in_thread(successor)
        if seen:
            break
    if not seen:
        pytest.skip("no new thread got the dead owner's ident")
    assert seen["current"] is made["ws"] and seen["scoped"] is None
    assert seen["back"] is made["ws"] and seen["after"] is None


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
    assert ws.stats().pinned_bytes == PIN_LINE       # 32 bytes: one line
    box = [v]
    del v

    def drop():
        box.clear()

    _in_thread(drop)
    assert ws.stats().pinned_bytes == 0
    ws.destroy()


# ------------------------------------------------------------------ stress

STRESS_THREADS = 16
STRESS_CYCLES = int(os.environ.get("WSMEM_THREAD_CYCLES", "10000"))


def test_stress_16_threads_views_freed_by_other_threads():
    """16 threads x 10,000 cycles, each thread in its own workspace.  Every
    cycle exports a view (pinned) and a captured NumPy array into a shared
    pool; a random *other* thread later checks their bytes and drops them, so
    pins are released from threads that did not allocate.  Every 500 cycles a
    thread tries to use another thread's workspace and must be refused.  At
    the end no pin is lost: each workspace has 0 pinned bytes."""
    pool = collections.deque()          # (owner k, view, captured, value)
    errors = []
    checked = [0] * STRESS_THREADS      # bytes checked by thread k
    exported = [0] * STRESS_THREADS     # bytes thread k put into the pool
    foreign_refusals = [0] * STRESS_THREADS
    spaces = [None] * STRESS_THREADS
    start = threading.Barrier(STRESS_THREADS)
    produced = threading.Barrier(STRESS_THREADS)

    def check(k, item):
        owner, view, cap, value = item
        if owner == k and len(pool) > 0:     # prefer dropping another thread's views
            pool.append(item)
            return
        if not (view == value).all() or not (cap == -value).all():
            raise AssertionError(f"thread {k}: view of thread {owner} lost its bytes "
                                 f"({view[:3]}, {cap[:3]} != {value})")
        checked[k] += view.nbytes + cap.nbytes

    def worker(k):
        try:
            ws = wsmem.get_workspace("STRESS", learning="first_loop")
            spaces[k] = ws
            rng = np.random.default_rng(k)
            start.wait(30)
            for i in range(STRESS_CYCLES):
                value = float(k * 1_000_000 + i)
                with ws:
                    n = 16 + int(rng.integers(0, 64))
                    a = wsmem.full(n, value)
                    tmp = np.full(n, value) * 2          # captured temporary, dies here
                    assert float(tmp[0]) == 2 * value
                    cap = np.negative(np.asarray(a))     # captured, escapes the cycle
                    pool.append((k, np.asarray(a), cap, value))
                    exported[k] += a.nbytes + cap.nbytes
                    del a, tmp, cap
                for _ in range(2 if len(pool) > 4 * STRESS_THREADS else 1):
                    try:
                        item = pool.popleft()
                    except IndexError:
                        break
                    check(k, item)
                    del item
                if i % 500 == 250:
                    other = spaces[(k + 1) % STRESS_THREADS]
                    if other is not None:
                        with pytest.raises(WorkspaceError, match="thread"):
                            with other:
                                pass
                        with pytest.raises(WorkspaceError):     # "not open" or "thread"
                            other.empty(3)
                        with pytest.raises(WorkspaceError, match="thread"):
                            other.destroy()
                        foreign_refusals[k] += 1
            produced.wait(60)
            while True:
                try:
                    item = pool.popleft()
                except IndexError:
                    break
                owner, view, cap, value = item
                assert (view == value).all() and (cap == -value).all()
                checked[k] += view.nbytes + cap.nbytes
                del item, view, cap
        except BaseException as exc:   # noqa: BLE001
            errors.append((k, exc))
            start.abort()
            produced.abort()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)          # more interleaving than the default 5 ms
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(STRESS_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert not pool
    gc.collect()
    for k, ws in enumerate(spaces):
        s = ws.stats()
        assert s.cycles == STRESS_CYCLES
        assert s.pinned_bytes == 0, (k, s)        # no lost pins
        assert ws.leaks() == []
        assert foreign_refusals[k] == (STRESS_CYCLES + 250) // 500   # at i % 500 == 250
    # every byte exported was checked once, by some thread
    assert sum(checked) == sum(exported) > 0
    print(f"\nthreads={STRESS_THREADS} cycles/thread={STRESS_CYCLES} "
          f"bytes checked={sum(checked)}")
