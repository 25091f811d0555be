"""The trajectory-matching loop: outputs, bitwise resume, divergence guard, validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError, DivergenceError
from datadistill.experts import ExpertConfig, train_experts
from datadistill.experts.store import required_epochs
from datadistill.tm.checkpoint import load_checkpoint
from datadistill.tm.distill import DistillConfig, distill


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    cfg = ExpertConfig(dataset="digits", num_experts=3, epochs=4, lr=0.1, batch_size=64,
                       model_kwargs={"width": 8})
    return train_experts(cfg, digits, tmp_path_factory.mktemp("experts"), progress=False)


def _cfg(**kw):
    base = dict(dataset="digits", model_kwargs={"width": 8}, ipc=2, syn_steps=3,
                expert_epochs=2, max_start_epoch=2, lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01,
                iterations=4, eval_every=2, eval_runs=0, eval_epochs=2, checkpoint_every=2)
    return DistillConfig.of(**(base | kw))


def _final(path):
    state = load_checkpoint(path / "checkpoint.pt")
    momentum = [s["momentum_buffer"] for o in state.optimizers.values()
                for s in o["state"].values()]
    return [state.images, state.labels, state.syn_lr, *momentum, *state.generators.values(),
            state.expert_order, torch.tensor(state.expert_pos), torch.tensor(state.iteration)]


def _assert_equal_states(a, b):
    ta, tb = _final(a), _final(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb, strict=True):
        assert torch.equal(x, y)


def test_outputs(digits, store, tmp_path):
    cfg = _cfg(eval_runs=1)
    result = distill(cfg, tmp_path, data=digits, store=store, progress=False)
    assert result.iterations_done == 4 and result.best_accuracy is not None
    assert 0 < result.final_syn_lr
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "iter_00000.png", "iter_00002.png", "iter_00004.png"]
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    train_rows = [r for r in rows if not r.get("eval")]
    eval_rows = [r for r in rows if r.get("eval")]
    assert [r["iteration"] for r in train_rows] == [0, 1, 2, 3]
    assert [r["iteration"] for r in eval_rows] == [0, 2, 4]
    assert {"loss", "syn_lr", "start_epoch", "time"} <= set(train_rows[0])
    assert {"mean", "std", "accuracies"} <= set(eval_rows[0])
    best = load_distilled(result.best_dir)
    assert best.images.shape == (20, 1, 8, 8)
    assert torch.equal(best.labels, torch.arange(10).repeat_interleave(2))  # class-major
    means = [r["mean"] for r in eval_rows]  # best/ is the first evaluation with the top mean
    top = eval_rows[means.index(max(means))]["iteration"]
    assert result.best_accuracy == max(means) and result.best_iteration == top
    assert best.extra["iteration"] == top and best.extra["accuracy"] == max(means)
    assert best.config["syn_steps"] == 3 and best.method == "mtt"
    last = load_distilled(result.last_dir)
    assert last.lr == pytest.approx(train_rows[-1]["syn_lr"])
    assert last.extra["iteration"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["ipc"] == 2


def test_resume_after_interruption_is_bitwise_equal(digits, store, tmp_path):
    cfg = _cfg(iterations=6, eval_every=3, checkpoint_every=2)
    distill(cfg, tmp_path / "full", data=digits, store=store, progress=False)

    def interrupt(it, row):
        if it == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, tmp_path / "cut", data=digits, store=store, progress=False,
                on_iteration=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt").iteration == 3
    distill(cfg, tmp_path / "cut", data=digits, store=store, progress=False)
    _assert_equal_states(tmp_path / "full", tmp_path / "cut")
    rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    its = [json.loads(r)["iteration"] for r in rows if "loss" in json.loads(r)]
    assert its == list(range(6))  # no duplicated rows after the resume


def test_extend_a_finished_run_is_bitwise_equal(digits, store, tmp_path):
    distill(_cfg(iterations=5), tmp_path / "full", data=digits, store=store, progress=False)
    distill(_cfg(iterations=2), tmp_path / "ext", data=digits, store=store, progress=False)
    distill(_cfg(iterations=5), tmp_path / "ext", data=digits, store=store, progress=False)
    _assert_equal_states(tmp_path / "full", tmp_path / "ext")


def test_resume_with_another_config_fails(digits, store, tmp_path):
    distill(_cfg(iterations=1), tmp_path, data=digits, store=store, progress=False)
    with pytest.raises(CompatibilityError, match="lr_img"):
        distill(_cfg(iterations=2, lr_img=5.0), tmp_path, data=digits, store=store,
                progress=False)
    distill(_cfg(iterations=2, lr_img=5.0), tmp_path, data=digits, store=store,
            progress=False, resume=False)  # starting over is fine


def test_divergence_guard(digits, store, tmp_path):
    cfg = _cfg(iterations=20, lr_lr=1e4, eval_every=1)
    with pytest.raises(DivergenceError, match="step size|loss|images") as err:
        distill(cfg, tmp_path, data=digits, store=store, progress=False)
    assert "lr_lr" in str(err.value)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert float(state.syn_lr) > 0 and torch.isfinite(state.images).all()
    for name in ("best", "last"):
        ds = load_distilled(tmp_path / name)
        assert torch.isfinite(ds.images).all() and ds.lr > 0


def test_validation(digits, store, tmp_path):
    with pytest.raises(ConfigError, match="class 0"):
        few = dataclasses.replace(digits.train, images=digits.train.images[:40],
                                  labels=torch.arange(40) % 10)
        distill(_cfg(ipc=5), tmp_path, data=dataclasses.replace(digits, train=few),
                store=store, progress=False)
    with pytest.raises(CompatibilityError, match="experts.epochs to at least 5"):
        distill(_cfg(max_start_epoch=4), tmp_path, data=digits, store=store, progress=False)
    with pytest.raises(CompatibilityError, match="parameters"):
        distill(_cfg(model_kwargs={"width": 16}), tmp_path, data=digits, store=store,
                progress=False)
    for bad, message in (({"pix_init": "random"}, "pix_init='random'; choose one of real"),
                         ({"label_mode": "mixed"}, "label_mode='mixed'; choose one of hard"),
                         ({"ipc": 0}, "ipc must be >= 1, got 0"),
                         ({"min_start_epoch": 2, "max_start_epoch": 2},
                          r"min_start_epoch \(2\) must be below max_start_epoch \(2\)"),
                         ({"lr_teacher": 0.0}, "lr_teacher .* must be > 0, got 0.0")):
        with pytest.raises(ConfigError, match=message):
            _cfg(**bad)


def test_epoch_bound_matches_the_official_draw(digits, store, tmp_path):
    # 4 epochs stored (snapshots 0..4), M = 2: starts are drawn from [0, 3), the largest
    # start 2 reaches snapshot 4, so max_start_epoch + expert_epochs = epochs + 1 fits.
    assert required_epochs(3, 2) == store.epochs
    result = distill(_cfg(max_start_epoch=3, min_start_epoch=2, iterations=1, eval_every=0),
                     tmp_path, data=digits, store=store, progress=False)
    assert result.iterations_done == 1
    start, target = store.epoch_pair(0, 2, 2)
    assert torch.equal(target, store.load(0)[4])
    with pytest.raises(CompatibilityError, match="epochs"):
        store.epoch_pair(0, 3, 2)


def test_strategy_slots_together(digits, store, tmp_path):
    cfg = _cfg(iterations=3, label_mode="soft", lr_y=2.0, window="expanding",
               min_start_epoch=0, current_max_start_epoch=1, expansion_end=2,
               threshold=10.0, ema_decay=0.9, param_mask="depth", param_mask_ratio=0.25,
               pix_init="noise", eval_every=3)
    start = load_distilled(distill(dataclasses.replace(cfg, iterations=0), tmp_path / "init",
                                   data=digits, store=store, progress=False).last_dir)
    result = distill(cfg, tmp_path / "run", data=digits, store=store, progress=False)
    end = load_distilled(result.last_dir)
    assert end.labels.shape == (20, 10) and end.labels.dtype == torch.float32
    assert not torch.equal(end.labels, start.labels)  # the soft labels were learned
    assert not torch.equal(end.images, start.images)
    rows = [json.loads(r) for r in result.metrics_path.read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert not any(r["skipped"] for r in train) and all(r["loss"] < 10.0 for r in train)
    # Upper(it) = 1 + int(1 * it / 2): windows [0, 1), [0, 1), [0, 2).
    assert [r["start_epoch"] for r in train][:2] == [0, 0] and train[2]["start_epoch"] < 2
    ema = load_checkpoint(result.checkpoint_path).ema
    assert ema["num_updates"] == 3
    assert torch.equal(load_distilled(tmp_path / "run" / "ema_last").images, ema["images"])


def test_threshold_skips_the_whole_update(digits, store, tmp_path):
    cfg = _cfg(iterations=2, label_mode="soft", threshold=0.0, ema_decay=0.9, eval_every=0)
    start = load_distilled(distill(dataclasses.replace(cfg, iterations=0), tmp_path / "init",
                                   data=digits, store=store, progress=False).last_dir)
    skipped = distill(cfg, tmp_path / "thr", data=digits, store=store, progress=False)
    rows = [json.loads(r) for r in skipped.metrics_path.read_text().splitlines()]
    assert [r["skipped"] for r in rows if "loss" in r] == [True, True]
    end = load_distilled(skipped.last_dir)  # a skipped iteration changes nothing
    assert torch.equal(end.images, start.images) and torch.equal(end.labels, start.labels)
    assert end.lr == start.lr
    state = load_checkpoint(skipped.checkpoint_path)
    assert state.ema["num_updates"] == 0 and all(not o["state"]
                                                 for o in state.optimizers.values())


def test_threshold_skip_also_skips_the_ema_update(digits, store, tmp_path):
    # The EMA averages image updates: an iteration skipped by the threshold changes neither
    # the images nor the EMA (see DistillConfig.ema_decay).
    cfg = _cfg(iterations=3, eval_every=0, ema_decay=0.5, threshold=10.0)
    ran = distill(cfg, tmp_path / "ran", data=digits, store=store, progress=False)
    assert load_checkpoint(ran.metrics_path.parent / "checkpoint.pt").ema["num_updates"] == 3
    distill(dataclasses.replace(cfg, threshold=0.0), tmp_path / "skip", data=digits,
            store=store, progress=False)
    state = load_checkpoint(tmp_path / "skip" / "checkpoint.pt")
    assert state.ema["num_updates"] == 0
    assert torch.equal(state.ema["images"], state.images)  # both still the initial images


def test_divergence_guard_checks_soft_labels(digits, store, tmp_path, monkeypatch):
    # An infinite lr_y makes the labels non-finite after one step: the run must stop before a set
    # with non-finite soft labels is written to last/ or best/. (The up-front checks refuse
    # lr_y=inf; they are switched off here to reach the guard inside the loop.)
    monkeypatch.setattr("datadistill.tm.distill.check_distill", lambda cfg: None)
    cfg = _cfg(iterations=3, eval_every=1, label_mode="soft", lr_y=float("inf"))
    with pytest.raises(DivergenceError, match="labels"):
        distill(cfg, tmp_path, data=digits, store=store, progress=False)
    for name in ("best", "last"):
        assert torch.isfinite(load_distilled(tmp_path / name).labels).all()


def test_expanding_window_is_checked_up_front():
    with pytest.raises(ConfigError, match="current_max_start_epoch"):
        _cfg(window="expanding", min_start_epoch=1, current_max_start_epoch=1,
             expansion_end=10)


def _store_copy(store, tmp_path):
    import shutil

    from datadistill.experts.store import ExpertStore

    shutil.copytree(store.directory, tmp_path / "experts")
    return tmp_path / "experts", ExpertStore


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong shape"])
def test_damaged_expert_files_are_found_before_the_first_iteration(digits, store, tmp_path,
                                                                   damage, monkeypatch):
    folder, ExpertStore = _store_copy(store, tmp_path)
    last = folder / "expert_0002.pt"  # the last one: sampled late, if at all
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        rec = torch.load(last, weights_only=True)
        torch.save({**rec, "params": rec["params"][:, :10]}, last)
    started = []
    monkeypatch.setattr("datadistill.tm.distill.student_forward",
                        lambda *a, **k: started.append(1))  # reached only past the checks
    with pytest.raises(ArtifactError, match="expert_0002.pt"):
        distill(_cfg(), tmp_path / "d", data=digits, store=ExpertStore(folder), progress=False)
    assert not started


def test_an_incomplete_store_is_refused_unless_max_experts_says_so(digits, store, tmp_path):
    folder, ExpertStore = _store_copy(store, tmp_path)
    (folder / "expert_0002.pt").unlink()  # `experts` still writing: 2 of 3
    with pytest.raises(CompatibilityError,
                       match=r"holds 2 of the 3 experts .* distill\.max_experts=2"):
        distill(_cfg(), tmp_path / "d", data=digits, store=ExpertStore(folder), progress=False)
    result = distill(_cfg(max_experts=2, iterations=1, eval_every=0), tmp_path / "d2",
                     data=digits, store=ExpertStore(folder), progress=False)
    assert result.iterations_done == 1


def test_stage_line_shows_the_final_evaluation_and_the_best(digits, store, tmp_path,
                                                            monkeypatch, capsys):
    import datadistill.tm.outputs as outputs_mod

    means = {0: 0.5, 2: 0.7, 4: 0.6}  # the last evaluation is not the best

    def fake(run, images, state, it):
        return {"iteration": it, "eval": True, "mean": means[it], "std": 0.0,
                "accuracies": [means[it]]}

    monkeypatch.setattr(outputs_mod, "_evaluate_here", fake)
    distill(_cfg(), tmp_path, data=digits, store=store, progress=True)
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("distill:")]
    assert len(line) == 1 and "acc=0.6000, best=0.7000@2" in line[0], line


def test_all_finite_checks_every_chunk(monkeypatch):
    # The divergence guard scans the synthetic set a chunk at a time (isfinite on the whole
    # set adds 1.7 copies of it); a bad value in any chunk, the last one included, is found.
    import datadistill.tm.distill as dmod

    monkeypatch.setattr(dmod, "FINITE_CHUNK", 7)
    x = torch.randn(5, 2, 3, 3)  # 90 elements: 13 chunks, the last one partial
    assert dmod.all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 6, 7, 89):
            y = x.clone()
            y.view(-1)[pos] = bad
            assert not dmod.all_finite(y) and not bool(torch.isfinite(y).all())
    assert dmod.all_finite(x.transpose(0, 1))  # not contiguous: a copy, the same answer


def test_checkpoint_saves_the_state_tensors_without_copying(tmp_path, monkeypatch):
    # save_checkpoint used to deep-copy and clone every tensor (4 copies of the synthetic set
    # and its momentum at the peak); now it hands torch.save the state's own CPU storages,
    # and the file reads back equal.
    from datadistill.tm import checkpoint as ck

    images = torch.randn(6, 1, 4, 4, requires_grad=True)
    momentum = torch.randn(6, 1, 4, 4)
    state = ck.DistillState(iteration=3, images=images, labels=torch.arange(6) % 3,
                            syn_lr=torch.tensor(0.01, requires_grad=True),
                            optimizers={"images": {"state": {0: {"momentum_buffer": momentum}},
                                                   "param_groups": [{"lr": 1.0,
                                                                     "params": [0]}]}},
                            generators={}, expert_order=torch.arange(2), expert_pos=1,
                            config={"ipc": 2, "nested": {"a": [1, 2]}})
    saved = {}
    real_save = ck.save_tensors
    monkeypatch.setattr(ck, "save_tensors", lambda rec, p: saved.update(rec) or real_save(rec, p))
    ck.save_checkpoint(tmp_path / "c.pt", state)
    ptr = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    assert ptr(saved["images"]) == ptr(images)
    assert ptr(saved["optimizers"]["images"]["state"][0]["momentum_buffer"]) == ptr(momentum)
    back = ck.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back.images, images.detach()) and not back.images.requires_grad
    assert torch.equal(back.optimizers["images"]["state"][0]["momentum_buffer"], momentum)
    assert back.config == state.config and back.iteration == 3 and back.expert_pos == 1
