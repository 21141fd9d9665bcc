"""WorkspaceMgr, ArrayType, WorkspaceMode (after DL4J's LayerWorkspaceMgr and
WorkspaceTests: per-type workspaces, scoped-out types, validateArrayLocation)."""
import threading
import warnings

import numpy as np
import pytest

import wsmem
from threadutil import run_in_thread
from wsmem import ArrayType, WorkspaceError, WorkspaceLeakError, WorkspaceMgr, WorkspaceMode

CFG = wsmem.WorkspaceConfig()
CFG_SMALL = wsmem.WorkspaceConfig(initial_size=4096, learning="none")


def _mgr():
    return WorkspaceMgr({ArrayType.ACTIVATIONS: ("T_ACT", CFG),
                         ArrayType.ACTIVATION_GRAD: ("T_ACT", CFG),
                         ArrayType.FF_WORKING_MEM: ("T_WORK", CFG_SMALL)},
                        scoped_out={ArrayType.INPUT})


# ------------------------------------------------------------------ enums

def test_array_type_has_nd4j_members():
    assert {t.name for t in ArrayType} == {
        "INPUT", "ACTIVATIONS", "ACTIVATION_GRAD", "FF_WORKING_MEM", "BP_WORKING_MEM",
        "RNN_FF_LOOP_WORKING_MEM", "RNN_BP_LOOP_WORKING_MEM", "UPDATER_WORKING_MEM",
        "FF_CACHE"}
    assert wsmem.ArrayType is ArrayType
    for name in ("ArrayType", "WorkspaceMgr", "WorkspaceMode", "set_gc_window",
                 "toggle_periodic_gc"):
        assert name in wsmem.__all__


def test_workspace_mode_members_and_values():
    assert list(WorkspaceMode) == [WorkspaceMode.NONE, WorkspaceMode.ENABLED]
    assert WorkspaceMode("none") is WorkspaceMode.NONE
    assert WorkspaceMode("ENABLED") is WorkspaceMode.ENABLED
    assert WorkspaceMode["ENABLED"] is WorkspaceMode.ENABLED
    with pytest.raises(ValueError):
        WorkspaceMode("sometimes")
    with pytest.raises(KeyError):
        WorkspaceMode["SOMETIMES"]


@pytest.mark.parametrize("name", ["SINGLE", "SEPARATE"])
def test_deprecated_modes_warn_on_every_path(name):
    with pytest.warns(DeprecationWarning, match=f"WorkspaceMode.{name} is deprecated") as rec:
        mode = getattr(WorkspaceMode, name)
    assert mode is WorkspaceMode.ENABLED
    # the warning points at the caller, not at enum.py or _mgr.py
    assert rec[0].filename == __file__
    with pytest.warns(DeprecationWarning, match=name):
        assert WorkspaceMode[name] is WorkspaceMode.ENABLED
    with pytest.warns(DeprecationWarning, match=name):
        assert WorkspaceMode(name.lower()) is WorkspaceMode.ENABLED
    with pytest.warns(DeprecationWarning, match=name) as rec:
        mgr = WorkspaceMgr.for_mode(name.lower())
    assert rec[0].filename == __file__
    assert mgr.workspace_name(ArrayType.ACTIVATIONS) == "WS_LAYER_ACT"
    with pytest.warns(DeprecationWarning, match=name):
        mgr = WorkspaceMgr.for_mode(getattr(WorkspaceMode, name))
    assert mgr.workspace_name(ArrayType.FF_WORKING_MEM) == "WS_LAYER_WORKING_MEM"


def test_non_deprecated_modes_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WorkspaceMode.ENABLED is WorkspaceMode("enabled")
        WorkspaceMgr.for_mode(WorkspaceMode.ENABLED)
        WorkspaceMgr.for_mode("none")
        assert "SINGLE" not in [m.name for m in WorkspaceMode]


# ------------------------------------------------------------------ construction

