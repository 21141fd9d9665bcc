# The arena: blocks, pins, bump allocation, cycles, policies.  C-level state;
# the allocation fast path (arena_bump) touches no Python object.
#
# Locking: every function here runs with the GIL held, which serialises pins
# released from other threads against the owner thread's cycle changes.  The
# owner-thread rule (one thread allocates) is enforced by the callers.
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF
from wsmem._pages cimport PageRegion, round_up

cdef extern from *:
    """
    #ifndef WSMEM_THREAD_IDENT_DEFINED
    #define WSMEM_THREAD_IDENT_DEFINED
    #if PY_VERSION_HEX >= 0x030D0000
    #define WSMEM_TSTATE() PyThreadState_GetUnchecked()
    #else
    #define WSMEM_TSTATE() _PyThreadState_UncheckedGet()
    #endif
    /* This thread's ident as CPython recorded it in its thread state (what
       PyThread_get_thread_ident() returned when the state was made), GIL
       held: no call into libpython on the owner checks of every cycle,
       allocation and free. */
    static inline unsigned long wsmem_thread_ident(void) {
        return WSMEM_TSTATE()->thread_id;
    }
    /* The running contextvars.Context (borrowed; NULL before the thread's
       first context-variable use), from the thread state in place. */
    static inline PyObject *wsmem_running_context(void) {
        return WSMEM_TSTATE()->context;
    }
    /* Requests of this many bytes or more are refused (no address space
       holds them; rounding them up could wrap). */
    #define WSMEM_MAX_REQUEST (((size_t)1) << 62)
    #endif
    """
    unsigned long wsmem_thread_ident() noexcept
    PyObject* wsmem_running_context() noexcept
    size_t MAX_REQUEST "WSMEM_MAX_REQUEST"

# Pins are recorded in lines: an escaped view keeps its own bytes rounded out
# to LINE-byte boundaries out of reuse, never a page.
cdef enum:
    LINE_SHIFT = 6
    LINE = 64
    # Spills below this size come from posix_memalign, larger ones from mmap
    # (page-aligned: _capture's page placement relies on it).
    SPILL_MMAP_THRESHOLD = 256 * 1024

# Policy codes (mirror the enums of wsmem._config).
cdef enum:
    LEARN_NONE = 0
    LEARN_FIRST_LOOP = 1
    LEARN_OVER_TIME = 2
    SPILL_EXTERNAL = 0
    SPILL_REALLOCATE = 1
    SPILL_FAIL = 2
    ALLOC_STRICT = 0
    ALLOC_OVERALLOCATE = 1
    RESET_BLOCK_LEFT = 0
    RESET_ENDOFBUFFER = 1
    LOC_HOST = 0
    LOC_PINNED = 1
    LOC_DEVICE = 2
    LOC_MMAP = 3
    DEBUG_OFF = 0
    DEBUG_SPILL_EVERYTHING = 1
    DEBUG_BYPASS_EVERYTHING = 2

cdef struct Pin:
    # A live export (buffer view, ndarray, DLPack capsule) of arena memory.
    Block* block            # the block holding the bytes; kept alive by this pin
    size_t lo               # line-rounded offsets [lo, hi) within block
    size_t hi
    unsigned long long generation
    PyObject* owner         # strong ref: the WsArray exported (shape/dtype/traceback for leaks())
    Pin* prev               # links in block.pins
    Pin* next

cdef struct Block:
    PageRegion region       # owned: released when refs drops to 0
    size_t size             # usable bytes (the logical capacity; region may be larger)
    Py_ssize_t refs         # 1 while the arena uses it + 1 per live pin; freed at 0
    Pin* pins               # live pins on this block (owned by their exporters)
    size_t n_pins
    bint is_main            # main (bump) block, else a spill (one allocation)
    bint ring               # main block of a circular arena: its pins mark holes dirty
    ArenaState* state       # borrowed: the arena that made it (alive while any block lives)
    Block* prev             # links in state.blocks (every live block of the arena)
    Block* next
    Block* next_spill       # links in state.spills (spills of the open cycle)
    Block* prev_spill
    bint in_spills          # linked in state.spills (the arena holds a ref for it)
    bint untouched          # a spill fresh from an anonymous mmap, not yet handed
                            # out: its pages are still the kernel's zero pages

