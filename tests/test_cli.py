"""The command line: ``python -m wsmem info`` and ``python -m wsmem bench``.

These check the plumbing (exit codes, table, JSON layout) with the hidden
``--tiny`` mode; speed is measured in bench/, never asserted here.
"""
import json
import os
import subprocess
import sys

import pytest

import wsmem
from wsmem.__main__ import main
from wsmem.benchmarks import alloc, get_suite, suite_names

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(wsmem.__file__)))


def _run(*args, timeout=60):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "wsmem", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=_ROOT)


def test_info_prints_versions_cpu_thp_cupy_and_default_config():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"wsmem {wsmem.__version__}" in out
    for needle in ("numpy ", "python ", "cpu: ", "transparent hugepages: ", "cupy: ",
                   "default WorkspaceConfig:", "learning = first_loop",
                   "overallocation_limit = 0.3"):
        assert needle in out, f"{needle!r} missing from info output:\n{out}"


def test_bench_tiny_prints_table_and_writes_json(tmp_path):
    out_dir = tmp_path / "results"
    proc = _run("bench", "--quick", "--tiny", "--suite", "alloc", "--out", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    assert "| size | np.empty ns/alloc |" in proc.stdout
    for size in ("64 B", "1 KiB", "16 KiB", "256 KiB", "1 MiB", "4 MiB", "16 MiB"):
        assert f"| {size} |" in proc.stdout, proc.stdout
    assert "[alloc]" in proc.stderr           # progress goes to stderr, not stdout
    assert "[alloc]" not in proc.stdout

    results = json.loads((out_dir / "alloc.json").read_text())
    assert results["suite"] == "alloc"
    assert {"machine", "method", "rows", "variants", "steady_state_ok",
            "command"} <= results.keys()
    assert {"cpu_model", "numpy", "python", "wsmem"} <= results["machine"].keys()
    assert results["method"]["mode"] == "tiny"
    assert results["method"]["allocs_per_cycle"] == 100
    variants = [v["key"] for v in results["variants"]]
    assert variants == ["np_empty", "wsmem_empty", "ws_empty", "asarray_wsmem_empty",
                        "numpy_wsmem_empty"]
    rows = results["rows"]
    assert len(rows) == len(alloc.SIZES) * len(variants)
    assert {r["size_bytes"] for r in rows} == set(alloc.SIZES)
    for r in rows:
        assert {"size", "variant", "ns_per_alloc", "ratio_vs_np_empty",
                "steady_spilled_count", "cycles_per_round"} <= r.keys()
        assert r["ns_per_alloc"] > 0 and r["ratio_vs_np_empty"] > 0
        assert len(r["ns_per_alloc_rounds"]) == results["method"]["rounds"]
        if r["variant"] == "np_empty":
            assert r["steady_spilled_count"] is None
            assert r["ratio_vs_np_empty"] == pytest.approx(1.0)
        else:
            assert r["steady_spilled_count"] == 0, r   # learned in warm-up: no spills
    assert results["steady_state_ok"] is True
    assert (out_dir / "alloc.txt").read_text().startswith("| size |")


def test_bench_rounds_override_is_recorded(tmp_path):
    proc = _run("bench", "--tiny", "--rounds", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "alloc.json").read_text())
    assert results["method"]["rounds"] == 2
    assert "--rounds 2" in results["command"]


