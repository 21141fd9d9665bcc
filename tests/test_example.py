"""The worked example (wsmem.examples) and its benchmark suite: correctness, never speed.

- plain and workspace training give the same losses, bit for bit;
- each array type lands in its own workspace, and no workspace grows after
  the first step;
- evaluation in an inference workspace allocates nothing after its first batch;
- the data-parallel trainer equals a sequential computation bit for bit;
- the ``example`` suite's tiny run produces valid JSON.
"""
import io
import json

import numpy as np
import pytest

import wsmem
from wsmem.benchmarks import example as example_suite
from wsmem.benchmarks import get_suite, suite_names
from wsmem.examples import mlp
from wsmem.examples.parallel import parallel_train

CFG = mlp.TrainConfig(hidden=(64, 64), batch_size=128, epochs=2, lr=0.05, momentum=0.9)

needs_prefetch = pytest.mark.skipif(not mlp.has_prefetch(),
                                    reason="this wsmem has no wsmem.prefetch")

@pytest.fixture(scope="module")
def data():
    # 1000 is not a multiple of 128: the last batch of an epoch is short
    return mlp.make_dataset(n_train=1000, n_test=512, n_features=32, n_classes=5,
                            spread=0.6, seed=3)


@pytest.fixture(scope="module")
def plain(data):
    return mlp.train_plain(data, CFG)


def _same_params(a, b):
    return all(np.array_equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


def test_dataset_is_seeded(data):
    again = mlp.make_dataset(n_train=1000, n_test=512, n_features=32, n_classes=5,
                             spread=0.6, seed=3)
    assert np.array_equal(data.x_train, again.x_train)
    assert np.array_equal(data.y_test, again.y_test)
    assert data.x_train.dtype == np.float64 and data.y_train.dtype == np.int64
    assert set(np.unique(data.y_train)) == set(range(5))


def test_plain_training_learns(plain):
    assert len(plain.losses) == 2 * 8
    assert plain.losses[-1] < plain.losses[0]
    assert plain.accuracies[-1] > 0.5          # 5 classes: chance is 0.2


def test_same_loss_curve_to_the_bit(data, plain):
    ws = mlp.train_ws(data, CFG, prefetch=False)
    assert len(ws.losses) == len(plain.losses)
    assert ws.losses == plain.losses            # every float, ==
    assert ws.accuracies == plain.accuracies
    assert _same_params(ws.params, plain.params)
    assert ws.steady_state is True
    assert not ws.prefetch


def test_same_loss_curve_with_spill_everything(data, plain):
    """Every allocation spilled (no reuse inside a cycle): still the same bits."""
    with wsmem.debug_mode("spill_everything"):
        ws = mlp.train_ws(data, CFG, prefetch=False, evaluate_each_epoch=False)
    assert ws.losses == plain.losses


@needs_prefetch
def test_same_loss_curve_with_prefetch(data, plain):
    ws = mlp.train_ws(data, CFG, prefetch=True, buffer=4)
    assert ws.prefetch
    assert ws.losses == plain.losses
    assert _same_params(ws.params, plain.params)


def test_gc_window_is_restored(data, plain):
    import gc
    ws = mlp.train_ws(data, mlp.TrainConfig(hidden=(64, 64), batch_size=128, epochs=1),
                      prefetch=False, gc_window_ms=60_000, evaluate_each_epoch=False)
    assert gc.isenabled()
    assert ws.losses == plain.losses[:len(ws.losses)]


def test_arrays_land_in_their_workspaces(data):
    """Activations, gradients, working memory and updater temporaries each fill their
    own workspace (by the bytes each cycle needed), and the workspaces are released."""
    res = mlp.train_ws(data, CFG, prefetch=False)
    st = res.workspaces
    assert set(st) == {"WS_ACT", "WS_GRAD", "WS_WORK", "WS_UPDATER", mlp.INFERENCE_WORKSPACE}
    b, h1, h2, c = CFG.batch_size, 64, 64, data.n_classes
    f = data.n_features
    act = 8 * b * (h1 + h2 + c)                               # two ReLU outputs + logits
    grad = 8 * (f * h1 + h1 + h1 * h2 + h2 + h2 * c + c)      # parameter gradients
    assert st["WS_ACT"].peak_cycle_bytes >= act
    assert st["WS_GRAD"].peak_cycle_bytes >= grad
    assert st["WS_WORK"].peak_cycle_bytes >= 8 * b * h1       # one pre-activation
    assert st["WS_UPDATER"].peak_cycle_bytes >= 8 * f * h1    # lr * g of the biggest W
    steps = len(res.losses)
    assert st["WS_ACT"].cycles == st["WS_GRAD"].cycles == st["WS_UPDATER"].cycles == steps
    assert st["WS_WORK"].cycles == steps * (2 + 3)     # FF per hidden layer, BP per layer
    for s in st.values():
        assert s.pinned_bytes == 0
    assert wsmem.thread_workspaces().get("WS_ACT") is None or \
        wsmem.thread_workspaces()["WS_ACT"].is_destroyed


def test_layout_is_validated_by_the_manager():
    """The example's manager maps every type it uses; parameters' types are on the heap."""
    mgr = mlp.example_mgr()
    names = {t: mgr.workspace_name(t) for t in (
        wsmem.ArrayType.ACTIVATIONS, wsmem.ArrayType.ACTIVATION_GRAD,
        wsmem.ArrayType.FF_WORKING_MEM, wsmem.ArrayType.BP_WORKING_MEM,
        wsmem.ArrayType.UPDATER_WORKING_MEM)}
    assert len(set(names.values())) == 4            # FF and BP share working memory
    assert mgr.is_scoped_out(wsmem.ArrayType.INPUT)
    with mgr.scope(wsmem.ArrayType.ACTIVATIONS):
        a = mgr.create(wsmem.ArrayType.ACTIVATIONS, (4, 4), np.float64)
        mgr.validate_array_location(wsmem.ArrayType.ACTIVATIONS, a)
        with pytest.raises(wsmem.WorkspaceError):
            mgr.validate_array_location(wsmem.ArrayType.ACTIVATION_GRAD, a)
        del a


def test_evaluation_allocates_nothing_after_first_batch(data, plain):
    ws = wsmem.Workspace("test_eval_inference")
    try:
        ev = mlp.evaluate(plain.params, data.x_test, data.y_test, 64, workspace=ws)
        ev2 = mlp.evaluate(plain.params, data.x_test, data.y_test, 64, workspace=ws)
    finally:
        ws.destroy()
    ref = mlp.evaluate(plain.params, data.x_test, data.y_test, 64)
    assert ev.correct == ev2.correct == ref.correct and ev.total == 512
    assert ev.accuracy == plain.accuracies[-1] or 64 != CFG.batch_size
    batches = ev.batches + ev2.batches
    assert len(batches) == 16
    first, rest = batches[0], batches[1:]
    assert first.spilled_count > 0                   # the first cycle teaches the size
    assert all(b.spilled_count == 0 and b.spilled_bytes == 0 for b in rest)
    assert len({b.cycle_bytes for b in rest}) == 1   # the same bytes every batch
    assert len({b.capacity for b in rest}) == 1 and rest[0].capacity > 0
    assert len({b.pages for b in rest}) == 1         # no new mapping after the first
    assert ev.steady and ev2.steady
    assert ref.batches == () and not ref.steady


def test_parallel_train_matches_sequential(data):
    cfg = mlp.TrainConfig(hidden=(64, 64), batch_size=64, epochs=1)
    res = parallel_train(3, data, cfg, prefetch=False)
    assert res.matches_sequential is True
    assert res.steps == 16 // 3 and len(res.losses) == 3 * res.steps
    assert sum(res.batches_per_worker) == 3 * res.steps
    ids = [set(w.values()) for w in res.worker_workspaces]
    assert all(len(w) == 4 for w in res.worker_workspaces)     # ACT, GRAD, WORK, UPDATER
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])      # per-thread workspaces


