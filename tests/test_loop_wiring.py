"""How the distillation loop wires its pieces together, checked by behaviour.

The math components have their own tests; these check the loop around them: which evaluation
becomes ``best/``, which iterations are evaluated and checkpointed, which expert and window
each iteration uses, that PAD's mask, the soft labels and FTD's EMA reach the update and the
checkpoint, and the optimiser constants each preset trains with (read back from the optimiser
state, not from a report). Each runs a few iterations on 8x8 digits with tiny experts.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import datadistill.evaluation.classic as classic_mod
import datadistill.evaluation.protocols as evaluate_mod
import datadistill.tm.distill as distill_mod
import datadistill.tm.outputs as outputs_mod
from datadistill.artifacts.distilled import load_distilled
from datadistill.evaluation.protocols import EvalReport
from datadistill.experts import ExpertConfig, train_experts
from datadistill.tm.checkpoint import load_checkpoint
from datadistill.tm.distill import DistillConfig, distill


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    cfg = ExpertConfig(dataset="digits", num_experts=3, epochs=4, lr=0.1, batch_size=64,
                       model_kwargs={"width": 8})
    return train_experts(cfg, digits, tmp_path_factory.mktemp("experts"), progress=False)


def _cfg(**kw):
    base = dict(dataset="digits", model_kwargs={"width": 8}, ipc=1, syn_steps=2,
                expert_epochs=2, max_start_epoch=2, lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01,
                iterations=4, eval_every=2, eval_runs=0, eval_epochs=1, checkpoint_every=2)
    return DistillConfig.of(**(base | kw))


def _rows(path):
    rows = [json.loads(r) for r in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if r.get("eval")]


def _run(cfg, out, digits, store, **kw):
    return distill(cfg, out, data=digits, store=store, progress=False, **kw)


class _ScriptedEvaluate:
    """Stands in for ``evaluate``: returns the scripted means in turn and records each call."""

    def __init__(self, means):
        self.means, self.calls = list(means), []

    def __call__(self, images, labels, test, **kw):
        self.calls.append({"images": images.detach().clone(), **kw})
        mean = self.means[len(self.calls) - 1]
        return EvalReport.from_accuracies("classic", kw.get("model", "convnet"), [mean], {})


# ----------------------------------------------------------------------------- evaluations


def test_best_is_the_evaluation_with_the_highest_mean(digits, store, tmp_path, monkeypatch):
    fake = _ScriptedEvaluate([0.3, 0.7, 0.5, 0.6])  # evaluations at 0, 2, 4, 6
    monkeypatch.setattr(evaluate_mod, "evaluate", fake)
    result = _run(_cfg(iterations=6, eval_runs=1), tmp_path, digits, store)
    _, evals = _rows(tmp_path)
    assert [(r["iteration"], r["mean"]) for r in evals] == [(0, 0.3), (2, 0.7), (4, 0.5),
                                                           (6, 0.6)]
    assert result.best_iteration == 2 and result.best_accuracy == 0.7
    assert result.best_accuracy == max(r["mean"] for r in evals)
    best = load_distilled(result.best_dir)
    assert best.extra["iteration"] == 2 and best.extra["accuracy"] == 0.7
    assert torch.equal(best.images, fake.calls[1]["images"])  # the set evaluated at it 2
    assert load_distilled(result.last_dir).extra["iteration"] == 6


def test_evaluation_uses_the_learned_lr_and_a_seed_per_iteration(digits, store, tmp_path,
                                                                  monkeypatch):
    fake = _ScriptedEvaluate([0.5] * 3)
    monkeypatch.setattr(evaluate_mod, "evaluate", fake)
    result = _run(_cfg(lr_lr=1e-3, eval_runs=2, eval_epochs=7), tmp_path, digits, store)
    last = fake.calls[-1]
    assert last["lr"] == result.final_syn_lr != 0.01  # the learned step size, not lr_teacher
    assert fake.calls[0]["lr"] == pytest.approx(0.01)  # nothing learned yet at iteration 0
    assert (last["num_runs"], last["epochs"], last["protocol"]) == (2, 7, "classic")
    assert last["dsa_strategy"] == digits.info.dsa_strategy  # the student's augmentation
    seeds = [c["seed"] for c in fake.calls]
    assert len(set(seeds)) == 3  # a fresh draw of networks at every evaluation


def test_the_last_iteration_is_evaluated_when_not_a_multiple(digits, store, tmp_path):
    result = _run(_cfg(iterations=5, eval_every=2), tmp_path / "a", digits, store)
    train, evals = _rows(tmp_path / "a")
    assert [r["iteration"] for r in evals] == [0, 2, 4, 5]
    assert [r["iteration"] for r in train] == [0, 1, 2, 3, 4]  # exactly `iterations` updates
    assert (tmp_path / "a" / "grids" / "iter_00005.png").is_file()
    assert load_distilled(result.last_dir).extra["iteration"] == 5
    _run(_cfg(iterations=3, eval_every=0), tmp_path / "b", digits, store)
    assert [r["iteration"] for r in _rows(tmp_path / "b")[1]] == [3]  # only the final one


def test_checkpoints_every_n_iterations_and_at_the_end(digits, store, tmp_path, monkeypatch):
    saved = []
    real = outputs_mod.save_checkpoint

    def spy(path, state):
        saved.append(state.iteration)
        return real(path, state)

    monkeypatch.setattr(outputs_mod, "save_checkpoint", spy)
    _run(_cfg(iterations=7, eval_every=0, checkpoint_every=3), tmp_path, digits, store)
    assert saved == [0, 3, 6, 7]


# ----------------------------------------------------------------------------- experts, window


def _experts(digits, store, out, **kw):
    _run(_cfg(iterations=6, eval_every=0, **kw), out, digits, store)
    return [r["expert"] for r in _rows(out)[0]]


def test_one_shuffled_expert_order_reshuffled_when_used_up(digits, store, tmp_path):
    orders = [_experts(digits, store, tmp_path / str(s), seed=s) for s in range(4)]
    for seq in orders:  # 3 experts, 6 iterations: two full passes, each a permutation
        assert sorted(seq[:3]) == [0, 1, 2] and sorted(seq[3:]) == [0, 1, 2]
    assert len({seq[0] for seq in orders}) > 1  # the first expert depends on the seed
    assert any(seq[:3] != seq[3:] for seq in orders)  # a new order after each pass
    assert len({tuple(seq) for seq in orders}) > 1


def test_max_experts_restricts_the_order(digits, store, tmp_path):
    seq = _experts(digits, store, tmp_path, max_experts=2)
    assert sorted(seq[:2]) == sorted(seq[2:4]) == sorted(seq[4:]) == [0, 1]


def test_expanding_window_bounds_follow_the_iteration(digits, store, tmp_path, monkeypatch):
    bounds = []
    real = distill_mod.sample_start_epoch

    def spy(low, high, generator):
        bounds.append((low, high))
        return real(low, high, generator)

    monkeypatch.setattr(distill_mod, "sample_start_epoch", spy)
    # Upper(it) = min(T+, T + int((T+ - T) * it / end)), T = 1, T+ = 3, end = 3, by hand:
    #   it 0: 1 + int(0)    = 1;  it 1: 1 + int(2/3) = 1;  it 2: 1 + int(4/3) = 2;
    #   it 3: 1 + int(2)    = 3;  it 4: min(3, 1 + int(8/3)) = 3.
    cfg = _cfg(iterations=5, eval_every=0, window="expanding", min_start_epoch=0,
               current_max_start_epoch=1, max_start_epoch=3, expansion_end=3, expert_epochs=1)
    _run(cfg, tmp_path / "a", digits, store)
    assert bounds == [(0, 1), (0, 1), (0, 2), (0, 3), (0, 3)]
    starts = [r["start_epoch"] for r in _rows(tmp_path / "a")[0]]
    assert all(lo <= s < hi for s, (lo, hi) in zip(starts, bounds, strict=True))
    bounds.clear()  # T- > 0 moves the lower end only
    window = dataclasses.replace(cfg.window, min_start_epoch=1, current_max_start_epoch=2)
    _run(dataclasses.replace(cfg, window=window), tmp_path / "b", digits, store)
    # it 0..2: 2 + int(it / 3) = 2; it 3, 4: 3.
    assert bounds == [(1, 2), (1, 2), (1, 2), (1, 3), (1, 3)]
    bounds.clear()
    _run(_cfg(iterations=2, eval_every=0, max_start_epoch=2), tmp_path / "c", digits, store)
    assert bounds == [(0, 2), (0, 2)]  # MTT's fixed window


# ----------------------------------------------------------------------------- PAD's mask


def test_depth_mask_reaches_the_loss_and_the_image_update(digits, store, tmp_path,
                                                         monkeypatch):
    seen = []
    real = distill_mod.matching_loss

    def spy(theta_n, theta0, target, mask=None):
        seen.append((theta_n.detach(), theta0.detach(), target.detach(), mask))
        return real(theta_n, theta0, target, mask)

    monkeypatch.setattr(distill_mod, "matching_loss", spy)
    masked = _run(_cfg(iterations=1, param_mask="depth", param_mask_ratio=0.5), tmp_path / "m",
                  digits, store)
    theta_n, theta0, target, mask = seen[-1]
    keep = theta_n.numel() - int(0.5 * theta_n.numel())  # the deeper half of the flat vector
    assert mask is not None and mask.sum() == keep and not mask[: theta_n.numel() - keep].any()
    deep = slice(theta_n.numel() - keep, None)
    # the exact value (float64 sums) of the float32 tensors; the run's float32 sums of ~10^5
    # terms carry a relative rounding error of order 1e-6 that depends on the CPU's kernels
    th, tg, t0 = theta_n[deep].double(), target[deep].double(), theta0[deep].double()
    by_hand = (th - tg).square().sum() / (t0 - tg).square().sum()
    loss_masked = _rows(tmp_path / "m")[0][0]["loss"]
    assert loss_masked == pytest.approx(float(by_hand), rel=1e-4)
    plain = _run(_cfg(iterations=1), tmp_path / "p", digits, store)
    assert seen[-1][3] is None
    loss_plain = _rows(tmp_path / "p")[0][0]["loss"]
    assert torch.equal(seen[-1][1], theta0)  # same expert and start: only the mask differs
    assert loss_masked != pytest.approx(loss_plain, rel=1e-3)
    before = load_distilled(_run(_cfg(iterations=0), tmp_path / "0", digits, store).last_dir)
    step_masked = load_distilled(masked.last_dir).images - before.images  # -lr_img * grad
    step_plain = load_distilled(plain.last_dir).images - before.images
    assert step_masked.abs().sum() > 0 and step_plain.abs().sum() > 0
    assert not torch.allclose(step_masked, step_plain, rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------- soft labels, EMA


def test_soft_labels_are_learned(digits, store, tmp_path):
    cfg = _cfg(label_mode="soft", lr_y=5.0, eval_every=0)
    start = load_distilled(_run(dataclasses.replace(cfg, iterations=0), tmp_path / "0", digits,
                                store).last_dir).labels
    end = load_distilled(_run(cfg, tmp_path / "4", digits, store).last_dir).labels
    assert start.shape == end.shape == (10, 10)
    assert not torch.equal(start, end)


def test_ftd_ema_follows_every_update(digits, store, tmp_path):
    result = _run(_cfg(ema_decay=0.5, eval_every=0), tmp_path, digits, store)
    ema = load_checkpoint(result.checkpoint_path).ema
    assert ema["num_updates"] == 4 and ema["decay"] == 0.5
    saved = load_distilled(tmp_path / "ema_last").images
    assert torch.equal(saved, ema["images"])
    assert not torch.equal(saved, load_distilled(result.last_dir).images)


# ----------------------------------------------------------------------------- bitwise resume


def _state(path):
    state = load_checkpoint(path / "checkpoint.pt")
    out = {"images": state.images, "labels": state.labels, "syn_lr": state.syn_lr,
           "order": state.expert_order, "pos": torch.tensor(state.expert_pos),
           "it": torch.tensor(state.iteration)}
    for name, opt in state.optimizers.items():
        for i, s in opt["state"].items():
            out[f"{name}.{i}.momentum"] = s["momentum_buffer"]
    for name, g in state.generators.items():
        out[f"gen.{name}"] = g
    if state.ema is not None:
        out["ema.images"] = state.ema["images"]
        out["ema.updates"] = torch.tensor(state.ema["num_updates"])
    return out


def _interrupted_equals_uninterrupted(cfg, tmp_path, digits, store):
    _run(cfg, tmp_path / "full", digits, store)

    def interrupt(it, row):
        if it == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "cut", digits, store, on_iteration=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt").iteration == 3
    _run(cfg, tmp_path / "cut", digits, store)
    full, cut = _state(tmp_path / "full"), _state(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    return full


def test_ftd_resume_is_bitwise_equal_including_the_ema(digits, store, tmp_path):
    cfg = _cfg(iterations=6, eval_every=3, ema_decay=0.9)
    full = _interrupted_equals_uninterrupted(cfg, tmp_path, digits, store)
    assert int(full["ema.updates"]) == 6
    for name in ("full", "cut"):
        assert (tmp_path / name / "ema_last" / "meta.json").is_file()
    ema_full = load_distilled(tmp_path / "full" / "ema_last").images
    assert torch.equal(ema_full, load_distilled(tmp_path / "cut" / "ema_last").images)


def test_datm_resume_is_bitwise_equal_including_soft_labels(digits, store, tmp_path):
    cfg = _cfg(iterations=6, eval_every=3, label_mode="soft", lr_y=5.0, window="expanding",
               min_start_epoch=0, current_max_start_epoch=1, expansion_end=4, threshold=100.0)
    full = _interrupted_equals_uninterrupted(cfg, tmp_path, digits, store)
    assert full["labels"].shape == (10, 10)
    assert any(k.startswith("labels.") for k in full)  # the labels' momentum is compared


# ----------------------------------------------------------------------------- optimiser constants


def test_matching_optimisers_use_the_official_constants(digits, store, tmp_path):
    cfg = _cfg(iterations=1, eval_every=0, label_mode="soft", lr_y=3.0, momentum_y=0.8,
               lr_img=7.0, lr_lr=2e-5)
    result = _run(cfg, tmp_path, digits, store)
    groups = {k: o["param_groups"][0]
              for k, o in load_checkpoint(result.checkpoint_path).optimizers.items()}
    assert set(groups) == {"images", "syn_lr", "labels"}
    expect = {"images": (7.0, 0.5), "syn_lr": (2e-5, 0.5), "labels": (3.0, 0.8)}
    for name, (lr, momentum) in expect.items():  # MTT: SGD momentum 0.5; DATM: momentum_y
        g = groups[name]
        assert (g["lr"], g["momentum"]) == (lr, momentum), name
        assert (g["weight_decay"], g["dampening"], g["nesterov"]) == (0, 0, False), name
    hard = _run(_cfg(iterations=1, eval_every=0), tmp_path / "hard", digits, store)
    assert set(load_checkpoint(hard.checkpoint_path).optimizers) == {"images", "syn_lr"}


def _record_sgd(monkeypatch):
    """Wrap ``train_network`` so every epoch's optimiser settings are recorded."""
    epochs = []
    real = classic_mod.train_network

    def spy(net, images, labels, **kw):
        def hook(epoch, opt):
            g = opt.param_groups[0]
            epochs.append((epoch, g["lr"], g["momentum"], g["weight_decay"], g["nesterov"],
                           g["dampening"], type(opt).__name__))
        kw["on_epoch"] = hook
        return real(net, images, labels, **kw)

    monkeypatch.setattr(classic_mod, "train_network", spy)
    return epochs


