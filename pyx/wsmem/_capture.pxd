# NumPy drop-in: a NEP 49 PyDataMem_Handler per workspace, so that NumPy's
# own allocations (ufunc results, np.empty, temporaries) come from the arena
# while the workspace is current.
cimport cython
from cpython.ref cimport PyObject
from wsmem._arena cimport Arena, Block, Pin

cdef struct CapHdr:
    # Precedes every captured allocation (64 bytes, so data stays 64-aligned).
    Pin pin             # pin.block NULL: heap memory (fallback or reuse list entry)
    size_t size         # bytes NumPy asked for

cdef enum:
    FREE_SLOTS = 256    # buckets of the within-cycle free table (power of two)

cdef struct FreeSlot:
    size_t size         # 0: empty bucket
    CapHdr* head        # freed allocations of exactly `size` bytes (linked by pin.next)

cdef struct DevHdr:
    # A device allocation's record (device memory cannot hold a header): it
    # lives on the host, found by address in CapCtx.table.
    CapHdr h            # pin + size, as for host allocations (h.pin.block NULL: heap)
    char* ptr           # the device address handed to CuPy
    DevHdr* hnext       # chain in CapCtx.table

cdef struct CapCtx:
    # NumPy handler: owned by the handler capsule (freed by its destructor,
    # when the last ndarray allocated through it is gone).  CuPy allocator
    # (device=True): freed when its workspace is gone and no allocation
    # made through it is alive (n_live == 0).
    PyObject* arena     # borrowed Workspace; NULL once it is deallocated
    unsigned long long free_gen   # generation the free table belongs to
    size_t n_free       # entries in use in `free`
    size_t spill_parked # bytes of this cycle's spills waiting in `free` for reuse
    FreeSlot free[FREE_SLOTS]
    unsigned short used[FREE_SLOTS]   # indices of the n_free buckets in use
    bint device         # a CuPy allocator context (records in `table`)
    bint orphaned       # the workspace is gone (device contexts)
    DevHdr** table      # address -> record, power-of-two buckets
    size_t table_mask
    size_t n_live       # DevHdr records alive (live allocations + parked ones)

# Make the capsule for `arena` (one per workspace).
cdef object make_handler(Arena arena)
# The workspace is going away: frees still work, allocations go to the heap.
cdef void detach_handler(object capsule) noexcept
# Install `capsule` (None: this context's heap, NumPy's default handler unless
# wsmem.aligned_heap() is on) for the running context; returns the token to
# restore with restore_handler.
cdef object set_handler(object capsule)
cdef void restore_handler(object token)

# One capturing frame's switch of NumPy's handler variable: the running
# context's variable mapping before the frame (`before`), after it (`after`:
# `before` with the handler set) and the handler `before` holds (`old`).  A
# workspace keeps its last one; its next frame, entered where the mapping is
# `before` again, puts `after` in place without building anything.
@cython.final
cdef class _Switch:
    cdef object before, after, old
    cdef bint in_use        # a frame entry holds it (restore_handler clears it)
    cdef object val         # the handler `after` holds
    # A non-capturing frame's switch also sets a second variable (wsmem's
    # frame variable) to `val2`; `old2` is what `before` holds for it.  var2
    # None: a capturing frame's switch (the handler variable alone).
    cdef object var2, val2, old2

# set_handler(capsule) for a capturing workspace's frame; `last` is the
# _Switch its previous frame used (None at first).  Returns the token for
# restore_handler: a _Switch where the direct switch works on this
# interpreter (_capture._direct_switch()), else what set_handler returns.
cdef object enter_handler(object capsule, _Switch last)
# set_handler(None) plus `var2` set to `val2`, for a non-capturing
# workspace's frame (capture=False, device), with the direct switch: returns
# the _Switch token for restore_handler, which resets both, or None where the
# direct switch is off (the caller then sets both the public way).
cdef object enter_plain(object var2, object val2, _Switch last)
# Reset context variable `var` with `token`; a token of another context (a
# frame left from another task) puts back, in the running context, the value
# it replaced (`unset` for a variable that was unset).
cdef void reset_var(object var, object token, object unset) noexcept
# `var`'s value in the running context (None if unset without a default).
cdef object _context_get(object var)
# The heap outside workspaces for the running context (contextvar): aligned
# (wsmem's aligned-heap handler) or NumPy's default; returns the var's token.
cdef object set_heap(bint aligned)
cdef void reset_heap(object token) except *
cdef bint heap_aligned()
# Set NumPy's error-state context variable to its own value in the running
# context, so that every ufunc call's read of it is a cache hit (see .pyx).
cdef void keep_errstate_cached() except *
# If ndarray `arr` owns memory captured in the live generation of a
# workspace, return that workspace and fill gen/block; else None.
cdef object captured_in(object arr, unsigned long long* gen, Block** block)
# np.array(arr, copy=True) on the plain heap, whatever handler is current.
cdef object heap_copy(object arr)
# The workspace whose capture handler is NumPy's current handler in the
# running context, or None.
cdef object handler_arena()
# The WorkspaceOverflowError behind the last NULL the handler returned (or None).
cdef object take_error()
# NumPy's ufunc (iterator) buffers, and every other raw allocation of 32 KiB
# and more, on page boundaries through a hook on Python's raw allocator (.pyx).
cdef bint buffers_aligned() noexcept
# Returns the previous state; RuntimeError (nothing changed) when not possible.
cdef bint set_buffers_aligned(bint enabled) except -1
# Called by each capturing workspace: installs the hook the first time
# (unless WSMEM_ALIGN_BUFFERS=0 or set_buffers_aligned was called).
cdef void auto_align_buffers() noexcept

# The C side of a device workspace's CuPy allocator: an owner object whose
# .addresses are (param, malloc, free) for cupy.cuda.memory.CFunctionAllocator
# (wsmem._gpu builds that).  Does not import CuPy.
cdef object make_cupy_allocator(Arena arena)
# The workspace is going away: its CuPy allocator serves from the heap from now on.
cdef void detach_cupy_allocator(object owner) noexcept
# If `ptr` starts a live allocation CuPy made through device workspace a's
# allocator in a's live generation, fill gen/block and return True.
cdef bint device_captured(Arena a, size_t ptr, unsigned long long* gen, Block** block)