def test_for_mode_enabled_layout():
    mgr = WorkspaceMgr.for_mode(WorkspaceMode.ENABLED)
    assert mgr.workspace_name(ArrayType.ACTIVATIONS) == "WS_LAYER_ACT"
    assert mgr.workspace_name(ArrayType.ACTIVATION_GRAD) == "WS_LAYER_ACT"
    assert mgr.workspace_name(ArrayType.FF_WORKING_MEM) == "WS_LAYER_WORKING_MEM"
    assert mgr.workspace_name(ArrayType.BP_WORKING_MEM) == "WS_LAYER_WORKING_MEM"
    rnn = {mgr.workspace_name(ArrayType.RNN_FF_LOOP_WORKING_MEM),
           mgr.workspace_name(ArrayType.RNN_BP_LOOP_WORKING_MEM)}
    assert len(rnn) == 1 and rnn.isdisjoint({"WS_LAYER_ACT", "WS_LAYER_WORKING_MEM"})
    assert mgr.workspace_name(ArrayType.UPDATER_WORKING_MEM) == "WS_UPDATER_WORKING_MEM"
    assert mgr.is_scoped_out(ArrayType.INPUT)
    assert mgr.workspace_name(ArrayType.INPUT) is None
    for t in ArrayType:   # every type is configured one way or the other
        assert mgr.is_scoped_out(t) or mgr.workspace_name(t)
    cfg = mgr.workspace_config(ArrayType.ACTIVATIONS)
    assert cfg.learning is wsmem.LearningPolicy.FIRST_LOOP
    assert cfg.spill is wsmem.SpillPolicy.EXTERNAL
    # each call gives an independent manager
    mgr.set_scoped_out(ArrayType.ACTIVATIONS)
    assert not WorkspaceMgr.for_mode("enabled").is_scoped_out(ArrayType.ACTIVATIONS)


def test_for_mode_none_and_no_workspaces():
    for mgr in (WorkspaceMgr.no_workspaces(), WorkspaceMgr.for_mode(WorkspaceMode.NONE)):
        for t in ArrayType:
            assert mgr.is_scoped_out(t)
            assert mgr.workspace_name(t) is None
    mgr = WorkspaceMgr.no_workspaces()
    with wsmem.Workspace("T_OUTER") as outer:
        with mgr.scope(ArrayType.ACTIVATIONS) as ws:
            assert ws is None and wsmem.current_workspace() is None
            assert wsmem.empty(3).workspace is None
        a = mgr.create(ArrayType.FF_WORKING_MEM, 4)
        assert wsmem.current_workspace() is outer
    assert a.workspace is None and a.is_valid
    mgr.validate_array_location(ArrayType.FF_WORKING_MEM, a)
    outer.destroy()


def test_for_mode_bad_input():
    with pytest.raises(TypeError, match="WorkspaceMode"):
        WorkspaceMgr.for_mode(1)
    with pytest.raises(ValueError, match="not a workspace mode"):
        WorkspaceMgr.for_mode("sometimes")


def test_constructor_bad_input():
    with pytest.raises(TypeError, match="ArrayType"):
        WorkspaceMgr({"activations": ("A", CFG)})
    with pytest.raises(TypeError, match="dict"):
        WorkspaceMgr([(ArrayType.ACTIVATIONS, ("A", CFG))])
    with pytest.raises(TypeError, match=r"\(name, WorkspaceConfig\) tuple"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: "A"})
    with pytest.raises(TypeError, match=r"\(name, WorkspaceConfig\) tuple"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: ("A", CFG, 3)})
    with pytest.raises(TypeError, match="WorkspaceConfig"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: ("A", {"spill": "fail"})})
    with pytest.raises(TypeError, match="must be a str"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: (7, CFG)})
    with pytest.raises(ValueError, match="must not be empty"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: ("", CFG)})
    with pytest.raises(ValueError, match="both mapped .* and scoped out"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: ("A", CFG)}, scoped_out={ArrayType.ACTIVATIONS})
    with pytest.raises(ValueError, match="different config"):
        WorkspaceMgr({ArrayType.ACTIVATIONS: ("A", CFG),
                      ArrayType.ACTIVATION_GRAD: ("A", CFG_SMALL)})
    with pytest.raises(TypeError, match="ArrayType"):
        WorkspaceMgr({}, scoped_out={"input"})
    with pytest.raises(TypeError, match="set"):
        WorkspaceMgr({}, scoped_out=ArrayType.INPUT)
    with pytest.raises(TypeError, match="set"):
        WorkspaceMgr({}, scoped_out="INPUT")
    # equal configs under one name are fine; None means the default config
    mgr = WorkspaceMgr({ArrayType.ACTIVATIONS: ("A", wsmem.WorkspaceConfig()),
                        ArrayType.ACTIVATION_GRAD: ("A", None)})
    assert mgr.workspace_config(ArrayType.ACTIVATION_GRAD) == CFG
    empty = WorkspaceMgr()          # valid, but every type is unconfigured
    with pytest.raises(ValueError, match="no workspace"):
        empty.workspace_name(ArrayType.INPUT)


