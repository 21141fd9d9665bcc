"""Debug modes and leak reports (after ND4J's DebugModeTests and the workspace
leak/outdated-pointer checks of its WorkspaceProviderTests)."""
import gc
import os
import numpy as np
import pytest

import wsmem
from wsmem import DebugMode, WorkspaceLeakError

LINE = 64     # pyx/wsmem/_arena.pxd LINE: pins round out to 64-byte lines
ALIGN = 64


def _r(n, a=ALIGN):
    return (n + a - 1) // a * a


def _learned(name, **kw):
    ws = wsmem.Workspace(name, learning="none", initial_size=1 << 16, **kw)
    return ws


# ------------------------------------------------------------------ debug modes

def test_debug_mode_default_disabled():
    assert wsmem.get_debug_mode_name() is DebugMode.DISABLED


def test_spill_everything_spills_every_allocation():
    ws = _learned("SPILL_ALL")
    with ws:
        wsmem.empty(10)
    cap = ws.stats().capacity
    with wsmem.debug_mode("spill_everything") as mode:
        assert mode is DebugMode.SPILL_EVERYTHING
        assert wsmem.get_debug_mode_name() is DebugMode.SPILL_EVERYTHING
        for _ in range(2):
            with ws:
                a = wsmem.full(10, 1.0)
                b = wsmem.ones(100)
                d = ws.zeros(3)
                st = ws.stats()
                assert st.spilled_count == 3
                assert st.spilled_bytes == _r(80) + _r(800) + _r(24)
                assert st.offset == 0                # nothing came from the block
                assert st.spilled_bytes == st.cycle_bytes
                assert float(a.sum() + b.sum() + d.sum()) == 110.0
                for x in (a, b, d):
                    assert x.workspace is ws and x.is_valid
            assert not a.is_valid                    # spilled arrays still go stale
            with pytest.raises(WorkspaceLeakError):
                a.sum()
            assert ws.stats().pages == 1             # spills released at cycle end
    assert wsmem.get_debug_mode_name() is DebugMode.DISABLED
    assert ws.stats().capacity == cap
    with ws:
        wsmem.empty(10)
        assert ws.stats().spilled_count == 0
    ws.destroy()


def test_spill_everything_counts_each_allocation():
    ws = _learned("SPILL_CNT")
    with ws:
        block_lo = wsmem.empty(1).ptr
    with wsmem.debug_mode(DebugMode.SPILL_EVERYTHING):
        with ws:
            arrs = [wsmem.empty(8, dtype=np.uint8) for _ in range(7)]
            st = ws.stats()
            assert st.spilled_count == 7
            assert st.spilled_bytes == 7 * _r(8)
            lo = block_lo
            assert all(not (lo <= a.ptr < lo + st.capacity) for a in arrs)
    ws.destroy()


def test_spill_everything_in_learning_workspace():
    ws = wsmem.Workspace("SPILL_FL")
    with wsmem.debug_mode("spill_everything"):
        for _ in range(3):
            with ws:
                a = wsmem.ones(16)
                assert ws.stats().spilled_count == 1
                assert float(a.sum()) == 16.0
    ws.destroy()


def test_bypass_everything_gives_heap_arrays():
    ws = _learned("BYPASS")
    with wsmem.debug_mode("bypass_everything"):
        assert wsmem.get_debug_mode_name() is DebugMode.BYPASS_EVERYTHING
        with ws:
            assert wsmem.current_workspace() is ws
            a = wsmem.ones(5)
            b = ws.zeros(5)
            c = a + b
            assert a.workspace is None and not a.is_attached
            assert b.workspace is None and c.workspace is None
            assert ws.stats().offset == 0
            assert ws.stats().spilled_count == 0
    assert wsmem.get_debug_mode_name() is DebugMode.DISABLED
    # heap arrays outlive the cycle
    assert a.is_valid and c.is_valid
    assert float(c.sum()) == 5.0
    with ws:
        d = wsmem.ones(5)
        assert d.workspace is ws
    ws.destroy()


def test_debug_mode_restored_on_exception_and_nesting():
    with pytest.raises(RuntimeError):
        with wsmem.debug_mode("spill_everything"):
            with wsmem.debug_mode("bypass_everything"):
                assert wsmem.get_debug_mode_name() is DebugMode.BYPASS_EVERYTHING
            assert wsmem.get_debug_mode_name() is DebugMode.SPILL_EVERYTHING
            raise RuntimeError
    assert wsmem.get_debug_mode_name() is DebugMode.DISABLED
    with pytest.raises(ValueError):
        wsmem.debug_mode("sometimes")