def test_classic_protocol_constants_from_the_optimiser(digits, monkeypatch):
    epochs = _record_sgd(monkeypatch)
    x, y = digits.train.images[:20], digits.train.labels[:20]
    evaluate_mod.evaluate(x, y, digits.test, lr=0.05, epochs=4, num_runs=1, batch_size=10)
    # epochs + 1 = 5 epochs; decay after epoch 4 // 2 + 1 = 3: epochs 0..3 at lr, 4 at lr/10.
    assert [e[0] for e in epochs] == [0, 1, 2, 3, 4]
    assert [e[1] for e in epochs] == pytest.approx([0.05] * 4 + [0.005])
    for _, _, momentum, wd, nesterov, dampening, kind in epochs:
        assert (momentum, wd, nesterov, dampening, kind) == (0.9, 5e-4, False, 0, "SGD")


def test_challenge_protocol_constants_from_the_optimiser(digits, monkeypatch):
    epochs = _record_sgd(monkeypatch)
    x = digits.train.images[torch.argsort(digits.train.labels, stable=True)][::30][:10]
    report = evaluate_mod.evaluate(x, None, digits.test, protocol="challenge", lr=0.3, epochs=4,
                                   num_runs=1, unofficial=True)
    assert [e[1] for e in epochs] == pytest.approx([0.01] * 4 + [0.001])  # lr fixed at 0.01
    assert all(e[2:] == (0.9, 5e-4, False, 0, "SGD") for e in epochs)
    assert report.settings["model_kwargs"]["depth"] == 3