cdef struct RingInfo:
    # A circular workspace's former ring, frozen when the ring grew: nothing
    # writes to it again; its arrays stay valid until the floor passes it or
    # the current ring has wrapped twice, then the arena drops its reference.
    Block* block                    # owned reference
    unsigned int serial
    unsigned long long lap          # lap and cursor at retirement (validity)
    size_t cursor
    unsigned long long retired_at   # ring_wraps at retirement

cdef struct ArenaState:
    # Heap-allocated so that blocks kept alive by pins never point at a dead
    # Arena: freed when the arena is gone and its last block is released.
    Block* blocks           # every live block (main, spills, retired ones kept by pins)
    Block* spills           # spill blocks of the open cycle (arena holds a ref on each)
    size_t n_live_blocks
    bint arena_alive
    bint holes_dirty        # a pin on a main block changed (released, or landed ahead of
                            # a ring's cursor): a ring rebuilds its holes before going on

cdef class Arena:
    # --- allocation state.  Invariants: cursor <= limit <= main.size; cursor
    # is a multiple of `alignment` (relative to an aligned block start); every
    # byte in [cursor, limit) of `main` is free of live pins.
    cdef Block* main                # owned ref (refs counts it); NULL while capacity is 0
    cdef size_t cursor              # bump offset within main
    cdef size_t limit               # end of the hole being filled
    cdef size_t* holes              # owned (malloc): [start0, end0, start1, end1, ...] after the current hole
    cdef size_t n_holes
    cdef size_t hole_index
    cdef ArenaState* state          # owned jointly with the blocks; see ArenaState
    cdef size_t alignment           # power of two
    # --- cycle state
    cdef unsigned long long generation
    cdef int depth                  # open `with` frames (re-entry nests); > 0 means open
    cdef bint destroyed
    cdef unsigned long owner_thread
    cdef bint track                 # tracebacks for leaks(); here, beside the fields every
                                    # captured allocation reads, to share their cache line
    cdef bint init_pending          # initialize() requested while open
    # --- statistics (cycle_* describe the open cycle, else the last one)
    cdef size_t cycle_bytes
    cdef size_t spilled_bytes       # every byte spilled this cycle (stats, learning)
    cdef size_t spill_held          # spilled bytes still mapped this cycle (max_size)
    cdef size_t spill_mapped        # bytes spilled this cycle in mappings of their own (the
                                    # costly kind: not from the heap), for the recurring-spill warning
    cdef size_t spilled_count
    cdef size_t last_cycle_bytes
    cdef size_t peak_cycle_bytes
    cdef size_t learn_peak          # max cycle_bytes since the last (re)initialisation
    cdef unsigned long long cycles
    cdef bint initialized           # learning finished (or learning == none)
    cdef bint warned_resize         # a learned/grown block was refused once (warned)
    cdef unsigned int spill_bits    # bit i: the i-th last cycle after learning spilled
    cdef bint warned_spills         # recurring external spills were warned about once
    # --- configuration (validated by wsmem._config); before the ring fields,
    # so that a frame's begin_cycle and end_cycle (reset, learning, spill, gpu)
    # read the same cache lines as the cycle and statistics fields
    cdef int learning, spill, allocation, reset, location
    cdef int device                 # CUDA device (LOC_DEVICE / LOC_PINNED), else -1
    cdef object gpu                 # wsmem._gpu.DeviceState (device/pinned), else None
    cdef size_t initial_size, min_size, max_size, cycles_before_init
    cdef double overallocation
    cdef bytes mmap_path            # file behind LOC_MMAP blocks
    cdef bint mmap_temp             # mmap_path is a temporary file: unlink once mapped
    # --- circular workspaces (reset == RESET_ENDOFBUFFER).  The cursor is
    # not reset between cycles; a ring array (position serial, lap, offset)
    # is valid until the ring writes over it, or the floor passes it.
    cdef bint ring_started
    cdef unsigned int ring_serial        # serial of the current ring block
    cdef unsigned long long ring_lap     # wraps of the current ring
    cdef unsigned long long ring_wraps   # wraps over all rings (release of retired rings)
    cdef RingInfo* retired               # owned (malloc): n_retired frozen rings
    cdef size_t n_retired
    cdef bint floor_set                  # arrays before (serial, lap, off) are stale
    cdef unsigned int floor_serial
    cdef unsigned long long floor_lap
    cdef size_t floor_off
    cdef readonly object name

    cdef int _configure(self, object cfg) except -1
    cdef int set_capacity(self, size_t size) except -1
    cdef size_t learned_size(self, size_t peak) noexcept
    cdef int begin_cycle(self) except -1
    cdef int end_cycle(self) except -1
    cdef void abandon_cycle(self) noexcept
    cdef int _resize_after_cycle(self, size_t size) except -1
    cdef int _warn_spills(self) except -1
    cdef char* alloc_slow(self, size_t nbytes, Block** block) except NULL
    cdef char* spill_alloc(self, size_t nbytes, Block** block) except NULL
    cdef int release_all(self) except -1
    cdef int check_owner(self) except -1
    cdef void _drop_blocks(self) noexcept
    cdef void _drop_spills(self) noexcept
    cdef size_t pinned_bytes(self) noexcept
    cdef size_t capacity(self) noexcept
    cdef char* ring_alloc_slow(self, size_t sz, Block** block) except NULL
    cdef int build_holes(self, size_t start) except -1
    cdef bint _fit(self, size_t sz, size_t* start) noexcept
    cdef void ring_release_retired(self) noexcept

