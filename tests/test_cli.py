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
