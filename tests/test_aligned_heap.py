"""wsmem.aligned_heap(): NumPy's arrays outside workspaces on cache lines.

A NEP 49 handler over malloc: 64-byte aligned data from 256 bytes up, a
16-byte header, NumPy's small-block cache kept, calloc's lazy zero pages
kept, frees from any thread, per-context like every NumPy handler.
"""
import asyncio
import contextvars
import gc
import os
import threading

import numpy as np
import pytest
from numpy._core.multiarray import get_handler_name

import wsmem
from wsmem import WorkspaceError

HEAP = "wsmem:aligned_heap"
DEFAULT = "default_allocator"


def owner(arr):
    """The ndarray that owns `arr`'s memory (walks views' bases)."""
    while isinstance(arr, np.ndarray) and not arr.flags.owndata:
        arr = arr.base
    assert isinstance(arr, np.ndarray), type(arr)
    return arr


def in_fresh_context(fn, *args):
    """Run fn in a copy of the current context (a plain call leaves no trace)."""
    return contextvars.copy_context().run(fn, *args)


@pytest.mark.parametrize("nbytes", [0, 1, 8, 100, 255, 256, 257, 1000, 1023, 1024, 4096,
                                    100_000, 1 << 20, (4 << 20) + 8])
def test_sizes_alignment_and_data(nbytes):
    with wsmem.aligned_heap():
        a = np.empty(nbytes, np.uint8)
        z = np.zeros(nbytes, np.uint8)
    assert get_handler_name(a) == HEAP and get_handler_name(z) == HEAP
    if nbytes >= 256:
        assert a.ctypes.data % 64 == 0 and z.ctypes.data % 64 == 0
    else:
        assert a.ctypes.data % 16 == 0 and z.ctypes.data % 16 == 0
    assert not z.any()
    a[...] = np.arange(nbytes) % 251
    assert np.array_equal(a, np.arange(nbytes) % 251)


def test_typical_arrays_are_aligned_where_glibc_is_not():
    with wsmem.aligned_heap():
        w = np.ones((256, 1024))
        x = np.random.default_rng(0).standard_normal((8, 256))
        y = x @ w
    for arr in (w, x, y):
        assert arr.ctypes.data % 64 == 0, hex(arr.ctypes.data)
    assert np.allclose(y, x.sum(axis=1, keepdims=True) * np.ones((1, 1024)))


def test_small_block_cache_reuses_and_zeroes():
    with wsmem.aligned_heap():
        a = np.full(40, 7, np.uint8)
        addr = a.ctypes.data
        del a
        b = np.zeros(40, np.uint8)           # same size: the cached block, zeroed
        assert b.ctypes.data == addr
        assert not b.any()
        c = np.empty(41, np.uint8)           # another size: another block
        assert c.ctypes.data != addr


@pytest.mark.parametrize("old,new", [(10, 20), (20, 10), (10, 5000), (5000, 10),
                                     (5000, 9000), (9000, 5000), (1 << 20, 3 << 20),
                                     (3 << 20, 1 << 18), (300, 256), (256, 255)])
def test_resize_keeps_data_and_alignment(old, new):
    with wsmem.aligned_heap():
        a = np.arange(old, dtype=np.uint8)
        a.resize(new, refcheck=False)        # ndarray.resize: the handler's realloc
    keep = min(old, new)
    assert np.array_equal(a[:keep], np.arange(keep, dtype=np.uint8))
    if new > old:
        assert not a[old:].any()             # NumPy zero-fills the grown part
    assert a.ctypes.data % (64 if new >= 256 else 16) == 0
    assert get_handler_name(a) == HEAP


def test_context_manager_restores_default():
    assert not wsmem.heap_is_aligned()
    with wsmem.aligned_heap() as h:
        assert h.enabled and wsmem.heap_is_aligned()
        assert get_handler_name() == HEAP
        with wsmem.aligned_heap(False):
            assert not wsmem.heap_is_aligned() and get_handler_name() == DEFAULT
        assert get_handler_name() == HEAP
    assert not wsmem.heap_is_aligned() and get_handler_name() == DEFAULT
    assert repr(h) == "wsmem.aligned_heap(enabled=True)"


def test_plain_call_lasts_for_the_context():
    def body():
        wsmem.aligned_heap()
        return wsmem.heap_is_aligned(), get_handler_name(np.ones(1000))
    assert in_fresh_context(body) == (True, HEAP)
    assert not wsmem.heap_is_aligned() and get_handler_name() == DEFAULT


def test_workspace_inside_captures_and_restores_aligned_heap(ws):
    with wsmem.aligned_heap():
        with ws:
            t = np.ones(1000)
            assert get_handler_name(t) == f"wsmem:{ws.name}"
            assert t.ctypes.data % 64 == 0
            del t
            with wsmem.scope_out():          # the plain heap of this context
                kept = np.ones(1000)
            d = wsmem.ones(500).detach()     # detach copies to the heap too
        assert get_handler_name() == HEAP
        after = np.ones(1000)
    assert get_handler_name(kept) == HEAP and kept.ctypes.data % 64 == 0
    assert get_handler_name(owner(d.numpy())) == HEAP
    assert d.ptr % 64 == 0
    assert get_handler_name(after) == HEAP
    assert kept.sum() == 1000 and np.asarray(d).sum() == 500


