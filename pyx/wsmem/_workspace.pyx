"""Workspace: the public face of an arena (cycles, scopes, stats, leaks)."""
cimport cython
from wsmem._arena cimport (Arena, current_arena, set_current_arena, set_current_elsewhere,
                           get_debug_mode,
                           set_debug_mode, RESET_ENDOFBUFFER,
                           ring_expire_before, wsmem_running_context,
                           DEBUG_OFF, DEBUG_SPILL_EVERYTHING, DEBUG_BYPASS_EVERYTHING)
from wsmem._array cimport new_array, INIT_NONE, INIT_ZEROS, WsArray
from wsmem._capture cimport (make_handler, detach_handler, set_handler, restore_handler,
                             enter_handler, enter_plain, _Switch,
                             set_heap, reset_heap, heap_aligned, keep_errstate_cached,
                             buffers_aligned, set_buffers_aligned, auto_align_buffers,
                             handler_arena, reset_var, _context_get)
from wsmem._arena cimport Block
from libc.stdlib cimport realloc, free
from libc.string cimport memmove
from cpython.ref cimport PyObject, Py_INCREF, Py_XINCREF, Py_XDECREF

cdef extern from "Python.h":
    int PyContext_Enter(PyObject* ctx)
    int PyContext_Exit(PyObject* ctx)
    object PyContextVar_Set(object var, object value)
    void PyErr_Clear()

cdef extern from "sys/resource.h" nogil:
    enum: RUSAGE_THREAD
    struct rusage:
        long ru_minflt
    int getrusage(int who, rusage* usage)

import contextvars
import threading
import weakref

import wsmem._array as _array_api

from wsmem._config import WorkspaceConfig, Location, DebugMode, tracking_forced
from wsmem._errors import WorkspaceError
from wsmem._stats import WorkspaceStats, LeakInfo, WorkspaceHistory

# Per-thread stack of active frames: a Workspace, or None for scope_out().
# It holds the strong references; wsmem._arena's thread-local pointers
# mirror its top (and the context it was entered in) for the allocation
# fast path.
_tls = threading.local()
# The innermost frame of the running context, as NumPy keeps its memory
# handler: per thread and per asyncio task, and inherited by a context copied
# inside a frame (a task created inside `with ws:`).  NumPy's handler
# variable already tells a capturing workspace's frame (its own handler);
# the frames that set NumPy's default handler (capture=False and device
# workspaces, scope_out()) also set this one: to the workspace's _frame_key
# (a weak reference: a context kept by a long-lived task must not keep a
# workspace's memory alive), or None for scope_out(), reset on the way out.
# A capturing frame leaves it alone: the per-step drop-in frame pays no
# second variable.  Read only when the running context is not the one the
# thread's innermost frame was entered in (current_arena).
cdef object _frame_var = contextvars.ContextVar("wsmem_frame", default=None)
# Every live Workspace of the process (weakly), for diagnostics and tests.
_all = weakref.WeakSet()
# Cycles kept by Workspace.history() (the last ones; older records are overwritten).
cdef enum:
    _HISTORY_LENGTH = 1024
HISTORY_LENGTH = _HISTORY_LENGTH
# Called as fn(workspace) after each outermost cycle ends (e.g. the GC window).
cdef list _cycle_end_hooks = []


def add_cycle_end_hook(fn):
    """Call ``fn(workspace)`` after every cycle that closes (any thread)."""
    if not callable(fn):
        raise TypeError(f"hook must be callable, got {type(fn).__name__}")
    if fn not in _cycle_end_hooks:
        _cycle_end_hooks.append(fn)


def remove_cycle_end_hook(fn):
    """Undo add_cycle_end_hook (no error if it was not added)."""
    try:
        _cycle_end_hooks.remove(fn)
    except ValueError:
        pass


def live_workspaces():
    """Every Workspace alive in the process (any thread, destroyed ones included)."""
    return list(_all)


cdef long long _thread_minflt() noexcept nogil:
    """Minor page faults of the calling thread so far (-1 if unavailable)."""
    cdef rusage ru
    if getrusage(RUSAGE_THREAD, &ru) != 0:
        return -1
    return ru.ru_minflt


cdef extern from *:
    """
    /* The running thread's _FrameStack, borrowed from the thread's
       threading.local (which owns it), so that a frame push or pop skips the
       threading.local lookup.  _FrameStack's dealloc clears it, so it never
       outlives the stack: a thread's stack dies in that thread (the thread's
       state is cleared there), or in the finalizing main thread when wsmem's
       threading.local itself goes, after which no other thread runs Python.
       initial-exec: a load at a fixed offset from the thread pointer. */
    static __thread PyObject *wsmem_tls_stack __attribute__((tls_model("initial-exec"))) = NULL;
    """
    PyObject* wsmem_tls_stack


cdef struct FrameEntry:
    PyObject* frame     # owned; NULL for scope_out() (the heap)
    PyObject* token     # owned: what restore_handler puts back
    PyObject* wtoken    # owned: _frame_var's token, reset with `token`; NULL when
                        # the frame left _frame_var alone (a capturing workspace)
                        # or `token` resets it too (a non-capturing one's _Switch)
    PyObject* ctoken    # owned; NULL when no CuPy allocator was switched
    PyObject* context   # owned: the contextvars.Context the frame was entered in


