# cython: cdivision=True
"""WsArray and its exporters.

Creation functions allocate from the innermost active workspace (or the heap
when none is active).  A WsArray is a thin record (pointer, shape, strides,
dtype, workspace, generation); every data access first checks that the
generation is still live, so a stale array raises instead of reading memory
the arena has handed to someone else.

Exports that outlive that check (buffer views, ndarrays, DLPack capsules)
pin their bytes (see wsmem._arena): the arena skips pinned lines until the
export dies.
"""
cimport cython
cimport numpy as cnp
from cpython.buffer cimport (PyBUF_ND, PyBUF_STRIDES, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBUF_C_CONTIGUOUS, PyBUF_F_CONTIGUOUS, PyBUF_ANY_CONTIGUOUS)
from cpython.long cimport PyLong_Check, PyLong_AsSsize_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.object cimport PyTypeObject
from cpython.pycapsule cimport (PyCapsule_New, PyCapsule_IsValid, PyCapsule_GetPointer)
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdint cimport int64_t, uint64_t, int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy

from wsmem._capture cimport (captured_in, heap_copy, take_error, set_handler,
                             restore_handler, device_captured)
from wsmem._arena cimport (Arena, Block, Pin, arena_alloc, arena_valid,
                           pin_release, pin_init, pin_fini, ring_gen, ring_note_pin,
                           set_owner_off_fn, LOC_DEVICE, LOC_PINNED,
                           RESET_ENDOFBUFFER, current_arena, get_debug_mode,
                           DEBUG_BYPASS_EVERYTHING)

import operator
import traceback

import numpy as np

from wsmem._errors import WorkspaceError, WorkspaceLeakError

cnp.import_array()

cdef object _gpu_mod = None


cdef object _gpu():
    """wsmem._gpu, imported on first use (device and pinned arrays only)."""
    global _gpu_mod
    if _gpu_mod is None:
        from wsmem import _gpu as g
        _gpu_mod = g
    return _gpu_mod


cdef inline Arena _host_target():
    """The current arena unless it holds device memory (host results then go
    to the heap: a NumPy result never lands in device memory)."""
    cdef Arena a = <Arena>current_arena()
    if a is not None and a.location == LOC_DEVICE:
        return None
    return a


cdef object _device_error(WsArray a, str what):
    return TypeError(
        f"{what} needs host memory, and this WsArray lives on cuda:{a._dev - 1}. Use "
        f"a.cupy() (zero copy) or cupy.asarray(a), and cupy.asnumpy(...) for a host copy.")

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyArray_Descr:
        pass
    # Steals a reference to descr.
    object PyArray_NewFromDescr(PyTypeObject* subtype, PyObject* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, PyObject* obj)
    int PyArray_DescrConverter(object obj, PyObject** out) except 0
    object PyArray_Empty(int nd, cnp.npy_intp* dims, PyObject* descr, int fortran)
    int NPY_ARRAY_WRITEABLE
    int NPY_MAXDIMS

cdef extern from *:
    """
    #define WSMEM_MAX_BYTES (((Py_ssize_t)1) << 62)
    """
    Py_ssize_t WSMEM_MAX_BYTES

# ---------------------------------------------------------------- DLPack ABI
cdef extern from *:
    """
    typedef struct { uint32_t major; uint32_t minor; } wsmem_DLPackVersion;
    typedef struct { int32_t device_type; int32_t device_id; } wsmem_DLDevice;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } wsmem_DLDataType;
    typedef struct {
        void* data; wsmem_DLDevice device; int32_t ndim; wsmem_DLDataType dtype;
        int64_t* shape; int64_t* strides; uint64_t byte_offset;
    } wsmem_DLTensor;
    typedef struct wsmem_DLManagedTensor {
        wsmem_DLTensor dl_tensor; void* manager_ctx;
        void (*deleter)(struct wsmem_DLManagedTensor* self);
    } wsmem_DLManagedTensor;
    typedef struct wsmem_DLManagedTensorVersioned {
        wsmem_DLPackVersion version; void* manager_ctx;
        void (*deleter)(struct wsmem_DLManagedTensorVersioned* self);
        uint64_t flags; wsmem_DLTensor dl_tensor;
    } wsmem_DLManagedTensorVersioned;
    """
    ctypedef struct DLPackVersion "wsmem_DLPackVersion":
        uint32_t major
        uint32_t minor
    ctypedef struct DLDevice "wsmem_DLDevice":
        int32_t device_type
        int32_t device_id
    ctypedef struct DLDataType "wsmem_DLDataType":
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct DLTensor "wsmem_DLTensor":
        void* data
        DLDevice device
        int32_t ndim
        DLDataType dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset
    ctypedef struct DLManagedTensor "wsmem_DLManagedTensor":
        DLTensor dl_tensor
        void* manager_ctx
        void (*deleter)(DLManagedTensor*) noexcept
    ctypedef struct DLManagedTensorVersioned "wsmem_DLManagedTensorVersioned":
        DLPackVersion version
        void* manager_ctx
        void (*deleter)(DLManagedTensorVersioned*) noexcept
        uint64_t flags
        DLTensor dl_tensor

cdef enum:
    kDLCPU = 1
    kDLCUDA = 2
    kDLCUDAHost = 3
    kDLInt = 0
    kDLUInt = 1
    kDLFloat = 2
    kDLComplex = 5
    kDLBool = 6
    DLPACK_MAJOR = 1
    DLPACK_MINOR = 1
    DLPACK_FLAG_IS_COPIED = 2

# ---------------------------------------------------------------- helpers

cdef object _float_type = float
cdef object _last_dtype_key = None      # one-entry cache of the dtype conversion
cdef cnp.dtype _last_dtype = None
cdef dict _formats = {}                 # dtype -> buffer format bytes (kept alive here)
cdef char* _BYTE_FORMAT = b"B"


cdef cnp.dtype _as_dtype(object dtype):
    """np.dtype(dtype) through the C converter, with a one-entry cache."""
    global _last_dtype_key, _last_dtype
    cdef PyObject* raw = NULL
    cdef cnp.dtype d
    if dtype is _last_dtype_key and _last_dtype is not None:
        return _last_dtype
    if type(dtype) is cnp.dtype:
        d = <cnp.dtype>dtype
    else:
        if dtype is None:
            dtype = _float_type
        PyArray_DescrConverter(dtype, &raw)
        d = <cnp.dtype>raw
        Py_DECREF(d)
    if d.hasobject:
        raise TypeError(f"dtype {d} holds Python objects, which workspace memory cannot "
                        "own (a reset would leave dangling references); use a numeric, "
                        "bool, bytes or structured dtype without object fields")
    if d.itemsize == 0 and d.kind in "SUV":
        raise TypeError(f"dtype {d!r} has no size; give one, e.g. 'S8' or 'U16'")
    _last_dtype_key = dtype
    _last_dtype = d
    return d


cdef int _parse_shape(object shape, cnp.npy_intp* dims) except -1:
    """Fill dims from an int or a sequence of ints; return ndim."""
    try:
        return _parse_shape_into(shape, dims)
    except OverflowError:
        raise ValueError("Maximum allowed dimension exceeded (a shape entry does not fit "
                         "in a C ssize_t)") from None


cdef int _parse_shape_into(object shape, cnp.npy_intp* dims) except -1:
    cdef Py_ssize_t n, i, v
    if PyLong_Check(shape):
        v = PyLong_AsSsize_t(shape)
        if v < 0:
            raise ValueError("negative dimensions are not allowed")
        dims[0] = v
        return 1
    if not PyTuple_Check(shape):
        try:
            shape = (operator.index(shape),)
        except TypeError:
            try:
                shape = tuple(shape)
            except TypeError:
                raise TypeError(f"shape must be an int or a sequence of ints, got "
                                f"{type(shape).__name__}") from None
    n = PyTuple_GET_SIZE(shape)
    if n > NPY_MAXDIMS:
        raise ValueError(f"maximum supported dimension for an ndarray is currently "
                         f"{NPY_MAXDIMS}, found {n}")
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(shape, i)
        if PyLong_Check(item):
            v = PyLong_AsSsize_t(item)
        else:
            try:
                v = operator.index(item)
            except TypeError:
                raise TypeError(f"'{type(item).__name__}' object cannot be interpreted "
                                "as an integer (shape entries must be ints)") from None
        if v < 0:
            raise ValueError("negative dimensions are not allowed")
        dims[i] = v
    return <int>n


