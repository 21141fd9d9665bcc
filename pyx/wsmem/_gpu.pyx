# cython: boundscheck=False, wraparound=False
"""GPU layer: device and pinned pages, stream binding, and the CuPy side of
device WsArrays and of the CuPy drop-in.

Everything CUDA goes through CuPy's runtime bindings (``cupy.cuda.runtime``),
imported on first use, so ``import wsmem`` never needs CuPy.  Calls into CUDA
happen per block (learning, growth, spills) and per cycle (stream binding),
never per array: arrays are carved out of the blocks by the arena, and CuPy's
allocations reach the arena through C function pointers (wsmem._capture).
"""
cimport numpy as cnp
from libc.string cimport memset

from wsmem._pages cimport (PageRegion, pages_set_gpu, pages_map_host,
                           PAGES_DEVICE, PAGES_PINNED)
from wsmem._arena cimport Arena, LOC_DEVICE, LOC_PINNED
from wsmem._array cimport WsArray, wsarray_extent
from wsmem._capture cimport make_cupy_allocator, detach_cupy_allocator

import importlib
import sys

from wsmem._errors import WorkspaceError, WorkspaceOverflowError

cnp.import_array()

_cupy = None
# Tests without a GPU: device/pinned pages come from host memory and no CUDA
# call is made (the logic above CUDA can then run on any machine).
cdef bint _host_backing = False


def _set_host_backing_for_tests(flag):
    """Tests only: back device/pinned workspaces with host memory (no CUDA)."""
    global _host_backing
    _host_backing = bool(flag)


# What every frame of a device workspace calls, looked up once with CuPy
# (a module attribute chain per frame costs more than the call itself).
cdef object _get_tl_alloc = None    # cupy.cuda.memory._get_thread_local_allocator
cdef object _set_tl_alloc = None    # cupy.cuda.memory._set_thread_local_allocator
cdef object _stream_of = None       # cupy.cuda.get_current_stream
cdef bint _stream_by_id = False     # _stream_of takes a device id (CuPy >= 13)


def cupy_module():
    """CuPy, imported on first use (ImportError propagates)."""
    global _cupy, _get_tl_alloc, _set_tl_alloc, _stream_of, _stream_by_id
    if _cupy is None:
        import cupy
        mem = cupy.cuda.memory
        _get_tl_alloc = mem._get_thread_local_allocator
        _set_tl_alloc = mem._set_thread_local_allocator
        _stream_of = cupy.cuda.get_current_stream
        _stream_by_id = _takes_device_id(_stream_of)
        _cupy = cupy
    return _cupy


cdef bint _takes_device_id(f):
    """Whether CuPy's get_current_stream takes the device whose stream it
    returns (CuPy 13 on), so a frame need not make that device current."""
    if _host_backing:
        return False
    try:
        f(0)
    except Exception:       # TypeError: an older CuPy; else no CUDA device (no frames)
        return False
    return True


def unavailable(what, device=None, fallback="use location='host'"):
    """Why `what` (e.g. "location='device'") cannot have CUDA device `device`
    here (a sentence ending in `fallback`), or None when it can.

    CuPy is imported afresh (not the cached module), so a CuPy that cannot
    load is reported, not raised.
    """
    if _host_backing:
        return None
    try:
        cp = importlib.import_module("cupy")   # honours a None entry in sys.modules
    except Exception as exc:        # ImportError, or CuPy failing to load its CUDA libraries
        return (f"{what} needs CuPy and a CUDA device, and CuPy could not be imported "
                f"({type(exc).__name__}: {exc}). Install the gpu extra "
                f"(pip install 'wsmem[gpu]') on a machine with an NVIDIA GPU, or {fallback}.")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return (f"{what} needs a CUDA device, and CUDA reports none "
                f"({type(exc).__name__}: {exc}). Run on a machine with an NVIDIA GPU and "
                f"driver, or {fallback}.")
    if n == 0:
        return f"{what} needs a CUDA device, and this machine has none; {fallback}."
    if device is not None and device >= n:
        return (f"{what}: there is no CUDA device {device} ({n} visible). Use a device "
                f"id below {n}, or {fallback}.")
    return None


def current_device():
    """The current CUDA device id (0 under host backing)."""
    if _host_backing:
        return 0
    return cupy_module().cuda.runtime.getDevice()


# ---------------------------------------------------------------- page source