def test_setters_and_queries():
    mgr = _mgr()
    assert mgr.workspace_name(ArrayType.ACTIVATIONS) == "T_ACT"
    assert not mgr.is_scoped_out(ArrayType.ACTIVATIONS)
    assert mgr.is_scoped_out(ArrayType.INPUT)
    assert mgr.workspace_config(ArrayType.FF_WORKING_MEM) == CFG_SMALL
    mgr.set_scoped_out(ArrayType.ACTIVATIONS)
    assert mgr.is_scoped_out(ArrayType.ACTIVATIONS)
    assert mgr.workspace_name(ArrayType.ACTIVATIONS) is None
    assert mgr.workspace_name(ArrayType.ACTIVATION_GRAD) == "T_ACT"
    mgr.set_workspace(ArrayType.INPUT, "T_IN", CFG_SMALL)
    assert not mgr.is_scoped_out(ArrayType.INPUT)
    assert mgr.workspace_name(ArrayType.INPUT) == "T_IN"
    # reassigning the only user of a name may change its config
    mgr.set_workspace(ArrayType.INPUT, "T_IN", CFG)
    assert mgr.workspace_config(ArrayType.INPUT) == CFG
    with pytest.raises(ValueError, match="T_ACT.*different config"):
        mgr.set_workspace(ArrayType.BP_WORKING_MEM, "T_ACT", CFG_SMALL)
    assert "BP_WORKING_MEM" not in repr(mgr)   # the failed call changed nothing
    mgr.set_workspace(ArrayType.BP_WORKING_MEM, "T_ACT", CFG)
    assert mgr.workspace_name(ArrayType.BP_WORKING_MEM) == "T_ACT"
    r = repr(mgr)
    assert "T_ACT" in r and "T_IN" in r and "ACTIVATIONS" in r
    with pytest.raises(TypeError, match="ArrayType"):
        mgr.set_workspace("INPUT", "X", CFG)
    with pytest.raises(TypeError, match="ArrayType"):
        mgr.set_scoped_out(None)
    with pytest.raises(TypeError, match="WorkspaceConfig"):
        mgr.set_workspace(ArrayType.INPUT, "X", "strict")


def test_unconfigured_and_unknown_types():
    mgr = _mgr()
    for call in (lambda t: mgr.scope(t), lambda t: mgr.create(t, 3),
                 lambda t: mgr.workspace_name(t), lambda t: mgr.is_workspace_open(t),
                 lambda t: mgr.leverage_to(t, wsmem.zeros(2)),
                 lambda t: mgr.validate_array_location(t, wsmem.zeros(2))):
        with pytest.raises(ValueError, match=r"ArrayType.UPDATER_WORKING_MEM has no "
                                             r"workspace.*set_workspace.*set_scoped_out"):
            call(ArrayType.UPDATER_WORKING_MEM)
        for bad in ("activations", 3, None, ["x"]):
            with pytest.raises(TypeError, match="ArrayType"):
                call(bad)
    with pytest.raises(TypeError, match="ArrayType"):
        mgr.is_scoped_out("input")


# ------------------------------------------------------------------ scopes and create

def test_scope_opens_this_threads_registered_workspace():
    mgr = _mgr()
    with mgr.scope(ArrayType.ACTIVATIONS) as ws:
        assert ws is wsmem.get_workspace("T_ACT", CFG)
        assert wsmem.current_workspace() is ws and ws.is_open
        assert mgr.is_workspace_open(ArrayType.ACTIVATIONS)
        assert mgr.workspace(ArrayType.ACTIVATION_GRAD) is ws
        a = mgr.create(ArrayType.ACTIVATIONS, (8, 4), np.float32)
        assert a.workspace is ws and a.shape == (8, 4) and a.dtype == np.float32
        f = mgr.create(ArrayType.ACTIVATION_GRAD, (3, 5), order="F")
        assert f.dtype == np.float64 and f.numpy().flags.f_contiguous
    assert not a.is_valid and not ws.is_open
    assert not mgr.is_workspace_open(ArrayType.ACTIVATIONS)
    assert mgr.is_workspace_open(ArrayType.INPUT)      # the heap is always open
    assert mgr.workspace(ArrayType.INPUT) is None


