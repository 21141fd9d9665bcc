"""Scopes: current workspace, borrow, scope_out, detach, leverage_to
(after ND4J's BasicWorkspaceTests testOutOfScope1, testLeverage*, testDetach1,
testIsAttached*, testBreakout* and WorkspaceProviderTests nested tests)."""
import asyncio
import contextvars
import threading

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, WorkspaceLeakError

ALIGN = 64


def _r(n, a=ALIGN):
    return (n + a - 1) // a * a


@pytest.fixture
def pair():
    # capture=False: these tests check offsets of explicit allocations to the
    # byte; NumPy's own temporaries (np.array(...) here) would shift them.
    outer = wsmem.Workspace("EXT", learning="none", initial_size=1 << 16, capture=False)
    inner = wsmem.Workspace("INT", learning="none", initial_size=1 << 16, capture=False)
    yield outer, inner
    outer.destroy()
    inner.destroy()


# ------------------------------------------------------------------ current_workspace

def test_current_workspace_follows_with_blocks(pair):
    outer, inner = pair
    assert wsmem.current_workspace() is None
    with outer as w:
        assert w is outer
        assert wsmem.current_workspace() is outer
        with inner:
            assert wsmem.current_workspace() is inner
        assert wsmem.current_workspace() is outer
    assert wsmem.current_workspace() is None


def _current_in_a_copy():
    """current_workspace() as a context copied from the running one sees it."""
    return contextvars.copy_context().run(wsmem.current_workspace)


@pytest.mark.parametrize("capture", [True, False])
def test_current_workspace_is_per_asyncio_task(capture, workspace_factory):
    # Tasks of one event loop share their thread's frames: a task that waits
    # inside `with ws:` must not make ws current for the other tasks, and a
    # task that resumes under another task's frame still sees its own.
    make = workspace_factory("task")
    wa, wb = make(capture=capture), make(capture=capture)
    seen = {}

    async def task_a(a_in, b_in, b_checked):
        with wa:
            a_in.set()
            await b_in.wait()                      # B is inside wb now
            seen["a_current"] = wsmem.current_workspace()
            seen["a_alloc"] = wsmem.empty(4).workspace
            b_checked.set()
            await asyncio.sleep(0)
        seen["a_after"] = wsmem.current_workspace()

    async def task_b(a_in, b_in, b_checked):
        await a_in.wait()                          # A waits inside wa
        seen["b_before"] = wsmem.current_workspace()
        seen["b_alloc"] = wsmem.empty(4).workspace
        with wb:
            seen["b_in"] = wsmem.current_workspace()
            b_in.set()
            await b_checked.wait()
            seen["b_still"] = wsmem.current_workspace()
        seen["b_after"] = wsmem.current_workspace()

    async def main():
        events = asyncio.Event(), asyncio.Event(), asyncio.Event()
        await asyncio.gather(task_a(*events), task_b(*events))

    asyncio.run(main())
    assert seen == {"b_before": None, "b_alloc": None, "b_in": wb,
                    "a_current": wa, "a_alloc": wa, "b_still": wb,
                    "a_after": None, "b_after": None}
    assert wsmem.current_workspace() is None
    assert not (wa.is_open or wb.is_open)


@pytest.mark.parametrize("capture", [True, False])
def test_current_workspace_is_inherited_by_contexts_copied_inside(capture, workspace_factory):
    # As NumPy's handler: a task created inside `with ws:` (its context a
    # copy of the creator's) sees ws, also after the creator has moved on to
    # another frame; one created inside scope_out() sees the heap.
    make = workspace_factory("inherit")
    ws, other = make(capture=capture), make(capture=capture)
    seen = {}

    async def child(tag, started, go):
        started.set()
        await go.wait()
        seen[tag] = wsmem.current_workspace()
        seen[tag + "_alloc"] = wsmem.empty(2).workspace

    async def main():
        go = asyncio.Event()
        s1, s2 = asyncio.Event(), asyncio.Event()
        with ws:
            seen["copy"] = _current_in_a_copy()
            inside = asyncio.create_task(child("inside", s1, go))
            with wsmem.scope_out():
                heap = asyncio.create_task(child("scope_out", s2, go))
            await s1.wait()
            await s2.wait()
            with other:                      # the creator's innermost frame now
                go.set()
                await asyncio.gather(inside, heap)
                seen["main"] = wsmem.current_workspace()

    asyncio.run(main())
    assert seen == {"copy": ws, "inside": ws, "inside_alloc": ws,
                    "scope_out": None, "scope_out_alloc": None, "main": other}
    assert wsmem.current_workspace() is None