cdef inline void _release(FrameEntry e) noexcept:
    Py_XDECREF(e.token)
    Py_XDECREF(e.wtoken)
    Py_XDECREF(e.ctoken)
    Py_XDECREF(e.context)
    Py_XDECREF(e.frame)     # last: a frame's last reference may go here


@cython.final
@cython.no_gc       # refers to frames and contexts, and neither refers to it: it
                    # cannot be part of a cycle
cdef class _FrameStack:
    """A thread's active frames, innermost last: a C array, so that a frame
    push or pop touches no tuple or list (`with ws:` runs once per step, after
    the step has pushed wsmem's code and data out of the caches)."""
    cdef FrameEntry* items
    cdef Py_ssize_t n, cap

    def __dealloc__(self):
        global wsmem_tls_stack
        if wsmem_tls_stack == <PyObject*>self:
            wsmem_tls_stack = NULL
            set_current_arena(None, NULL)   # its context is one of ours
        while self.n > 0:           # the thread ended with frames open
            self.n -= 1
            _release(self.items[self.n])
        free(self.items)
        self.items = NULL

    cdef int push(self, object frame, object token, object wtoken,
                  PyObject* ctoken) except -1:
        cdef FrameEntry* grown
        cdef Py_ssize_t cap
        if self.n == self.cap:
            cap = 8 if self.cap == 0 else 2 * self.cap
            grown = <FrameEntry*>realloc(self.items, cap * sizeof(FrameEntry))
            if grown == NULL:
                raise MemoryError("wsmem: out of memory for the frame stack")
            self.items = grown
            self.cap = cap
        self.items[self.n].frame = NULL if frame is None else <PyObject*>frame
        self.items[self.n].token = <PyObject*>token
        self.items[self.n].wtoken = NULL if wtoken is None else <PyObject*>wtoken
        self.items[self.n].ctoken = ctoken
        self.items[self.n].context = wsmem_running_context()
        Py_XINCREF(self.items[self.n].context)
        Py_XINCREF(self.items[self.n].frame)
        Py_INCREF(token)
        Py_XINCREF(self.items[self.n].wtoken)
        Py_XINCREF(ctoken)
        self.n += 1
        return 0

    cdef void publish(self) noexcept:
        """Mirror the top entry in wsmem._arena's thread-locals."""
        if self.n == 0:
            set_current_arena(None, NULL)
        else:
            set_current_arena(self.top(), self.items[self.n - 1].context)

    cdef object top(self):
        """The innermost frame (None for scope_out() or an empty stack)."""
        if self.n == 0 or self.items[self.n - 1].frame == NULL:
            return None
        return <object>self.items[self.n - 1].frame


cdef _FrameStack _stack():
    """This thread's frame stack (made on first use)."""
    global wsmem_tls_stack
    cdef _FrameStack stack
    if wsmem_tls_stack != NULL:
        return <_FrameStack>wsmem_tls_stack
    try:
        stack = _tls.stack
    except AttributeError:
        stack = _FrameStack()
        _tls.stack = stack
    wsmem_tls_stack = <PyObject*>stack
    return stack


# wsmem._gpu once a device or pinned workspace exists: from then on, frames
# also switch CuPy's (thread-local) allocator.  Host-only programs never
# import CuPy.
cdef object _gpu = None


cdef void _push(object frame, _FrameStack stack) except *:
    """Make `frame` (a Workspace, or None for the heap) current; NumPy's
    memory handler follows it (the workspace's when it captures, else
    NumPy's default), and so does CuPy's allocator once GPU workspaces exist."""
    cdef PyObject* ctoken = NULL
    cdef Workspace ws
    handler = None
    if frame is not None:
        ws = <Workspace>frame
        handler = ws._handler
    wtoken = None
    token = None
    if handler is not None:
        token = enter_handler(handler, ws._switch)
        if type(token) is _Switch:
            ws._switch = <_Switch>token
    elif frame is not None:             # capture=False or device: _frame_var names it
        token = enter_plain(_frame_var, ws._frame_key, ws._switch)
        if token is not None:
            ws._switch = <_Switch>token
    if token is None:                   # scope_out(), or no direct switch
        keep_errstate_cached()
        token = set_handler(None)
        try:
            wtoken = PyContextVar_Set(_frame_var, None if frame is None else ws._frame_key)
        except BaseException:
            restore_handler(token)
            raise
    try:
        if _gpu is not None:
            ctok = _gpu.push_allocator(frame)
            ctoken = <PyObject*>ctok
        stack.push(frame, token, wtoken, ctoken)
    except BaseException:
        if ctoken != NULL:
            try:
                _gpu.pop_allocator(<object>ctoken)
            except BaseException:
                pass
        if wtoken is not None:
            _reset_frame_var(wtoken)
        restore_handler(token)
        raise
    stack.publish()


