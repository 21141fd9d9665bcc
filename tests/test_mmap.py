"""File-backed (mmap) workspaces (after ND4J's SpecialWorkspaceTests/
WorkspaceProviderTests testMmap1, testMmap2 and testMmapedWorkspace*)."""
import gc
import os

import numpy as np
import pytest

import wsmem
from wsmem._arena import PIN_LINE
from wsmem import WorkspaceLeakError

SIZE = 1 << 20


def test_mmap_config_rules(tmp_path):
    with pytest.raises(ValueError, match="learning"):
        wsmem.WorkspaceConfig(location="mmap", initial_size=SIZE)          # first_loop
    with pytest.raises(ValueError, match="learning"):
        wsmem.WorkspaceConfig(location="mmap", initial_size=SIZE, learning="over_time")
    with pytest.raises(ValueError, match="initial_size"):
        wsmem.WorkspaceConfig(location="mmap", learning="none")
    with pytest.raises(ValueError, match="mmap"):
        wsmem.WorkspaceConfig(mmap_path=str(tmp_path / "x.bin"))            # host
    cfg = wsmem.WorkspaceConfig(location=wsmem.Location.MMAP, learning="none",
                                initial_size=SIZE, mmap_path=tmp_path / "p.bin")
    assert cfg.mmap_path == str(tmp_path / "p.bin")                          # fspath'd


def test_mmap_temp_file_workspace():
    ws = wsmem.Workspace("MMAP_TMP", location="mmap", learning="none",
                         initial_size=SIZE, allocation="strict")
    st = ws.stats()
    assert st.location == "mmap"
    assert st.capacity == SIZE
    ptrs = []
    for step in range(3):
        with ws:
            a = wsmem.full(1024, float(step))
            c = a * 2
            assert c.workspace is ws
            assert float(c.sum()) == 2048.0 * step
            ptrs.append((a.ptr, c.ptr))
            assert ws.stats().spilled_count == 0
    assert ptrs[0] == ptrs[1] == ptrs[2]              # cyclic reuse of the mapped block
    assert not a.is_valid
    with pytest.raises(WorkspaceLeakError):
        a.sum()
    ws.destroy()
    assert ws.stats().capacity == 0


def test_mmap_overallocate_applies_to_initial_size():
    ws = wsmem.Workspace("MMAP_OA", location="mmap", learning="none",
                         initial_size=SIZE, overallocation_limit=0.5)
    assert ws.stats().capacity == int(SIZE * 1.5)
    ws.destroy()


def test_mmap_path_data_visible_in_file(tmp_path):
    path = tmp_path / "ws.bin"
    ws = wsmem.Workspace("MMAP_FILE", location="mmap", learning="none",
                         initial_size=SIZE, allocation="strict", mmap_path=str(path))
    assert path.exists()
    assert os.path.getsize(path) >= SIZE
    with ws:
        a = wsmem.empty(256, dtype=np.int64)
        a[:] = np.arange(256) * 7 + 3
        b = wsmem.empty(16, dtype=np.uint8)
        b[:] = 0xAB
        off_b = b.ptr - a.ptr
    on_disk = np.fromfile(path, dtype=np.uint8, count=SIZE)
    assert np.array_equal(on_disk[:2048].view(np.int64), np.arange(256) * 7 + 3)
    assert (on_disk[off_b:off_b + 16] == 0xAB).all()
    # the next cycle reuses (and overwrites) the same file bytes
    with ws:
        c = wsmem.zeros(256, dtype=np.int64)
        assert float(c.sum()) == 0.0
    on_disk = np.fromfile(path, dtype=np.int64, count=256)
    assert (on_disk == 0).all()
    ws.destroy()
    assert path.exists()                            # a given path is the user's file


def test_mmap_spill_and_max_size(tmp_path):
    ws = wsmem.Workspace("MMAP_SPILL", location="mmap", learning="none",
                         initial_size=4096, allocation="strict",
                         mmap_path=str(tmp_path / "s.bin"))
    with ws:
        a = wsmem.ones(512)                           # the whole block
        b = wsmem.ones(512)                           # spills to anonymous memory
        st = ws.stats()
        assert st.spilled_count == 1 and st.spilled_bytes == 4096
        assert float((a + b).sum()) == 1024.0
    assert ws.stats().pages == 1
    ws.destroy()


def test_mmap_view_keeps_mapping_after_destroy(tmp_path):
    path = tmp_path / "v.bin"
    ws = wsmem.Workspace("MMAP_VIEW", location="mmap", learning="none",
                         initial_size=SIZE, mmap_path=str(path))
    with ws:
        v = np.asarray(wsmem.full(8, 6.0))
    ws.destroy()
    assert (v == 6.0).all()
    assert ws.stats().pinned_bytes == PIN_LINE       # 64 bytes: one line
    del v
    gc.collect()
    assert ws.stats().pinned_bytes == 0
    assert ws.stats().pages == 0


def test_mmap_workspace_in_registry(tmp_path):
    cfg = wsmem.WorkspaceConfig(location="mmap", learning="none", initial_size=SIZE,
                                mmap_path=str(tmp_path / "r.bin"))
    ws = wsmem.get_workspace("MMAP_REG", cfg)
    assert wsmem.get_workspace("MMAP_REG", cfg) is ws
    with ws:
        assert float(wsmem.ones(10).sum()) == 10.0


def test_mmap_refuses_reallocate_policy(tmp_path):
    # A file-backed block maps the file at offset 0: a regrown block would
    # alias the old one, which live views may still read.  So it cannot grow.
    with pytest.raises(ValueError, match="fixed size"):
        wsmem.WorkspaceConfig(location="mmap", learning="none", initial_size=4096,
                              spill="reallocate", mmap_path=str(tmp_path / "g.bin"))


@pytest.mark.parametrize("named", [True, False])
def test_mmap_block_is_never_remapped_under_a_pinned_view(tmp_path, named):
    # Memory safety rule 1: a view of the block must never see later cycles'
    # writes, and nothing may map the file a second time over it.
    kw = {"mmap_path": str(tmp_path / "grow.bin")} if named else {}
    ws = wsmem.Workspace("MMAP_FIXED", location="mmap", learning="none", initial_size=4096,
                         allocation="strict", spill="external", **kw)
    with ws:
        v = np.asarray(wsmem.full(8, 5.0))
        wsmem.empty(8192, dtype=np.uint8)             # spills; the block keeps its size
    try:
        assert ws.stats().capacity == 4096
        with pytest.raises(wsmem.WorkspaceError, match="cannot be resized"):
            ws.initialize()
        assert ws.stats().capacity == 4096
        for _ in range(3):
            with ws:
                b = wsmem.full(400, -1.0)             # fills the block around the pin
                assert float(b[0]) == -1.0
        seen = v.tolist()
    finally:
        del v
        gc.collect()
    ws.destroy()
    assert seen == [5.0] * 8