@pytest.mark.parametrize("outer_capture", [True, False])
def test_copied_context_inherits_the_innermost_of_mixed_frames(outer_capture,
                                                               workspace_factory):
    # A capturing frame is told by NumPy's handler, the others by wsmem's
    # own variable: nested either way round, the innermost one wins.
    make = workspace_factory("mixed")
    outer, inner = make(capture=outer_capture), make(capture=not outer_capture)
    seen = []
    with outer:
        seen.append(_current_in_a_copy())
        with inner:
            seen.append(_current_in_a_copy())
            with wsmem.scope_out():
                seen.append(_current_in_a_copy())
            seen.append(_current_in_a_copy())
        seen.append(_current_in_a_copy())
    seen.append(_current_in_a_copy())
    assert seen == [outer, inner, None, inner, outer, None]


def test_current_workspace_in_a_copied_context_on_another_thread(ws):
    # A context copied inside `with ws:` and run on another thread (what
    # asyncio.to_thread does): ws is not open there, so the heap is current.
    seen = {}
    with ws:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: seen.update(
            current=ctx.run(wsmem.current_workspace), alloc=ctx.run(wsmem.empty, 3).workspace))
        t.start()
        t.join()
        assert wsmem.current_workspace() is ws
    assert seen == {"current": None, "alloc": None}


def test_breakout_array_stays_attached_but_stale(pair):
    outer, _ = pair

    def make():
        with outer:
            return wsmem.zeros(10)

    a = make()
    assert a.is_attached and a.workspace is outer
    assert not a.is_valid
    assert wsmem.current_workspace() is None


# ------------------------------------------------------------------ scope_out

def test_scope_out_allocates_on_heap(pair):
    outer, inner = pair
    with outer:
        a1 = wsmem.full(5, 1.0)
        off = outer.stats().offset
        assert off == _r(40)
        with wsmem.scope_out():
            assert wsmem.current_workspace() is None
            a2 = wsmem.full(5, 2.0)
            z = wsmem.zeros((2, 2))
            s = a1 + a2                            # result goes to the heap too
        assert a2.workspace is None and not a2.is_attached and a2.generation is None
        assert z.workspace is None and s.workspace is None
        assert outer.stats().offset == off      # the heap allocation did not bump
        assert wsmem.current_workspace() is outer
        a3 = wsmem.full(5, 3.0)
        assert outer.stats().offset == 2 * _r(40)
        a1 += a2
        assert float(a1.sum()) == 15.0
        assert a3.workspace is outer
    # heap arrays are always valid
    assert a2.is_valid and s.is_valid
    with outer:
        pass
    assert float(a2.sum()) == 10.0
    assert float(s.sum()) == 15.0
    outer.destroy()
    assert float(a2.sum()) == 10.0


def test_scope_out_inside_nested_workspaces(pair):
    outer, inner = pair
    with outer:
        with inner:
            with wsmem.scope_out():
                h = wsmem.ones(3)
                assert wsmem.current_workspace() is None
                with inner.borrow():
                    assert wsmem.current_workspace() is inner
                    i = wsmem.ones(3)
                assert wsmem.current_workspace() is None
            assert wsmem.current_workspace() is inner
            assert i.workspace is inner
    assert h.workspace is None and h.is_valid
    assert not i.is_valid


def test_scope_out_restores_on_exception(pair):
    outer, _ = pair
    with outer:
        with pytest.raises(ValueError):
            with wsmem.scope_out():
                raise ValueError
        assert wsmem.current_workspace() is outer


def test_scope_out_at_top_level():
    with wsmem.scope_out():
        a = wsmem.empty(3)
    assert a.workspace is None and a.is_valid
    assert wsmem.current_workspace() is None


# ------------------------------------------------------------------ borrow

def test_borrow_allocates_in_outer_without_new_cycle(pair):
    outer, inner = pair
    with outer:
        gen = outer.stats().generation
        x = wsmem.ones(4)
        with inner:
            with outer.borrow() as b:
                assert b is outer
                assert wsmem.current_workspace() is outer
                y = wsmem.full(4, 2.0)
            assert wsmem.current_workspace() is inner
            assert outer.stats().generation == gen
            assert y.workspace is outer and y.generation == gen
        assert x.is_valid and y.is_valid          # survived the inner cycle
        assert float((x + y).sum()) == 12.0
    assert outer.stats().cycles == 1
    assert not y.is_valid


def test_borrow_closed_workspace_refused(pair):
    outer, _ = pair
    with pytest.raises(WorkspaceError, match="not open"):
        with outer.borrow():
            pass
    assert wsmem.current_workspace() is None


def test_borrow_restores_on_exception(pair):
    outer, inner = pair
    with outer:
        with inner:
            with pytest.raises(RuntimeError):
                with outer.borrow():
                    raise RuntimeError
            assert wsmem.current_workspace() is inner
        assert outer.is_open


