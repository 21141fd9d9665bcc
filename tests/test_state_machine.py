"""Model test (bumpalo-style): random programs of cycles, nesting, borrow,
scope_out, circular workspaces, allocations, writes, buffer/ndarray/DLPack/
__array_interface__ exports, NumPy drop-in temporaries (capture) that escape
their cycle, detach/leverage, destroy and debug modes, checked after every
step against a shadow model of the exact bytes every live array and export
must hold.

Scale: ``pytest --wsmem-fuzz-steps=N`` (or ``WSMEM_FUZZ_STEPS=N``) runs about
N steps; the default is 100 programs of 35 steps.  ``bench/fuzz.py`` runs the
long mode and prints the figures.
"""
import collections
import gc
import itertools
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

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
# Circular workspaces: arrays stay valid until the ring writes over them, not
# until their cycle ends, so the model learns validity from the array (once
# stale, stale for good) and checks the bytes of every array still valid.
RING_CONFIGS = [
    {"reset": "endofbuffer_reached", "learning": "none", "initial_size": 2048,
     "capture": False},
    {"reset": "endofbuffer_reached", "learning": "none", "initial_size": 8192,
     "allocation": "strict", "capture": False},
]
N_SLOTS = 3                               # slots 0, 1: scoped; slot 2: a ring
DEBUG_MODES = ["disabled", "spill_everything", "bypass_everything"]
EXPORT_KINDS = ["asarray", "memoryview", "from_dlpack", "numpy", "__array__",
                "array_copy_false", "array_interface"]
TEMP_OPS = ["exp", "add", "matmul", "concatenate", "sort", "copy"]
VIEW_OPS = [("idx", (slice(None, None, 2),)), ("idx", (slice(None, None, -1),)),
            ("idx", (slice(1, None),)), ("T",), ("idx", (Ellipsis, slice(None, None, -2))),
            ("idx", (0,))]
MAX_FRAMES = 4
_names = itertools.count()


class _AI:
    """A consumer-made object exporting only a WsArray's __array_interface__.

    For a workspace array the dict's `data` is the pin, which NumPy keeps as
    the base of the array it builds; that is what is tested here.  Like any
    consumer of the protocol it keeps the provider alive (a heap WsArray's
    `data` is a pointer tuple, exactly as NumPy's own arrays give it)."""

    def __init__(self, src):
        self.src = src
        self.__array_interface__ = src.__array_interface__


class Stats:
    """Figures of one run (bench/fuzz.py prints them)."""
    steps = 0
    programs = 0
    bytes_checked = 0
    events = collections.Counter()        # what the programs did (rule, kind, outcome)

    @classmethod
    def reset(cls):
        cls.steps = cls.programs = cls.bytes_checked = 0
        cls.events = collections.Counter()


class Slot:
    """Model of one Workspace object."""

    def __init__(self, cfg_index, ring=False):
        self.cfg_index = cfg_index
        self.ring = ring
        cfg = (RING_CONFIGS if ring else CONFIGS)[cfg_index]
        self.capture = cfg.get("capture", True)
        self.ws = wsmem.Workspace(f"sm{next(_names)}", **cfg)
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
        self.ring_stale = False               # a ring wrote over it (learned)

    @property
    def ring(self):
        return self.slot is not None and self.slot.ring

    def valid(self):
        s = self.slot
        if s is None:
            return True
        if s.ring:
            return not self.ring_stale and not s.destroyed
        return s.open and s.cycle == self.cycle


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

    def valid(self):
        """Scoped and heap arrays: the model decides.  Ring arrays: what the
        array says, checked to be monotone (stale for good)."""
        if not self.base.ring:
            return self.base.valid()
        if self.base.slot.destroyed:
            return False
        if getattr(self, "ring_stale", False):
            assert not self.obj.is_valid, "a stale ring array became valid again"
            return False
        if not self.obj.is_valid:
            self.ring_stale = True
            Stats.events["ring array written over (stale)"] += 1
            return False
        return True


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
        b = np.ascontiguousarray(np.asarray(obj)).tobytes()
    Stats.bytes_checked += len(b)
    return b


def heap_copy(x):
    with wsmem.scope_out():
        return np.array(x, copy=True)


