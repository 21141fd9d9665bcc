# cython: boundscheck=False, wraparound=False, cdivision=True
"""The workspace arena: blocks, pins, bump allocation, cycles and policies.

Memory model
------------
A workspace owns one *main block* (the learned capacity) and, per cycle, any
number of *spill blocks* (one allocation each).  Allocation bumps a cursor
through the free *holes* of the main block; a cycle's end resets the cursor.

Exports that cannot be invalidated (buffer views, ndarrays, DLPack capsules)
hold a :c:type:`Pin`: a line-rounded byte range of one block.  A pin keeps its
block alive (``Block.refs``) even after the workspace shrinks, grows or is
destroyed, and at the next cycle start the pinned ranges of the main block are
left out of the holes, so no allocation can ever be handed memory that a live
view can still read.  Pins are O(1) to create and release; the sorted hole
list is built only at cycle start, and only when pins exist.
"""
cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport strerror

from wsmem._pages cimport (PageRegion, pages_map_host, pages_map_file, pages_malloc,
                           pages_map_gpu, pages_release, PAGES_DEVICE, PAGES_PINNED,
                           PAGES_MALLOC)

import os
import tempfile
import warnings

from wsmem._errors import PerformanceWarning, WorkspaceError, WorkspaceOverflowError

cdef extern from *:
    """
    /* initial-exec: read at a fixed offset from the thread pointer, not
       through __tls_get_addr (the default for a shared object), on every
       allocation and frame; one pointer of the static TLS surplus that glibc
       keeps for dlopen()ed modules. */
    static __thread PyObject *wsmem_tls_top __attribute__((tls_model("initial-exec"))) = NULL;
    /* The contextvars.Context the innermost frame was entered in (borrowed
       from its frame-stack entry); NULL when no frame is open. */
    static __thread PyObject *wsmem_tls_top_ctx __attribute__((tls_model("initial-exec"))) = NULL;
    static char wsmem_zero_area[4096] __attribute__((aligned(4096)));
    """
    PyObject* wsmem_tls_top
    PyObject* wsmem_tls_top_ctx
    char wsmem_zero_area[4096]

cdef int _debug_mode = DEBUG_OFF


# wsmem._workspace's lookup of the current frame for a context other than the
# one the innermost frame was entered in (asyncio tasks share their thread's
# frames); registered when that module is imported, which opening a frame needs.
cdef current_fn _current_elsewhere = NULL


cdef void set_current_elsewhere(current_fn fn) noexcept:
    global _current_elsewhere
    _current_elsewhere = fn


cdef object current_arena():
    # A closed workspace is not current even when its frame is still on this
    # thread's stack: a frame left from another thread (a generator suspended
    # in `with ws:` here and finalized there) ends the cycle there, and the
    # entry here cannot be reached from that thread.  Creation functions then
    # allocate on the heap, as the capture handler does for a closed cycle.
    if wsmem_tls_top_ctx == NULL:
        return None                 # no frame open in this thread
    if wsmem_tls_top_ctx != wsmem_running_context():
        return _current_elsewhere()
    if wsmem_tls_top == NULL or (<Arena>wsmem_tls_top).depth <= 0:
        return None
    return <object>wsmem_tls_top


cdef void set_current_arena(object arena, PyObject* context) noexcept:
    global wsmem_tls_top, wsmem_tls_top_ctx
    wsmem_tls_top = NULL if arena is None else <PyObject*>arena
    wsmem_tls_top_ctx = context


cdef int get_debug_mode() noexcept:
    return _debug_mode


cdef const int* debug_mode_address() noexcept:
    return &_debug_mode


cdef void set_debug_mode(int mode) noexcept:
    global _debug_mode
    _debug_mode = mode


# Pin granularity (bytes), for Python code that sizes by it (wsmem._prefetch).
PIN_LINE = LINE


# Recurring external spills (after learning) warn once per workspace when at
# least SPILL_WARN_OF of the last SPILL_WINDOW cycles spilled.
cdef enum:
    SPILL_WINDOW = 16
    SPILL_WARN_OF = 8


cdef inline int _recent_spills(unsigned int bits) noexcept:
    cdef int n = 0, i
    for i in range(SPILL_WINDOW):
        n += (bits >> i) & 1
    return n


