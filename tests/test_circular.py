"""Circular workspaces (reset="endofbuffer_reached"): a ring that wraps at its
end, stale arrays once written over, pins the ring goes around, growth."""
import gc
import random
import threading

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceLeakError


def _ring(name, size=4096, **kw):
    kw.setdefault("capture", False)     # count only the items themselves
    return wsmem.Workspace(name, reset="endofbuffer_reached", learning="none",
                           initial_size=size, allocation="strict", **kw)


def _items(n, elems=128):
    return [np.full(elems, float(i)) for i in range(n)]


def test_config_rules():
    with pytest.raises(ValueError, match="learning='none' and initial_size > 0"):
        wsmem.WorkspaceConfig(reset="endofbuffer_reached")
    with pytest.raises(ValueError, match="learning='none' and initial_size > 0"):
        wsmem.WorkspaceConfig(reset="endofbuffer_reached", learning="none")
    with pytest.raises(ValueError, match="cannot be file-backed"):
        wsmem.WorkspaceConfig(reset="endofbuffer_reached", learning="none",
                              initial_size=4096, location="mmap")


def test_ring_holds_items_until_written_over():
    ring = _ring("RING_HOLD")
    src = _items(12)
    got = []
    for i in range(12):
        with ring:
            got.append(ring.asarray(src[i]))        # 1 KiB each: 4 fit
        # cycles do not reset a ring: the last 4 items are valid, older ones are not
        assert [a.is_valid for a in got] == [j > i - 4 for j in range(i + 1)]
    for j, a in enumerate(got):
        if a.is_valid:
            assert a.tolist() == src[j].tolist()
        else:
            with pytest.raises(WorkspaceLeakError, match="circular workspace"):
                a.sum()
            with pytest.raises(WorkspaceLeakError):
                np.asarray(a)
    del got
    ring.destroy()


def test_offset_is_kept_between_cycles():
    ring = _ring("RING_OFF")
    src = _items(2)
    with ring:
        ring.asarray(src[0])
    off = ring.stats().offset
    assert off == 1024
    with ring:
        ring.asarray(src[1])
    assert ring.stats().offset == 2048
    ring.destroy()


def test_pinned_view_ahead_of_the_cursor_is_never_overwritten():
    ring = _ring("RING_PIN")
    src = _items(40)
    got = []
    for i in range(6):
        with ring:
            got.append(ring.asarray(src[i]))
    # got[3] is from the previous lap, ahead of the cursor, still valid
    assert got[3].is_valid
    v = np.asarray(got[3])
    for i in range(6, 40):
        with ring:
            b = ring.asarray(src[i])
        assert v.tolist() == [3.0] * 128, f"pinned bytes changed at item {i}"
        assert b.tolist() == src[i].tolist()
        # never written over while its export lives: still valid, however often
        # the ring wrapped around it
        assert got[3].is_valid and got[3].tolist() == [3.0] * 128
    assert ring.stats().pinned_bytes == 1024
    assert ring.leaks() == []           # pinned, but nothing stale is held
    del v
    gc.collect()
    for i in range(6, 12):              # without the pin the ring comes over it
        with ring:
            b = ring.asarray(src[i])
    assert not got[3].is_valid
    assert ring.stats().pinned_bytes == 0 and ring.leaks() == []
    del got, b
    ring.destroy()


def test_leaks_lists_exports_of_expired_ring_arrays():
    ring = _ring("RING_LEAK", size=1 << 16)
    src = _items(3)
    with ring:
        got = [ring.asarray(s) for s in src]
    v = np.asarray(got[0])
    ring._expire_before(got[2])         # expired: stale although its bytes are pinned
    assert not got[0].is_valid
    leaks = ring.leaks()
    assert len(leaks) == 1 and leaks[0].nbytes == 1024 and leaks[0].shape == (128,)
    assert v.tolist() == [0.0] * 128    # the export itself stays readable and intact
    del v, got
    gc.collect()
    assert ring.leaks() == [] and ring.stats().pinned_bytes == 0
    ring.destroy()


def test_growth_keeps_earlier_items_valid():
    ring = _ring("RING_GROW")
    src = _items(6)
    got = []
    for i in range(6):
        with ring:
            got.append(ring.asarray(src[i]))
    before = [a.is_valid for a in got]
    with ring:
        big = ring.asarray(np.arange(2000.0))       # 16 KB: does not fit, the ring grows
    assert ring.stats().capacity > 16000
    assert [a.is_valid for a in got] == before      # the old ring is frozen, not reused
    for j, a in enumerate(got):
        if a.is_valid:
            assert a.tolist() == src[j].tolist()
    assert big.tolist() == list(np.arange(2000.0))
    assert ring.stats().pages == 2                  # old ring retained meanwhile
    # after the new ring has wrapped twice the old one is released
    for i in range(100):
        with ring:
            ring.asarray(src[i % 6])
    assert ring.stats().pages == 1
    assert not any(a.is_valid for a in got)
    del got
    ring.destroy()


