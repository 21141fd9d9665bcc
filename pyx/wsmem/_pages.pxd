# Page sources: where workspace blocks come from.
#
# A page source hands out whole, page-granular regions; the arena above carves
# them up.  Everything here is C-level and safe to call without the GIL.
# Host pages come from anonymous mmap (2 MiB aligned, MADV_HUGEPAGE for large
# regions), "mmap" pages from a shared file mapping, spills from
# posix_memalign (small) or mmap (large).  Device and pinned pages are added by
# the GPU layer through the same two function pointers.

cdef enum PageKind:
    PAGES_HOST = 0      # anonymous private mapping
    PAGES_FILE = 1      # MAP_SHARED mapping of a file (location="mmap")
    PAGES_MALLOC = 2    # posix_memalign (small spills)
    PAGES_DEVICE = 3    # cudaMalloc (wsmem._gpu, through CuPy's runtime)
    PAGES_PINNED = 4    # cudaHostAlloc: page-locked host memory (wsmem._gpu)

cdef struct PageRegion:
    char* ptr           # start of the usable, aligned memory (NULL if empty)
    size_t size         # usable bytes starting at ptr
    void* map_base      # what must be passed to munmap/free (may differ from ptr)
    size_t map_size     # length passed to munmap (0 for malloc'd memory)
    int fd              # file descriptor kept open for PAGES_FILE, else -1
    PageKind kind
    int device          # CUDA device of PAGES_DEVICE / PAGES_PINNED regions

# The GPU layer (wsmem._gpu) registers its page source here when first used.
# map: GIL held; fills `out` or raises (WorkspaceOverflowError on CUDA OOM).
ctypedef int (*gpu_map_fn)(PageRegion* out, size_t size, int kind, int device,
                           object arena) except -1
# release: any thread, GIL held or not (it takes the GIL itself).
ctypedef void (*gpu_release_fn)(PageRegion* region) noexcept nogil
cdef void pages_set_gpu(gpu_map_fn map_fn, gpu_release_fn release_fn) noexcept
# Map device or pinned pages (`kind` PAGES_DEVICE / PAGES_PINNED) on `device`.
cdef int pages_map_gpu(PageRegion* out, size_t size, int kind, int device,
                       object arena) except -1

# n rounded up to a multiple of a (a power of two).
cdef inline size_t round_up(size_t n, size_t a) noexcept nogil:
    return (n + a - 1) & ~(a - 1)

# Huge page size used for alignment and MADV_HUGEPAGE (x86-64 and aarch64 THP).
cdef size_t HUGE_PAGE
# Regions at least this large are mapped with MADV_HUGEPAGE.
cdef size_t HUGE_THRESHOLD

# Each returns 0 on success, or an errno value (memory is untouched on failure).
cdef int pages_map_host(PageRegion* out, size_t size, size_t alignment,
                        bint whole_huge=*) noexcept nogil
cdef int pages_map_file(PageRegion* out, size_t size, const char* path) noexcept nogil
cdef int pages_malloc(PageRegion* out, size_t size, size_t alignment) noexcept nogil
# Release a region obtained above; idempotent (clears the region).
cdef void pages_release(PageRegion* region) noexcept nogil
