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
cimport cython
from cpython.pycapsule cimport (PyCapsule_New, PyCapsule_GetPointer, PyCapsule_IsValid,
                               PyCapsule_GetName, PyCapsule_Destructor)
from cpython.ref cimport PyObject
from cpython.exc cimport PyErr_Clear, PyErr_SetObject
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy, strncpy

from wsmem._arena cimport (Arena, Block, Pin, arena_alloc, arena_bump_hole, arena_valid,
                           pin_init, pin_fini, arena_drop_dead_spill, RESET_BLOCK_LEFT,
                           SPILL_MMAP_THRESHOLD, debug_mode_address, DEBUG_OFF,
                           DEBUG_BYPASS_EVERYTHING, wsmem_thread_ident)

import contextvars
import os
import traceback

cdef extern from "Python.h":
    int PyContextVar_Get(object var, PyObject* default_value, PyObject** value)
    object PyContextVar_Set(object var, object value)
    int PyContextVar_Reset(object var, object token) except -1
    void Py_DECREF(object o)

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
    object PyDataMem_GetHandler()
    object PyDataMem_SetDefaultHandler "PyDataMem_SetHandler"(PyObject* handler)
    PyObject* PyArray_HANDLER(PyObject* arr)
    int NPY_ARRAY_OWNDATA
    int PyArray_CHKFLAGS(PyObject* arr, int flags)
    void* PyArray_DATA_OBJ "PyArray_DATA"(PyObject* arr)

cdef extern from *:
    """
    #include <assert.h>
    #define WSMEM_HDR 64
    /* WSMEM_TSTATE() and wsmem_thread_ident(): wsmem/_arena.pxd. */
    /* This thread's ident as CPython records it in its thread state: where
       CPython uses pthreads (its own test: _POSIX_THREADS, from unistd.h via
       Python.h) PyThread_get_thread_ident() is pthread_self() behind a call
       and an initialisation check; asking pthread directly saves both on
       every captured malloc and free. */
    #ifdef _POSIX_THREADS
    #include <pthread.h>
    #define WSMEM_SELF() ((unsigned long)pthread_self())
    #else
    #define WSMEM_SELF() PyThread_get_thread_ident()
    #endif
    /* The thread holding the GIL: CPython <= 3.11 reads the process-wide
       current thread state, 3.12+ this thread's (NULL while detached). */
    static inline int wsmem_gil_held(void) {
        PyThreadState* ts = WSMEM_TSTATE();
        return ts != NULL && ts->thread_id == WSMEM_SELF();
    }
    /* An allocator entry point's body: run `call` directly when this thread
       holds the GIL (NumPy and CuPy call their allocators with it held),
       else take the GIL around it.  RETURN for a call that yields a
       pointer, DO for one that yields nothing. */
    #define WSMEM_GIL_RETURN(call) do {                                   \
        if (wsmem_gil_held()) return (call);                              \
        PyGILState_STATE wsmem_st_ = PyGILState_Ensure();                 \
        void* wsmem_p_ = (call);                                          \
        PyGILState_Release(wsmem_st_);                                    \
        return wsmem_p_;                                                  \
    } while (0)
    #define WSMEM_GIL_DO(call) do {                                       \
        if (wsmem_gil_held()) { call; return; }                           \
        PyGILState_STATE wsmem_st_ = PyGILState_Ensure();                 \
        call;                                                             \
        PyGILState_Release(wsmem_st_);                                    \
    } while (0)
    """
    size_t WSMEM_HDR
    bint wsmem_gil_held() noexcept nogil

import numpy as np
cimport numpy as cnp
cnp.import_array()

assert sizeof(CapHdr) == WSMEM_HDR, "CapHdr must be 64 bytes to keep data 64-aligned"

cdef const char* CAPSULE_NAME = b"mem_handler"


cdef void _share_numpy_capsule_name() except *:
    """Name wsmem's handler capsules with the very string NumPy names its
    default handler's capsule with.  NumPy looks the handler up by name in
    every allocation and free (PyCapsule_GetPointer), and CPython compares
    capsule names by pointer before it calls strcmp: ~40 instructions less
    per captured alloc + free (callgrind)."""
    global CAPSULE_NAME
    cdef const char* name
    arr = contextvars.Context().run(np.empty, 1)     # an empty context: NumPy's default
    cdef PyObject* cap = PyArray_HANDLER(<PyObject*>arr)
    if cap != NULL and PyCapsule_IsValid(<object>cap, CAPSULE_NAME):
        name = PyCapsule_GetName(<object>cap)
        if name != NULL:
            CAPSULE_NAME = name        # static in NumPy's extension, never unloaded


_share_numpy_capsule_name()
# wsmem._arena's debug mode, read in place on every captured malloc and free.
cdef const int* _debug_mode = debug_mode_address()
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


cdef void _free_parked_records(CapCtx* ctx, size_t i) noexcept:
    # Device contexts: parked records are host mallocs (host headers live in
    # arena memory and need no freeing).
    cdef CapHdr* h = ctx.free[i].head
    cdef CapHdr* nxt
    while h != NULL:
        nxt = <CapHdr*>h.pin.next
        free(h)
        ctx.n_live -= 1
        h = nxt


cdef inline void _reset_free(CapCtx* ctx, unsigned long long gen) noexcept:
    # Clear only the buckets this generation used (ctx.used): a memset of the
    # whole table would write 4 KiB, 64 cache lines, at every cycle.
    cdef size_t k, i
    for k in range(ctx.n_free):
        i = ctx.used[k]
        if ctx.device:
            _free_parked_records(ctx, i)
        ctx.free[i].size = 0
        ctx.free[i].head = NULL
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
                ctx.used[ctx.n_free] = <unsigned short>i
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


cdef inline bint _serves(CapCtx* ctx) noexcept:
    """The workspace can serve an allocation now (GIL held by this thread).
    The hot paths read the arena through a borrowed pointer: no reference
    counting per allocation."""
    cdef PyObject* a = ctx.arena
    return (a != NULL and (<Arena>a).depth > 0 and not (<Arena>a).destroyed
            and _debug_mode[0] != DEBUG_BYPASS_EVERYTHING
            and (<Arena>a).owner_thread == wsmem_thread_ident())


cdef inline Arena _serving(CapCtx* ctx):
    """The workspace if it can serve this allocation now, else None."""
    return <Arena>ctx.arena if _serves(ctx) else None


cdef char* _bump(Arena a, size_t nbytes, Block** blk) noexcept:
    """arena_alloc, or NULL with the error kept for take_error (max_size or
    spill="fail": NumPy turns NULL into its own MemoryError; wsmem's
    wrappers raise ours instead).  The current hole is tried inline; the
    rest (and every debug mode) is Arena.alloc_slow's, as in arena_alloc."""
    global _last_error
    cdef char* p
    if _debug_mode[0] == DEBUG_OFF:
        # The common case, without the try below: Cython saves and restores
        # the exception state around a try even when nothing raises.
        p = arena_bump_hole(a, nbytes, blk)
        if p != NULL:
            return p
    try:
        return a.alloc_slow(nbytes, blk)
    except BaseException as exc:
        _last_error = exc
        return NULL


# Large captured arrays start at one page offset: their data at offset
# WSMEM_HDR of a page (the header at the page start), the bytes skipped to
# get there left free.  A streaming ufunc whose output lies a little *after*
# its input modulo 4096 runs slower: its loads falsely wait on recent stores
# with the same low address bits ("4K aliasing"; bench/aliasing.py).  A plain
# bump puts each array 64-448 bytes further into its page than the one
# before, which on an Intel Xeon made the training step 14% slower at 4 MiB
# and 32 MiB temporaries than with every array at one offset (as mimalloc
# places them; bench/placement.py, bench/results/placement_ab.txt,
# cyclic_xeon.txt); on the AMD EPYC the gain is 0.5-1%.  From 256 KiB (NumPy's
# temporary-elision size): on the EPYC a bumped 512 KiB layout (the training
# step at rows=64) runs 5-13% slower on some physical pages and not on others
# (a block's pages dropped and faulted again move it in and out), placed
# layouts never did, and their median is 1-1.5% faster at 256 and 512 KiB;
# CG n=256 (512 KiB vectors) pays 0.3-0.4% (bench/results/placement_256k.txt).
# Below 256 KiB it gains nothing: rows=8 is level, CG n=90 (63 KiB vectors)
# 2% slower placed (the same file, section 3).  The page offset of NumPy's
# aligned heap is the same (wsmem.aligned_heap: data at +64).  Cost: under a page of
# free space per large bump; reuses from the free table keep their place.
# mode 2 (an experiment for bench/placement_ab.py): alternately at offsets
# WSMEM_HDR and WSMEM_HDR + 2048.
cdef size_t _place_min = 256 << 10
cdef int _place_mode = 1
cdef size_t _place_flip = 0


def _set_placement(size_t min_bytes, int mode=1):
    """Captured allocations of at least `min_bytes` made by a bump start at
    page offset 64 (mode 1, the default from 256 KiB) or alternately at 64 and
    2112 (mode 2); a `min_bytes` of ``2**64 - 1`` turns placement off.
    Returns the previous ``(min_bytes, mode)``.  For tests and
    bench/placement_ab.py."""
    global _place_min, _place_mode
    if mode not in (1, 2):
        raise ValueError(f"mode={mode} must be 1 or 2")
    old = (_place_min, _place_mode)
    _place_min = min_bytes
    _place_mode = mode
    return old


