"""Model test (bumpalo-style): random programs of cycles, allocations, writes,
exports, detach/leverage and destroy, checked against a shadow model of the
exact bytes every live array and export must hold."""
import gc
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule)

import wsmem
from wsmem import WorkspaceLeakError

DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64, np.complex128, np.bool_]
CONFIGS = [
    {},                                                            # first_loop, spills first
    {"learning": "none", "initial_size": 4096},                   # small block: spills
    {"learning": "none", "initial_size": 1 << 16, "allocation": "strict"},
    {"spill": "reallocate"},
    {"learning": "over_time", "cycles_before_init": 2},
    {"learning": "none", "initial_size": 8192, "alignment": 256},
]
EXPORT_KINDS = ["asarray", "memoryview", "from_dlpack", "numpy", "__array__",
                "array_copy_false"]
VIEW_OPS = [("idx", (slice(None, None, 2),)), ("idx", (slice(None, None, -1),)),
            ("idx", (slice(1, None),)), ("T",), ("idx", (Ellipsis, slice(None, None, -2))),
            ("idx", (0,))]
MAX_FRAMES = 4
_names = itertools.count()


class Slot:
    """Model of one Workspace object."""

    def __init__(self, cfg_index):
        self.cfg_index = cfg_index
        self.ws = wsmem.Workspace(f"sm{next(_names)}", **CONFIGS[cfg_index])
        self.depth = 0
        self.cycle = 0
        self.destroyed = False

    @property
    def open(self):
        return self.depth > 0 and not self.destroyed


class Base:
    """Model of one allocation: the bytes it must hold, and where it lives."""

    def __init__(self, slot, expected):
        self.slot = slot                      # None: heap
        self.cycle = slot.cycle if slot is not None else None
        self.expected = expected              # heap ndarray: the shadow

    def valid(self):
        s = self.slot
        return s is None or (s.open and s.cycle == self.cycle)


def apply_ops(x, ops):
    for op in ops:
        x = x.T if op[0] == "T" else x[op[1]]
    return x


class Rec:
    """A live object (WsArray or export) that views base through ops."""

    def __init__(self, obj, base, ops, kind=None):
        self.obj, self.base, self.ops, self.kind = obj, base, ops, kind

    def expected(self):
        return apply_ops(self.base.expected, self.ops)


def values(rng, shape, dtype, salt):
    """Distinct, well-defined values (no NaN payloads) of the given shape/dtype."""
    with wsmem.scope_out():          # model data lives on the heap, never captured
        return _values(rng, shape, dtype, salt)


def _values(rng, shape, dtype, salt):
    n = int(np.prod(shape, dtype=np.int64))
    dt = np.dtype(dtype)
    start = int(rng.integers(0, 1 << 14)) + salt * 7919
    if dt == np.bool_:
        v = rng.integers(0, 2, n).astype(bool)
    elif dt.kind == "c":
        v = (np.arange(start, start + n) % 30011).astype(dt) * (1 - 2j)
    elif dt.kind == "f":
        v = ((np.arange(start, start + n) % 30011) - 15000).astype(dt) / 8
    else:
        v = (np.arange(start, start + n) % 30011).astype(dt)
    return v.reshape(shape)


def read(obj):
    """C-order bytes held by an export/WsArray (temporary views die here)."""
    with wsmem.scope_out():
        return np.ascontiguousarray(np.asarray(obj)).tobytes()


def heap_copy(x):
    with wsmem.scope_out():
        return np.array(x, copy=True)


