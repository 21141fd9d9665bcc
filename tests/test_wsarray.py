"""WsArray: attributes, creation functions, indexing, copies, ufuncs and
NumPy functions, alignment."""
import gc

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, WorkspaceLeakError, WsArray


@pytest.fixture
def make_ws(workspace_factory):
    return workspace_factory("arr")


def view(a):
    return np.asarray(a)


# ---------------------------------------------------------------- attributes

def test_attributes_in_workspace(ws):
    with ws:
        a = wsmem.empty((3, 4, 5), dtype=np.float32)
        assert isinstance(a, WsArray)
        assert a.shape == (3, 4, 5)
        assert a.dtype == np.dtype(np.float32)
        assert isinstance(a.dtype, np.dtype)
        assert a.strides == (80, 20, 4)
        assert a.ndim == 3
        assert a.size == 60
        assert a.itemsize == 4
        assert a.nbytes == 240
        assert a.device == "cpu"
        assert isinstance(a.ptr, int) and a.ptr == view(a).ctypes.data
        assert a.workspace is ws
        assert a.generation == ws.stats().generation
        assert a.is_attached is True
        assert a.is_valid is True
        assert len(a) == 3
    assert a.is_valid is False
    assert a.is_attached is True
    assert a.workspace is ws


def test_attributes_on_heap():
    a = wsmem.zeros((2, 3), dtype=np.int16)
    assert wsmem.current_workspace() is None
    assert a.workspace is None
    assert a.generation is None
    assert a.is_attached is False
    assert a.is_valid is True
    assert a.device == "cpu"
    assert a.strides == (6, 2) and a.nbytes == 12
    np.testing.assert_array_equal(view(a), np.zeros((2, 3)))


def test_generation_advances_per_cycle(ws):
    gens = []
    for _ in range(3):
        with ws:
            gens.append(wsmem.empty(1).generation)
    assert gens[1] == gens[0] + 1 and gens[2] == gens[1] + 1


def test_zero_d_and_empty(ws):
    with ws:
        s = wsmem.full((), 7, dtype=np.int32)
        assert s.shape == () and s.ndim == 0 and s.size == 1 and s.nbytes == 4
        assert int(s) == 7 and float(s) == 7.0
        with pytest.raises(TypeError):
            len(s)
        with pytest.raises(TypeError):
            iter(s).__next__()
        e = wsmem.empty((0, 3))
        assert e.size == 0 and e.nbytes == 0 and len(e) == 0
        assert list(e) == []


# ---------------------------------------------------------------- creation

@pytest.mark.parametrize("shape,expected", [(5, (5,)), ((5,), (5,)), ((2, 3), (2, 3)),
                                            ([2, 3], (2, 3)), ((), ()),
                                            (np.int64(4), (4,)), ((np.int32(2), 3), (2, 3))])
def test_shape_forms(ws, shape, expected):
    with ws:
        for f in (wsmem.empty, wsmem.zeros, wsmem.ones, ws.empty, ws.zeros, ws.ones):
            a = f(shape)
            assert a.shape == expected
            assert a.dtype == np.float64            # NumPy's default
            assert a.workspace is ws
        assert wsmem.full(shape, 2).shape == expected
        assert ws.full(shape, 2).shape == expected


@pytest.mark.parametrize("dtype", [np.float32, "int16", np.dtype("u1"), "c8", bool, int,
                                   float, complex, "S5", "U3", [("x", "i4"), ("y", "f4")]])
def test_dtypes(ws, dtype):
    with ws:
        a = wsmem.zeros(4, dtype=dtype)
        assert a.dtype == np.dtype(dtype)
        assert view(a).tobytes() == bytes(a.nbytes)
        b = ws.empty(4, dtype=dtype)
        assert b.dtype == np.dtype(dtype)