cdef char* _bump_placed(Arena a, size_t need, Block** blk) noexcept:
    """_bump `need` bytes (header + data) so that the data lands at the page
    offset the placement mode asks for.  In the current hole: skip to it.
    When nothing is left but a spill (mapped on its own, page-aligned: the
    header at the page start is the default place): just `need`, counting
    the largest pad in the cycle's bytes so that the block learned from
    this cycle has room to place it.  Elsewhere (a later hole, a ring): ask
    for a page more and place within.  The
    skipped bytes stay unpinned.  A misplaced array is slower at worst,
    never unsafe: the result always lies inside what the arena handed out."""
    global _place_flip
    cdef size_t page = 4096
    cdef size_t target = WSMEM_HDR
    cdef size_t pad
    cdef char* p
    if _place_mode == 2:
        target += (_place_flip & 1) * 2048
        _place_flip += 1
    target -= WSMEM_HDR             # where the header starts, mod page
    if a.main != NULL:
        pad = (target - <size_t>(a.main.region.ptr + a.cursor)) & (page - 1)
        if pad + need <= a.limit - a.cursor:
            p = _bump(a, pad + need, blk)
            return p + pad if p != NULL else NULL
    if target == 0 and a.reset == RESET_BLOCK_LEFT and a.hole_index >= a.n_holes and \
            need >= SPILL_MMAP_THRESHOLD:
        p = _bump(a, need, blk)
        if p != NULL:
            # Learned from this cycle's need: the block must hold the pad
            # that placing this array there can cost (a spill needs none).
            a.cycle_bytes += page - WSMEM_HDR
        return p
    p = _bump(a, page + need, blk)
    if p == NULL:
        return NULL
    return p + ((target - <size_t>p) & (page - 1))


cdef inline void* _cap_place(CapCtx* ctx, size_t size, PyObject* owner,
                             bint* zeroed) noexcept:
    """Serve `size` bytes in the open cycle (the free table first, else a
    bump) and pin them for `owner` (NULL unless tracking).  `zeroed` (NULL
    from malloc) is set when the bytes are known to be zero: a spill fresh
    from mmap, whose pages nobody has touched but for the header."""
    cdef PyObject* a = ctx.arena
    cdef CapHdr* h = _pop_free(ctx, size) if ctx.n_free else NULL
    cdef Block* blk = NULL
    cdef char* p
    if h != NULL:
        p = <char*>h
        blk = h.pin.block
        if not blk.is_main:
            ctx.spill_parked -= blk.size
    else:
        if size >= _place_min and _debug_mode[0] == DEBUG_OFF:
            p = _bump_placed(<Arena>a, WSMEM_HDR + size, &blk)
        else:
            p = _bump(<Arena>a, WSMEM_HDR + size, &blk)
        if p == NULL:
            return NULL
        h = <CapHdr*>p
        if blk.untouched:
            # Handed out from now on: a later reuse (parked in the free
            # table when it dies) holds whatever its array wrote.
            blk.untouched = False
            if zeroed != NULL:
                zeroed[0] = True
    h.size = size
    pin_init(&h.pin, blk, p, p + WSMEM_HDR + size, (<Arena>a).generation, owner)
    return p + WSMEM_HDR


cdef void* _cap_malloc_tracked(CapCtx* ctx, size_t size, bint* zeroed) noexcept:
    owner = traceback.extract_stack()
    return _cap_place(ctx, size, <PyObject*>owner, zeroed)


cdef inline void* _cap_alloc_gil(CapCtx* ctx, size_t size, bint* zeroed) noexcept:
    cdef PyObject* a = ctx.arena
    if not _serves(ctx):
        return _heap_alloc(size)
    if ctx.free_gen != (<Arena>a).generation:
        _reset_free(ctx, (<Arena>a).generation)
    if (<Arena>a).track:
        return _cap_malloc_tracked(ctx, size, zeroed)
    return _cap_place(ctx, size, NULL, zeroed)


cdef inline void* _cap_malloc_gil(CapCtx* ctx, size_t size) noexcept:
    return _cap_alloc_gil(ctx, size, NULL)


cdef bint _retire(CapCtx* ctx, CapHdr* h) noexcept:
    """Release the pin of arena allocation `h` (pin.block set).  Returns True
    when `h` was parked in the free table for reuse in this cycle (the caller
    must then keep the record), else False."""
    cdef Block* blk = h.pin.block
    cdef PyObject* a = ctx.arena
    cdef bint drop
    if a != NULL and blk.is_main and _debug_mode[0] == DEBUG_OFF:
        if (<Arena>a).depth > 0 and blk == (<Arena>a).main:
            # Freed while the workspace is open: reusable by the next allocation
            # of this size in this cycle.  Memory of this cycle lies behind the
            # bump cursor; memory of an earlier cycle was pinned when this cycle
            # began, so the hole list skips it.  Either way nothing else will
            # hand these bytes out before the cycle ends.
            if ctx.free_gen != (<Arena>a).generation:
                _reset_free(ctx, (<Arena>a).generation)
            pin_fini(&h.pin)
            h.pin.block = blk          # pin_fini cleared it; the table needs it back
            if _push_free(ctx, h):
                return True
            h.pin.block = NULL
            return False
    # Decide before releasing the pin: it may hold the last reference to the
    # block (a spill of an earlier cycle), and then blk is freed by pin_fini.
    # A spill of the open cycle is also referenced by the arena, so it
    # survives pin_fini.  Park it in the free table for the next allocation
    # of this size in this cycle (the learning cycle spills every temporary,
    # and a cycle that outgrew its block spills the same sizes over and over:
    # unmapping and mapping each would cost a system call and fresh page
    # faults per temporary).  Parked bytes are bounded so that a cycle of
    # ever-new sizes does not hold all its dead temporaries: past the bound,
    # the spill is unmapped at once.  A spill larger than all the parked
    # bytes together is parked past the bound (so they stay under twice the
    # largest dead spill): a loop of 100 MB temporaries then reuses one
    # mapping instead of adding 100 MB per iteration to what the cycle is
    # learned to need (NumPy's test_memoryleak: 1000 of them learned 121 GiB).
    drop = a != NULL and not blk.is_main and blk.in_spills
    if drop and blk.refs == 2 and _debug_mode[0] == DEBUG_OFF:
        if ((<Arena>a).depth > 0 and blk.state == (<Arena>a).state and
                (blk.size > ctx.spill_parked or
                 ctx.spill_parked + blk.size <= _park_limit(<Arena>a))):
            if ctx.free_gen != (<Arena>a).generation:
                _reset_free(ctx, (<Arena>a).generation)
            pin_fini(&h.pin)
            h.pin.block = blk
            if _push_free(ctx, h):
                ctx.spill_parked += blk.size
                return True
            h.pin.block = NULL
            arena_drop_dead_spill(<Arena>a, blk)
            return False
    pin_fini(&h.pin)
    if drop:
        arena_drop_dead_spill(<Arena>ctx.arena, blk)
    return False


cdef inline void _cap_free_gil(CapCtx* ctx, void* ptr) noexcept:
    cdef CapHdr* h
    if ptr == NULL:
        return
    h = <CapHdr*>(<char*>ptr - WSMEM_HDR)
    if h.pin.block == NULL:
        free(h)
        return
    _retire(ctx, h)          # the header lies in arena memory: nothing to free


# NumPy calls its data allocator with the GIL held, so the entry points below
# (C, in the verbatim block) only check, and take the GIL themselves in the
# rare case it is not held: cheaper than PyGILState_Ensure/Release every call.
# The check reads the thread state holding the GIL (CPython <= 3.11: the
# process-wide current one; 3.12+: this thread's, NULL while detached) and
# compares its thread with ours: about 10 instructions where
# PyGILState_Check costs some 50 (a TSS lookup) on every malloc and free.
cdef extern from *:
    """
    static void* (*wsmem_malloc_impl)(void*, size_t);
    static void* (*wsmem_calloc_impl)(void*, size_t, size_t);
    static void* (*wsmem_realloc_impl)(void*, void*, size_t);
    static void (*wsmem_free_impl)(void*, void*);
    static void* wsmem_cap_malloc(void* ctx, size_t n) {
        WSMEM_GIL_RETURN(wsmem_malloc_impl(ctx, n));
    }
    static void* wsmem_cap_calloc(void* ctx, size_t nelem, size_t elsize) {
        WSMEM_GIL_RETURN(wsmem_calloc_impl(ctx, nelem, elsize));
    }
    static void* wsmem_cap_realloc(void* ctx, void* ptr, size_t n) {
        WSMEM_GIL_RETURN(wsmem_realloc_impl(ctx, ptr, n));
    }
    static void wsmem_cap_free(void* ctx, void* ptr, size_t size) {
        (void)size;
        WSMEM_GIL_DO(wsmem_free_impl(ctx, ptr));
    }
    """
    void* (*wsmem_malloc_impl)(void*, size_t) noexcept
    void* (*wsmem_calloc_impl)(void*, size_t, size_t) noexcept
    void* (*wsmem_realloc_impl)(void*, void*, size_t) noexcept
    void (*wsmem_free_impl)(void*, void*) noexcept
    void* wsmem_cap_malloc(void* ctx, size_t n) noexcept nogil
    void* wsmem_cap_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil
    void* wsmem_cap_realloc(void* ctx, void* ptr, size_t n) noexcept nogil
    void wsmem_cap_free(void* ctx, void* ptr, size_t size) noexcept nogil


cdef void* _malloc_impl(void* ctx, size_t size) noexcept:
    return _cap_malloc_gil(<CapCtx*>ctx, size)


