# cython: boundscheck=False, wraparound=False, cdivision=True
"""NumPy drop-in: a NEP 49 memory handler per workspace.

While a workspace with ``capture=True`` is current, NumPy allocates array
data through its handler:

- every allocation carries a 64-byte header holding a :c:type:`Pin`, so a
  live ndarray keeps exactly its own lines out of reuse, in this cycle and in
  any later one, until NumPy frees it (from any thread, after the workspace
  closed or was destroyed: the pin keeps its block mapped);
- memory freed inside its own cycle goes to an exact-size free table and is
  handed to the next allocation of that size in the same cycle (loop
  temporaries repeat their sizes), which keeps the working set small and
  cache-hot;
- when the workspace cannot serve (not open, destroyed, bypass debug mode,
  another thread, a failing policy) the allocation comes from the heap,
  marked so that free() knows.

NumPy frees an array through the handler that allocated it, so the capsule
(and its context) lives until the last such array is gone.
"""
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_IsValid
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject
from cpython.exc cimport PyErr_Clear
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy, strncpy

from wsmem._arena cimport (Arena, Block, Pin, arena_alloc, arena_valid, pin_init, pin_fini,
                           arena_drop_dead_spill, RESET_BLOCK_LEFT,
                           get_debug_mode, DEBUG_OFF, DEBUG_BYPASS_EVERYTHING)

import traceback

cdef extern from "Python.h":
    int PyGILState_Check()

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept
        void (*free)(void* ctx, void* ptr, size_t size) noexcept
    ctypedef struct PyDataMem_Handler:
        char name[127]
        unsigned char version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_SetDefaultHandler "PyDataMem_SetHandler"(PyObject* handler)
    PyObject* PyArray_HANDLER(PyObject* arr)
    int NPY_ARRAY_OWNDATA
    int PyArray_CHKFLAGS(PyObject* arr, int flags)
    void* PyArray_DATA_OBJ "PyArray_DATA"(PyObject* arr)

cdef extern from *:
    """
    #include <assert.h>
    #define WSMEM_HDR 64
    """
    size_t WSMEM_HDR

import numpy as np
cimport numpy as cnp
cnp.import_array()

assert sizeof(CapHdr) == WSMEM_HDR, "CapHdr must be 64 bytes to keep data 64-aligned"

cdef const char* CAPSULE_NAME = b"mem_handler"
# The WorkspaceOverflowError of the last refused allocation (see take_error).
cdef object _last_error = None


# ---------------------------------------------------------------- heap fallback

cdef inline void* _heap_alloc(size_t size) noexcept:
    cdef void* raw = NULL
    cdef CapHdr* h
    if size > (<size_t>1 << 62):
        return NULL
    if posix_memalign(&raw, 64, WSMEM_HDR + size) != 0:
        return NULL
    h = <CapHdr*>raw
    h.pin.block = NULL
    h.size = size
    return <char*>raw + WSMEM_HDR


# ---------------------------------------------------------------- free table

cdef inline size_t _slot(size_t size) noexcept:
    return ((size >> 6) * 0x9E3779B97F4A7C15ULL >> 32) & (FREE_SLOTS - 1)


cdef inline void _reset_free(CapCtx* ctx, unsigned long long gen) noexcept:
    if ctx.n_free:
        memset(ctx.free, 0, sizeof(ctx.free))
        ctx.n_free = 0
    ctx.spill_parked = 0
    ctx.free_gen = gen


cdef inline CapHdr* _pop_free(CapCtx* ctx, size_t size) noexcept:
    cdef size_t i = _slot(size), k
    cdef CapHdr* h
    for k in range(8):
        if ctx.free[i].size == size:
            h = ctx.free[i].head
            if h != NULL:
                ctx.free[i].head = <CapHdr*>h.pin.next   # pin is the first member
            return h
        if ctx.free[i].size == 0:
            return NULL
        i = (i + 1) & (FREE_SLOTS - 1)
    return NULL


