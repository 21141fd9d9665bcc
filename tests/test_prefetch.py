"""wsmem.prefetch / wsmem.shield (DL4J's AsyncDataSetIterator / AsyncShieldDataSetIterator).

Contract under test (DESIGN.md, "Training-loop toolkit"): batches keep the
loader's structure with every array copied into a circular workspace; a
batch is valid (and unchanged) until `buffer` more items have been taken,
then raises WorkspaceLeakError; loader exceptions arrive at their item;
close / exhaustion / break + GC / consumer exceptions / interpreter exit stop
the thread, release every pin and destroy the ring.
"""
import collections
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceError, WorkspaceLeakError, WsArray

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("wsmem-prefetch-")]


def _wait_no_prefetch_threads(timeout=10.0):
    """True once every prefetch thread has ended (polls up to `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _prefetch_threads():
            return True
        time.sleep(0.005)
    return not _prefetch_threads()


@pytest.fixture(autouse=True)
def _no_prefetch_thread_left():
    """Every test starts without prefetch threads and must leave none behind."""
    assert _wait_no_prefetch_threads(), "a previous test left a prefetch thread running"
    before = set(threading.enumerate())
    yield
    gc.collect()
    assert _wait_no_prefetch_threads(), f"prefetch thread still running: {_prefetch_threads()}"
    deadline = time.monotonic() + 10
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not set(threading.enumerate()) - before


def _counting(n=None, shape=(16,), dtype=np.float64):
    """Loader: item i is an array full of i (forever when n is None)."""
    i = 0
    while n is None or i < n:
        yield np.full(shape, i, dtype=dtype)
        i += 1


def _is_stale(arr):
    """arr is stale: is_valid is False and every use raises WorkspaceLeakError."""
    if arr.is_valid:
        return False
    for use in (np.asarray, lambda a: a.sum(), lambda a: a[0], lambda a: memoryview(a)):
        with pytest.raises(WorkspaceLeakError):
            use(arr)
    return True


# ------------------------------------------------------------------ structures

def test_array_items_values_dtypes_layouts():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 6))
    items = [
        base.astype(np.float32),
        base[::2, 1::2],                        # non-contiguous view
        np.asfortranarray(base),                # Fortran order
        (base > 0),                             # bool
        (base * 1j + base).astype(np.complex128),
        np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        np.array(3.5),                          # 0-d
        np.zeros((0, 5), dtype=np.int64),       # empty
        np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "i4"), ("b", "f8")]),  # structured
        [1.0, 2.0],                             # a list of floats: a container of scalars
    ]
    with wsmem.prefetch(iter(items), buffer=len(items)) as it:
        for src, batch in zip(items, it):
            if isinstance(src, list):
                assert batch == src and type(batch) is list
                continue
            assert isinstance(batch, WsArray)
            assert batch.shape == src.shape and batch.dtype == src.dtype
            assert np.array_equal(np.asarray(batch), src)
            view = np.asarray(batch)
            assert not np.shares_memory(view, src), "prefetch must copy"
            del view
            assert batch.workspace.config.reset is wsmem.ResetPolicy.ENDOFBUFFER_REACHED


def test_structures_and_non_array_leaves():
    Pair = collections.namedtuple("Pair", "x y")
    tag = object()
    label = "label"

    def loader():
        for i in range(4):
            x = np.full((3, 2), i, dtype=np.float32)
            y = np.arange(5) + i
            yield {"x": x, "meta": {"id": i, "name": label, "tag": tag, "none": None},
                   "pair": Pair(x * 2, [y, (y + 1, 7)]), "scalar": np.float64(i),
                   "objs": np.array([tag, None], dtype=object)}

    expected = list(loader())
    with wsmem.prefetch(loader(), buffer=4) as it:
        for exp, batch in zip(expected, it):
            assert type(batch) is dict and list(batch) == list(exp)
            assert isinstance(batch["x"], WsArray)
            assert np.array_equal(batch["x"], exp["x"])
            meta = batch["meta"]
            assert meta["id"] == exp["meta"]["id"] and meta["name"] is label
            assert meta["tag"] is tag and meta["none"] is None
            pair = batch["pair"]
            assert type(pair) is Pair
            assert isinstance(pair.x, WsArray) and np.array_equal(pair.x, exp["pair"].x)
            assert type(pair.y) is list and isinstance(pair.y[1], tuple)
            assert np.array_equal(pair.y[0], exp["pair"].y[0])
            assert np.array_equal(pair.y[1][0], exp["pair"].y[1][0])
            assert pair.y[1][1] == 7
            assert isinstance(batch["scalar"], np.float64) and batch["scalar"] == exp["scalar"]
            # arrays of Python objects cannot live in raw memory: passed through
            assert isinstance(batch["objs"], np.ndarray) and batch["objs"][0] is tag


def test_tuple_and_list_items():
    def loader():
        for i in range(5):
            yield (np.full(4, i), np.full((2, 2), -i, dtype=np.int32))
            yield [np.full(3, i, dtype=np.uint8), i]

    with wsmem.prefetch(loader(), buffer=2) as it:
        for i in range(5):
            t = next(it)
            assert type(t) is tuple and len(t) == 2
            assert np.array_equal(t[0], np.full(4, i))
            assert np.array_equal(t[1], np.full((2, 2), -i, dtype=np.int32))
            lst = next(it)
            assert type(lst) is list and lst[1] == i
            assert np.array_equal(lst[0], np.full(3, i, dtype=np.uint8))
        with pytest.raises(StopIteration):
            next(it)


def test_copy_taken_when_the_loader_yields():
    """A loader that refills one buffer in place: each batch keeps its own values."""
    buf = np.zeros(64)

    def loader():
        for i in range(20):
            buf[:] = i
            yield buf

    with wsmem.prefetch(loader(), buffer=3) as it:
        for i, batch in enumerate(it):
            assert np.all(np.asarray(batch) == i)


def test_array_likes_are_copied():
    class Like:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    src = np.arange(10.0)
    with wsmem.prefetch([Like(src)], buffer=1) as it:
        b = next(it)
        assert isinstance(b, WsArray) and np.array_equal(b, src)


def test_empty_loader_and_items_without_arrays():
    assert list(wsmem.prefetch([], buffer=3)) == []
    items = [1, "two", (3, None), {"k": 4.0}]
    assert list(wsmem.prefetch(items, buffer=1)) == items


# ------------------------------------------------------------------ validity window

def _check_window(held, j, buffer, expected, read=np.asarray):
    """After taking item j: items j-buffer+1..j valid and unchanged, older stale.

    Validity is checked for the whole window before any value is read:
    reading through an export pins the bytes, which changes what the ring
    does next (``read=lambda a: a.detach().numpy()`` reads without a pin).
    """
    def arrays_of(batch):
        if isinstance(batch, WsArray):
            return [batch]
        return [a for a in batch if isinstance(a, WsArray)]

    for k, batch in held.items():
        if j - k < buffer:
            for a in arrays_of(batch):
                assert a.is_valid, f"item {k} stale after {j - k} more items (buffer {buffer})"
    if read is None:
        return
    for k, batch in held.items():
        if j - k < buffer:
            for a, e in zip(arrays_of(batch), expected[k]):
                assert np.array_equal(read(a), e), f"item {k} changed while valid"
        else:
            for a in arrays_of(batch):
                assert _is_stale(a), f"item {k} still valid after {j - k} more items"


@pytest.mark.parametrize("buffer", [1, 2, 3, 8])
def test_validity_window_is_exact(buffer):
    expected = {}

    def loader():
        for i in range(4 * buffer + 6):
            x = np.full(100, i, dtype=np.float64)
            y = np.arange(37, dtype=np.int32) * (i + 1)
            expected[i] = (x.copy(), y.copy())
            yield (x, y)

    held = {}
    with wsmem.prefetch(loader(), buffer=buffer) as it:
        for j, batch in enumerate(it):
            held[j] = batch
            _check_window(held, j, buffer, expected)


@pytest.mark.parametrize("read", ["validity_only", "values"])
@pytest.mark.parametrize("buffer", [1, 2, 4])
@pytest.mark.parametrize("n", [100, 4096, 12500])
def test_validity_window_steady_state(buffer, n, read):
    """Many equal items (the ring wraps many times): the window holds at every step.

    "validity_only" never exports a batch (a consumer that only passes
    batches on); "values" also reads every batch in the window.
    """
    expected = {}

    def loader():
        for i in range(120):
            x = np.random.default_rng(i).standard_normal(n)
            expected[i] = (x.copy(),)
            yield (x,)

    held = {}
    with wsmem.prefetch(loader(), buffer=buffer) as it:
        for j, batch in enumerate(it):
            # a consumer slower than the loader: the producer is as far ahead as it gets
            deadline = time.monotonic() + 2
            while it._chan.queue.qsize() < min(buffer, 119 - j) and time.monotonic() < deadline:
                time.sleep(0.0005)
            held[j] = batch
            _check_window(held, j, buffer, expected,
                          read=None if read == "validity_only" else np.asarray)
            held.pop(j - buffer - 2, None)


def test_validity_window_with_items_that_have_no_arrays():
    """Items without arrays still count as items taken."""
    buffer = 2
    items = [np.full(8, 0.0), 1, 2, np.full(8, 3.0), "x", np.full(8, 5.0), 6, 7]
    with wsmem.prefetch(items, buffer=buffer) as it:
        b0 = next(it)
        assert next(it) == 1
        assert b0.is_valid and np.all(np.asarray(b0) == 0)     # 1 more taken
        assert next(it) == 2
        assert _is_stale(b0)                                   # 2 more taken
        b3 = next(it)
        assert next(it) == "x"
        assert np.all(np.asarray(b3) == 3)
        b5 = next(it)
        assert _is_stale(b3)
        assert np.all(np.asarray(b5) == 5)
        assert next(it) == 6
        assert b5.is_valid
        assert next(it) == 7
        assert _is_stale(b5)


def test_export_keeps_its_bytes_after_the_window():
    """A NumPy view taken from a batch pins its bytes: never overwritten, even stale."""
    with wsmem.prefetch(_counting(shape=(256,)), buffer=2) as it:
        b0 = next(it)
        view = np.asarray(b0)
        for _ in range(50):
            next(it)
        assert _is_stale(b0)
        assert np.all(view == 0), "the ring wrote over bytes a live export pins"
        del view


def test_ring_does_not_grow_for_equal_items():
    with wsmem.prefetch(_counting(shape=(1000,)), buffer=4) as it:
        first = next(it)
        ring = first.workspace
        for _ in range(5):
            next(it)
        cap = ring.stats().capacity
        for _ in range(200):
            last = next(it)
        assert last.workspace is ring
        assert ring.stats().capacity == cap


def test_variable_length_batches_grow_the_ring():
    sizes = [10, 10, 50, 20, 400, 400, 3000, 5, 20000, 20000, 100, 70000, 3]
    expected = {}

    def loader():
        for i, n in enumerate(sizes):
            x = np.arange(n, dtype=np.float64) + i
            expected[i] = (x.copy(), np.full(3, i).copy())
            yield (x, np.full(3, i))

    buffer = 3
    held = {}
    with wsmem.prefetch(loader(), buffer=buffer) as it:
        for j, batch in enumerate(it):
            held[j] = batch
            _check_window(held, j, buffer, expected)
        assert j == len(sizes) - 1


# ------------------------------------------------------------------ exceptions

class LoaderFailed(Exception):
    pass


@pytest.mark.parametrize("k", [0, 1, 5, 12])
@pytest.mark.parametrize("buffer", [1, 4])
def test_loader_exception_arrives_at_its_item(k, buffer):
    error = LoaderFailed(f"bad item {k}")

    def failing_loader():
        for i in range(k):
            yield np.full(10, i)
        raise error

    it = wsmem.prefetch(failing_loader(), buffer=buffer)
    for i in range(k):
        assert np.all(np.asarray(next(it)) == i)
    with pytest.raises(LoaderFailed) as info:
        next(it)
    assert info.value is error
    names = [f.name for f in info.traceback]
    assert "failing_loader" in names, names
    with pytest.raises(StopIteration):
        next(it)
    assert not _prefetch_threads(), "the error closed the iterator"
    del info


def test_copy_failure_arrives_at_its_item():
    """An item that cannot be copied (its __array__ raises) fails at that item."""
    class Broken:
        def __array__(self, dtype=None, copy=None):
            raise OSError("cannot read this batch")

    items = [np.ones(3), (np.zeros(2), Broken()), np.ones(3)]
    it = wsmem.prefetch(items, buffer=2)
    assert float(next(it).sum()) == 3.0
    with pytest.raises(OSError, match="cannot read"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_loader_exception_before_the_consumer_asks():
    """The error waits behind the items before it, even when raised long before."""
    def loader():
        yield np.ones(4)
        yield np.ones(4) * 2
        raise KeyError("late")

    it = wsmem.prefetch(loader(), buffer=8)
    time.sleep(0.2)
    assert float(next(it).sum()) == 4.0
    assert float(next(it).sum()) == 8.0
    with pytest.raises(KeyError, match="late"):
        next(it)


# ------------------------------------------------------------------ stopping

def test_close_stops_thread_and_invalidates_batches():
    it = wsmem.prefetch(_counting(), buffer=3)
    b = next(it)
    ring = b.workspace
    assert len(_prefetch_threads()) == 1
    it.close()
    assert not _prefetch_threads(), "close() returns after the thread ended"
    assert ring.is_destroyed
    assert _is_stale(b)
    it.close()                               # idempotent
    with pytest.raises(StopIteration):
        next(it)


def test_close_without_taking_anything():
    it = wsmem.prefetch(_counting(), buffer=2)
    time.sleep(0.05)
    it.close()
    assert not _prefetch_threads()


def test_exhaustion_stops_thread_and_destroys_ring():
    it = wsmem.prefetch(_counting(5), buffer=2)
    batches = list(it)
    assert len(batches) == 5
    assert not _prefetch_threads()
    assert batches[-1].workspace.is_destroyed
    assert all(not b.is_valid for b in batches)


def test_context_manager_closes():
    with wsmem.prefetch(_counting(), buffer=2) as it:
        b = next(it)
        assert b.is_valid
    assert not _prefetch_threads()
    assert _is_stale(b)


def test_break_and_garbage_collection_stop_thread():
    for i, batch in enumerate(wsmem.prefetch(_counting(), buffer=4)):
        if i == 3:
            break
    gc.collect()
    assert _wait_no_prefetch_threads(5)
    assert _is_stale(batch)


def test_abandoned_iterator_stops_thread():
    it = wsmem.prefetch(_counting(), buffer=2)
    next(it)
    del it
    assert _wait_no_prefetch_threads(5)


def test_iterator_in_reference_cycle_is_collected():
    holder = {}
    it = wsmem.prefetch(_counting(), buffer=2)
    holder["it"] = it
    holder["self"] = holder
    next(it)
    del it, holder
    gc.collect()
    assert _wait_no_prefetch_threads(5)


def test_consumer_exception_stops_thread():
    def train():
        for i, batch in enumerate(wsmem.prefetch(_counting(), buffer=4)):
            if i == 2:
                raise ArithmeticError("consumer failed")

    with pytest.raises(ArithmeticError):
        train()
    gc.collect()
    assert _wait_no_prefetch_threads(5)


def test_close_while_loader_is_slow():
    def slow():
        for i in range(1000):
            time.sleep(0.02)
            yield np.full(4, i)

    it = wsmem.prefetch(slow(), buffer=2)
    next(it)
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 2.0
    assert not _prefetch_threads()


def test_thread_does_not_keep_iterator_alive():
    import weakref
    it = wsmem.prefetch(_counting(), buffer=2)
    next(it)
    ref = weakref.ref(it)
    del it
    assert ref() is None, "something (the thread?) keeps the iterator alive"
    assert _wait_no_prefetch_threads(5)


_EXIT_SCRIPTS = {
    "running_full_queue": """
        it = wsmem.prefetch((np.full(1000, i) for i in iter(int, 1)), buffer=4)
        b = next(it)
        time.sleep(0.1)
    """,
    "slow_loader": """
        def slow():
            while True:
                time.sleep(0.05)
                yield np.ones(10)
        it = wsmem.prefetch(slow(), buffer=2)
        b = next(it)
    """,
    "consumer_holds_exports": """
        it = wsmem.prefetch((np.full(100, i) for i in range(10**6)), buffer=2)
        kept = [next(it) for _ in range(5)]
        views = [np.asarray(kept[-1]), np.asarray(kept[-2])]
    """,
    "loader_error_not_consumed": """
        def bad():
            yield np.ones(3)
            raise ValueError("never consumed")
        it = wsmem.prefetch(bad(), buffer=2)
        time.sleep(0.1)
    """,
    "never_iterated": """
        it = wsmem.prefetch([np.ones(3)] * 100, buffer=1)
    """,
}


@pytest.mark.parametrize("scenario", sorted(_EXIT_SCRIPTS))
def test_interpreter_exit_with_running_prefetch(scenario):
    script = "import time\nimport numpy as np\nimport wsmem\n" + \
        textwrap.dedent(_EXIT_SCRIPTS[scenario]) + "print('done')\n"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == "", proc.stderr
    assert time.monotonic() - t0 < 20


# ------------------------------------------------------------------ races

def test_races_many_short_runs():
    """200 short runs: every batch equals the loader's item for its whole window."""
    master = np.random.default_rng(1234)
    for run in range(200):
        buffer = int(master.integers(1, 5))
        n = int(master.integers(0, 30))
        grow = bool(master.integers(0, 2))
        seed = int(master.integers(0, 2**31))
        expected = {}

        def loader(n=n, seed=seed, grow=grow, expected=expected):
            rng = np.random.default_rng(seed)
            for i in range(n):
                m = int(rng.integers(1, 400 if grow else 6000)) * (i + 1 if grow else 1)
                x = rng.integers(0, 2**63 - 1, size=m, dtype=np.int64)
                y = rng.standard_normal(int(rng.integers(1, 50))).astype(np.float32)
                expected[i] = (x.copy(), y.copy())
                yield (x, {"y": y, "i": i})

        held = collections.deque()
        count = 0
        with wsmem.prefetch(loader(), buffer=buffer) as it:
            for j, (x, d) in enumerate(it):
                assert d["i"] == j
                held.append((j, x, d["y"]))
                while held[0][0] <= j - buffer:
                    k, ox, oy = held.popleft()
                    assert not ox.is_valid and not oy.is_valid, (run, k, j)
                for k, hx, hy in held:
                    ex, ey = expected[k]
                    assert np.array_equal(np.asarray(hx), ex), (run, buffer, k, j)
                    assert np.array_equal(np.asarray(hy), ey), (run, buffer, k, j)
                if j % 3 == 0:
                    time.sleep(0)
                count += 1
        assert count == n, (run, count, n)
    assert _wait_no_prefetch_threads(10)