cdef int _map(PageRegion* out, size_t size, int kind, int device, object arena) except -1:
    cdef int err
    if _host_backing:
        with nogil:
            err = pages_map_host(out, size, 4096)
        if err:
            raise WorkspaceOverflowError(
                f"workspace {arena.name!r}: the system refused {size} bytes", None)
        out.device = device
        return 0
    cp = cupy_module()
    rt = cp.cuda.runtime
    try:
        with cp.cuda.Device(device):
            if kind == PAGES_DEVICE:
                ptr = rt.malloc(size)
            else:
                ptr = rt.hostAlloc(size, rt.hostAllocPortable)
    except rt.CUDARuntimeError as exc:
        what = "device memory (cudaMalloc)" if kind == PAGES_DEVICE else \
            "pinned host memory (cudaHostAlloc)"
        raise WorkspaceOverflowError(
            f"workspace {arena.name!r}: CUDA refused {size} bytes of {what} on device "
            f"{device} ({exc}). Free GPU memory (e.g. cupy.get_default_memory_pool()."
            f"free_all_blocks()), lower max_size/initial_size, or use a smaller batch.",
            arena._stats_or_none()) from exc
    out.ptr = <char*><size_t>ptr
    out.map_base = <void*><size_t>ptr
    out.size = size
    out.map_size = size
    out.kind = PAGES_DEVICE if kind == PAGES_DEVICE else PAGES_PINNED
    out.device = device
    return 0


cdef void _release(PageRegion* r) noexcept nogil:
    with gil:
        _release_gil(<size_t>r.map_base, r.kind, r.device)


cdef void _release_gil(size_t ptr, int kind, int device) noexcept:
    try:
        if _cupy is None or sys.is_finalizing():
            return              # the driver reclaims everything at process exit
        rt = _cupy.cuda.runtime
        with _cupy.cuda.Device(device):
            if kind == PAGES_DEVICE:
                rt.free(ptr)
            else:
                rt.freeHost(ptr)
    except BaseException:
        pass


pages_set_gpu(_map, _release)


def heap_malloc(size_t size, int device):
    """Device memory outside any workspace (the CuPy allocator's fallback)."""
    cdef PageRegion r
    if _host_backing:
        if pages_map_host(&r, size, 4096):
            raise MemoryError(f"cannot allocate {size} bytes")
        return <size_t>r.ptr
    cp = cupy_module()
    with cp.cuda.Device(device):
        return cp.cuda.runtime.malloc(size)


def heap_free(size_t ptr, int device):
    """Free what heap_malloc returned."""
    if _host_backing:
        return          # host-backing tests: leaked on purpose (tiny, test only)
    cp = cupy_module()
    with cp.cuda.Device(device):
        cp.cuda.runtime.free(ptr)


# ---------------------------------------------------------------- per workspace

cdef class DeviceState:
    """GPU state of a device or pinned workspace."""
    cdef public int device
    cdef public bint is_device          # device memory (else pinned host memory)
    cdef public object stream           # cupy Stream the open (or last) cycle is bound to
    cdef public size_t stream_ptr
    cdef public object allocator        # cupy CFunctionAllocator (device + capture)
    cdef public object malloc           # its bound malloc (what CuPy's allocator slot holds)
    cdef public object alloc_owner      # its C side (wsmem._capture)

    def detach(self):
        if self.alloc_owner is not None:
            detach_cupy_allocator(self.alloc_owner)
        if self.malloc is not None:
            _replaced.pop(self.malloc, None)


def setup(Arena ws, bint capture):
    """Make the DeviceState of a device/pinned workspace (called before its
    first block is mapped)."""
    st = DeviceState()
    st.device = ws.device
    st.is_device = ws.location == LOC_DEVICE
    st.stream = None
    st.stream_ptr = 0
    if st.is_device and capture:
        st.alloc_owner = make_cupy_allocator(ws)
        try:
            cp = cupy_module()
        except ImportError:
            if not _host_backing:
                raise
        else:
            param, mfn, ffn = st.alloc_owner.addresses
            st.allocator = cp.cuda.memory.CFunctionAllocator(param, mfn, ffn, st.alloc_owner)
            st.malloc = st.allocator.malloc
    ws.gpu = st
    return st


def begin_cycle(Arena ws):
    """Bind the cycle to the current stream.  Memory reused from the last
    cycle was last used on that cycle's stream: a different stream first
    waits for everything queued there so far."""
    cdef DeviceState st = ws.gpu
    if _host_backing:
        return
    cp = cupy_module()
    if _stream_by_id:
        # The workspace's device's current stream, whatever device is current:
        # no device switch (two runtime calls) unless the stream changed.
        s = _stream_of(st.device)
    else:
        with cp.cuda.Device(st.device):
            s = _stream_of()
    ptr = s.ptr
    if st.stream is not None and ptr != st.stream_ptr:
        with cp.cuda.Device(st.device):     # events live on the stream's device
            ev = cp.cuda.Event(disable_timing=True)
            ev.record(st.stream)
            s.wait_event(ev)
    st.stream = s
    st.stream_ptr = ptr


