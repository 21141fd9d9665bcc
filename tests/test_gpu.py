"""GPU layer: device and pinned workspaces, device WsArray exports, the CuPy
allocator drop-in, streams.

Two kinds of tests:

- everything above CUDA (records, pins, reuse, refusals, export fields) runs
  on any machine with device/pinned pages backed by host memory
  (``wsmem._gpu._set_host_backing_for_tests``); tests that go through CuPy's
  own allocator classes need CuPy importable (no device);
- ``@pytest.mark.gpu`` tests need CuPy and a CUDA device, and skip otherwise.
"""
import gc

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, WorkspaceLeakError, WorkspaceOverflowError
from wsmem import _gpu
from numpy._core.multiarray import get_handler_name


def _cuda_ok():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAVE_CUDA = _cuda_ok()


@pytest.fixture
def host_backed():
    """Device/pinned workspaces on host memory (no CUDA call is made)."""
    if HAVE_CUDA:
        pytest.skip("a real GPU is present: the gpu-marked tests cover this")
    _gpu._set_host_backing_for_tests(True)
    made = []

    def make(name, **kw):
        w = wsmem.Workspace(name, **kw)
        made.append(w)
        return w
    yield make
    for w in made:
        if not w.is_open:
            w.destroy()
    made.clear()
    gc.collect()
    _gpu._set_host_backing_for_tests(False)


def _alloc_fn(ws):
    """CuPy's own memory object over ws's allocator C functions (no device needed)."""
    cupy = pytest.importorskip("cupy")
    param, malloc, free = _gpu.state(ws).alloc_owner.addresses
    return lambda n: cupy.cuda.memory.CFunctionAllocatorMemory(n, param, malloc, free, 0)


# ---------------------------------------------------------------- without CUDA

