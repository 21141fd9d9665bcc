"""Out of memory: max_size, spill='fail', a failing mmap (RLIMIT_AS) and a
failing cudaMalloc raise WorkspaceOverflowError carrying the workspace's
stats; the workspace stays usable and no memory is lost."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import wsmem
from wsmem import WorkspaceOverflowError, WorkspaceStats

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(wsmem.__file__)))


def _check_error(exc, ws):
    assert isinstance(exc, MemoryError)                 # what NumPy users catch
    assert isinstance(exc.stats, WorkspaceStats)
    assert exc.stats.name == ws.name
    assert ws.name in str(exc)


def test_max_size_overflow_carries_stats_and_workspace_goes_on(workspace_factory):
    ws = workspace_factory("OOM_MAX")(learning="none", initial_size=MiB,
                                      allocation="strict", max_size=2 * MiB)
    baseline = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rep in range(200):
            _overflow_cycle(ws)
            s = ws.stats()
            if baseline is None:
                baseline = s.pages
            assert s.pages == baseline == 1, s               # spills released, nothing kept
            assert s.pinned_bytes == 0
    assert ws.stats().cycles == 200
    # a 0.5 MiB spill in every cycle: wsmem says once that the block is too small
    perf = [w for w in caught if issubclass(w.category, wsmem.PerformanceWarning)]
    assert len(perf) == 1 and "OOM_MAX" in str(perf[0].message), [str(w.message) for w in caught]
    assert len(caught) == 1


def _overflow_cycle(ws):
    """One cycle: fill the block, spill 0.5 MiB, overflow max_size, go on."""
    with ws:
        a = wsmem.full(MiB // 8, 1.0)                # fills the block
        b = wsmem.full(MiB // 16, 2.0)               # spills (block + 0.5 MiB <= 2 MiB)
        with pytest.raises(WorkspaceOverflowError, match="max_size") as info:
            wsmem.empty(MiB // 8)                     # 1 MiB more: over max_size
        _check_error(info.value, ws)
        st = info.value.stats
        assert st.capacity == MiB and st.is_open
        assert st.spilled_bytes == MiB // 2 and st.spilled_count == 1
        # the same cycle goes on: earlier arrays intact, smaller requests served
        c = wsmem.full(MiB // 32, 3.0)
        assert float(a.sum()) == MiB // 8 and float(b.sum()) == MiB // 8
        assert float(c.sum()) == 3 * (MiB // 32)


def test_spill_fail_overflow(workspace_factory):
    ws = workspace_factory("OOM_FAIL")(learning="none", initial_size=64 * 1024,
                                       spill="fail")
    with ws:
        a = wsmem.full(1000, 1.0)
        with pytest.raises(WorkspaceOverflowError, match="spill='fail'") as info:
            wsmem.empty(64 * 1024)
        _check_error(info.value, ws)
        assert info.value.stats.offset == 8000 and info.value.stats.spilled_count == 0
        assert float(a.sum()) == 1000.0
        b = wsmem.ones(100)
        assert float(b.sum()) == 100.0
    with ws:
        assert float(wsmem.full(8000, 1.0).sum()) == 8000.0
    assert ws.stats().spilled_count == 0


def test_captured_numpy_allocation_over_max_size(workspace_factory):
    ws = workspace_factory("OOM_CAPTURE")(learning="none", initial_size=MiB,
                                          allocation="strict", max_size=MiB)
    with ws:
        x = wsmem.full(1000, 2.0)
        with pytest.raises(MemoryError):
            np.ones(2 * MiB)                             # plain NumPy: NumPy's MemoryError
        y = np.ones(1000)                                 # captured
        big = wsmem.empty(MiB // 8 - 2200)                # nearly all that is left
        with pytest.raises(WorkspaceOverflowError) as info:
            x + y                                         # op on a WsArray: ours, with stats
        _check_error(info.value, ws)
        del big
        assert float(x.sum()) == 2000.0 and float(y.sum()) == 1000.0   # intact
        del y                                             # its pin goes with it
    with ws:
        assert float((wsmem.full(1000, 1.0) + np.ones(1000)).sum()) == 2000.0
    assert ws.stats().pinned_bytes == 0


def test_absurd_size_refused_by_the_system(workspace_factory):
    # 64 TiB: more than this machine's memory and swap, below the 2**62 sanity
    # limit, so the request reaches mmap (heuristic overcommit refuses it).
    with open("/proc/sys/vm/overcommit_memory") as f:
        overcommit = f.read().strip()
    if overcommit == "1":
        pytest.skip("vm.overcommit_memory=1 accepts any mapping")
    ws = workspace_factory("OOM_ABSURD")(learning="none", initial_size=MiB)
    with ws:
        a = wsmem.full(100, 1.0)
        with pytest.raises(WorkspaceOverflowError, match="the system refused") as info:
            wsmem.empty(64 << 40, dtype=np.uint8)
        _check_error(info.value, ws)
        assert info.value.stats.pages == 1
        assert float(a.sum()) == 100.0
        assert float(wsmem.full(100, 2.0).sum()) == 200.0
    assert ws.stats().pages == 1


_RLIMIT_SCRIPT = r'''
import resource, sys
import numpy as np, wsmem

def vm_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

MiB = 1 << 20
ws = wsmem.Workspace("OOM_RLIMIT", learning="none", initial_size=4 * MiB)
with ws:                                   # touch the block once
    wsmem.zeros(4 * MiB // 8)
# Address space: what is mapped now plus 64 MiB.  Any 256 MiB spill fails.
limit = vm_kib("VmSize:") * 1024 + 64 * MiB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
failures = 0
rss = []
for i in range(N):
    with ws:
        a = wsmem.full(1000, float(i))
        try:
            wsmem.empty(256 * MiB // 8)    # spill: mmap fails with ENOMEM
        except wsmem.WorkspaceOverflowError as exc:
            assert exc.stats.name == "OOM_RLIMIT" and exc.stats.is_open, exc.stats
            assert "the system refused" in str(exc), exc
            failures += 1
        b = wsmem.full(1000, 1.0)          # the cycle goes on
        c = np.ones(1000) + a              # captured allocations too
        assert float(c[999]) == i + 1.0 and float(b.sum()) == 1000.0
    if i in (N // 10, N - 1):
        rss.append(vm_kib("VmRSS:"))
s = ws.stats()
assert s.pages == 1 and s.pinned_bytes == 0, s
print(failures, rss[0], rss[1], s.cycles)
'''


def test_failing_mmap_under_rlimit_as_loses_nothing():
    n = 20000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    if "LD_PRELOAD" in env and "asan" in env["LD_PRELOAD"]:
        pytest.skip("ASan reserves terabytes of shadow address space: RLIMIT_AS cannot apply")
    proc = subprocess.run([sys.executable, "-c", f"N = {n}\n" + _RLIMIT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    failures, rss_early, rss_end, cycles = map(int, proc.stdout.split())
    assert failures == n and cycles == n + 1
    # 18,000 failed spills after the early sample: a leaked block header
    # (~150 B) or page (4 KiB) each would show as 2.6 MiB or 70 MiB.
    assert rss_end - rss_early < 1024, (rss_early, rss_end)
    assert proc.stderr == ""


@pytest.mark.gpu
def test_failing_cuda_malloc_raises_overflow_with_stats():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:            # noqa: BLE001 - no driver, no device
        pytest.skip(f"no CUDA device ({type(exc).__name__})")
    ws = wsmem.Workspace("OOM_DEVICE", location="device", learning="none",
                         initial_size=MiB)
    free, total = cupy.cuda.runtime.memGetInfo()
    try:
        with ws:
            a = wsmem.full(1000, 1.0)
            with pytest.raises(WorkspaceOverflowError) as info:
                wsmem.empty(2 * total, dtype=np.uint8)       # more than the device has
            _check_error(info.value, ws)
            assert float(a.sum()) == 1000.0
        with ws:
            assert float(wsmem.full(1000, 2.0).sum()) == 2000.0
        assert ws.stats().pinned_bytes == 0
        assert cupy.cuda.runtime.memGetInfo()[0] >= free - 64 * MiB
    finally:
        ws.destroy()