def _nbytes_str(size_t n):
    # Floating-point division: size_t / int would be C's integer division.
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024.0:.1f} KiB"
    if n < 1 << 30:
        return f"{n / 1048576.0:.1f} MiB"
    return f"{n / 1073741824.0:.2f} GiB"


# ---------------------------------------------------------------- blocks

cdef Block* _block_new(ArenaState* st, size_t size, bint is_main, Arena arena) except NULL:
    """Map a block of `size` usable bytes and link it into `st.blocks` (refs = 1)."""
    cdef Block* b = <Block*>calloc(1, sizeof(Block))
    cdef int err
    cdef size_t align = arena.alignment
    cdef const char* path
    if b == NULL:
        raise MemoryError("wsmem: out of memory for a block header")
    if arena.location == LOC_DEVICE or arena.location == LOC_PINNED:
        try:
            pages_map_gpu(&b.region, size, PAGES_DEVICE if arena.location == LOC_DEVICE
                          else PAGES_PINNED, arena.device, arena)
        except BaseException:
            free(b)
            raise
        err = 0
    elif is_main and arena.location == LOC_MMAP:
        path = arena.mmap_path
        with nogil:
            err = pages_map_file(&b.region, size, path)
    elif is_main or size >= SPILL_MMAP_THRESHOLD:
        with nogil:
            err = pages_map_host(&b.region, size, align, is_main)
        b.untouched = not is_main
    else:
        err = pages_malloc(&b.region, size, align)
    if err != 0:
        free(b)
        what = "block" if is_main else "spill"
        raise WorkspaceOverflowError(
            f"workspace {arena.name!r}: the system refused {_nbytes_str(size)} for a {what} "
            f"({strerror(err).decode()}). Free memory, lower max_size/initial_size, or use "
            f"a smaller batch.", arena._stats_or_none())
    b.size = size
    b.refs = 1
    b.is_main = is_main
    b.ring = is_main and arena.reset == RESET_ENDOFBUFFER
    b.state = st
    list_push(&st.blocks, b)
    st.n_live_blocks += 1
    return b


cdef void block_free(Block* b) noexcept:
    """Unmap and unlink block `b`, whose last reference was just dropped."""
    cdef ArenaState* st = b.state
    cdef bint last
    list_unlink(&st.blocks, b)
    st.n_live_blocks -= 1
    # Decide under the GIL: munmap below releases it, and another thread may
    # drop the arena's other last block meanwhile; only one may free `st`.
    last = st.n_live_blocks == 0 and not st.arena_alive
    with nogil:
        pages_release(&b.region)
    free(b)
    if last:
        free(st)


# ---------------------------------------------------------------- pins

# pin_init and pin_fini are inline, in _arena.pxd.

cdef void pin_release(Pin* p) noexcept:
    cdef PyObject* owner = p.owner
    p.owner = NULL
    pin_fini(p)          # owner's reference is dropped below, after free(p)
    free(p)
    Py_XDECREF(owner)


cdef int _cmp_range(const void* a, const void* b) noexcept nogil:
    cdef size_t x = (<size_t*>a)[0]
    cdef size_t y = (<size_t*>b)[0]
    return -1 if x < y else (1 if x > y else 0)


cdef size_t _merged_ranges(Block* b, size_t** out) except? 0:
    """Sorted, merged [lo, hi) pairs of the live pins of `b` (malloc'd in *out)."""
    cdef size_t n = 0, m = 0, i
    cdef Pin* p = b.pins
    cdef size_t* r
    out[0] = NULL
    if b.n_pins == 0:
        return 0
    r = <size_t*>malloc(2 * b.n_pins * sizeof(size_t))
    if r == NULL:
        raise MemoryError("wsmem: out of memory while listing pins")
    while p != NULL:
        r[2 * n] = p.lo
        r[2 * n + 1] = p.hi if p.hi < b.size else round_up(b.size, LINE)
        n += 1
        p = p.next
    qsort(r, n, 2 * sizeof(size_t), _cmp_range)
    for i in range(1, n):
        if r[2 * i] <= r[2 * m + 1]:
            if r[2 * i + 1] > r[2 * m + 1]:
                r[2 * m + 1] = r[2 * i + 1]
        else:
            m += 1
            r[2 * m] = r[2 * i]
            r[2 * m + 1] = r[2 * i + 1]
    out[0] = r
    return m + 1


