"""Cycles, generations, reuse and stale pointers (after ND4J's BasicWorkspaceTests,
WorkspaceProviderTests and CyclicWorkspaceTests)."""
import dataclasses
import gc

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, WorkspaceLeakError

ALIGN = 64
LINE = 64     # pyx/wsmem/_arena.pxd LINE: pins round out to 64-byte lines


def _r(n, a=ALIGN):
    return (n + a - 1) // a * a


def _step(sizes):
    """Allocate one float64 array per size in the current workspace; return them."""
    return [wsmem.empty(n, dtype=np.float64) for n in sizes]


# ------------------------------------------------------------------ reuse

def test_learned_workspace_hands_out_same_addresses_every_cycle(ws):
    sizes = [1000, 10, 333, 4096, 1]
    seen = []
    for _ in range(6):
        with ws:
            arrs = _step(sizes)
            seen.append([a.ptr for a in arrs])
            assert all(a.workspace is ws for a in arrs)
    # Cycle 0 learns (spills); from cycle 1 on the block is reused exactly.
    for ptrs in seen[2:]:
        assert ptrs == seen[1]
    # The learned cycle packs the arrays back to back in the block.
    deltas = np.diff(seen[1]).tolist()
    assert deltas == [_r(n * 8) for n in sizes[:-1]]
    st = ws.stats()
    assert st.spilled_count == 0 and st.cycles == 6


def test_offset_bumps_by_aligned_sizes_and_resets(ws):
    with ws:
        wsmem.empty(1000)
    with ws:
        assert ws.stats().offset == 0
        wsmem.empty(1, dtype=np.uint8)
        assert ws.stats().offset == _r(1)
        wsmem.empty(100, dtype=np.float32)
        assert ws.stats().offset == _r(1) + _r(400)
        assert ws.stats().cycle_bytes == _r(1) + _r(400)
    st = ws.stats()
    assert st.offset == 0
    assert not st.is_open
    # cycle_bytes describes the last finished cycle when closed
    assert st.cycle_bytes == st.last_cycle_bytes == _r(1) + _r(400)


def test_arrays_are_aligned(ws):
    for _ in range(2):
        with ws:
            for n in (1, 3, 7, 100, 5):
                assert wsmem.empty(n, dtype=np.uint8).ptr % ALIGN == 0


def test_custom_alignment():
    ws = wsmem.Workspace("align4k", alignment=4096, learning="none",
                         initial_size=1 << 16, allocation="strict")
    with ws:
        a = wsmem.empty(3, dtype=np.uint8)
        b = wsmem.empty(3, dtype=np.uint8)
        assert a.ptr % 4096 == 0 and b.ptr % 4096 == 0
        assert b.ptr - a.ptr == 4096
    ws.destroy()


def test_generation_advances_at_every_cycle_start(ws):
    assert ws.stats().generation == 0
    gens = []
    for i in range(4):
        with ws:
            a = wsmem.zeros(3)
            gens.append(a.generation)
            assert ws.stats().generation == a.generation
            assert ws.stats().cycles == i
        assert ws.stats().cycles == i + 1
    assert gens == [1, 2, 3, 4]


def test_values_inside_cycle_are_right(ws):
    for step in range(4):
        with ws:
            a = wsmem.full((8, 8), float(step))
            b = wsmem.ones_like(a)
            c = a + b
            assert isinstance(c, wsmem.WsArray) and c.workspace is ws
            assert float(c.sum()) == 64.0 * (step + 1)


# ------------------------------------------------------------------ stale pointers

def test_leaked_pointer_after_cycle_closes(ws):
    with ws:
        a = wsmem.ones(5)
        assert a.is_valid and a.is_attached
        gen = a.generation
    assert not a.is_valid
    assert a.is_attached
    with pytest.raises(WorkspaceLeakError) as ei:
        a.sum()
    msg = str(ei.value)
    assert repr(ws.name) in msg or ws.name in msg
    assert "leaked" in msg
    assert f"generation {gen}" in msg
    assert "detach" in msg  # says what to do next
    for op in (lambda: np.asarray(a), lambda: a[0], lambda: a.fill(1.0),
               lambda: a.detach(), lambda: a + 1, lambda: memoryview(a)):
        with pytest.raises(WorkspaceLeakError):
            op()


def test_outdated_pointer_in_later_generation(ws):
    with ws:
        a = wsmem.ones(5)
        old = a.generation
    with ws:
        b = wsmem.zeros(5)
        assert not a.is_valid
        with pytest.raises(WorkspaceLeakError) as ei:
            a + b
        msg = str(ei.value)
        assert "outdated" in msg
        assert ws.name in msg
        assert f"generation {old}" in msg and f"generation {old + 1}" in msg
        # the new array is unharmed
        assert float(b.sum()) == 0.0


