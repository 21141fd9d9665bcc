"""NumPy's ufunc buffers on page boundaries: the hook on Python's raw allocator
(wsmem.align_ufunc_buffers; bench/ufunc_buffers.py measures what it is for)."""
import ctypes
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import wsmem
from wsmem import _capture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_raw_malloc = ctypes.pythonapi.PyMem_RawMalloc
_raw_malloc.restype, _raw_malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
_raw_realloc = ctypes.pythonapi.PyMem_RawRealloc
_raw_realloc.restype = ctypes.c_void_p
_raw_realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_raw_free = ctypes.pythonapi.PyMem_RawFree
_raw_free.restype, _raw_free.argtypes = None, [ctypes.c_void_p]


def _python(code, flags=(), **env):
    """Run `code` in a fresh interpreter (options `flags`) with the checkout
    importable."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.pop("WSMEM_ALIGN_BUFFERS", None)
    full.update(env)
    r = subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], env=full,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _need_hook():
    # Where this interpreter refuses the hook by design (-X dev, a debug
    # PYTHONMALLOC, tracemalloc); test_debug_allocators_are_left_alone checks
    # the refusal itself.
    why = _capture._raw_refusal()
    if why is not None:
        pytest.skip(f"the raw-allocator hook is refused by design here ({why})")


@pytest.fixture
def aligned():
    """The hook on for the test (as a capturing workspace leaves it), then
    as it was."""
    _need_hook()
    was = wsmem.align_ufunc_buffers(True)
    yield
    wsmem.align_ufunc_buffers(was)


def test_large_raw_allocations_are_page_aligned_and_work(aligned):
    assert wsmem.ufunc_buffers_aligned()
    blocks = [_raw_malloc(n) for n in (32768, 65280, 65536, 1 << 20)]
    try:
        assert all(p and p % 4096 == 0 for p in blocks)
        for p, n in zip(blocks, (32768, 65280, 65536, 1 << 20)):
            ctypes.memset(p, 0x5A, n)              # all of it is ours to write
        # realloc (the wrapped allocator's) keeps the bytes of an aligned block
        grown = _raw_realloc(blocks[1], 200_000)
        assert grown
        blocks[1] = grown
        assert ctypes.string_at(grown, 65280) == b"\x5a" * 65280
        shrunk = _raw_realloc(blocks[2], 100)
        assert shrunk
        blocks[2] = shrunk
        assert ctypes.string_at(shrunk, 100) == b"\x5a" * 100
    finally:
        for p in blocks:
            _raw_free(p)
    small = _raw_malloc(100)            # below 32 KiB: the wrapped allocator's
    assert small
    ctypes.memset(small, 1, 100)
    _raw_free(small)


def test_buffered_ufuncs_give_the_same_results_aligned_or_not(ws):
    rng = np.random.default_rng(5)
    u = rng.standard_normal((300, 300))

    def stencil():
        au = 4 * u
        au[1:, :] -= u[:-1, :]
        au[:, 1:] -= u[:, :-1]
        au[:, :-1] -= u[:, 1:]
        return au.copy()

    _need_hook()
    was = wsmem.align_ufunc_buffers(False)
    try:
        plain = stencil()
        wsmem.align_ufunc_buffers(True)
        with ws:
            inside = stencil()
    finally:
        wsmem.align_ufunc_buffers(was)
    np.testing.assert_array_equal(inside, plain)


def test_first_capturing_workspace_turns_it_on_unless_told_not_to():
    code = """
        import wsmem
        before = wsmem.ufunc_buffers_aligned()
        wsmem.Workspace("no_capture", capture=False)
        mid = wsmem.ufunc_buffers_aligned()
        wsmem.Workspace("capture")
        print(before, mid, wsmem.ufunc_buffers_aligned())
    """
    assert _python(code) == ["False", "False", "True"]
    assert _python(code, WSMEM_ALIGN_BUFFERS="0") == ["False", "False", "False"]


def test_an_explicit_choice_outlasts_the_first_workspace():
    assert _python("""
        import wsmem
        print(wsmem.align_ufunc_buffers(False))
        wsmem.Workspace("capture")
        print(wsmem.ufunc_buffers_aligned(), wsmem.align_ufunc_buffers(True),
              wsmem.ufunc_buffers_aligned(), wsmem.align_ufunc_buffers(False),
              wsmem.ufunc_buffers_aligned())
    """) == ["False", "False", "False", "True", "True", "False"]


def test_tracemalloc_over_the_hook_is_refused_clearly_and_changes_nothing():
    out = _python("""
        import tracemalloc, numpy as np, wsmem
        wsmem.align_ufunc_buffers(True)
        tracemalloc.start()                       # wraps wsmem's hook: fine
        a = np.ones((200, 200)); a[:, 1:] -= a[:, :-1]
        try:
            wsmem.align_ufunc_buffers(False)
        except RuntimeError as e:
            print("refused:", "tracemalloc.stop()" in str(e), wsmem.ufunc_buffers_aligned())
        tracemalloc.stop()
        print("off:", wsmem.align_ufunc_buffers(False), wsmem.ufunc_buffers_aligned())
        tracemalloc.start()
        try:
            wsmem.align_ufunc_buffers(True)
        except RuntimeError as e:
            print("refused:", "tracemalloc is tracing" in str(e), wsmem.ufunc_buffers_aligned())
        tracemalloc.stop()
    """)
    assert out == ["refused:", "True", "True", "off:", "True", "False",
                   "refused:", "True", "False"]


@pytest.mark.parametrize("flags, env, reason", [
    ((), {"PYTHONMALLOC": "malloc_debug"}, "PYTHONMALLOC=malloc_debug"),
    # -X dev installs Python's debug hooks on every allocator domain
    (("-X", "dev"), {"PYTHONMALLOC": ""}, "-X dev"),
])
def test_debug_allocators_are_left_alone(flags, env, reason):
    out = _python(f"""
        import wsmem
        wsmem.Workspace("capture")                 # quietly not installed
        print(wsmem.ufunc_buffers_aligned())
        try:
            wsmem.align_ufunc_buffers(True)
        except RuntimeError as e:
            print({reason!r} in str(e), wsmem.ufunc_buffers_aligned())
    """, flags, **env)
    assert out == ["False", "True", "False"]


# ---------------------------------------------------------------- the hook's block cache
# (docs/design.md, "What the hook keeps"; bench/raw_cache.py measures it)


@pytest.fixture
def cache(aligned):
    """The hook and its block cache on, the calling thread's cache empty."""
    was = _capture._set_raw_cache(False)           # gives this thread's blocks back
    _capture._set_raw_cache(True)
    yield
    _capture._set_raw_cache(was)