# ------------------------------------------------------------------ arguments

@pytest.mark.parametrize("bad", [0, -1])
def test_buffer_must_be_positive(bad):
    with pytest.raises(ValueError, match="buffer"):
        wsmem.prefetch([], buffer=bad)
    with pytest.raises(ValueError, match="buffer"):
        wsmem.prefetch(wsmem.shield([]), buffer=bad)


@pytest.mark.parametrize("bad", [True, False, 1.5, "2", None, 2.0])
def test_buffer_must_be_an_int(bad):
    with pytest.raises(TypeError, match="buffer"):
        wsmem.prefetch([], buffer=bad)


def test_buffer_accepts_numpy_int():
    it = wsmem.prefetch([np.ones(2)], buffer=np.int64(2))
    assert it.buffer == 2 and type(it.buffer) is int
    it.close()


def test_not_iterable():
    with pytest.raises(TypeError):
        wsmem.prefetch(42)
    assert not _prefetch_threads()


def test_device_without_cupy_raises_workspace_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy -> ImportError
    with pytest.raises(WorkspaceError, match="CuPy"):
        wsmem.prefetch(_counting(3), device=0)
    assert not _prefetch_threads()


def test_device_beyond_the_visible_ones(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(WorkspaceError, match="no CUDA device 3"):
        wsmem.prefetch(_counting(3), device=3)
    assert not _prefetch_threads()


def test_device_with_cupy_but_no_cuda(monkeypatch):
    def no_cuda():
        raise RuntimeError("cudaErrorNoDevice")
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_cuda))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(WorkspaceError, match="CUDA device"):
        wsmem.prefetch(_counting(3), device=0)