def test_leak_error_is_workspace_error():
    assert issubclass(WorkspaceLeakError, WorkspaceError)
    assert issubclass(WorkspaceError, RuntimeError)
    assert issubclass(wsmem.WorkspaceOverflowError, MemoryError)


def test_repr_of_stale_array_does_not_raise(ws):
    with ws:
        a = wsmem.ones(3)
    r = repr(a)
    assert "stale" in r


# ------------------------------------------------------------------ nesting / re-entry

def test_reentering_open_workspace_does_not_reset(ws):
    with ws:
        a = wsmem.full(4, 7.0)
        gen = ws.stats().generation
        off = ws.stats().offset
        with ws:
            assert ws.stats().generation == gen
            assert ws.stats().offset == off
            assert a.is_valid
            b = wsmem.full(4, 1.0)
            assert b.generation == gen
            assert b.ptr != a.ptr
        # leaving the inner `with` does not close the cycle
        assert ws.is_open
        assert a.is_valid and b.is_valid
        assert float((a + b).sum()) == 32.0
        assert wsmem.current_workspace() is ws
    assert not ws.is_open
    assert ws.stats().cycles == 1
    assert not a.is_valid


def test_nested_workspaces_outer_arrays_stay_valid():
    outer = wsmem.Workspace("OUTER")
    inner = wsmem.Workspace("INNER")
    for _ in range(3):
        with outer:
            x = wsmem.full(10, 2.0)
            for _ in range(3):
                with inner:
                    assert wsmem.current_workspace() is inner
                    assert x.is_valid
                    y = wsmem.ones(10)
                    assert y.workspace is inner
                    z = x * y
                    assert z.workspace is inner
                    assert float(z.sum()) == 20.0
                assert not y.is_valid
                assert x.is_valid
            assert wsmem.current_workspace() is outer
            assert outer.stats().cycles + 1 == outer.stats().generation
    assert inner.stats().cycles == 9
    assert outer.stats().cycles == 3
    inner.destroy()
    outer.destroy()


def test_inner_allocations_do_not_move_outer_offset():
    outer = wsmem.Workspace("O", learning="none", initial_size=1 << 16)
    inner = wsmem.Workspace("I", learning="none", initial_size=1 << 16)
    with outer:
        wsmem.empty(5)
        off = outer.stats().offset
        with inner:
            wsmem.empty(100)
            assert inner.stats().offset == _r(800)
            assert outer.stats().offset == off
    outer.destroy()
    inner.destroy()


def test_exception_inside_with_closes_cycle_and_restores_current():
    outer = wsmem.Workspace("EXC_OUT")
    inner = wsmem.Workspace("EXC_IN")
    with outer:
        with pytest.raises(ZeroDivisionError):
            with inner:
                a = wsmem.ones(3)
                1 / 0
        assert wsmem.current_workspace() is outer
        assert not inner.is_open
        assert not a.is_valid
        assert inner.stats().cycles == 1
    assert wsmem.current_workspace() is None
    with pytest.raises(KeyError):
        with outer:
            raise KeyError("x")
    assert wsmem.current_workspace() is None
    assert not outer.is_open
    assert outer.stats().cycles == 2
    # still usable
    with outer:
        assert float(wsmem.ones(2).sum()) == 2.0
    outer.destroy()
    inner.destroy()


def test_ws_methods_need_open_workspace(ws):
    with pytest.raises(WorkspaceError, match="not open"):
        ws.empty(3)
    with pytest.raises(WorkspaceError):
        ws.zeros(3)
    with ws:
        a = ws.zeros((2, 2), dtype=np.int32)
        assert a.workspace is ws and a.dtype == np.int32
        b = ws.full(3, 4.5)
        assert b.workspace is ws and float(b.sum()) == 13.5


def test_heap_allocation_without_workspace():
    assert wsmem.current_workspace() is None
    a = wsmem.zeros(4)
    assert a.workspace is None and a.generation is None
    assert a.is_valid and not a.is_attached
    assert float(a.sum()) == 0.0


# ------------------------------------------------------------------ destroy

def test_destroy_makes_arrays_stale_and_workspace_unusable():
    ws = wsmem.Workspace("DESTROY")
    with ws:
        wsmem.empty(10)
    with ws:
        a = wsmem.ones(10)
        with pytest.raises(WorkspaceError, match="open"):
            ws.destroy()
        assert a.is_valid
    ws.destroy()
    assert ws.is_destroyed
    assert ws.stats().capacity == 0
    assert not a.is_valid
    with pytest.raises(WorkspaceLeakError, match="destroyed"):
        a.sum()
    with pytest.raises(WorkspaceError, match="destroyed"):
        with ws:
            pass
    assert wsmem.current_workspace() is None
    with pytest.raises(WorkspaceError):
        ws.initialize()
    ws.destroy()  # idempotent
    assert ws.is_destroyed