class WorkspaceMachine(RuleBasedStateMachine):

    def __init__(self):
        super().__init__()
        Stats.programs += 1
        self.slots = [Slot(0), Slot(1), Slot(0, ring=True)]
        self.dead = []                        # destroyed slots (their pins still count)
        self.frames = []                      # (Slot or None, context object, kind)
        self.debug = None                     # active debug_mode context, or None
        self.debug_name = "disabled"
        self.arrays = []                      # Rec of WsArray
        self.exports = []                     # Rec of ndarray / memoryview
        self.salt = itertools.count(1)

    # ------------------------------------------------------------ helpers
    def _top(self):
        return self.frames[-1][0] if self.frames else None

    def _valid_arrays(self):
        return [r for r in self.arrays if r.valid()]

    def _alloc_slot(self):
        """Where creation functions allocate now (None: the heap)."""
        top = self._top()
        return None if self.debug_name == "bypass_everything" else top

    def _capture_slot(self):
        """Where NumPy's own allocations land now (None: the heap)."""
        top = self._top()
        if top is None or not top.capture or self.debug_name == "bypass_everything":
            return None
        return top

    def _rng(self, data):
        return np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))

    def _pick(self, data, items, label):
        return items[data.draw(st.integers(0, len(items) - 1), label=label)]

    # ------------------------------------------------------------ cycles
    @precondition(lambda self: len(self.frames) < MAX_FRAMES)
    @rule(i=st.integers(0, N_SLOTS - 1))
    def open_cycle(self, i):
        slot = self.slots[i]
        slot.ws.__enter__()
        if slot.depth == 0:
            slot.cycle += 1                   # a new cycle; re-entry does not reset
        slot.depth += 1
        self.frames.append((slot, slot.ws, "with"))
        assert wsmem.current_workspace() is slot.ws

    @precondition(lambda self: len(self.frames) < MAX_FRAMES)
    @rule(i=st.integers(0, N_SLOTS - 1))
    def borrow(self, i):
        slot = self.slots[i]
        ctx = slot.ws.borrow()
        if not slot.open:
            with pytest.raises(wsmem.WorkspaceError):
                ctx.__enter__()
            return
        gen = slot.ws.stats().generation
        ctx.__enter__()
        assert slot.ws.stats().generation == gen      # no new cycle
        self.frames.append((slot, ctx, "borrow"))
        Stats.events["borrow"] += 1
        assert wsmem.current_workspace() is slot.ws

    @precondition(lambda self: len(self.frames) < MAX_FRAMES)
    @rule()
    def open_scope_out(self):
        ctx = wsmem.scope_out()
        ctx.__enter__()
        self.frames.append((None, ctx, "scope_out"))
        assert wsmem.current_workspace() is None

    @precondition(lambda self: bool(self.frames))
    @rule(act=st.integers(0, 3))
    def close(self, act):
        # Closing the last frame (back to the heap) 1 time in 4: most steps
        # then run inside some workspace.
        if len(self.frames) > 1 or act == 0:
            self._close_top()

    def _close_top(self):
        slot, ctx, kind = self.frames.pop()
        ctx.__exit__(None, None, None)
        if kind == "with":
            slot.depth -= 1

    @initialize(i=st.sampled_from([0, 0, 1, 1, 2, -1]),
                mode=st.sampled_from(DEBUG_MODES * 2 + ["disabled"] * 4))
    def start(self, i, mode):
        """Most programs start inside a cycle, in normal mode (so that most
        steps exercise workspace memory); some start on the heap or in a
        debug mode."""
        if mode != "disabled":
            self.debug_mode(mode)
        if i >= 0:
            self.open_cycle(i)

    @rule(mode=st.sampled_from(DEBUG_MODES), act=st.integers(0, 3))
    def switch_debug_mode(self, mode, act):
        if act == 0:                          # 1 in 4: keeps modes in force for a while
            self.debug_mode(mode)

    def debug_mode(self, mode):
        if self.debug is not None:
            self.debug.__exit__(None, None, None)
            self.debug = None
        if mode != "disabled":
            self.debug = wsmem.debug_mode(mode)
            self.debug.__enter__()
        self.debug_name = mode
        assert wsmem.get_debug_mode_name().value == mode
        Stats.events[f"debug_mode {mode}"] += 1

    # ------------------------------------------------------------ allocation
    @rule(data=st.data(),
          shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
          dtype=st.sampled_from(DTYPES),
          how=st.sampled_from(["empty", "zeros", "ones", "full", "ws.empty", "ws.zeros",
                               "asarray", "ufunc"]),
          order=st.sampled_from(["C", "F"]))
    def alloc(self, data, shape, dtype, how, order):
        top = self._top()
        slot = self._alloc_slot()
        rng = self._rng(data)
        if how.startswith("ws.") and top is None:
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
            a = top.ws.empty(shape, dtype=dtype, order=order)
        elif how == "ws.zeros":
            a = top.ws.zeros(shape, dtype=dtype, order=order)
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
        Stats.events["alloc in a ring" if base.ring else
                     "alloc on the heap" if slot is None else "alloc in a workspace"] += 1

    @rule(data=st.data(),
          shape=st.lists(st.integers(0, 40), min_size=1, max_size=2).map(tuple),
          dtype=st.sampled_from(DTYPES), how=st.sampled_from(["empty", "asarray"]))
    def ring_alloc(self, data, shape, dtype, how):
        """One cycle of the ring (or a re-entry when it is open): an item, as
        prefetch makes them, that stays valid until the ring writes over it."""
        slot = self.slots[N_SLOTS - 1]
        rng = self._rng(data)
        vals = values(rng, shape, dtype, next(self.salt))
        with slot.ws:
            if slot.depth == 0:
                slot.cycle += 1
            slot.depth += 1
            try:
                if how == "empty":
                    a = slot.ws.empty(shape, dtype=dtype)
                    a[...] = vals
                else:
                    a = slot.ws.asarray(vals)
            finally:
                slot.depth -= 1
        bypass = self.debug_name == "bypass_everything"
        assert a.workspace is (None if bypass else slot.ws) and a.is_valid
        assert read(a) == vals.tobytes()
        self.arrays.append(Rec(a, Base(None if bypass else slot, heap_copy(vals)), []))
        Stats.events["alloc on the heap" if bypass else "alloc in a ring"] += 1

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data(), op=st.sampled_from(VIEW_OPS))
    def make_view(self, data, op):
        rec = self._pick(data, self.arrays, "array")
        if not rec.valid():
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
        v_rec = Rec(v, rec.base, rec.ops + [op])
        if rec.base.ring and not v.is_valid:
            v_rec.ring_stale = True
        self.arrays.append(v_rec)

    @precondition(lambda self: bool(self.arrays))
    @rule(data=st.data())
    def write(self, data):
        rec = self._pick(data, self.arrays, "array")
        rng = self._rng(data)
        vals = values(rng, rec.obj.shape, rec.obj.dtype, next(self.salt))
        if not rec.valid():
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
            "array_interface": lambda x: np.asarray(_AI(x)),
        }[kind]
        if not rec.valid():
            with pytest.raises(WorkspaceLeakError):
                make(a)
            Stats.events["stale export refused"] += 1
            return
        e = make(a)
        arr = np.asarray(e)
        assert arr.ctypes.data == a.ptr
        if a.size > 1:
            assert np.shares_memory(arr, np.asarray(a))
        del arr
        self.exports.append(Rec(e, rec.base, list(rec.ops), kind))
        Stats.events[f"export {kind}"] += 1

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
        if not rec.valid():
            with pytest.raises(WorkspaceLeakError):
                rec.obj.detach()
            Stats.events["stale detach refused"] += 1
            return
        d = rec.obj.detach()
        assert d.workspace is None and d.is_valid
        assert read(d) == rec.expected().tobytes()
        self.arrays.append(Rec(d, Base(None, heap_copy(rec.expected())), []))

    @precondition(lambda self: bool(self.arrays) and any(s is not None for s, *_ in self.frames))
    @rule(data=st.data())
    def leverage(self, data):
        rec = self._pick(data, self.arrays, "array")
        open_slots = [s for s, *_ in self.frames if s is not None]
        target = self._pick(data, open_slots, "target")
        if not rec.valid():
            with pytest.raises(WorkspaceLeakError):
                rec.obj.leverage_to(target.ws)
            return
        out = rec.obj.leverage_to(target.ws)
        if out is rec.obj:
            assert (rec.base.slot is target and (target.ring or rec.base.cycle == target.cycle))
            return
        assert not (rec.base.slot is target and not target.ring
                    and rec.base.cycle == target.cycle)
        where = None if self.debug_name == "bypass_everything" else target
        assert out.workspace is (where.ws if where is not None else None) and out.is_valid
        assert read(out) == rec.expected().tobytes()
        self.arrays.append(Rec(out, Base(where, heap_copy(rec.expected())), []))

    # ------------------------------------------------------------ NumPy drop-in
    @rule(data=st.data(), op=st.sampled_from(TEMP_OPS), n=st.integers(1, 40),
          keep=st.booleans())
    def numpy_temporary(self, data, op, n, keep):
        """Plain NumPy inside the current frame: with capture its results live
        in the workspace.  Kept ones escape the cycle (and pin their bytes);
        the others die at once (memory the cycle may reuse)."""
        rng = self._rng(data)
        src = values(rng, (n,), np.float64, next(self.salt))
        src2 = values(rng, (n,), np.float64, next(self.salt))
        with wsmem.scope_out():
            fns = {"exp": lambda x, y: np.exp(x / 30000),
                   "add": lambda x, y: x + y * 2,
                   "matmul": lambda x, y: np.outer(x, y) @ y,
                   "concatenate": lambda x, y: np.concatenate([x, y, x]),
                   "sort": lambda x, y: np.sort(x - y),
                   "copy": lambda x, y: x.copy()}
            want = fns[op](src, src2)
        got = fns[op](src, src2)             # allocated by NumPy through the handler
        assert type(got) is np.ndarray
        assert got.tobytes() == want.tobytes(), op
        Stats.bytes_checked += got.nbytes
        where = self._capture_slot()
        Stats.events["numpy temporary " + ("captured" if where else "on the heap")] += 1
        if keep:
            self.exports.append(Rec(got, Base(where, want), [], "captured"))
            Stats.events["captured result kept (escapes its cycle)"] += 1


    # ------------------------------------------------------------ destroy
    @rule(i=st.integers(0, N_SLOTS - 1), cfg=st.integers(0, len(CONFIGS) - 1))
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
        if slot.ring:
            self.slots[i] = Slot(cfg % len(RING_CONFIGS), ring=True)
        else:
            self.slots[i] = Slot(cfg)

    # ------------------------------------------------------------ checks
    @invariant()
    def count_step(self):
        Stats.steps += 1

    @invariant()
    def current_workspace_matches(self):
        top = self._top()
        assert wsmem.current_workspace() is (top.ws if top is not None else None)
        for s in self.slots:
            assert s.ws.is_open == s.open

    @invariant()
    def arrays_hold_their_bytes(self):
        for rec in self.arrays:
            ok = rec.valid()
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
            stats = slot.ws.stats()
            if slot.ring:
                # a ring's pins: exactly its live exports, open or not
                assert (stats.pinned_bytes > 0) == bool(mine), (stats, len(mine))
                continue
            closed = [r for r in mine if not r.base.valid()]
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
            self._close_top()
        if self.debug is not None:
            self.debug.__exit__(None, None, None)
            self.debug = None
        gc.collect()
        for slot in self.slots + self.dead:
            assert slot.ws.stats().pinned_bytes == 0
            slot.ws.destroy()
        assert wsmem.current_workspace() is None


