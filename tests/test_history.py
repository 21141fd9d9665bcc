"""Workspace.history(): the bounded per-cycle record behind plot_history."""
import numpy as np
import pytest

import wsmem
from wsmem._config import tracking_forced
from wsmem._workspace import HISTORY_LENGTH


def test_history_records_learning_then_steady_cycles(ws):
    for _ in range(4):
        with ws:
            a = np.ones(50_000)
            b = a * 2
    del a, b
    h = ws.history()
    assert len(h) == 4
    assert h.cycle.tolist() == [1, 2, 3, 4]
    assert h.learned.tolist() == [True, False, False, False]
    assert h.capacity[0] == 0 and h.capacity_after[0] > 0        # learnt at cycle 1
    # The learning cycle spilled both arrays; being 256 KiB and more, each
    # also counts the page pad its placement will need in the learned block.
    assert h.spilled_bytes[0] > 0
    assert h.cycle_bytes[0] == h.spilled_bytes[0] + 2 * (4096 - 64)
    assert (h.capacity[1:] == h.capacity_after[0]).all()
    assert (h.spilled_count[1:] == 0).all()
    if not tracking_forced():                                    # WSMEM_TRACK / --wsmem-leaks
        assert (h.page_faults == -1).all()
    stats = ws.stats()
    assert h.cycle_bytes[-1] == stats.last_cycle_bytes
    assert h.capacity_after[-1] == stats.capacity


def test_history_shows_growing_pins_of_a_leak(ws):
    kept = []
    for _ in range(5):
        with ws:
            kept.append(np.asarray(ws.zeros(1000)))   # an escaped view every cycle
    pinned = ws.history().pinned_bytes.tolist()
    assert pinned == sorted(pinned) and pinned[0] > 0 and pinned[-1] >= 5 * 8000, pinned
    kept.clear()
    with ws:
        pass
    assert ws.history().pinned_bytes[-1] == 0


def test_history_spill_and_growth_with_reallocate(workspace_factory):
    ws = workspace_factory("realloc")(spill="reallocate", learning="none",
                                      initial_size=1 << 16, allocation="strict")
    for n in (1000, 50_000, 1000):
        with ws:
            ws.empty(n)
    h = ws.history()
    assert h.spilled_count.tolist()[:2] == [0, 1]
    assert h.capacity_after[1] > h.capacity[1] == 1 << 16        # grew after the spill
    assert not h.learned.any()


def test_history_counts_page_faults_only_when_tracking(workspace_factory):
    ws = workspace_factory("track")(track=True)
    for _ in range(3):
        with ws:
            np.ones(1 << 18)
    faults = ws.history().page_faults
    assert (faults >= 0).all(), faults
    assert faults[0] > 0          # the learning cycle touches fresh spill pages


def test_history_is_bounded_and_keeps_the_newest(ws):
    n = HISTORY_LENGTH + 37
    for _ in range(n):
        with ws:
            pass
    h = ws.history()
    assert len(h) == HISTORY_LENGTH
    assert h.cycle[0] == n - HISTORY_LENGTH + 1 and h.cycle[-1] == n
    assert (np.diff(h.cycle.astype(np.int64)) == 1).all()


def test_history_nested_and_reentered_cycles_count_once(ws, workspace_factory):
    inner = workspace_factory("inner")()
    with ws:
        with ws:                       # re-entry: same cycle
            with inner:
                pass
    assert len(ws.history()) == 1 and len(inner.history()) == 1


def test_history_inside_a_cycle_does_not_allocate_in_the_workspace(ws):
    with ws:
        wsmem.empty(10)
    with ws:
        h = ws.history()
        before = ws.stats().cycle_bytes
    assert before == 0 and len(h) == 1
    assert ws.stats().pinned_bytes == 0
    del h


def test_history_empty_before_any_cycle(ws):
    h = ws.history()
    assert len(h) == 0 and h.cycle.dtype == np.uint64
    assert set(h.as_dict()) >= {"capacity", "cycle_bytes", "pinned_bytes", "learned"}


def test_history_records_a_cycle_that_raised(ws):
    with pytest.raises(ZeroDivisionError):
        with ws:
            ws.empty(100)
            1 / 0
    assert ws.history().cycle.tolist() == [1]
