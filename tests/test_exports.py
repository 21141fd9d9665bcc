"""Every export path of WsArray: zero copy, every dtype/layout, lifetime (pins),
and stale arrays refused on every path."""
import ctypes
import gc
import pickle

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceLeakError

byte_bounds = np.lib.array_utils.byte_bounds


# ---------------------------------------------------------------- helpers

class _IfaceOnly:
    """An object exposing only __array_interface__ (as many consumers do)."""

    def __init__(self, iface):
        self.__array_interface__ = iface


class _DLWrap:
    """Hands a ready-made capsule to np.from_dlpack."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def via_asarray(a):
    return np.asarray(a)


def via_memoryview(a):
    return np.asarray(memoryview(a))


def via_array_copy_false(a):
    return np.array(a, copy=False)


def via_array_interface(a):
    return np.asarray(_IfaceOnly(a.__array_interface__))


def via_numpy(a):
    return a.numpy()


def via_dunder_array(a):
    return a.__array__()


def via_from_dlpack(a):
    return np.from_dlpack(a)


def via_dlpack_versioned(a):
    return np.from_dlpack(_DLWrap(a.__dlpack__(max_version=(1, 0))))


def via_dlpack_legacy(a):
    return np.from_dlpack(_DLWrap(a.__dlpack__()))


EXPORTERS = [via_asarray, via_memoryview, via_array_copy_false, via_array_interface,
             via_numpy, via_dunder_array, via_from_dlpack, via_dlpack_versioned,
             via_dlpack_legacy]
DLPACK_EXPORTERS = {via_from_dlpack, via_dlpack_versioned, via_dlpack_legacy}
NON_DLPACK_EXPORTERS = [e for e in EXPORTERS if e not in DLPACK_EXPORTERS]

STRUCT = np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "S3")])
STRUCT_ALIGNED = np.dtype([("a", "<i2"), ("b", "<f8")], align=True)
NON_NATIVE = [np.dtype(">i4"), np.dtype(">f8"), np.dtype(">c16"), np.dtype(">u2")]
if np.little_endian is False:  # pragma: no cover - big-endian hosts
    NON_NATIVE = [d.newbyteorder("<") for d in NON_NATIVE]

DLPACK_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                 np.uint32, np.uint64, np.float16, np.float32, np.float64,
                 np.complex64, np.complex128]
OTHER_DTYPES = [np.longdouble, np.clongdouble, "S8", "U4", STRUCT, STRUCT_ALIGNED,
                *NON_NATIVE]
ALL_DTYPES = DLPACK_DTYPES + OTHER_DTYPES


def _id(x):
    return getattr(x, "__name__", None) or str(np.dtype(x))


def fill_pattern(a, seed=0):
    """Write distinct bytes into a (contiguous) WsArray; return the bytes."""
    n = a.nbytes
    pat = ((np.arange(n, dtype=np.int64) * 7 + 13 + seed) % 251).astype(np.uint8)
    v = np.asarray(a)
    if n:
        v.reshape(-1).view(np.uint8)[:] = pat
    del v
    return pat.tobytes()


def raw_bytes(x):
    """Bytes of an ndarray/memoryview's elements in logical (C) order."""
    return np.ascontiguousarray(np.asarray(x)).tobytes()


@pytest.fixture
def make_ws(workspace_factory):
    return workspace_factory("exp")


def _dl_pointer(capsule, name):
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, name)


def _capsule_name(capsule):
    get = ctypes.pythonapi.PyCapsule_GetName
    get.restype = ctypes.c_char_p
    get.argtypes = [ctypes.py_object]
    return get(capsule)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedVersioned(ctypes.Structure):
    _fields_ = [("version", _DLVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64),
                ("dl_tensor", _DLTensor)]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


def _read_capsule(capsule):
    name = _capsule_name(capsule)
    ptr = _dl_pointer(capsule, name)
    if name == b"dltensor_versioned":
        m = _DLManagedVersioned.from_address(ptr)
        return name, m, m.dl_tensor
    m = _DLManaged.from_address(ptr)
    return name, m, m.dl_tensor


# ---------------------------------------------------------------- zero copy

