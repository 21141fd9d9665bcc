"""pytest plugin: catch escaped workspace views, and a fresh-workspace fixture.

Installed with wsmem as the ``pytest11`` entry point ``wsmem`` (or load it by
hand with ``pytest -p wsmem.pytest_plugin``).

``pytest --wsmem-leaks``
    After each test passes, collect garbage and look at every live
    workspace: memory pinned by a view from a finished cycle that was not
    pinned before the test (see :meth:`wsmem.Workspace.leaks`) fails the
    test, with the allocation traceback of each leaked array.  The option
    turns allocation tracking on (as ``WSMEM_TRACK=1`` does) for workspaces
    created during the session, so the tracebacks exist.  Tests that failed
    already are not checked (their traceback keeps locals alive).

``wsmem_workspace`` fixture
    A fresh :class:`wsmem.Workspace` named after the test, destroyed after
    it.

Limits: a leak is seen only while its workspace object is alive (the
registry of live workspaces is weak); a workspace created at import time,
before the session, reports leaks without an allocation site.

Examples
--------
A test module using the fixture (run with ``pytest --wsmem-leaks``)::

    import numpy as np

    def test_step(wsmem_workspace):
        with wsmem_workspace:
            y = np.exp(-np.ones(1000))
            total = float(y.sum())
        assert total > 0
"""
from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Iterator

import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_unconfigure",
           "pytest_runtest_call", "wsmem_workspace"]

# Tracking setting before --wsmem-leaks turned it on (restored at the end).
_prev_tracking = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wsmem", "wsmem workspaces")
    group.addoption("--wsmem-leaks", action="store_true", default=False,
                    help="fail tests that leave workspace memory pinned by an escaped "
                         "view, printing the allocation tracebacks (turns on wsmem "
                         "allocation tracking)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("wsmem_leaks"):
        from wsmem._config import force_tracking
        config.stash[_prev_tracking] = force_tracking(True)


def pytest_unconfigure(config: pytest.Config) -> None:
    prev = config.stash.get(_prev_tracking, None)
    if prev is not None:
        from wsmem._config import force_tracking
        force_tracking(prev)


def _leak_snapshot() -> tuple[Counter, dict, list]:
    """Leaks of every live workspace: a multiset of identity keys, the
    LeakInfo per key, and the objects behind the keys (held so that their
    ids are not reused while the snapshot is compared)."""
    from wsmem._workspace import live_workspaces

    keys: Counter = Counter()
    infos: dict = {}
    hold: list = []
    for ws in live_workspaces():
        for leak in ws.leaks():
            key = (id(ws), leak.generation, leak.nbytes, id(leak.traceback))
            keys[key] += 1
            infos.setdefault(key, (ws, leak))
            hold.append((ws, leak.traceback))
    return keys, infos, hold


def _test_frames(leak: Any) -> str:
    """The leak's description with pytest's and pluggy's own frames left out."""
    import os
    import traceback

    import _pytest
    import pluggy

    if leak.traceback is None:
        return leak.format()
    skip = tuple(os.path.dirname(m.__file__) + os.sep for m in (_pytest, pluggy))
    frames = [f for f in leak.traceback
              if not f.filename.startswith(skip) and not f.filename.startswith("<frozen")
              and not f.filename.endswith(os.path.join("pytest", "__main__.py"))]
    head = leak.format().split(", allocated at:")[0]
    return head + ", allocated at:\n" + "".join(
        traceback.StackSummary.from_list(frames).format())


def _format(new: Counter, infos: dict) -> str:
    total = sum(infos[k][1].nbytes * n for k, n in new.items())
    lines = [f"wsmem: the test left {total} bytes of workspace memory pinned by "
             f"escaped views ({sum(new.values())} allocation(s)). Keep only detach()ed "
             f"copies across cycles, or allocate outside the workspace "
             f"(wsmem.scope_out()).", ""]
    for key, n in new.items():
        ws, leak = infos[key]
        times = f" (x{n})" if n > 1 else ""
        lines.append(f"workspace {ws.name!r}{times}: {_test_frames(leak)}")
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if not item.config.getoption("wsmem_leaks"):
        return (yield)
    gc.collect()
    before, _, hold = _leak_snapshot()
    result = yield                   # a failing test raises here: not checked
    gc.collect()
    after, infos, _ = _leak_snapshot()
    new = after - before
    del hold
    if new:
        pytest.fail(_format(new, infos), pytrace=False)
    return result


@pytest.fixture
def wsmem_workspace(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh host workspace named after the test; destroyed afterwards."""
    import wsmem

    ws = wsmem.Workspace(request.node.name[:60] or "test")
    yield ws
    if not ws.is_open:
        ws.destroy()
