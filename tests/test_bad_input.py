"""Bad input: every error has the right type, a message that says what to do,
and leaves the workspace usable."""
import gc

import numpy as np
import pytest

import wsmem
from threadutil import thread_outcome as _in_thread
from wsmem import (WorkspaceConfig, WorkspaceError, WorkspaceLeakError,
                   WorkspaceOverflowError)


def assert_usable(ws):
    """A following cycle works: allocate, compute, read back."""
    assert wsmem.current_workspace() is None
    with ws:
        a = wsmem.full((3, 4), 2.0)
        b = ws.ones((3, 4))
        c = a * b + 1
        assert c.workspace is ws
        assert float(c.sum()) == 36.0
    assert not ws.is_open
    assert not c.is_valid


CREATORS = {
    "empty": lambda s, **kw: wsmem.empty(s, **kw),
    "zeros": lambda s, **kw: wsmem.zeros(s, **kw),
    "ones": lambda s, **kw: wsmem.ones(s, **kw),
    "full": lambda s, **kw: wsmem.full(s, 0, **kw),
    "empty_like": lambda s, **kw: wsmem.empty_like(np.empty(1), shape=s, **kw),
    "zeros_like": lambda s, **kw: wsmem.zeros_like(np.empty(1), shape=s, **kw),
    "ws.empty": lambda s, **kw: wsmem.current_workspace().empty(s, **kw),
    "ws.zeros": lambda s, **kw: wsmem.current_workspace().zeros(s, **kw),
    "ws.full": lambda s, **kw: wsmem.current_workspace().full(s, 1, **kw),
}


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("creator", list(CREATORS))
@pytest.mark.parametrize("shape", [-1, (-1,), (2, -3), (0, -1), [4, -2]])
def test_negative_shapes(ws, creator, shape):
    with ws:
        with pytest.raises(ValueError, match="negative dimensions"):
            CREATORS[creator](shape)
        assert wsmem.empty(3).shape == (3,)          # same cycle goes on
    assert_usable(ws)


@pytest.mark.parametrize("shape", [(2 ** 40, 2 ** 40), (2 ** 62,), 2 ** 62,
                                   (2 ** 31, 2 ** 31, 2 ** 31), (2 ** 61, 4),
                                   (3, 2 ** 61, 1)])
def test_huge_shapes_too_big(ws, shape):
    with ws:
        with pytest.raises(ValueError, match="too big"):
            wsmem.empty(shape)
        with pytest.raises(ValueError, match="too big"):
            ws.zeros(shape)
    with pytest.raises(ValueError, match="too big"):
        wsmem.empty(shape)                            # heap path
    assert_usable(ws)


@pytest.mark.parametrize("shape", [2 ** 63, (2 ** 63,), (2, 2 ** 64), 2 ** 70])
def test_shapes_beyond_ssize_t_raise_valueerror(ws, shape):
    # NumPy raises ValueError for these (np.empty(2**63)); OverflowError is
    # not a ValueError.
    with pytest.raises(ValueError):
        np.empty(shape)
    with ws:
        with pytest.raises(ValueError):
            wsmem.empty(shape)
    assert_usable(ws)


def test_zero_dim_in_huge_shape_is_empty(ws):
    with ws:
        a = wsmem.empty((2 ** 62, 0, 2 ** 62))
        assert a.size == 0 and a.nbytes == 0


@pytest.mark.parametrize("shape", [(2.0, 3), (2, "3"), (None,), ([2], 3), 2.5, "abc",
                                   None, (2, 3.0), object()])
def test_non_int_shape_entries(ws, shape):
    with ws:
        with pytest.raises(TypeError, match="integer|int"):
            wsmem.empty(shape)
        with pytest.raises(TypeError, match="integer|int"):
            ws.empty(shape)
    assert_usable(ws)


def test_too_many_dims(ws):
    with ws:
        a = wsmem.empty((1,) * 64)          # NumPy's limit is fine
        assert a.ndim == 64
        assert np.asarray(a).ndim == 64
        del a
        with pytest.raises(ValueError, match="dimension"):
            wsmem.empty((1,) * 65)
        with pytest.raises(ValueError, match="dimension"):
            ws.zeros((1,) * 100)
    assert_usable(ws)


