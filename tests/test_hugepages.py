"""Huge pages for large blocks: from 2 MiB up, 2 MiB aligned, mapped in whole
2 MiB pages and MADV_HUGEPAGE.

Linux only: the kernel reports MADV_HUGEPAGE as the ``hg`` flag of the
mapping in /proc/self/smaps (whether it could back it with huge pages is
another matter: AnonHugePages, which bench/hugepages.py reports).
"""
import os

import numpy as np
import pytest

import wsmem
from wsmem import _pages
from wsmem.benchmarks._env import smaps_of

SMAPS = "/proc/self/smaps"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(SMAPS) and os.path.isdir("/sys/kernel/mm/transparent_hugepage")),
    reason="needs /proc/self/smaps and a kernel with transparent huge pages")


def vm_flags(addr):
    """The VmFlags of the mapping that holds address `addr`."""
    entry = smaps_of(addr)
    assert entry is not None, f"no mapping holds {addr:#x}"
    return entry["VmFlags"].split()


def block_address(ws, nbytes):
    with ws:
        a = np.empty(nbytes // 8)
        addr = a.ctypes.data
        del a
    return addr


def test_large_block_is_advised_and_aligned_small_is_not():
    big = wsmem.Workspace("huge_big", learning="none", initial_size=8 << 20)
    small = wsmem.Workspace("huge_small", learning="none", initial_size=1 << 20)
    assert "hg" in vm_flags(block_address(big, 1 << 20))
    with big:
        a = np.empty(1 << 17)
        assert (a.ctypes.data - 64) % (2 << 20) == 0     # first bump: block start + header
        del a
    assert "hg" not in vm_flags(block_address(small, 1 << 16))
    big.destroy()
    small.destroy()


def test_block_mapping_covers_whole_huge_pages():
    """A 2.6 MiB block (the training step's at rows=64) is mapped to the end
    of its second 2 MiB page, so that the kernel may back that page too; a
    1.5 MiB one is not advised."""
    mid = wsmem.Workspace("huge_mid", learning="none", initial_size=2600 << 10,
                          spill="fail")
    start = block_address(mid, 1 << 20) - 64
    assert start % (2 << 20) == 0
    entry = smaps_of(start)
    assert "hg" in entry["VmFlags"].split()
    assert entry["start"] <= start and entry["end"] >= start + (4 << 20), entry
    cap = mid.stats().capacity
    assert cap < 4 << 20                            # the capacity stays logical
    with mid:                                       # and the bump stops there
        a = np.empty((cap - 64) // 8)
        with pytest.raises(MemoryError):
            np.empty(1)
        del a
    mid.destroy()
    small = wsmem.Workspace("huge_small2", learning="none", initial_size=1536 << 10)
    assert "hg" not in vm_flags(block_address(small, 1 << 16))
    small.destroy()


def test_spill_is_advised_but_not_rounded_to_whole_huge_pages():
    """A spill holds one array, touched to its end: rounding it up would
    fault a whole extra huge page for the array's last bytes."""
    ws = wsmem.Workspace("huge_spill", learning="none", initial_size=1 << 20)
    n = (2560 << 10) // 8                            # 2.5 MiB: spills
    with ws:
        a = np.ones(n)
        assert ws.stats().spilled_count == 1
        entry = smaps_of(a.ctypes.data)
        start = a.ctypes.data - 64
        assert start % (2 << 20) == 0 and "hg" in entry["VmFlags"].split()
        assert entry["end"] == start + (((n * 8 + 64) + 4095) & ~4095), entry
        del a
    ws.destroy()


def test_threshold_hook_turns_advice_off_and_back():
    old = _pages._set_huge_threshold(2 ** 64 - 1)
    try:
        off = wsmem.Workspace("huge_off", learning="none", initial_size=8 << 20)
        assert "hg" not in vm_flags(block_address(off, 1 << 20))
        assert _pages._set_huge_threshold(256 << 10) == 2 ** 64 - 1
        low = wsmem.Workspace("huge_low", learning="none", initial_size=1 << 20)
        assert "hg" in vm_flags(block_address(low, 1 << 16))
    finally:
        assert _pages._set_huge_threshold(old) == 256 << 10
    assert old == 2 << 20
    off.destroy()
    low.destroy()