DEFAULT_PROGRAMS, DEFAULT_STEPS = 100, 35


def machine_settings(total_steps=None, steps_per_program=DEFAULT_STEPS):
    """Settings for about `total_steps` steps (default: 100 programs of 35).

    No shrink phase: shrinking a failing program can take minutes, and the
    suite must stay fast while a bug is open.  Add Phase.shrink locally to
    minimise a failure.
    """
    programs = (DEFAULT_PROGRAMS if total_steps is None
                else max(1, math.ceil(total_steps / steps_per_program)))
    return settings(
        max_examples=programs, stateful_step_count=steps_per_program, deadline=None,
        database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck))


def load_lazy_modules():
    """Finish every lazy import now, before any cycle is open.

    Between rules Hypothesis scans modules new to ``sys.modules`` for
    constants (``getattr(module, "__file__")``), and that access loads a lazy
    module (``importlib.util.LazyLoader``, as CuPy registers ``cupyx``).
    Loaded inside the machine's open cycle, such a module's import-time arrays
    (``numpy.polynomial``'s domain arrays, found with ``track=True``) are
    NumPy allocations captured by the workspace that live for good: real
    pins the model cannot know of.  Touching ``__file__`` here, until no new
    module appears, leaves nothing for that scan to load.
    """
    seen = -1
    while seen != len(sys.modules):
        seen = len(sys.modules)
        for module in list(sys.modules.values()):
            getattr(module, "__file__", None)


def test_workspace_machine(request):
    steps = request.config.getoption("--wsmem-fuzz-steps") or os.environ.get(
        "WSMEM_FUZZ_STEPS")
    Stats.reset()
    load_lazy_modules()
    run_state_machine_as_test(WorkspaceMachine,
                              settings=machine_settings(int(steps) if steps else None))
    assert Stats.steps > 0 and Stats.bytes_checked > 0