def test_parallel_train_one_thread_equals_sequential_training(data):
    """With one worker, a step is a plain minibatch step: the losses of train_plain."""
    cfg = mlp.TrainConfig(hidden=(64, 64), batch_size=128, epochs=1)
    par = parallel_train(1, data, cfg, prefetch=False)
    ref = mlp.train_plain(data, cfg, evaluate_each_epoch=False)
    assert par.matches_sequential is True
    assert par.losses == ref.losses
    assert _same_params(par.params, ref.params)


@needs_prefetch
def test_parallel_train_with_prefetch(data):
    cfg = mlp.TrainConfig(hidden=(64, 64), batch_size=64, epochs=1)
    res = parallel_train(2, data, cfg, prefetch=True)
    assert res.prefetch and res.matches_sequential is True


def test_parallel_train_rejects_bad_arguments(data):
    with pytest.raises(ValueError):
        parallel_train(0, data, CFG)
    with pytest.raises(ValueError):
        parallel_train(4, data, CFG, buffer=2, prefetch=False)


def test_prefetch_true_without_prefetch_raises(data, monkeypatch):
    monkeypatch.delattr(wsmem, "prefetch", raising=False)
    with pytest.raises(RuntimeError, match="no wsmem.prefetch"):
        mlp.train_ws(data, CFG, prefetch=True)


# ---------------------------------------------------------------- the benchmark suite

def test_suite_registered():
    assert "example" in suite_names()
    mod = get_suite("example").load()
    assert mod is example_suite and mod.DESCRIPTION


def test_suite_tiny_run_is_valid_json():
    res = example_suite.run(tiny=True, configs=["plain", "ws"])
    back = json.loads(json.dumps(res))
    assert back["suite"] == "example" and back["method"]["mode"] == "tiny"
    assert [r["config"] for r in back["rows"]] == ["plain", "ws"]
    assert back["all_match"] is True and back["steady_state_ok"] is True
    for r in back["rows"]:
        assert r["epoch_time_s"] > 0 and r["eval_time_s"] > 0
        assert r["steps_per_epoch"] == 2 and r["n_losses"] == 4
        assert r["peak_rss_whole_process_kib"] > 0
    ws = back["rows"][1]
    assert ws["steady_state"] and ws["eval_steady"] and ws["eval_spills_after_first"] == 0
    table = example_suite.format_table(res)
    assert "| WorkspaceMgr |" in table and "MISMATCH" not in table


def test_suite_worker_rejects_unknown_config():
    out = io.StringIO()
    assert example_suite.worker_main("nope", 64, 64, (8,), stdin=io.StringIO(""),
                                     stdout=out) == 2
    assert "error" in json.loads(out.getvalue())