cdef inline bint _push_free(CapCtx* ctx, CapHdr* h) noexcept:
    cdef size_t i = _slot(h.size), k
    for k in range(8):
        if ctx.free[i].size == h.size or ctx.free[i].size == 0:
            if ctx.free[i].size == 0:
                ctx.free[i].size = h.size
                ctx.n_free += 1
            h.pin.next = <Pin*>ctx.free[i].head
            ctx.free[i].head = h
            return True
        i = (i + 1) & (FREE_SLOTS - 1)
    return False


# ---------------------------------------------------------------- the handler

cdef inline size_t _park_limit(Arena a) noexcept:
    # Dead spills kept for reuse in one cycle: the block's size, at least 64 MiB.
    cdef size_t cap = a.capacity()
    return cap if cap > (<size_t>64 << 20) else (<size_t>64 << 20)


cdef inline Arena _serving(CapCtx* ctx):
    """The workspace if it can serve this allocation now, else None."""
    cdef Arena a
    if ctx.arena == NULL:
        return None
    a = <Arena>ctx.arena
    if (a.depth <= 0 or a.destroyed or get_debug_mode() == DEBUG_BYPASS_EVERYTHING
            or a.owner_thread != PyThread_get_thread_ident()):
        return None
    return a


cdef void* _cap_malloc_gil(CapCtx* ctx, size_t size) noexcept:
    cdef Arena a = _serving(ctx)
    cdef CapHdr* h
    cdef char* p
    cdef Block* blk = NULL
    if a is None:
        return _heap_alloc(size)
    if ctx.free_gen != a.generation:
        _reset_free(ctx, a.generation)
    owner = None
    if a.track:
        owner = traceback.extract_stack()
    h = _pop_free(ctx, size) if ctx.n_free else NULL
    if h != NULL:
        p = <char*>h
        if not h.pin.block.is_main:
            ctx.spill_parked -= h.pin.block.size
        pin_init(&h.pin, h.pin.block, p, p + WSMEM_HDR + size, a.generation, owner)
        h.size = size
        return p + WSMEM_HDR
    try:
        p = arena_alloc(a, WSMEM_HDR + size, &blk)
    except BaseException as exc:
        # max_size or spill="fail": NumPy turns NULL into its own MemoryError;
        # keep ours so that wsmem's wrappers can raise it instead.
        global _last_error
        _last_error = exc
        return NULL
    h = <CapHdr*>p
    h.size = size
    pin_init(&h.pin, blk, p, p + WSMEM_HDR + size, a.generation, owner)
    return p + WSMEM_HDR


