# WsArray: the array type of wsmem, and its exporters (buffer protocol,
# __array_interface__, ndarray views, DLPack).
cimport numpy as cnp
from wsmem._arena cimport Arena, Block, Pin

# Initial contents of a new array.
cdef enum:
    INIT_NONE = 0
    INIT_ZEROS = 1

cdef class WsArray:
    # Where the bytes live.  Invariant: when _ws is not None, _data/_block are
    # only dereferenced after arena_valid(_ws, _gen) (see _check); a stale
    # array never touches memory.
    cdef Arena _ws              # owning workspace (keeps the arena alive); None: heap array
    cdef unsigned long long _gen  # generation the bytes were allocated in
    cdef Block* _block          # borrowed: block holding the bytes; NULL for heap or 0 bytes
    cdef char* _data            # first element
    cdef size_t _off            # offset of its allocation in _block (ring validity)
    cdef object _base           # heap arrays: the ndarray owning the memory; else None
    cdef cnp.dtype _dtype
    cdef int _nd
    cdef cnp.npy_intp* _shape   # -> _small, or PyMem_Malloc'd when _nd > 8 (owned)
    cdef cnp.npy_intp* _strides # _shape + _nd
    cdef cnp.npy_intp _small[16]
    cdef object _tb             # allocation traceback (track=True) or None
    cdef int _dev               # 0: host memory; N + 1: device memory on CUDA device N
    cdef int _dl                # DLPack device type of the memory (0: kDLCPU)
    cdef Pin* _xpin             # pin taken by __cuda_array_interface__ (held until dealloc)

    cdef int _check(self) except -1
    cdef object _view(self)
    cdef object _pin_base(self)
    cdef Py_ssize_t _size(self) noexcept
    cdef bint _c_contig(self) noexcept
    cdef bint _f_contig(self) noexcept
    cdef object _dlpack_device(self, stream, max_version, dl_device, copy)

# Allocate an array in `arena` (open, owned by this thread); None means heap.
cdef WsArray new_array(Arena arena, object shape, object dtype, object order, int init)
# [lo, hi): the bytes a's elements span (any strides).
cdef void wsarray_extent(WsArray a, char** lo, char** hi) noexcept