def test_expert_optimiser_constants(digits, tmp_path, monkeypatch):
    made = []
    real = torch.optim.SGD

    class SpySGD(real):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(self.param_groups[0])

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    small = dataclasses.replace(digits, train=dataclasses.replace(
        digits.train, images=digits.train.images[:64], labels=digits.train.labels[:64]))
    cfg = ExpertConfig(dataset="digits", num_experts=1, epochs=1, batch_size=64,
                       model_kwargs={"width": 8})
    train_experts(cfg, small, tmp_path, progress=False)
    assert made  # MTT's experts: SGD lr 0.01, no momentum, no weight decay
    assert all((g["lr"], g["momentum"], g["weight_decay"]) == (0.01, 0, 0) for g in made)


def test_infer_student_constants_from_the_optimiser(digits, monkeypatch):
    from datadistill.infer import StudentConfig
    from datadistill.infer.student import train_student

    made = []
    real = torch.optim.AdamW

    class SpyAdamW(real):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = digits.train.images[:16]
    cfg = StudentConfig(epochs=3, batch_size=8, eval_every=10)
    train_student(net, x, digits.test, cfg, torch.randn(16, 10),
                  generator=torch.Generator().manual_seed(0))
    (opt,) = made  # INFER's student: AdamW lr 1e-3, weight decay 0.01, cosine to 0
    g = opt.param_groups[0]
    assert (g["initial_lr"], g["weight_decay"], g["betas"]) == (1e-3, 0.01, (0.9, 0.999))
    assert g["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed over exactly `epochs` steps