cdef void _cap_free_gil(CapCtx* ctx, void* ptr) noexcept:
    cdef CapHdr* h
    cdef Block* blk
    cdef Arena a
    cdef bint drop
    if ptr == NULL:
        return
    h = <CapHdr*>(<char*>ptr - WSMEM_HDR)
    blk = h.pin.block
    if blk == NULL:
        free(h)
        return
    if ctx.arena != NULL and blk.is_main and get_debug_mode() == DEBUG_OFF:
        a = <Arena>ctx.arena
        if a.depth > 0 and blk is a.main:
            # Freed while the workspace is open: reusable by the next allocation
            # of this size in this cycle.  Memory of this cycle lies behind the
            # bump cursor; memory of an earlier cycle was pinned when this cycle
            # began, so the hole list skips it.  Either way nothing else will
            # hand these bytes out before the cycle ends.
            if ctx.free_gen != a.generation:
                _reset_free(ctx, a.generation)
            pin_fini(&h.pin)
            h.pin.block = blk          # pin_fini cleared it; the table needs it back
            if _push_free(ctx, h):
                return
            h.pin.block = NULL
            return
    # Decide before releasing the pin: it may hold the last reference to the
    # block (a spill of an earlier cycle), and then blk is freed by pin_fini.
    # A spill of the open cycle is also referenced by the arena, so it
    # survives pin_fini.  Park it in the free table for the next allocation
    # of this size in this cycle (the learning cycle spills every temporary,
    # and a cycle that outgrew its block spills the same sizes over and over:
    # unmapping and mapping each would cost a system call and fresh page
    # faults per temporary).  Parked bytes are bounded so that a cycle of
    # ever-new sizes does not hold all its dead temporaries: past the bound,
    # the spill is unmapped at once.
    drop = ctx.arena != NULL and not blk.is_main and blk.in_spills
    if drop and blk.refs == 2 and get_debug_mode() == DEBUG_OFF:
        a = <Arena>ctx.arena
        if (a.depth > 0 and blk.state == a.state and
                ctx.spill_parked + blk.size <= _park_limit(a)):
            if ctx.free_gen != a.generation:
                _reset_free(ctx, a.generation)
            pin_fini(&h.pin)
            h.pin.block = blk
            if _push_free(ctx, h):
                ctx.spill_parked += blk.size
                return
            h.pin.block = NULL
            arena_drop_dead_spill(a, blk)
            return
    pin_fini(&h.pin)
    if drop:
        arena_drop_dead_spill(<Arena>ctx.arena, blk)


# NumPy calls its data allocator with the GIL held, so the entry points below
# (C, in the verbatim block) only check, and take the GIL themselves in the
# rare case it is not held: cheaper than PyGILState_Ensure/Release every call.
cdef extern from *:
    """
    static void* (*wsmem_malloc_impl)(void*, size_t);
    static void (*wsmem_free_impl)(void*, void*);
    static void* wsmem_cap_malloc(void* ctx, size_t n) {
        if (PyGILState_Check()) return wsmem_malloc_impl(ctx, n);
        PyGILState_STATE st = PyGILState_Ensure();
        void* p = wsmem_malloc_impl(ctx, n);
        PyGILState_Release(st);
        return p;
    }
    static void wsmem_cap_free(void* ctx, void* ptr, size_t size) {
        (void)size;
        if (PyGILState_Check()) { wsmem_free_impl(ctx, ptr); return; }
        PyGILState_STATE st = PyGILState_Ensure();
        wsmem_free_impl(ctx, ptr);
        PyGILState_Release(st);
    }
    """
    void* (*wsmem_malloc_impl)(void*, size_t) noexcept
    void (*wsmem_free_impl)(void*, void*) noexcept
    void* wsmem_cap_malloc(void* ctx, size_t n) noexcept nogil
    void wsmem_cap_free(void* ctx, void* ptr, size_t size) noexcept nogil


cdef void* _malloc_impl(void* ctx, size_t size) noexcept:
    return _cap_malloc_gil(<CapCtx*>ctx, size)


cdef void _free_impl(void* ctx, void* ptr) noexcept:
    _cap_free_gil(<CapCtx*>ctx, ptr)


wsmem_malloc_impl = _malloc_impl
wsmem_free_impl = _free_impl


cdef void* _cap_calloc(void* ctx, size_t nelem, size_t elsize) noexcept with gil:
    cdef size_t n
    cdef void* p
    if elsize and nelem > (<size_t>-1) / elsize:
        return NULL
    n = nelem * elsize
    p = _cap_malloc_gil(<CapCtx*>ctx, n)
    if p != NULL and n:
        with nogil:
            memset(p, 0, n)
    return p


cdef void* _cap_realloc(void* ctx, void* ptr, size_t new_size) noexcept with gil:
    cdef CapHdr* h
    cdef void* q
    cdef size_t old
    if ptr == NULL:
        return _cap_malloc_gil(<CapCtx*>ctx, new_size)
    h = <CapHdr*>(<char*>ptr - WSMEM_HDR)
    old = h.size
    if new_size <= old and h.pin.block != NULL:
        return ptr                      # shrink in place: the pin still covers it
    q = _cap_malloc_gil(<CapCtx*>ctx, new_size)
    if q == NULL:
        return NULL                     # realloc contract: the old block is untouched
    memcpy(q, ptr, old if old < new_size else new_size)
    _cap_free_gil(<CapCtx*>ctx, ptr)
    return q