cdef void _free_impl(void* ctx, void* ptr) noexcept:
    _cap_free_gil(<CapCtx*>ctx, ptr)


# Zeroing this much or more releases the GIL (other threads run meanwhile);
# below it, releasing and taking the GIL back would cost more than the memset
# (np.zeros(8) in a workspace: 169 ns releasing it every time, 126 ns not; 116 ns
# outside: bench/results/calloc_entry.txt).
cdef size_t _NOGIL_MEMSET = 1 << 20


cdef void* _calloc_impl(void* ctx, size_t nelem, size_t elsize) noexcept:
    cdef size_t n
    cdef void* p
    cdef bint zeroed = False
    if elsize and nelem > (<size_t>-1) / elsize:
        return NULL
    n = nelem * elsize
    p = _cap_alloc_gil(<CapCtx*>ctx, n, &zeroed)
    # A fresh spill is left to the kernel's zero pages, as glibc's calloc
    # leaves a fresh mmap: np.zeros of 4 GiB then costs no memset and no RSS
    # until it is written (it took 15 s and 4 GiB of RSS with the memset).
    if p != NULL and n and not zeroed:
        if n >= _NOGIL_MEMSET:
            with nogil:
                memset(p, 0, n)
        else:
            memset(p, 0, n)
    return p


cdef void* _realloc_impl(void* ctx, void* ptr, size_t new_size) noexcept:
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


wsmem_malloc_impl = _malloc_impl
wsmem_calloc_impl = _calloc_impl
wsmem_realloc_impl = _realloc_impl
wsmem_free_impl = _free_impl


cdef void _capsule_destructor(object capsule) noexcept:
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, CAPSULE_NAME)
    if h != NULL:
        free(h.allocator.ctx)
        free(h)


ctypedef void* (*_malloc_t)(void* ctx, size_t size) noexcept
ctypedef void* (*_calloc_t)(void* ctx, size_t nelem, size_t elsize) noexcept
ctypedef void* (*_realloc_t)(void* ctx, void* ptr, size_t new_size) noexcept
ctypedef void (*_free_t)(void* ctx, void* ptr, size_t size) noexcept


cdef object _handler_capsule(bytes name, void* ctx, _malloc_t m, _calloc_t c, _realloc_t r,
                             _free_t f, PyCapsule_Destructor destructor):
    """A NEP 49 handler capsule named `name` over these functions (ctx is
    freed here if the handler cannot be made)."""
    cdef PyDataMem_Handler* h = <PyDataMem_Handler*>calloc(1, sizeof(PyDataMem_Handler))
    if h == NULL:
        free(ctx)
        raise MemoryError("wsmem: out of memory for a NumPy memory handler")
    strncpy(h.name, name[:120], 126)
    h.version = 1
    h.allocator.ctx = ctx
    h.allocator.malloc = m
    h.allocator.calloc = c
    h.allocator.realloc = r
    h.allocator.free = f
    return PyCapsule_New(h, CAPSULE_NAME, destructor)


cdef object make_handler(Arena arena):
    cdef CapCtx* ctx = <CapCtx*>calloc(1, sizeof(CapCtx))
    if ctx == NULL:
        raise MemoryError("wsmem: out of memory for a NumPy memory handler")
    ctx.arena = <PyObject*>arena
    return _handler_capsule(f"wsmem:{arena.name}".encode(), ctx, wsmem_cap_malloc,
                            wsmem_cap_calloc, wsmem_cap_realloc, wsmem_cap_free,
                            <PyCapsule_Destructor>_capsule_destructor)


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
        capsule = _context_heap()       # None still: NumPy's default handler
    if _handler_var is not None:
        _keep_set(_handler_var, _numpy_default)
        return PyContextVar_Set(_handler_var, _numpy_default if capsule is None
                                else capsule)             # a contextvars.Token
    if capsule is None:
        return PyDataMem_SetDefaultHandler(NULL)
    return PyDataMem_SetHandler(capsule)                  # the handler it replaced


# ------------------------------------------------------ the frame's handler switch
#
# A capturing workspace's frame sets NumPy's handler variable and resets it on
# the way out.  CPython does that by building a new variable mapping (HAMT)
# each time, plus a Token, and resetting builds another: some 600 ns of a
# cold frame (bench/frame_cold.py), most of a frame's cost beyond the `with`
# itself.  But a loop's frames go from the same mapping to the same mapping:
# the mapping is immutable, so a workspace keeps the pair its last frame made
# (a _Switch: `before`, and `after` = `before` with the handler set) and the
# next frame, entered where the running context's mapping is `before` again,
# puts `after` in place, and its exit puts `before` back, where the mapping
# is still `after`.  That is what PyContextVar_Set and PyContextVar_Reset
# would leave, by identity instead of by rebuilding: the same values for
# every variable, the handler's in CPython's per-thread cache as
# PyContextVar_Set leaves it.  Anything else (another mapping, a variable set
# inside the frame) goes the public way.  This reads two of CPython's
# private structures (PyContext's ctx_vars, PyContextVar's cache), unchanged
# from 3.9 to 3.14; _probe_switch checks them on the running interpreter at
# import, and without them (a free-threaded build, a layout that does not
# check out) frames use the Token as before.
cdef extern from *:
    """
    #if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x03090000 && PY_VERSION_HEX < 0x030F0000
    #define WSMEM_SWITCH_BUILT 1
    /* Include/internal/pycore_context.h: the leading fields of PyContext and
       PyContextVar. */
    typedef struct { PyObject_HEAD PyObject *ctx_prev; PyObject *ctx_vars; } wsmem_context;
    typedef struct {
        PyObject_HEAD
        PyObject *var_name;
        PyObject *var_default;
        PyObject *var_cached;
        uint64_t var_cached_tsid;
        uint64_t var_cached_tsver;
    } wsmem_contextvar;
    /* The running context's variable mapping (borrowed), NULL without one. */
    static inline PyObject *wsmem_ctx_vars(void) {
        PyObject *c = wsmem_running_context();
        return c == NULL ? NULL : ((wsmem_context *)c)->ctx_vars;
    }
    /* Where the running context's mapping is `from`, make it `to` and cache
       `val` as `var`'s value for this thread, as PyContextVar_Set does; the
       caller holds references to both mappings, so nothing is freed here.
       0 (nothing changed) where the mapping is not `from`. */
    static inline int wsmem_ctx_switch(PyObject *from, PyObject *to, PyObject *var,
                                       PyObject *val) {
        PyThreadState *ts = WSMEM_TSTATE();
        wsmem_context *c = (wsmem_context *)ts->context;
        wsmem_contextvar *v = (wsmem_contextvar *)var;
        if (c == NULL || c->ctx_vars != from)
            return 0;
        Py_INCREF(to);
        c->ctx_vars = to;
        Py_DECREF(from);
        v->var_cached = val;
        v->var_cached_tsid = ts->id;
        v->var_cached_tsver = ts->context_ver;
        return 1;
    }
    /* Cache `val` as `var`'s value for this thread, as PyContextVar_Set
       does, after a wsmem_ctx_switch that changed it. */
    static inline void wsmem_cache_var(PyObject *var, PyObject *val) {
        PyThreadState *ts = WSMEM_TSTATE();
        wsmem_contextvar *v = (wsmem_contextvar *)var;
        v->var_cached = val;
        v->var_cached_tsid = ts->id;
        v->var_cached_tsver = ts->context_ver;
    }
    /* The fields _probe_switch checks against the public API. */
    static inline PyObject *wsmem_var_name(PyObject *var) {
        return ((wsmem_contextvar *)var)->var_name;
    }
    static inline PyObject *wsmem_var_default(PyObject *var) {
        return ((wsmem_contextvar *)var)->var_default;
    }
    #else
    #define WSMEM_SWITCH_BUILT 0
    static inline PyObject *wsmem_ctx_vars(void) { return NULL; }
    static inline int wsmem_ctx_switch(PyObject *f, PyObject *t, PyObject *v, PyObject *x) {
        return 0;
    }
    static inline void wsmem_cache_var(PyObject *var, PyObject *val) { }
    static inline PyObject *wsmem_var_name(PyObject *var) { return NULL; }
    static inline PyObject *wsmem_var_default(PyObject *var) { return NULL; }
    #endif
    """
    bint SWITCH_BUILT "WSMEM_SWITCH_BUILT"
    PyObject* wsmem_ctx_vars() noexcept
    int wsmem_ctx_switch(PyObject* frm, PyObject* to, PyObject* var, PyObject* val) noexcept
    void wsmem_cache_var(PyObject* var, PyObject* val) noexcept
    PyObject* wsmem_var_name(PyObject* var) noexcept
    PyObject* wsmem_var_default(PyObject* var) noexcept


cdef class _Switch:
    """One frame's switch of NumPy's handler variable (see above; fields in
    _capture.pxd)."""


cdef bint _switch_ok = False    # set by _probe_switch at import


cdef object enter_handler(object capsule, _Switch last):
    """set_handler(capsule) for a capturing workspace's frame, where `last`
    is the _Switch its previous frame returned (or None); returns the token
    for restore_handler (a _Switch where the direct switch is available)."""
    if not _switch_ok:
        keep_errstate_cached()
        return set_handler(capsule)
    return _switch_in(capsule, None, None, last)


cdef object enter_plain(object var2, object val2, _Switch last):
    """enter_handler's twin for a non-capturing frame: NumPy's handler to the
    context's heap and `var2` to `val2` (see _capture.pxd); None where the
    direct switch is off."""
    if not _switch_ok:
        return None
    return _switch_in(None, var2, val2, last)