@pytest.mark.skipif(HAVE_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("location", ["device", "pinned"])
def test_unavailable_reason_names_what_is_missing(location):
    reason = _gpu.unavailable(f"location={location!r}")
    assert reason is not None and location in reason
    assert "CuPy" in reason or "CUDA" in reason


# ---------------------------------------------------------------- device arrays (host-backed)

def test_device_array_identity_and_refusals(host_backed):
    ws = host_backed("dev", location="device")
    assert ws.config.device == 0
    with ws:
        a = wsmem.zeros((4, 8), dtype=np.float32)
        assert a.device == "cuda:0"
        assert a.__dlpack_device__() == (2, 0)            # kDLCUDA
        with pytest.raises(TypeError, match="cupy"):
            np.asarray(a)
        with pytest.raises(TypeError, match="cuda:0"):
            a.numpy()
        with pytest.raises(BufferError, match="cuda:0"):
            memoryview(a)
        assert not hasattr(a, "__array_interface__")
        with pytest.raises(BufferError, match="cuda:0"):
            a.__dlpack__(dl_device=(1, 0))
        with pytest.raises(ValueError, match="stream=0"):
            a.__dlpack__(stream=0)
        del a


def test_host_array_has_no_cuda_interface(ws):
    with ws:
        a = wsmem.ones(3)
        assert not hasattr(a, "__cuda_array_interface__")
        with pytest.raises(TypeError, match="host memory"):
            a.cupy()
        del a


def test_cuda_array_interface_fields_and_pin(host_backed):
    pytest.importorskip("cupy")                          # slicing a device array makes a cupy view
    ws = host_backed("dev", location="device", initial_size=1 << 16, learning="none")
    with ws:
        a = wsmem.empty((4, 8), dtype=np.float32)
        b = a[:, ::2]
        cai = b.__cuda_array_interface__
        assert cai["version"] == 3
        assert cai["shape"] == (4, 4)
        assert cai["typestr"] == "<f4"
        assert cai["strides"] == (32, 8)
        assert cai["data"] == (a.ptr, False)
        assert "stream" in cai
        assert ws.stats().pinned_bytes == 128      # b's extent, one line
    # the reader of the interface holds b as the owner of its view: b's
    # bytes stay out of reuse until b dies
    assert ws.stats().pinned_bytes == 128
    with ws:
        c = wsmem.empty((4, 8), dtype=np.float32)
        assert c.ptr != a.ptr
        del c
    with pytest.raises(WorkspaceLeakError):
        b.__cuda_array_interface__
    del a, b
    assert ws.stats().pinned_bytes == 0


def test_stale_device_array_raises_on_every_export(host_backed):
    ws = host_backed("dev", location="device")
    with ws:
        a = wsmem.zeros(16)
    for read in (lambda: a.__cuda_array_interface__, lambda: a.__dlpack__(),
                 lambda: a.cupy()):
        with pytest.raises(WorkspaceLeakError):
            read()


def test_device_dlpack_capsule_pins_until_consumed(host_backed):
    ws = host_backed("dev", location="device")
    with ws:
        a = wsmem.empty(64)
        cap = a.__dlpack__(max_version=(1, 0), stream=-1)
        del a
    assert ws.stats().pinned_bytes == 512
    del cap
    assert ws.stats().pinned_bytes == 0


def test_pinned_arrays_are_host_arrays_with_cuda_host_dlpack(host_backed):
    ws = host_backed("pin", location="pinned")
    with ws:
        a = wsmem.full(5, 2.0)
        assert a.device == "cpu"
        assert a.__dlpack_device__() == (3, 0)            # kDLCUDAHost
        v = np.asarray(a)
        assert (v == a.numpy()).all()
        t = np.zeros(5)                                   # NumPy's own arrays are captured
        t += v
        assert (t == v).all()
        del a, v, t


# ---------------------------------------------------------------- CuPy allocator (host-backed)

def test_allocator_bumps_reuses_and_pins(host_backed):
    ws = host_backed("dev", location="device", initial_size=1 << 20, learning="none")
    alloc = _alloc_fn(ws)
    owner = _gpu.state(ws).alloc_owner
    with ws:
        m1, m2 = alloc(1000), alloc(1000)
        assert m2.ptr - m1.ptr == 1024                    # 256-byte alignment
        p1 = m1.ptr
        del m1
        m3 = alloc(1000)
        assert m3.ptr == p1                               # exact-size reuse in the cycle
        del m3
        assert owner.live_records == 2                    # m2 live + one parked
    escaped = m2                                          # outlives the cycle
    del m2
    for _ in range(3):
        with ws:
            fresh = [alloc(1000) for _ in range(8)]
            assert all(abs(f.ptr - escaped.ptr) >= 1024 for f in fresh)
            del fresh
    assert ws.stats().pinned_bytes == 1024
    del escaped
    assert ws.stats().pinned_bytes == 0


def test_with_switches_cupys_thread_allocator(host_backed):
    cupy = pytest.importorskip("cupy")
    get = cupy.cuda.memory._get_thread_local_allocator
    ws = host_backed("dev", location="device")
    host = host_backed("host")
    ws2 = host_backed("dev2", location="device")
    before = get()
    with ws:
        inside = get()
        assert inside is not None and inside.__self__ is _gpu.state(ws).allocator
        with wsmem.scope_out():
            assert get() is None                          # CuPy's default inside scope_out
        with host:
            assert get() is None                          # a host workspace: CuPy's default
        with ws2:
            assert get().__self__ is _gpu.state(ws2).allocator   # innermost wins
            with wsmem.scope_out():
                assert get() is None
        assert get() is inside
    assert get() is before

    def user_allocator(size):                             # never called here
        raise AssertionError
    with cupy.cuda.using_allocator(user_allocator):
        with ws:
            assert get().__self__ is _gpu.state(ws).allocator
            with wsmem.scope_out():
                assert get() is user_allocator            # the user's, not CuPy's global
        assert get() is user_allocator


def test_enter_that_fails_leaves_the_workspace_as_it_was(host_backed, monkeypatch):
    # `with` does not call __exit__ when __enter__ raises: a failure while
    # switching CuPy's allocator (or binding the stream) must not leave the
    # cycle open, the depth counted or the frame half pushed.
    ws = host_backed("dev", location="device", learning="over_time")
    host = host_backed("host")
    handler_before = get_handler_name()

    def unchanged():                                      # not a cycle: nothing learned
        st = ws.stats()
        assert (st.cycles, st.initialized, st.capacity, len(ws.history().cycle)) == (0, False, 0, 0)

    def broken(*args):
        raise RuntimeError("CUDA error: out of memory")
    for name in ("push_allocator", "begin_cycle"):
        with monkeypatch.context() as m:
            m.setattr(_gpu, name, broken)
            with pytest.raises(RuntimeError, match="out of memory"):
                with ws:
                    raise AssertionError("the body must not run")
            assert not ws.is_open
            assert wsmem.current_workspace() is None
            assert get_handler_name() == handler_before
        unchanged()
        with host:                                        # nested in another frame
            host_handler = get_handler_name()
            with monkeypatch.context() as m:
                m.setattr(_gpu, name, broken)
                with pytest.raises(RuntimeError, match="out of memory"):
                    with ws:
                        pass
            assert not ws.is_open
            assert wsmem.current_workspace() is host
            assert get_handler_name() == host_handler
            unchanged()
            with ws:                                      # and the stack is intact
                assert wsmem.current_workspace() is ws
            ws.destroy()                                  # a fresh one for the next round
            ws = host_backed("dev", location="device", learning="over_time")
            assert wsmem.current_workspace() is host
        assert wsmem.current_workspace() is None
    with ws:                                              # usable again, one level deep
        b = wsmem.empty(16)
        assert b.nbytes == 128
        assert ws.is_open and wsmem.current_workspace() is ws
    assert not ws.is_open
    st = ws.stats()                                       # the first real cycle learns
    assert st.cycles == 1 and st.initialized and st.capacity >= 128


def test_allocator_refusal_raises_overflow_through_cupy(host_backed):
    ws = host_backed("dev", location="device", initial_size=1 << 20, learning="none",
                     spill="fail")
    alloc = _alloc_fn(ws)
    with ws:
        with pytest.raises(WorkspaceOverflowError, match="spill='fail'") as ei:
            alloc(2 << 20)
        assert ei.value.stats.name == "dev"
        ok = alloc(4096)                                  # still usable
        assert ok.ptr
        del ok


def test_allocator_outside_an_open_cycle_uses_the_heap(host_backed):
    ws = host_backed("dev", location="device", initial_size=1 << 16, learning="none")
    alloc = _alloc_fn(ws)
    m = alloc(4096)                                       # not open: heap fallback
    assert m.ptr
    assert ws.stats().pinned_bytes == 0
    assert _gpu.state(ws).alloc_owner.live_records == 1
    del m
    assert _gpu.state(ws).alloc_owner.live_records == 0


def test_allocations_survive_destroy_and_free_their_records(host_backed):
    ws = host_backed("dev", location="device", initial_size=1 << 16, learning="none")
    alloc = _alloc_fn(ws)
    owner = _gpu.state(ws).alloc_owner
    with ws:
        m = alloc(4096)
        m_ptr = m.ptr
    ws.destroy()
    assert m.ptr == m_ptr
    del m                                                 # frees through the detached context
    assert owner.live_records == 0


def test_learning_cycle_on_device_learns_the_live_need(host_backed):
    ws = host_backed("dev", location="device")
    alloc = _alloc_fn(ws)
    with ws:
        for _ in range(100):
            m = alloc(1 << 20)
            del m
    assert (1 << 20) <= ws.stats().capacity < (4 << 20)


# ---------------------------------------------------------------- real GPU

@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs CuPy and a CUDA device")
class TestOnGPU:
    def test_cupy_allocations_come_from_the_workspace(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device")
        for _ in range(3):
            with ws:
                x = cp.arange(1 << 16, dtype=cp.float32)
                y = x * 2 + 1
                s = float(y.sum())
                del x, y
        st = ws.stats()
        assert s == float(np.sum(np.arange(1 << 16, dtype=np.float32) * 2 + 1))
        assert st.capacity > 0 and st.spilled_count == 0

    def test_zero_copy_both_ways_and_stale_cupy_asarray(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device")
        with ws:
            a = wsmem.zeros((128, 64), dtype=np.float32)
            c = cp.asarray(a)
            assert c.data.ptr == a.ptr
            c += 3
            v = a.cupy()
            assert float(v.sum()) == 3 * 128 * 64
            b = a + 1                                     # a ufunc through CuPy
            assert b.device == "cuda:0" and b.workspace is ws
            assert float(b.cupy().sum()) == 4 * 128 * 64
            del v, b
        with pytest.raises(WorkspaceLeakError):
            cp.asarray(a)
        assert float(c.sum()) == 3 * 128 * 64             # pinned: still intact
        del c, a

    def test_other_stream_waits_for_the_last_cycle(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device", learning="none",
                                      initial_size=64 << 20)
        s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
        with s1:
            with ws:
                x = cp.ones(1 << 22, dtype=cp.float32)
                first = x.data.ptr
                for _ in range(200):
                    cp.multiply(x, 1.0001, out=x)          # keeps s1 busy
                r1 = float(x[:4].sum())
                del x
        with s2:
            with ws:                                       # reuses s1's bytes
                y = cp.zeros(1 << 22, dtype=cp.float32)
                assert y.data.ptr == first
                total = float(y.sum())
                del y
        assert total == 0.0
        assert r1 > 4.0

    def test_asarray_into_device_workspace_and_back(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device")
        host = np.arange(12, dtype=np.float64).reshape(3, 4)
        with ws:
            d = wsmem.asarray(host)
            assert d.device == "cuda:0" and d.workspace is ws
            assert (cp.asnumpy(d.cupy()) == host).all()
            e = d.detach()
            assert e.workspace is None and e.device == "cuda:0"
            del d
        assert (cp.asnumpy(e.cupy()) == host).all()
        h = wsmem.asarray(e)                               # no workspace: a host copy
        assert h.device == "cpu" and (h.numpy() == host).all()
        del e, h

    def test_device_dlpack_to_cupy(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device")
        with ws:
            a = wsmem.full((10,), 7.0)
            c = cp.from_dlpack(a)
            assert c.data.ptr == a.ptr and float(c.sum()) == 70.0
            del c, a

    def test_pinned_array_copies_to_device(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="pinned")
        with ws:
            h = wsmem.full((1 << 20,), 2.0)
            d = cp.asarray(h.numpy())
            assert float(d.sum()) == 2.0 * (1 << 20)
            del h, d
        # CuPy (14.2 seen) keeps the pinned source of its asynchronous copy in
        # its event watcher until the watcher next runs, so the bytes stay
        # pinned (never handed out again under a pending copy) until then.
        # The watcher runs on CuPy's next pinned allocation; after it, nothing
        # may be left pinned.
        cp.cuda.get_current_stream().synchronize()
        cp.cuda.alloc_pinned_memory(1)
        gc.collect()
        assert ws.stats().pinned_bytes == 0

    def test_prefetch_to_device_delivers_cupy_batches_in_order(self):
        import cupy as cp
        items = [(np.full((64, 32), k, dtype=np.float32), k) for k in range(40)]
        seen = []
        kept = []
        with wsmem.prefetch(iter(items), buffer=4, device=0) as it:
            for x, k in it:
                assert isinstance(x, cp.ndarray) and x.device.id == 0
                seen.append((float(x.sum()), k))
                if k % 10 == 0:
                    kept.append(x)                         # pinned: never written over
        assert seen == [(64 * 32 * float(k), k) for k in range(40)]
        assert [float(x[0, 0]) for x in kept] == [0.0, 10.0, 20.0, 30.0]
        del kept

    def test_prefetch_to_device_keeps_fortran_order(self):
        import cupy as cp
        items = [np.asfortranarray(np.arange(12.0).reshape(3, 4) + k) for k in range(6)]
        with wsmem.prefetch(iter(items), buffer=2, device=0) as it:
            for k, x in enumerate(it):
                assert (cp.asnumpy(x) == items[k]).all()

    def test_dlpack_none_stream_means_legacy_default(self, workspace_factory):
        ws = workspace_factory("gpu")(location="device")
        with ws:
            a = wsmem.ones(8)
            cap = a.__dlpack__(stream=None, max_version=(1, 0))
            cap2 = a.__dlpack__(stream=2, max_version=(1, 0))
            del cap, cap2, a

    def test_cycle_binds_its_devices_current_stream_and_leaves_the_device(self,
                                                                          workspace_factory):
        # Frames read the workspace device's current stream by device id
        # (CuPy >= 13), without making that device current and back.
        import cupy as cp
        from wsmem import _gpu
        assert _gpu._stream_by_id_for_tests()
        ws = workspace_factory("gpu")(location="device")
        s = cp.cuda.Stream(non_blocking=True)
        for stream, expect in ((s, s.ptr), (cp.cuda.Stream.null, 1)):
            with stream:
                with ws:
                    a = wsmem.ones(8)
                    assert a.__cuda_array_interface__["stream"] == expect
                    assert cp.cuda.runtime.getDevice() == 0
                    del a
            s.synchronize()

    def test_device_oom_raises_overflow_and_workspace_survives(self, workspace_factory):
        import cupy as cp
        ws = workspace_factory("gpu")(location="device", initial_size=1 << 20,
                                      learning="none")
        free, total = cp.cuda.runtime.memGetInfo()
        with ws:
            with pytest.raises(WorkspaceOverflowError):
                wsmem.empty(total * 4, dtype=np.uint8)
            ok = wsmem.ones(16)
            assert float(ok.cupy().sum()) == 16.0
            del ok
