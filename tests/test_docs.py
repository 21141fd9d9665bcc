"""The documentation stays true: every ```python block of README.md and
docs/*.md runs and passes mypy, and docs/api.md matches the docstrings.

The blocks of one page run in order in one namespace, as a reader would run
them, after the page's optional ``<!-- docs-test setup: ... -->`` comment
(the code after its first line; used by pages that show excerpts).  A block
whose first line contains ``gpu-only`` needs CuPy and a CUDA device: it is
left out of those runs and run on its own where a device is present.
"""
import contextlib
import gc
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

import wsmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(wsmem.__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
    if f.endswith(".md"))
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


_SETUP = re.compile(r"<!-- docs-test setup:[^\n]*\n(.*?)-->", re.S)


def _gpu_only(code):
    return bool(code.strip()) and "gpu-only" in code.splitlines()[0]


def _pages():
    """[(page, setup code, [(line, code), ...])] for pages with python blocks."""
    out = []
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        blocks = [(text[:m.start()].count("\n") + 2, m.group(1))
                  for m in _FENCE.finditer(text)]
        if blocks:
            setups = _SETUP.findall(text)
            # the setup comment's first lines are prose: keep the code after them
            setup = "\n".join(line for line in (setups[0] if setups else "").splitlines()
                              if not line.startswith(("this page", "tests/")))
            out.append((path, setup, blocks))
    return out


PAGES = _pages()
_IDS = [os.path.relpath(p[0], ROOT) for p in PAGES]


def test_docs_have_python_examples():
    names = {os.path.basename(p[0]) for p in PAGES}
    assert {"README.md", "concepts.md", "recipes.md", "example.md"} <= names, names
    assert any(_gpu_only(code) for _, _, blocks in PAGES for _, code in blocks)


@pytest.mark.parametrize("page", PAGES, ids=_IDS)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    path, setup, blocks = page
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__doc_example__"}
    out = io.StringIO()
    ran = 0
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(setup, f"{path}:setup", "exec"), ns)
            for line, code in blocks:
                if _gpu_only(code):
                    continue
                exec(compile(code, f"{path}:{line}", "exec"), ns)
                ran += 1
    finally:
        ns.clear()
        wsmem.destroy_thread_workspaces()
        gc.collect()
    assert ran > 0
    assert wsmem.current_workspace() is None


GPU_BLOCKS = [(path, line, code) for path, _, blocks in PAGES
              for line, code in blocks if _gpu_only(code)]


def _have_cuda():
    from wsmem import _gpu
    return _gpu.unavailable("the gpu-only examples") is None


@pytest.mark.gpu
@pytest.mark.skipif(not _have_cuda(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("block", GPU_BLOCKS,
                         ids=[f"{os.path.basename(p)}:{n}" for p, n, _ in GPU_BLOCKS])
def test_gpu_only_blocks_run_on_a_gpu(block, tmp_path, monkeypatch):
    path, line, code = block
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__doc_example__"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{path}:{line}", "exec"), ns)
    finally:
        ns.clear()
        wsmem.destroy_thread_workspaces()
        gc.collect()
    assert wsmem.current_workspace() is None


def _mypy_available():
    try:
        import mypy.api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _mypy_available(), reason="mypy is not installed (pip install mypy)")
def test_python_blocks_pass_mypy(tmp_path):
    files = []
    for n, (path, setup, blocks) in enumerate(PAGES):
        code = "\n".join([setup] + [c for _, c in blocks if not _gpu_only(c)])
        name = f"ex{n:02d}_{os.path.splitext(os.path.basename(path))[0]}.py"
        (tmp_path / name).write_text(code)
        files.append(str(tmp_path / name))
    env = dict(os.environ, MYPYPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent",
         "--no-incremental", "--cache-dir", os.devnull, "--python-version",
         f"{sys.version_info.major}.{sys.version_info.minor}", *files],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_api_reference_is_generated_from_the_docstrings():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "gen_api.py"),
                           "--check"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_api_reference_covers_every_public_name():
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        text = f.read()
    missing = [n for n in wsmem.__all__ if f"`wsmem.{n}" not in text]
    assert not missing, missing


def _make_bench_charts():
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    try:
        import make_bench_charts
    finally:
        sys.path.pop(0)
    return make_bench_charts


@pytest.mark.parametrize("page, begin, end, make", [
    ("PAGE", "BEGIN", "END", "comparison_from_results"),      # docs/benchmarks.md
    ("README", "README_BEGIN", "README_END", "readme_table"),  # README.md results
])
def test_generated_tables_show_the_saved_results(page, begin, end, make):
    charts = _make_bench_charts()
    path = getattr(charts, page)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    shown = text.split(getattr(charts, begin))[1].split(getattr(charts, end))[0]
    assert shown.strip() == getattr(charts, make)().strip(), \
        f"{os.path.relpath(path, ROOT)} is out of date: run python docs/make_bench_charts.py"