cdef _Switch _switch_in(object val, object var2, object val2, _Switch last):
    """Set NumPy's handler variable to `val` (None: the context's heap) and,
    unless var2 is None, `var2` to `val2`, by putting `last.after` in place
    where the running context's mapping is `last.before`, else by building a
    new pair (reusing `last` where no frame holds it)."""
    cdef PyObject* vars
    cdef _Switch sw
    if last is not None and not last.in_use and last.var2 is var2 and \
            last.val2 is val2 and (val is None or last.val is val) and \
            wsmem_ctx_switch(<PyObject*>last.before, <PyObject*>last.after,
                             <PyObject*>_handler_var, <PyObject*>last.val):
        if var2 is not None:
            wsmem_cache_var(<PyObject*>var2, <PyObject*>val2)
        last.in_use = True              # `before` was built with the error state set
        return last
    keep_errstate_cached()
    _keep_set(_handler_var, _numpy_default)     # so `old` is never "unset"
    if var2 is not None:
        _keep_set(var2, None)                   # nor `old2`
    vars = wsmem_ctx_vars()
    if vars == NULL:                            # _keep_set made the context
        raise RuntimeError("wsmem: no context to set NumPy's memory handler in")
    before = <object>vars
    if val is None:
        val = _context_heap()
        if val is None:
            val = _numpy_default
    old = _context_get(_handler_var)
    old2 = None if var2 is None else _context_get(var2)
    try:
        PyContextVar_Set(_handler_var, val)     # the tokens are dropped: `before` replaces them
        if var2 is not None:
            PyContextVar_Set(var2, val2)
    except BaseException:                       # (MemoryError) leave the context as it was
        if wsmem_ctx_switch(wsmem_ctx_vars(), <PyObject*>before,
                            <PyObject*>_handler_var, <PyObject*>old) and var2 is not None:
            wsmem_cache_var(<PyObject*>var2, <PyObject*>old2)
        raise
    sw = last if last is not None and not last.in_use else _Switch.__new__(_Switch)
    sw.before = before
    sw.after = <object>wsmem_ctx_vars()
    sw.val = val
    sw.old = old
    sw.var2 = var2
    sw.val2 = val2
    sw.old2 = old2
    sw.in_use = True
    return sw


cdef void _switch_back(_Switch sw) noexcept:
    """restore_handler for a _Switch: `before` back where the mapping is
    still `after`, else the values it replaced set again in the running
    context (what a Token's reset or its fallback would leave)."""
    sw.in_use = False
    if wsmem_ctx_switch(<PyObject*>sw.after, <PyObject*>sw.before,
                        <PyObject*>_handler_var, <PyObject*>sw.old):
        if sw.var2 is not None:
            wsmem_cache_var(<PyObject*>sw.var2, <PyObject*>sw.old2)
        return
    try:
        PyContextVar_Set(_handler_var, sw.old)
    except BaseException:
        PyErr_Clear()
    if sw.var2 is not None:
        try:
            PyContextVar_Set(sw.var2, sw.old2)
        except BaseException:
            PyErr_Clear()


def _probe_switch():
    """Whether the direct switch reads CPython's structures right on this
    interpreter: the fields it uses hold what the public API says, and a
    switch there and back gives the values PyContextVar_Set and its reset
    give."""
    if not SWITCH_BUILT or _handler_var is None:
        return False
    marker = object()
    var = contextvars.ContextVar("wsmem_probe", default=marker)
    other = contextvars.ContextVar("wsmem_probe_other")

    def check():
        if (wsmem_var_name(<PyObject*>var) != <PyObject*>var.name
                or wsmem_var_default(<PyObject*>var) != <PyObject*>marker):
            return False
        other.set(1)
        var.set(1)
        vars0 = wsmem_ctx_vars()
        if vars0 == NULL or type(<object>vars0).__name__ != "hamt":
            return False
        before = <object>vars0
        var.set(2)
        after = <object>wsmem_ctx_vars()
        if after is before or len(after) != 2 or after[var] != 2:
            return False
        var.get()                                   # cached: 2
        if not wsmem_ctx_switch(<PyObject*>after, <PyObject*>before,
                                <PyObject*>var, <PyObject*>before[var]):
            return False
        if var.get() != 1 or contextvars.copy_context()[var] != 1 or other.get() != 1:
            return False
        if not wsmem_ctx_switch(<PyObject*>before, <PyObject*>after,
                                <PyObject*>var, <PyObject*>after[var]):
            return False
        return var.get() == 2 and contextvars.copy_context()[var] == 2

    try:
        return bool(contextvars.Context().run(check))
    except Exception:
        return False


def _direct_switch():
    """Whether capturing frames switch NumPy's handler variable directly (tests)."""
    return _switch_ok


def _set_direct_switch(bint on):
    """Turn the direct switch on (where _probe_switch passes) or off, for
    frames entered from now on; returns the previous setting (tests)."""
    global _switch_ok
    old = _switch_ok
    _switch_ok = on and _probe_switch()
    return old


cdef void reset_var(object var, object token, object unset) noexcept:
    try:
        try:
            PyContextVar_Reset(var, token)
        except (ValueError, RuntimeError):
            # Set in another context (a frame left from a different task
            # than it was entered in), or used already: put the value the
            # frame replaced back in the running context instead, as
            # PyDataMem_SetHandler would.
            old = token.old_value
            PyContextVar_Set(var, unset if old is _Token.MISSING else old)
    except BaseException:
        PyErr_Clear()


cdef void restore_handler(object token) noexcept:
    if type(token) is _Switch:
        _switch_back(<_Switch>token)
        return
    if type(token) is _Token:
        reset_var(_handler_var, token, _numpy_default)
        return
    try:
        PyDataMem_SetHandler(token)
    except BaseException:
        PyErr_Clear()


cdef object handler_arena():
    """The workspace whose capture handler is NumPy's handler in the running
    context (entered there, or inherited by a copied context), or None."""
    cdef PyDataMem_Handler* h
    cdef PyObject* a
    cap = _context_get(_handler_var) if _handler_var is not None else PyDataMem_GetHandler()
    h = _ours(cap)
    if h == NULL:
        return None
    a = (<CapCtx*>h.allocator.ctx).arena
    return None if a == NULL else <object>a


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