cdef Py_ssize_t _nbytes_of(int nd, cnp.npy_intp* dims, Py_ssize_t itemsize) except -1:
    cdef Py_ssize_t total = itemsize
    cdef int i
    cdef bint zero = False
    for i in range(nd):
        if dims[i] == 0:
            zero = True
        elif total > WSMEM_MAX_BYTES // dims[i]:
            if not zero:
                # keep scanning: any zero dimension makes the array empty
                for j in range(i, nd):
                    if dims[j] == 0:
                        return 0
                raise ValueError("array is too big; `arr.size * arr.dtype.itemsize` is "
                                 "larger than the maximum possible size.")
        else:
            total *= dims[i]
    return 0 if zero else total


cdef int _order_is_f(object order) except -1:
    if order is None or order == "C" or order == "c":
        return 0
    if order == "F" or order == "f":
        return 1
    raise ValueError(f"order={order!r} is not valid here; use 'C' or 'F'")


cdef inline void _fill_strides(int nd, cnp.npy_intp* dims, cnp.npy_intp* strides,
                               Py_ssize_t itemsize, bint fortran) noexcept:
    cdef Py_ssize_t s = itemsize
    cdef int i
    if fortran:
        for i in range(nd):
            strides[i] = s
            s *= dims[i] if dims[i] else 1
    else:
        for i in range(nd - 1, -1, -1):
            strides[i] = s
            s *= dims[i] if dims[i] else 1


cdef inline WsArray _blank(int nd):
    """A WsArray with room for nd dims (fields other than shape left empty)."""
    cdef WsArray a = WsArray.__new__(WsArray)
    if nd > 8:
        a._shape = <cnp.npy_intp*>PyMem_Malloc(2 * nd * sizeof(cnp.npy_intp))
        if a._shape == NULL:
            raise MemoryError()
    else:
        a._shape = a._small
    a._strides = a._shape + nd
    a._nd = nd
    return a


cdef WsArray _wrap_ndarray(cnp.ndarray arr, Arena ws, unsigned long long gen, Block* block,
                           bint keep=False):
    """A WsArray over an ndarray's memory: heap (ws None, arr kept as owner)
    or arena memory in (ws, gen, block); `keep` also holds arr (an ndarray
    NumPy allocated in the workspace: it owns, and pins, that memory)."""
    cdef int nd = cnp.PyArray_NDIM(arr)
    cdef WsArray a = _blank(nd)
    cdef int i
    for i in range(nd):
        a._shape[i] = cnp.PyArray_DIMS(arr)[i]
        a._strides[i] = cnp.PyArray_STRIDES(arr)[i]
    a._data = <char*>cnp.PyArray_DATA(arr)
    a._dtype = arr.dtype
    a._ws = ws
    a._gen = gen
    a._block = block
    a._base = arr if (ws is None or keep) else None
    return a


cdef tuple _dims_tuple(int nd, cnp.npy_intp* dims):
    return tuple([dims[i] for i in range(nd)])


cdef WsArray new_array(Arena arena, object shape, object dtype, object order, int init):
    cdef cnp.npy_intp dims[64]
    cdef int nd = _parse_shape(shape, dims)
    cdef cnp.dtype d = _as_dtype(dtype)
    cdef bint fortran = _order_is_f(order)
    cdef Py_ssize_t nbytes = _nbytes_of(nd, dims, d.itemsize)
    cdef Block* block = NULL
    cdef char* p
    cdef WsArray a
    cdef cnp.ndarray heap
    if arena is None or get_debug_mode() == DEBUG_BYPASS_EVERYTHING:
        if arena is not None and arena.location == LOC_DEVICE:
            # bypassed device workspace: heap memory of the same kind
            c = _gpu().cupy_module().empty(_dims_tuple(nd, dims), d, "F" if fortran else "C")
            if init == INIT_ZEROS:
                c.fill(0)
            return _wrap_cupy(c, None, 0, NULL, c, 0)
        Py_INCREF(d)    # PyArray_Empty steals it
        heap = PyArray_Empty(nd, dims, <PyObject*>d, fortran)
        if init == INIT_ZEROS and nbytes:
            with nogil:
                memset(cnp.PyArray_DATA(heap), 0, nbytes)
        return _wrap_ndarray(heap, None, 0, NULL)
    p = arena_alloc(arena, <size_t>nbytes, &block)
    a = _blank(nd)
    memcpy(a._shape, dims, nd * sizeof(cnp.npy_intp))
    _fill_strides(nd, dims, a._strides, d.itemsize, fortran)
    a._data = p
    a._block = block
    a._dtype = d
    a._ws = arena
    # Read after the allocation: in a circular workspace it may have wrapped
    # or grown the ring.
    if arena.reset == RESET_ENDOFBUFFER:
        a._gen = ring_gen(arena)
        a._off = <size_t>(p - block.region.ptr) if block != NULL else 0
    else:
        a._gen = arena.generation
    if arena.track:
        # Cython functions make no Python frames: the last entry is the caller's line.
        a._tb = traceback.extract_stack()
    if arena.gpu is not None:           # device or pinned pages (one test on the host path)
        if arena.location == LOC_DEVICE:
            a._dev = arena.device + 1
            a._dl = kDLCUDA
            if init == INIT_ZEROS and nbytes:
                _gpu().memset0(a)
            return a
        a._dl = kDLCUDAHost
    if init == INIT_ZEROS and nbytes:
        if nbytes > 65536:
            with nogil:
                memset(p, 0, nbytes)
        else:
            memset(p, 0, nbytes)
    return a


cdef Arena _target():
    """The arena creation functions allocate in: innermost active, or None (heap)."""
    return <Arena>current_arena()


# ---------------------------------------------------------------- pins as objects

@cython.final
@cython.freelist(64)
cdef class _ExportPin:
    """Base object of an exported ndarray/DLPack tensor: holds a pin on the
    array's bytes until it dies.  Also a 1-D byte buffer over them (used as
    the `data` of __array_interface__, so NumPy keeps it as the base)."""
    cdef Pin rec            # the pin, embedded (rec.block is NULL when inactive)
    cdef char* buf          # first element of the exported array
    cdef Py_ssize_t length  # bytes from buf to the end of the extent

    def __dealloc__(self):
        pin_fini(&self.rec)

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.buf
        view.obj = self
        view.len = self.length
        view.readonly = 0
        view.itemsize = 1
        view.format = _BYTE_FORMAT if flags & PyBUF_FORMAT else NULL
        view.ndim = 1
        view.shape = &self.length if flags & PyBUF_ND else NULL
        view.strides = &view.itemsize if flags & PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef inline void _extent(WsArray a, char** lo, char** hi) noexcept:
    cdef char* l = a._data
    cdef char* h = a._data + a._dtype.itemsize
    cdef int i
    cdef cnp.npy_intp span
    for i in range(a._nd):
        span = (a._shape[i] - 1) * a._strides[i]
        if span < 0:
            l += span
        else:
            h += span
    lo[0] = l
    hi[0] = h


cdef void wsarray_extent(WsArray a, char** lo, char** hi) noexcept:
    _extent(a, lo, hi)


cdef char* _pin_into(WsArray a, Pin* p, object owner) noexcept:
    """Pin a's bytes (its extent, line-rounded) into record p; returns the
    end of the extent.  Every export path pins through here.  `owner` is
    `a` for pins held by exports; a pin held by `a` itself names a's
    traceback instead (a pin owning its holder would never be released)."""
    cdef char* lo
    cdef char* hi
    _extent(a, &lo, &hi)
    pin_init(p, a._block, lo, hi, a._gen, <PyObject*>owner)
    ring_note_pin(a._ws, p)
    return hi