def test_device_on_this_machine():
    try:
        import cupy
    except Exception:
        with pytest.raises(WorkspaceError, match="CuPy"):
            wsmem.prefetch([], device=0)
        return
    try:
        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        has_gpu = False
    if has_gpu:
        pytest.skip("a GPU is present: tests/test_gpu.py runs prefetch(device=0)")
    with pytest.raises(WorkspaceError, match="CUDA"):
        wsmem.prefetch([], device=0)


@pytest.mark.parametrize("bad", [True, -1, "cuda:0", 0.0])
def test_device_must_be_an_int(bad):
    with pytest.raises(TypeError, match="device"):
        wsmem.prefetch([], device=bad)


# ------------------------------------------------------------------ shield

def test_shield_yields_items_as_they_are():
    items = [np.arange(5), (np.ones(3), {"k": np.zeros(2)}), 7]
    before = threading.active_count()
    it = wsmem.prefetch(wsmem.shield(items), buffer=2)
    assert threading.active_count() == before, "shield must not start a thread"
    got = list(it)
    assert len(got) == 3
    assert got[0] is items[0]
    assert got[1] is items[1] and got[1][1]["k"] is items[1][1]["k"]
    assert got[2] == 7
    assert np.shares_memory(got[0], items[0])
    assert threading.active_count() == before


def test_shield_with_generator_no_copies():
    buf = np.zeros(10)

    def loader():
        for i in range(3):
            buf[:] = i
            yield buf

    with wsmem.prefetch(wsmem.shield(loader())) as it:
        for i, b in enumerate(it):
            assert b is buf and b[0] == i        # the loader's array, not a copy


def test_shield_iterated_directly():
    s = wsmem.shield(range(4))
    assert list(s) == [0, 1, 2, 3]
    assert list(s) == [0, 1, 2, 3]            # an iterable, not a one-shot iterator
    assert len(s) == 4
    assert wsmem.shield(s) is s


def test_shielded_iterator_close():
    it = wsmem.prefetch(wsmem.shield(iter(range(10))))
    assert next(it) == 0
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    with wsmem.prefetch(wsmem.shield([1, 2])) as it2:
        assert list(it2) == [1, 2]
