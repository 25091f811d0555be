"""Every check that can run before work starts runs before work starts (exit 2, one line)."""

import pytest
import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.checks import check_window
from datadistill.cli import main
from datadistill.data import create_dataset
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.evaluation.baselines import random_subset
from datadistill.tm.config import load_pipeline_config
from datadistill.tm.pipeline import run_pipeline

SMALL = ["distill.iterations=1", "distill.eval_runs=0", "experts.num_experts=1"]


def _validate(capsys, *overrides, config="digits/mtt_ipc1"):
    code = main(["validate", config, *overrides])
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize("override, match", [
    ("distill.lr_img=-100", "distill.lr_img must be > 0"),
    ("distill.lr_lr=-1e-5", "distill.lr_lr must be >= 0"),
    ("distill.eval_batch=0", "distill.eval_batch must be an integer >= 1"),
    ("distill.eval_epochs=-1", "distill.eval_epochs must be an integer >= 0"),
    ("evaluation.runs=0", "evaluation.runs"),
    ("ipc=0", "ipc must be"),
    ("dataset=digitz", "unknown dataset 'digitz'"),
    ("model=convnett", "unknown model 'convnett'"),
])
def test_validate_refuses_out_of_range_values(capsys, override, match):
    code, err = _validate(capsys, override)
    assert code == 2 and match in err and err.count("\n") == 0


def test_validate_refuses_negative_soft_label_lr(capsys):
    code, err = _validate(capsys, "distill.label_mode=soft", "distill.lr_y=-2")
    assert code == 2 and "distill.lr_y must be > 0" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_validate_refuses_cuda_without_cuda(capsys):
    code, err = _validate(capsys, "device=cuda")
    assert code == 2 and "no CUDA GPU is available" in err and "device=cpu" in err


def test_validate_refuses_ipc_larger_than_the_smallest_class(capsys):
    code, err = _validate(capsys, "ipc=500")
    assert code == 2 and "lower ipc to at most" in err


def test_validate_checks_the_window_against_the_expert_length(capsys):
    # digits/mtt_ipc1: expert_epochs 2; the window's last target is max_start - 1 + 2.
    code, err = _validate(capsys, "experts.epochs=10", "distill.max_start_epoch=10")
    assert code == 2 and "raise experts.epochs to at least 11" in err
    code, _ = _validate(capsys, "experts.epochs=10", "distill.max_start_epoch=9")
    assert code == 0  # 9 + 2 <= 10 + 1: the last target is epoch 10, which exists


def test_window_rule_is_inclusive():
    check_window(max_start_epoch=20, expert_epochs=2, epochs=21, where="the store has")
    with pytest.raises(CompatibilityError, match="<= expert epochs \\+ 1"):
        check_window(max_start_epoch=20, expert_epochs=3, epochs=21, where="the store has")


def test_validate_infer_refuses_negative_teacher_lr(capsys):
    code, err = _validate(capsys, "teachers.lr=-0.1", config="digits/infer_ipc10")
    assert code == 2 and "teachers.lr must be > 0" in err


def test_run_refuses_ipc_before_training_experts(tmp_path):
    cfg = load_pipeline_config("digits/mtt_ipc1", [*SMALL, "ipc=500"])
    with pytest.raises(ConfigError, match="lower ipc"):
        run_pipeline(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "experts").exists()


@pytest.fixture(scope="module")
def digits_set():
    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    return DistilledSet(images=x, labels=y, lr=0.01, info=train.info, space="normalized",
                        ipc=1, method="random")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_eval_refuses_non_finite_images(tmp_path, digits_set, capsys, bad):
    images = digits_set.images.clone()
    images[0, 0, 0, 0] = bad
    path = save_distilled(DistilledSet(images=images, labels=digits_set.labels, lr=0.01,
                                       info=digits_set.info, space="normalized", ipc=1,
                                       method="random"), tmp_path / "set")
    code = main(["eval", str(path), "--epochs", "1", "--runs", "1", "--quiet"])
    assert code == 2 and "1 NaN/Inf values" in capsys.readouterr().err
    assert not (path / "eval.json").exists()


@pytest.mark.parametrize("args, match", [
    (["--epochs", "-1"], "--epochs must be an integer >= 0"),
    (["--runs", "0"], "--runs must be an integer >= 1"),
    (["--lr", "-0.01"], "--lr must be > 0"),
])
def test_eval_refuses_bad_numbers(tmp_path, digits_set, capsys, args, match):
    path = save_distilled(digits_set, tmp_path / "set")
    code = main(["eval", str(path), "--quiet", *args])
    assert code == 2 and match in capsys.readouterr().err


def test_unwritable_out_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    ran = []
    monkeypatch.setattr("datadistill.evaluation.baselines.train_and_test",
                        lambda *a, **k: ran.append(1))
    code = main(["baseline", "random", "--epochs", "1", "--runs", "1", "--quiet",
                 "--out", str(blocker / "b.json")])
    assert code == 2 and "not a writable folder" in capsys.readouterr().err and not ran
    code = main(["baseline", "random", "--epochs", "1", "--runs", "1", "--quiet",
                 "--out", str(tmp_path)])
    assert code == 2 and "is a folder" in capsys.readouterr().err and not ran


def test_run_into_a_file_is_a_clean_error(tmp_path):
    (tmp_path / "f").write_text("x")
    cfg = load_pipeline_config("digits/mtt_ipc1", SMALL)
    with pytest.raises(ConfigError, match="cannot write into the output folder"):
        run_pipeline(cfg, tmp_path / "f" / "out", progress=False)


def test_evaluate_refuses_zero_runs(digits_set):
    from datadistill.evaluation.protocols import evaluate

    test = create_dataset("digits", split="test")
    with pytest.raises(ConfigError, match="evaluation runs must be an integer >= 1"):
        evaluate(digits_set.images, digits_set.labels, test, num_runs=0, epochs=1)


def test_damaged_checkpoint_message_names_restart_not_unsafe_loading(tmp_path):
    from datadistill.tm.checkpoint import load_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="truncated, damaged or not a tensor file.*--restart") as e:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "weights_only" not in str(e.value)


def test_eval_of_a_legacy_file_writes_the_report_beside_it(tmp_path):
    torch.save(torch.zeros(10, 1, 8, 8), tmp_path / "images_best.pt")
    torch.save(torch.arange(10), tmp_path / "labels_best.pt")
    code = main(["eval", str(tmp_path / "images_best.pt"), "--dataset", "digits", "--epochs",
                 "1", "--runs", "1", "--quiet"])
    assert code == 0 and (tmp_path / "eval.json").is_file()