@pytest.mark.parametrize("export", EXPORTERS)
def test_zero_copy_every_path(ws, export):
    with ws:
        a = wsmem.empty((5, 7), dtype=np.float64)
        a.fill(2.5)
        e = export(a)
        assert isinstance(e, np.ndarray)
        assert e.ctypes.data == a.ptr
        assert e.shape == a.shape and e.strides == a.strides and e.dtype == a.dtype
        if export is via_dlpack_legacy:
            # NumPy marks arrays from legacy (unversioned) capsules read-only.
            assert not e.flags.writeable
        else:
            e[1, 2] = -1.0          # writes through to a
            assert float(a[1, 2]) == -1.0
        a[0, 0] = 42.0          # and back
        assert e[0, 0] == 42.0
        assert np.shares_memory(e, np.asarray(a))
        del e


def test_memoryview_attributes(ws):
    with ws:
        a = wsmem.zeros((3, 4), dtype=np.int32)
        m = memoryview(a)
        assert m.obj is a
        assert m.shape == (3, 4) and m.strides == (16, 4)
        assert m.format == "i" and m.itemsize == 4 and not m.readonly
        assert m.c_contiguous
        assert m.nbytes == 48
        m[1, 2] = 7
        assert int(a[1, 2]) == 7
        assert np.asarray(m).ctypes.data == a.ptr
        m.release()


def test_memoryview_contiguity_requests(ws):
    with ws:
        a = wsmem.zeros((4, 6), dtype=np.int16)
        v = a[:, ::2]
        m = memoryview(v)     # strided request: works
        assert m.strides == (12, 4)
        assert np.asarray(m).ctypes.data == v.ptr
        m.release()
        with pytest.raises(BufferError, match="contiguous"):
            np.frombuffer(v, dtype=np.int16)     # asks for a contiguous buffer
        assert bytes(v) == bytes(12 * 2)         # a copying consumer handles strides
        # A failed request must not leave a pin behind.
    gc.collect()
    assert ws.stats().pinned_bytes == 0


def test_array_interface_dict(ws):
    with ws:
        a = wsmem.empty((3, 4), dtype="<f4")
        d = a.__array_interface__
        assert d["version"] == 3
        assert d["shape"] == (3, 4)
        assert d["typestr"] == "<f4"
        assert d["strides"] is None  # C-contiguous
        t = a.T
        dt = t.__array_interface__
        assert dt["strides"] == (4, 16)
        x = np.asarray(_IfaceOnly(dt))
        assert x.ctypes.data == t.ptr and x.strides == (4, 16)
        del d, dt, x


@pytest.mark.parametrize("order", ["C", "F"])
def test_array_interface_of_empty_arrays(ws, order):
    # Found by the long fuzz run: a zero-size F-order workspace array gave
    # itself as `data`, and NumPy's plain-buffer request on a non-C layout
    # raised BufferError.  No bytes, nothing to pin: a pointer tuple.
    with ws:
        a = wsmem.empty((2, 0, 3), dtype=bool, order=order)
        x = np.asarray(_IfaceOnly(a.__array_interface__))
        assert x.shape == (2, 0, 3) and x.dtype == bool
        del x


def test_array_interface_heap(ws):
    a = wsmem.ones(4)                  # no workspace open: heap
    d = a.__array_interface__
    x = np.asarray(_IfaceOnly(d))
    assert x.ctypes.data == a.ptr
    assert a.workspace is None


def test_numpy_method_is_view(ws):
    with ws:
        a = wsmem.ones((2, 3), dtype=np.int64)
        n = a.numpy()
        assert type(n) is np.ndarray
        assert n.ctypes.data == a.ptr
        n[...] = 9
        assert int(a.sum()) == 54


# ---------------------------------------------------------------- __array__ copy semantics

def test_dunder_array_copy_semantics(ws):
    with ws:
        a = wsmem.full((4,), 3.0, dtype=np.float64)
        v = a.__array__()
        assert v.ctypes.data == a.ptr
        v2 = a.__array__(copy=None)
        assert v2.ctypes.data == a.ptr
        v3 = a.__array__(dtype=np.float64, copy=False)
        assert v3.ctypes.data == a.ptr
        c = a.__array__(copy=True)
        assert c.ctypes.data != a.ptr and not np.shares_memory(c, v)
        np.testing.assert_array_equal(c, [3.0] * 4)
        c[0] = 0
        assert float(a[0]) == 3.0
        cast = a.__array__(dtype=np.float32)
        assert cast.dtype == np.float32 and not np.shares_memory(cast, v)
        np.testing.assert_array_equal(cast, np.full(4, 3.0, np.float32))
        cast_copy = a.__array__(dtype=np.int32, copy=True)
        assert cast_copy.dtype == np.int32
        with pytest.raises(ValueError, match="copy"):
            a.__array__(dtype=np.float32, copy=False)
        del v, v2, v3, c, cast, cast_copy