# ------------------------------------------------------------------ leaks()

def test_leaks_lists_views_from_earlier_cycles():
    ws = _learned("LEAKS")
    assert ws.leaks() == []
    with ws:
        a = wsmem.zeros((3, 5), dtype=np.float32)      # 60 bytes
        va = np.asarray(a)
        assert ws.leaks() == []                        # its cycle is still open
        g1 = a.generation
    with ws:
        b = wsmem.zeros(100, dtype=np.int16)           # 200 bytes
        vb = np.asarray(b)
        g2 = b.generation
        leaks = ws.leaks()
        assert len(leaks) == 1 and leaks[0].generation == g1   # vb is current
    leaks = ws.leaks()
    assert [l.generation for l in leaks] == [g1, g2]
    la, lb = leaks
    assert isinstance(la, wsmem.LeakInfo)
    assert la.shape == (3, 5) and la.dtype == np.float32
    assert lb.shape == (100,) and lb.dtype == np.int16
    assert la.nbytes == _r(60, LINE) and lb.nbytes == _r(200, LINE)
    assert la.traceback is None                        # tracking off
    text = la.format()
    assert "(3, 5)" in text and "float32" in text and f"generation {g1}" in text
    assert "track" in text                             # tells how to get the site
    del va
    gc.collect()
    assert [l.generation for l in ws.leaks()] == [g2]
    del vb
    gc.collect()
    assert ws.leaks() == []
    ws.destroy()


def test_leaks_of_sliced_view():
    ws = _learned("LEAKS_SLICE")
    with ws:
        a = wsmem.zeros(1024)
        v = np.asarray(a[10:20])
    (leak,) = ws.leaks()
    assert leak.shape == (10,)
    assert leak.nbytes <= _r(80, LINE) + LINE
    assert ws.stats().pinned_bytes == leak.nbytes
    del v
    gc.collect()
    ws.destroy()


def _allocate_and_escape(ws):
    with ws:
        a = wsmem.ones(4)  # ALLOC-LINE
        return np.asarray(a)


def _alloc_line():
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith("# ALLOC-LINE"):
                return i
    raise AssertionError("marker not found")


def _check_traceback(ws):
    v = _allocate_and_escape(ws)
    try:
        (leak,) = ws.leaks()
        tb = leak.traceback
        assert tb is not None
        last = tb[-1]
        assert os.path.samefile(last.filename, __file__)
        assert last.lineno == _alloc_line()
        assert last.name == "_allocate_and_escape"
        text = leak.format()              # LeakInfo.format() renders the traceback
        assert "_allocate_and_escape" in text and "allocated at" in text
    finally:
        del v
        gc.collect()


def test_track_records_allocation_site():
    ws = _learned("TRACK", track=True)
    _check_traceback(ws)
    ws.destroy()


def test_wsmem_track_env(monkeypatch):
    monkeypatch.setenv("WSMEM_TRACK", "1")
    ws = _learned("TRACK_ENV")
    assert ws.config.track is False
    _check_traceback(ws)
    ws.destroy()


def test_array_traceback_attribute_points_at_allocation():
    ws = _learned("TRACK_ATTR", track=True)
    with ws:
        a = wsmem.empty(3); line = _lineno()  # noqa: E702
        tb = a.traceback
        assert tb is not None and len(tb) > 0
        assert tb[-1].lineno == line
        assert tb[-1].name == "test_array_traceback_attribute_points_at_allocation"
    ws.destroy()


def _lineno():
    import sys
    return sys._getframe(1).f_lineno


def test_no_traceback_without_tracking(monkeypatch):
    monkeypatch.delenv("WSMEM_TRACK", raising=False)
    ws = _learned("NOTRACK")
    with ws:
        a = wsmem.empty(3)
        assert a.traceback is None
    ws.destroy()


# ------------------------------------------------------------------ stale message

def test_stale_messages_name_workspace_and_generations():
    ws = _learned("MSGS")
    with ws:
        a = wsmem.ones(3)
    with pytest.raises(WorkspaceLeakError) as leaked:
        float(a.sum())
    m = str(leaked.value)
    assert "MSGS" in m and "leaked" in m and "generation 1" in m
    with ws:
        with pytest.raises(WorkspaceLeakError) as outdated:
            a[0] = 3.0
    m = str(outdated.value)
    assert "MSGS" in m and "outdated" in m
    assert "generation 1" in m and "generation 2" in m
    assert "leverage_to" in m or "detach" in m
    ws.destroy()
