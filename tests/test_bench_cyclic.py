"""The ``cyclic`` benchmark suite: plumbing and agreement, never speed.

One tiny worker of every available config per workload (each a subprocess,
as in the real benchmark): its JSON lines have the expected keys, and it
computes the same ``s`` as plain NumPy.  Timing is measured in bench/, never
asserted here.
"""
import io
import json
import os

import pytest

from wsmem.benchmarks import cyclic, get_suite, suite_names

_AVAILABLE = [k for k in cyclic.CONFIGS if cyclic.config_available(k)[0]]
_TINY = {"train": 8, "cg": 16, "batch": 16}


@pytest.fixture(scope="module")
def reference():
    """Plain NumPy's s per workload (a worker process, like the others)."""
    return {wl: cyclic.run_worker_once("numpy", wl, size)["ready"]["s_warmup"][0]
            for wl, size in _TINY.items()}


@pytest.mark.parametrize("workload", sorted(_TINY))
@pytest.mark.parametrize("config", _AVAILABLE)
def test_worker_json_and_agreement(config, workload, reference):
    if config == "limit_same" and workload not in cyclic.SAME_CALLS_WORKLOADS:
        pytest.skip("no same-calls form (test_limit_same_refuses_batch)")
    res = cyclic.run_worker_once(config, workload, _TINY[workload], batches=2)
    ready, batches, final = res["ready"], res["batches"], res["final"]
    assert ready["ready"] is True and ready["config"] == config
    assert ready["workload"] == workload and ready["size"] == _TINY[workload]
    assert ready["steps_per_batch"] >= 1
    assert len(ready["s_warmup"]) == cyclic.WARMUP_STEPS
    lib = cyclic.CONFIGS[config][2]
    if lib is not None and ready["preloaded"] is not None:
        peer = next(k for k in cyclic.PEERS if cyclic.CONFIGS[k][2] == lib)
        assert peer in ready["preloaded"], f"LD_PRELOAD {lib} not mapped"
    elif ready["preloaded"] is not None:
        assert ready["preloaded"] == []
    ref = reference[workload]
    for s in ready["s_warmup"] + [b["s"] for b in batches]:
        assert s == pytest.approx(ref, rel=cyclic.RTOL, abs=0)
    for b in batches:
        assert b["steps"] == ready["steps_per_batch"]
        assert b["time_per_step_s"] > 0 and b["faults_per_step"] >= 0
        if config in cyclic.WSMEM_CONFIGS:
            # learned during warm-up; but for batch, the default (first
            # batch, the smallest, learns; spill="external") spills by design
            if not (workload == "batch" and "spill" not in cyclic.WSMEM_CONFIGS[config]):
                assert b["spilled_count"] == 0
            assert b["spilled_count"] >= 0 and b["ws_capacity"] > 0
        else:
            assert "spilled_count" not in b
    assert final["done"] is True and final["maxrss_kib"] > 0
    if config in cyclic.WSMEM_CONFIGS and os.path.exists("/proc/self/smaps"):
        block_kib, huge_kib = final["ws_huge"]          # the block's mapping, found
        assert block_kib * 1024 >= final["ws_capacity"] and 0 <= huge_kib <= block_kib


def test_worker_rejects_unknown_names():
    out = io.StringIO()
    assert cyclic.worker_main("nope", "train", 8, 0.001, stdin=io.StringIO(""),
                              stdout=out) == 2
    assert "error" in json.loads(out.getvalue())


def test_limit_same_refuses_batch():
    out = io.StringIO()
    assert cyclic.worker_main("limit_same", "batch", 16, 0.001, stdin=io.StringIO(""),
                              stdout=out) == 2
    msg = json.loads(out.getvalue())["error"]
    assert "no same-calls limit" in msg and "'limit'" in msg
    with pytest.raises(ValueError, match="no same-calls limit"):
        cyclic._make_batch(16, "same")


def test_numpy_elides_from_256_kib():
    # NumPy's temporary elision (a * 2 + 1 in place) starts at 256 KiB on
    # CPython builds that allow it; the same-calls form follows the probe.
    for right in (False, True):
        assert cyclic.numpy_elides(64 << 10, right=right) is False
        big = cyclic.numpy_elides(1 << 20, right=right)
        assert big is (cyclic.numpy_elides(256 << 10, right=right))


@pytest.mark.parametrize("rows", [8, 64])
@pytest.mark.parametrize("reuse", [True, False])
def test_train_same_calls_matches_the_unchanged_step(rows, reuse):
    import numpy as np
    x, w = cyclic._train_inputs(rows)
    plain = cyclic.train_step(x, w)
    same = cyclic.train_same_calls_step(x, w, reuse=reuse)
    ref = plain()
    for _ in range(3):                  # buffers reused across steps too
        assert same() == ref
    cells = same.__closure__
    bufs = {id(c.cell_contents) for c in cells
            if isinstance(c.cell_contents, np.ndarray) and c.cell_contents.shape == (rows, 1024)}
    elide = cyclic.numpy_elides(rows * 1024 * 8)
    # reuse: the unchanged code's most results live at once (4); no reuse:
    # one per result (6 ufunc results, 5 where + 1 is elided in place)
    assert len(bufs) == (4 if reuse else 5 if elide else 6)