def test_numpy_copy_keyword(ws):
    with ws:
        a = wsmem.full((3, 2), 1.5)
        same = np.asarray(a, dtype=np.float64)
        assert same.ctypes.data == a.ptr
        nocopy = np.array(a, copy=False)
        assert nocopy.ctypes.data == a.ptr
        copied = np.array(a)
        assert not np.shares_memory(copied, nocopy)
        copied2 = np.array(a, copy=True)
        assert not np.shares_memory(copied2, nocopy)
        with pytest.raises(ValueError):
            np.array(a, dtype=np.float32, copy=False)
        cast = np.asarray(a, dtype=np.float32)
        assert cast.dtype == np.float32 and not np.shares_memory(cast, nocopy)
        del same, nocopy, copied, copied2, cast


# ---------------------------------------------------------------- DLPack

def test_dlpack_device(ws):
    with ws:
        a = wsmem.empty(3)
        assert a.__dlpack_device__() == (1, 0)
    h = wsmem.empty(3)
    assert h.__dlpack_device__() == (1, 0)


@pytest.mark.parametrize("versioned", [True, False])
def test_dlpack_capsule_contents(ws, versioned):
    with ws:
        a = wsmem.empty((6, 5), dtype=np.int32)
        v = a[1::2, ::-2]
        cap = v.__dlpack__(max_version=(1, 0)) if versioned else v.__dlpack__()
        name, m, t = _read_capsule(cap)
        assert name == (b"dltensor_versioned" if versioned else b"dltensor")
        if versioned:
            assert m.version.major == 1
            assert m.flags & 2 == 0          # not a copy
            assert m.flags & 1 == 0          # writable
        assert (t.data + t.byte_offset) == v.ptr
        assert (t.device.device_type, t.device.device_id) == (1, 0)
        assert t.ndim == 2
        assert [t.shape[i] for i in range(2)] == [3, 3]
        assert [t.strides[i] for i in range(2)] == [2 * 5, -2]   # in elements
        assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (0, 32, 1)
        out = np.from_dlpack(_DLWrap(cap))
        assert out.ctypes.data == v.ptr and out.strides == v.strides
        del cap, m, t, out


def test_dlpack_capsule_names_and_max_version(ws):
    with ws:
        a = wsmem.zeros(4)
        assert _capsule_name(a.__dlpack__()) == b"dltensor"
        assert _capsule_name(a.__dlpack__(max_version=None)) == b"dltensor"
        assert _capsule_name(a.__dlpack__(max_version=(1, 0))) == b"dltensor_versioned"
        assert _capsule_name(a.__dlpack__(max_version=(1, 5))) == b"dltensor_versioned"
        assert _capsule_name(a.__dlpack__(max_version=(0, 8))) == b"dltensor"


def test_dlpack_unconsumed_capsule_pins_and_releases(ws):
    with ws:
        a = wsmem.empty(100)
        cap = a.__dlpack__(max_version=(1, 0))
        legacy = a.__dlpack__()
    gc.collect()
    assert ws.stats().pinned_bytes > 0
    del cap
    gc.collect()
    assert ws.stats().pinned_bytes > 0
    del legacy
    gc.collect()
    assert ws.stats().pinned_bytes == 0


def test_dlpack_copy_true(ws):
    with ws:
        a = wsmem.full((3, 3), 7, dtype=np.int16)
        out = np.from_dlpack(a, copy=True)
        view = np.asarray(a)
        assert not np.shares_memory(out, view)
        np.testing.assert_array_equal(out, view)
        cap = a.__dlpack__(max_version=(1, 0), copy=True)
        name, m, t = _read_capsule(cap)
        assert m.flags & 2 == 2               # DLPACK_FLAG_BITMASK_IS_COPIED
        assert t.data != a.ptr
        del m, t, cap
        out2 = np.from_dlpack(a, copy=False)
        assert out2.ctypes.data == a.ptr
        del out, out2, view


