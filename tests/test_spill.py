"""Spill policies and max_size (after ND4J's WorkspaceProviderTests testReallocate*,
BasicWorkspaceTests testSpill*/testMaxSize and SpecialWorkspaceTests)."""
import gc
import re
import warnings

import numpy as np
import pytest

import wsmem
from wsmem import SpillPolicy, WorkspaceError, WorkspaceLeakError, WorkspaceOverflowError

ALIGN = 64
LINE = 64     # pyx/wsmem/_arena.pxd LINE: pins round out to 64-byte lines


def _r(n, a=ALIGN):
    return (n + a - 1) // a * a


def _fixed(name, size=4096, **kw):
    kw.setdefault("allocation", "strict")
    return wsmem.Workspace(name, learning="none", initial_size=size, **kw)


# ------------------------------------------------------------------ external

def test_external_spill_counts_and_is_released_at_cycle_end():
    ws = _fixed("EXT")
    assert ws.stats().pages == 1
    for _ in range(3):
        with ws:
            a = wsmem.full(256, 1.0)              # 2048 bytes in the block
            b = wsmem.full(512, 2.0)              # 4096 more: does not fit -> spill
            c = wsmem.full(4, 3.0)                # fits in the block again
            st = ws.stats()
            assert st.spilled_count == 1
            assert st.spilled_bytes == 4096
            assert st.cycle_bytes == 2048 + 4096 + _r(32)
            assert st.pages == 2                  # block + one spill
            assert b.workspace is ws and b.is_valid
            block = range(a.ptr, a.ptr + 4096)
            assert a.ptr in block and c.ptr in block
            assert b.ptr not in block
            assert float(a.sum() + b.sum() + c.sum()) == 256 + 1024 + 12
        st = ws.stats()
        # the last cycle is still described after it closed ...
        assert st.spilled_count == 1 and st.spilled_bytes == 4096
        # ... but its spill memory is gone
        assert st.pages == 1
        assert st.capacity == 4096               # external never grows the block
        assert not b.is_valid
        with pytest.raises(WorkspaceLeakError):
            b.sum()
    ws.destroy()


def test_external_spill_of_large_array_released():
    ws = _fixed("EXT_BIG")
    with ws:
        big = wsmem.zeros(1 << 17)              # 1 MiB: an mmap'd spill
        big[:] = 7.0
        assert float(big[-1]) == 7.0
        assert ws.stats().spilled_bytes == 1 << 20
    assert ws.stats().pages == 1
    with ws:
        assert ws.stats().spilled_bytes == 0 and ws.stats().spilled_count == 0
    ws.destroy()


def test_view_of_spill_keeps_spill_alive_until_view_dies():
    ws = _fixed("EXT_VIEW")
    with ws:
        wsmem.empty(512)                        # fills the block
        s = wsmem.full(8, 9.0)                  # spilled
        assert ws.stats().spilled_count == 1
        v = np.asarray(s)
    st = ws.stats()
    assert st.pages == 2
    assert st.pinned_bytes == LINE
    assert (v == 9.0).all()
    del v
    gc.collect()
    st = ws.stats()
    assert st.pages == 1 and st.pinned_bytes == 0
    ws.destroy()


# ------------------------------------------------------------------ reallocate

def test_reallocate_grows_block_to_new_peak():
    ws = _fixed("REALLOC", spill="reallocate")
    with ws:
        wsmem.empty(4096, dtype=np.uint8)
        wsmem.empty(8192, dtype=np.uint8)       # spills
        assert ws.stats().spilled_count == 1
        assert ws.stats().capacity == 4096      # grows only at the end of the cycle
    st = ws.stats()
    assert st.capacity == 4096 + 8192
    assert st.pages == 1
    with ws:
        a = wsmem.empty(4096, dtype=np.uint8)
        b = wsmem.empty(8192, dtype=np.uint8)
        assert ws.stats().spilled_count == 0
        assert b.ptr - a.ptr == 4096
    # a smaller cycle never shrinks it
    with ws:
        wsmem.empty(64, dtype=np.uint8)
    assert ws.stats().capacity == 4096 + 8192
    ws.destroy()


def test_reallocate_overallocate_grows_with_limit():
    ws = wsmem.Workspace("REALLOC_OA", learning="none", initial_size=1000,
                         overallocation_limit=0.5, spill="reallocate")
    assert ws.stats().capacity == 1500
    with ws:
        wsmem.empty(2000, dtype=np.uint8)
    # at least the new peak, and (overallocate) the limit on top of it
    assert ws.stats().capacity == int(_r(2000) * 1.5)
    ws.destroy()