def test_create_needs_open_workspace():
    mgr = _mgr()
    with pytest.raises(WorkspaceError,
                       match=r"ArrayType.ACTIVATIONS.*'T_ACT' is not open.*"
                             r"mgr.scope\(ArrayType.ACTIVATIONS\)"):
        mgr.create(ArrayType.ACTIVATIONS, 4)
    # an open workspace of another type does not help
    with mgr.scope(ArrayType.FF_WORKING_MEM):
        with pytest.raises(WorkspaceError, match="'T_ACT' is not open"):
            mgr.create(ArrayType.ACTIVATIONS, 4)
    # nor does a destroyed one
    with mgr.scope(ArrayType.ACTIVATIONS) as ws:
        pass
    ws.destroy()
    with pytest.raises(WorkspaceError, match="'T_ACT' is not open"):
        mgr.create(ArrayType.ACTIVATIONS, 4)
    # bad shapes/dtypes are NumPy's errors
    with mgr.scope(ArrayType.ACTIVATIONS):
        with pytest.raises((TypeError, ValueError)):
            mgr.create(ArrayType.ACTIVATIONS, (2, -1))
        with pytest.raises(TypeError):
            mgr.create(ArrayType.ACTIVATIONS, 2, dtype="not-a-dtype")


def test_create_goes_to_its_workspace_not_the_innermost():
    mgr = _mgr()
    with mgr.scope(ArrayType.ACTIVATIONS) as act_ws:
        with mgr.scope(ArrayType.FF_WORKING_MEM) as work_ws:
            assert wsmem.current_workspace() is work_ws
            a = mgr.create(ArrayType.ACTIVATIONS, 16)
            w = mgr.create(ArrayType.FF_WORKING_MEM, 16)
            i = mgr.create(ArrayType.INPUT, 16)
            assert wsmem.current_workspace() is work_ws     # create changes nothing
        assert a.workspace is act_ws and a.is_valid
        assert w.workspace is work_ws and not w.is_valid
        assert i.workspace is None and i.is_valid
        a.fill(2.0)
        assert float(a.numpy().sum()) == 32.0


def test_scoped_out_scope_is_heap_inside_a_workspace():
    mgr = _mgr()
    with mgr.scope(ArrayType.ACTIVATIONS) as ws:
        with mgr.scope(ArrayType.INPUT) as none:
            assert none is None
            assert wsmem.current_workspace() is None
            x = wsmem.ones(5)
        assert wsmem.current_workspace() is ws
    assert x.workspace is None and x.is_valid and float(x.numpy().sum()) == 5.0


def test_scope_reenters_open_workspace_without_reset():
    mgr = _mgr()
    with mgr.scope(ArrayType.ACTIVATIONS) as ws:
        gen = ws.stats().generation
        a = mgr.create(ArrayType.ACTIVATIONS, 64)
        a.fill(7.0)
        with mgr.scope(ArrayType.FF_WORKING_MEM):
            # ACTIVATION_GRAD shares T_ACT: its scope re-enters, no new cycle
            with mgr.scope(ArrayType.ACTIVATION_GRAD) as again:
                assert again is ws and wsmem.current_workspace() is ws
                assert ws.stats().generation == gen
                g = wsmem.zeros(64)          # innermost is T_ACT again
                assert g.workspace is ws
            assert wsmem.current_workspace() is not ws
        assert a.is_valid and g.is_valid and ws.stats().generation == gen
        assert float(a.numpy().sum()) == 7.0 * 64
    assert ws.stats().cycles == 1


def test_scope_objects_resolve_per_call():
    """scope() of the same type gives the same workspace in the same thread, across
    cycles; its cycles advance generations."""
    mgr = _mgr()
    gens = []
    for _ in range(3):
        with mgr.scope(ArrayType.FF_WORKING_MEM) as ws:
            gens.append(ws.stats().generation)
            mgr.create(ArrayType.FF_WORKING_MEM, 100)
    assert len(set(gens)) == 3
    assert wsmem.thread_workspaces()["T_WORK"] is ws


