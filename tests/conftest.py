"""Shared fixtures: every test starts and ends with clean global state, and
no test may leave workspace memory pinned by an escaped view."""
import gc

import pytest

import wsmem
from wsmem._workspace import live_workspaces


def _pinned():
    return {ws.name: ws.stats().pinned_bytes for ws in live_workspaces()
            if ws.stats().pinned_bytes}


@pytest.fixture(autouse=True)
def _clean_wsmem_state():
    assert wsmem.current_workspace() is None, "a previous test left a workspace open"
    yield
    assert wsmem.current_workspace() is None, "test left a workspace (or scope) active"
    assert wsmem.get_debug_mode_name() is wsmem.DebugMode.DISABLED, "debug mode left on"
    assert not wsmem.heap_is_aligned(), "test left wsmem.aligned_heap() on"
    wsmem.destroy_thread_workspaces()
    gc.collect()
    pinned = _pinned()
    assert not pinned, f"workspace memory still pinned after the test: {pinned}"


@pytest.fixture
def ws(request):
    """A fresh host workspace named after the test, destroyed afterwards."""
    w = wsmem.Workspace(request.node.name[:60])
    yield w
    if not w.is_open:
        w.destroy()


@pytest.fixture
def workspace_factory():
    """make(prefix) -> a function making workspaces named prefix0, prefix1, ...
    (keyword arguments go to Workspace); all destroyed after the test."""
    made = []

    def factory(prefix):
        def make(name=prefix, **kw):
            w = wsmem.Workspace(f"{name}{len(made)}", **kw)
            made.append(w)
            return w
        return make

    yield factory
    for w in made:
        if not w.is_open:
            w.destroy()


def pytest_addoption(parser):
    parser.addoption("--wsmem-fuzz-steps", type=int, default=None,
                     help="steps of the workspace state machine (tests/test_state_machine.py; "
                          "default 100 programs x 35 steps; also WSMEM_FUZZ_STEPS)")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make `import matplotlib` (and its submodules) fail, as without the extra."""
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib' (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