def test_reallocate_capped_by_max_size():
    ws = _fixed("REALLOC_MAX", spill="reallocate", max_size=10000)
    with ws:
        wsmem.empty(4096, dtype=np.uint8)
        wsmem.empty(4096, dtype=np.uint8)
    assert ws.stats().capacity == 8192
    ws.destroy()


def test_reallocate_while_view_pins_old_block():
    ws = _fixed("REALLOC_PIN", spill="reallocate")
    with ws:
        a = wsmem.full(8, 4.0)
        v = np.asarray(a)
        wsmem.empty(8192, dtype=np.uint8)       # spills -> grow at cycle end
    # grows to the cycle's bytes plus what is still pinned for the next cycle (v's line)
    assert ws.stats().capacity == _r(64) + 8192 + LINE
    with ws:
        b = wsmem.full(1024, -1.0)              # 8192 bytes: fits the new block
        assert ws.stats().spilled_count == 0
    assert (v == 4.0).all()
    del v
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    assert ws.stats().pages == 1
    ws.destroy()


# ------------------------------------------------------------------ fail

def test_fail_raises_and_workspace_stays_usable():
    # Explicit allocations only: with capture, a.sum()'s 0-d result would also
    # need block memory (tests/test_capture.py covers that case).
    ws = _fixed("FAIL", spill=SpillPolicy.FAIL, capture=False)
    for _ in range(2):
        with ws:
            a = wsmem.full(256, 1.0)             # 2048 of 4096
            with pytest.raises(WorkspaceOverflowError) as ei:
                wsmem.empty(1024)                # 8192: does not fit
            err = ei.value
            assert isinstance(err, MemoryError) and isinstance(err, WorkspaceError)
            assert isinstance(err.stats, wsmem.WorkspaceStats)
            assert err.stats.name == "FAIL"
            assert err.stats.capacity == 4096
            assert "FAIL" in str(err)
            assert "initial_size" in str(err) or "spill" in str(err)   # what to do next
            # the workspace is unharmed
            st = ws.stats()
            assert st.spilled_count == 0
            assert st.offset == 2048
            b = wsmem.full(256, 2.0)             # the rest still fits
            assert float(a.sum() + b.sum()) == 256 * 3
        assert ws.stats().cycles >= 1
    with ws:
        assert float(wsmem.ones(4).sum()) == 4.0
    ws.destroy()


def test_fail_policy_still_learns_in_first_loop():
    ws = wsmem.Workspace("FAIL_FL", spill="fail", allocation="strict")
    with ws:
        wsmem.empty(1000, dtype=np.uint8)        # learning: may spill
    assert ws.stats().capacity == _r(1000)
    with ws:
        wsmem.empty(1000, dtype=np.uint8)
        with pytest.raises(WorkspaceOverflowError):
            wsmem.empty(1, dtype=np.uint8)
    ws.destroy()


def test_ws_method_raises_overflow_too():
    ws = _fixed("FAIL_M", spill="fail")
    with ws:
        with pytest.raises(WorkspaceOverflowError):
            ws.zeros(4097, dtype=np.uint8)
        assert ws.zeros(4096, dtype=np.uint8).nbytes == 4096
    ws.destroy()


# ------------------------------------------------------------------ max_size

def test_max_size_bounds_block_plus_spills():
    ws = _fixed("MAXSZ", size=4096, max_size=8192)
    with ws:
        a = wsmem.empty(4096, dtype=np.uint8)            # the block
        b = wsmem.empty(4096, dtype=np.uint8)            # spill, total 8192
        assert ws.stats().spilled_bytes == 4096
        with pytest.raises(WorkspaceOverflowError) as ei:
            wsmem.empty(64, dtype=np.uint8)              # would exceed max_size
        assert "max_size" in str(ei.value)
        assert ei.value.stats is not None and ei.value.stats.spilled_bytes == 4096
        assert a.is_valid and b.is_valid
    with ws:
        c = wsmem.zeros(512)
        assert float(c.sum()) == 0.0
    ws.destroy()


def test_max_size_during_first_loop():
    ws = wsmem.Workspace("MAXFL", max_size=4096)
    with ws:
        wsmem.empty(4096, dtype=np.uint8)
        with pytest.raises(WorkspaceOverflowError):
            wsmem.empty(1, dtype=np.uint8)
    assert ws.stats().capacity == 4096
    ws.destroy()


