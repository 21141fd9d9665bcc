"""Learning and allocation policies (after ND4J's BasicWorkspaceTests testMinSize1,
testScope2, testOverallocation*, testToggle/over-time tests and SpecialWorkspaceTests)."""
import numpy as np
import pytest

import wsmem
from wsmem import AllocationPolicy, LearningPolicy

ALIGN = 64


def _r(n, a=ALIGN):
    return (n + a - 1) // a * a


def _cycle(ws, nbytes_list):
    with ws:
        for n in nbytes_list:
            wsmem.empty(n, dtype=np.uint8)


# ------------------------------------------------------------------ first_loop

@pytest.mark.parametrize("over", [0.0, 0.3, 1.0])
def test_first_loop_learns_peak_times_overallocation(over):
    ws = wsmem.Workspace("FL", overallocation_limit=over)
    assert ws.stats().capacity == 0
    assert not ws.stats().initialized
    with ws:
        a = wsmem.empty(1000, dtype=np.uint8)
        b = wsmem.empty(3000, dtype=np.uint8)
        # before learning everything spills
        st = ws.stats()
        assert st.capacity == 0
        assert st.spilled_count == 2
        assert st.spilled_bytes == _r(1000) + _r(3000)
        assert a.workspace is ws and b.workspace is ws
    peak = _r(1000) + _r(3000)
    st = ws.stats()
    assert st.peak_cycle_bytes == peak
    assert st.capacity == int(peak * (1 + over))
    assert st.initialized
    with ws:
        wsmem.empty(1000, dtype=np.uint8)
        wsmem.empty(3000, dtype=np.uint8)
        assert ws.stats().spilled_count == 0
        assert ws.stats().offset == peak
    assert ws.stats().capacity == int(peak * (1 + over))
    ws.destroy()


def test_first_loop_strict_learns_exact_peak():
    ws = wsmem.Workspace("FLS", allocation="strict", overallocation_limit=0.5)
    _cycle(ws, [4096, 100])
    assert ws.stats().capacity == 4096 + _r(100)
    # learning happens once: a bigger later cycle spills (external) and does not grow
    _cycle(ws, [4096, 100, 8192])
    st = ws.stats()
    assert st.capacity == 4096 + _r(100)
    assert st.spilled_count == 1 and st.spilled_bytes == 8192
    assert st.peak_cycle_bytes == 4096 + _r(100) + 8192
    ws.destroy()


def test_first_loop_min_size():
    # ND4J testMinSize1: capacity 0 during the first loop, min_size after it
    ws = wsmem.Workspace("MIN", min_size=10 << 20, overallocation_limit=1.0)
    with ws:
        wsmem.empty(100)
        assert ws.stats().capacity == 0
    assert ws.stats().capacity == 10 << 20
    with ws:
        wsmem.empty(100)
        assert ws.stats().capacity == 10 << 20
        assert ws.stats().spilled_count == 0
    ws.destroy()


def test_first_loop_peak_above_min_size_wins():
    ws = wsmem.Workspace("MIN2", min_size=1024, allocation="strict")
    _cycle(ws, [8000])
    assert ws.stats().capacity == _r(8000)
    ws.destroy()


def test_first_loop_capped_by_max_size():
    ws = wsmem.Workspace("MAX", max_size=10000, overallocation_limit=1.0)
    _cycle(ws, [8000])                       # 8000 * 2 = 16000 > max_size
    assert ws.stats().capacity == 10000
    ws.destroy()


def test_first_loop_with_min_and_max():
    ws = wsmem.Workspace("MINMAX", min_size=4096, max_size=8192, overallocation_limit=0.3)
    _cycle(ws, [100])
    assert ws.stats().capacity == 4096
    ws.destroy()


def test_first_loop_learned_block_is_used_after_scope2_style_loop():
    # ND4J testScope2: first loop has no block; second loop allocates from it
    ws = wsmem.Workspace("SCOPE2", allocation="strict")
    with ws:
        a = wsmem.empty(100, dtype=np.float64)
        assert ws.stats().capacity == 0
        assert a.is_valid
    with ws:
        a = wsmem.empty(100, dtype=np.float64)
        assert ws.stats().offset == _r(800)
        assert ws.stats().capacity == _r(800)
        assert a.is_valid
    assert not a.is_valid
    ws.destroy()


# ------------------------------------------------------------------ over_time