def test_destroy_keeps_viewed_memory_alive_until_view_dies():
    ws = wsmem.Workspace("DESTROY_VIEW", learning="none", initial_size=1 << 16)
    with ws:
        a = wsmem.full(16, 3.0)
        v = np.asarray(a)
    ws.destroy()
    # the view still reads the bytes it had
    assert (v == 3.0).all()
    assert ws.stats().pinned_bytes == _r(16 * 8, LINE)
    del v
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    assert ws.stats().pages == 0


# ------------------------------------------------------------------ views pin memory

def test_view_keeps_bytes_out_of_reuse(ws):
    with ws:
        wsmem.empty(1024)
    with ws:
        a = wsmem.full(1024, 5.0)
        v = np.asarray(a)
        lo, hi = a.ptr, a.ptr + a.nbytes
    assert ws.stats().pinned_bytes == _r(a.nbytes, LINE)
    leaks = ws.leaks()
    assert len(leaks) == 1
    for _ in range(3):
        with ws:
            b = wsmem.full(1024, -1.0)
            # never overlaps the pinned range
            assert b.ptr >= hi or b.ptr + b.nbytes <= lo
    assert (v == 5.0).all()
    del v
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    with ws:
        c = wsmem.empty(1024)
        assert c.ptr == lo  # the memory is reused again once the view is gone


def test_small_escaped_views_pin_a_line_not_a_page():
    ws = wsmem.Workspace("LINES", learning="none", initial_size=1 << 16)
    kept = []
    n = 200
    for i in range(n):
        with ws:
            small = wsmem.full(2, float(i))          # 16 bytes
            assert small.nbytes == 16
            kept.append(np.asarray(small))
            big = wsmem.full(100, float(-i - 1))     # overwrites whatever it is handed
            big2 = wsmem.empty(50)
            big2.fill(float(1000 + i))
            assert ws.stats().spilled_count == 0
        if i % 50 == 49:
            for j, k in enumerate(kept):
                assert k.tolist() == [float(j), float(j)]
    st = ws.stats()
    assert st.pinned_bytes <= n * LINE
    assert st.capacity == int((1 << 16) * 1.3)
    for j, k in enumerate(kept):
        assert k.tolist() == [float(j), float(j)]
    assert len(ws.leaks()) == n
    del kept, k
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    ws.destroy()


def test_escaped_views_in_default_workspace_do_not_grow_pages():
    ws = wsmem.Workspace("LINES2")
    kept = []
    for i in range(100):
        with ws:
            s = wsmem.full(2, float(i))
            kept.append(np.asarray(s))
            wsmem.full(64, 0.0)
    st = ws.stats()
    # each escaped 16-byte view holds one line, wherever it was allocated
    assert st.pinned_bytes <= 100 * LINE
    assert all(k.tolist() == [float(i), float(i)] for i, k in enumerate(kept))
    del kept
    gc.collect()
    ws.destroy()


# ------------------------------------------------------------------ stats

def test_stats_fields(ws):
    names = {f.name for f in dataclasses.fields(wsmem.WorkspaceStats)}
    for field in ("name", "location", "capacity", "offset", "cycle_bytes",
                  "last_cycle_bytes", "peak_cycle_bytes", "spilled_bytes",
                  "spilled_count", "pinned_bytes", "cycles", "generation", "pages"):
        assert field in names
    st = ws.stats()
    assert isinstance(st, wsmem.WorkspaceStats)
    assert st.name == ws.name
    assert st.location == "host"
    assert (st.capacity, st.offset, st.cycles, st.generation, st.pinned_bytes) == (0, 0, 0, 0, 0)
    with ws:
        wsmem.empty(1000, dtype=np.uint8)
    with ws:
        wsmem.empty(500, dtype=np.uint8)
    st = ws.stats()
    assert st.cycles == 2 and st.generation == 2
    assert st.last_cycle_bytes == _r(500)
    assert st.peak_cycle_bytes == _r(1000)
    assert st.capacity == int(_r(1000) * 1.3)
    assert st.pages == 1
    assert st.spilled_bytes == 0 and st.spilled_count == 0


def test_workspace_name_config_repr():
    cfg = wsmem.WorkspaceConfig(initial_size=4096, learning="none")
    ws = wsmem.Workspace("NAMED", cfg, spill="fail")
    assert ws.name == "NAMED"
    assert ws.config.spill is wsmem.SpillPolicy.FAIL
    assert ws.config.initial_size == 4096
    assert not ws.is_open
    assert "NAMED" in repr(ws)
    with ws:
        assert ws.is_open
    ws.destroy()


def test_bad_names_and_configs():
    with pytest.raises(TypeError):
        wsmem.Workspace("")
    with pytest.raises(TypeError):
        wsmem.Workspace("x", config={"initial_size": 3})
    with pytest.raises(ValueError):
        wsmem.Workspace("x", spill="sometimes")
    with pytest.raises(ValueError):
        wsmem.WorkspaceConfig(min_size=10, max_size=5)