class WorkspaceMachine(RuleBasedStateMachine):

    def __init__(self):
        super().__init__()
        self.slots = [Slot(0), Slot(1)]
        self.dead = []                        # destroyed slots (their pins still count)
        self.frames = []                      # (Slot or None, context object)
        self.arrays = []                      # Rec of WsArray
        self.exports = []                     # Rec of ndarray / memoryview
        self.salt = itertools.count(1)

    # ------------------------------------------------------------ helpers
    def _top(self):
        return self.frames[-1][0] if self.frames else None

    def _valid_arrays(self):
        return [r for r in self.arrays if r.base.valid()]

    def _rng(self, data):
        return np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))

    def _pick(self, data, items, label):
        return items[data.draw(st.integers(0, len(items) - 1), label=label)]

    # ------------------------------------------------------------ cycles
    @precondition(lambda self: len(self.frames) < MAX_FRAMES)
    @rule(i=st.integers(0, 1))
    def open_cycle(self, i):
        slot = self.slots[i]
        slot.ws.__enter__()
        if slot.depth == 0:
            slot.cycle += 1                   # a new cycle; re-entry does not reset
        slot.depth += 1
        self.frames.append((slot, slot.ws))
        assert wsmem.current_workspace() is slot.ws

    @precondition(lambda self: len(self.frames) < MAX_FRAMES)
    @rule()
    def open_scope_out(self):
        ctx = wsmem.scope_out()
        ctx.__enter__()
        self.frames.append((None, ctx))
        assert wsmem.current_workspace() is None

    @precondition(lambda self: bool(self.frames))
    @rule()
    def close(self):
        slot, ctx = self.frames.pop()
        ctx.__exit__(None, None, None)
        if slot is not None:
            slot.depth -= 1

    # ------------------------------------------------------------ allocation
    @rule(data=st.data(),
          shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
          dtype=st.sampled_from(DTYPES),
          how=st.sampled_from(["empty", "zeros", "ones", "full", "ws.empty", "ws.zeros",
                               "asarray", "ufunc"]),
          order=st.sampled_from(["C", "F"]))
    def alloc(self, data, shape, dtype, how, order):
        slot = self._top()
        rng = self._rng(data)
        if how.startswith("ws.") and slot is None:
            how = how[3:]
        init = None
        if how == "empty":
            a = wsmem.empty(shape, dtype=dtype, order=order)
        elif how == "zeros":
            a = wsmem.zeros(shape, dtype=dtype, order=order)
            init = np.zeros(shape, dtype).tobytes()
        elif how == "ones":
            a = wsmem.ones(shape, dtype=dtype, order=order)
            init = np.ones(shape, dtype).tobytes()
        elif how == "full":
            a = wsmem.full(shape, 3, dtype=dtype, order=order)
            init = np.full(shape, 3, dtype).tobytes()
        elif how == "ws.empty":
            a = slot.ws.empty(shape, dtype=dtype, order=order)
        elif how == "ws.zeros":
            a = slot.ws.zeros(shape, dtype=dtype, order=order)
            init = np.zeros(shape, dtype).tobytes()
        elif how == "asarray":
            src = values(rng, shape, dtype, next(self.salt))
            init = src.tobytes()
            a = wsmem.asarray(np.array(src, order=order))
        else:
            # (NumPy itself returns a scalar, not a 0-d array, for a 0-d ufunc.)
            shape = shape or (1,)
            src = values(rng, shape, dtype, next(self.salt))
            a = wsmem.asarray(src)
            init = (np.negative(src) if dtype != np.bool_ else np.logical_not(src)).tobytes()
            a = -a if dtype != np.bool_ else ~a
        assert a.shape == shape and a.dtype == np.dtype(dtype)
        assert a.workspace is (slot.ws if slot is not None else None)
        assert a.is_valid
        if a.nbytes and slot is not None:
            assert a.ptr % slot.ws.config.effective_alignment == 0
        if init is not None:
            assert read(a) == init, how
        vals = values(rng, shape, dtype, next(self.salt))
        a[...] = vals
        base = Base(slot, heap_copy(vals))
        self.arrays.append(Rec(a, base, []))

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data(), op=st.sampled_from(VIEW_OPS))
    def make_view(self, data, op):
        rec = self._pick(data, self.arrays, "array")
        if not rec.base.valid():
            with pytest.raises(WorkspaceLeakError):
                apply_ops(rec.obj, [op])
            return
        if op[0] == "idx" and (rec.obj.ndim == 0 or
                               (op[1] == (0,) and rec.obj.shape[0] == 0)):
            return                                # IndexError in NumPy too
        v = apply_ops(rec.obj, [op])
        if not isinstance(v, wsmem.WsArray):      # a scalar (0-d index): not a view
            return
        assert v.workspace is rec.obj.workspace
        assert v.generation == rec.obj.generation
        self.arrays.append(Rec(v, rec.base, rec.ops + [op]))

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data())
    def write(self, data):
        rec = self._pick(data, self.arrays, "array")
        rng = self._rng(data)
        vals = values(rng, rec.obj.shape, rec.obj.dtype, next(self.salt))
        if not rec.base.valid():
            with pytest.raises(WorkspaceLeakError):
                rec.obj[...] = vals
            return
        rec.obj[...] = vals
        rec.expected()[...] = vals

    @precondition(lambda self: bool(self.exports))
    @rule(data=st.data())
    def write_through_export(self, data):
        rec = self._pick(data, self.exports, "export")
        rng = self._rng(data)
        target = np.asarray(rec.obj)
        vals = values(rng, target.shape, target.dtype, next(self.salt))
        target[...] = vals
        del target
        rec.expected()[...] = vals

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data())
    def forget_array(self, data):
        i = data.draw(st.integers(0, len(self.arrays) - 1), label="forget")
        del self.arrays[i]

    # ------------------------------------------------------------ exports
    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data(), kind=st.sampled_from(EXPORT_KINDS))
    def export(self, data, kind):
        rec = self._pick(data, self.arrays, "array")
        a = rec.obj
        make = {
            "asarray": np.asarray,
            "memoryview": memoryview,
            "from_dlpack": np.from_dlpack,
            "numpy": lambda x: x.numpy(),
            "__array__": lambda x: x.__array__(),
            "array_copy_false": lambda x: np.array(x, copy=False),
        }[kind]
        if not rec.base.valid():
            with pytest.raises(WorkspaceLeakError):
                make(a)
            return
        e = make(a)
        arr = np.asarray(e)
        assert arr.ctypes.data == a.ptr
        if a.size > 1:
            assert np.shares_memory(arr, np.asarray(a))
        del arr
        self.exports.append(Rec(e, rec.base, list(rec.ops), kind))

    @precondition(lambda self: bool(self.exports))
    @rule(data=st.data())
    def drop_export(self, data):
        i = data.draw(st.integers(0, len(self.exports) - 1), label="drop")
        rec = self.exports.pop(i)
        if isinstance(rec.obj, memoryview) and data.draw(st.booleans(), label="release"):
            rec.obj.release()
        del rec

    # ------------------------------------------------------------ copies out
    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data())
    def detach(self, data):
        rec = self._pick(data, self.arrays, "array")
        if not rec.base.valid():
            with pytest.raises(WorkspaceLeakError):
                rec.obj.detach()
            return
        d = rec.obj.detach()
        assert d.workspace is None and d.is_valid
        assert read(d) == rec.expected().tobytes()
        self.arrays.append(Rec(d, Base(None, heap_copy(rec.expected())), []))

    @precondition(lambda self: bool(self.arrays) and any(s is not None for s, _ in self.frames))
    @rule(data=st.data())
    def leverage(self, data):
        rec = self._pick(data, self.arrays, "array")
        open_slots = [s for s, _ in self.frames if s is not None]
        target = self._pick(data, open_slots, "target")
        if not rec.base.valid():
            with pytest.raises(WorkspaceLeakError):
                rec.obj.leverage_to(target.ws)
            return
        out = rec.obj.leverage_to(target.ws)
        if rec.base.slot is target and rec.base.cycle == target.cycle:
            assert out is rec.obj
            return
        assert out is not rec.obj
        assert out.workspace is target.ws and out.is_valid
        assert read(out) == rec.expected().tobytes()
        self.arrays.append(Rec(out, Base(target, heap_copy(rec.expected())), []))

    # ------------------------------------------------------------ destroy
    @rule(i=st.integers(0, 1), cfg=st.integers(0, len(CONFIGS) - 1))
    def destroy_recreate(self, i, cfg):
        slot = self.slots[i]
        if slot.depth > 0:
            with pytest.raises(wsmem.WorkspaceError):
                slot.ws.destroy()
            return
        slot.ws.destroy()
        slot.destroyed = True
        assert slot.ws.is_destroyed
        self.dead.append(slot)
        self.slots[i] = Slot(cfg)

    # ------------------------------------------------------------ checks
    @invariant()
    def current_workspace_matches(self):
        top = self._top()
        assert wsmem.current_workspace() is (top.ws if top is not None else None)
        for s in self.slots:
            assert s.ws.is_open == s.open

    @invariant()
    def arrays_hold_their_bytes(self):
        for rec in self.arrays:
            ok = rec.base.valid()
            assert rec.obj.is_valid == ok
            if ok:
                assert read(rec.obj) == read(rec.expected())
            else:
                with pytest.raises(WorkspaceLeakError):
                    np.asarray(rec.obj)
                assert "stale" in repr(rec.obj)

    @invariant()
    def exports_hold_their_bytes(self):
        for rec in self.exports:
            assert read(rec.obj) == read(rec.expected()), rec.kind

    @invariant()
    def pins_match_live_exports(self):
        for slot in self.slots + self.dead:
            mine = [r for r in self.exports
                    if r.base.slot is slot and np.asarray(r.obj).size > 0]
            closed = [r for r in mine if not r.base.valid()]
            stats = slot.ws.stats()
            if slot.open:
                assert (stats.pinned_bytes > 0) == bool(mine)
            else:
                assert (stats.pinned_bytes > 0) == bool(closed), (stats, len(closed))
                if not slot.destroyed:
                    assert bool(slot.ws.leaks()) == bool(closed)

    def teardown(self):
        self.exports.clear()
        self.arrays.clear()
        while self.frames:
            slot, ctx = self.frames.pop()
            ctx.__exit__(None, None, None)
            if slot is not None:
                slot.depth -= 1
        gc.collect()
        for slot in self.slots + self.dead:
            assert slot.ws.stats().pinned_bytes == 0
            slot.ws.destroy()
        assert wsmem.current_workspace() is None


TestWorkspaceMachine = WorkspaceMachine.TestCase
# No shrink phase: shrinking a failing program can take minutes, and the
# suite must stay fast while a bug is open.  Add Phase.shrink locally to
# minimise a failure.
TestWorkspaceMachine.settings = settings(
    max_examples=100, stateful_step_count=35, deadline=None, database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