def test_values_of_creation_functions(ws):
    with ws:
        np.testing.assert_array_equal(view(wsmem.zeros((2, 3))), np.zeros((2, 3)))
        np.testing.assert_array_equal(view(wsmem.ones((2, 3), dtype=np.int8)),
                                      np.ones((2, 3), np.int8))
        f = wsmem.full((2, 2), 3.5)
        assert f.dtype == np.float64
        np.testing.assert_array_equal(view(f), np.full((2, 2), 3.5))
        fi = wsmem.full(3, 7)
        assert fi.dtype == np.asarray(7).dtype
        fd = wsmem.full(3, 7.9, dtype=np.int32)
        np.testing.assert_array_equal(view(fd), np.full(3, 7.9).astype(np.int32))
        fa = wsmem.full((2, 3), [1, 2, 3])
        np.testing.assert_array_equal(view(fa), np.full((2, 3), [1, 2, 3]))
        assert ws.zeros(3).sum() == 0
        assert ws.ones(3, dtype=np.int64).sum() == 3
        assert int(ws.full(3, 5).sum()) == 15


def test_zeros_really_zeroes_reused_memory(make_ws):
    ws = make_ws(learning="none", initial_size=1 << 16)
    with ws:
        wsmem.full(1000, 0xFF, dtype=np.uint8)
    with ws:
        z = wsmem.zeros(1000, dtype=np.uint8)
        assert not view(z).any()
        z2 = ws.zeros(1000, dtype=np.uint8)
        assert not view(z2).any()


@pytest.mark.parametrize("order", ["C", "F", "c", "f"])
def test_order(ws, order):
    with ws:
        for f in (wsmem.empty, wsmem.zeros, wsmem.ones, ws.empty):
            a = f((3, 4), dtype=np.float32, order=order)
            v = view(a)
            if order in "Ff":
                assert a.strides == (4, 12) and v.flags.f_contiguous
            else:
                assert a.strides == (16, 4) and v.flags.c_contiguous
        a = wsmem.full((3, 4), 1, order=order)
        assert view(a).flags.f_contiguous == (order in "Ff")


def test_like_functions(ws):
    proto_f = np.arange(12, dtype=np.int16).reshape(3, 4, order="F")
    with ws:
        wproto = wsmem.ones((2, 5), dtype=np.complex64)
        for proto in (proto_f, wproto):
            p = np.asarray(proto)
            e = wsmem.empty_like(proto)
            assert e.shape == p.shape and e.dtype == p.dtype and e.workspace is ws
            assert e.strides == p.strides            # order="K" keeps the layout
            z = wsmem.zeros_like(proto)
            assert not view(z).any()
            o = wsmem.ones_like(proto)
            np.testing.assert_array_equal(view(o), np.ones_like(p))
            f = wsmem.full_like(proto, 3)
            np.testing.assert_array_equal(view(f), np.full_like(p, 3))
            assert f.dtype == p.dtype
            del p
        e = wsmem.empty_like(proto_f, dtype=np.float64, order="C", shape=(2, 2))
        assert e.shape == (2, 2) and e.dtype == np.float64 and e.strides == (16, 8)
        z = wsmem.zeros_like(proto_f, order="C")
        assert z.strides == (8, 2)
        for meth in (ws.empty_like, ws.zeros_like, ws.ones_like):
            r = meth(proto_f)
            assert r.workspace is ws and r.shape == (3, 4)
        r = ws.full_like(proto_f, 9, dtype=np.float32)
        assert r.dtype == np.float32 and float(r.sum()) == 9 * 12
    h = wsmem.zeros_like(proto_f)
    assert h.workspace is None and h.shape == (3, 4)