def test_max_size_with_reallocate_never_exceeded():
    ws = _fixed("MAXRE", size=2048, max_size=4096, spill="reallocate")
    with ws:
        wsmem.empty(2048, dtype=np.uint8)
        wsmem.empty(2048, dtype=np.uint8)
        with pytest.raises(WorkspaceOverflowError):
            wsmem.empty(2048, dtype=np.uint8)
    assert ws.stats().capacity <= 4096
    ws.destroy()


def test_config_rejects_initial_above_max():
    with pytest.raises(ValueError, match="max_size"):
        wsmem.WorkspaceConfig(initial_size=10, max_size=5)
    with pytest.raises(ValueError):
        wsmem.WorkspaceConfig(initial_size=-1)
    with pytest.raises(TypeError):
        wsmem.WorkspaceConfig(initial_size=1.5)


# ------------------------------------------------------------------ recurring spills

KiB = 1024


def _batches(ws, rows_seq, cols=128):
    """One cycle per batch size: a small variable-length batch step (float64)."""
    w = np.ones((cols, cols))
    for rows in rows_seq:
        with ws:
            x = np.ones((rows, cols))
            h = np.maximum(x @ w, 0)
            s = float((h * 2 + 1).sum())
        assert s == rows * cols * (2 * cols + 1)


def _perf(caught):
    return [w for w in caught if issubclass(w.category, wsmem.PerformanceWarning)]


def test_recurring_external_spills_warn_once_with_what_to_do():
    # The first batch (64 rows) teaches the block; most later ones are bigger
    # (2048 rows: 2 MiB arrays) and spill 2 MiB and more every cycle.
    ws = wsmem.Workspace("VARBATCH")
    with pytest.warns(wsmem.PerformanceWarning) as caught:
        _batches(ws, [64] + [2048, 64] * 12)
    assert len(_perf(caught)) == 1
    msg = str(_perf(caught)[0].message)
    assert "'VARBATCH'" in msg and "8 of its last 16 cycles" in msg
    assert "learned from its first cycle" in msg
    assert "spill='reallocate'" in msg and "learning='over_time'" in msg
    suggested = int(re.search(r"min_size=(\d+)", msg).group(1))
    assert suggested >= ws.stats().peak_cycle_bytes   # the largest cycle, plus what was pinned
    # once per workspace: more spilling cycles say nothing more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _batches(ws, [2048] * 20)
    # the advice works: that min_size holds every batch, no spill, no warning
    ws2 = wsmem.Workspace("VARBATCH_SIZED", min_size=suggested)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _batches(ws2, [64] + [2048, 64] * 12)
    # (the first cycle is the learning one: it spills by design)
    assert max(ws2.history().spilled_count[1:]) == 0 and ws2.stats().capacity >= suggested
    ws.destroy()
    ws2.destroy()


@pytest.mark.parametrize("case", ["reallocate", "rare", "small", "learning_cycles",
                                  "spill_everything"])
def test_no_spill_warning_where_spills_are_cheap_or_rare(case):
    kw = {"spill": "reallocate"} if case == "reallocate" else {}
    if case == "learning_cycles":
        kw = {"learning": "over_time", "cycles_before_init": 30}
    ws = wsmem.Workspace(f"QUIET_{case}", **kw)
    seq = [64] + [2048, 64] * 12                   # spills 2 MiB in every other cycle
    if case == "rare":
        seq = [64] + [2048, 64, 64] * 12           # 1 cycle in 3: at most 6 of 16
    elif case == "small":
        seq = [8] + [96, 8] * 12                   # spills under 256 KiB: heap memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if case == "spill_everything":
            with wsmem.debug_mode("spill_everything"):
                _batches(ws, seq)
        else:
            _batches(ws, seq)
    spilled = ws.history().spilled_count
    if case in ("rare", "small"):
        assert max(spilled[1:]) > 0                # it did spill: the warning chose not to
    ws.destroy()


def test_spill_warning_as_error_leaves_the_cycle_closed():
    ws = wsmem.Workspace("VARBATCH_ERR")
    with warnings.catch_warnings():
        warnings.simplefilter("error", wsmem.PerformanceWarning)
        with pytest.raises(wsmem.PerformanceWarning):
            _batches(ws, [64] + [2048, 64] * 12)
        # the cycle that raised did end: not open, its spill released, usable again
        st = ws.stats()
        assert not st.is_open and wsmem.current_workspace() is None
        assert st.pages == 1
        _batches(ws, [2048, 64] * 4)               # warned once already: no error now
    ws.destroy()