cdef void _unlink_spill(ArenaState* st, Block* b) noexcept:
    if b.prev_spill != NULL:
        b.prev_spill.next_spill = b.next_spill
    else:
        st.spills = b.next_spill
    if b.next_spill != NULL:
        b.next_spill.prev_spill = b.prev_spill
    b.next_spill = b.prev_spill = NULL
    b.in_spills = False


cdef void arena_drop_dead_spill(Arena a, Block* b) noexcept:
    if b.in_spills and b.refs == 1 and b.state == a.state:
        _unlink_spill(a.state, b)
        a.spill_held -= b.size
        block_decref(b)


# ---------------------------------------------------------------- circular workspaces

cdef inline bint _lap_valid(unsigned long long lap, size_t off, unsigned long long cur_lap,
                            size_t cursor) noexcept:
    # Written over once the ring has come around past its offset.
    return lap == cur_lap or (lap + 1 == cur_lap and off >= cursor)


cdef owner_off_fn _owner_off = NULL


cdef void set_owner_off_fn(owner_off_fn fn) noexcept:
    global _owner_off
    _owner_off = fn


cdef inline bint _export_alive(Block* b, unsigned long long gen, size_t off) noexcept:
    # An export of this very allocation is alive: it was made while the array
    # was valid, and its pin has kept the ring off these bytes ever since,
    # however many times the ring has wrapped around it.
    cdef Pin* p = b.pins if b != NULL else NULL
    if _owner_off == NULL:
        return False
    while p != NULL:
        if p.generation == gen and p.owner != NULL and _owner_off(p.owner) == off:
            return True
        p = p.next
    return False


cdef bint ring_valid(Arena a, unsigned long long gen, size_t off) noexcept:
    cdef unsigned int serial = <unsigned int>(gen >> 40)
    cdef unsigned long long lap = gen & ((1ULL << 40) - 1)
    cdef size_t i
    if a.destroyed:
        return False
    if a.floor_set:
        if (serial < a.floor_serial or (serial == a.floor_serial and (
                lap < a.floor_lap or (lap == a.floor_lap and off < a.floor_off)))):
            return False
    if serial == a.ring_serial:
        return _lap_valid(lap, off, a.ring_lap, a.cursor) or _export_alive(a.main, gen, off)
    for i in range(a.n_retired):
        if a.retired[i].serial == serial:
            return (_lap_valid(lap, off, a.retired[i].lap, a.retired[i].cursor)
                    or _export_alive(a.retired[i].block, gen, off))
    return False


cdef void ring_note_pin(Arena a, Pin* p) noexcept:
    if a is None or a.reset != RESET_ENDOFBUFFER or p.block != a.main or p.hi <= a.cursor:
        return
    # An export of a still-valid array of the previous lap, ahead of the
    # cursor: the hole being filled must stop before it, and the holes after
    # it are rebuilt from the live pins on the next slow-path allocation.
    if p.lo < a.limit:
        a.limit = p.lo if p.lo > a.cursor else a.cursor
    a.state.holes_dirty = True


cdef void ring_expire_before(Arena a, unsigned long long gen, size_t off) noexcept:
    cdef unsigned int serial = <unsigned int>(gen >> 40)
    cdef unsigned long long lap = gen & ((1ULL << 40) - 1)
    if a.floor_set and (serial < a.floor_serial or (serial == a.floor_serial and (
            lap < a.floor_lap or (lap == a.floor_lap and off <= a.floor_off)))):
        return      # the floor only moves forward
    a.floor_set = True
    a.floor_serial = serial
    a.floor_lap = lap
    a.floor_off = off
    a.ring_release_retired()


# ---------------------------------------------------------------- allocation

cdef char* arena_alloc(Arena a, size_t nbytes, Block** block) except NULL:
    cdef char* p
    if _debug_mode == DEBUG_OFF:
        p = arena_bump_hole(a, nbytes, block)
        if p != NULL:
            return p
    return a.alloc_slow(nbytes, block)