@cython.final
cdef class _NullFrame:
    """A ``with`` target whose ``__enter__`` and ``__exit__`` are C and do
    nothing, bound as Workspace's are: the floor under a C-level frame
    (bench/frame_cold.py)."""
    @cython.binding(False)
    def __enter__(self):
        return self

    @cython.binding(False)
    def __exit__(self, exc_type, exc, tb):
        return False


def _switch_info(Workspace ws):
    """(the workspace's last handler switch, the mappings before and after
    it, whether a frame holds it), or None where it has none (tests)."""
    cdef _Switch sw = ws._switch
    if sw is None:
        return None
    return sw, sw.before, sw.after, sw.in_use


cdef inline void _reset_frame_var(object wtoken) noexcept:
    """Reset _frame_var with a frame's token (None: the frame did not set it;
    a 1-tuple: set it to the value the tuple holds, see _pop)."""
    if type(wtoken) is tuple:
        try:
            PyContextVar_Set(_frame_var, (<tuple>wtoken)[0])
        except BaseException:
            PyErr_Clear()
    elif wtoken is not None:
        reset_var(_frame_var, wtoken, None)


cdef inline bint _sets_frame_var(PyObject* token) noexcept:
    """Whether a frame's handler token also resets _frame_var (a
    non-capturing frame's _Switch)."""
    return type(<object>token) is _Switch and (<_Switch>token).var2 is not None


cdef object _current_elsewhere():
    """current_workspace() while the running context is not the one this
    thread's innermost frame was entered in (another asyncio task, or a
    copied context, runs while a task waits inside `with ws:`).  The running
    context's innermost frame set NumPy's handler: a capturing workspace's
    handler names it; NumPy's default (or the aligned heap) leaves it to
    _frame_var: the key of a capture=False or device workspace, None for
    scope_out() or no frame.  That workspace if its frame is open on this
    thread, else None."""
    cdef _FrameStack stack
    cdef Py_ssize_t i
    cdef PyObject* f
    if wsmem_tls_stack == NULL:
        return None
    stack = <_FrameStack>wsmem_tls_stack
    try:
        found = handler_arena()
        if found is None:
            key = _context_get(_frame_var)
            if key is None:
                return None
            found = key()               # the weak reference's workspace, or None
            if found is None:
                return None
    except BaseException:
        PyErr_Clear()
        return None
    i = stack.n - 1
    while i >= 0:
        f = stack.items[i].frame
        if f == <PyObject*>found:
            return found if (<Arena>f).depth > 0 else None
        i -= 1
    return None


set_current_elsewhere(_current_elsewhere)


cdef Py_ssize_t _find(_FrameStack stack, PyObject* f, PyObject* ctx) noexcept:
    """Index of the innermost entry of frame `f`, preferring one entered in
    the running context `ctx` (asyncio tasks of one thread share its stack,
    and two of them may have the same workspace open), else -1."""
    cdef Py_ssize_t i = stack.n - 1
    cdef Py_ssize_t other = -1
    while i >= 0:
        if stack.items[i].frame == f:
            if stack.items[i].context == ctx:
                return i
            if other < 0:
                other = i
        i -= 1
    return other


cdef void _restore_in(PyObject* token, PyObject* wtoken, PyObject* ctx,
                      PyObject* running, _FrameStack stack) noexcept:
    """Restore NumPy's handler `token` (and _frame_var's `wtoken`) for a
    frame entered in context `ctx` and left in context `running`.  The same
    context: reset them there.  Left in another (e.g. a generator suspended
    in ``with ws:`` by one asyncio task and closed by another): reset them
    in `ctx` itself when that context can be entered (it is not running).  Else put the handler
    the frame replaced in the running context, as PyDataMem_SetHandler
    would, unless a frame entered in the running context is still open: its
    handler stays."""
    cdef Py_ssize_t k
    wtok = None if wtoken == NULL else <object>wtoken
    if ctx == running:
        _reset_frame_var(wtok)
        restore_handler(<object>token)
        return
    if ctx != NULL and PyContext_Enter(ctx) == 0:
        _reset_frame_var(wtok)
        restore_handler(<object>token)
        if PyContext_Exit(ctx) != 0:
            PyErr_Clear()
        return
    PyErr_Clear()                           # RuntimeError: ctx is entered elsewhere
    for k in range(stack.n):
        if stack.items[k].context == running:
            return
    _reset_frame_var(wtok)
    restore_handler(<object>token)