cdef Pin* _pin(WsArray a, object owner) except NULL:
    """A malloc'd pin on a's bytes (Py_buffer.internal, the CUDA interface's)."""
    cdef Pin* p = <Pin*>malloc(sizeof(Pin))
    if p == NULL:
        raise MemoryError("wsmem: out of memory for a pin record")
    _pin_into(a, p, owner)
    return p


# ---------------------------------------------------------------- WsArray

cdef object _stale_error(WsArray a):
    cdef Arena ws = a._ws
    what = f"WsArray{a.shape} {a._dtype} from workspace {ws.name!r}"
    advice = ("Keep arrays across cycles with .detach() (heap copy) or "
              ".leverage_to(outer_ws), or allocate them under wsmem.scope_out().")
    if ws.destroyed:
        msg = (f"{what} is a leaked workspace pointer: the workspace was destroyed. "
               f"{advice}")
    elif ws.reset == RESET_ENDOFBUFFER:
        msg = (f"{what} is an outdated workspace pointer: the circular workspace has "
               f"written over (or expired) its bytes. Use items of a circular workspace "
               f"before it comes around (for prefetch: within `buffer` items), or keep "
               f"them with .detach() / .leverage_to(ws).")
    elif ws.generation == a._gen:
        msg = (f"{what} is a leaked workspace pointer: it was allocated in generation "
               f"{a._gen}, and that cycle has closed (workspace generation "
               f"{ws.generation}, not open). {advice}")
    else:
        msg = (f"{what} is an outdated workspace pointer: it was allocated in generation "
               f"{a._gen}, but the workspace is now in generation {ws.generation}; its "
               f"memory may belong to another array. {advice}")
    return WorkspaceLeakError(msg)


cdef inline bint _is_ndarray(object x) noexcept:
    return cnp.PyArray_Check(x)


cdef object _unwrap(object x):
    """WsArray -> checked, pinned ndarray view; containers recursively."""
    if isinstance(x, WsArray):
        return (<WsArray>x)._view()
    if type(x) is tuple:
        return tuple([_unwrap(y) for y in <tuple>x])
    if type(x) is list:
        return [_unwrap(y) for y in <list>x]
    if type(x) is dict:
        return {k: _unwrap(v) for k, v in (<dict>x).items()}
    return x


cdef object _root_base(object r):
    """First base of ndarray `r` that is not a non-owning ndarray."""
    base = (<object>r).base
    while _is_ndarray(base) and not (<cnp.ndarray>base).flags.owndata:
        nxt = (<object>base).base
        if nxt is None:
            break
        base = nxt
    return base


cdef object _view_owner(cnp.ndarray r):
    """The WsArray whose pinned memory `r` views, or None."""
    base = _root_base(r)
    if type(base) is _ExportPin and (<_ExportPin>base).rec.block != NULL:
        return <object>(<_ExportPin>base).rec.owner
    if type(base) is WsArray:       # a view of a size-0 array (nothing to pin)
        return base
    return None


cdef object _adopt(object r):
    """Turn a NumPy result into wsmem's: views of arena memory become WsArray
    views (zero copy); fresh ndarrays are copied into the current workspace,
    or wrapped as heap arrays when none is active.  Containers recursively."""
    cdef WsArray src
    cdef WsArray out
    cdef Arena arena
    cdef unsigned long long gen = 0
    cdef Block* block = NULL
    if not _is_ndarray(r) and type(r).__name__ == "ndarray" and _gpu().is_cupy(r):
        return _adopt_cupy(r)
    if _is_ndarray(r):
        owner = _view_owner(<cnp.ndarray>r)
        if owner is not None:
            src = <WsArray>owner
            if src._ws is not None and arena_valid(src._ws, src._gen, src._off):
                out = _wrap_ndarray(<cnp.ndarray>r, src._ws, src._gen, src._block)
                out._off = src._off     # a view lives exactly as long as its allocation
                # A view shares its source's owner: when the source wraps an
                # ndarray NumPy allocated in the workspace, that ndarray must
                # outlive every view, or its bytes could be reused this cycle.
                out._base = src._base
                return out
        if (<cnp.ndarray>r).dtype.hasobject:
            return r
        ws_of = captured_in(r, &gen, &block)
        if ws_of is not None:
            # NumPy allocated it in a live (scoped) workspace (capture): zero copy.
            return _wrap_ndarray(<cnp.ndarray>r, <Arena>ws_of, gen, block, True)
        arena = _host_target()
        if arena is None or get_debug_mode() == DEBUG_BYPASS_EVERYTHING:
            return _wrap_ndarray(<cnp.ndarray>r, None, 0, NULL)
        out = new_array(arena, r.shape, r.dtype,
                        "F" if (r.flags.f_contiguous and not r.flags.c_contiguous) else "C",
                        INIT_NONE)
        np.copyto(out._view(), r, casting="no")
        return out
    if type(r) is tuple:
        return tuple([_adopt(y) for y in <tuple>r])
    if type(r) is list:
        return [_adopt(y) for y in <list>r]
    return r


cdef WsArray _wrap_cupy(object r, Arena ws, unsigned long long gen, Block* block,
                        object base, size_t off):
    """A device WsArray over cupy array r's memory."""
    cdef int nd = r.ndim
    cdef WsArray a = _blank(nd)
    cdef int i
    shape = r.shape
    strides = r.strides
    for i in range(nd):
        a._shape[i] = shape[i]
        a._strides[i] = strides[i]
    a._data = <char*><size_t>r.data.ptr
    a._dtype = np.dtype(r.dtype)
    a._ws = ws
    a._gen = gen
    a._block = block
    a._off = off
    a._base = base
    a._dev = r.data.device_id + 1
    a._dl = kDLCUDA
    return a


cdef object _adopt_cupy(object r):
    """wsmem's form of a CuPy result: a view of a device WsArray stays in its
    workspace and generation; an array CuPy allocated through a device
    workspace's allocator is wrapped (zero copy, r kept as the owner); any
    other is a heap device array."""
    cdef WsArray src
    cdef Arena arena
    cdef unsigned long long gen = 0
    cdef Block* block = NULL
    mem = r.data.mem
    owner = getattr(mem, "_owner", None)
    if type(owner) is _ExportPin and (<_ExportPin>owner).rec.block != NULL:
        src = <WsArray>(<object>(<_ExportPin>owner).rec.owner)
        if src._ws is not None and arena_valid(src._ws, src._gen, src._off):
            return _wrap_cupy(r, src._ws, src._gen, src._block, src._base, src._off)
    if type(owner) is WsArray:          # view of a size-0 array
        src = <WsArray>owner
        return _wrap_cupy(r, src._ws, src._gen, src._block, src._base, src._off)
    arena = <Arena>current_arena()
    if arena is not None and arena.location == LOC_DEVICE and \
            device_captured(arena, <size_t>r.data.ptr, &gen, &block):
        return _wrap_cupy(r, arena, gen, block, r, 0)
    return _wrap_cupy(r, None, 0, NULL, r, 0)


cdef object _from_result(WsArray self, object v, object r):
    """Result `r` of an operation on self's view `v`: same-memory views stay
    in self's workspace/generation; anything else goes through _adopt."""
    if _is_ndarray(r) and self._ws is None and r.base is not None and _root_base(r) is _root_base(v):
        return _wrap_ndarray(<cnp.ndarray>r, None, 0, NULL)
    return _adopt(r)


cdef object _guarded_call(object fn, tuple args, dict kwargs):
    """fn(*args, **kwargs) for a NumPy call that may allocate in a workspace.

    NumPy reports an allocation the capture handler refused (max_size,
    spill="fail") as its own MemoryError; raise the workspace's
    WorkspaceOverflowError (with stats), kept aside by the handler, instead.
    """
    take_error()
    try:
        return fn(*args, **kwargs)
    except MemoryError as exc:
        err = take_error()
        if err is not None and not isinstance(exc, type(err)):
            raise err from exc
        raise