def stream_for_export(Arena ws):
    """The stream of ws's open/last cycle as the CUDA array interface wants it
    (1 for the legacy default stream), or None."""
    cdef DeviceState st = ws.gpu
    if st is None or st.stream is None:
        return None
    return st.stream_ptr if st.stream_ptr != 0 else 1


def wait_for_consumer(Arena ws, consumer):
    """DLPack: make the consumer's stream (an int, as the protocol passes it)
    wait for the work queued on ws's stream."""
    cdef DeviceState st = ws.gpu if ws is not None else None
    if _host_backing or consumer == -1:
        return
    if consumer is None:
        consumer = 1                    # DLPack: None means the legacy default stream
    cp = cupy_module()
    with cp.cuda.Device(st.device if st is not None else current_device()):
        # What the export depends on: the workspace's cycle stream, and the
        # current stream (a copy made for copy=True was queued there).
        producers = [cp.cuda.get_current_stream()]
        if st is not None and st.stream is not None and st.stream.ptr != producers[0].ptr:
            producers.append(st.stream)
        for p in producers:
            mine = p.ptr if p.ptr != 0 else 1
            if consumer == mine:
                continue
            ev = cp.cuda.Event(disable_timing=True)
            ev.record(p)
            # 1 and 2 are CUDA's legacy and per-thread default stream handles.
            cp.cuda.runtime.streamWaitEvent(consumer, ev.ptr)


_NO_CHANGE = object()
# wsmem allocator (bound malloc) -> the thread-local allocator it replaced.
_replaced = {}


cdef object _user_allocator(object alloc):
    """The thread-local allocator in force before wsmem's (None: CuPy's global one)."""
    while alloc is not None and alloc in _replaced:
        alloc = _replaced[alloc]
    return alloc


def push_allocator(Arena ws):
    """Make ws's CuPy allocator current in this thread; returns the token for
    pop_allocator.  Frames without one (scope_out, host workspaces) restore
    the allocator the user had before any wsmem device workspace."""
    if _cupy is None:
        return _NO_CHANGE
    prev = _get_tl_alloc()
    alloc = None
    if ws is not None and ws.gpu is not None:
        alloc = (<DeviceState>ws.gpu).malloc
    if alloc is None:
        alloc = _user_allocator(prev)
    elif alloc is not prev:
        _replaced[alloc] = prev
    if alloc is prev:
        return _NO_CHANGE
    _set_tl_alloc(alloc)
    return prev


def pop_allocator(token):
    if token is _NO_CHANGE or _cupy is None:
        return
    _set_tl_alloc(token)


# ---------------------------------------------------------------- device arrays

def extent(WsArray a):
    """(lo, hi) addresses of a's bytes."""
    cdef char* lo
    cdef char* hi
    wsarray_extent(a, &lo, &hi)
    return <size_t>lo, <size_t>hi


def cupy_view(WsArray a, owner):
    """A cupy.ndarray over a's device memory; `owner` (a pin) lives as long as it."""
    cp = cupy_module()
    lo, hi = extent(a)
    mem = cp.cuda.UnownedMemory(lo, hi - lo, owner, device_id=a._dev - 1)
    mp = cp.cuda.MemoryPointer(mem, <size_t>a._data - lo)
    return cp.ndarray(a.shape, a._dtype, mp, a.strides)


def memset0(WsArray a):
    """Zero a new device array, in order on its workspace's stream."""
    cdef size_t n = a._size() * a._dtype.itemsize
    if _host_backing:
        memset(a._data, 0, n)
        return
    cp = cupy_module()
    with cp.cuda.Device(a._dev - 1):
        cp.cuda.runtime.memsetAsync(<size_t>a._data, 0, n, cp.cuda.get_current_stream().ptr)


def is_cupy(x):
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def copyto(dst, src):
    """np.copyto for any mix of ndarray / cupy.ndarray views (same shape)."""
    cp = _cupy
    if cp is not None and isinstance(dst, cp.ndarray):
        if not isinstance(src, cp.ndarray):
            src = cp.asarray(src)
        cp.copyto(dst, src, casting="unsafe")
    elif cp is not None and isinstance(src, cp.ndarray):
        import numpy as np
        np.copyto(dst, src.get(), casting="unsafe")
    else:
        import numpy as np
        np.copyto(dst, src, casting="unsafe")


def heap_copy(view):
    """A copy of cupy array `view` that no workspace owns (CuPy's default allocator)."""
    cp = cupy_module()
    mem = cp.cuda.memory
    prev = mem._get_thread_local_allocator()
    mem._set_thread_local_allocator(_user_allocator(prev))
    try:
        return view.copy()
    finally:
        mem._set_thread_local_allocator(prev)


def state(Arena ws):
    """The DeviceState of a device/pinned workspace (None for host ones)."""
    return ws.gpu


def _stream_by_id_for_tests():
    """Whether frames read the workspace device's stream by device id."""
    return _stream_by_id