def test_memory_refused_by_the_system(ws):
    # 4 PiB: beyond any user address space, but not "too big" for a shape.
    with ws:
        with pytest.raises(MemoryError) as ei:
            wsmem.empty(2 ** 52, dtype=np.uint8)
        assert isinstance(ei.value, WorkspaceOverflowError)
        assert "max_size" in str(ei.value) or "smaller" in str(ei.value)
        assert wsmem.ones(4).sum() == 4
    assert_usable(ws)
    with pytest.raises(MemoryError):
        wsmem.empty(2 ** 52, dtype=np.uint8)           # heap: NumPy's MemoryError


# ---------------------------------------------------------------- dtypes and orders

@pytest.mark.parametrize("dtype,exc,match", [
    ("notatype", TypeError, "not understood"),
    ("float33", TypeError, "not understood"),
    (object, TypeError, "Python objects"),
    ("O", TypeError, "Python objects"),
    ([("a", "f8"), ("b", "O")], TypeError, "Python objects"),
    ("S", TypeError, "size"),
    ("U", TypeError, "size"),
    (3.5, TypeError, None),
])
def test_bad_dtypes(ws, dtype, exc, match):
    with ws:
        for f in (wsmem.empty, wsmem.zeros, wsmem.ones, ws.empty, ws.zeros):
            with pytest.raises(exc, match=match):
                f(3, dtype=dtype)
        with pytest.raises(exc, match=match):
            wsmem.full(3, 0, dtype=dtype)
        with pytest.raises(exc, match=match):
            wsmem.empty_like(np.ones(2), dtype=dtype)
        a = wsmem.ones(2)
        with pytest.raises(exc, match=match):
            a.astype(dtype)
    with pytest.raises(exc, match=match):
        wsmem.empty(3, dtype=dtype)
    assert_usable(ws)


@pytest.mark.parametrize("order", ["X", "K", "A", "", 1, "CF"])
def test_bad_orders(ws, order):
    with ws:
        for f in (wsmem.empty, wsmem.zeros, wsmem.ones, ws.empty, ws.ones):
            with pytest.raises(ValueError, match="'C' or 'F'"):
                f((2, 2), order=order)
    with pytest.raises(ValueError, match="'C' or 'F'"):
        wsmem.empty(2, order=order)
    assert_usable(ws)


def test_bad_values_in_operations(ws):
    with ws:
        a = wsmem.zeros((2, 3))
        with pytest.raises(ValueError):
            a.reshape(4, 2)
        with pytest.raises(IndexError):
            a[5]
        with pytest.raises(IndexError):
            a[0, 0, 0]
        with pytest.raises(ValueError):
            a[0] = [1, 2]
        with pytest.raises(ValueError):
            wsmem.full(3, "abc", dtype=np.float64)
        with pytest.raises(ValueError):
            a + np.ones(4)
        with pytest.raises(TypeError, match="Workspace"):
            a.leverage_to(None)
        assert float(a.sum()) == 0.0
    assert_usable(ws)


# ---------------------------------------------------------------- configs

SIZE_FIELDS = ["initial_size", "min_size", "max_size", "cycles_before_init"]


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", ["1024", 1.5, None, [1], 1024.0])
def test_config_size_wrong_types(field, value):
    with pytest.raises(TypeError, match=field):
        WorkspaceConfig(**{field: value})
    with pytest.raises(TypeError, match=field):
        wsmem.Workspace("bad", **{field: value})


@pytest.mark.parametrize("field", SIZE_FIELDS + ["alignment"])
def test_config_bool_is_not_a_size(field):
    # _size() singles out bool, as NumPy rejects bool shapes: True is not 1 byte.
    with pytest.raises(TypeError, match=field):
        WorkspaceConfig(**{field: True})


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_config_size_negative(field):
    with pytest.raises(ValueError, match=f"{field}=-1"):
        WorkspaceConfig(**{field: -1})


def test_config_size_numpy_ints_accepted():
    cfg = WorkspaceConfig(initial_size=np.int64(4096), max_size=np.uint32(1 << 20))
    assert cfg.initial_size == 4096 and type(cfg.initial_size) is int
    assert cfg.max_size == 1 << 20