def test_over_time_learns_after_cycles_before_init():
    ws = wsmem.Workspace("OT", learning="over_time", cycles_before_init=3,
                         allocation="strict")
    sizes = [1000, 5000, 2000]
    for i, n in enumerate(sizes[:-1]):
        _cycle(ws, [n])
        assert ws.stats().capacity == 0, f"learned too early, after cycle {i + 1}"
        assert not ws.stats().initialized
    _cycle(ws, [sizes[-1]])
    st = ws.stats()
    assert st.initialized
    assert st.capacity == _r(max(sizes))   # peak over the measured cycles
    _cycle(ws, [5000])
    assert ws.stats().spilled_count == 0
    ws.destroy()


def test_over_time_overallocates():
    ws = wsmem.Workspace("OT2", learning="over_time", cycles_before_init=2,
                         overallocation_limit=0.5)
    _cycle(ws, [640])
    assert ws.stats().capacity == 0
    _cycle(ws, [1280])
    assert ws.stats().capacity == int(1280 * 1.5)
    ws.destroy()


def test_over_time_initialize_forces_learning():
    ws = wsmem.Workspace("OT3", learning="over_time", cycles_before_init=100,
                         allocation="strict")
    _cycle(ws, [3000])
    _cycle(ws, [6400])
    assert ws.stats().capacity == 0
    ws.initialize()
    st = ws.stats()
    assert st.initialized
    assert st.capacity == 6400
    with ws:
        wsmem.empty(6400, dtype=np.uint8)
        assert ws.stats().spilled_count == 0
    ws.destroy()


def test_over_time_initialize_while_open_applies_at_cycle_end():
    ws = wsmem.Workspace("OT4", learning="over_time", cycles_before_init=100,
                         allocation="strict")
    with ws:
        wsmem.empty(4096, dtype=np.uint8)
        ws.initialize()
        assert ws.stats().capacity == 0      # not while the cycle is open
    assert ws.stats().capacity == 4096
    assert ws.stats().initialized
    ws.destroy()


# ------------------------------------------------------------------ none

def test_learning_none_uses_initial_size_only_strict():
    ws = wsmem.Workspace("NONE", learning="none", initial_size=8192, allocation="strict")
    assert ws.stats().capacity == 8192
    assert ws.stats().initialized
    for _ in range(3):
        _cycle(ws, [4096, 8192])            # 12288 > 8192: spills, never learns
        st = ws.stats()
        assert st.capacity == 8192
        assert st.spilled_count == 1
    ws.destroy()


def test_learning_none_overallocate_adds_limit_to_initial_size():
    ws = wsmem.Workspace("NONE_OA", learning="none", initial_size=10000,
                         allocation="overallocate", overallocation_limit=0.5)
    assert ws.stats().capacity == 15000
    with ws:
        wsmem.empty(14000, dtype=np.uint8)
        assert ws.stats().spilled_count == 0
    assert ws.stats().capacity == 15000
    ws.destroy()


def test_overallocated_initial_size_capped_by_max_size():
    ws = wsmem.Workspace("NONE_CAP", learning="none", initial_size=10000,
                         max_size=12000, overallocation_limit=0.5)
    assert ws.stats().capacity == 12000
    ws.destroy()


def test_learning_none_zero_initial_size_always_spills():
    # capture=False: counts explicit allocations only (a.sum()'s 0-d result
    # would be a second, captured, spill).
    ws = wsmem.Workspace("NONE0", learning="none", capture=False)
    for _ in range(3):
        with ws:
            a = wsmem.ones(10)
            assert float(a.sum()) == 10.0
            assert ws.stats().spilled_count == 1
        assert ws.stats().capacity == 0
    ws.destroy()


def test_first_loop_with_initial_size_keeps_it_before_learning():
    ws = wsmem.Workspace("FL_INIT", initial_size=4096, allocation="strict")
    assert ws.stats().capacity == 4096
    with ws:
        wsmem.empty(1024, dtype=np.uint8)
        assert ws.stats().spilled_count == 0
    ws.destroy()


# ------------------------------------------------------------------ enums

def test_enums_and_strings_are_equivalent():
    a = wsmem.WorkspaceConfig(learning=LearningPolicy.OVER_TIME,
                              allocation=AllocationPolicy.STRICT)
    b = wsmem.WorkspaceConfig(learning="over_time", allocation="STRICT")
    assert a == b
    assert b.learning is LearningPolicy.OVER_TIME
    assert b.allocation is AllocationPolicy.STRICT


def test_peak_and_last_cycle_bytes_track_cycles():
    ws = wsmem.Workspace("PEAK", allocation="strict")
    _cycle(ws, [640])
    _cycle(ws, [128])
    _cycle(ws, [1280])        # spills beyond the learned 640
    _cycle(ws, [64])
    st = ws.stats()
    assert st.last_cycle_bytes == 64
    assert st.peak_cycle_bytes == 1280
    assert st.cycles == 4
    ws.destroy()