_usable = ctypes.CDLL(None).malloc_usable_size
_usable.restype, _usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
_PRELOADED = bool(os.environ.get("LD_PRELOAD"))


def _held():
    """Blocks the calling thread's cache holds now."""
    info = _capture._raw_cache_info()
    return info["small"] + info["big"]


def _kept(u, p):
    """Whether the cache keeps a freed block of usable size u at p (its rule,
    design.md "What the hook keeps"): small classes of 256 bytes from 1,280
    to 4,351 usable bytes; aligned blocks of 32 KiB to 640 KiB."""
    return 1280 <= u < 17 * 256 or (32768 <= u <= 655360 and p % 4096 == 0)


def _serves(u, m):
    """Whether a kept block of usable size u serves a request of m bytes."""
    if 1033 <= m <= 4096:
        return u < 17 * 256 and 0 <= u // 256 - -(-m // 256) <= 3
    return 32768 <= m <= 524288 and m <= u <= m + m // 4


@pytest.mark.parametrize("n, m", [(1104, 1104), (1104, 1280), (3000, 2900), (1800, 1104),
                                  (40000, 40000), (65536, 64080), (1 << 19, 450_000)])
def test_a_freed_block_serves_the_next_request_of_its_size(cache, n, m):
    p = _raw_malloc(n)
    assert p
    ctypes.memset(p, 0x33, n)
    u = _usable(p)
    _raw_free(p)
    before = _capture._raw_cache_info()
    assert before["small"] + before["big"] == _kept(u, p)
    q = _raw_malloc(m)
    try:
        hit = _capture._raw_cache_info()["hits"] == before["hits"] + 1
        # glibc's usable sizes make every case a hit; another malloc's
        # rounding may not, but the rule is the same
        assert hit == (_kept(u, p) and _serves(u, m))
        assert hit or _PRELOADED
        if hit:
            assert q == p                            # the same block, from the cache
        if m >= 32768:
            assert q % 4096 == 0
        ctypes.memset(q, 0x44, m)                   # all m bytes are the caller's
        grown = _raw_realloc(q, 3 * m)              # a cached block is malloc's own
        assert grown
        q = grown
        assert ctypes.string_at(q, m) == b"\x44" * m
    finally:
        _raw_free(q)


