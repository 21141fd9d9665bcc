from cpython.ref cimport PyObject
from wsmem._arena cimport Arena
from wsmem._capture cimport _Switch

# One finished outermost cycle, as kept in Workspace's history ring.
cdef struct CycleRecord:
    unsigned long long cycle     # Workspace.cycles after the cycle ended (1-based)
    size_t capacity              # block the cycle ran with (before learning/growth)
    size_t capacity_after        # block the next cycle gets
    size_t cycle_bytes
    size_t spilled_bytes
    size_t spilled_count
    size_t pinned_bytes          # still pinned when the cycle ended (0 without pins)
    long long page_faults        # minor faults of the thread during the cycle; -1 unmeasured
    bint learned                 # learning finished at the end of this cycle

cdef class Workspace(Arena):
    cdef readonly object config     # the WorkspaceConfig it was made with
    cdef object _handler            # NEP 49 capsule (capture=True), else None; arrays
                                    # allocated through it keep it alive after us
    cdef _Switch _switch            # its last frame's switch of NumPy's handler
                                    # variable (capture=True), reused by the next
    cdef object __weakref__
    cdef object _frame_key          # weakref.ref(self): what its frames set _frame_var to
    # --- per-cycle history: a ring of the last HISTORY_LENGTH outermost cycles.
    # Invariant: hist_len <= hist_cap <= HISTORY_LENGTH; the oldest record is at
    # hist_head once the ring is full (hist_len == HISTORY_LENGTH), else at 0.
    cdef CycleRecord* hist          # owned (malloc/realloc), NULL until the first cycle ends
    cdef size_t hist_cap, hist_len, hist_head
    cdef long long hist_minflt0     # thread's minor faults at cycle start (track=True), else -1
    cdef void _record_cycle(self, size_t cap_before, bint was_init) noexcept

    cdef int _require_open(self) except -1
    cdef object _borrowed(self, object fn, tuple args)