# Allocate `nbytes` (rounded up to the alignment) in the open cycle: a bump
# within the current hole, else the slow path (next hole, spill, or
# WorkspaceOverflowError).  *block receives the owning block (NULL for 0 bytes).
cdef char* arena_alloc(Arena a, size_t nbytes, Block** block) except NULL
# arena_alloc's fast path, inline for the capture handler: `nbytes` (1 to
# MAX_REQUEST - 1) from the rest of the current hole, or NULL when they do
# not fit there (then Arena.alloc_slow finds a place or raises).  No
# debug-mode check: the caller makes it.
cdef inline char* arena_bump_hole(Arena a, size_t nbytes, Block** block) noexcept:
    cdef size_t sz = round_up(nbytes, a.alignment)
    cdef char* p
    if nbytes == 0 or nbytes >= MAX_REQUEST or sz > a.limit - a.cursor:
        return NULL
    p = a.main.region.ptr + a.cursor
    a.cursor += sz
    a.cycle_bytes += sz
    block[0] = a.main
    return p

# A spill of the open cycle that nothing uses any more (its captured array
# was freed): unmap it now instead of at the end of the cycle.
cdef void arena_drop_dead_spill(Arena a, Block* b) noexcept

# Validity of an array born in generation `gen` of arena `a`, at offset `off`
# of its block.  Scoped workspaces: the cycle it was born in is still open.
# Circular ones: its bytes have not been written over (gen = serial << 40 | lap).
cdef inline bint arena_valid(Arena a, unsigned long long gen, size_t off) noexcept:
    if a.reset == RESET_BLOCK_LEFT:
        return a.generation == gen and a.depth > 0 and not a.destroyed
    return ring_valid(a, gen, off)

cdef bint ring_valid(Arena a, unsigned long long gen, size_t off) noexcept
# Position tag of the next allocation of a circular arena (its `gen`).
cdef inline unsigned long long ring_gen(Arena a) noexcept:
    return ((<unsigned long long>a.ring_serial) << 40) | a.ring_lap
