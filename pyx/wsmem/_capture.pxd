# NumPy drop-in: a NEP 49 PyDataMem_Handler per workspace, so that NumPy's
# own allocations (ufunc results, np.empty, temporaries) come from the arena
# while the workspace is current.
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

cdef struct CapCtx:
    # Owned by the handler capsule (freed by its destructor, when the last
    # ndarray allocated through it is gone).
    PyObject* arena     # borrowed Workspace; NULL once it is deallocated
    unsigned long long free_gen   # generation the free table belongs to
    size_t n_free       # entries in use in `free`
    size_t spill_parked # bytes of this cycle's spills waiting in `free` for reuse
    FreeSlot free[FREE_SLOTS]

# Make the capsule for `arena` (one per workspace).
cdef object make_handler(Arena arena)
# The workspace is going away: frees still work, allocations go to the heap.
cdef void detach_handler(object capsule) noexcept
# Install `capsule` (None: NumPy's default) for the running context; returns
# the token to restore with restore_handler.
cdef object set_handler(object capsule)
cdef void restore_handler(object token)
# If ndarray `arr` owns memory captured in the live generation of a
# workspace, return that workspace and fill gen/block; else None.
cdef object captured_in(object arr, unsigned long long* gen, Block** block)
# np.array(arr, copy=True) on the plain heap, whatever handler is current.
cdef object heap_copy(object arr)
# The WorkspaceOverflowError behind the last NULL the handler returned (or None).
cdef object take_error()