def test_expire_before():
    ring = _ring("RING_EXP", size=1 << 16)
    src = _items(5)
    with ring:
        got = [ring.asarray(s) for s in src]
    ring._expire_before(got[3])
    assert [a.is_valid for a in got] == [False, False, False, True, True]
    ring._expire_before(got[1])                    # the floor never moves back
    assert [a.is_valid for a in got] == [False, False, False, True, True]
    with pytest.raises(wsmem.WorkspaceError, match="not circular"):
        wsmem.Workspace("SCOPED")._expire_before(got[3])
    ring.destroy()


def test_ring_arrays_are_read_from_another_thread():
    ring = _ring("RING_THR", size=1 << 16)
    src = _items(3)
    with ring:
        got = [ring.asarray(s) for s in src]
    seen = []
    t = threading.Thread(target=lambda: seen.extend(float(a.sum()) for a in got))
    t.start()
    t.join()
    assert seen == [0.0, 128.0, 256.0]
    del got
    ring.destroy()


def test_destroy_makes_ring_arrays_stale():
    ring = _ring("RING_DESTROY")
    with ring:
        a = ring.asarray(np.ones(4))
    ring.destroy()
    assert not a.is_valid
    with pytest.raises(WorkspaceLeakError):
        a.sum()


def test_max_size_bounds_growth():
    ring = _ring("RING_MAX", size=4096, max_size=8192)
    with ring:
        with pytest.raises(wsmem.WorkspaceOverflowError, match="max_size"):
            ring.asarray(np.ones(2048))             # 16 KB > max_size
        a = ring.asarray(np.ones(8))                # still usable
        assert float(a.sum()) == 8.0
    ring.destroy()


def _random_program(ring, rng):
    live = []        # (WsArray, expected values)
    exports = []     # (ndarray view, expected values)
    for step in range(300):
        n = rng.choice([8, 64, 128, 300, 1000, 3000])
        val = np.arange(n, dtype=np.float64) + step * 10000.0
        with ring:
            a = ring.asarray(val)
        live.append((a, val))
        r = rng.random()
        if r < 0.15:
            k = rng.randrange(len(live))
            if live[k][0].is_valid:
                exports.append((np.asarray(live[k][0]), live[k][1]))
        elif r < 0.25 and exports:
            exports.pop(rng.randrange(len(exports)))
        elif r < 0.3 and len(live) > 3:
            ring._expire_before(live[-3][0])
        for arr, want in live[-40:]:
            if arr.is_valid:
                assert (arr.numpy() == want).all(), f"valid array changed (step {step})"
        for view, want in exports:
            assert (view == want).all(), f"pinned export changed (step {step})"
        live = [(x, w) for x, w in live if x.is_valid][-60:]
    return len(exports)


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_keep_every_valid_byte(seed):
    # Model test: random item sizes (growth), exports kept for a while, and
    # expiry.  After every step, every array that says it is valid and every
    # live export holds exactly the bytes written into it.
    rng = random.Random(seed)
    ring = _ring(f"RING_MODEL{seed}", size=rng.choice([2048, 4096, 16384]))
    _random_program(ring, rng)
    gc.collect()
    assert ring.stats().pinned_bytes == 0       # every export died with the program
    ring.destroy()


def _ring_wrapped_at_b(name):
    """A 2 KiB ring holding a (written over), b and c, the cursor at b."""
    ring = _ring(name, size=2048)
    ring.__enter__()
    a = ring.asarray(np.arange(108.0))             # 864 B at 0
    b = ring.asarray(np.arange(108.0) + 1000)      # 864 B at 896
    c = ring.asarray(np.arange(108.0) + 2000)      # wraps: at 0 (a is gone)
    assert not a.is_valid and b.is_valid and c.is_valid
    return ring, a, b, c


def test_leverage_into_own_ring_over_the_source():
    # Regression (found by the state machine): leverage_to allocated the
    # destination before pinning the source, so a destination placed over the
    # source (the next slot of the ring's lap) made the copy raise
    # WorkspaceLeakError on a valid array.
    ring, a, b, c = _ring_wrapped_at_b("RING_LEV")
    try:
        d = b.leverage_to(ring)                        # the cursor is at b
        # the ring went around b (pinned for the copy); passed by, b expires
        # as ring items do, but its bytes reached d intact
        assert d.is_valid and d.ptr != b.ptr
        assert d.tolist() == (np.arange(108.0) + 1000).tolist()
    finally:
        ring.__exit__(None, None, None)
    del a, b, c, d
    ring.destroy()


def test_ufunc_result_in_own_ring_over_the_input():
    # Regression (found by the state machine): a WsArray ufunc allocated its
    # output before taking (pinned) views of its inputs, so an output placed
    # over the input (the ring wrapping) made -b raise WorkspaceLeakError on
    # a valid array.
    ring, a, b, c = _ring_wrapped_at_b("RING_UFUNC")
    try:
        d = -b                                         # the cursor is at b
        assert d.is_valid and d.ptr != b.ptr
        assert d.tolist() == (-(np.arange(108.0) + 1000)).tolist()
    finally:
        ring.__exit__(None, None, None)
    del a, b, c, d
    ring.destroy()