def test_config_size_too_large():
    with pytest.raises(ValueError, match="larger than"):
        WorkspaceConfig(max_size=1 << 63)


def test_config_min_and_initial_above_max():
    with pytest.raises(ValueError, match="raise max_size or lower min_size"):
        WorkspaceConfig(min_size=2048, max_size=1024)
    with pytest.raises(ValueError, match="raise max_size or lower initial_size"):
        WorkspaceConfig(initial_size=2048, max_size=1024)
    # max_size=0 means unlimited
    assert WorkspaceConfig(min_size=1 << 30, initial_size=1 << 20).max_size == 0


@pytest.mark.parametrize("value,exc", [("x", TypeError), (None, TypeError), ([0.3], TypeError),
                                       (-0.1, ValueError), (float("nan"), ValueError),
                                       (float("inf"), ValueError), (1e6, ValueError)])
def test_config_overallocation_limit(value, exc):
    with pytest.raises(exc, match="overallocation_limit"):
        WorkspaceConfig(overallocation_limit=value)


POLICIES = {
    "allocation": ("strict", "overallocate"),
    "learning": ("none", "first_loop", "over_time"),
    "spill": ("external", "reallocate", "fail"),
    "reset": ("block_left", "endofbuffer_reached"),
    "location": ("host", "pinned", "device", "mmap"),
}


@pytest.mark.parametrize("field", list(POLICIES))
@pytest.mark.parametrize("value", ["bogus", "", 3, None, "first-loop"])
def test_config_unknown_policy(field, value):
    with pytest.raises(ValueError, match=field) as ei:
        WorkspaceConfig(**{field: value})
    msg = str(ei.value)
    for choice in POLICIES[field]:
        assert repr(choice) in msg, (choice, msg)
    with pytest.raises(ValueError, match=field):
        wsmem.Workspace("bad", **{field: value})


def test_config_policies_accept_enums_and_strings():
    cfg = WorkspaceConfig(spill=wsmem.SpillPolicy.FAIL, learning="NONE",
                          allocation="Strict")
    assert cfg.spill is wsmem.SpillPolicy.FAIL
    assert cfg.learning is wsmem.LearningPolicy.NONE
    assert cfg.allocation is wsmem.AllocationPolicy.STRICT


def test_config_mmap_rules(tmp_path):
    with pytest.raises(ValueError, match="learning='none'"):
        WorkspaceConfig(location="mmap", initial_size=4096)
    with pytest.raises(ValueError, match="initial_size > 0"):
        WorkspaceConfig(location="mmap", learning="none")
    with pytest.raises(ValueError, match="mmap_path only applies to location='mmap'"):
        WorkspaceConfig(mmap_path=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="mmap_path"):
        WorkspaceConfig(location="host", learning="none", mmap_path=tmp_path / "x")
    with pytest.raises(TypeError, match="str|PathLike"):
        WorkspaceConfig(location="mmap", learning="none", initial_size=4096, mmap_path=3)
    cfg = WorkspaceConfig(location="mmap", learning="none", initial_size=4096,
                          mmap_path=tmp_path / "ws.bin")
    assert cfg.mmap_path == str(tmp_path / "ws.bin")


@pytest.mark.parametrize("value,exc", [(3, ValueError), (0, ValueError), (48, ValueError),
                                       (1 << 22, ValueError), (-64, ValueError),
                                       ("64", TypeError), (64.0, TypeError)])
def test_config_alignment(value, exc):
    with pytest.raises(exc, match="alignment"):
        WorkspaceConfig(alignment=value)


def test_config_alignment_valid():
    assert WorkspaceConfig(alignment=1).effective_alignment == 1
    assert WorkspaceConfig(alignment=1 << 21).effective_alignment == 1 << 21
    assert WorkspaceConfig().effective_alignment == 64


@pytest.mark.parametrize("location", ["host", "mmap"])
def test_config_device_on_host_workspace(location):
    extra = {"learning": "none", "initial_size": 4096} if location == "mmap" else {}
    with pytest.raises(ValueError, match="only applies to location='device' or 'pinned'"):
        WorkspaceConfig(location=location, device=0, **extra)
    with pytest.raises(ValueError, match="device"):
        wsmem.Workspace("bad", location=location, device=1, **extra)