cdef void _capsule_destructor(object capsule) noexcept:
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, CAPSULE_NAME)
    if h != NULL:
        free(h.allocator.ctx)
        free(h)


cdef object make_handler(Arena arena):
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*>calloc(1, sizeof(PyDataMem_Handler))
    cdef CapCtx* ctx = <CapCtx*>calloc(1, sizeof(CapCtx))
    if h == NULL or ctx == NULL:
        free(h)
        free(ctx)
        raise MemoryError("wsmem: out of memory for a NumPy memory handler")
    name = f"wsmem:{arena.name}".encode()[:120]
    strncpy(h.name, name, 126)
    h.version = 1
    ctx.arena = <PyObject*>arena
    h.allocator.ctx = ctx
    h.allocator.malloc = wsmem_cap_malloc
    h.allocator.calloc = _cap_calloc
    h.allocator.realloc = _cap_realloc
    h.allocator.free = wsmem_cap_free
    return PyCapsule_New(h, CAPSULE_NAME, _capsule_destructor)


cdef inline PyDataMem_Handler* _ours(object capsule) noexcept:
    cdef PyDataMem_Handler* h
    if capsule is None or not PyCapsule_IsValid(capsule, CAPSULE_NAME):
        return NULL
    h = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, CAPSULE_NAME)
    if h == NULL or h.allocator.malloc != wsmem_cap_malloc:
        return NULL
    return h


cdef void detach_handler(object capsule) noexcept:
    cdef PyDataMem_Handler* h = _ours(capsule)
    if h != NULL:
        (<CapCtx*>h.allocator.ctx).arena = NULL


cdef object set_handler(object capsule):
    if capsule is None:
        return PyDataMem_SetDefaultHandler(NULL)     # NULL: NumPy's default handler
    return PyDataMem_SetHandler(capsule)


cdef void restore_handler(object token) noexcept:
    try:
        PyDataMem_SetHandler(token)
    except BaseException:
        PyErr_Clear()


cdef object captured_in(object arr, unsigned long long* gen, Block** block):
    cdef PyObject* cap
    cdef PyDataMem_Handler* h
    cdef CapCtx* ctx
    cdef CapHdr* hdr
    cdef Arena a
    if not PyArray_CHKFLAGS(<PyObject*>arr, NPY_ARRAY_OWNDATA):
        return None
    cap = PyArray_HANDLER(<PyObject*>arr)
    if cap == NULL:
        return None
    h = _ours(<object>cap)
    if h == NULL:
        return None
    ctx = <CapCtx*>h.allocator.ctx
    hdr = <CapHdr*>(<char*>PyArray_DATA_OBJ(<PyObject*>arr) - WSMEM_HDR)
    if ctx.arena == NULL or hdr.pin.block == NULL:
        return None
    a = <Arena>ctx.arena
    # Circular workspaces: the header records the cycle, not the ring
    # position, so their NumPy results are copied rather than adopted.
    if a.reset != RESET_BLOCK_LEFT or not arena_valid(a, hdr.pin.generation, 0):
        return None
    gen[0] = hdr.pin.generation
    block[0] = hdr.pin.block
    return a


cdef object heap_copy(object arr):
    """np.array(arr, copy=True) with NumPy's default handler (plain heap)."""
    token = set_handler(None)
    try:
        return np.array(arr, copy=True, order="K")
    finally:
        restore_handler(token)


cdef object take_error():
    """Return and forget the error of the last allocation the handler refused."""
    global _last_error
    err = _last_error
    _last_error = None
    return err