cdef void _pop(object frame, _FrameStack stack) noexcept:
    # Remove the innermost entry of this frame and restore the NumPy handler
    # (and CuPy allocator) current when it was pushed.  Normally it is the
    # top.  A frame closed from under another one (a borrow() or scope_out()
    # object left out of order, or a frame of another asyncio task on this
    # thread) leaves the handler of the frame above in place, and hands that
    # frame its own tokens: when the frame above closes, it restores what was
    # current before the removed one.  NumPy's handler lives in a context
    # variable, so its token goes to the nearest frame above entered in the
    # same context (none: it is restored now, in that context); CuPy's
    # allocator is per thread, so its token goes to the frame just above.
    cdef PyObject* running = wsmem_running_context()
    cdef Py_ssize_t i = _find(stack, NULL if frame is None else <PyObject*>frame, running)
    cdef Py_ssize_t j
    cdef FrameEntry e
    cdef FrameEntry* above
    cdef bint restore_np = True, restore_cupy = True
    if i < 0:
        stack.publish()
        return
    e = stack.items[i]
    j = i + 1
    while j < stack.n and stack.items[j].context != e.context:
        j += 1
    if j < stack.n:
        above = &stack.items[j]
        if e.wtoken == NULL and not _sets_frame_var(e.token) and _sets_frame_var(above.token):
            # e leaves _frame_var alone, so the frame above must still reset
            # it; its switch, which would, goes unused: keep its old value,
            # which predates any token the frame above holds for it.
            keep = ((<_Switch>above.token).old2,)
            Py_INCREF(keep)
            Py_XDECREF(above.wtoken)
            above.wtoken = <PyObject*>keep
        e.token, above.token = above.token, e.token     # above's own tokens go unused
        if e.wtoken != NULL:            # else above's own _frame_var token stays right
            e.wtoken, above.wtoken = above.wtoken, e.wtoken
        restore_np = False
    if i < stack.n - 1:
        above = &stack.items[i + 1]
        if e.ctoken != NULL and above.ctoken != NULL and \
                <object>e.ctoken is not _gpu._NO_CHANGE:
            e.ctoken, above.ctoken = above.ctoken, e.ctoken
        restore_cupy = False
        memmove(&stack.items[i], &stack.items[i + 1], (stack.n - 1 - i) * sizeof(FrameEntry))
    stack.n -= 1
    stack.publish()
    if restore_np:
        _restore_in(e.token, e.wtoken, e.context, running, stack)
    if restore_cupy and e.ctoken != NULL:
        try:
            _gpu.pop_allocator(<object>e.ctoken)
        except BaseException:
            pass
    _release(e)


cdef object _load_gpu(location, device):
    """wsmem._gpu, after checking that `location` can be served here."""
    global _gpu
    from wsmem import _gpu as g
    reason = g.unavailable(f"location={location!r}", device)
    if reason is not None:
        raise WorkspaceError(reason)
    _gpu = g
    return g