cdef tuple _ufunc_dtypes_cache_key(tuple ins):
    return tuple([(<WsArray>x)._dtype if type(x) is WsArray else
                  (x.dtype if isinstance(x, (cnp.ndarray, np.generic)) else type(x))
                  for x in ins])


cdef dict _resolve_cache = {}


cdef object _broadcast(list shapes):
    """np.broadcast_shapes for a list of tuples (None if incompatible)."""
    cdef int nd = 0, i, k
    for s in shapes:
        if len(s) > nd:
            nd = len(s)
    out = [1] * nd
    for s in shapes:
        k = nd - len(s)
        for i in range(len(s)):
            d = s[i]
            if d != 1:
                if out[k + i] == 1:
                    out[k + i] = d
                elif out[k + i] != d:
                    return None
    return tuple(out)


cdef object _matmul_shape(tuple a, tuple b):
    if len(a) == 0 or len(b) == 0:
        return None
    if len(a) == 1 and len(b) == 1:
        return () if a[0] == b[0] else None
    if len(a) == 1:
        return b[:-2] + (b[-1],) if a[0] == b[-2] else None
    if len(b) == 1:
        return a[:-1] if a[-1] == b[0] else None
    if a[-1] != b[-2]:
        return None
    batch = _broadcast([a[:-2], b[:-2]])
    return None if batch is None else batch + (a[-2], b[-1])


cdef object _ufunc_call(object ufunc, tuple inputs, dict kwargs):
    """ufunc(*inputs) with outputs allocated in the current workspace up front
    (no heap temporary, no copy) when shapes and dtypes can be resolved."""
    cdef Arena arena = _host_target()
    if arena is None or kwargs or get_debug_mode() == DEBUG_BYPASS_EVERYTHING:
        return None
    for x in inputs:
        if type(x) is WsArray and (<WsArray>x)._dev:
            return None                 # CuPy runs it (see _ufunc_on_views)
        if not (type(x) is WsArray or _is_ndarray(x) or type(x) is float or type(x) is int
                or isinstance(x, (complex, np.generic))):
            return None
    key = (ufunc, _ufunc_dtypes_cache_key(inputs))
    dts = _resolve_cache.get(key)
    if dts is None:
        nin = ufunc.nin
        token = set_handler(None)   # one-time NumPy temporaries stay off the workspace
        try:
            dts = ufunc.resolve_dtypes(key[1] + (None,) * ufunc.nout)[nin:]
        except Exception:
            return None
        finally:
            restore_handler(token)
        if len(_resolve_cache) > 4096:
            _resolve_cache.clear()
        _resolve_cache[key] = dts
    shapes = [x.shape if (type(x) is WsArray or isinstance(x, (cnp.ndarray, np.generic)))
              else () for x in inputs]
    if ufunc.signature is None:
        shape = _broadcast(shapes)
    elif ufunc is np.matmul:
        shape = _matmul_shape(shapes[0], shapes[1])
    else:
        return None
    if shape is None:
        return None
    # Input views before the outputs are allocated.  Unpinned views suffice
    # where nothing can reuse an input's bytes during the call: NumPy reads
    # the inputs and writes the given outputs synchronously, and returns
    # `out`, never a view of an input.  In a circular workspace, though, the
    # outputs' allocation may wrap the ring over an input: pin inputs there
    # first, so that the ring goes around them (as leverage_to does).
    if arena.reset == RESET_ENDOFBUFFER:
        views = tuple([(<WsArray>x)._view() if type(x) is WsArray else x for x in inputs])
    else:
        views = tuple([_call_view(<WsArray>x) if type(x) is WsArray else x for x in inputs])
    outs = tuple([new_array(arena, shape, dt, "C", INIT_NONE) for dt in dts])
    _guarded_call(ufunc, views, {"out": tuple([_call_view(<WsArray>o) for o in outs])})
    return outs[0] if len(outs) == 1 else outs


cdef object _op(object ufunc, tuple inputs):
    """Operator fast path: straight to _ufunc_call, skipping NumPy's override
    dispatch; anything it declines goes through the ufunc (and __array_ufunc__)."""
    r = _ufunc_call(ufunc, inputs, None)
    return r if r is not None else ufunc(*inputs)


cdef object _ufunc_on_views(object ufunc, object method, tuple inputs, dict kwargs):
    """Any ufunc method: NumPy runs on checked views; results are adopted
    (or the given `out` returned, as NumPy does)."""
    out = kwargs.get("out")
    fn = getattr(ufunc, method)
    conv_in = tuple([_unwrap(x) for x in inputs])
    if out is None:
        return _adopt(_guarded_call(fn, conv_in, kwargs))
    kwargs["out"] = _unwrap(out if type(out) is tuple else (out,))
    _guarded_call(fn, conv_in, kwargs)
    if type(out) is tuple:
        return out[0] if len(out) == 1 else out
    return out


cdef inline void _copyto(WsArray dst, object dv, object sv) except *:
    if dst._dev or _gpu_mod is not None and _gpu_mod.is_cupy(sv):
        _gpu().copyto(dv, sv)
    else:
        np.copyto(dv, sv, casting="unsafe")


cdef WsArray _new_like_self(WsArray self, object shape, object dtype, object order):
    """A new array on self's side (host or device): in the current workspace
    when it holds that kind of memory, else on the heap."""
    cdef Arena a = <Arena>current_arena()
    if self._dev:
        if a is not None and a.location == LOC_DEVICE:
            return new_array(a, shape, dtype, order, INIT_NONE)
        c = _gpu().cupy_module().empty(shape, dtype, order)
        return _wrap_cupy(c, None, 0, NULL, c, 0)
    return new_array(_host_target(), shape, dtype, order, INIT_NONE)


cdef object _call_view(WsArray a):
    """Checked ndarray over a's memory for the duration of one NumPy call,
    without a pin (base: the WsArray).  Never hand it to user code."""
    a._check()
    Py_INCREF(a._dtype)
    arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, <PyObject*>a._dtype, a._nd,
                               a._shape, a._strides, a._data, NPY_ARRAY_WRITEABLE, NULL)
    cnp.set_array_base(<cnp.ndarray>arr, a)
    return arr


