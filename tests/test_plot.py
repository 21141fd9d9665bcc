"""wsmem.plot_history and the ratio charts (matplotlib is optional)."""

import numpy as np
import pytest

import wsmem
from wsmem._plot import _rising_tail, plot_comparison


def _png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:8]
    return data


def test_plot_history_writes_a_png(ws, tmp_path):
    pytest.importorskip("matplotlib")
    kept = []
    for step in range(12):
        with ws:
            y = np.exp(-np.ones(20_000 * (3 if step == 5 else 1)))
            if step >= 6:
                kept.append(y[:4])
    del y
    out = wsmem.plot_history(ws, tmp_path / "t.png")
    assert out == str(tmp_path / "t.png")
    assert len(_png(tmp_path / "t.png")) > 20_000
    kept.clear()


def test_plot_history_accepts_a_history_and_an_empty_one(ws, tmp_path):
    pytest.importorskip("matplotlib")
    wsmem.plot_history(ws.history(), tmp_path / "empty.png")      # no cycle yet
    _png(tmp_path / "empty.png")
    with ws:
        pass
    wsmem.plot_history(ws.history(), tmp_path / "one.svg")
    assert (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")


def test_plot_history_without_matplotlib_says_how_to_get_it(ws, tmp_path, no_matplotlib):
    with pytest.raises(ImportError, match=r"pip install 'wsmem\[plot\]'"):
        wsmem.plot_history(ws, tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def test_rising_tail_finds_the_start_of_a_leak():
    assert _rising_tail(np.array([1, 1, 1, 2, 3, 4, 5, 6])) == 3
    assert _rising_tail(np.array([1, 2, 1, 2, 3])) is None        # too short to call
    assert _rising_tail(np.array([5, 5, 5, 5, 5, 5])) is None
    assert _rising_tail(np.array([], dtype=np.uint64)) is None


def test_plot_comparison_draws_every_peer(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"suite": "s", "workload": "w", "size": "1 KiB", "wsmem": "wsmem",
             "wsmem_time_s": 1e-6, "peers": {"a": 2.0, "b": 0.5}, "best_peer": "b"},
            {"suite": "s", "workload": "w", "size": "-", "wsmem": "wsmem",
             "wsmem_time_s": 1e-3, "peers": {"a": 50.0}, "best_peer": "a"}]
    plot_comparison(rows, tmp_path / "c.png", "title")
    _png(tmp_path / "c.png")