@cython.no_gc_clear      # see Arena: __dealloc__ detaches the handler through _handler/gpu
cdef class Workspace(Arena):
    """A named cyclic arena owned by one thread (ND4J's MemoryWorkspace).

    ``with ws:`` opens a cycle; leaving it ends the cycle: every array made in
    it becomes stale and its memory is reused by the next cycle.

    Parameters
    ----------
    name : str
        Name used in messages, stats and the per-thread registry.
    config : WorkspaceConfig, optional
        Policies and sizes; keyword arguments override single fields.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> ws = wsmem.Workspace("doc_ws", learning="first_loop")
    >>> for step in range(3):
    ...     with ws:
    ...         a = wsmem.empty((256, 256))
    ...         a.fill(step)
    >>> s = ws.stats()
    >>> s.cycles, s.spilled_count, s.capacity >= 256 * 256 * 8
    (3, 0, True)
    >>> ws.destroy()
    """

    def __init__(self, name, config=None, **overrides):
        if not isinstance(name, str) or not name:
            raise TypeError(f"workspace name must be a non-empty str, got {name!r}")
        if config is None:
            config = WorkspaceConfig(**overrides)
        elif not isinstance(config, WorkspaceConfig):
            raise TypeError(f"config must be a wsmem.WorkspaceConfig, got "
                            f"{type(config).__name__}")
        elif overrides:
            config = config.replace(**overrides)
        gpu = None
        if config.location in (Location.DEVICE, Location.PINNED):
            gpu = _load_gpu(config.location.value, config.device)
            if config.device is None:
                config = config.replace(device=gpu.current_device())
        self.name = name
        self.config = config
        self._frame_key = weakref.ref(self)
        self.track = config.track or tracking_forced()
        self._configure(config)
        if gpu is not None:
            gpu.setup(self, config.capture)
        if config.capture and config.location is not Location.DEVICE:
            self._handler = make_handler(self)
            auto_align_buffers()
        _all.add(self)

    def __dealloc__(self):
        # NumPy arrays allocated through the handler may outlive us: they
        # keep the capsule, and from now on it frees only.
        if self._handler is not None:
            detach_handler(self._handler)
        if self.gpu is not None:
            self.gpu.detach()
        free(self.hist)
        self.hist = NULL

    # ------------------------------------------------------------ cycles
    @cython.binding(False)     # a method descriptor: `with` binds it more cheaply
    def __enter__(self):
        if self.destroyed:
            raise WorkspaceError(f"workspace {self.name!r} was destroyed; create a new one "
                                 f"(wsmem.Workspace or wsmem.get_workspace)")
        self.check_owner()
        if self.depth == 0:
            if self.gpu is not None:
                _gpu.begin_cycle(self)      # binds the stream; may raise (CUDA)
            self.begin_cycle()
            if self.track:
                self.hist_minflt0 = _thread_minflt()
        self.depth += 1
        try:
            _push(self, _stack())
        except BaseException:
            # `with` does not call __exit__ when __enter__ raises: leave the
            # workspace as it was (closed, or open at the depth it had).
            self.depth -= 1
            if self.depth == 0:
                self.abandon_cycle()
            raise
        return self

    @cython.binding(False)
    def __exit__(self, exc_type, exc, tb):
        cdef _FrameStack stack = _stack()
        cdef size_t cap
        cdef bint was_init
        if self.depth <= 0:
            raise WorkspaceError(f"workspace {self.name!r} is not open; __exit__ without "
                                 "__enter__")
        self.depth -= 1
        _pop(self, stack)
        if self.depth == 0:
            cap = self.capacity()
            was_init = self.initialized
            try:
                self.end_cycle()
            except Exception:
                if exc_type is None:
                    raise
            finally:
                self._record_cycle(cap, was_init)
            if _cycle_end_hooks:
                for fn in list(_cycle_end_hooks):
                    fn(self)
        return False

    cdef void _record_cycle(self, size_t cap_before, bint was_init) noexcept:
        """Append the cycle that just ended to the history ring (C only, no
        allocation once the ring has grown to HISTORY_LENGTH)."""
        cdef CycleRecord* r
        cdef Block* b
        cdef size_t new_cap
        if self.hist_len == self.hist_cap and self.hist_cap < _HISTORY_LENGTH:
            new_cap = 16 if self.hist_cap == 0 else min(2 * self.hist_cap, _HISTORY_LENGTH)
            r = <CycleRecord*>realloc(self.hist, new_cap * sizeof(CycleRecord))
            if r == NULL:
                return              # out of memory: the history misses this cycle
            self.hist = r
            self.hist_cap = new_cap
        if self.hist_len < self.hist_cap:
            r = &self.hist[self.hist_len]
            self.hist_len += 1
        else:                       # full ring: overwrite the oldest
            r = &self.hist[self.hist_head]
            self.hist_head = (self.hist_head + 1) % _HISTORY_LENGTH
        r.cycle = self.cycles
        r.capacity = cap_before
        r.capacity_after = self.capacity()
        r.cycle_bytes = self.cycle_bytes
        r.spilled_bytes = self.spilled_bytes
        r.spilled_count = self.spilled_count
        r.learned = self.initialized and not was_init
        r.pinned_bytes = 0
        b = self.state.blocks if self.state != NULL else NULL
        while b != NULL:            # pinned_bytes() merges ranges: only when pins exist
            if b.n_pins:
                r.pinned_bytes = self.pinned_bytes()
                break
            b = b.next
        r.page_faults = -1
        if self.track and self.hist_minflt0 >= 0:
            r.page_faults = _thread_minflt() - self.hist_minflt0

    def history(self):
        """Per-cycle history of the last ``HISTORY_LENGTH`` (1024) outermost cycles.

        Recorded at the end of every outermost cycle at a cost of a few
        nanoseconds; page faults are counted only with tracking on
        (``track=True`` or ``WSMEM_TRACK=1``), since reading them costs a
        system call at each cycle start and end.

        Returns
        -------
        WorkspaceHistory
            NumPy arrays, one element per cycle, oldest first: ``cycle``,
            ``capacity`` (block the cycle ran with), ``capacity_after``,
            ``cycle_bytes``, ``spilled_bytes``, ``spilled_count``,
            ``pinned_bytes`` (still pinned when the cycle ended),
            ``page_faults`` (-1 where not measured), ``learned``.

        Examples
        --------
        >>> import numpy as np, wsmem
        >>> ws = wsmem.Workspace("doc_hist")
        >>> for _ in range(3):
        ...     with ws:
        ...         a = np.ones(10_000)
        >>> h = ws.history()
        >>> h.cycle.tolist(), h.learned.tolist(), int(h.spilled_count[-1])
        ([1, 2, 3], [True, False, False], 0)
        >>> ws.destroy()
        """
        cdef size_t i, j, n = self.hist_len
        cdef CycleRecord* r
        rows = []
        for i in range(n):
            j = (self.hist_head + i) % _HISTORY_LENGTH if n == _HISTORY_LENGTH else i
            r = &self.hist[j]
            rows.append((r.cycle, r.capacity, r.capacity_after, r.cycle_bytes,
                         r.spilled_bytes, r.spilled_count, r.pinned_bytes, r.page_faults,
                         r.learned))
        with _ScopeOut():           # NumPy's own memory, not this workspace's
            return WorkspaceHistory.from_rows(self.name, rows)

    def borrow(self):
        """Make this open workspace current again, without a new cycle.

        Use it to allocate in an outer workspace from inside an inner one.
        """
        return _Borrow(self)

    def initialize(self):
        """Size the block from what was measured so far (``learning="over_time"``).

        Takes effect now when no cycle is open, else when the open cycle ends.
        """
        self._require_usable()
        if self.depth > 0:
            self.init_pending = True
        else:
            self.set_capacity(self.learned_size(self.learn_peak))
            self.initialized = True

    def destroy(self):
        """Release the workspace's memory; its arrays go stale.

        Memory still behind live exports (ndarray views, buffers, DLPack
        capsules) is released when the last of them dies.  Idempotent.
        """
        if self.destroyed:
            return
        self.check_owner()
        if self.depth > 0:
            raise WorkspaceError(f"workspace {self.name!r} is open; destroy it after its "
                                 f"`with` block ends")
        self.release_all()
        self._switch = None         # its mappings hold the context's values of its last frame
        self.destroyed = True
        try:
            from wsmem._registry import _forget
            _forget(self)
        except ImportError:
            pass

    def _expire_before(self, WsArray arr):
        """Circular workspaces: make every array allocated before `arr` stale now.

        Used by :func:`wsmem.prefetch` to end a batch's validity window; may be
        called from any thread.  Bytes behind live exports stay pinned.
        """
        if self.reset != RESET_ENDOFBUFFER:
            raise WorkspaceError(f"workspace {self.name!r} is not circular; "
                                 "_expire_before() applies to reset='endofbuffer_reached'")
        if arr.workspace is not self:
            raise ValueError("the array does not belong to this workspace")
        ring_expire_before(self, arr._gen, arr._off)

    def _require_usable(self):
        if self.destroyed:
            raise WorkspaceError(f"workspace {self.name!r} was destroyed; create a new one")
        self.check_owner()

    cdef object _borrowed(self, object fn, tuple args):
        """fn(*args) with this (open) workspace current: the module-level
        creation functions, allocating here."""
        with self.borrow():
            return fn(*args)

    cdef int _require_open(self) except -1:
        if self.depth <= 0 or self.destroyed:
            if self.destroyed:
                raise WorkspaceError(f"workspace {self.name!r} was destroyed; create a new "
                                     "one")
            raise WorkspaceError(f"workspace {self.name!r} is not open; allocate inside "
                                 f"`with ws:` (or use the module-level wsmem.empty etc.)")
        self.check_owner()
        return 0

    # ------------------------------------------------------------ state
    @property
    def is_open(self):
        """True while a cycle is open."""
        return self.depth > 0

    @property
    def is_destroyed(self):
        """True after destroy()."""
        return bool(self.destroyed)

    def stats(self):
        """Counters of the workspace (see :class:`wsmem.WorkspaceStats`)."""
        return WorkspaceStats(
            name=self.name,
            location=self.config.location.value,
            capacity=self.capacity(),
            offset=self.cursor if (self.depth > 0 or self.reset == RESET_ENDOFBUFFER) else 0,
            cycle_bytes=self.cycle_bytes,
            last_cycle_bytes=self.last_cycle_bytes,
            peak_cycle_bytes=self.peak_cycle_bytes,
            spilled_bytes=self.spilled_bytes,
            spilled_count=self.spilled_count,
            pinned_bytes=self.pinned_bytes(),
            cycles=self.cycles,
            generation=self.generation,
            pages=self.state.n_live_blocks if self.state != NULL else 0,
            is_open=self.depth > 0,
            initialized=bool(self.initialized),
        )

    def leaks(self):
        """Memory still pinned by exports made in earlier (closed) cycles.

        Returns
        -------
        list of LeakInfo
            ``nbytes`` (line-rounded bytes held), ``shape``, ``dtype``,
            ``generation``, and ``traceback`` (allocation site) when tracking
            is on (``track=True`` or ``WSMEM_TRACK=1``).
        """
        out = []
        ring = self.reset == RESET_ENDOFBUFFER
        for nbytes, gen, owner in self._live_pins():
            if ring:
                # A ring has no cycles of its own: a leak is an export of an
                # array the ring has since written over or expired.
                if not isinstance(owner, WsArray) or owner.is_valid:
                    continue
            elif self.depth > 0 and gen == self.generation:
                continue
            if isinstance(owner, WsArray):
                out.append(LeakInfo(nbytes=nbytes, shape=owner.shape, dtype=owner.dtype,
                                    generation=gen, traceback=owner.traceback))
            else:   # a NumPy array captured by the workspace (shape unknown to us)
                out.append(LeakInfo(nbytes=nbytes, shape=None, dtype=None, generation=gen,
                                    traceback=owner))
        out.sort(key=lambda l: l.generation)
        return out

    def __repr__(self):
        state = ("destroyed" if self.destroyed else
                 f"open, generation {self.generation}" if self.depth > 0 else "closed")
        return (f"<wsmem.Workspace {self.name!r} {self.config.location.value} "
                f"capacity={self.capacity()} ({state})>")

    # ------------------------------------------------------------ creation
    def empty(self, shape, dtype=float, order="C"):
        """Uninitialised array in this (open) workspace."""
        self._require_open()
        return new_array(self, shape, dtype, order, INIT_NONE)

    def zeros(self, shape, dtype=float, order="C"):
        """Zeros in this (open) workspace."""
        self._require_open()
        return new_array(self, shape, dtype, order, INIT_ZEROS)

    def ones(self, shape, dtype=float, order="C"):
        """Ones in this (open) workspace."""
        self._require_open()
        a = new_array(self, shape, dtype, order, INIT_NONE)
        a.fill(1)
        return a

    def full(self, shape, fill_value, dtype=None, order="C"):
        """`fill_value` everywhere, in this (open) workspace."""
        return self._borrowed(_array_api.full, (shape, fill_value, dtype, order,))

    def empty_like(self, prototype, dtype=None, order="K", shape=None):
        """Uninitialised array shaped like `prototype`, in this workspace."""
        return self._borrowed(_array_api.empty_like, (prototype, dtype, order, shape,))

    def zeros_like(self, prototype, dtype=None, order="K", shape=None):
        """Zeros shaped like `prototype`, in this workspace."""
        return self._borrowed(_array_api.zeros_like, (prototype, dtype, order, shape,))

    def ones_like(self, prototype, dtype=None, order="K", shape=None):
        """Ones shaped like `prototype`, in this workspace."""
        return self._borrowed(_array_api.ones_like, (prototype, dtype, order, shape,))

    def full_like(self, prototype, fill_value, dtype=None, order="K", shape=None):
        """`fill_value` shaped like `prototype`, in this workspace."""
        return self._borrowed(_array_api.full_like, (prototype, fill_value, dtype, order, shape,))

    def asarray(self, a, dtype=None, order=None):
        """`a` copied into this workspace (returned as is when already here)."""
        return self._borrowed(_array_api.asarray, (a, dtype, order,))