def test_bench_rejects_unknown_suite_and_bad_rounds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--suite", "no_such_suite", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["bench", "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "--rounds=0" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_help_lists_commands_and_suites(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--out" in text and "alloc" in text
    assert "--tiny" not in text             # hidden test knob


def test_suite_registry():
    assert "alloc" in suite_names()
    module = get_suite("alloc").load()
    assert callable(module.run) and callable(module.format_table)
    with pytest.raises(KeyError, match="known suites"):
        get_suite("no_such_suite")


def test_alloc_run_in_process_leaves_no_workspace_behind():
    res = alloc.run(tiny=True, sizes=[64, 1 << 20])
    n = len(alloc.VARIANTS)
    assert [r["size_bytes"] for r in res["rows"]] == [64] * n + [1 << 20] * n
    assert wsmem.current_workspace() is None
    table = alloc.format_table(res)
    body = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(body) == 3, table              # header + one line per size


def test_alloc_run_refuses_an_open_workspace(ws):
    with ws:
        with pytest.raises(RuntimeError, match="no workspace open"):
            alloc.run(tiny=True, sizes=[64])


def test_suite_accepts_comma_lists_and_repeats(tmp_path):
    proc = _run("bench", "--tiny", "--suite", "alloc,gpu", "--suite", "alloc",
                "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("## alloc") == 1            # repeats run once
    assert (tmp_path / "alloc.json").exists()
    assert not (tmp_path / "cyclic.json").exists() and not (tmp_path / "example.json").exists()


def test_unavailable_suite_is_skipped_with_its_reason(tmp_path, capsys, monkeypatch):
    from wsmem.benchmarks import gpu
    monkeypatch.setattr(gpu, "unavailable", lambda: "no CUDA device (test)")
    assert main(["bench", "--tiny", "--suite", "gpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[gpu] skipped: no CUDA device (test)" in out
    assert not list(tmp_path.glob("gpu.*"))


def test_gpu_suite_runs_or_says_why():
    from wsmem.benchmarks import gpu
    reason = gpu.unavailable()
    if reason is not None:
        assert "CuPy" in reason or "CUDA" in reason, reason
        return
    results = gpu.run(tiny=True)                  # CuPy and a device: a real run
    configs = {r["config"] for r in results["rows"]}
    assert {"wsmem", "cupy_pool", "cudaMalloc"} <= configs, configs
    alloc = [r for r in results["rows"] if r["workload"] == "alloc"]
    step = [r for r in results["rows"] if r["workload"] == "step"]
    assert {r["bytes"] for r in alloc} == set(gpu.SIZES[:2])
    assert {r["rows"] for r in step} == set(gpu.STEP_ROWS[:1])
    for r in alloc + step:
        assert r["cycle_us"] > 0, r
        if r["config"] == "wsmem":
            assert r["footprint"] >= 1.0, r       # reserved at least the cycle's need
        else:
            assert r["wsmem_cycle_ratio"] > 0, r
    assert all(r["alloc_us"] > 0 for r in alloc)
    table = gpu.format_table(results)
    assert "| wsmem |" in table and "| cupy_pool |" in table and "Training step" in table
    assert len(gpu.comparison(results)) == 3      # two alloc sizes, one step size


def test_gpu_table_and_comparison_rows_from_results():
    # format_table and comparison() on a hand-made result (no GPU needed)
    from wsmem.benchmarks import gpu
    rows = [{"workload": "alloc", "bytes": 4096, "config": "cupy_pool", "cycle_us": 10.0,
             "alloc_us": 1.0, "wsmem_cycle_ratio": 1.25, "wsmem_alloc_ratio": 1.5},
            {"workload": "alloc", "bytes": 4096, "config": "cudaMalloc", "cycle_us": 20.0,
             "alloc_us": 2.0, "wsmem_cycle_ratio": 2.5, "wsmem_alloc_ratio": 3.0},
            {"workload": "alloc", "bytes": 4096, "config": "wsmem", "cycle_us": 8.0,
             "alloc_us": 0.5, "capacity": 40960, "footprint": 1.25},
            {"workload": "step", "rows": 64, "bytes": 64 << 12, "config": "cupy_pool",
             "cycle_us": 50.0, "wsmem_cycle_ratio": 0.98},
            {"workload": "step", "rows": 64, "bytes": 64 << 12, "config": "wsmem",
             "cycle_us": 51.0, "capacity": 1 << 21, "footprint": 1.6}]
    res = {"gpu": "test GPU", "method": "m", "rows": rows}
    table = gpu.format_table(res)
    assert "| 4 KiB | cudaMalloc | 20.0 us | 2.00 us | 2.50x | 3.00x | - |" in table
    assert "| 4 KiB | wsmem | 8.0 us | 0.50 us | - | - | 1.25x need |" in table
    assert "| 64 (256 KiB) | cupy_pool | 50.0 us | 0.98x | - |" in table
    assert "| 64 (256 KiB) | wsmem | 51.0 us | - | 1.60x peak cycle |" in table
    alloc_row, step_row = gpu.comparison(res)
    assert alloc_row["best_peer"] == "cupy_pool" and alloc_row["size"] == "4 KiB"
    assert alloc_row["wsmem_time_s"] == pytest.approx(8e-6)
    assert step_row["best_peer"] == "cupy_pool" and step_row["peers"] == {"cupy_pool": 0.98}
    assert step_row["size"] == "rows=64 (256 KiB)"


def test_gpu_interleave_rotates_and_drops_failing_peers():
    # the GPU suite's round loop, with fake peers and timings (no GPU needed;
    # cupy.cuda.using_allocator only sets CuPy's thread-local allocator)
    pytest.importorskip("cupy")
    from wsmem.benchmarks import gpu
    calls, torn_down = [], []
    broken = object()                  # the allocator of a pool that fails when used

    def peer(name, fail_setup=False, fail_use=False):
        def setup():
            calls.append(name)
            if fail_setup:
                raise RuntimeError(f"{name}: cannot make this pool")
            return broken if fail_use else (lambda n: None)
        return setup, lambda: torn_down.append(name)

    peers = {"a": peer("a"), "b": peer("b", fail_use=True), "c": peer("c"),
             "d": peer("d", fail_setup=True)}
    ws = object()
    clock = iter(range(1, 1000))

    def measure(wrap, warm=False):
        if wrap() is ws:
            calls.append("wsmem")
        elif gpu_alloc() is broken:
            raise RuntimeError("b: no cudaMallocAsync here")
        return (0.0,) if warm else (float(next(clock)),)

    import cupy

    def gpu_alloc():
        return cupy.cuda.memory._get_thread_local_allocator()

    failed, said = {}, []
    times = gpu._interleave(peers, ws, 4, measure, failed, said.append, "x")
    assert set(times) == {"a", "c", "wsmem"} and set(peers) == {"a", "c"}
    assert sorted(failed) == ["b", "d"] and "cudaMallocAsync" in failed["b"]
    assert all(len(v) == 4 for v in times.values())
    assert all(t[0] > 0 for v in times.values() for t in v)    # no warm-in recorded
    # round 1 runs a, b (dropped), c, d (dropped), wsmem; then the order
    # rotates; wsmem is warmed (an untimed measure) before its timed one, as
    # every peer is
    assert calls == ["a", "b", "c", "d", "wsmem", "wsmem",
                     "c", "wsmem", "wsmem", "a",
                     "wsmem", "wsmem", "a", "c",
                     "a", "c", "wsmem", "wsmem"]
    assert torn_down.count("b") == 1 and "d" not in torn_down   # only what was set up
    assert len([m for m in said if "dropped" in m]) == 2


def test_gpu_timed_loop_wraps_each_cycle_and_sums_work(monkeypatch):
    # the GPU suite's timing loop with a fake stream (no GPU needed)
    cupy = pytest.importorskip("cupy")
    from wsmem.benchmarks import gpu
    events = []

    class Stream:
        def synchronize(self):
            events.append("sync")

    class Wrap:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: Stream())
    work = iter([0.5, None, 0.25])
    us, extra = gpu._timed(lambda: events.append("work") or next(work), 3, Wrap)
    assert extra == 0.75 and us > 0
    assert events == ["sync"] + ["enter", "work", "exit"] * 3 + ["sync"]
    monkeypatch.setattr(gpu, "_cycle", lambda nbytes, kernel: 1e-6 * gpu.ALLOCS)
    us, per_alloc = gpu._measure(4096, 4, None, Wrap)
    assert per_alloc == pytest.approx(1.0)            # 1 us per cupy.empty


def test_comparison_table_and_charts(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["bench", "--tiny", "--suite", "alloc,example", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out.split("## wsmem against each peer (all suites)")[1]
    assert "| suite | workload | size | wsmem time | best peer | vs best peer |" in table
    assert table.count("| alloc |") == len(alloc.SIZES)
    assert table.count("| example |") == 2                     # WorkspaceMgr, + prefetch
    assert "plain NumPy" in table and "np.empty" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert {r["suite"] for r in saved["rows"]} == {"alloc", "example"}
    for r in saved["rows"]:
        assert r["wsmem_time_s"] > 0 and r["best_peer"] in r["peers"]
        assert all(v > 0 for v in r["peers"].values())
    for name in ("alloc", "example"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert f"charts: {tmp_path / 'alloc.png'}" in out
    assert "pip install 'wsmem[plot]'" not in out


def test_without_matplotlib_table_and_json_come_with_a_hint(tmp_path, capsys, no_matplotlib):
    assert main(["bench", "--tiny", "--suite", "alloc", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    hints = [line for line in out.splitlines() if "pip install 'wsmem[plot]'" in line]
    assert len(hints) == 1, out
    assert "## wsmem against each peer" in out
    assert (tmp_path / "alloc.json").exists() and (tmp_path / "comparison.json").exists()
    assert not list(tmp_path.glob("*.png"))


def test_comparison_rows_of_cyclic_results_name_the_best_allocator():
    from wsmem.benchmarks._compare import comparison_rows, format_comparison
    res = {"suite": "cyclic",
           "configs": [{"key": k, "label": k.upper()} for k in
                       ("numpy", "jemalloc", "mimalloc", "limit", "wsmem")],
           "rows": [{"workload": "train", "size": 64, "temp_bytes": 512 << 10,
                     "config": "wsmem", "label": "wsmem", "time_per_step_s": 0.001,
                     "ratio_vs_numpy": 2.0, "ratio_vs_jemalloc": 1.1,
                     "ratio_vs_mimalloc": 1.05, "ratio_vs_limit": 0.9,
                     "best_peer": "jemalloc"}]}     # the suite's pick by median time
    rows = comparison_rows(res)
    assert rows == [{"suite": "cyclic", "workload": "training step",
                     "size": "rows=64 (512 KiB)",
                     "wsmem": "wsmem", "wsmem_time_s": 0.001,
                     "peers": {"NUMPY": 2.0, "JEMALLOC": 1.1, "MIMALLOC": 1.05, "LIMIT": 0.9},
                     "best_peer": "MIMALLOC"}]      # lowest paired ratio, limit excluded
    assert "| cyclic | training step | rows=64 (512 KiB) | 1 ms | MIMALLOC | 1.05x |" in \
        format_comparison(rows)


def test_info_shows_huge_pages_cuda_and_plotting():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for prefix in ("hugetlb pages: ", "cuda: ", "plots: ", "allocation tracking (WSMEM_TRACK): "):
        assert any(line.startswith(prefix) for line in lines), (prefix, proc.stdout)
    assert "(defrag: " in proc.stdout


def test_placeholder_suite_that_is_not_written_is_skipped(tmp_path, capsys, monkeypatch):
    import sys
    import types

    from wsmem import benchmarks
    fake = types.ModuleType("wsmem_fake_suite")
    fake.DESCRIPTION = "a suite whose run() is not written"

    def run(**kw):
        raise NotImplementedError("the fake suite is not written yet")
    fake.run = run
    fake.format_table = lambda results: ""
    monkeypatch.setitem(sys.modules, "wsmem_fake_suite", fake)
    monkeypatch.setattr(benchmarks, "_SUITES", dict(benchmarks._SUITES))
    benchmarks.register_suite("fake", "wsmem_fake_suite", "not written")
    assert main(["bench", "--tiny", "--suite", "fake,alloc", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[fake] skipped: not implemented (the fake suite is not written yet)" in out
    assert "## alloc" in out
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["skipped"] == [{"suite": "fake", "reason":
                                 "not implemented (the fake suite is not written yet)"}]