@cython.no_gc
@cython.freelist(64)
cdef class WsArray:
    """An array whose memory lives in a workspace (or on the heap).

    Made by the creation functions (:func:`wsmem.empty` and friends) and by
    operations on other WsArrays.  Reading or writing it after its cycle ends
    raises :class:`~wsmem.WorkspaceLeakError`; ``detach()`` and
    ``leverage_to()`` keep data across cycles.  NumPy functions and ufuncs
    accept it; ``np.asarray(a)`` is a zero-copy view that keeps a's bytes out
    of reuse for as long as it lives.

    Examples
    --------
    >>> import numpy as np, wsmem
    >>> ws = wsmem.Workspace("doc_wsarray")
    >>> with ws:
    ...     a = wsmem.ones((2, 3), dtype=np.float32)
    ...     b = (a * 2).sum()
    ...     kept = a.detach()
    >>> float(b), kept.is_valid, a.is_valid
    (12.0, True, False)
    >>> ws.destroy()
    """

    __array_priority__ = 100

    def __dealloc__(self):
        if self._shape != NULL and self._shape != self._small:
            PyMem_Free(self._shape)
        self._shape = NULL
        if self._xpin != NULL:
            pin_release(self._xpin)
            self._xpin = NULL

    # ------------------------------------------------------------ validity
    cdef int _check(self) except -1:
        if self._ws is not None and not arena_valid(self._ws, self._gen, self._off):
            raise _stale_error(self)
        return 0

    cdef Py_ssize_t _size(self) noexcept:
        cdef Py_ssize_t n = 1
        cdef int i
        for i in range(self._nd):
            n *= self._shape[i]
        return n

    cdef bint _c_contig(self) noexcept:
        cdef Py_ssize_t s = self._dtype.itemsize
        cdef int i
        for i in range(self._nd - 1, -1, -1):
            if self._shape[i] == 0:
                return True
            if self._shape[i] != 1:
                if self._strides[i] != s:
                    return False
                s *= self._shape[i]
        return True

    cdef bint _f_contig(self) noexcept:
        cdef Py_ssize_t s = self._dtype.itemsize
        cdef int i
        for i in range(self._nd):
            if self._shape[i] == 0:
                return True
            if self._shape[i] != 1:
                if self._strides[i] != s:
                    return False
                s *= self._shape[i]
        return True

    cdef object _pin_base(self):
        """Object that keeps the bytes valid for an export: a pin (arena
        memory), the owner ndarray (heap), or self (no bytes)."""
        cdef _ExportPin p
        if self._ws is None:
            return self._base
        if self._block == NULL or self._size() == 0:
            return self
        p = _ExportPin.__new__(_ExportPin)
        p.length = _pin_into(self, &p.rec, self) - self._data
        p.buf = self._data
        return p

    cdef object _view(self):
        """A checked ndarray (cupy.ndarray for device memory) over the same
        memory, pinned for its lifetime."""
        self._check()
        base = self._pin_base()
        if self._dev:
            return _gpu().cupy_view(self, base)
        Py_INCREF(self._dtype)    # stolen by PyArray_NewFromDescr
        arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, <PyObject*>self._dtype,
                                   self._nd, self._shape, self._strides, self._data,
                                   NPY_ARRAY_WRITEABLE, NULL)
        cnp.set_array_base(<cnp.ndarray>arr, base)
        return arr

    # ------------------------------------------------------------ attributes
    @property
    def shape(self):
        """Tuple of array dimensions."""
        return tuple([self._shape[i] for i in range(self._nd)])

    @property
    def strides(self):
        """Tuple of bytes to step in each dimension."""
        return tuple([self._strides[i] for i in range(self._nd)])

    @property
    def dtype(self):
        """Data type of the elements (a numpy.dtype)."""
        return self._dtype

    @property
    def ndim(self):
        """Number of dimensions."""
        return self._nd

    @property
    def size(self):
        """Number of elements."""
        return self._size()

    @property
    def itemsize(self):
        """Bytes per element."""
        return self._dtype.itemsize

    @property
    def nbytes(self):
        """Bytes of the elements (size * itemsize)."""
        return self._size() * self._dtype.itemsize

    @property
    def device(self):
        """'cpu' for host (and pinned) memory, 'cuda:N' for device memory."""
        return f"cuda:{self._dev - 1}" if self._dev else "cpu"

    @property
    def ptr(self):
        """Address of the first element (int)."""
        return <size_t>self._data

    @property
    def workspace(self):
        """The workspace that owns the memory, or None for heap memory."""
        return self._ws

    @property
    def generation(self):
        """The workspace generation the array was allocated in (None on the heap)."""
        return self._gen if self._ws is not None else None

    @property
    def is_attached(self):
        """True when the memory belongs to a workspace."""
        return self._ws is not None

    @property
    def is_valid(self):
        """True while the array may be used (always True on the heap)."""
        return self._ws is None or arena_valid(self._ws, self._gen, self._off)

    @property
    def traceback(self):
        """Where the array was allocated (a traceback.StackSummary) when tracking is on."""
        return self._tb

    @property
    def T(self):
        """Transposed view."""
        return self.transpose()

    @property
    def flags(self):
        """ndarray-style flags of the memory (checked access)."""
        return self._view().flags

    # ------------------------------------------------------------ conversion
    def numpy(self):
        """Zero-copy ndarray view; it keeps these bytes out of reuse while it lives.

        Returns
        -------
        numpy.ndarray
            Shares memory with this array.

        Raises
        ------
        WorkspaceLeakError
            If the array's cycle has ended.
        TypeError
            If the array lives in device memory (use :meth:`cupy`).
        """
        if self._dev:
            raise _device_error(self, "numpy()")
        return self._view()

    def cupy(self):
        """Zero-copy cupy.ndarray view of device memory; it keeps these bytes
        out of reuse while it lives.

        Returns
        -------
        cupy.ndarray
            Shares memory with this array (on ``self.device``).

        Raises
        ------
        WorkspaceLeakError
            If the array's cycle has ended.
        TypeError
            If the array lives in host memory (copy it with ``cupy.asarray(a)``).
        """
        if not self._dev:
            raise TypeError("cupy() gives a zero-copy view of device memory, and this "
                            "WsArray lives in host memory; copy it to the GPU with "
                            "cupy.asarray(a), or allocate it in a location='device' "
                            "workspace.")
        return self._view()

    @property
    def __cuda_array_interface__(self):
        """CUDA array interface v3 of device memory (with the workspace's stream).

        Reading it pins the array's bytes for the rest of the array's life:
        consumers (cupy.asarray, Numba, PyTorch) keep the array as the owner
        of their view, so its memory must outlive the cycle.
        """
        if not self._dev:
            raise AttributeError("__cuda_array_interface__: this WsArray lives in host "
                                 "memory (use __array_interface__ / the buffer protocol)")
        self._check()
        if self._xpin == NULL and self._ws is not None and self._block != NULL and \
                self._size() > 0:
            self._xpin = _pin(self, self._tb)
        return {
            "version": 3,
            "shape": self.shape,
            "typestr": self._dtype.str,
            "descr": self._dtype.descr,
            "strides": None if self._c_contig() else self.strides,
            "data": (<size_t>self._data, False),
            "stream": (_gpu().stream_for_export(self._ws) if self._ws is not None
                       else None),
        }

    def __array__(self, dtype=None, copy=None):
        if self._dev:
            raise _device_error(self, "conversion to a NumPy array")
        v = self._view()
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt != self._dtype:
                if copy is False:
                    raise ValueError(
                        f"Unable to avoid copy while creating an array as requested: "
                        f"{self._dtype} -> {dt} needs a cast (pass copy=None to allow it)")
                return v.astype(dt)
        if copy:
            return v.copy()
        return v

    @property
    def __array_interface__(self):
        if self._dev:
            raise AttributeError("__array_interface__: this WsArray lives in device "
                                 "memory (use __cuda_array_interface__)")
        self._check()
        c = self._c_contig()
        d = {
            "version": 3,
            "shape": self.shape,
            "typestr": self._dtype.str,
            "descr": self._dtype.descr,
            "strides": None if c else self.strides,
        }
        if self._ws is None or self._block == NULL or self._size() == 0:
            # Heap memory (the consumer keeps the provider, as with NumPy's own
            # arrays), or no bytes at all: nothing in a workspace to pin.
            d["data"] = (<size_t>self._data, False)
        else:
            # A buffer object (not a pointer tuple): NumPy keeps it as the new
            # array's base, so the pin lives exactly as long as the array.
            d["data"] = self._pin_base()
        return d

    def __getbuffer__(self, Py_buffer* view, int flags):
        if self._dev:
            raise BufferError(f"a WsArray on cuda:{self._dev - 1} has no host buffer; use "
                              f"a.cupy() or cupy.asnumpy(a.cupy())")
        self._check()
        c = self._c_contig()
        if (flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS and not c:
            raise BufferError("WsArray is not C-contiguous")
        if (flags & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS and not self._f_contig():
            raise BufferError("WsArray is not Fortran contiguous")
        if (flags & PyBUF_ANY_CONTIGUOUS) == PyBUF_ANY_CONTIGUOUS and not (c or self._f_contig()):
            raise BufferError("WsArray is not contiguous")
        if not (flags & PyBUF_STRIDES) and not c:
            raise BufferError("WsArray is not C-contiguous; request strides (PyBUF_STRIDES)")
        fmt = _formats.get(self._dtype)
        if fmt is None:
            fmt = memoryview(np.empty(0, dtype=self._dtype)).format.encode()
            _formats[self._dtype] = fmt
        view.internal = NULL
        if self._ws is not None and self._block != NULL and self._size() > 0:
            view.internal = <void*>_pin(self, self)
        view.buf = self._data
        view.obj = self
        view.len = self._size() * self._dtype.itemsize
        view.readonly = 0
        view.itemsize = self._dtype.itemsize
        view.format = <char*>(<bytes>fmt) if flags & PyBUF_FORMAT else NULL
        view.ndim = self._nd
        # npy_intp and Py_ssize_t are the same width on every platform NumPy supports.
        view.shape = <Py_ssize_t*>self._shape if flags & PyBUF_ND else NULL
        view.strides = <Py_ssize_t*>self._strides if flags & PyBUF_STRIDES else NULL
        view.suboffsets = NULL

    def __releasebuffer__(self, Py_buffer* view):
        if view.internal != NULL:
            pin_release(<Pin*>view.internal)
            view.internal = NULL

    def __dlpack_device__(self):
        """(kDLCPU, 0) on the host, (kDLCUDA, N) on device N, (kDLCUDAHost, 0) pinned."""
        if self._dev:
            return (kDLCUDA, self._dev - 1)
        return (self._dl if self._dl else kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export as a DLPack capsule (versioned when max_version >= (1, 0)).

        The capsule pins the bytes until the consumer calls its deleter.
        ``copy=True`` exports a heap copy; ``stream`` must be None on the CPU.
        """
        self._check()
        if self._dev:
            return self._dlpack_device(stream, max_version, dl_device, copy)
        if stream is not None:
            raise ValueError("stream must be None for a CPU array (DLPack: kDLCPU)")
        if dl_device is not None and tuple(dl_device) not in ((kDLCPU, 0), self.__dlpack_device__()):
            raise BufferError(f"cannot export a CPU WsArray to device {tuple(dl_device)}; "
                              "copy it with the consumer's library (e.g. cupy.asarray)")
        if copy:
            base = np.array(self._view(), copy=True)
            return _dlpack_capsule(base, <char*>cnp.PyArray_DATA(base), self._nd,
                                   self._shape, self._strides, self._dtype,
                                   max_version, True, kDLCPU, 0)
        return _dlpack_capsule(self._pin_base(), self._data, self._nd, self._shape,
                               self._strides, self._dtype, max_version, False,
                               self._dl if self._dl else kDLCPU, 0)

    cdef object _dlpack_device(self, stream, max_version, dl_device, copy):
        cdef int dev = self._dev - 1
        if dl_device is not None and tuple(dl_device) != (kDLCUDA, dev):
            raise BufferError(f"cannot export a WsArray on cuda:{dev} to device "
                              f"{tuple(dl_device)}; copy it with cupy.asnumpy or the "
                              f"consumer's library")
        if stream is not None and type(stream) is not int:
            raise TypeError(f"stream must be an int (a CUDA stream handle, 1 for the legacy "
                            f"default stream, -1 for no synchronization), got "
                            f"{type(stream).__name__}")
        if stream == 0:
            raise ValueError("stream=0 is ambiguous in DLPack for CUDA; pass 1 (legacy "
                             "default stream), 2 (per-thread default) or a stream handle")
        if copy:
            base = _gpu().heap_copy(self._view())
            cap = _dlpack_capsule(base, <char*><size_t>base.data.ptr, self._nd,
                                  self._shape, self._strides, self._dtype,
                                  max_version, True, kDLCUDA, dev)
        else:
            cap = _dlpack_capsule(self._pin_base(), self._data, self._nd, self._shape,
                                  self._strides, self._dtype, max_version, False, kDLCUDA, dev)
        # The consumer's stream waits for the work queued so far (the copy too).
        _gpu().wait_for_consumer(self._ws, stream)
        return cap

    # ------------------------------------------------------------ NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__" and not kwargs:
            r = _ufunc_call(ufunc, inputs, kwargs)
            if r is not None:
                return r
        return _ufunc_on_views(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _adopt(_guarded_call(func, _unwrap(args), _unwrap(kwargs)))

    # ------------------------------------------------------------ copies
    def detach(self):
        """Copy to heap memory that no workspace cycle invalidates.

        Returns
        -------
        WsArray
            A heap array (``workspace is None``) equal to this one.
        """
        if self._dev:
            c = _gpu().heap_copy(self._view())
            return _wrap_cupy(c, None, 0, NULL, c, 0)
        return _wrap_ndarray(heap_copy(self._view()), None, 0, NULL)

    def leverage_to(self, ws):
        """Copy into workspace `ws` (which must be open in this thread).

        Returns self when it already lives in `ws`'s current generation.
        """
        cdef Arena target
        cdef WsArray out
        self._check()
        if not isinstance(ws, Arena):
            raise TypeError(f"leverage_to() needs a Workspace, got {type(ws).__name__}")
        target = <Arena>ws
        target.check_owner()
        if target.destroyed:
            raise WorkspaceError(f"cannot leverage into workspace {target.name!r}: it was "
                                 "destroyed")
        if target.depth == 0:
            raise WorkspaceError(
                f"cannot leverage into workspace {target.name!r}: it is not open. Open it "
                f"(with ws: / ws.borrow()) around the call, or use detach().")
        if self._ws is target and self._gen == target.generation:
            return self
        src = self._view()      # pinned first: a ring target goes around it, not over it
        out = new_array(target, self.shape, self._dtype,
                        "F" if (self._f_contig() and not self._c_contig()) else "C", INIT_NONE)
        _copyto(out, out._view(), src)
        return out

    def copy(self, order="C"):
        """Copy into the current workspace (or the heap when none is active)."""
        cdef WsArray out
        v = self._view()
        if order in ("K", "A", "k", "a"):
            order = "F" if (self._f_contig() and not self._c_contig()) else "C"
        out = _new_like_self(self, self.shape, self._dtype, order)
        _copyto(out, out._view(), v)
        return out

    def astype(self, dtype, order="K", casting="unsafe", copy=True):
        """Cast to `dtype`, allocating in the current workspace."""
        cdef WsArray out
        v = self._view()
        dt = np.dtype(dtype)
        if not copy and dt == self._dtype:
            return self
        if order in ("K", "A", "k", "a"):
            order = "F" if (self._f_contig() and not self._c_contig()) else "C"
        if not np.can_cast(self._dtype, dt, casting=casting):
            raise TypeError(f"Cannot cast array data from {self._dtype!r} to {dt!r} "
                            f"according to the rule {casting!r}")
        out = _new_like_self(self, self.shape, dt, order)
        _copyto(out, out._view(), v)
        return out

    def fill(self, value):
        """Fill with a scalar value in place."""
        self._view().fill(value)

    def reshape(self, *shape, order="C"):
        """Reshape: a view when the layout allows, else a copy in the current workspace."""
        if len(shape) == 1:
            shape = shape[0]
        v = self._view()
        return _from_result(self, v, v.reshape(shape, order=order))

    def transpose(self, *axes):
        """Transposed view (axes reversed, or permuted as given)."""
        v = self._view()
        return _from_result(self, v, v.transpose(*axes))

    # ------------------------------------------------------------ indexing
    def __getitem__(self, key):
        v = self._view()
        return _from_result(self, v, v[_unwrap(key)])

    def __setitem__(self, key, value):
        self._view()[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        if self._nd == 0:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __iter__(self):
        if self._nd == 0:
            raise TypeError("iteration over a 0-d array")
        for i in range(self._shape[0]):
            yield self[i]

    def __getattr__(self, name):
        # ndarray methods and attributes not defined here (sum, mean, real, ...),
        # with results following the same rules as NumPy functions.  Dunder and
        # private names are not forwarded: protocols such as __array_struct__
        # must never bypass the pin.
        if name.startswith("_"):
            raise AttributeError(f"'WsArray' object has no attribute {name!r}")
        v = self._view()
        attr = getattr(v, name)
        if callable(attr):
            def method(*args, **kwargs):
                return _from_result(self, v, _guarded_call(attr, _unwrap(args),
                                                           _unwrap(kwargs)))
            method.__name__ = name
            method.__doc__ = attr.__doc__
            return method
        return _from_result(self, v, attr)

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(dir(np.ndarray)))

    # ------------------------------------------------------------ scalars, repr
    def __bool__(self):
        return bool(self._view())

    def __int__(self):
        return int(self._view())

    def __float__(self):
        return float(self._view())

    def __complex__(self):
        return complex(self._view())

    def __index__(self):
        return operator.index(self._view())

    def __repr__(self):
        if self._ws is None:
            where = "heap"
        else:
            where = f"workspace={self._ws.name!r}, generation={self._gen}"
        if not self.is_valid:
            return (f"<WsArray shape={self.shape} dtype={self._dtype} {where}: stale, "
                    f"its cycle has ended>")
        body = repr(self._view())
        if body.startswith("array("):
            body = "WsArray(" + body[6:-1]
        else:
            body = "WsArray(" + body
        return f"{body}, {where})"

    def __str__(self):
        if not self.is_valid:
            return repr(self)
        return str(self._view())

    def __reduce__(self):
        return (_from_pickle, (np.array(self._view(), copy=True),))

    __hash__ = None

    # ------------------------------------------------------------ operators
    def __add__(self, other): return _op(np.add, (self, other,))
    def __radd__(self, other): return _op(np.add, (other, self,))
    def __iadd__(self, other): return np.add(self, other, out=(self,))
    def __sub__(self, other): return _op(np.subtract, (self, other,))
    def __rsub__(self, other): return _op(np.subtract, (other, self,))
    def __isub__(self, other): return np.subtract(self, other, out=(self,))
    def __mul__(self, other): return _op(np.multiply, (self, other,))
    def __rmul__(self, other): return _op(np.multiply, (other, self,))
    def __imul__(self, other): return np.multiply(self, other, out=(self,))
    def __truediv__(self, other): return _op(np.true_divide, (self, other,))
    def __rtruediv__(self, other): return _op(np.true_divide, (other, self,))
    def __itruediv__(self, other): return np.true_divide(self, other, out=(self,))
    def __floordiv__(self, other): return _op(np.floor_divide, (self, other,))
    def __rfloordiv__(self, other): return _op(np.floor_divide, (other, self,))
    def __ifloordiv__(self, other): return np.floor_divide(self, other, out=(self,))
    def __mod__(self, other): return _op(np.remainder, (self, other,))
    def __rmod__(self, other): return _op(np.remainder, (other, self,))
    def __imod__(self, other): return np.remainder(self, other, out=(self,))
    def __pow__(self, other, mod=None): return _op(np.power, (self, other,))
    def __rpow__(self, other, mod=None): return _op(np.power, (other, self,))
    def __ipow__(self, other): return np.power(self, other, out=(self,))
    def __matmul__(self, other): return _op(np.matmul, (self, other,))
    def __rmatmul__(self, other): return _op(np.matmul, (other, self,))
    def __imatmul__(self, other): return np.matmul(self, other, out=(self,))
    def __and__(self, other): return _op(np.bitwise_and, (self, other,))
    def __rand__(self, other): return _op(np.bitwise_and, (other, self,))
    def __iand__(self, other): return np.bitwise_and(self, other, out=(self,))
    def __or__(self, other): return _op(np.bitwise_or, (self, other,))
    def __ror__(self, other): return _op(np.bitwise_or, (other, self,))
    def __ior__(self, other): return np.bitwise_or(self, other, out=(self,))
    def __xor__(self, other): return _op(np.bitwise_xor, (self, other,))
    def __rxor__(self, other): return _op(np.bitwise_xor, (other, self,))
    def __ixor__(self, other): return np.bitwise_xor(self, other, out=(self,))
    def __lshift__(self, other): return _op(np.left_shift, (self, other,))
    def __rlshift__(self, other): return _op(np.left_shift, (other, self,))
    def __rshift__(self, other): return _op(np.right_shift, (self, other,))
    def __rrshift__(self, other): return _op(np.right_shift, (other, self,))
    def __neg__(self): return _op(np.negative, (self,))
    def __pos__(self): return _op(np.positive, (self,))
    def __abs__(self): return _op(np.absolute, (self,))
    def __invert__(self): return _op(np.invert, (self,))
    def __eq__(self, other): return _op(np.equal, (self, other,))
    def __ne__(self, other): return _op(np.not_equal, (self, other,))
    def __lt__(self, other): return _op(np.less, (self, other,))
    def __le__(self, other): return _op(np.less_equal, (self, other,))
    def __gt__(self, other): return _op(np.greater, (self, other,))
    def __ge__(self, other): return _op(np.greater_equal, (self, other,))




cdef size_t _wsarray_off(PyObject* owner) noexcept:
    # Allocation offset of a pin's owner when it is a WsArray (see _arena).
    if type(<object>owner) is WsArray:
        return (<WsArray>owner)._off
    return <size_t>-1


set_owner_off_fn(_wsarray_off)


def _from_pickle(arr):
    return _wrap_ndarray(arr, None, 0, NULL)


# ---------------------------------------------------------------- DLPack export

cdef void _dl_deleter_versioned(DLManagedTensorVersioned* self) noexcept with gil:
    if self == NULL:
        return
    ctx = <PyObject*>self.manager_ctx
    self.manager_ctx = NULL
    if ctx != NULL:
        Py_DECREF(<object>ctx)
    free(self)


cdef void _dl_deleter(DLManagedTensor* self) noexcept with gil:
    if self == NULL:
        return
    ctx = <PyObject*>self.manager_ctx
    self.manager_ctx = NULL
    if ctx != NULL:
        Py_DECREF(<object>ctx)
    free(self)


cdef void _capsule_destructor_versioned(object capsule) noexcept:
    cdef DLManagedTensorVersioned* m
    if PyCapsule_IsValid(capsule, b"dltensor_versioned"):   # never consumed
        m = <DLManagedTensorVersioned*>PyCapsule_GetPointer(capsule, b"dltensor_versioned")
        if m != NULL and m.deleter != NULL:
            m.deleter(m)


cdef void _capsule_destructor(object capsule) noexcept:
    cdef DLManagedTensor* m
    if PyCapsule_IsValid(capsule, b"dltensor"):
        m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        if m != NULL and m.deleter != NULL:
            m.deleter(m)


cdef int _dl_dtype(cnp.dtype d, DLDataType* out) except -1:
    kind = d.kind
    if not d.isnative and d.itemsize > 1:
        raise BufferError(f"DLPack cannot carry non-native byte order ({d}); use "
                          "astype(dtype.newbyteorder('='))")
    if kind == "b":
        out.code = kDLBool
    elif kind == "i":
        out.code = kDLInt
    elif kind == "u":
        out.code = kDLUInt
    elif kind == "f" and d.itemsize in (2, 4, 8):
        out.code = kDLFloat
    elif kind == "c" and d.itemsize in (8, 16):
        out.code = kDLComplex
    else:
        raise BufferError(f"dtype {d} cannot be exported through DLPack; use the buffer "
                          "protocol (np.asarray) instead")
    out.bits = <uint8_t>(d.itemsize * 8)
    out.lanes = 1
    return 0


cdef object _dlpack_capsule(object keeper, char* data, int nd, cnp.npy_intp* shape,
                            cnp.npy_intp* strides, cnp.dtype d, object max_version,
                            bint copied, int dl_type, int dl_id):
    """Build a (versioned) DLPack capsule over data; `keeper` stays alive
    (holding the pin) until the consumer's deleter runs."""
    cdef DLTensor* t
    cdef DLManagedTensorVersioned* mv = NULL
    cdef DLManagedTensor* ml = NULL
    cdef int64_t* dims
    cdef int i
    cdef Py_ssize_t isz = d.itemsize
    cdef bint versioned = max_version is not None and tuple(max_version) >= (1, 0)
    cdef DLDataType dt
    _dl_dtype(d, &dt)
    for i in range(nd):
        if strides[i] % isz:
            raise BufferError("DLPack strides are in elements; this view's strides are "
                              "not multiples of the itemsize. Export a copy (copy=True).")
    if versioned:
        mv = <DLManagedTensorVersioned*>malloc(sizeof(DLManagedTensorVersioned)
                                                + 2 * nd * sizeof(int64_t))
        if mv == NULL:
            raise MemoryError()
        t = &mv.dl_tensor
        dims = <int64_t*>(<char*>mv + sizeof(DLManagedTensorVersioned))
    else:
        ml = <DLManagedTensor*>malloc(sizeof(DLManagedTensor) + 2 * nd * sizeof(int64_t))
        if ml == NULL:
            raise MemoryError()
        t = &ml.dl_tensor
        dims = <int64_t*>(<char*>ml + sizeof(DLManagedTensor))
    for i in range(nd):
        dims[i] = shape[i]
        dims[nd + i] = strides[i] // isz
    t.data = data
    t.device.device_type = dl_type
    t.device.device_id = dl_id
    t.ndim = nd
    t.dtype = dt
    t.shape = dims
    t.strides = dims + nd
    t.byte_offset = 0
    Py_INCREF(keeper)
    if versioned:
        mv.version.major = DLPACK_MAJOR
        mv.version.minor = DLPACK_MINOR
        mv.manager_ctx = <void*>keeper
        mv.deleter = _dl_deleter_versioned
        mv.flags = DLPACK_FLAG_IS_COPIED if copied else 0
        try:
            return PyCapsule_New(mv, b"dltensor_versioned",
                                 _capsule_destructor_versioned)
        except BaseException:
            _dl_deleter_versioned(mv)
            raise
    ml.manager_ctx = <void*>keeper
    ml.deleter = _dl_deleter
    try:
        return PyCapsule_New(ml, b"dltensor", _capsule_destructor)
    except BaseException:
        _dl_deleter(ml)
        raise


# ---------------------------------------------------------------- creation functions

def empty(shape, dtype=float, order="C"):
    """Uninitialised array in the current workspace (heap when none is active).

    Parameters
    ----------
    shape : int or tuple of ints
    dtype : data-type, default float
    order : {'C', 'F'}

    Examples
    --------
    >>> import wsmem
    >>> with wsmem.Workspace("doc_empty") as ws:
    ...     a = wsmem.empty((2, 3), dtype="float32")
    ...     a.shape, a.dtype, a.workspace is ws
    ((2, 3), dtype('float32'), True)
    """
    return new_array(_target(), shape, dtype, order, INIT_NONE)


def zeros(shape, dtype=float, order="C"):
    """Array of zeros in the current workspace (heap when none is active)."""
    return new_array(_target(), shape, dtype, order, INIT_ZEROS)


def ones(shape, dtype=float, order="C"):
    """Array of ones in the current workspace (heap when none is active)."""
    cdef WsArray a = new_array(_target(), shape, dtype, order, INIT_NONE)
    a._view().fill(1)
    return a


cdef object _scalar_dtype(object value):
    """dtype NumPy would infer for `value`, without allocating an array (under
    capture, np.asarray/np.result_type would put a 0-d temporary in the workspace)."""
    t = type(value)
    if t is float:
        return np.dtype(np.float64)
    if t is bool:
        return np.dtype(np.bool_)
    if t is int:
        return np.dtype(np.int64) if -(1 << 63) <= value < (1 << 63) else np.asarray(value).dtype
    if t is complex:
        return np.dtype(np.complex128)
    if isinstance(value, np.generic):
        return value.dtype
    return np.asarray(_unwrap(value)).dtype


cdef int _fill(WsArray a, object value) except -1:
    """Fill with a scalar (ndarray.fill packs it without allocating) or
    broadcast an array-like (np.copyto)."""
    if isinstance(value, (int, float, complex, bool, np.generic)):
        a._view().fill(value)
    else:
        np.copyto(a._view(), _unwrap(value), casting="unsafe")
    return 0


def full(shape, fill_value, dtype=None, order="C"):
    """Array filled with `fill_value` in the current workspace."""
    cdef WsArray a
    if dtype is None:
        dtype = _scalar_dtype(fill_value)
    a = new_array(_target(), shape, dtype, order, INIT_NONE)
    _fill(a, fill_value)
    return a


cdef tuple _like(prototype, dtype, order, shape):
    if isinstance(prototype, WsArray):
        p_shape = prototype.shape
        p_dtype = (<WsArray>prototype)._dtype
        f = (<WsArray>prototype)._f_contig() and not (<WsArray>prototype)._c_contig()
    else:
        arr = np.asarray(prototype)
        p_shape, p_dtype = arr.shape, arr.dtype
        f = arr.flags.f_contiguous and not arr.flags.c_contiguous
    if order in ("K", "A", "k", "a", None):
        order = "F" if f else "C"
    return (p_shape if shape is None else shape,
            p_dtype if dtype is None else dtype, order)


def empty_like(prototype, dtype=None, order="K", shape=None):
    """Uninitialised array shaped like `prototype`, in the current workspace."""
    s, d, o = _like(prototype, dtype, order, shape)
    return new_array(_target(), s, d, o, INIT_NONE)


def zeros_like(prototype, dtype=None, order="K", shape=None):
    """Zeros shaped like `prototype`, in the current workspace."""
    s, d, o = _like(prototype, dtype, order, shape)
    return new_array(_target(), s, d, o, INIT_ZEROS)


def ones_like(prototype, dtype=None, order="K", shape=None):
    """Ones shaped like `prototype`, in the current workspace."""
    s, d, o = _like(prototype, dtype, order, shape)
    cdef WsArray a = new_array(_target(), s, d, o, INIT_NONE)
    a._view().fill(1)
    return a


def full_like(prototype, fill_value, dtype=None, order="K", shape=None):
    """`fill_value` shaped like `prototype`, in the current workspace."""
    s, d, o = _like(prototype, dtype, order, shape)
    cdef WsArray a = new_array(_target(), s, d, o, INIT_NONE)
    _fill(a, fill_value)
    return a


cdef object _device_asarray(Arena arena, object a, object dtype, object order):
    """asarray() into a device workspace: CuPy converts (and allocates through
    the workspace when it captures); the result is the workspace's."""
    cdef WsArray out
    c = _gpu().cupy_module().asarray(a, dtype=dtype, order=order)
    r = _adopt_cupy(c)
    if (<WsArray>r)._ws is arena and (<WsArray>r)._gen == arena.generation:
        return r
    out = new_array(arena, c.shape, c.dtype,
                    "F" if (c.flags.f_contiguous and not c.flags.c_contiguous) else "C",
                    INIT_NONE)
    _copyto(out, out._view(), c)
    return out


def asarray(a, dtype=None, order=None):
    """`a` as a WsArray in the current workspace.

    A WsArray already in the current workspace's open cycle (with the asked
    dtype) is returned as is; anything else is copied in.  With no active
    workspace the result wraps NumPy's ``np.asarray(a)`` without a copy.
    """
    cdef Arena arena = _target()
    cdef WsArray out
    if isinstance(a, WsArray):
        src = <WsArray>a
        if ((dtype is None or np.dtype(dtype) == src._dtype) and src._ws is arena
                and src.is_valid and order in (None, "K", "A")
                and bool(src._dev) == (arena is not None and arena.location == LOC_DEVICE)):
            return a
        a = src._view()
    if arena is not None and arena.location == LOC_DEVICE:
        return _device_asarray(arena, a, dtype, order)
    if not _is_ndarray(a) and type(a).__name__ == "ndarray" and _gpu().is_cupy(a):
        a = a.get()                     # a CuPy array into host memory: a host copy
    arr = np.asarray(a, dtype=dtype, order=order)
    if arr.dtype.hasobject:
        _as_dtype(arr.dtype)    # raises the TypeError explaining why
    if arena is None or get_debug_mode() == DEBUG_BYPASS_EVERYTHING:
        return _wrap_ndarray(arr, None, 0, NULL)
    out = new_array(arena, arr.shape, arr.dtype,
                    "F" if (arr.flags.f_contiguous and not arr.flags.c_contiguous) else "C",
                    INIT_NONE)
    np.copyto(out._view(), arr, casting="no")
    return out