@cython.final
cdef class _Borrow:
    """Context manager of Workspace.borrow()."""
    cdef Workspace ws

    def __cinit__(self, Workspace ws):
        self.ws = ws

    @cython.binding(False)     # a method descriptor: `with` binds it more cheaply
    def __enter__(self):
        self.ws._require_open()
        _push(self.ws, _stack())
        return self.ws

    @cython.binding(False)
    def __exit__(self, *exc):
        _pop(self.ws, _stack())
        return False


@cython.final
cdef class _ScopeOut:
    """Context manager of wsmem.scope_out()."""

    @cython.binding(False)     # a method descriptor: `with` binds it more cheaply
    def __enter__(self):
        _push(None, _stack())
        return None

    @cython.binding(False)
    def __exit__(self, *exc):
        _pop(None, _stack())
        return False


def scope_out():
    """Allocate on the plain heap until the block ends (ND4J's scopeOutOfWorkspaces).

    Examples
    --------
    >>> import wsmem
    >>> with wsmem.Workspace("doc_scope") as ws:
    ...     with wsmem.scope_out():
    ...         kept = wsmem.zeros(3)
    >>> kept.workspace is None, kept.is_valid
    (True, True)
    """
    return _SCOPE_OUT


# Stateless (its frames live on the thread's stack): one object serves every
# scope_out() block, nested, in any thread.
cdef _ScopeOut _SCOPE_OUT = _ScopeOut()