# The collector must not clear an Arena's fields before it is deallocated:
# __dealloc__ (Workspace's too) detaches C contexts through them, and a
# context left pointing at a dead arena is a use after free.
@cython.no_gc_clear
cdef class Arena:
    """C-level state of a workspace; :class:`wsmem.Workspace` is the public face."""

    def __cinit__(self, *args, **kwargs):
        self.state = <ArenaState*>calloc(1, sizeof(ArenaState))
        if self.state == NULL:
            raise MemoryError("wsmem: out of memory for a workspace")
        self.state.arena_alive = True
        self.alignment = 64
        self.owner_thread = wsmem_thread_ident()
        self.name = ""

    def __dealloc__(self):
        cdef ArenaState* st = self.state
        if st == NULL:
            return
        self._drop_blocks()
        free(self.holes)
        self.holes = NULL
        free(self.retired)
        self.retired = NULL
        st.arena_alive = False
        if st.n_live_blocks == 0:
            free(st)
        self.state = NULL
        if wsmem_tls_top == <PyObject*>self:   # never leave a dangling current
            set_current_arena(None, NULL)

    cdef void _drop_spills(self) noexcept:
        """Drop the arena's reference on every spill of the open cycle."""
        cdef Block* b
        while self.state.spills != NULL:
            b = self.state.spills
            _unlink_spill(self.state, b)
            block_decref(b)
        self.spill_held = 0

    cdef void _drop_blocks(self) noexcept:
        cdef Block* b
        cdef size_t i
        self._drop_spills()
        for i in range(self.n_retired):
            block_decref(self.retired[i].block)
        self.n_retired = 0
        if self.main != NULL:
            b = self.main
            self.main = NULL
            block_decref(b)
        self.cursor = self.limit = 0
        self.n_holes = self.hole_index = 0

    cdef int _configure(self, object cfg) except -1:
        self.learning = {"none": LEARN_NONE, "first_loop": LEARN_FIRST_LOOP,
                         "over_time": LEARN_OVER_TIME}[cfg.learning.value]
        self.spill = {"external": SPILL_EXTERNAL, "reallocate": SPILL_REALLOCATE,
                      "fail": SPILL_FAIL}[cfg.spill.value]
        self.allocation = {"strict": ALLOC_STRICT,
                           "overallocate": ALLOC_OVERALLOCATE}[cfg.allocation.value]
        self.reset = {"block_left": RESET_BLOCK_LEFT,
                      "endofbuffer_reached": RESET_ENDOFBUFFER}[cfg.reset.value]
        self.location = {"host": LOC_HOST, "pinned": LOC_PINNED, "device": LOC_DEVICE,
                         "mmap": LOC_MMAP}[cfg.location.value]
        self.device = -1 if cfg.device is None else cfg.device
        self.initial_size = cfg.initial_size
        self.min_size = cfg.min_size
        self.max_size = cfg.max_size
        self.cycles_before_init = cfg.cycles_before_init
        self.overallocation = cfg.overallocation_limit
        self.alignment = cfg.effective_alignment
        self.initialized = self.learning == LEARN_NONE
        if self.location == LOC_MMAP:
            if cfg.mmap_path is None:
                fd, path = tempfile.mkstemp(prefix="wsmem-", suffix=".mmap")
                os.close(fd)
                self.mmap_temp = True
            else:
                path = cfg.mmap_path
                self.mmap_temp = False
            self.mmap_path = os.fsencode(path)
        cdef size_t initial = self.initial_size
        if self.allocation == ALLOC_OVERALLOCATE:
            initial = <size_t>(initial * (1.0 + self.overallocation))
        if self.max_size and initial > self.max_size:
            initial = self.max_size
        self.set_capacity(initial)
        return 0

    cdef size_t capacity(self) noexcept:
        return self.main.size if self.main != NULL else 0

    cdef size_t learned_size(self, size_t peak) noexcept:
        cdef size_t t = peak
        if self.allocation == ALLOC_OVERALLOCATE:
            t = <size_t>(peak * (1.0 + self.overallocation))
        if t < self.min_size:
            t = self.min_size
        if self.max_size and t > self.max_size:
            t = self.max_size
        return t

    cdef int set_capacity(self, size_t size) except -1:
        """Replace the main block by one of `size` bytes (closed cycle only).

        On failure the old block stays in place.  A replaced block that live
        pins still reference stays mapped until the last of them is released.
        """
        cdef Block* new = NULL
        cdef Block* old = self.main
        if size == self.capacity():
            return 0
        if self.location == LOC_MMAP and old != NULL:
            # The file maps at offset 0: a second block would alias the first,
            # whose bytes live views may still read.
            raise WorkspaceError(
                f"workspace {self.name!r} is file-backed (location='mmap'): its block has "
                f"the fixed size {self.capacity()} and cannot be resized. Create the "
                f"workspace with the initial_size you need.")
        if size > 0:
            new = _block_new(self.state, size, True, self)
            if self.location == LOC_MMAP and self.mmap_temp:
                try:
                    os.unlink(self.mmap_path)
                except OSError:
                    pass
        self.main = new
        self.cursor = self.limit = 0
        self.ring_started = False
        if old != NULL:
            block_decref(old)
        return 0

    cdef int begin_cycle(self) except -1:
        """Start a cycle: next generation, cursor at the first free hole.

        A circular workspace keeps its cursor: the ring goes on where the last
        cycle left it.
        """
        self.generation += 1
        self.cycle_bytes = self.spilled_bytes = self.spilled_count = 0
        self.spill_held = self.spill_mapped = 0
        if self.reset == RESET_ENDOFBUFFER:
            if not self.ring_started and self.main != NULL:
                self.ring_started = True
                self.build_holes(0)
            return 0
        self.n_holes = self.hole_index = 0
        self.cursor = self.limit = 0
        if self.main == NULL:
            return 0
        if self.main.n_pins == 0:
            self.limit = self.main.size
            return 0
        # Pinned ranges survive from earlier cycles: allocate only in the gaps.
        self.build_holes(0)
        return 0

    cdef int build_holes(self, size_t start) except -1:
        """Holes of the main block in [start, size) around the live pins; the
        cursor goes to the first one (or to the end when there is none)."""
        cdef size_t* ranges = NULL
        cdef size_t n, i, k, s, end, prev_end
        n = _merged_ranges(self.main, &ranges)
        free(self.holes)
        self.holes = <size_t*>malloc(2 * (n + 1) * sizeof(size_t))
        if self.holes == NULL:
            free(ranges)
            self.n_holes = self.hole_index = 0
            self.cursor = self.limit = self.main.size
            raise MemoryError("wsmem: out of memory for the hole list")
        k = 0
        prev_end = start
        for i in range(n + 1):
            end = ranges[2 * i] if i < n else self.main.size
            if i < n and ranges[2 * i + 1] <= start:
                continue
            s = round_up(prev_end, self.alignment)
            if end > s:
                self.holes[2 * k] = s
                self.holes[2 * k + 1] = end
                k += 1
            if i < n and ranges[2 * i + 1] > prev_end:
                prev_end = ranges[2 * i + 1]
        free(ranges)
        self.n_holes = k
        self.state.holes_dirty = False
        if k > 0:
            self.cursor = self.holes[0]
            self.limit = self.holes[1]
            self.hole_index = 1
        else:
            self.cursor = self.limit = self.main.size
            self.hole_index = 0
        return 0

    cdef bint _fit(self, size_t sz, size_t* start) noexcept:
        """First place for sz bytes: the rest of the current hole, then the
        holes after it (a hole too small is left behind)."""
        cdef size_t s, e
        if sz <= self.limit - self.cursor:
            start[0] = self.cursor
            self.cursor += sz
            return True
        while self.hole_index < self.n_holes:
            s = self.holes[2 * self.hole_index]
            e = self.holes[2 * self.hole_index + 1]
            self.hole_index += 1
            if e - s >= sz:
                start[0] = s
                self.cursor = s + sz
                self.limit = e
                return True
        return False            # the current hole keeps its rest for smaller requests

    cdef char* ring_alloc_slow(self, size_t sz, Block** block) except NULL:
        """Circular workspace: rest of the lap, else wrap, else grow."""
        cdef size_t start, cap, new_cap
        cdef Block* new
        cdef RingInfo* grown
        # State on entry: if nothing fits and the ring grows, nothing was
        # written meanwhile, so the retired ring freezes at this state.
        cdef unsigned long long lap0 = self.ring_lap, wraps0 = self.ring_wraps
        cdef size_t cursor0 = self.cursor
        if self.main != NULL:
            if self.state.holes_dirty:
                self.build_holes(self.cursor)
            if not self._fit(sz, &start):
                # Wrap: a new lap over the whole ring, around live pins.
                self.ring_lap += 1
                self.ring_wraps += 1
                self.ring_release_retired()
                self.build_holes(0)
                if not self._fit(sz, &start):
                    start = <size_t>-1
            if start != <size_t>-1:
                self.cycle_bytes += sz
                block[0] = self.main
                return self.main.region.ptr + start
        # Grow: a larger ring; the old one is retired frozen (its arrays stay
        # valid until the floor passes them or the new ring wrapped twice).
        cap = self.capacity()
        new_cap = 2 * cap if 2 * cap > cap + sz else cap + sz
        if self.max_size and new_cap > self.max_size:
            new_cap = self.max_size
        if new_cap < sz or new_cap <= cap:
            raise WorkspaceOverflowError(
                f"circular workspace {self.name!r}: {_nbytes_str(sz)} does not fit in its "
                f"{_nbytes_str(cap)} ring around the live exports, and growing would exceed "
                f"max_size={self.max_size}. Raise max_size, or release views of older items.",
                self._stats_or_none())
        new = _block_new(self.state, new_cap, True, self)
        if self.main != NULL:
            grown = <RingInfo*>realloc(self.retired, (self.n_retired + 1) * sizeof(RingInfo))
            if grown == NULL:
                block_decref(new)
                raise MemoryError("wsmem: out of memory for the retired-ring list")
            self.retired = grown
            self.retired[self.n_retired].block = self.main       # the arena's reference moves here
            self.retired[self.n_retired].serial = self.ring_serial
            self.retired[self.n_retired].lap = lap0
            self.retired[self.n_retired].cursor = cursor0
            self.retired[self.n_retired].retired_at = wraps0
            self.ring_wraps = wraps0
            self.n_retired += 1
        self.main = new
        self.ring_serial += 1
        self.ring_lap = 0
        self.ring_started = True
        self.n_holes = self.hole_index = 0
        self.state.holes_dirty = False
        self.cursor = sz
        self.limit = new_cap
        self.cycle_bytes += sz
        block[0] = new
        return new.region.ptr

    cdef void ring_release_retired(self) noexcept:
        cdef size_t i = 0, j
        while i < self.n_retired:
            if (self.ring_wraps >= self.retired[i].retired_at + 2 or
                    (self.floor_set and self.floor_serial > self.retired[i].serial)):
                block_decref(self.retired[i].block)
                for j in range(i + 1, self.n_retired):
                    self.retired[j - 1] = self.retired[j]
                self.n_retired -= 1
            else:
                i += 1

    cdef char* alloc_slow(self, size_t nbytes, Block** block) except NULL:
        cdef size_t sz, start
        if self.owner_thread == 0:
            self.check_owner()              # disowned in a fork() child
        if nbytes == 0:
            block[0] = NULL
            return wsmem_zero_area
        if nbytes >= MAX_REQUEST:
            raise ValueError(f"cannot allocate {nbytes} bytes: larger than any address space")
        sz = round_up(nbytes, self.alignment)
        if self.reset == RESET_ENDOFBUFFER:
            # Rings never spill (a spill would be freed at the end of the cycle,
            # while ring arrays live until written over), not even in debug modes.
            return self.ring_alloc_slow(sz, block)
        if _debug_mode == DEBUG_SPILL_EVERYTHING:
            return self.spill_alloc(nbytes, block)
        if self._fit(sz, &start):
            self.cycle_bytes += sz
            block[0] = self.main
            return self.main.region.ptr + start
        if self.initialized and self.spill == SPILL_FAIL:
            raise WorkspaceOverflowError(
                f"workspace {self.name!r} is full: {_nbytes_str(sz)} requested, "
                f"{_nbytes_str(self.limit - self.cursor)} left of {_nbytes_str(self.capacity())} "
                f"(spill='fail'). Raise initial_size, or use spill='external' or 'reallocate'.",
                self._stats_or_none())
        return self.spill_alloc(nbytes, block)

    cdef char* spill_alloc(self, size_t nbytes, Block** block) except NULL:
        cdef size_t sz = round_up(nbytes, self.alignment)
        cdef Block* b
        if self.max_size and self.capacity() + self.spill_held + sz > self.max_size:
            raise WorkspaceOverflowError(
                f"workspace {self.name!r}: {_nbytes_str(sz)} more would exceed max_size="
                f"{self.max_size} ({_nbytes_str(self.capacity())} block + "
                f"{_nbytes_str(self.spill_held)} spilled and held this cycle). Raise max_size, "
                f"allocate less per cycle, or allocate outside it with wsmem.scope_out().",
                self._stats_or_none())
        b = _block_new(self.state, sz, False, self)
        b.next_spill = self.state.spills
        if self.state.spills != NULL:
            self.state.spills.prev_spill = b
        self.state.spills = b
        b.in_spills = True
        self.spill_held += sz
        self.spilled_bytes += sz
        self.spilled_count += 1
        if b.region.kind != PAGES_MALLOC:
            self.spill_mapped += sz         # a mapping of its own, not a heap block
        self.cycle_bytes += sz
        block[0] = b
        return b.region.ptr

    cdef void abandon_cycle(self) noexcept:
        """Undo begin_cycle() for a cycle that handed nothing out (an
        ``__enter__`` that failed after starting it): the workspace is closed
        again, and no cycle is counted, learned from or recorded.  The
        generation stays bumped (no array has it)."""
        self._drop_spills()
        if self.reset != RESET_ENDOFBUFFER:
            self.cursor = self.limit = 0
            self.n_holes = self.hole_index = 0

    cdef int end_cycle(self) except -1:
        """Close the cycle: free spills, learn, grow; the generation's arrays go stale."""
        cdef size_t target
        self._drop_spills()
        self.cycles += 1
        self.last_cycle_bytes = self.cycle_bytes
        if self.cycle_bytes > self.peak_cycle_bytes:
            self.peak_cycle_bytes = self.cycle_bytes
        if self.reset == RESET_ENDOFBUFFER:
            return 0            # the ring keeps its cursor; nothing to learn
        self.cursor = self.limit = 0
        self.n_holes = self.hole_index = 0
        was_init = self.initialized and not self.init_pending
        learn = self.init_pending or (not self.initialized and self.learning != LEARN_NONE)
        grow = (self.initialized and self.spill == SPILL_REALLOCATE and self.spilled_bytes
                and _debug_mode == DEBUG_OFF)
        if learn or grow:
            # What the next cycle needs: this cycle's bytes, plus what is still
            # pinned now (arrays that outlive the cycle, such as a loop's last
            # results still bound to names when the next cycle starts).
            need = self.cycle_bytes + self.pinned_bytes()
            if need > self.learn_peak:
                self.learn_peak = need
        # first_loop learns from the first cycle that allocated anything: an
        # empty first cycle would otherwise size the block to 0 for good.
        if self.init_pending or (not self.initialized and (
                (self.learning == LEARN_FIRST_LOOP and self.cycle_bytes > 0) or
                (self.learning == LEARN_OVER_TIME and
                 self.cycles >= max(self.cycles_before_init, 1)))):
            self.initialized = True
            self.init_pending = False
            self._resize_after_cycle(self.learned_size(self.learn_peak))
            self.spill_bits = 0
        elif grow:
            target = self.learned_size(need)
            if target > self.capacity():
                self._resize_after_cycle(target)
        if was_init and self.spill == SPILL_EXTERNAL and _debug_mode == DEBUG_OFF:
            self.spill_bits = (self.spill_bits << 1) | (self.spill_mapped != 0)
            if not self.warned_spills and _recent_spills(self.spill_bits) >= SPILL_WARN_OF:
                self.warned_spills = True
                self._warn_spills()     # last: with warnings as errors, the cycle is closed
        return 0

    cdef int _warn_spills(self) except -1:
        """Recurring external spills into memory of their own (a mapping of
        SPILL_MMAP_THRESHOLD or more, any device or pinned spill): the block
        is too small for most cycles, and every such spill is allocated and
        released again each cycle.  Heap spills (small host ones) are cheap
        and do not count."""
        cdef size_t pinned = self.pinned_bytes()
        if self.learning == LEARN_FIRST_LOOP:
            origin = "learned from its first cycle"
        elif self.learning == LEARN_OVER_TIME:
            origin = f"learned over its first {max(self.cycles_before_init, 1)} cycles"
        else:
            origin = "its initial_size, learning='none'"
        held = (f", and arrays kept from earlier cycles still pin {_nbytes_str(pinned)}"
                if pinned else "")
        warnings.warn(
            f"workspace {self.name!r} spilled into memory of its own (arrays of "
            f"{_nbytes_str(SPILL_MMAP_THRESHOLD)} or more, or any array of a device or pinned "
            f"workspace) in {_recent_spills(self.spill_bits)} of its last {SPILL_WINDOW} "
            f"cycles ({_nbytes_str(self.spill_mapped)} in the last one): its "
            f"{_nbytes_str(self.capacity())} block ({origin}) is smaller than these cycles "
            f"allocate (the largest so far: {_nbytes_str(self.peak_cycle_bytes)}){held}. "
            f"With spill='external' every spill is allocated afresh and released again at "
            f"each cycle's end (on the host: page faults on every page). Use "
            f"spill='reallocate' to grow the block to the largest cycle, "
            f"learning='over_time' with cycles_before_init covering the cycle sizes, or "
            f"min_size={self.peak_cycle_bytes + pinned}. (Shown once per workspace.)",
            PerformanceWarning, stacklevel=1)
        return 0

    cdef int _resize_after_cycle(self, size_t size) except -1:
        """Learning or growth at the end of a cycle.  The user's code is done:
        a block the system refuses to map leaves the old one in place, with a
        warning (once per workspace) instead of an error from ``with``."""
        try:
            self.set_capacity(size)
        except WorkspaceOverflowError:
            if not self.warned_resize:
                self.warned_resize = True
                warnings.warn(
                    f"workspace {self.name!r} learned that its cycles need "
                    f"{_nbytes_str(size)}, but the system refused to map a block that "
                    f"large; it keeps its "
                    f"{_nbytes_str(self.capacity())} block and spills the rest. Cycles that "
                    f"allocate many large arrays of ever-new sizes add them all up: set "
                    f"max_size (or initial_size with learning='none') to bound the block.",
                    RuntimeWarning, stacklevel=1)
        return 0

    cdef int release_all(self) except -1:
        """destroy(): drop every block; pinned ones live on until released."""
        self._drop_blocks()
        return 0

    cdef int check_owner(self) except -1:
        cdef unsigned long me = wsmem_thread_ident()
        if me != self.owner_thread:
            if self.owner_thread == 0:
                why = ("it is file-backed (location='mmap'): the parent process still "
                       "allocates in the same shared file pages" if self.location == LOC_MMAP
                       else "the thread that owned it does not exist in this process")
                raise WorkspaceError(
                    f"workspace {self.name!r} was inherited through fork() and cannot be "
                    f"used in this process: {why}. Create a new workspace in the child "
                    f"(wsmem.Workspace or wsmem.get_workspace).")
            raise WorkspaceError(
                f"workspace {self.name!r} belongs to thread {self.owner_thread}, not to "
                f"this thread ({me}). Workspaces are per thread: create one in each "
                f"thread with wsmem.get_workspace(name, cfg).")
        return 0

    def _after_fork_child(self, unsigned long forking_thread):
        """In a fork() child (see wsmem/_fork.py): disown this workspace unless
        the forking thread owns it and its memory is private to this process.

        A file-backed block (location='mmap') is a MAP_SHARED mapping that the
        parent still allocates in: a child allocation would write over the
        parent's arrays.  A workspace of another thread has no owner here.
        Disowned (owner_thread 0): entering, allocating (the fast path finds
        an empty hole and the slow path checks the owner), the capture
        handler (heap fallback) and resizing are refused; arrays made before
        the fork stay readable, as the rest of the child's memory does.
        """
        if self.location != LOC_MMAP and self.owner_thread == forking_thread:
            return
        self.owner_thread = 0
        self.limit = self.cursor
        self.n_holes = self.hole_index = 0
        self.initialized = True             # no learning, no growth: no new block
        self.init_pending = False
        self.spill = SPILL_EXTERNAL

    cdef size_t pinned_bytes(self) noexcept:
        """Bytes kept out of reuse by live exports, line-rounded, over all blocks."""
        cdef Block* b = self.state.blocks
        cdef size_t total = 0, n, i
        cdef size_t* r = NULL
        while b != NULL:
            if b.n_pins:
                if b.is_main:
                    try:
                        n = _merged_ranges(b, &r)
                    except MemoryError:
                        n = 0
                    for i in range(n):
                        total += r[2 * i + 1] - r[2 * i]
                    free(r)
                    r = NULL
                else:
                    total += round_up(b.size, LINE)
            b = b.next
        return total

    def _stats_or_none(self):
        try:
            return self.stats()
        except Exception:
            return None

    def _live_pins(self):
        """[(nbytes, generation, owner)] of every live pin (for leaks())."""
        cdef Block* b = self.state.blocks
        cdef Pin* p
        out = []
        while b != NULL:
            p = b.pins
            while p != NULL:
                out.append((p.hi - p.lo, p.generation,
                            None if p.owner == NULL else <object>p.owner))
                p = p.next
            b = b.next
        return out