def test_asarray(ws):
    src = np.arange(6, dtype=np.int32).reshape(2, 3)
    h = wsmem.asarray(src)                       # no workspace: wraps, no copy
    assert h.workspace is None and h.ptr == src.ctypes.data
    with ws:
        a = wsmem.asarray(src)
        assert a.workspace is ws and a.ptr != src.ctypes.data
        np.testing.assert_array_equal(view(a), src)
        assert wsmem.asarray(a) is a                 # already here
        b = wsmem.asarray(a, dtype=np.float64)
        assert b is not a and b.dtype == np.float64 and b.workspace is ws
        l = wsmem.asarray([[1, 2], [3, 4]])
        np.testing.assert_array_equal(view(l), [[1, 2], [3, 4]])
        s = wsmem.asarray(5.0)
        assert s.shape == () and float(s) == 5.0
        f = wsmem.asarray(src, order="F")
        assert view(f).flags.f_contiguous
        c = ws.asarray(src)
        assert c.workspace is ws
        hh = wsmem.asarray(h)                       # heap array copied in
        assert hh.workspace is ws and hh.ptr != h.ptr


@pytest.mark.parametrize("name", ["empty", "zeros", "ones", "full", "empty_like",
                                  "zeros_like", "ones_like", "full_like", "asarray"])
def test_ws_methods_require_open(ws, make_ws, name):
    args = {"empty": (3,), "zeros": (3,), "ones": (3,), "full": (3, 1.0),
            "empty_like": (np.ones(3),), "zeros_like": (np.ones(3),),
            "ones_like": (np.ones(3),), "full_like": (np.ones(3), 2),
            "asarray": ([1, 2],)}[name]
    with pytest.raises(WorkspaceError, match="not open"):
        getattr(ws, name)(*args)
    other = make_ws()
    with other:                                  # another workspace open is not enough
        with pytest.raises(WorkspaceError, match="not open"):
            getattr(ws, name)(*args)
    with ws:
        r = getattr(ws, name)(*args)
        assert r.workspace is ws
    with other:
        with ws:
            with other:
                r = getattr(ws, name)(*args)     # the method targets ws, not the innermost
                assert r.workspace is ws
                assert wsmem.empty(1).workspace is other


def test_innermost_workspace_and_heap(make_ws):
    outer, inner = make_ws("o"), make_ws("i")
    assert wsmem.empty(2).workspace is None
    with outer:
        assert wsmem.current_workspace() is outer
        assert wsmem.empty(2).workspace is outer
        with inner:
            assert wsmem.current_workspace() is inner
            assert wsmem.zeros(2).workspace is inner
            with outer.borrow():
                assert wsmem.ones(2).workspace is outer
            with wsmem.scope_out():
                assert wsmem.current_workspace() is None
                h = wsmem.empty(2)
                assert h.workspace is None
            assert wsmem.empty(2).workspace is inner
        assert wsmem.empty(2).workspace is outer
    assert wsmem.current_workspace() is None
    assert h.is_valid


def test_debug_bypass_allocates_plain_memory(ws):
    with wsmem.debug_mode("bypass_everything"):
        with ws:
            a = wsmem.ones(4)
            assert a.workspace is None
    assert a.is_valid
    assert float(a.sum()) == 4.0


# ---------------------------------------------------------------- indexing

def test_basic_indexing_views(ws):
    with ws:
        a = wsmem.asarray(np.arange(24, dtype=np.int64).reshape(4, 6))
        for key in (1, slice(1, 3), (slice(None), 2), (Ellipsis, slice(None, None, -2)),
                    (slice(None, None, 2), slice(1, None, 3)), (None, 1), np.s_[::-1, ::-1]):
            v = a[key]
            assert isinstance(v, WsArray)
            assert v.workspace is ws and v.generation == a.generation
            assert np.shares_memory(view(v), view(a))
            np.testing.assert_array_equal(view(v), np.arange(24).reshape(4, 6)[key])
        row = a[2]
        assert row.ptr == a.ptr + 2 * 48
        row[0] = -5
        assert int(a[2, 0]) == -5
        x = a[1, 2]
        assert int(x) == 8
    assert not row.is_valid