@pytest.mark.parametrize("n, m", [(65536, 40000), (2300, 1100), (2000, 5000), (1 << 19, 1 << 20)])
def test_a_cached_block_is_not_used_for_another_class(cache, n, m):
    # 40000 would waste over 1/4 of the 64 KiB block; 1,100 (class 5) is
    # more than 3 classes below 2,300's block (class 9); 5,000 and 1 MiB are
    # outside what the cache serves
    p = _raw_malloc(n)
    _raw_free(p)
    before = _capture._raw_cache_info()
    q = _raw_malloc(m)
    try:
        assert q
        ctypes.memset(q, 0x55, m)
        after = _capture._raw_cache_info()
        assert after["hits"] == before["hits"]       # a miss: the cached block stays
        assert after["small"] + after["big"] == before["small"] + before["big"]
    finally:
        _raw_free(q)


def test_the_cache_is_bounded(cache):
    small = [_raw_malloc(2000) for _ in range(40)]
    big = [_raw_malloc(300_000) for _ in range(20)]
    assert all(small) and all(big)
    for p in small + big:
        _raw_free(p)
    info = _capture._raw_cache_info()
    assert info["small"] == 8                        # one class, 8 deep: the rest freed
    assert 1 <= info["big"] <= 8
    assert info["bytes"] <= (1 << 20) + 8 * 2304     # 1 MiB of aligned blocks at most


def test_turning_it_off_gives_the_blocks_back(cache):
    for p in [_raw_malloc(n) for n in (1500, 2500, 50000)]:
        _raw_free(p)
    assert _held() == 3
    assert _capture._set_raw_cache(False) is True
    try:
        assert _held() == 0
        hits = _capture._raw_cache_info()["hits"]
        p = _raw_malloc(1500)
        _raw_free(p)
        assert _raw_malloc(1500) != 0                # (freed below by the allocator)
        info = _capture._raw_cache_info()
        assert info["hits"] == hits and info["small"] == 0
    finally:
        _capture._set_raw_cache(True)


def test_removing_the_hook_gives_the_blocks_back(cache):
    for p in [_raw_malloc(n) for n in (1500, 50000)]:
        _raw_free(p)
    assert _held() == 2
    wsmem.align_ufunc_buffers(False)
    try:
        info = _capture._raw_cache_info()
        assert info["small"] + info["big"] == 0 and info["bytes"] == 0
    finally:
        wsmem.align_ufunc_buffers(True)


def test_a_thread_gives_its_cached_blocks_back_when_it_exits(cache):
    import threading
    # allocated here, freed there: they join the other thread's cache
    mine = [_raw_malloc(n) for n in (1500, 1500, 3000, 40000, 64080)]
    held = {}

    def worker():
        for p in mine:
            _raw_free(p)
        for _ in range(50):                          # its own traffic, served by its cache
            q = _raw_malloc(1400)
            ctypes.memset(q, 1, 1400)
            _raw_free(q)
        held.update(_capture._raw_cache_info())

    before = _capture._raw_cache_info()["exit_freed"]
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    # (the thread's own start and Python's frees may add blocks of those sizes)
    assert held["small"] >= 3 and held["big"] >= 2 and held["hits"] >= 50
    # its exit gives them all to free() (another thread's exit in between may
    # add): the key's destructor runs when the pthread exits, which may be a
    # little after join() returns (Python's part of the thread is done then)
    want = before + held["small"] + held["big"]
    deadline = time.monotonic() + 10
    while _capture._raw_cache_info()["exit_freed"] < want and time.monotonic() < deadline:
        time.sleep(0.001)
    assert _capture._raw_cache_info()["exit_freed"] >= want
    assert _held() == 0


def test_numpy_under_the_cache_in_many_threads_gets_right_answers(cache):
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(9)
    u = rng.standard_normal((120, 120))
    want = 4 * u
    want[:, 1:] -= u[:, :-1]
    want[:, :-1] -= u[:, 1:]

    def stencil(_):
        for _ in range(30):
            au = 4 * u
            au[:, 1:] -= u[:, :-1]                  # buffered: iterators and buffers
            au[:, :-1] -= u[:, 1:]
            if not np.array_equal(au, want):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(stencil, range(16)))