# ------------------------------------------------------------------ nested scopes and leverage

def test_leverage_to_activations_survives_working_memory_cycles():
    mgr = _mgr()
    kept = []
    with mgr.scope(ArrayType.ACTIVATIONS) as act_ws:
        for layer in range(4):
            with mgr.scope(ArrayType.FF_WORKING_MEM) as work_ws:
                tmp = mgr.create(ArrayType.FF_WORKING_MEM, (16, 8), np.float32)
                tmp.fill(layer + 1)
                act = mgr.leverage_to(ArrayType.ACTIVATIONS, tmp)
                assert act is not tmp and act.workspace is act_ws
                assert not np.shares_memory(np.asarray(act), np.asarray(tmp))
                mgr.validate_array_location(ArrayType.ACTIVATIONS, act)
                mgr.validate_array_location(ArrayType.FF_WORKING_MEM, tmp)
                kept.append((tmp, act))
            assert not tmp.is_valid
            with pytest.raises(WorkspaceLeakError):
                tmp.numpy()
        assert work_ws.stats().cycles == 4
        for layer, (tmp, act) in enumerate(kept):
            assert act.is_valid
            mgr.validate_array_location(ArrayType.ACTIVATIONS, act)
            np.testing.assert_array_equal(act.numpy(), np.full((16, 8), layer + 1, np.float32))
            with pytest.raises(WorkspaceLeakError):
                mgr.validate_array_location(ArrayType.FF_WORKING_MEM, tmp)
    assert not any(act.is_valid for _, act in kept)


def test_leverage_to_cases():
    mgr = _mgr()
    heap = wsmem.asarray(np.arange(6.0))
    assert heap.workspace is None
    with pytest.raises(WorkspaceError, match=r"leverage to ArrayType.ACTIVATIONS.*not open"):
        mgr.leverage_to(ArrayType.ACTIVATIONS, heap)
    with mgr.scope(ArrayType.ACTIVATIONS) as ws:
        on_ws = mgr.leverage_to(ArrayType.ACTIVATIONS, heap)      # heap -> workspace copy
        assert on_ws.workspace is ws
        np.testing.assert_array_equal(on_ws.numpy(), np.arange(6.0))
        assert mgr.leverage_to(ArrayType.ACTIVATIONS, on_ws) is on_ws           # already there
        assert mgr.leverage_to(ArrayType.ACTIVATION_GRAD, on_ws) is on_ws       # same workspace
        assert mgr.leverage_to(ArrayType.INPUT, heap) is heap                    # heap stays
        out = mgr.leverage_to(ArrayType.INPUT, on_ws)                            # detached
        assert out is not on_ws and out.workspace is None
        np.testing.assert_array_equal(out.numpy(), np.arange(6.0))
        with pytest.raises(TypeError, match="WsArray"):
            mgr.leverage_to(ArrayType.ACTIVATIONS, np.arange(3.0))
    assert out.is_valid and not on_ws.is_valid
    with pytest.raises(WorkspaceLeakError):
        mgr.leverage_to(ArrayType.INPUT, on_ws)
    with mgr.scope(ArrayType.ACTIVATIONS):
        with pytest.raises(WorkspaceLeakError):
            mgr.leverage_to(ArrayType.ACTIVATIONS, on_ws)


# ------------------------------------------------------------------ validate_array_location