# ---------------------------------------------------------------- aligned heap
#
# NumPy's default handler returns malloc's alignment: 16 bytes, and for the
# mmap-served arrays of 128 KiB and more glibc puts the data 16 bytes into
# its page.  An AVX-512 kernel reading such an array splits every other
# 64-byte load across two cache lines: OpenBLAS's dgemm with an (8, 256) x
# (256, 1024) product runs 6.5-8% slower with its inputs 16, 32 or 48 bytes
# past a line than on one (bench/results/alignment.txt).  jemalloc and
# mimalloc align large blocks; glibc does not.  This handler serves NumPy's
# allocations *outside* workspaces (wsmem.aligned_heap() installs it) from
# malloc, 64-byte aligned from WSMEM_HEAP_SMALL bytes up, with a 16-byte
# header before the data (size, offset from malloc's block).  Like NumPy's
# default handler it caches freed blocks under 1 KiB (with the GIL held;
# calls without it go straight to malloc/free, so any thread may free);
# calloc keeps glibc's lazily zeroed fresh pages; arrays of 4 MiB and more
# are madvised for huge pages as NumPy's default handler does.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <sys/mman.h>
    #define WSMEM_HEAP_SMALL 256
    #define WSMEM_HEAP_HUGE (4u << 20)
    typedef struct { size_t size; size_t off; } wsmem_heap_hdr;

    static inline size_t wsmem_heap_raw_size(size_t n) {
        /* bytes to ask malloc for; 0 on overflow */
        size_t extra = n < WSMEM_HEAP_SMALL ? sizeof(wsmem_heap_hdr)
                                            : sizeof(wsmem_heap_hdr) + 63;
        return n > SIZE_MAX - extra ? 0 : n + extra;
    }
    static inline char* wsmem_heap_spot(char* raw, size_t n) {
        /* where the data of an n-byte allocation goes in malloc's block raw */
        if (n < WSMEM_HEAP_SMALL) return raw + sizeof(wsmem_heap_hdr);
        return (char*)(((uintptr_t)raw + sizeof(wsmem_heap_hdr) + 63) & ~(uintptr_t)63);
    }
    static inline void* wsmem_heap_place(char* raw, size_t n) {
        char* p;
        if (raw == NULL) return NULL;
        p = wsmem_heap_spot(raw, n);
        ((wsmem_heap_hdr*)p)[-1].size = n;
        ((wsmem_heap_hdr*)p)[-1].off = (size_t)(p - raw);
        return p;
    }
    static inline void wsmem_heap_advise(char* p, size_t n) {
    #ifdef MADV_HUGEPAGE
        if (n >= WSMEM_HEAP_HUGE) {
            uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
            uintptr_t e = ((uintptr_t)p + n) & ~(uintptr_t)4095;
            if (e > a) madvise((void*)a, e - a, MADV_HUGEPAGE);
        }
    #endif
    }
    /* NumPy's default handler caches freed blocks under 1 KiB (7 per byte
       size); a handler of our own bypasses that cache, so this one keeps its
       own, the same shape, touched only with the GIL held (it serialises
       the stacks; without the GIL the calls go straight to malloc/free). */
    #define WSMEM_HEAP_NCACHE 1024
    #define WSMEM_HEAP_DEPTH 7
    static void* wsmem_heap_cache[WSMEM_HEAP_NCACHE][WSMEM_HEAP_DEPTH];
    static unsigned char wsmem_heap_ncached[WSMEM_HEAP_NCACHE];

    static void* wsmem_heap_alloc(size_t n, int zero) {
        size_t raw;
        char* p;
        if (n < WSMEM_HEAP_NCACHE && wsmem_heap_ncached[n] && wsmem_gil_held()) {
            p = (char*)wsmem_heap_cache[n][--wsmem_heap_ncached[n]];
            if (zero) memset(p, 0, n);
            return p;
        }
        raw = wsmem_heap_raw_size(n);
        if (raw == 0) return NULL;
        /* calloc, not malloc + memset: fresh mmap'd pages stay untouched */
        p = (char*)wsmem_heap_place((char*)(zero ? calloc(1, raw) : malloc(raw)), n);
        if (p) wsmem_heap_advise(p, n);
        return p;
    }
    static void* wsmem_heap_malloc(void* ctx, size_t n) {
        (void)ctx;
        return wsmem_heap_alloc(n, 0);
    }
    static void* wsmem_heap_calloc(void* ctx, size_t nelem, size_t elsize) {
        (void)ctx;
        if (elsize && nelem > SIZE_MAX / elsize) return NULL;
        return wsmem_heap_alloc(nelem * elsize, 1);
    }
    static void wsmem_heap_free(void* ctx, void* ptr, size_t size) {
        size_t n;
        (void)ctx; (void)size;     /* the header knows; NumPy's size is not trusted */
        if (ptr == NULL) return;
        n = ((wsmem_heap_hdr*)ptr)[-1].size;
        if (n < WSMEM_HEAP_NCACHE && wsmem_heap_ncached[n] < WSMEM_HEAP_DEPTH
                && wsmem_gil_held()) {
            wsmem_heap_cache[n][wsmem_heap_ncached[n]++] = ptr;
            return;
        }
        free((char*)ptr - ((wsmem_heap_hdr*)ptr)[-1].off);
    }
    static void* wsmem_heap_realloc(void* ctx, void* ptr, size_t n) {
        wsmem_heap_hdr h;
        size_t raw;
        char *base, *p, *q;
        if (ptr == NULL) return wsmem_heap_malloc(ctx, n);
        h = ((wsmem_heap_hdr*)ptr)[-1];
        raw = wsmem_heap_raw_size(n);
        if (raw == 0) return NULL;
        if ((h.size < WSMEM_HEAP_SMALL) != (n < WSMEM_HEAP_SMALL)) {
            /* the layout changes: move to a new block */
            q = (char*)wsmem_heap_malloc(ctx, n);
            if (q == NULL) return NULL;        /* the old block is untouched */
            memcpy(q, ptr, h.size < n ? h.size : n);
            wsmem_heap_free(ctx, ptr, h.size);
            return q;
        }
        base = (char*)realloc((char*)ptr - h.off, raw);
        if (base == NULL) return NULL;         /* the old block is untouched */
        /* realloc kept the bytes at base + h.off; the aligned spot may differ.
           Move the data first: the new header may overlap the old data. */
        p = wsmem_heap_spot(base, n);
        if ((size_t)(p - base) != h.off)
            memmove(p, base + h.off, h.size < n ? h.size : n);
        wsmem_heap_place(base, n);
        wsmem_heap_advise(p, n);
        return p;
    }
    """
    void* wsmem_heap_malloc(void* ctx, size_t n) noexcept nogil
    void* wsmem_heap_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil
    void* wsmem_heap_realloc(void* ctx, void* ptr, size_t n) noexcept nogil
    void wsmem_heap_free(void* ctx, void* ptr, size_t size) noexcept nogil


# ---------------------------------------------------------------- NumPy's ufunc buffers
#
# A ufunc over strided operands (CG's stencil, `au[:, 1:] -= u[:, :-1]`)
# runs buffered: NumPy's iterator copies rows into scratch buffers of up to
# 8,192 elements (64 KiB of float64) and runs the loop over those.  The
# buffers are not array data, so no NEP 49 handler sees them: they come from
# PyMem_RawMalloc, that is malloc, and on glibc they land wherever the
# heap's history puts them: 16-byte aligned, at any page offset.  CG n=256
# in a workspace (its vectors at page offset 64, see _bump_placed) then ran
# 9-10% behind mimalloc, whose blocks of that size start on 64 KiB
# boundaries, on a 2-core Intel Xeon in most heap histories, and level with
# it with the buffers on page boundaries; 64-byte alignment alone was level
# in some histories and 6% slower in another (bench/ufunc_buffers.py,
# bench/results/ufunc_buffers_xeon.txt).  So wsmem wraps the raw domain as
# tracemalloc does: allocations of WSMEM_RAW_ALIGN_MIN bytes and more come
# from posix_memalign(4096); all else, and every free and realloc, goes to
# the allocator it wraps.  That is only sound when that allocator is
# CPython's own malloc wrapper (PYTHONMALLOC malloc or pymalloc, no debug
# hooks, no tracemalloc, not an embedder's): free() then takes
# posix_memalign's blocks, before and after the hook.  Anything else: not
# installed (and align_ufunc_buffers says why).  32 KiB: float32 buffers
# and up, and Python's own objects of that size waste at most 1/8 to the
# alignment (glibc keeps the skipped bytes as a free chunk).
#
# The hook also keeps what it hands out.  posix_memalign(4096) is glibc's
# slow path: it takes a larger chunk, splits the head and the tail off and
# puts them back in its bins, and free() merges them again, 66 times per CG
# n=90 step (the stencil's buffers, 32-64 KiB); NumPy's iterators (1,104
# bytes there, 22 per step) are just past glibc's per-thread cache (1,032
# bytes) and take its bins too.  perf put glibc's malloc family at 1.6-2.2%
# of that step, mimalloc's at 0.9% (bench/results/perf_cg90_malloc_xeon.txt).
# So each thread keeps a few freed blocks of those sizes and hands them to
# its next requests, as glibc's own tcache does for smaller ones: small
# blocks (1,033 to 4,096 bytes) in 256-byte classes, WSMEM_RC_DEPTH per
# class, a request served from its class or up to 3 above (jemalloc's and
# mimalloc's classes are coarser); aligned blocks (32 to 512 KiB) in
# WSMEM_RC_BIG_SLOTS slots, at most 1 MiB in all per thread, best fit
# within 1/4 of the request.  The blocks stay malloc's own: a free learns a
# block's size from malloc_usable_size, whoever allocated it and whenever,
# and a cached block goes back to free() when its thread exits (a pthread
# key's destructor), when the hook is removed (the calling thread's cache)
# or when the cache is full.  Per thread, so no lock: raw allocations may
# run without the GIL, and a block freed in another thread than it was
# allocated in simply joins that thread's cache.
cdef extern from *:
    """
    #include <dlfcn.h>
    #include <malloc.h>
    #include <pthread.h>
    #define WSMEM_RAW_ALIGN_MIN 32768
    static PyMemAllocatorEx wsmem_raw_prev;
    static int wsmem_raw_on = 0;
    static size_t wsmem_raw_align = 4096;    /* fixed once the hook was on: cached blocks have it */
    static int wsmem_raw_was_on = 0;

    #define WSMEM_RC_SMALL_MIN 1033          /* glibc's tcache takes up to 1,032 */
    #define WSMEM_RC_STEP 256
    #define WSMEM_RC_NCLASS 17               /* classes 5..16: 1,280 to 4,096 bytes */
    #define WSMEM_RC_SMALL_MAX 4096
    #define WSMEM_RC_DEPTH 8
    #define WSMEM_RC_BIG_SLOTS 8
    #define WSMEM_RC_BIG_MAX (1u << 19)
    #define WSMEM_RC_BIG_KEEP (WSMEM_RC_BIG_MAX + WSMEM_RC_BIG_MAX / 4)  /* a 512 KiB request's block */
    #define WSMEM_RC_BIG_BYTES (1u << 20)
    typedef struct {
        void* small[WSMEM_RC_NCLASS][WSMEM_RC_DEPTH];
        unsigned char nsmall[WSMEM_RC_NCLASS];
        void* big[WSMEM_RC_BIG_SLOTS];
        size_t bigsize[WSMEM_RC_BIG_SLOTS];
        int nbig;
        size_t bigbytes;
        int registered;
        unsigned long long hits, misses, puts;
    } wsmem_rc_t;
    static __thread wsmem_rc_t wsmem_rc;
    static int wsmem_rc_on = 1;
    static pthread_key_t wsmem_rc_key;
    static pthread_once_t wsmem_rc_once = PTHREAD_ONCE_INIT;
    static unsigned long long wsmem_rc_exit_freed = 0;   /* blocks freed at thread exits */

    /* Give every kept block back to free(); returns how many. */
    static unsigned long long wsmem_rc_flush(wsmem_rc_t* c) {
        unsigned long long n = (unsigned long long)c->nbig;
        int k, i;
        for (k = 0; k < WSMEM_RC_NCLASS; k++) {
            for (i = 0; i < c->nsmall[k]; i++) free(c->small[k][i]);
            n += c->nsmall[k];
            c->nsmall[k] = 0;
        }
        for (i = 0; i < c->nbig; i++) free(c->big[i]);
        c->nbig = 0;
        c->bigbytes = 0;
        return n;
    }
    static void wsmem_rc_thread_exit(void* v) {
        wsmem_rc_t* c = (wsmem_rc_t*)v;
        __atomic_add_fetch(&wsmem_rc_exit_freed, wsmem_rc_flush(c), __ATOMIC_RELAXED);
        /* a later destructor's raw free registers again, and glibc runs
           the destructors again for it */
        c->registered = 0;
    }
    static void wsmem_rc_make_key(void) {
        if (pthread_key_create(&wsmem_rc_key, wsmem_rc_thread_exit) != 0) wsmem_rc_on = 0;
    }
    /* Keep ptr for this thread's next request of its size; 0: not kept. */
    static int wsmem_rc_put(void* ptr) {
        wsmem_rc_t* c = &wsmem_rc;
        size_t u = malloc_usable_size(ptr);
        if (u < 5 * WSMEM_RC_STEP) return 0;
        if (!c->registered) {
            /* the destructor runs only for a non-NULL value */
            pthread_once(&wsmem_rc_once, wsmem_rc_make_key);
            if (!wsmem_rc_on || pthread_setspecific(wsmem_rc_key, c) != 0) return 0;
            c->registered = 1;
        }
        if (u < WSMEM_RC_NCLASS * WSMEM_RC_STEP) {
            size_t k = u / WSMEM_RC_STEP;            /* its requests fit: n <= k * 256 <= u */
            if (c->nsmall[k] >= WSMEM_RC_DEPTH) return 0;
            c->small[k][c->nsmall[k]++] = ptr;
            c->puts++;
            return 1;
        }
        if (u < WSMEM_RAW_ALIGN_MIN || u > WSMEM_RC_BIG_KEEP
                || ((uintptr_t)ptr & (wsmem_raw_align - 1)) != 0
                || c->nbig >= WSMEM_RC_BIG_SLOTS || c->bigbytes + u > WSMEM_RC_BIG_BYTES)
            return 0;
        c->big[c->nbig] = ptr;
        c->bigsize[c->nbig++] = u;
        c->bigbytes += u;
        c->puts++;
        return 1;
    }
    static void* wsmem_rc_get_small(size_t n) {
        wsmem_rc_t* c = &wsmem_rc;
        size_t k = (n + WSMEM_RC_STEP - 1) / WSMEM_RC_STEP, j;
        /* its class, or up to 3 above: a malloc whose size classes are
           coarser than 256 bytes (jemalloc's and mimalloc's are 512 apart
           from 2 KiB) returns class k's blocks to a higher class */
        for (j = k; j <= k + 3 && j < WSMEM_RC_NCLASS; j++)
            if (c->nsmall[j]) { c->hits++; return c->small[j][--c->nsmall[j]]; }
        c->misses++;
        /* the class's full size, so that its free comes back to this class */
        return wsmem_raw_prev.malloc(wsmem_raw_prev.ctx, k * WSMEM_RC_STEP);
    }
    static void* wsmem_rc_get_big(size_t n) {
        wsmem_rc_t* c = &wsmem_rc;
        int i, best = -1;
        void* p;
        for (i = 0; i < c->nbig; i++) {
            size_t u = c->bigsize[i];
            /* aligned: put() checked it, and the alignment stays as it was */
            if (u >= n && u - n <= n / 4 && (best < 0 || u < c->bigsize[best]))
                best = i;
        }
        if (best < 0) { c->misses++; return NULL; }
        c->hits++;
        p = c->big[best];
        c->bigbytes -= c->bigsize[best];
        c->nbig--;
        c->big[best] = c->big[c->nbig];
        c->bigsize[best] = c->bigsize[c->nbig];
        return p;
    }

    static void* wsmem_raw_malloc(void* ctx, size_t n) {
        void* p = NULL;
        (void)ctx;
        if (n >= WSMEM_RAW_ALIGN_MIN) {
            if (wsmem_rc_on && n <= WSMEM_RC_BIG_MAX && (p = wsmem_rc_get_big(n)) != NULL)
                return p;
            return posix_memalign(&p, wsmem_raw_align, n) == 0 ? p : NULL;
        }
        if (wsmem_rc_on && n >= WSMEM_RC_SMALL_MIN && n <= WSMEM_RC_SMALL_MAX)
            return wsmem_rc_get_small(n);
        return wsmem_raw_prev.malloc(wsmem_raw_prev.ctx, n);
    }
    static void* wsmem_raw_calloc(void* ctx, size_t nelem, size_t elsize) {
        (void)ctx;
        return wsmem_raw_prev.calloc(wsmem_raw_prev.ctx, nelem, elsize);
    }
    static void* wsmem_raw_realloc(void* ctx, void* ptr, size_t n) {
        (void)ctx;
        return wsmem_raw_prev.realloc(wsmem_raw_prev.ctx, ptr, n);
    }
    static void wsmem_raw_free(void* ctx, void* ptr) {
        (void)ctx;
        if (ptr != NULL && wsmem_rc_on && wsmem_rc_put(ptr)) return;
        wsmem_raw_prev.free(wsmem_raw_prev.ctx, ptr);
    }
    /* Whether the raw allocator's functions are CPython's own (they lie in
       the object that holds PyMem_RawMalloc): its malloc wrapper, its debug
       hooks or tracemalloc's, which the caller tells apart; not an
       embedder's allocator, whose free may not take posix_memalign's blocks. */
    static int wsmem_raw_is_cpythons(void) {
        PyMemAllocatorEx cur;
        Dl_info a, b;
        PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &cur);
        if (!dladdr((void*)cur.malloc, &a) || !dladdr((void*)&PyMem_RawMalloc, &b))
            return 0;
        return a.dli_fbase == b.dli_fbase;
    }
    /* 1: installed now; 0: it was; -1: the raw allocator is not CPython's.
       The caller has ruled out its debug hooks and tracemalloc's. */
    static int wsmem_raw_install(void) {
        PyMemAllocatorEx mine;
        if (wsmem_raw_on) return 0;
        if (!wsmem_raw_is_cpythons()) return -1;
        PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &wsmem_raw_prev);
        mine.ctx = wsmem_raw_prev.ctx;
        mine.malloc = wsmem_raw_malloc;
        mine.calloc = wsmem_raw_calloc;
        mine.realloc = wsmem_raw_realloc;
        mine.free = wsmem_raw_free;
        PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &mine);
        wsmem_raw_on = 1;
        wsmem_raw_was_on = 1;
        return 1;
    }
    /* 1: removed now; 0: it was not installed; -1: another hook wraps it. */
    static int wsmem_raw_remove(void) {
        PyMemAllocatorEx cur;
        if (!wsmem_raw_on) return 0;
        PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &cur);
        if (cur.malloc != wsmem_raw_malloc) return -1;
        PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &wsmem_raw_prev);
        wsmem_raw_on = 0;
        wsmem_rc_flush(&wsmem_rc);
        return 1;
    }
    static void wsmem_rc_info(unsigned long long* out) {
        wsmem_rc_t* c = &wsmem_rc;
        int k;
        unsigned long long n = 0, b = 0;
        for (k = 0; k < WSMEM_RC_NCLASS; k++) {
            int i;
            n += c->nsmall[k];
            for (i = 0; i < c->nsmall[k]; i++) b += malloc_usable_size(c->small[k][i]);
        }
        out[0] = c->hits; out[1] = c->misses; out[2] = c->puts;
        out[3] = n; out[4] = (unsigned long long)c->nbig; out[5] = b + c->bigbytes;
        out[6] = __atomic_load_n(&wsmem_rc_exit_freed, __ATOMIC_RELAXED);
    }
    static int wsmem_rc_set(int on) {
        int was = wsmem_rc_on;
        if (!on) wsmem_rc_flush(&wsmem_rc);
        wsmem_rc_on = on;
        return was;
    }
    """
    int wsmem_raw_install() noexcept
    int wsmem_raw_remove() noexcept
    int wsmem_raw_on
    int wsmem_raw_was_on
    size_t wsmem_raw_align
    size_t WSMEM_RAW_ALIGN_MIN
    void wsmem_rc_info(unsigned long long* out) noexcept
    int wsmem_rc_set(int on) noexcept


def _raw_cache_info():
    """The calling thread's cache of raw blocks (hits, misses, puts: blocks
    kept; small, big: blocks held now; bytes: their usable bytes) and
    ``exit_freed``: blocks that threads' exits gave back to malloc so far.
    (Private; for tests and bench/raw_cache.py.)"""
    cdef unsigned long long v[7]
    wsmem_rc_info(v)
    return dict(hits=v[0], misses=v[1], puts=v[2], small=v[3], big=v[4], bytes=v[5],
                exit_freed=v[6])


def _set_raw_cache(bint enabled):
    """Turn the raw hook's block cache on or off (on by default); returns
    the previous state.  Turning it off gives the calling thread's blocks
    back to malloc; other threads' go back when those threads exit.
    (Private; for bench/raw_cache.py's A/B and tests.)"""
    return wsmem_rc_set(enabled) != 0


def _set_raw_align(size_t n):
    """The alignment of the hook's large allocations (a power of two from
    64; 4096 by default); returns the previous one.  For
    bench/ufunc_buffers.py --align, before the hook is first installed:
    the hook's cached blocks keep the alignment they were made with."""
    global wsmem_raw_align
    if n < 64 or n & (n - 1):
        raise ValueError(f"alignment {n} must be a power of two, at least 64")
    if wsmem_raw_was_on:
        raise RuntimeError("wsmem's raw-allocator hook was installed already; set its "
                           "alignment before the first capturing workspace or "
                           "align_ufunc_buffers() call; nothing was changed")
    old = wsmem_raw_align
    wsmem_raw_align = n
    return old


cdef bint buffers_aligned() noexcept:
    return wsmem_raw_on != 0


def _raw_refusal():
    """Why the raw allocator may not be wrapped now (None: it may): it must
    be CPython's malloc wrapper, whose free takes posix_memalign's blocks.
    (Private; tests/test_ufunc_buffers.py skips on it.)"""
    import sys
    mode = os.environ.get("PYTHONMALLOC", "").strip().lower()
    if mode not in ("", "default", "malloc", "pymalloc"):
        return f"PYTHONMALLOC={mode} is set"
    if sys.flags.dev_mode or hasattr(sys, "gettotalrefcount"):
        return "Python's debug memory hooks are installed (-X dev or a debug build)"
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return "this is a free-threaded Python (its allocators are mimalloc's)"
    import tracemalloc
    if tracemalloc.is_tracing():
        return "tracemalloc is tracing (start it after this call)"
    return None


cdef bint _install_checked() except -1:
    """Install the hook if allowed; True when it is on.  Raises RuntimeError
    with the reason otherwise (nothing changed)."""
    if wsmem_raw_on:
        return True
    why = _raw_refusal()
    if why is None:
        if wsmem_raw_install() >= 0:
            return True
        why = "Python's raw memory allocator is not its own (an embedding application set it)"
    raise RuntimeError(f"wsmem cannot align NumPy's ufunc buffers: {why}; nothing was changed")


cdef bint set_buffers_aligned(bint enabled) except -1:
    """Install (or remove) the raw-domain hook; returns the previous state.
    Raises RuntimeError when it cannot be done, saying why."""
    global _auto_buffers
    cdef bint was = wsmem_raw_on != 0
    _auto_buffers = False           # the user's choice from now on
    if enabled:
        _install_checked()
    elif wsmem_raw_remove() < 0:
        raise RuntimeError(
            "wsmem cannot stop aligning NumPy's ufunc buffers: another hook (tracemalloc?) "
            "was installed over its allocator since; stop that one first "
            "(tracemalloc.stop()); nothing was changed")
    return was


cdef bint _auto_buffers = os.environ.get("WSMEM_ALIGN_BUFFERS", "1").strip().lower() \
    not in ("0", "false", "no", "off")


cdef void auto_align_buffers() noexcept:
    """The first capturing workspace aligns NumPy's ufunc buffers, unless
    WSMEM_ALIGN_BUFFERS=0, a call turned that off, or it cannot be done
    (then quietly: plain NumPy works as before)."""
    global _auto_buffers
    if _auto_buffers:
        _auto_buffers = False
        try:
            _install_checked()
        except Exception:
            pass


# The one aligned-heap handler, and which heap this context uses outside
# workspaces: None (NumPy's default) or that handler.  No capsule destructor:
# the handler is stateless and lives as long as the process (arrays
# allocated through it may outlive this module's globals).
cdef object _aligned_heap = _handler_capsule(
    b"wsmem:aligned_heap", NULL, wsmem_heap_malloc, wsmem_heap_calloc,
    wsmem_heap_realloc, wsmem_heap_free, NULL)
cdef object _heap_var = contextvars.ContextVar("wsmem_heap", default=None)


# NumPy keeps the current NEP 49 handler in a context variable it does not
# export; PyDataMem_SetHandler reads it, checks the capsule, sets it and drops
# the token, and restoring a frame's handler does all that again: some 2,000
# instructions per cycle, most of them out of cache after a step's work.
# Found once (below), wsmem sets the variable itself and resets it with the
# token on the way out: the same values in the same context, as NumPy would
# have set them.  If NumPy stops keeping the handler this way the probe finds
# nothing and PyDataMem_SetHandler is used as before.
cdef object _Token = contextvars.Token
cdef object _handler_var = None
cdef object _numpy_default = None    # the variable's default: NumPy's default handler


def _probe_handler_var():
    """(variable, its default) if NumPy's handler lives in a context
    variable that wsmem can set the way PyDataMem_SetHandler does, else None."""
    from numpy._core.multiarray import get_handler_name

    def installed():
        PyDataMem_SetHandler(_aligned_heap)
        return list(contextvars.copy_context().items())

    def set_directly(var):
        default = var.get()              # unset in a fresh context: the default
        var.set(_aligned_heap)
        return default, get_handler_name(), get_handler_name(np.empty(1))

    try:
        items = contextvars.Context().run(installed)
        if len(items) != 1 or items[0][1] is not _aligned_heap:
            return None
        var = items[0][0]
        default, name, arr_name = contextvars.Context().run(set_directly, var)
    except Exception:
        return None
    if (not PyCapsule_IsValid(default, CAPSULE_NAME) or name != "wsmem:aligned_heap"
            or arr_name != "wsmem:aligned_heap"):
        return None
    return var, default


cdef void _keep_set(object var, object default) except *:
    # CPython caches a context variable's value per thread only while the
    # variable is *set* in the running context: an unset one walks the
    # context's mapping on every read.  Given a sentinel default,
    # PyContextVar_Get returns it only for a variable not set here: one read
    # (a cache hit once set) tells whether this context needs the set, which
    # gives the variable the value it already reads as (`default`, or None
    # for the variable's own default, where it has one), so nothing that
    # reads it sees a change.
    cdef PyObject* value = NULL
    if PyContextVar_Get(var, <PyObject*>_UNSET, &value) < 0:
        raise RuntimeError(f"wsmem: cannot read the context variable {var.name!r}")
    Py_DECREF(<object>value)                 # a new reference; _UNSET or a live value
    if value != <PyObject*>_UNSET:
        return
    if default is None:
        if PyContextVar_Get(var, NULL, &value) < 0:
            raise RuntimeError(f"wsmem: cannot read the context variable {var.name!r}")
        if value == NULL:                    # unset, without a default: stays unset
            return
        default = <object>value
        Py_DECREF(default)
    PyContextVar_Set(var, default)           # the token is dropped


_found = _probe_handler_var()
if _found is not None:
    _handler_var, _numpy_default = _found
del _found
_switch_ok = _probe_switch()


def _direct_handler_switch():
    """Whether frames set NumPy's handler variable directly (tests)."""
    return _handler_var is not None


cdef object _context_get(object var):
    """`var`'s value in the running context (None if unset without a default).
    The C call: no method lookups on the per-cycle path."""
    cdef PyObject* value = NULL
    if PyContextVar_Get(var, NULL, &value) < 0:
        raise RuntimeError(f"wsmem: cannot read the context variable {var.name!r}")
    if value == NULL:
        return None
    result = <object>value
    Py_DECREF(result)            # PyContextVar_Get returned a new reference
    return result


cdef object _context_heap():
    """This context's heap handler: the aligned heap's capsule, or None."""
    return _context_get(_heap_var)


cdef object set_heap(bint aligned):
    keep_errstate_cached()
    return _heap_var.set(_aligned_heap if aligned else None)


# NumPy's error-state context variable, read by every ufunc call.  CPython
# caches a context variable's value per thread, but only when the variable
# is set in the running context: an unset one walks the context's mapping
# on every read.  Once wsmem has set its own variables (the memory handler,
# the heap) that mapping is non-empty, so every ufunc call inside `with ws:`
# paid that walk (~13 ns of a ~390 ns small `a + a`).  Setting the
# error-state variable to the very object it already reads as makes the read
# a cache hit and changes nothing NumPy can see; np.errstate and np.seterr
# set it over ours as usual.  (A private NumPy name: without it, nothing.)
# A C global, not a module attribute: read on every frame push, and a module
# attribute costs a dictionary lookup there.
cdef object _errstate_var = None
try:
    from numpy._core.umath import _extobj_contextvar
    _errstate_var = _extobj_contextvar
    del _extobj_contextvar
except ImportError:
    pass


cdef object _UNSET = object()


cdef void keep_errstate_cached() except *:
    # Every ufunc call reads NumPy's error state: keep it set (see _keep_set).
    if _errstate_var is not None:
        _keep_set(_errstate_var, None)


cdef void reset_heap(object token) except *:
    _heap_var.reset(token)


cdef bint heap_aligned():
    return _context_heap() is not None


# ---------------------------------------------------------------- CuPy allocator
#
# A device workspace makes CuPy allocate from it through
# cupy.cuda.memory.CFunctionAllocator: CuPy calls the C functions below (with
# the GIL held, from its Python-level allocation) for every cupy.ndarray made
# while the workspace is current, and again when the array dies.  Device
# memory cannot carry a header, so each allocation's record (a DevHdr: the
# same pin and size as a host header) lives on the host, found by address in
# a hash table.  Reuse follows the host rules: exact-size within the cycle,
# pins keep escaped arrays' lines out of later cycles.  Stream order makes the
# reuse safe: the workspace is bound to one stream per cycle (wsmem._gpu).

cdef inline size_t _bucket(CapCtx* ctx, const char* ptr) noexcept:
    return ((<size_t>ptr >> 8) * 0x9E3779B97F4A7C15ULL >> 24) & ctx.table_mask


cdef int _table_grow(CapCtx* ctx) noexcept:
    cdef size_t n = (ctx.table_mask + 1) * 2 if ctx.table != NULL else 1024
    cdef DevHdr** t = <DevHdr**>calloc(n, sizeof(DevHdr*))
    cdef DevHdr** old = ctx.table
    cdef size_t old_n = ctx.table_mask + 1 if old != NULL else 0
    cdef size_t i, j
    cdef DevHdr* d
    cdef DevHdr* nxt
    if t == NULL:
        return -1
    ctx.table = t
    ctx.table_mask = n - 1
    for i in range(old_n):
        d = old[i]
        while d != NULL:
            nxt = d.hnext
            j = _bucket(ctx, d.ptr)
            d.hnext = t[j]
            t[j] = d
            d = nxt
    free(old)
    return 0


cdef inline void _table_put(CapCtx* ctx, DevHdr* d) noexcept:
    cdef size_t j = _bucket(ctx, d.ptr)
    d.hnext = ctx.table[j]
    ctx.table[j] = d


cdef inline DevHdr* _table_take(CapCtx* ctx, const char* ptr) noexcept:
    cdef DevHdr** link
    cdef DevHdr* d
    if ctx.table == NULL:
        return NULL
    link = &ctx.table[_bucket(ctx, ptr)]
    d = link[0]
    while d != NULL:
        if d.ptr == ptr:
            link[0] = d.hnext
            d.hnext = NULL
            return d
        link = &d.hnext
        d = d.hnext
    return NULL


cdef void _dev_ctx_free(CapCtx* ctx) noexcept:
    free(ctx.table)
    free(ctx)


cdef inline void _dev_ctx_maybe_free(CapCtx* ctx) noexcept:
    if ctx.orphaned and ctx.n_live == 0:
        _dev_ctx_free(ctx)


cdef void* _dev_fail(object exc) noexcept:
    # CuPy turns a NULL from the allocator into a pointer 0 silently; report
    # the error through Python instead: Cython-compiled CuPy checks for a set
    # exception when the allocator returns -1, and raises it.
    global _last_error
    _last_error = exc
    PyErr_SetObject(type(exc), exc)
    return <void*>-1


cdef void* _dev_record(CapCtx* ctx, char* p, Block* blk, size_t size,
                       unsigned long long gen, object owner) noexcept:
    cdef DevHdr* d
    if ctx.n_live + 1 > (ctx.table_mask + 1 if ctx.table != NULL else 0):
        if _table_grow(ctx) != 0:
            return NULL
    d = <DevHdr*>malloc(sizeof(DevHdr))
    if d == NULL:
        return NULL
    d.ptr = p
    d.hnext = NULL
    d.h.size = size
    d.h.pin.block = NULL
    if blk != NULL:
        pin_init(&d.h.pin, blk, p, p + size, gen, <PyObject*>owner)
    ctx.n_live += 1
    _table_put(ctx, d)
    return p


cdef void* _dev_heap_alloc(CapCtx* ctx, size_t size, int device_id) noexcept:
    """Device memory outside the workspace (it cannot serve this allocation)."""
    cdef char* p
    cdef void* r
    try:
        from wsmem import _gpu
        p = <char*><size_t>_gpu.heap_malloc(size, device_id)
    except BaseException as exc:
        return _dev_fail(exc)
    r = _dev_record(ctx, p, NULL, size, 0, None)
    if r == NULL:
        _gpu.heap_free(<size_t>p, device_id)
        return _dev_fail(MemoryError("wsmem: out of host memory for an allocation record"))
    return r


cdef void* _dev_malloc_gil(CapCtx* ctx, size_t size, int device_id) noexcept:
    cdef Arena a = _serving(ctx)
    cdef CapHdr* h
    cdef DevHdr* d
    cdef char* p
    cdef void* r
    cdef Block* blk = NULL
    if a is None or device_id != a.device:
        return _dev_heap_alloc(ctx, size, device_id)
    if ctx.free_gen != a.generation:
        _reset_free(ctx, a.generation)
    owner = traceback.extract_stack() if a.track else None
    h = _pop_free(ctx, size) if ctx.n_free else NULL
    if h != NULL:
        d = <DevHdr*>h
        if not h.pin.block.is_main:
            ctx.spill_parked -= h.pin.block.size
        pin_init(&h.pin, h.pin.block, d.ptr, d.ptr + size, a.generation, <PyObject*>owner)
        h.size = size
        _table_put(ctx, d)
        return d.ptr
    try:
        p = arena_alloc(a, size, &blk)
    except BaseException as exc:
        return _dev_fail(exc)
    r = _dev_record(ctx, p, blk, size, a.generation, owner)
    if r == NULL:
        # Nothing pins p: the bytes go back with the cycle.
        return _dev_fail(MemoryError("wsmem: out of host memory for an allocation record"))
    return r


cdef inline bint _parkable_here(CapCtx* ctx) noexcept:
    # Device memory freed in another thread may still be in use by kernels on
    # that thread's stream: it is not handed to this cycle's next allocation
    # (stream order covers only the owner thread's cycle stream).
    return ctx.arena != NULL and (<Arena>ctx.arena).owner_thread == wsmem_thread_ident()


cdef void _dev_free_gil(CapCtx* ctx, void* ptr, int device_id) noexcept:
    cdef DevHdr* d = _table_take(ctx, <char*>ptr)
    if d == NULL:
        return                       # not ours (never happens through CuPy)
    if d.h.pin.block == NULL:
        try:
            from wsmem import _gpu
            _gpu.heap_free(<size_t>ptr, device_id)
        except BaseException:
            PyErr_Clear()            # interpreter shutdown: the driver reclaims it
        free(d)
        ctx.n_live -= 1
    elif _parkable_here(ctx) and _retire(ctx, &d.h):
        pass                         # parked for reuse in this cycle
    else:
        pin_fini(&d.h.pin)
        free(d)
        ctx.n_live -= 1
    _dev_ctx_maybe_free(ctx)


cdef extern from *:
    """
    static void* (*wsmem_dev_malloc_impl)(void*, size_t, int);
    static void (*wsmem_dev_free_impl)(void*, void*, int);
    static void* wsmem_dev_malloc(void* ctx, size_t n, int dev) {
        WSMEM_GIL_RETURN(wsmem_dev_malloc_impl(ctx, n, dev));
    }
    static void wsmem_dev_free(void* ctx, void* ptr, int dev) {
        WSMEM_GIL_DO(wsmem_dev_free_impl(ctx, ptr, dev));
    }
    """
    void* (*wsmem_dev_malloc_impl)(void*, size_t, int) noexcept
    void (*wsmem_dev_free_impl)(void*, void*, int) noexcept
    void* wsmem_dev_malloc(void* ctx, size_t n, int dev) noexcept nogil
    void wsmem_dev_free(void* ctx, void* ptr, int dev) noexcept nogil


cdef void* _dev_malloc_impl(void* ctx, size_t size, int device_id) noexcept:
    return _dev_malloc_gil(<CapCtx*>ctx, size, device_id)


cdef void _dev_free_impl(void* ctx, void* ptr, int device_id) noexcept:
    _dev_free_gil(<CapCtx*>ctx, ptr, device_id)


wsmem_dev_malloc_impl = _dev_malloc_impl
wsmem_dev_free_impl = _dev_free_impl


@cython.final
cdef class _DevAllocOwner:
    """Keeps a device context for as long as its workspace lives (the
    CFunctionAllocator's owner); records of live cupy arrays keep the
    context itself alive past that (CuPy's memory objects hold only the raw
    pointer)."""
    cdef CapCtx* ctx

    def __dealloc__(self):
        cdef CapCtx* ctx = self.ctx
        self.ctx = NULL
        if ctx == NULL:
            return
        ctx.arena = NULL
        ctx.orphaned = True
        _reset_free(ctx, 0)          # parked records can never be reused now
        _dev_ctx_maybe_free(ctx)

    @property
    def live_records(self):
        """Allocation records alive (live cupy arrays, plus parked ones)."""
        return self.ctx.n_live if self.ctx != NULL else 0

    @property
    def addresses(self):
        """(param, malloc, free) addresses for cupy.cuda.memory.CFunctionAllocator."""
        return (<size_t>self.ctx, <size_t><void*>wsmem_dev_malloc,
                <size_t><void*>wsmem_dev_free)


cdef object make_cupy_allocator(Arena arena):
    cdef CapCtx* ctx = <CapCtx*>calloc(1, sizeof(CapCtx))
    cdef _DevAllocOwner owner
    if ctx == NULL:
        raise MemoryError("wsmem: out of memory for a CuPy allocator")
    ctx.arena = <PyObject*>arena
    ctx.device = True
    if _table_grow(ctx) != 0:
        free(ctx)
        raise MemoryError("wsmem: out of memory for a CuPy allocator")
    owner = _DevAllocOwner.__new__(_DevAllocOwner)
    owner.ctx = ctx
    return owner


cdef void detach_cupy_allocator(object owner) noexcept:
    if type(owner) is _DevAllocOwner and (<_DevAllocOwner>owner).ctx != NULL:
        (<_DevAllocOwner>owner).ctx.arena = NULL



cdef bint device_captured(Arena a, size_t ptr, unsigned long long* gen, Block** block):
    """Whether device address `ptr` starts a live allocation CuPy made through
    a's allocator in a's live generation (then fill gen/block)."""
    cdef CapCtx* ctx
    cdef DevHdr* d
    if a.gpu is None or a.reset != RESET_BLOCK_LEFT:
        return False
    owner = a.gpu.alloc_owner
    if type(owner) is not _DevAllocOwner or (<_DevAllocOwner>owner).ctx == NULL:
        return False
    ctx = (<_DevAllocOwner>owner).ctx
    if ctx.table == NULL:
        return False
    d = ctx.table[_bucket(ctx, <char*>ptr)]
    while d != NULL and d.ptr != <char*>ptr:
        d = d.hnext
    if d == NULL or d.h.pin.block == NULL or not arena_valid(a, d.h.pin.generation, 0):
        return False
    gen[0] = d.h.pin.generation
    block[0] = d.h.pin.block
    return True