def test_dlpack_copy_true_does_not_pin_the_source(make_ws):
    ws = make_ws(capture=False)          # the copy itself comes from the heap
    with ws:
        a = wsmem.full(64, 1.0)
        out = np.from_dlpack(a, copy=True)
        assert not np.shares_memory(out, np.asarray(a))
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    np.testing.assert_array_equal(out, np.ones(64))


def test_dlpack_copy_true_survives_cycles(ws):
    with ws:
        a = wsmem.full(64, 1.0)
        out = np.from_dlpack(a, copy=True)
    for _ in range(3):
        with ws:
            wsmem.full(64, -5.0)
            wsmem.full(640, -5.0)
    np.testing.assert_array_equal(out, np.ones(64))
    del out
    gc.collect()
    assert ws.stats().pinned_bytes == 0


@pytest.mark.parametrize("stream", [0, 1, -1])
def test_dlpack_stream_not_none_raises(ws, stream):
    with ws:
        a = wsmem.empty(3)
        with pytest.raises(ValueError, match="stream"):
            a.__dlpack__(stream=stream)
        with pytest.raises(ValueError, match="stream"):
            a.__dlpack__(stream=stream, max_version=(1, 0))
    gc.collect()
    assert ws.stats().pinned_bytes == 0


def test_dlpack_dl_device(ws):
    with ws:
        a = wsmem.ones(3)
        cap = a.__dlpack__(max_version=(1, 0), dl_device=(1, 0))
        assert _read_capsule(cap)[2].data == a.ptr
        with pytest.raises(BufferError):
            a.__dlpack__(max_version=(1, 0), dl_device=(2, 0))
        del cap


@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=_id)
def test_dlpack_refuses_unrepresentable_dtypes(ws, dtype):
    with ws:
        a = wsmem.zeros(4, dtype=dtype)
        with pytest.raises(BufferError):
            a.__dlpack__(max_version=(1, 0))
        with pytest.raises(BufferError):
            np.from_dlpack(a)
    gc.collect()
    assert ws.stats().pinned_bytes == 0


# ---------------------------------------------------------------- dtypes and layouts

@pytest.mark.parametrize("export,dtype", [
    pytest.param(e, d, id=f"{e.__name__}-{_id(d)}")
    for e in EXPORTERS for d in ALL_DTYPES
    if not (e in DLPACK_EXPORTERS and d in OTHER_DTYPES)])   # refused: tested above
def test_every_dtype_zero_copy(ws, dtype, export):
    dt = np.dtype(dtype)
    for _ in range(2):                    # spill cycle and learned-block cycle
        with ws:
            a = wsmem.empty((3, 4), dtype=dt)
            pat = fill_pattern(a, seed=3)
            e = export(a)
            if export is via_array_interface:
                # NumPy's own round trip through __array_interface__ names
                # padding fields; wsmem must match NumPy, not do better.
                ref = np.asarray(_IfaceOnly(np.empty(0, dt).__array_interface__))
                assert e.dtype == ref.dtype and e.dtype.itemsize == dt.itemsize
            else:
                assert e.dtype == dt
            assert e.shape == (3, 4)
            assert e.ctypes.data == a.ptr
            assert e.tobytes() == pat
            assert np.shares_memory(e, np.asarray(a))
            del e