@pytest.mark.parametrize("value", [-1, "0", 1.0, True])
def test_config_device_bad_values(value):
    with pytest.raises((ValueError, TypeError), match="device"):
        WorkspaceConfig(location="device", device=value)


def test_config_replace_unknown_field():
    with pytest.raises(TypeError, match="unknown WorkspaceConfig field"):
        WorkspaceConfig().replace(sizes=3)
    with pytest.raises(TypeError):
        wsmem.Workspace("bad", sizes=3)


def test_config_is_frozen():
    cfg = WorkspaceConfig()
    with pytest.raises(Exception):
        cfg.max_size = 5


# ---------------------------------------------------------------- workspaces

@pytest.mark.parametrize("name", ["", None, 3, b"abc"])
def test_workspace_bad_name(name):
    with pytest.raises((TypeError, ValueError), match="non-empty str"):
        wsmem.Workspace(name)


def test_workspace_bad_config_type():
    with pytest.raises(TypeError, match="WorkspaceConfig"):
        wsmem.Workspace("bad", {"spill": "fail"})


@pytest.mark.parametrize("location", ["device", "pinned"])
def test_gpu_locations_without_cuda(location):
    try:
        import cupy  # noqa: F401
        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("CUDA is available here")
    except Exception:
        pass
    with pytest.raises(WorkspaceError, match="CuPy|CUDA") as ei:
        wsmem.Workspace("gpu", location=location)
    msg = str(ei.value)
    assert location in msg
    assert "location='host'" in msg or "install" in msg.lower()
    with pytest.raises(WorkspaceError, match="CuPy|CUDA"):
        wsmem.Workspace("gpu", WorkspaceConfig(location=location, device=0))
    assert wsmem.current_workspace() is None


def test_destroyed_workspace(ws):
    with ws:
        a = wsmem.ones(2)
    ws.destroy()
    ws.destroy()                                     # idempotent
    assert ws.is_destroyed
    with pytest.raises(WorkspaceError, match="destroyed.*create a new one"):
        with ws:
            pass
    assert wsmem.current_workspace() is None
    for call in (lambda: ws.empty(3), lambda: ws.zeros(3), lambda: ws.full(3, 1),
                 lambda: ws.asarray([1]), lambda: ws.initialize(),
                 lambda: ws.borrow().__enter__()):
        with pytest.raises(WorkspaceError, match="destroyed"):
            call()
    assert wsmem.current_workspace() is None
    with pytest.raises(WorkspaceLeakError, match="destroyed"):
        a + 1
    other = wsmem.Workspace("other_destroyed_test")
    with other:
        b = wsmem.ones(2)
        with pytest.raises(WorkspaceError, match="destroyed"):
            b.leverage_to(ws)
    assert_usable(other)
    other.destroy()
    fresh = wsmem.get_workspace(ws.name)
    assert fresh is not ws
    assert_usable(fresh)


def test_destroy_while_open(ws):
    with ws:
        a = wsmem.ones(3)
        with pytest.raises(WorkspaceError, match="after its `with` block"):
            ws.destroy()
        assert a.is_valid and float(a.sum()) == 3
    assert_usable(ws)


def test_exit_without_enter(ws):
    with pytest.raises(WorkspaceError, match="not open"):
        ws.__exit__(None, None, None)
    assert_usable(ws)


def test_borrow_closed_workspace(ws):
    with pytest.raises(WorkspaceError, match="not open"):
        with ws.borrow():
            pass
    assert wsmem.current_workspace() is None
    assert_usable(ws)


def test_get_workspace_conflicting_config():
    ws = wsmem.get_workspace("conflict")
    with pytest.raises(ValueError, match="destroy it first"):
        wsmem.get_workspace("conflict", spill="fail")
    with pytest.raises(ValueError, match="destroy it first"):
        wsmem.get_workspace("conflict", WorkspaceConfig(max_size=1 << 20))
    assert wsmem.get_workspace("conflict") is ws
    assert_usable(ws)