def test_advanced_indexing_copies(ws):
    with ws:
        a = wsmem.asarray(np.arange(10.0))
        b = a[[1, 3, 5]]
        assert isinstance(b, WsArray) and b.workspace is ws
        assert not np.shares_memory(view(b), view(a))
        np.testing.assert_array_equal(view(b), [1.0, 3.0, 5.0])
        m = a[a > 6]
        assert isinstance(m, WsArray) and m.workspace is ws
        np.testing.assert_array_equal(view(m), [7.0, 8.0, 9.0])
        idx = wsmem.asarray(np.array([0, 9]))
        c = a[idx]
        np.testing.assert_array_equal(view(c), [0.0, 9.0])
        b[0] = 100
        assert float(a[1]) == 1.0


def test_setitem(ws):
    with ws:
        a = wsmem.zeros((3, 4), dtype=np.int32)
        a[0] = 1
        a[1, :] = np.arange(4)
        a[2, 1:3] = wsmem.full(2, 7, dtype=np.int32)
        a[a == 0] = -1
        a[[0, 2], 0] = 9
        np.testing.assert_array_equal(view(a), [[9, 1, 1, 1], [-1, 1, 2, 3], [9, 7, 7, -1]])
        a[...] = 5
        assert int(a.sum()) == 60
        with pytest.raises(ValueError):
            a[0] = np.ones(5)


def test_len_and_iteration(ws):
    with ws:
        a = wsmem.asarray(np.arange(6).reshape(3, 2))
        assert len(a) == 3
        rows = list(a)
        assert len(rows) == 3
        assert all(isinstance(r, WsArray) and r.workspace is ws for r in rows)
        np.testing.assert_array_equal(view(rows[2]), [4, 5])
        assert [int(x) for x in a[:, 1]] == [1, 3, 5]


def test_reshape_and_transpose(ws):
    with ws:
        a = wsmem.asarray(np.arange(12.0))
        r = a.reshape(3, 4)
        assert r.shape == (3, 4) and r.ptr == a.ptr and r.workspace is ws
        assert np.shares_memory(view(r), view(a))
        r2 = a.reshape((2, -1))
        assert r2.shape == (2, 6) and r2.ptr == a.ptr
        rf = a.reshape(3, 4, order="F")
        np.testing.assert_array_equal(view(rf), np.arange(12.0).reshape(3, 4, order="F"))
        t = r.T
        assert t.shape == (4, 3) and t.strides == (8, 32) and t.ptr == a.ptr
        assert np.shares_memory(view(t), view(a))
        t[0, 1] = -1
        assert float(a[4]) == -1
        p = wsmem.empty((2, 3, 4)).transpose(1, 2, 0)
        assert p.shape == (3, 4, 2)
        # reshape of a non-contiguous view: a copy in the workspace
        c = t.reshape(12)
        assert c.workspace is ws and not np.shares_memory(view(c), view(a))
        np.testing.assert_array_equal(view(c), view(t).reshape(12))


def test_astype(ws):
    with ws:
        a = wsmem.asarray(np.array([1.7, -2.2, 3.5]))
        b = a.astype(np.int32)
        assert b.dtype == np.int32 and b.workspace is ws
        np.testing.assert_array_equal(view(b), [1, -2, 3])
        assert not np.shares_memory(view(b), view(a))
        c = a.astype(np.float64)
        assert c is not a and c.ptr != a.ptr
        assert a.astype(np.float64, copy=False) is a
        with pytest.raises(TypeError):
            a.astype(np.int32, casting="safe")
        f = wsmem.ones((2, 3), order="F").astype(np.float32)
        assert view(f).flags.f_contiguous
    h = wsmem.ones(2).astype(np.int8)
    assert h.workspace is None


def test_fill(ws):
    with ws:
        a = wsmem.empty((3, 3), dtype=np.float32)
        a.fill(2.5)
        np.testing.assert_array_equal(view(a), np.full((3, 3), 2.5, np.float32))
        a[::2].fill(0)
        assert float(a.sum()) == 2.5 * 3