@cython.final
cdef class aligned_heap:
    """Make NumPy's arrays outside workspaces 64-byte aligned (this thread or task).

    NumPy's default allocator gives malloc's 16-byte alignment; glibc puts
    the arrays it maps (from 128 KiB, by default) 16 bytes into their page,
    so an AVX-512 kernel splits every other 64-byte load across two cache
    lines.  The
    long-lived arrays of a loop (weights, inputs) are made outside its
    cycles, so a workspace cannot align them: ``aligned_heap()`` does, with a
    NEP 49 handler over malloc that aligns every allocation of 256 bytes and
    more to a cache line (smaller ones keep malloc's 16 bytes).  It takes
    effect at once for the running context (thread, asyncio task), as
    NumPy's handlers do, and lasts until the context ends; used as a context
    manager, it is undone on exit.  ``wsmem.scope_out()`` and ``detach()``
    allocate on this heap too.  Arrays made under it are freed through it,
    wherever they die.  Workspace arrays are 64-byte aligned already.

    Parameters
    ----------
    enabled : bool, optional
        ``False`` goes back to NumPy's default allocator.

    Raises
    ------
    WorkspaceError
        When called inside ``with ws:`` or ``wsmem.scope_out()``: it changes
        the heap under them; call it before the loop.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> with wsmem.aligned_heap():
    ...     w = np.ones((256, 1024))
    ...     wsmem.heap_is_aligned()
    True
    >>> w.ctypes.data % 64, wsmem.heap_is_aligned()
    (0, False)
    """

    cdef object _var_token
    cdef object _handler_token
    cdef readonly bint enabled

    def __cinit__(self, enabled=True):
        if enabled is not True and enabled is not False:
            raise TypeError(f"aligned_heap(enabled) takes True or False, "
                            f"got {type(enabled).__name__}")
        _require_no_frame("wsmem.aligned_heap()")
        self.enabled = enabled
        self._var_token = set_heap(enabled)
        self._handler_token = set_handler(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _require_no_frame("leaving wsmem.aligned_heap()")
        reset_heap(self._var_token)
        restore_handler(self._handler_token)
        return False

    def __repr__(self):
        return f"wsmem.aligned_heap(enabled={bool(self.enabled)})"


cdef void _require_no_frame(str what) except *:
    cdef _FrameStack stack = _stack()
    if stack.n:
        top = stack.top()
        where = "wsmem.scope_out()" if top is None else f"workspace {top.name!r}"
        raise WorkspaceError(
            f"{what} changes NumPy's allocator outside workspaces and {where} is "
            f"open in this thread: call it outside every `with ws:` and scope_out() "
            f"block (before the loop), and close the blocks opened inside it first")


def ufunc_buffers_aligned():
    """Whether NumPy's ufunc buffers are page-aligned (see
    :func:`align_ufunc_buffers`).

    Returns
    -------
    bool
    """
    return buffers_aligned()


def align_ufunc_buffers(enabled=True):
    """Put NumPy's ufunc buffers on page boundaries (process-wide), or stop.

    A ufunc over strided operands (``a[:, 1:] -= b[:, :-1]``) runs buffered:
    NumPy copies rows into scratch buffers of up to 8,192 elements and runs
    its loop over those.  They are not array data, so no NEP 49 handler (and
    no workspace) serves them: they come from Python's raw allocator, on
    glibc 16-byte aligned at whatever page offset the heap's history gives,
    and the loop runs up to 10% slower for it (CG on a 256 x 256 grid in a
    workspace, against the same with the buffers on page boundaries, as
    mimalloc places them).  This wraps Python's raw allocator, as
    ``tracemalloc`` does, so that allocations of 32 KiB and more come from
    ``posix_memalign(4096)``; everything else, and every realloc, goes to the
    allocator it wraps.  Each thread also keeps a few freed blocks of the
    sizes glibc serves slowly (these buffers, 32 to 512 KiB, and NumPy's
    iterators, 1,033 to 4,096 bytes) for its next requests of that size,
    and gives them back to ``free()`` when full, when it exits and when the
    hook is removed.  The first capturing workspace turns it on unless the
    environment has ``WSMEM_ALIGN_BUFFERS=0`` or this function was called
    first.

    Parameters
    ----------
    enabled : bool
        True to install the hook, False to remove it.

    Returns
    -------
    bool
        Whether it was on before the call.

    Raises
    ------
    RuntimeError
        Python's raw allocator is not its own malloc wrapper (debug hooks
        under ``PYTHONMALLOC=malloc_debug`` or ``-X dev``, ``tracemalloc``
        running, a custom allocator), or, to remove it, another hook was
        installed over it since.  Nothing is changed.

    Examples
    --------
    >>> import wsmem
    >>> was = wsmem.align_ufunc_buffers(True)
    >>> wsmem.ufunc_buffers_aligned()
    True
    >>> _ = wsmem.align_ufunc_buffers(was)
    """
    return set_buffers_aligned(bool(enabled))


def heap_is_aligned():
    """Whether :func:`aligned_heap` is on for the running context."""
    return heap_aligned()


def current_workspace():
    """The innermost active workspace of the running thread and context, or
    None (heap).

    Returns
    -------
    Workspace or None
        Where ``wsmem.empty`` and the other module-level creation functions
        allocate now.

    Notes
    -----
    Per thread and per asyncio task, as NumPy keeps its memory handler: while
    a task awaits inside ``with ws:``, the other tasks of that thread do not
    see ``ws`` here, and a task that resumes under another task's frame sees
    its own.  A context copied inside ``with ws:`` (a task created there,
    ``contextvars.copy_context()``) inherits ``ws`` while ``ws`` stays open
    on this thread; one copied inside ``scope_out()`` inherits the heap.  On
    another thread (``asyncio.to_thread``) the workspace is not open, so the
    heap is current there.
    """
    return current_arena()


_DEBUG_CODES = {DebugMode.DISABLED: DEBUG_OFF,
                DebugMode.SPILL_EVERYTHING: DEBUG_SPILL_EVERYTHING,
                DebugMode.BYPASS_EVERYTHING: DEBUG_BYPASS_EVERYTHING}
_DEBUG_NAMES = {v: k for k, v in _DEBUG_CODES.items()}


class debug_mode:
    """Process-wide debug switch, as a context manager (ND4J's DebugMode).

    ``"spill_everything"``: every allocation spills to separate memory that is
    released at the end of its cycle (finds bugs that reuse hides).
    ``"bypass_everything"``: workspaces hand out plain heap memory.
    ``"disabled"``: normal operation.

    Examples
    --------
    >>> import wsmem
    >>> with wsmem.debug_mode("bypass_everything"):
    ...     with wsmem.Workspace("doc_dbg") as ws:
    ...         wsmem.empty(4).workspace is None
    True
    """

    def __init__(self, mode):
        self.mode = DebugMode.coerce(mode, "mode")
        self._prev = None

    def __enter__(self):
        self._prev = get_debug_mode()
        set_debug_mode(_DEBUG_CODES[self.mode])
        return self.mode

    def __exit__(self, *exc):
        set_debug_mode(self._prev)
        return False


def get_debug_mode_name():
    """The debug mode in force (a DebugMode)."""
    return _DEBUG_NAMES[get_debug_mode()]
