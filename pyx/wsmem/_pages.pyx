# cython: boundscheck=False, wraparound=False
"""Page sources for workspace blocks (see _pages.pxd)."""
from libc.errno cimport errno, ENOMEM, EINVAL
from libc.stdlib cimport free
from libc.string cimport memset
from posix.mman cimport (mmap, munmap, madvise, MAP_FAILED, PROT_READ,
                         PROT_WRITE, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS)
from posix.fcntl cimport open as c_open, O_RDWR, O_CREAT
from posix.unistd cimport close, ftruncate

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from "sys/mman.h" nogil:
    int MADV_HUGEPAGE

cdef gpu_map_fn _gpu_map = NULL
cdef gpu_release_fn _gpu_release = NULL

cdef size_t HUGE_PAGE = 2 * 1024 * 1024
cdef size_t HUGE_THRESHOLD = 2 * 1024 * 1024


def _set_huge_threshold(size_t nbytes):
    """Host mappings of at least `nbytes` get 2 MiB alignment, a length of
    whole 2 MiB pages and ``MADV_HUGEPAGE`` from now on (default 2 MiB;
    ``2**64 - 1``: never).
    Returns the previous value.  For ``bench/hugepages.py`` and tests, which
    measure what huge pages are worth; blocks already mapped keep theirs."""
    global HUGE_THRESHOLD
    old = HUGE_THRESHOLD
    HUGE_THRESHOLD = nbytes
    return old


cdef void _clear(PageRegion* r) noexcept nogil:
    r.ptr = NULL
    r.size = 0
    r.map_base = NULL
    r.map_size = 0
    r.fd = -1
    r.kind = PAGES_HOST
    r.device = -1


cdef int pages_map_host(PageRegion* out, size_t size, size_t alignment,
                        bint whole_huge=False) noexcept nogil:
    """Map `size` bytes of anonymous memory aligned to `alignment`.

    Regions of HUGE_THRESHOLD and more are aligned to HUGE_PAGE and advised
    MADV_HUGEPAGE, so that first touch costs one fault per 2 MiB instead of
    one per 4 KiB and the TLB holds the block in few entries.  With
    `whole_huge` (main blocks) their length is rounded up to whole huge
    pages, so that the last, partly used 2 MiB can be a huge page too (the
    kernel backs a huge page only where the mapping covers all of it): a
    2.6 MiB block is mapped as 4 MiB, of which only what the bump touches is
    ever faulted in, in 2 MiB units.  Spills (one array each, touched to
    their end) are not rounded: a 4 MiB array after a 64-byte header would
    fault a whole third huge page for its last 64 bytes.
    """
    cdef size_t align = alignment if alignment > 4096 else 4096
    cdef bint huge = size >= HUGE_THRESHOLD
    cdef size_t length
    cdef char* base
    cdef char* start
    cdef size_t head, tail
    _clear(out)
    if size == 0:
        return 0
    if huge and align < HUGE_PAGE:
        align = HUGE_PAGE
    length = round_up(size, HUGE_PAGE if huge and whole_huge else 4096)
    if length < size or length > <size_t>-1 - align:
        return ENOMEM
    # Over-map by `align` and trim, so the start is aligned.
    base = <char*>mmap(NULL, length + align, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void*>base == MAP_FAILED:
        return errno if errno else ENOMEM
    start = <char*>round_up(<size_t>base, align)
    head = <size_t>(start - base)
    tail = align - head
    if head:
        munmap(base, head)
    if tail:
        munmap(start + length, tail)
    if huge:
        madvise(start, length, MADV_HUGEPAGE)   # advisory: failure is harmless
    out.ptr = start
    out.size = length
    out.map_base = start
    out.map_size = length
    out.kind = PAGES_HOST
    return 0


cdef int pages_map_file(PageRegion* out, size_t size, const char* path) noexcept nogil:
    """Map `size` bytes of the file at `path` (created or extended) MAP_SHARED."""
    cdef int fd
    cdef size_t length
    cdef void* base
    cdef int err
    _clear(out)
    if size == 0:
        return EINVAL
    length = round_up(size, 4096)
    fd = c_open(path, O_RDWR | O_CREAT, 0o600)
    if fd < 0:
        return errno
    if ftruncate(fd, <long>length) != 0:
        err = errno
        close(fd)
        return err
    base = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if base == MAP_FAILED:
        err = errno
        close(fd)
        return err
    out.ptr = <char*>base
    out.size = length
    out.map_base = base
    out.map_size = length
    out.fd = fd
    out.kind = PAGES_FILE
    return 0


cdef int pages_malloc(PageRegion* out, size_t size, size_t alignment) noexcept nogil:
    """Heap memory for small spills (posix_memalign; no syscall in steady state).

    Not every posix_memalign keeps its word: mimalloc 2.0.9 (Debian's
    libmimalloc2.0, preloaded) returns 256 bytes at 256 alignment 128 bytes
    off, and five more such pairs up to 1 KiB.  A misaligned block is given
    back and the spill taken `align` bytes larger and aligned here
    (`map_base` keeps what free() needs)."""
    cdef void* base = NULL
    cdef size_t align = alignment if alignment >= sizeof(void*) else sizeof(void*)
    cdef size_t n = size if size else 1
    _clear(out)
    if posix_memalign(&base, align, n) != 0:
        return ENOMEM
    if <size_t>base & (align - 1):
        free(base)
        if n > <size_t>-1 - align or posix_memalign(&base, align, n + align) != 0:
            return ENOMEM
    out.map_base = base
    out.ptr = <char*>((<size_t>base + align - 1) & ~(align - 1))
    out.size = size
    out.kind = PAGES_MALLOC
    return 0


cdef void pages_set_gpu(gpu_map_fn map_fn, gpu_release_fn release_fn) noexcept:
    global _gpu_map, _gpu_release
    _gpu_map = map_fn
    _gpu_release = release_fn


cdef int pages_map_gpu(PageRegion* out, size_t size, int kind, int device,
                       object arena) except -1:
    _clear(out)
    if _gpu_map == NULL:
        raise RuntimeError("wsmem: the GPU page source is not loaded (import wsmem._gpu)")
    return _gpu_map(out, size, kind, device, arena)


cdef void pages_release(PageRegion* region) noexcept nogil:
    if region.map_base != NULL and (region.kind == PAGES_DEVICE or
                                    region.kind == PAGES_PINNED):
        if _gpu_release != NULL:
            _gpu_release(region)
        _clear(region)
        return
    if region.map_base != NULL:
        if region.kind == PAGES_MALLOC:
            free(region.map_base)
        else:
            munmap(region.map_base, region.map_size)
    if region.fd >= 0:
        close(region.fd)
    _clear(region)