# An export pinned [p.lo, p.hi) of a ring block, maybe ahead of the cursor.
cdef void ring_note_pin(Arena a, Pin* p) noexcept
# wsmem._array registers how to read the allocation offset of a pin's owner
# (a WsArray; SIZE_MAX for anything else): ring validity matches exports by
# (generation, allocation offset) without _arena knowing the WsArray type.
ctypedef size_t (*owner_off_fn)(PyObject* owner) noexcept
cdef void set_owner_off_fn(owner_off_fn fn) noexcept
# Make every array allocated in ring `a` before position (gen, off) stale.
cdef void ring_expire_before(Arena a, unsigned long long gen, size_t off) noexcept

# The two intrusive doubly linked lists (a block's pins, an arena's blocks):
# push at the head, unlink from anywhere.  Spills link through other fields
# (next_spill/prev_spill) and keep their own code.
ctypedef Pin* PinPtr
ctypedef Block* BlockPtr
ctypedef fused ListNode:
    PinPtr
    BlockPtr

cdef inline void list_push(ListNode* head, ListNode n) noexcept nogil:
    n.prev = NULL
    n.next = head[0]
    if head[0] != NULL:
        head[0].prev = n
    head[0] = n

cdef inline void list_unlink(ListNode* head, ListNode n) noexcept nogil:
    if n.prev != NULL:
        n.prev.next = n.next
    else:
        head[0] = n.next
    if n.next != NULL:
        n.next.prev = n.prev

# Drop one reference to block `b`; at zero it is unmapped and unlinked
# (block_free).  GIL held.
cdef void block_free(Block* b) noexcept

cdef inline void block_decref(Block* b) noexcept:
    b.refs -= 1
    if b.refs <= 0:
        block_free(b)

# Pin [lo, hi) of `block` (rounded out to LINE boundaries) into a
# caller-owned record (no allocation), keeping those bytes out of reuse and
# the block alive; `owner` (may be NULL) gets a strong reference.  Undo with
# pin_fini; pin_release undoes it and frees a malloc'd record.  Inline: every
# captured NumPy allocation and free runs one of each (GIL held).
cdef inline void pin_init(Pin* p, Block* block, char* lo, char* hi,
                          unsigned long long generation, PyObject* owner) noexcept:
    p.lo = (<size_t>(lo - block.region.ptr) >> LINE_SHIFT) << LINE_SHIFT
    p.hi = (<size_t>(hi - block.region.ptr) + (LINE - 1)) & ~(<size_t>(LINE - 1))
    p.block = block
    p.generation = generation
    p.owner = owner
    Py_XINCREF(owner)
    list_push(&block.pins, p)
    block.n_pins += 1
    block.refs += 1

cdef inline void pin_fini(Pin* p) noexcept:
    # The owner is released last: it may be the only reference keeping the
    # arena alive.
    cdef Block* b = p.block
    cdef PyObject* owner = p.owner
    if b == NULL:
        return
    list_unlink(&b.pins, p)
    b.n_pins -= 1
    if b.ring:
        b.state.holes_dirty = True      # the ring may reuse these bytes now
    p.block = NULL
    p.owner = NULL
    block_decref(b)
    Py_XDECREF(owner)

cdef void pin_release(Pin* pin) noexcept

# Per-thread state: the innermost active arena of the running context (None
# under scope_out or when no workspace is open).  The strong references live
# in wsmem._workspace's per-thread stack; set_current_arena publishes its top
# entry (arena, and the context it was entered in) as C thread-locals, read
# by current_arena when the running context is that one; for any other
# context it asks the function wsmem._workspace registers (which must not raise).
ctypedef object (*current_fn)()
cdef object current_arena()
cdef void set_current_arena(object arena, PyObject* context) noexcept
cdef void set_current_elsewhere(current_fn fn) noexcept
# Process-wide debug mode (DEBUG_*), as ND4J's workspace manager has it.
cdef int get_debug_mode() noexcept
# Where the mode lives, for the capture handler's per-allocation checks (a
# load instead of a call across modules).
cdef const int* debug_mode_address() noexcept
cdef void set_debug_mode(int mode) noexcept