@pytest.mark.parametrize("n", [16, 90, 256])
def test_cg_same_calls_matches_the_unchanged_step(n):
    plain = cyclic._make_cg(n, False)
    same = cyclic._make_cg(n, "same")
    inplace = cyclic._make_cg(n, True)
    ref = plain()
    assert same() == ref and same() == ref
    assert inplace() == pytest.approx(ref, rel=1e-12)


def test_missing_peer_library_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(cyclic.CONFIGS, "jemalloc",
                        ("jemalloc", {}, "/nonexistent/libjemalloc.so.2"))
    res = cyclic.run(tiny=True, sizes={"train": (8,)}, configs=["numpy", "jemalloc", "wsmem"])
    assert [r["config"] for r in res["rows"]] == ["numpy", "wsmem"]
    assert any("jemalloc skipped" in note for note in res["skipped"])
    assert res["all_match"] is True and res["steady_state_ok"] is True
    table = cyclic.format_table(res)
    assert "Note: jemalloc skipped" in table and "| 8 | 64 KiB | wsmem |" in table
    ws_row = res["rows"][1]
    assert ws_row["ratio_vs_best_peer"] > 0 and ws_row["best_peer"] == "numpy"
    if os.path.exists("/proc/self/smaps"):
        huge = f"{ws_row['ws_huge_kib'] / 1024:.0f} of {ws_row['ws_block_kib'] / 1024:.1f} MiB"
        assert f"| 0 | {huge} |" in table             # wsmem: spilled, huge pages
    assert {t["target"].split(":")[0] for t in res["targets"]} == {"train rows=8"}


def test_suite_is_registered():
    assert "cyclic" in suite_names()
    module = get_suite("cyclic").load()
    assert module is cyclic
    assert callable(module.run) and callable(module.format_table)


def test_median_ci_order_statistics():
    # 9 rounds: x(2)..x(8), coverage 1 - 2 * (1 + 9) / 512
    lo, hi, cov = cyclic._median_ci([9, 1, 8, 2, 7, 3, 6, 4, 5])
    assert (lo, hi) == (2, 8) and cov == pytest.approx(1 - 20 / 512)
    # 20 rounds: the textbook x(6)..x(15), 95.9%
    lo, hi, cov = cyclic._median_ci(list(range(1, 21)))
    assert (lo, hi) == (6, 15) and cov == pytest.approx(0.9586, abs=1e-4)
    # too few rounds for 95%: min..max and the coverage it really has
    assert cyclic._median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)


def test_targets_say_when_a_shortfall_is_within_noise():
    def row(config, times):
        return {"workload": "train", "size": 8, "config": config,
                "time_rounds_s": times}
    wsr = row("wsmem", [1.0] * 9)
    peer = row("mimalloc", [0.9, 0.95, 0.97, 0.99, 0.99, 1.01, 1.02, 1.05, 1.1])
    wsr["ratio_vs_best_peer"] = cyclic._paired_ratio(peer["time_rounds_s"], wsr["time_rounds_s"])
    wsr["ratio_vs_best_peer_ci"] = list(cyclic._paired_ratio_ci(peer["time_rounds_s"],
                                                                wsr["time_rounds_s"]))
    wsr["best_peer"] = "mimalloc"
    (t,) = [t for t in cyclic._targets([wsr, peer]) if "best of peers" in t["target"]]
    assert not t["met"] and t["value"] == pytest.approx(0.99)
    assert "0.95..1.05" in t["detail"] and "tie within this run's noise" in t["detail"]
    wsr["ratio_vs_best_peer_ci"] = [0.9, 0.97, 0.96]
    (t,) = [t for t in cyclic._targets([wsr, peer]) if "best of peers" in t["target"]]
    assert "slower beyond this run's noise" in t["detail"]


