"""set_gc_window / toggle_periodic_gc (ND4J's MemoryManager.setAutoGcWindow and
togglePeriodicGc): Python's cyclic GC runs at workspace cycle ends, at most once
per window, in whichever thread closes the cycle."""
import gc
import threading
import time
import weakref

import pytest

import wsmem
from wsmem import _gc


@pytest.fixture(autouse=True)
def _restore_gc():
    """Whatever a test does, Python's collector ends as it started, hook removed."""
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    yield
    wsmem.toggle_periodic_gc(True)
    gc.set_threshold(*thresholds)
    if not was_enabled:
        gc.disable()
    assert _gc.gc_window_ms() is None


class FakeClock:
    """Stands in for time.monotonic_ns."""

    def __init__(self):
        self.t = 10**12

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t += round(ms * 1_000_000)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(_gc, "_clock", c)
    return c


@pytest.fixture
def full_collections():
    """Counts full (generation 2) collections started while the test runs."""
    events = []

    def cb(phase, info):
        if phase == "start":
            events.append((info["generation"], threading.get_ident()))

    gc.callbacks.append(cb)
    yield events
    gc.callbacks.remove(cb)


class Node:
    def __init__(self):
        self.me = self          # a reference cycle: only the cyclic GC frees it


def _cyclic_garbage():
    n = Node()
    ref = weakref.ref(n)
    del n
    return ref


def _cycle(ws):
    with ws:
        wsmem.empty(8)


def test_window_collects_garbage_at_cycle_end_only_after_window(clock, full_collections):
    ws = wsmem.Workspace("GCW")
    wsmem.set_gc_window(1000)
    assert not gc.isenabled()
    assert _gc.gc_window_ms() == 1000.0
    ref = _cyclic_garbage()
    # allocation pressure no longer triggers the collector
    junk = [[] for _ in range(50_000)]
    del junk
    assert ref() is not None and full_collections == []
    _cycle(ws)                              # window not reached yet
    assert ref() is not None and full_collections == []
    clock.advance(999)
    _cycle(ws)
    assert ref() is not None and full_collections == []
    clock.advance(1)
    with ws:
        wsmem.empty(8)
        assert ref() is not None            # not inside the cycle: at its end
    assert ref() is None
    assert [g for g, _ in full_collections] == [2]
    ws.destroy()


def test_at_most_one_collection_per_window(clock, full_collections):
    ws = wsmem.Workspace("GCW_RATE")
    wsmem.set_gc_window(50)
    for _ in range(10):                     # 10 windows of 50 ms, 5 cycles each
        for _ in range(5):
            clock.advance(10)
            _cycle(ws)
    # collections at t = 50, 100, ..., 500 ms: exactly one per window
    assert len(full_collections) == 10
    assert all(g == 2 for g, _ in full_collections)
    ws.destroy()


def test_only_outermost_cycle_end_collects(clock, full_collections):
    ws = wsmem.Workspace("GCW_NEST")
    wsmem.set_gc_window(10)
    clock.advance(20)
    with ws:
        with ws:                            # re-entry: not a cycle end
            pass
        assert full_collections == []
    assert len(full_collections) == 1
    ws.destroy()


def test_real_clock_rate_bound(full_collections):
    """With the real clock, cycles for ~0.25 s and a 40 ms window collect at least
    once and never more often than the window allows."""
    ws = wsmem.Workspace("GCW_REAL")
    start = time.monotonic()
    wsmem.set_gc_window(40)
    n_cycles = 0
    while time.monotonic() - start < 0.25:
        _cycle(ws)
        n_cycles += 1
    elapsed = time.monotonic() - start
    assert n_cycles > 100
    assert 1 <= len(full_collections) <= int(elapsed / 0.040) + 1
    ws.destroy()


def test_hook_runs_in_other_threads(clock, full_collections):
    wsmem.set_gc_window(100)
    ref = _cyclic_garbage()
    clock.advance(100)
    box = {}

    def worker():
        try:
            ws = wsmem.get_workspace("GCW_THREAD")
            _cycle(ws)
            box["alive_after"] = ref() is not None
        finally:
            wsmem.destroy_thread_workspaces()

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert box == {"alive_after": False}
    assert [tid for _, tid in full_collections] == [t.ident]


def test_threads_race_for_one_window(clock, full_collections):
    """Many threads close cycles at once: each window is collected once, not once
    per thread."""
    wsmem.set_gc_window(100)
    n_threads, rounds = 6, 5
    barrier = threading.Barrier(n_threads)
    errors = []

    def worker():
        try:
            ws = wsmem.get_workspace("GCW_RACE")
            for _ in range(rounds):
                barrier.wait(10)
                if threading.current_thread() is threads[0]:
                    clock.advance(100)
                barrier.wait(10)
                for _ in range(20):
                    _cycle(ws)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()
        finally:
            wsmem.destroy_thread_workspaces()

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(full_collections) == rounds


def test_set_gc_window_again_changes_window(clock, full_collections):
    ws = wsmem.Workspace("GCW_AGAIN")
    wsmem.set_gc_window(1000)
    wsmem.set_gc_window(10)                 # restarts the window: 10 ms from now
    assert _gc.gc_window_ms() == 10.0
    clock.advance(10)
    _cycle(ws)
    assert len(full_collections) == 1
    wsmem.set_gc_window(0.5)                # fractions of a ms are fine
    clock.advance(0.5)
    _cycle(ws)
    assert len(full_collections) == 2
    ws.destroy()


def test_toggle_off_stops_all_automatic_gc(clock, full_collections):
    ws = wsmem.Workspace("GCW_OFF")
    wsmem.set_gc_window(10)
    wsmem.toggle_periodic_gc(False)
    assert not gc.isenabled() and _gc.gc_window_ms() is None
    ref = _cyclic_garbage()
    junk = [[] for _ in range(50_000)]
    del junk
    clock.advance(10_000)
    _cycle(ws)
    assert ref() is not None and full_collections == []
    gc.collect()                            # only explicit collection remains
    assert ref() is None
    ws.destroy()


def test_toggle_on_restores_python_default(clock, full_collections):
    thresholds = gc.get_threshold()
    ws = wsmem.Workspace("GCW_ON")
    wsmem.set_gc_window(10)
    wsmem.toggle_periodic_gc(True)
    assert gc.isenabled() and gc.get_threshold() == thresholds
    assert _gc.gc_window_ms() is None
    # the hook is gone: with automatic gc switched off by hand, a cycle end long
    # after the window collects nothing
    gc.disable()
    ref = _cyclic_garbage()
    clock.advance(10_000)
    _cycle(ws)
    assert ref() is not None and full_collections == []
    gc.enable()
    gc.collect()
    assert ref() is None
    ws.destroy()


def test_toggle_on_from_user_disabled_gc():
    gc.disable()
    wsmem.toggle_periodic_gc(True)
    assert gc.isenabled()


@pytest.mark.parametrize("bad", [True, False, "5", None, [5], 1j])
def test_set_gc_window_type_errors(bad):
    with pytest.raises(TypeError, match="milliseconds"):
        wsmem.set_gc_window(bad)
    assert gc.isenabled() and _gc.gc_window_ms() is None      # nothing changed


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf")])
def test_set_gc_window_value_errors(bad):
    with pytest.raises(ValueError, match="positive"):
        wsmem.set_gc_window(bad)
    assert gc.isenabled() and _gc.gc_window_ms() is None


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_toggle_periodic_gc_type_errors(bad):
    with pytest.raises(TypeError, match="True or False"):
        wsmem.toggle_periodic_gc(bad)
    assert gc.isenabled()
