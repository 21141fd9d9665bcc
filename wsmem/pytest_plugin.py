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

``pytest --wsmem-capture``, ``pytest --wsmem-spill-everything``
    Run the body of every test inside a cycle of one session workspace
    (``capture=True``, ``spill="reallocate"``: the block grows to the largest
    test, and a workspace whose block grew past 256 MiB is replaced by a new
    one after that test), so that NumPy allocates the test's own arrays in
    it: an existing test suite then checks that its code runs unchanged
    under wsmem.  With ``--wsmem-spill-everything`` the cycles also run in
    that debug mode (every allocation its own mapping, unmapped when its cycle
    ends and it died), which turns a read of reused memory into a crash or
    a wrong value instead of a silent pass.  Fixtures (setup and teardown)
    run outside the cycle, and so does code in other threads (NumPy's
    handler is per thread).  The terminal summary says how many test bodies
    ran in a cycle and how many bytes the workspace served.

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
           "pytest_runtest_call", "pytest_terminal_summary", "wsmem_workspace"]

# Tracking setting before --wsmem-leaks turned it on (restored at the end).
_prev_tracking = pytest.StashKey[bool]()
# --wsmem-capture: the session's workspace and what its cycles served.
_capture = pytest.StashKey["_CaptureRun"]()
# --wsmem-capture drops a session workspace whose block grew past this.
KEEP_BLOCK_MAX = 256 << 20


class _CaptureRun:
    """The session workspace of ``--wsmem-capture`` and its tallies."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.ws: Any = None
        self.thread: Any = None
        self.cycles = 0          # test bodies run inside a cycle
        self.served = 0          # bytes the cycles took from the workspace
        self.spilled = 0         # allocations that spilled
        self.active = 0          # cycles that allocated anything
        self.other_thread = 0    # test bodies run outside the session thread
        self.replaced = 0        # workspaces dropped for growing past KEEP_BLOCK_MAX

    def workspace(self) -> Any:
        """The session workspace (a new one if a test destroyed it)."""
        import wsmem

        if self.ws is None or self.ws.is_destroyed:
            # Every test is a different cycle: growing the block to the
            # largest one seen keeps most allocations on the block's own
            # path (bump, free table, pins) instead of in spills.
            self.ws = wsmem.Workspace("pytest-wsmem-capture", spill="reallocate")
        return self.ws

    def run(self) -> Iterator[None]:
        import contextlib
        import threading

        import wsmem

        if self.thread is None:
            self.thread = threading.get_ident()
        if threading.get_ident() != self.thread:   # a workspace has one owner thread
            self.other_thread += 1
            return (yield)
        ws = self.workspace()
        debug = (wsmem.debug_mode("spill_everything") if self.mode == "spill_everything"
                 else contextlib.nullcontext())
        try:
            with debug, ws:
                return (yield)
        finally:
            if not ws.is_destroyed:
                st = ws.stats()
                self.cycles += 1
                self.served += st.last_cycle_bytes
                self.spilled += st.spilled_count
                self.active += st.last_cycle_bytes > 0
                if st.capacity > KEEP_BLOCK_MAX:
                    # A test with a huge cycle grew the block: do not hold
                    # that memory for the rest of the session.  Arrays the
                    # test kept stay valid; the next test gets a new one.
                    ws.destroy()
                    self.replaced += 1

    def summary(self) -> str:
        ws = self.ws
        pinned = 0 if ws is None or ws.is_destroyed else ws.stats().pinned_bytes
        mode = "" if self.mode == "on" else f" in debug mode {self.mode!r}"
        text = (f"wsmem --wsmem-capture: {self.cycles} test bodies ran inside a cycle"
                f"{mode} ({self.active} of them allocated there); the workspace served "
                f"{self.served} bytes, {self.spilled} allocations spilled, "
                f"{pinned} bytes still pinned by arrays that outlived their test")
        if self.replaced:
            text += (f"; the workspace was replaced {self.replaced} time(s) after a test "
                     f"grew its block past {KEEP_BLOCK_MAX >> 20} MiB")
        if self.other_thread:
            text += (f"; {self.other_thread} test bodies ran in another thread "
                     f"than the first and were not captured")
        import wsmem
        text += ("; NumPy's ufunc buffers page-aligned (wsmem.align_ufunc_buffers): "
                 f"{'yes' if wsmem.ufunc_buffers_aligned() else 'no'}")
        return text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wsmem", "wsmem workspaces")
    group.addoption("--wsmem-leaks", action="store_true", default=False,
                    help="fail tests that leave workspace memory pinned by an escaped "
                         "view, printing the allocation tracebacks (turns on wsmem "
                         "allocation tracking)")
    group.addoption("--wsmem-capture", action="store_true", default=False,
                    help="run every test body inside a cycle of one wsmem workspace "
                         "(capture=True), so NumPy allocates the test's arrays there")
    group.addoption("--wsmem-spill-everything", action="store_true", default=False,
                    help="as --wsmem-capture, with wsmem's 'spill_everything' debug mode "
                         "on during the cycles: every allocation gets its own mapping, "
                         "unmapped once its cycle has ended and it died")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("wsmem_spill_everything"):
        config.stash[_capture] = _CaptureRun("spill_everything")
    elif config.getoption("wsmem_capture"):
        config.stash[_capture] = _CaptureRun("on")
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
    run = item.config.stash.get(_capture, None)
    # The leak check goes around the capture cycle: what the test body kept
    # alive past its cycle counts.
    body = _plain() if run is None else run.run()
    if not item.config.getoption("wsmem_leaks"):
        return (yield from body)
    gc.collect()
    before, _, hold = _leak_snapshot()
    result = yield from body         # a failing test raises here: not checked
    gc.collect()
    after, infos, _ = _leak_snapshot()
    new = after - before
    del hold
    if new:
        pytest.fail(_format(new, infos), pytrace=False)
    return result


def _plain() -> Iterator[None]:
    return (yield)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    run = terminalreporter.config.stash.get(_capture, None)
    if run is not None:
        terminalreporter.write_line(run.summary())


@pytest.fixture
def wsmem_workspace(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh host workspace named after the test; destroyed afterwards."""
    import wsmem

    ws = wsmem.Workspace(request.node.name[:60] or "test")
    yield ws
    if not ws.is_open:
        ws.destroy()