def test_refused_inside_a_workspace_or_scope_out(ws):
    with ws:
        with pytest.raises(WorkspaceError, match="outside every `with ws:`"):
            wsmem.aligned_heap()
        assert get_handler_name() == f"wsmem:{ws.name}"     # nothing changed
        with wsmem.scope_out():
            with pytest.raises(WorkspaceError, match="scope_out"):
                wsmem.aligned_heap(False)
    assert not wsmem.heap_is_aligned()


def test_leaving_with_a_workspace_still_open_is_refused(ws):
    h = wsmem.aligned_heap()
    try:
        h.__enter__()
        ws.__enter__()
        with pytest.raises(WorkspaceError, match="close the blocks"):
            h.__exit__(None, None, None)
        assert get_handler_name() == f"wsmem:{ws.name}"     # capture untouched
    finally:
        ws.__exit__(None, None, None)
        h.__exit__(None, None, None)
    assert not wsmem.heap_is_aligned() and get_handler_name() == DEFAULT


@pytest.mark.parametrize("bad", [1, 0, None, "yes", np.True_])
def test_enabled_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="True or False"):
        wsmem.aligned_heap(bad)
    assert not wsmem.heap_is_aligned()


def test_per_thread_and_per_task():
    seen = {}

    def thread_body():
        seen["thread"] = (wsmem.heap_is_aligned(), get_handler_name(np.ones(1000)))

    async def task_body(name):
        seen[name] = (wsmem.heap_is_aligned(), get_handler_name(np.ones(1000)))

    async def main():
        wsmem.aligned_heap()                 # this task's context only
        await asyncio.create_task(task_body("child task"))   # copies the context
        seen["main task"] = wsmem.heap_is_aligned()

    with wsmem.aligned_heap():
        t = threading.Thread(target=thread_body)
        t.start()
        t.join()
    asyncio.run(main())
    assert seen["thread"] == (False, DEFAULT)   # a new thread starts with NumPy's default
    assert seen["child task"] == (True, HEAP)
    assert seen["main task"] is True
    assert not wsmem.heap_is_aligned()


def test_freed_from_other_threads_and_after_the_context():
    with wsmem.aligned_heap():
        arrays = [np.full(n, i, np.int64) for i, n in enumerate((3, 40, 300, 5000, 70000))]
    small_cached = [np.ones(10) for _ in range(3)]   # default handler, for contrast
    errors = []

    def drop(lst):
        try:
            for a in lst:
                assert a.all() or a.size == 3
            lst.clear()
            gc.collect()
        except Exception as e:            # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=drop, args=(arrays,))
    t.start()
    t.join()
    assert not errors and arrays == []
    # the cache and malloc still serve correct memory afterwards
    with wsmem.aligned_heap():
        again = [np.full(n, 9, np.int64) for n in (3, 40, 300, 5000, 70000)]
    assert all((a == 9).all() for a in again)
    del small_cached


def test_many_threads_allocate_and_free_concurrently():
    errors = []

    def work(seed):
        try:
            with wsmem.aligned_heap():
                rng = np.random.default_rng(seed)
                for _ in range(300):
                    n = int(rng.integers(1, 3000))
                    a = np.full(n, seed, np.int32)
                    assert a.ctypes.data % (64 if 4 * n >= 256 else 16) == 0
                    assert (a == seed).all()
        except Exception as e:            # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(os.environ.get("WSMEM_UNDER_VALGRIND") == "1",
                    reason="valgrind's calloc writes every byte; lazy zero pages are glibc's")
def test_big_zeros_stay_lazy():
    """calloc underneath: a 256 MiB np.zeros touches no more of its pages than
    NumPy's own does (almost none on glibc; a preloaded mimalloc 2.0.9
    touches them all in either case)."""
    import resource

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (resource.getpagesize() // 1024)

    before = rss_kib()
    plain = np.zeros(256 << 20, np.uint8)
    plain_grown = rss_kib() - before
    del plain
    with wsmem.aligned_heap():
        before = rss_kib()
        z = np.zeros(256 << 20, np.uint8)
        grown = rss_kib() - before
    assert z.ctypes.data % 64 == 0
    assert grown < plain_grown + (16 << 10), \
        f"np.zeros touched {grown} KiB of 256 MiB, NumPy's own {plain_grown} KiB"
    if not os.environ.get("LD_PRELOAD"):        # the C library's calloc is lazy
        assert grown < 16 << 10, f"np.zeros touched {grown} KiB of 256 MiB"
    assert z[::1 << 20].sum() == 0


def test_resize_that_moves_the_block_keeps_every_byte():
    """Grown blocks that realloc must move land at a new alignment offset;
    the data moves to the aligned spot before the new header is written."""
    rng = np.random.default_rng(7)
    with wsmem.aligned_heap():
        for _ in range(300):
            n0 = int(rng.integers(256, 20000))
            a = (np.arange(n0) % 251).astype(np.uint8)
            blocker = np.empty(int(rng.integers(256, 4000)), np.uint8)   # no room to grow in place
            n1 = n0 + int(rng.integers(1, 30000))
            a.resize(n1, refcheck=False)
            assert a.ctypes.data % 64 == 0
            assert np.array_equal(a[:n0], np.arange(n0) % 251), (n0, n1)
            assert not a[n0:].any()
            del blocker