# ------------------------------------------------------------------ detach

def test_detach_copies_to_heap(pair):
    outer, _ = pair
    with outer:
        a = wsmem.asarray(np.arange(5.0))
        off = outer.stats().offset
        d = a.detach()
        assert outer.stats().offset == off       # detach does not use the workspace
        assert d.workspace is None and not d.is_attached
        assert d.ptr != a.ptr
        d[0] = 100.0
        assert float(a[0]) == 0.0               # a copy, not a view
    assert not a.is_valid
    assert d.is_valid
    assert d.tolist() == [100.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(WorkspaceLeakError):
        a.detach()


def test_detach_keeps_layout(pair):
    outer, _ = pair
    with outer:
        a = wsmem.asarray(np.arange(12.0).reshape(3, 4))
        d = a.T.detach()
    assert d.shape == (4, 3)
    assert np.array_equal(np.asarray(d), np.arange(12.0).reshape(3, 4).T)


# ------------------------------------------------------------------ leverage_to

def test_leverage_to_open_outer(pair):
    outer, inner = pair
    with outer:
        wsmem.empty(5)
        before = outer.stats().offset
        with inner:
            a = wsmem.asarray(np.array([1.0, 2, 3, 4, 5]))
            assert outer.stats().offset == before
            b = a.leverage_to(outer)
            assert b.workspace is outer
            assert b.generation == outer.stats().generation
            assert outer.stats().offset == before + _r(40)
            assert inner.stats().offset == _r(40)
            assert b.ptr != a.ptr
        assert not a.is_valid
        assert b.is_valid
        assert float(b.sum()) == 15.0
        # ND4J testLeverageTo2: another inner cycle does not disturb it
        with inner:
            wsmem.full(100, -1.0)
        assert b.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not b.is_valid


def test_leverage_view_to_outer(pair):
    # ND4J testLeverage3: a view (tensor along dimension) leveraged out
    outer, inner = pair
    with outer:
        with inner:
            m = wsmem.zeros((32, 1, 40))
            view = m[0]
            view[...] = 1.0
            assert float(m.sum()) == 40.0
            out = view.leverage_to(outer)
        assert out.shape == (1, 40)
        assert float(out.sum()) == 40.0


def test_leverage_to_same_workspace_returns_self(pair):
    outer, _ = pair
    with outer:
        a = wsmem.ones(3)
        assert a.leverage_to(outer) is a


def test_leverage_heap_array_into_workspace(pair):
    outer, _ = pair
    h = wsmem.full(3, 2.0)
    assert h.workspace is None
    with outer:
        w = h.leverage_to(outer)
        assert w.workspace is outer
        assert float(w.sum()) == 6.0


def test_leverage_to_closed_workspace_refused(pair):
    outer, inner = pair
    with inner:
        a = wsmem.ones(3)
        with pytest.raises(WorkspaceError, match="not open"):
            a.leverage_to(outer)
        with pytest.raises(TypeError):
            a.leverage_to("EXT")
    with pytest.raises(WorkspaceLeakError):
        a.leverage_to(outer)
    outer.destroy()
    with inner:
        b = wsmem.ones(3)
        with pytest.raises(WorkspaceError, match="destroyed"):
            b.leverage_to(outer)


def test_stale_array_refuses_leverage_even_into_open_target(pair):
    outer, inner = pair
    with inner:
        a = wsmem.ones(3)
    with outer:
        with pytest.raises(WorkspaceLeakError):
            a.leverage_to(outer)


# ------------------------------------------------------------------ creation functions

@pytest.mark.parametrize("fn, args, expect", [
    (wsmem.zeros, ((2, 3),), 0.0),
    (wsmem.ones, ((2, 3),), 6.0),
    (lambda *a: wsmem.full(*a, 2.0), ((2, 3),), 12.0),
])
def test_creation_functions_allocate_in_current(pair, fn, args, expect):
    outer, _ = pair
    with outer:
        a = fn(*args)
        assert a.workspace is outer
        assert a.shape == (2, 3)
        assert float(a.sum()) == expect
        like = wsmem.zeros_like(a)
        assert like.workspace is outer and like.shape == (2, 3)
        assert wsmem.empty_like(a, dtype=np.int8).dtype == np.int8
        assert float(wsmem.full_like(a, 3).sum()) == 18.0
        assert float(wsmem.ones_like(a).sum()) == 6.0


def test_asarray_returns_same_when_already_here(pair):
    outer, _ = pair
    with outer:
        a = wsmem.ones(3)
        assert wsmem.asarray(a) is a
        b = wsmem.asarray([1, 2, 3])
        assert b.workspace is outer and b.tolist() == [1, 2, 3]