def test_time_interleaved_warms_each_block_and_varies_the_order():
    # A block starts on the previous block's caches and heap layout: each
    # timed block must follow untimed calls of the same function, and the
    # order must change from round to round so that no function always
    # follows the same one (nor always runs first).
    from wsmem.benchmarks._env import time_interleaved

    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    rounds, steps, warm = 24, 3, 2
    times = time_interleaved(fns, rounds=rounds, steps=steps, warm=warm)
    assert {k: len(v) for k, v in times.items()} == {k: rounds for k in "abcd"}
    assert all(t >= 0 for v in times.values() for t in v)
    per = warm + steps
    blocks = [calls[i:i + per] for i in range(0, len(calls), per)]
    assert len(blocks) == rounds * 4 and all(len(set(b)) == 1 for b in blocks)
    order = [b[0] for b in blocks]
    rounds_order = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds_order)   # each once a round
    assert {r[0] for r in rounds_order} == set("abcd")             # each runs first
    for k in "abcd":                                               # several predecessors
        before = {order[i - 1] for i in range(1, len(order)) if order[i] == k}
        assert len(before) >= 2, (k, before)
    # seeded: the same seed gives the same order, another seed another one
    again = []
    time_interleaved({k: (lambda k=k: again.append(k)) for k in "abcd"}, rounds=rounds,
                     steps=steps, warm=warm)
    assert again == calls
    other = []
    time_interleaved({k: (lambda k=k: other.append(k)) for k in "abcd"}, rounds=rounds,
                     steps=steps, warm=warm, seed=1)
    assert other != calls
    # default warm-in: a fifth of the block, at least one call
    calls.clear()
    time_interleaved({"a": lambda: calls.append(1)}, rounds=2, steps=10)
    assert len(calls) == 2 * (10 + 2)
    calls.clear()
    time_interleaved({"a": lambda: calls.append(1)}, rounds=2, steps=1)
    assert len(calls) == 2 * (1 + 1)


def test_parse_cases_reads_workload_size_and_rejects_the_rest():
    import argparse

    from wsmem.benchmarks._env import parse_cases

    p = argparse.ArgumentParser(prog="bench")
    assert parse_cases(p, ["train:8", "cg:1024"]) == [("train", 8), ("cg", 1024)]
    for bad in ("train", "cg:n", "fft:64", "train:-1"):
        with pytest.raises(SystemExit):
            parse_cases(p, [bad])


def test_best_peer_is_the_lowest_paired_ratio_not_the_fastest_median():
    """In a noisy run the peer with the lowest median time can be one wsmem
    beats round by round more often; the best peer (and the target) is the
    one with the lowest paired ratio, as the comparison table picks it."""
    from wsmem.benchmarks.cyclic import _fill_ratios
    rows = [{"config": "jemalloc", "time_rounds_s": [1.5, 1.5, 3.5], "peak_rss_kib": 1},
            {"config": "mimalloc", "time_rounds_s": [1.2, 1.9, 2.9], "peak_rss_kib": 1},
            {"config": "wsmem", "time_rounds_s": [1.0, 2.0, 3.0], "peak_rss_kib": 1}]
    _fill_ratios(rows)
    ws = rows[2]
    assert ws["ratio_vs_jemalloc"] == pytest.approx(7 / 6)      # fastest median (1.5)
    assert ws["ratio_vs_mimalloc"] == pytest.approx(2.9 / 3)    # lower paired ratio
    assert ws["best_peer"] == "mimalloc"
    assert ws["ratio_vs_best_peer"] == pytest.approx(2.9 / 3)
    # a peer's row counts itself (ratio 1.0) among its peers
    assert rows[0]["best_peer"] == "mimalloc"
    assert rows[0]["ratio_vs_best_peer"] == pytest.approx(2.9 / 3.5)
    assert rows[1]["best_peer"] == "mimalloc" and rows[1]["ratio_vs_best_peer"] == 1.0


def test_targets_tell_process_luck_from_a_shortfall():
    # The interval is over rounds; worker processes of one config differ by
    # their memory layout, which it does not cover: a shortfall smaller than
    # that spread must not read as a plain "slower".
    def row(config, procs):
        return {"workload": "train", "size": 8, "config": config,
                "time_rounds_s": [1.0] * 9, "time_procs_s": procs}
    wsr, peer = row("wsmem", [1.0, 1.05, 1.02]), row("mimalloc", [0.99, 1.0, 1.01])
    wsr.update(best_peer="mimalloc", ratio_vs_best_peer=0.99,
               ratio_vs_best_peer_ci=[0.98, 0.995, 0.96])
    (t,) = [t for t in cyclic._targets([wsr, peer]) if "best of peers" in t["target"]]
    assert not t["met"]
    assert "by less than the worker processes of one config differ" in t["detail"]
    assert "differ by up to 5.0% within one config" in t["detail"]
    # A shortfall larger than the spread is a plain one.
    wsr.update(time_procs_s=[1.0, 1.001, 1.0], ratio_vs_best_peer=0.95,
               ratio_vs_best_peer_ci=[0.94, 0.96, 0.96])
    (t,) = [t for t in cyclic._targets([wsr, peer]) if "best of peers" in t["target"]]
    assert "slower beyond this run's noise" in t["detail"]
    assert "differ by up to 2.0% within one config" in t["detail"]       # 1.01 / 0.99: the peer's
    # One process per config: nothing to say about process luck.
    wsr["time_procs_s"] = [1.0]
    (t,) = [t for t in cyclic._targets([wsr, peer]) if "best of peers" in t["target"]]
    assert "process luck" not in t["detail"]
    assert cyclic._process_spread(wsr, peer) is None
    assert cyclic._process_spread(peer, None) is None