def test_copy(ws):
    with ws:
        a = wsmem.asarray(np.arange(6.0).reshape(2, 3))
        c = a.copy()
        assert c.workspace is ws and c.ptr != a.ptr
        np.testing.assert_array_equal(view(c), view(a))
        c[0, 0] = 100
        assert float(a[0, 0]) == 0
        cf = a.copy(order="F")
        assert view(cf).flags.f_contiguous
        with wsmem.scope_out():
            h = a.copy()
        assert h.workspace is None
    assert h.is_valid and float(h.sum()) == 15.0


def test_detach_survives_cycle(ws):
    with ws:
        a = wsmem.asarray(np.arange(8.0).reshape(2, 4))
        d = a.detach()
        dt = a.T.detach()
        assert d.workspace is None and d.is_attached is False and d.generation is None
        assert not np.shares_memory(view(d), view(a))
    for _ in range(3):
        with ws:
            wsmem.full(8, -1.0)
    assert d.is_valid and dt.is_valid
    np.testing.assert_array_equal(view(d), np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(view(dt), np.arange(8.0).reshape(2, 4).T)
    with pytest.raises(WorkspaceLeakError):
        a.detach()


def test_leverage_to(make_ws):
    outer, inner = make_ws("lo"), make_ws("li")
    with outer:
        with inner:
            a = wsmem.asarray(np.arange(5.0))
            b = a.leverage_to(outer)
            assert b.workspace is outer and b.generation == outer.stats().generation
            assert not np.shares_memory(view(b), view(a))
            assert b.leverage_to(outer) is b
            assert a.leverage_to(inner) is a
            v = a[::2].leverage_to(outer)
            np.testing.assert_array_equal(view(v), [0.0, 2.0, 4.0])
        assert not a.is_valid and b.is_valid
        np.testing.assert_array_equal(view(b), np.arange(5.0))
        with inner:
            with pytest.raises(WorkspaceLeakError):
                a.leverage_to(outer)
    with inner:
        c = wsmem.ones(2)
        with pytest.raises(WorkspaceError, match="not open"):
            c.leverage_to(outer)
        with pytest.raises(TypeError, match="Workspace"):
            c.leverage_to("outer")


# ---------------------------------------------------------------- ufuncs and functions

def test_ufunc_results_are_wsarrays_in_current_workspace(make_ws):
    outer, inner = make_ws("uo"), make_ws("ui")
    with outer:
        a = wsmem.asarray(np.arange(1.0, 7.0).reshape(2, 3))
        ref = np.arange(1.0, 7.0).reshape(2, 3)
        checks = {
            "add": (a + 1, ref + 1), "radd": (1 + a, 1 + ref), "sub": (a - a, ref - ref),
            "mul": (a * 2, ref * 2), "div": (a / 2, ref / 2), "floordiv": (a // 2, ref // 2),
            "mod": (a % 4, ref % 4), "pow": (a ** 2, ref ** 2), "neg": (-a, -ref),
            "abs": (abs(-a), ref), "np.exp": (np.exp(a), np.exp(ref)),
            "np.add": (np.add(a, a), ref + ref), "rsub": (10 - a, 10 - ref),
            "maximum": (np.maximum(a, 3), np.maximum(ref, 3)),
        }
        with inner:
            for name, (got, want) in checks.items():
                assert isinstance(got, WsArray), name
                assert got.workspace is outer, name     # made before inner opened
                np.testing.assert_allclose(view(got), want)
            c = a * 3
            assert isinstance(c, WsArray) and c.workspace is inner
            cmp = a > 3
            assert isinstance(cmp, WsArray) and cmp.dtype == np.bool_
            assert cmp.workspace is inner
            np.testing.assert_array_equal(view(cmp), ref > 3)
            for got in (a == 2, a != 2, a < 2, a <= 2, a >= 2):
                assert isinstance(got, WsArray) and got.dtype == np.bool_
            m = a @ a.T
            assert isinstance(m, WsArray) and m.workspace is inner
            np.testing.assert_allclose(view(m), ref @ ref.T)
            mv = a @ np.ones(3)
            assert isinstance(mv, WsArray) and mv.shape == (2,)
            q, r = np.divmod(a, 4)
            assert isinstance(q, WsArray) and isinstance(r, WsArray)
            assert q.workspace is inner
            ints = wsmem.asarray(np.array([1, 2, 3]))
            for got in (ints & 1, ints | 4, ints ^ 1, ints << 1, ints >> 1, ~ints):
                assert isinstance(got, WsArray) and got.workspace is inner
    h = wsmem.ones(3)
    hs = h + 1                                   # heap inputs, no workspace: heap result
    assert hs.workspace is None and hs.is_valid


def test_inplace_operators_keep_identity(ws):
    with ws:
        a = wsmem.ones(4)
        ptr = a.ptr
        b = a
        b += 1
        assert b is a and a.ptr == ptr
        b *= 3
        b -= 1
        b /= 5
        assert b is a
        np.testing.assert_allclose(view(a), np.full(4, 1.0))
        i = wsmem.full(4, 7, dtype=np.int64)
        j = i
        j //= 2
        j %= 2
        j **= 3
        j |= 2
        j &= 3
        j ^= 1
        assert j is i
        np.testing.assert_array_equal(view(i), ((((7 // 2) % 2) ** 3 | 2) & 3) ^ 1)
        m = wsmem.asarray(np.eye(2))
        n = m
        n @= np.full((2, 2), 2.0)
        assert n is m
        np.testing.assert_array_equal(view(m), np.full((2, 2), 2.0))
        out = wsmem.empty(4)
        r = np.add(a, 1, out=out)
        assert r is out
        np.testing.assert_allclose(view(out), np.full(4, 2.0))


def test_ndarray_on_the_left(ws):
    with ws:
        a = wsmem.full(3, 2.0)
        x = np.arange(3.0)
        for got, want in ((x + a, x + 2), (x * a, x * 2), (x - a, x - 2), (x / a, x / 2),
                          (x ** a, x ** 2), (x @ a, x @ np.full(3, 2.0))):
            assert isinstance(got, WsArray) and got.workspace is ws
            np.testing.assert_allclose(view(got), want)
        cmp = x < a
        assert isinstance(cmp, WsArray)
        np.testing.assert_array_equal(view(cmp), [True, True, False])
        s = np.float64(3.0) * a
        assert isinstance(s, WsArray)
        x += a                                     # ndarray in place: stays an ndarray
        assert type(x) is np.ndarray
        np.testing.assert_allclose(x, [2.0, 3.0, 4.0])


def test_numpy_functions_accept_wsarray(ws):
    with ws:
        a = wsmem.asarray(np.arange(6.0).reshape(2, 3))
        ref = np.arange(6.0).reshape(2, 3)
        assert float(np.sum(a)) == 15.0
        assert float(a.sum()) == 15.0
        np.testing.assert_allclose(view(np.sum(a, axis=0)), ref.sum(axis=0))
        assert isinstance(np.sum(a, axis=0), WsArray)
        assert float(np.mean(a)) == 2.5
        assert float(a.max()) == 5.0 and int(a.argmax()) == 5
        c = np.concatenate([a, a])
        assert isinstance(c, WsArray) and c.workspace is ws and c.shape == (4, 3)
        np.testing.assert_array_equal(view(c), np.concatenate([ref, ref]))
        w = np.where(a > 2, a, -1)
        assert isinstance(w, WsArray) and w.workspace is ws
        np.testing.assert_array_equal(view(w), np.where(ref > 2, ref, -1))
        st = np.stack([a, ref])
        assert isinstance(st, WsArray) and st.shape == (2, 2, 3)
        d = np.dot(a, ref.T)
        np.testing.assert_allclose(view(d), ref @ ref.T)
        assert np.allclose(a, ref)
        assert np.array_equal(a, ref)
        srt = np.sort(-a, axis=1)
        np.testing.assert_array_equal(view(srt), np.sort(-ref, axis=1))
        cs = np.cumsum(a)
        assert isinstance(cs, WsArray) and cs.workspace is ws
        sh = np.shape(a)
        assert sh == (2, 3)
        tr = np.transpose(a)
        assert isinstance(tr, WsArray) and np.shares_memory(view(tr), view(a))
        res = np.split(a, 3, axis=1)
        assert len(res) == 3 and all(isinstance(r, WsArray) for r in res)
        nz = np.nonzero(a)
        np.testing.assert_array_equal(view(nz[1]), np.nonzero(ref)[1])
        cl = np.clip(a, 1, 4)
        np.testing.assert_array_equal(view(cl), np.clip(ref, 1, 4))


# ---------------------------------------------------------------- alignment

def test_default_alignment_64(make_ws):
    for kw in ({}, {"learning": "none", "initial_size": 1 << 16}):
        ws = make_ws(**kw)
        for _ in range(3):                        # spill cycle, learned block cycles
            with ws:
                for n in (1, 3, 7, 64, 65, 1000, 5):
                    a = wsmem.empty(n, dtype=np.uint8)
                    assert a.ptr % 64 == 0, (kw, n)
                    b = wsmem.empty((n, 3), dtype=np.float32)
                    assert b.ptr % 64 == 0
                    c = a + 1
                    assert c.ptr % 64 == 0


@pytest.mark.parametrize("alignment", [16, 128, 256, 4096])
def test_custom_alignment(make_ws, alignment):
    ws = make_ws(alignment=alignment, learning="none", initial_size=1 << 16)
    ws2 = make_ws(alignment=alignment)
    for w in (ws, ws2):
        for _ in range(2):
            with w:
                for n in (1, 17, 300, 5):
                    a = wsmem.empty(n, dtype=np.uint8)
                    assert a.ptr % alignment == 0
                    assert w.empty(3).ptr % alignment == 0


_ALIGN_UNDER_PRELOAD = """
import numpy as np, wsmem
bad = []
for alignment in (256, 512, 1024):
    ws = wsmem.Workspace("preload_align", alignment=alignment)   # first cycle: every array spills
    with ws:
        for n in (alignment, 2 * alignment, 1024, 5):
            a = wsmem.empty(n, dtype=np.uint8)
            if a.ptr % alignment:
                bad.append((alignment, n, a.ptr % alignment))
            a[...] = 7
            assert np.asarray(a).tobytes() == b"\\x07" * n
        assert ws.stats().spilled_count >= 4       # the small-spill path, each of them
    ws.destroy()
print("misaligned:", bad)
"""


def _run_preloaded(lib, code):
    """stdout of `code` in a fresh interpreter with `lib` preloaded."""
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LD_PRELOAD=str(lib)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_custom_alignment_holds_under_a_preloaded_mimalloc():
    # Debian's mimalloc 2.0.9 returns posix_memalign(256, 256) 128 bytes off
    # (and five more pairs up to 1 KiB); a small spill must still be aligned.
    import os
    from wsmem.benchmarks.cyclic import MIMALLOC
    if not os.path.exists(MIMALLOC):
        pytest.skip(f"{MIMALLOC} is not installed (apt-get install libmimalloc2.0)")
    out = _run_preloaded(MIMALLOC, _ALIGN_UNDER_PRELOAD)
    assert out.strip() == "misaligned: []", out


_MISALIGNING_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
/* posix_memalign that breaks its word for alignments of 256 and more: it
   returns a plain malloc block (free() takes it) that is not so aligned. */
int posix_memalign(void** out, size_t align, size_t n) {
    static int (*real)(void**, size_t, size_t);
    void* held[64];
    int k = 0;
    void* p;
    if (!real) real = (int (*)(void**, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    if (align < 256) return real(out, align, n);
    for (;;) {
        p = malloc(n ? n : 1);
        if (p == NULL || (uintptr_t)p % align || k == 64) break;
        held[k++] = p;                  /* aligned by chance: keep it aside */
    }
    while (k) free(held[--k]);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}
"""


def test_custom_alignment_holds_when_posix_memalign_misaligns(tmp_path):
    # The same check as under mimalloc, on any machine with a C compiler:
    # a preloaded posix_memalign that misaligns every block of 256 and more.
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the misaligning posix_memalign")
    src, lib = tmp_path / "misalign.c", tmp_path / "misalign.so"
    src.write_text(_MISALIGNING_SHIM)
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"],
                   check=True, capture_output=True)
    probe = ("import ctypes; p = ctypes.c_void_p(); libc = ctypes.CDLL(None); "
             "assert libc.posix_memalign(ctypes.byref(p), ctypes.c_size_t(256), "
             "ctypes.c_size_t(256)) == 0; print('shim misaligns:', p.value % 256 != 0)\n")
    out = _run_preloaded(lib, probe + _ALIGN_UNDER_PRELOAD)
    assert out.split("\n")[:2] == ["shim misaligns: True", "misaligned: []"], out


def test_ptr_of_views(ws):
    with ws:
        a = wsmem.empty((4, 8), dtype=np.float32)
        assert a[1].ptr == a.ptr + 32
        assert a[:, 3].ptr == a.ptr + 12
        assert a[::-1].ptr == a.ptr + 3 * 32
        assert a.T.ptr == a.ptr


def test_pickle_roundtrip_is_heap(ws):
    import pickle
    with ws:
        a = wsmem.asarray(np.arange(4.0))
        data = pickle.dumps(a)
    b = pickle.loads(data)
    assert isinstance(b, WsArray) and b.workspace is None
    np.testing.assert_array_equal(view(b), np.arange(4.0))


def test_exception_in_with_closes_cycle(ws):
    with pytest.raises(KeyError):
        with ws:
            a = wsmem.ones(2)
            raise KeyError("x")
    assert not ws.is_open and wsmem.current_workspace() is None
    assert not a.is_valid
    gc.collect()


def test_views_of_empty_arrays_stay_in_their_workspace(make_ws):
    ws, other = make_ws("e"), make_ws("eo")
    with ws:
        a = wsmem.empty((0, 3))
        assert a.workspace is ws
        v = a[::2]
        assert v.workspace is ws and v.generation == a.generation
        with wsmem.scope_out():
            h = a[:, 1:]
            assert h.workspace is ws          # a view, not a heap copy
            assert h.generation == a.generation
        with other:
            t = a.T
            assert t.workspace is ws and t.shape == (3, 0)
    assert not v.is_valid
    assert not h.is_valid and not t.is_valid


def test_view_of_captured_result_keeps_its_memory_when_the_result_dies():
    # Memory safety rule 1: r wraps an ndarray NumPy allocated in the workspace
    # (capture).  Its view v must keep that ndarray alive: otherwise, once r
    # dies, NumPy frees it, the workspace reuses the bytes for the next
    # allocation of that size in the same cycle, and v (still valid) would
    # read another array's data.
    ws = wsmem.Workspace("CAPVIEW")
    a = np.arange(4.0)
    for _ in range(3):
        with ws:
            A = wsmem.asarray(a)
            r = np.concatenate([A, A])
            assert r.workspace is ws
            v = r[1:3]
            w = v.T[::1]
            del r
            t = np.concatenate([A * 0 - 7, A * 0 - 7])   # same size as r
            assert v.tolist() == [1.0, 2.0]
            assert w.tolist() == [1.0, 2.0]
            assert t.tolist() == [-7.0] * 8
            del v, w, t
    ws.destroy()