def test_validate_array_location_messages():
    mgr = _mgr()
    with mgr.scope(ArrayType.ACTIVATIONS):
        with mgr.scope(ArrayType.FF_WORKING_MEM):
            w = mgr.create(ArrayType.FF_WORKING_MEM, 4)
            a = mgr.create(ArrayType.ACTIVATIONS, 4)
            h = mgr.create(ArrayType.INPUT, 4)
            mgr.validate_array_location(ArrayType.ACTIVATIONS, a)
            mgr.validate_array_location(ArrayType.ACTIVATION_GRAD, a)   # shares T_ACT
            mgr.validate_array_location(ArrayType.INPUT, h)
            with pytest.raises(WorkspaceError) as err:
                mgr.validate_array_location(ArrayType.ACTIVATIONS, w)
            msg = str(err.value)
            assert "ArrayType.ACTIVATIONS" in msg and "'T_ACT'" in msg and "'T_WORK'" in msg
            assert "leverage_to" in msg
            assert not isinstance(err.value, WorkspaceLeakError)
            with pytest.raises(WorkspaceError, match=r"ArrayType.FF_WORKING_MEM.*expected "
                                                     r"workspace 'T_WORK'.*'T_ACT'"):
                mgr.validate_array_location(ArrayType.FF_WORKING_MEM, a)
            with pytest.raises(WorkspaceError, match=r"ArrayType.ACTIVATIONS.*'T_ACT'.*"
                                                     r"heap"):
                mgr.validate_array_location(ArrayType.ACTIVATIONS, h)
            with pytest.raises(WorkspaceError, match=r"ArrayType.INPUT.*workspace 'T_ACT'.*"
                                                     r"scoped out.*heap"):
                mgr.validate_array_location(ArrayType.INPUT, a)
            with pytest.raises(TypeError, match="WsArray"):
                mgr.validate_array_location(ArrayType.ACTIVATIONS, np.zeros(4))


def test_validate_workspace_never_created_in_this_thread():
    mgr = _mgr()
    with wsmem.Workspace("T_OTHER") as other:
        x = wsmem.zeros(3)
        with pytest.raises(WorkspaceError, match=r"expected workspace 'T_ACT'.*'T_OTHER'"):
            mgr.validate_array_location(ArrayType.ACTIVATIONS, x)
    other.destroy()


def test_validate_same_name_other_workspace():
    """An array from a different workspace that happens to carry the expected name
    (here: a private Workspace, not this thread's registered one) is refused."""
    mgr = _mgr()
    impostor = wsmem.Workspace("T_ACT")
    with mgr.scope(ArrayType.ACTIVATIONS) as real:
        assert real is not impostor
        with impostor:
            x = wsmem.zeros(3)
            with pytest.raises(WorkspaceError, match="another workspace also named 'T_ACT'"):
                mgr.validate_array_location(ArrayType.ACTIVATIONS, x)
    impostor.destroy()


# ------------------------------------------------------------------ threads

def test_each_thread_gets_its_own_workspaces():
    mgr = WorkspaceMgr.for_mode(WorkspaceMode.ENABLED)
    n_threads, results, errors = 4, {}, []
    barrier = threading.Barrier(n_threads)

    def worker(k):
        try:
            barrier.wait(10)
            act_ws = None
            for step in range(20):
                with mgr.scope(ArrayType.ACTIVATIONS) as act_ws:
                    with mgr.scope(ArrayType.FF_WORKING_MEM):
                        tmp = mgr.create(ArrayType.FF_WORKING_MEM, (32, 32))
                        tmp.fill(k * 100 + step)
                        act = mgr.leverage_to(ArrayType.ACTIVATIONS, tmp)
                    mgr.validate_array_location(ArrayType.ACTIVATIONS, act)
                    assert act.workspace is act_ws
                    assert act_ws is wsmem.thread_workspaces()["WS_LAYER_ACT"]
                    assert float(act.numpy()[0, 0]) == k * 100 + step
            results[k] = (act_ws, act_ws.stats().cycles)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            wsmem.destroy_thread_workspaces()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == n_threads
    assert all(cycles == 20 for _, cycles in results.values())
    assert len({id(ws) for ws, _ in results.values()}) == n_threads   # all distinct
    # the main thread has none of them
    assert "WS_LAYER_ACT" not in wsmem.thread_workspaces()


def test_workspace_of_another_thread_is_refused():
    mgr = _mgr()

    def make():
        with mgr.scope(ArrayType.ACTIVATIONS) as ws:
            a = mgr.create(ArrayType.ACTIVATIONS, 4)
            with mgr.scope(ArrayType.INPUT):
                detached = wsmem.zeros(2)
        return ws, a, detached

    other_ws, foreign, detached = run_in_thread(make, destroy_registry=True)
    with mgr.scope(ArrayType.ACTIVATIONS) as mine:
        assert mine is not other_ws
        with pytest.raises(WorkspaceError):
            mgr.validate_array_location(ArrayType.ACTIVATIONS, foreign)
        mgr.validate_array_location(ArrayType.INPUT, detached)
        assert mgr.leverage_to(ArrayType.ACTIVATIONS, detached).workspace is mine
