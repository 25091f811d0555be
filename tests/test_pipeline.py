"""Every method preset end to end on digits through run_pipeline, at toy scale.

Each run: 2 experts x 3 epochs, 4 distillation iterations, 1 evaluation network of 5 epochs.
FTD, DATM and M-DATM train identical GSAM experts, so one store is trained per module and
copied into their run folders (train_experts resumes it: nothing is retrained).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.data import prepare
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.experts.curriculum import CurriculumConfig, kept_range
from datadistill.experts.difficulty import DifficultyOrder, load_difficulty
from datadistill.experts.pad import (
    CurriculumHook,
    PADCurriculum,
    check_no_curriculum,
    fingerprint,
    prepare_curriculum,
)
from datadistill.tm.config import expert_config, load_pipeline_config
from datadistill.tm.pipeline import run_pipeline, train_pipeline_experts

TINY = [
    "experts.num_experts=2", "experts.epochs=3", "model_kwargs.width=32",
    "distill.syn_steps=5", "distill.max_start_epoch=1", "distill.iterations=4",
    "distill.eval_every=2", "distill.eval_runs=1", "distill.eval_epochs=3",
    "evaluation.runs=1", "evaluation.epochs=5", "evaluation.random_baseline=false",
]
# PAD's schedule squeezed into 3 epochs: 75 % easiest, then all, then the easiest 10 % dropped.
PAD_TINY = [
    "curriculum.schedule.add_end_epoch=1", "curriculum.schedule.rm_epoch_first=1",
    "curriculum.schedule.rm_epoch_second=2", "curriculum.score_models=2",
    "curriculum.score_epochs=1",
]
GSAM_SHARED = ("ftd", "datm", "mdatm")


def _cfg(method: str, extra: list[str] | None = None):
    return load_pipeline_config(f"digits/{method}_ipc1", TINY + (extra or []))


@pytest.fixture(scope="module")
def gsam_store(tmp_path_factory):
    """The toy GSAM expert store shared by FTD, DATM and M-DATM (same ExpertConfig)."""
    configs = [expert_config(_cfg(m)) for m in GSAM_SHARED]
    assert configs[0] == configs[1] == configs[2]
    out = tmp_path_factory.mktemp("gsam") / "experts"
    train_pipeline_experts(_cfg("datm"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(gsam_store, tmp_path_factory):
    """method -> (run folder, eval.json) for every preset."""
    done = {}
    for method in ("mtt", "ftd", "datm", "mdatm", "pad"):
        out = tmp_path_factory.mktemp(method)
        if method in GSAM_SHARED:
            shutil.copytree(gsam_store, out / "experts")
        cfg = _cfg(method, PAD_TINY if method == "pad" else None)
        done[method] = (out, run_pipeline(cfg, out, progress=False))
    return done


@pytest.mark.parametrize("method", ["mtt", "ftd", "datm", "mdatm", "pad"])
def test_every_preset_runs_end_to_end(runs, method):
    out, report = runs[method]
    assert json.loads((out / "eval.json").read_text())["config"]["method"] == method
    assert (out / "distill" / "best" / "meta.json").is_file()
    key = "challenge" if method == "mdatm" else "distilled_convnet"
    assert len(report[key]["accuracies"]) == 1 and 0.0 <= report[key]["mean"] <= 1.0
    best = load_distilled(out / "distill" / "best")
    assert best.method == method
    classic = report["distilled_convnet"]["settings"]  # trained with the learned step size
    assert classic["lr"] == best.lr and classic["epochs"] == 5


def test_shared_experts_were_reused_not_retrained(runs, gsam_store):
    for method in GSAM_SHARED:
        out, _ = runs[method]
        for name in ("expert_0000.pt", "expert_0001.pt"):
            assert (out / "experts" / name).read_bytes() == (gsam_store / name).read_bytes()


def test_ftd_ema_set_is_a_separate_output_evaluated_from_scratch(runs):
    out, report = runs["ftd"]
    ema_dir = out / "distill" / "ema_last"
    assert report["outputs"]["ema"] == str(ema_dir)
    ema, last = load_distilled(ema_dir), load_distilled(out / "distill" / "last")
    assert ema.extra.get("ema") is True
    assert not torch.equal(ema.images, last.images)  # decay 0.995: lags the raw images
    rep = report["ema_convnet"]
    assert len(rep["accuracies"]) == 1
    # A fresh network trained the configured epochs (+1), not 2 x that on a trained one.
    assert rep["settings"]["epochs_run"] == 6
    assert "ema_convnet" not in runs["datm"][1]


def test_datm_soft_labels_and_hard_label_evaluation(runs):
    out, report = runs["datm"]
    best = load_distilled(out / "distill" / "best")
    assert best.labels.shape == (10, 10) and best.labels.is_floating_point()
    soft, hard = report["distilled_convnet"], report["distilled_convnet_hard_labels"]
    assert soft["settings"]["labels"] == "soft" and hard["settings"]["labels"] == "hard"
    assert soft["settings"]["batch_size"] == hard["settings"]["batch_size"] == 128
    assert soft["settings"]["seed"] == hard["settings"]["seed"]  # only the labels differ
    assert "challenge" not in report


def test_mdatm_exports_a_class_major_challenge_file(runs):
    out, report = runs["mdatm"]
    path = out / "challenge" / "digits.pt"
    assert report["outputs"]["challenge_file"] == str(path)
    best = load_distilled(out / "distill" / "best")
    assert best.labels.dtype == torch.int64 and best.labels.dim() == 1
    assert torch.equal(best.labels, torch.arange(10).repeat_interleave(1))
    images = torch.load(path, weights_only=True)
    assert images.shape == (10, 1, 8, 8) and torch.equal(images, best.images)
    ch = report["challenge"]
    assert ch["protocol"] == "challenge" and ch["settings"]["lr"] == 0.01
    assert ch["settings"]["model_kwargs"]["depth"] == 3
    assert report["distilled_convnet"]["protocol"] == "classic"  # also reported


def test_pad_difficulty_file_and_schedule(runs):
    out, _ = runs["pad"]
    experts = out / "experts"
    order = load_difficulty(experts / "difficulty.pt")
    assert order.meta["score"] == "el2n" and order.scores is not None
    labels = prepare("digits").train.labels
    order.validate(labels)
    sizes = torch.bincount(labels).tolist()
    sched = dict(init_ratio=0.75, add_end_epoch=1, rm_epoch_first=1, rm_epoch_second=2,
                 rm_easy_ratio_first=0.1, rm_easy_ratio_second=0.2)
    expected = [sum(b - a for a, b in (kept_range(n, e, **sched) for n in sizes))
                for e in range(3)]
    assert expected[0] < expected[1] == len(labels) > expected[2]
    record = json.loads((experts / "curriculum.json").read_text())
    assert record["epoch_sizes"] == expected
    assert record["served_epoch_sizes"] == {str(e): n for e, n in enumerate(expected)}
    assert record["epoch_subset_calls"] == 2 * 3  # 2 experts x 3 epochs
    assert record["difficulty"]["fingerprint"] == fingerprint(order)
    dist = json.loads((out / "distill" / "config.json").read_text())
    assert dist["param_mask"] == "depth" and dist["label_mode"] == "soft"


def test_pad_store_refuses_another_schedule(runs):
    out, _ = runs["pad"]
    cfg = _cfg("pad", PAD_TINY + ["curriculum.schedule.init_ratio=0.5"])
    with pytest.raises(CompatibilityError, match="another curriculum"):
        prepare_curriculum(cfg.curriculum, expert_config(cfg), prepare("digits"),
                           out / "experts")
    with pytest.raises(CompatibilityError, match="curriculum"):
        check_no_curriculum(out / "experts")  # plain experts may not join a PAD store


def test_curriculum_refuses_plain_experts(tmp_path):
    (tmp_path / "expert_0000.pt").write_bytes(b"")
    cfg = _cfg("pad", PAD_TINY)
    with pytest.raises(CompatibilityError, match="without PAD's curriculum"):
        prepare_curriculum(cfg.curriculum, expert_config(cfg), prepare("digits"), tmp_path)


def test_curriculum_hook_records_what_it_served():
    order = DifficultyOrder([torch.arange(0, 8), torch.arange(8, 12)])
    hook = CurriculumHook(order, CurriculumConfig(add_end_epoch=1, rm_epoch_first=1,
                                                  rm_epoch_second=1, rm_easy_ratio_second=0.25))
    assert hook.planned_sizes(3) == [9, 12, 9] and hook.calls == 0
    assert hook(2).tolist() == [2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert hook.served == {2: 9} and hook.calls == 1


def test_curriculum_section_validates():
    assert load_pipeline_config("digits/mtt_ipc1").curriculum is None
    cfg = load_pipeline_config("digits/pad_ipc1")
    assert isinstance(cfg.curriculum, PADCurriculum) and cfg.curriculum.score == "el2n"
    with pytest.raises(ConfigError, match="score"):
        load_pipeline_config("digits/pad_ipc1", ["curriculum.score=forgetting"])
    with pytest.raises(ConfigError, match="init_ratio"):
        load_pipeline_config("digits/pad_ipc1", ["curriculum.schedule.init_ratio=2"])
    assert load_pipeline_config("digits/pad_ipc1", ["curriculum=null"]).curriculum is None


def test_challenge_protocol_needs_hard_labels_without_zca():
    with pytest.raises(ConfigError, match="zca=false"):
        load_pipeline_config("digits/mdatm_ipc1", ["zca=true"])
    with pytest.raises(ConfigError, match="label_mode=hard"):
        load_pipeline_config("digits/datm_ipc1", ["evaluation.protocols=[challenge]"])
    with pytest.raises(ConfigError, match="protocols"):
        load_pipeline_config("digits/mtt_ipc1", ["evaluation.protocols=[kaggle]"])