def test_bad_debug_mode():
    with pytest.raises(ValueError, match="'spill_everything'"):
        wsmem.debug_mode("loud")
    assert wsmem.get_debug_mode_name() is wsmem.DebugMode.DISABLED


def test_overflow_fail_policy_leaves_workspace_usable():
    ws = wsmem.Workspace("fail_ws", learning="none", initial_size=4096, spill="fail",
                         allocation="strict")
    try:
        with ws:
            a = wsmem.ones(100)
            with pytest.raises(WorkspaceOverflowError, match="Raise initial_size") as ei:
                wsmem.empty(10_000)
            assert isinstance(ei.value, MemoryError)
            assert ei.value.stats is not None and ei.value.stats.name == "fail_ws"
            with pytest.raises(WorkspaceOverflowError):
                np.multiply.outer(a, a)             # 80 KB result
            assert float(a.sum()) == 100.0          # earlier array untouched
            b = wsmem.ones(100)
            assert b.workspace is ws
        assert_usable(ws)
    finally:
        ws.destroy()


def test_overflow_max_size_leaves_workspace_usable():
    ws = wsmem.Workspace("max_ws", max_size=1 << 16)
    try:
        with ws:
            with pytest.raises(WorkspaceOverflowError, match="Raise max_size"):
                wsmem.empty(1 << 20, dtype=np.uint8)
            assert wsmem.ones(8).sum() == 8
        assert_usable(ws)
    finally:
        ws.destroy()


# ---------------------------------------------------------------- foreign thread



def _enter(ws):
    with ws:
        pass


@pytest.mark.parametrize("what", ["enter", "empty", "zeros", "full", "asarray",
                                  "initialize", "destroy", "borrow", "leverage_into"])
def test_foreign_thread(ws, what):
    with ws:
        src = wsmem.ones(3)

    def leverage_into():
        own = wsmem.Workspace("thread_own")
        try:
            with own:
                x = wsmem.ones(2)
                return x.leverage_to(ws)
        finally:
            own.destroy()

    calls = {
        "enter": lambda: _enter(ws),
        "empty": lambda: ws.empty(3),
        "zeros": lambda: ws.zeros(3),
        "full": lambda: ws.full(3, 1.0),
        "asarray": lambda: ws.asarray([1.0]),
        "initialize": lambda: ws.initialize(),
        "destroy": lambda: ws.destroy(),
        "borrow": lambda: ws.borrow().__enter__(),
        "leverage_into": leverage_into,
    }
    with ws:                              # open in the owner thread
        box = _in_thread(calls[what])
        assert "error" in box, box
        err = box["error"]
        if what in ("enter", "initialize", "destroy"):
            assert isinstance(err, WorkspaceError)
            assert "belongs to thread" in str(err) and "get_workspace" in str(err)
        else:
            assert isinstance(err, WorkspaceError)
            assert "thread" in str(err)
        assert wsmem.current_workspace() is ws
        assert wsmem.ones(2).workspace is ws
    assert not ws.is_destroyed
    assert not src.is_valid
    box = _in_thread(calls[what])          # closed in the owner: still refused
    assert isinstance(box.get("error"), WorkspaceError), box
    assert_usable(ws)


def test_foreign_thread_allocates_on_its_own(ws):
    with ws:
        box = _in_thread(lambda: (wsmem.current_workspace(), wsmem.empty(3).workspace))
        assert box["result"] == (None, None)
        ws_t = _in_thread(lambda: _thread_cycle())
        assert ws_t["result"] is True, ws_t
    assert_usable(ws)


def _thread_cycle():
    own = wsmem.get_workspace("per_thread")
    with own:
        a = wsmem.ones(4)
        ok = a.workspace is own and float(a.sum()) == 4.0
    wsmem.destroy_thread_workspaces()
    return ok


def test_exception_inside_cycle_restores_state(ws):
    outer = wsmem.Workspace("exc_outer")
    try:
        with outer:
            with pytest.raises(ValueError):
                with ws:
                    wsmem.empty(-1)
            assert wsmem.current_workspace() is outer
            assert not ws.is_open
            assert wsmem.empty(1).workspace is outer
        assert_usable(ws)
    finally:
        outer.destroy()
    gc.collect()