LAYOUTS = {
    "0d": lambda: wsmem.empty((), dtype=np.float64),
    "size0": lambda: wsmem.empty((0,), dtype=np.float64),
    "size0_2d": lambda: wsmem.empty((3, 0), dtype=np.int32),
    "F": lambda: wsmem.empty((4, 6), dtype=np.float32, order="F"),
    "step2": lambda: wsmem.empty(20, dtype=np.int64)[::2],
    "reversed": lambda: wsmem.empty(20, dtype=np.int16)[::-1],
    "T": lambda: wsmem.empty((3, 5), dtype=np.float64).T,
    "2d_neg": lambda: wsmem.empty((6, 8), dtype=np.uint8)[::-2, 1::3],
    "F_sliced": lambda: wsmem.empty((6, 8), dtype=np.complex64, order="F")[1:, ::-2],
    "3d_T": lambda: wsmem.empty((2, 3, 4), dtype=np.float32).transpose(2, 0, 1),
    "int_index": lambda: wsmem.empty((5, 4), dtype=np.float64)[2],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("export", EXPORTERS, ids=lambda f: f.__name__)
def test_layouts_zero_copy(ws, layout, export):
    with ws:
        a = LAYOUTS[layout]()
        ref = np.asarray(a)
        if a.size:
            ref[...] = np.arange(a.size).reshape(a.shape).astype(a.dtype)
        e = export(a)
        assert e.shape == a.shape and e.dtype == a.dtype
        assert e.ctypes.data == a.ptr
        if a.size > 1:
            assert e.strides == a.strides
            assert np.shares_memory(e, ref)
        np.testing.assert_array_equal(e, ref)
        del e, ref


def test_layout_flags(ws):
    with ws:
        f = wsmem.empty((4, 6), order="F")
        assert f.strides == (8, 32)
        e = np.asarray(f)
        assert e.flags.f_contiguous and not e.flags.c_contiguous
        r = wsmem.empty(10)[::-1]
        assert r.strides == (-8,)
        assert r.ptr == np.asarray(r).ctypes.data
        del e


# ---------------------------------------------------------------- lifetime

@pytest.mark.parametrize("export", EXPORTERS, ids=lambda f: f.__name__)
def test_export_outlives_del_of_wsarray(ws, export):
    with ws:
        a = wsmem.empty(50, dtype=np.int32)
        a[...] = np.arange(50)
        e = export(a)
        del a
        gc.collect()
        b = wsmem.empty(50, dtype=np.int32)   # same cycle: must not overlap e
        b[...] = -1
        lo, hi = byte_bounds(e)
        assert b.ptr >= hi or b.ptr + b.nbytes <= lo
        np.testing.assert_array_equal(e, np.arange(50))
        del e


CONFIGS = {
    "first_loop": {},
    "fixed": {"learning": "none", "initial_size": 1 << 16},
    "strict": {"learning": "none", "initial_size": 1 << 16, "allocation": "strict"},
}


def _overlaps(lo, hi, ptr, nbytes):
    return nbytes > 0 and ptr < hi and lo < ptr + nbytes


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("export", EXPORTERS, ids=lambda f: f.__name__)
def test_export_survives_cycles_pinned(make_ws, cfg, export):
    ws = make_ws(**CONFIGS[cfg])
    with ws:                                       # warm-up: learns a block
        wsmem.empty(4096)
    with ws:
        a = wsmem.empty((16, 33), dtype=np.float64)
        pat = fill_pattern(a, seed=11)
        a_ptr = a.ptr
        v = a[3:11, ::-2]                         # a strided, negative-stride view
        ev = export(v)
        ef = export(a)
        expected_v = raw_bytes(ev)
        assert ef.tobytes() == pat
    assert not a.is_valid
    gc.collect()
    assert ws.stats().pinned_bytes > 0
    lo_v, hi_v = byte_bounds(ev)
    lo_f, hi_f = byte_bounds(ef)
    for cycle in range(4):
        with ws:
            fresh = [wsmem.empty(n, dtype=np.uint8) for n in (100, 4224, 8, 3000, 5000)]
            for f in fresh:
                assert not _overlaps(lo_f, hi_f, f.ptr, f.nbytes)
                f.fill(0xA5)
            assert ef.tobytes() == pat
            assert raw_bytes(ev) == expected_v
        assert ef.tobytes() == pat
    del ef
    gc.collect()
    # Only the view's bytes stay pinned now.
    assert ws.stats().pinned_bytes > 0
    with ws:
        for n in (100, 4224, 8, 3000, 5000):
            f = wsmem.empty(n, dtype=np.uint8)
            assert not _overlaps(lo_v, hi_v, f.ptr, f.nbytes)
            f.fill(0x5A)
        assert raw_bytes(ev) == expected_v
    del ev, f
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    # After the exports die the memory is reused.
    with ws:
        again = wsmem.empty((16, 33), dtype=np.float64)
        assert again.ptr == a_ptr


def test_pins_are_line_sized_not_page_sized(make_ws):
    ws = make_ws(learning="none", initial_size=1 << 20)
    kept = []
    for _ in range(20):
        with ws:
            kept.append(np.asarray(wsmem.empty(2, dtype=np.float64)))
    gc.collect()
    pinned = ws.stats().pinned_bytes
    assert 0 < pinned <= 20 * 256
    assert ws.stats().pages == 1
    kept.clear()
    gc.collect()
    assert ws.stats().pinned_bytes == 0


def test_export_survives_destroy(make_ws):
    ws = make_ws(learning="none", initial_size=1 << 16)
    with ws:
        a = wsmem.empty(1000, dtype=np.int32)
        a[...] = np.arange(1000)
        e = np.asarray(a)
        d = np.from_dlpack(a)
    ws.destroy()
    np.testing.assert_array_equal(e, np.arange(1000))
    np.testing.assert_array_equal(d, np.arange(1000))
    with pytest.raises(WorkspaceLeakError, match="destroyed"):
        np.asarray(a)
    del e, d


def test_leaks_reports_live_exports(make_ws):
    ws = make_ws(learning="none", initial_size=1 << 16)
    with ws:
        a = wsmem.empty((3, 5), dtype=np.float32)
        e = np.asarray(a)
        assert ws.leaks() == []           # same open cycle: not a leak
    leaks = ws.leaks()
    assert len(leaks) == 1
    assert leaks[0].shape == (3, 5) and leaks[0].dtype == np.float32
    assert leaks[0].generation == a.generation
    assert leaks[0].nbytes >= 60
    del e
    gc.collect()
    assert ws.leaks() == []


# ---------------------------------------------------------------- stale arrays

class _Obj:
    pass


STALE_PATHS = {
    "np.asarray": lambda a: np.asarray(a),
    "np.asarray_dtype": lambda a: np.asarray(a, dtype=np.float32),
    "np.array": lambda a: np.array(a),
    "np.array_copy_false": lambda a: np.array(a, copy=False),
    "np.array_list": lambda a: np.array([a, a]),
    "np.array_object": lambda a: np.array(a, dtype=object),
    "np.asarray_object": lambda a: np.asarray(a, dtype=object),
    "np.array_list_object": lambda a: np.array([a, 1], dtype=object),
    "memoryview": lambda a: memoryview(a),
    "bytes": lambda a: bytes(a),
    "__array_interface__": lambda a: a.__array_interface__,
    "__array__": lambda a: a.__array__(),
    "__array__copy": lambda a: a.__array__(copy=True),
    "__array__dtype": lambda a: a.__array__(dtype=np.int8),
    "numpy()": lambda a: a.numpy(),
    "np.from_dlpack": lambda a: np.from_dlpack(a),
    "np.from_dlpack_copy": lambda a: np.from_dlpack(a, copy=True),
    "__dlpack__": lambda a: a.__dlpack__(),
    "__dlpack__versioned": lambda a: a.__dlpack__(max_version=(1, 0)),
    "getitem": lambda a: a[0],
    "getitem_slice": lambda a: a[1:],
    "getitem_fancy": lambda a: a[[0, 1]],
    "setitem": lambda a: a.__setitem__(0, 1.0),
    "setitem_slice": lambda a: a.__setitem__(slice(None), 2.0),
    "np.add": lambda a: np.add(a, 1),
    "a+1": lambda a: a + 1,
    "1+a": lambda a: 1 + a,
    "ndarray+a": lambda a: np.ones(4) + a,
    "iadd": lambda a: a.__iadd__(1),
    "neg": lambda a: -a,
    "eq": lambda a: a == 1,
    "out=": lambda a: np.add(np.ones(4), 1, out=a),
    "np.sum": lambda a: np.sum(a),
    "a.sum": lambda a: a.sum(),
    "a.mean": lambda a: a.mean(),
    "add.reduce": lambda a: np.add.reduce(a),
    "np.concatenate": lambda a: np.concatenate([a, a]),
    "np.copyto": lambda a: np.copyto(np.zeros(4), a),
    "np.copyto_dst": lambda a: np.copyto(a, np.zeros(4)),
    "tolist": lambda a: a.tolist(),
    "iter": lambda a: list(a),
    "copy": lambda a: a.copy(),
    "detach": lambda a: a.detach(),
    "astype": lambda a: a.astype(np.int32),
    "reshape": lambda a: a.reshape(2, 2),
    "T": lambda a: a.T,
    "fill": lambda a: a.fill(0),
    "flags": lambda a: a.flags,
    "real": lambda a: a.real,
    "float(a[0])": lambda a: float(a[0]),
    "bool": lambda a: bool(a[0]),
    "pickle": lambda a: pickle.dumps(a),
    "wsmem.asarray": lambda a: wsmem.asarray(a),
    "np.frombuffer": lambda a: np.frombuffer(a),
    "matmul": lambda a: a @ a,
}


@pytest.mark.parametrize("path", list(STALE_PATHS))
def test_stale_raises_on_every_path(ws, path):
    with ws:
        a = wsmem.full(4, 1.5)
    with pytest.raises(WorkspaceLeakError, match="leaked workspace pointer"):
        STALE_PATHS[path](a)
    # outdated: the workspace went on to later cycles
    with ws:
        wsmem.full(4, 99.0)           # likely reuses a's bytes
        with pytest.raises(WorkspaceLeakError, match="outdated workspace pointer"):
            STALE_PATHS[path](a)
    gc.collect()
    assert ws.stats().pinned_bytes == 0


def test_stale_message_names_workspace_generations_and_advice(ws):
    with ws:
        a = wsmem.empty(3)
    gen = a.generation
    with pytest.raises(WorkspaceLeakError) as ei:
        np.asarray(a)
    msg = str(ei.value)
    assert repr(ws.name) in msg and f"generation {gen}" in msg
    assert "detach" in msg and "leverage_to" in msg
    with ws:
        with ws:  # re-entry does not reset
            pass
        with pytest.raises(WorkspaceLeakError) as ei:
            a + 1
        msg = str(ei.value)
        assert f"generation {gen}" in msg and f"generation {ws.stats().generation}" in msg
        assert isinstance(ei.value, wsmem.WorkspaceError)


def test_stale_repr_and_str_do_not_raise(ws):
    with ws:
        a = wsmem.zeros((2, 2), dtype=np.int8)
        assert ": stale" not in repr(a)
        assert "WsArray(" in repr(a)
    r = repr(a)
    assert ": stale" in r and "(2, 2)" in r and "int8" in r
    assert "stale" in str(a)
    assert a.shape == (2, 2) and a.dtype == np.int8 and len(a) == 2
    assert a.is_valid is False


def test_stale_after_destroy(make_ws):
    ws = make_ws()
    with ws:
        a = wsmem.ones(3)
    ws.destroy()
    for path in ("np.asarray", "memoryview", "np.from_dlpack", "a+1", "getitem"):
        with pytest.raises(WorkspaceLeakError, match="destroyed"):
            STALE_PATHS[path](a)
    assert "stale" in repr(a)


def test_stale_view_of_live_parent_is_stale(ws):
    with ws:
        a = wsmem.ones(8)
        v = a[::2]
    with ws:
        with pytest.raises(WorkspaceLeakError):
            np.asarray(v)
        with pytest.raises(WorkspaceLeakError):
            v[0] = 3


def test_outer_arrays_stay_valid_inside_inner(make_ws):
    outer, inner = make_ws("outer"), make_ws("inner")
    with outer:
        a = wsmem.full(4, 2.0)
        with inner:
            b = a + 1
            e = np.asarray(a)
            assert b.workspace is inner
        assert not b.is_valid and a.is_valid
        with pytest.raises(WorkspaceLeakError):
            np.asarray(b)
        np.testing.assert_array_equal(e, [2.0] * 4)
        del e


# ---------------------------------------------------------------- object dtype

@pytest.mark.parametrize("make", [
    lambda: wsmem.empty(3, dtype=object),
    lambda: wsmem.zeros(3, dtype=object),
    lambda: wsmem.ones(2, dtype="O"),
    lambda: wsmem.full(2, None, dtype=object),
    lambda: wsmem.empty(2, dtype=[("x", "f8"), ("y", "O")]),
    lambda: wsmem.asarray(np.array([1, None], dtype=object)),
    lambda: wsmem.asarray([1, "a", None]),
    lambda: wsmem.zeros_like(np.empty(3, dtype=object)),
    lambda: wsmem.empty(3).astype(object),
])
def test_object_dtype_refused(ws, make):
    with ws:
        with pytest.raises(TypeError, match="Python objects"):
            make()
        assert wsmem.zeros(2).sum() == 0
    with pytest.raises(TypeError, match="Python objects"):
        make()                      # heap path too
