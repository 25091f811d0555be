"""INFER end to end on sklearn's 8x8 digits with tiny teachers (a few seconds on a CPU)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from datadistill.data import prepare
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError
from datadistill.infer import (
    InferConfig,
    StudentConfig,
    TeacherConfig,
    TeacherStore,
    evaluate_classic,
    evaluate_student,
    evaluate_student_images,
    load_infer_set,
    random_soft_subset,
    run_infer,
    train_teachers,
)
from datadistill.infer.teachers_train import META_FILE


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    cfg = InferConfig.of(
        dataset="digits",
        ipc=10,
        teacher_dir=str(root / "teachers"),
        # Two of the four architectures keep this fast; all four are tested in test_teachers.
        teachers=TeacherConfig(
            archs=["resnet18_cifar", "shufflenet_g2"], width_mult=0.125, epochs=2, batch_size=128
        ),
        iterations=3,
        student=StudentConfig(
            model_kwargs={"width_mult": 0.125}, epochs=2, eval_every=1, num_runs=1
        ),
    )
    store = train_teachers(cfg, cfg.teacher_dir)
    result = run_infer(cfg, root / "set")
    return cfg, store, result, root


def test_teachers_are_stored_and_skipped_on_rerun(digits_run):
    cfg, store, _, root = digits_run
    assert store.archs() == sorted(cfg.teachers.archs)
    meta = store.meta("shufflenet_g2")
    assert meta["dataset"] == "digits" and meta["epochs"] == 2 and meta["flip"] is False
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["format_version"] == 1
    stamp = (root / "teachers" / "shufflenet_g2" / META_FILE).stat().st_mtime_ns
    train_teachers(cfg, cfg.teacher_dir)  # nothing left to train
    assert (root / "teachers" / "shufflenet_g2" / META_FILE).stat().st_mtime_ns == stamp
    assert not list((root / "teachers").glob("*/checkpoint.pt"))


def test_infer_set_counts_files_and_report(digits_run):
    cfg, _, result, root = digits_run
    s = result.infer_set
    # M = 2 teachers, C = 10: K = int(10 / 1.2) = 8 groups, 8 * 3 = 24 instances per class.
    assert (s.num_groups, s.num_teachers, s.instances_per_class) == (8, 2, 24)
    assert s.labels.shape == (240, 10) and s.base.shape == (8, 10, 1, 8, 8)
    storage = s.storage()
    assert storage.image_units == 8 * 10 + 8 * 2 <= storage.budget_units == 100
    loaded = load_infer_set(root / "set")
    assert torch.equal(loaded.materialise().images, s.materialise().images)
    assert torch.equal(loaded.labels, s.labels)
    report = json.loads((root / "set" / "eval_infer.json").read_text())
    assert report["protocol"] == "infer_static" and len(report["accuracies"]) == 1
    assert report["settings"]["best_mean"] >= report["mean"]


def test_infer_writes_its_page(digits_run):
    cfg, _, result, root = digits_run
    text = (root / "set" / "report.html").read_text(encoding="utf-8")
    rep = result.report
    assert f"{100 * rep.mean:.2f} ± {100 * rep.std:.2f}" in text  # the student's accuracy
    assert "Zhang, Du, Liu, Zhou" in text and "no JPEG round trip" in text  # paper, deviations
    for arch in cfg.teachers.archs:  # each teacher's test accuracy
        assert f"teacher {arch}" in text
    grid = Image.open(root / "set" / "figures" / "infer_instances.png")
    assert grid.size[1] > 10 * 8 * 16  # ten class rows of 8 px images upsampled x16
    record = json.loads((root / "set" / "run_record.json").read_text())
    assert record["stages"]["infer"]["seconds"] > 0


def test_infer_page_shows_the_teacher_stores_settings_not_the_configs(digits_run, tmp_path):
    import shutil

    from datadistill.report.page import build_report

    _, _, _, root = digits_run
    copy = tmp_path / "set"
    shutil.copytree(root / "set", copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["config"]["teachers"]["epochs"] = 10  # the config asks for more than the store holds
    (copy / "meta.json").write_text(json.dumps(meta))
    text = build_report(copy).read_text(encoding="utf-8")
    assert "teachers.epochs: config 10, store 2" in text
    assert "<td>shufflenet_g2</td><td>2</td><td>128</td>" in text  # arch, epochs, batch
    assert "2 epochs, batch 128" in text  # beside each teacher's accuracy


def test_static_labels_are_the_teacher_mean_and_dynamic_training_runs(digits_run):
    cfg, store, result, _ = digits_run
    teachers = [store.load(a) for a in cfg.teachers.archs]
    # the whole set in one batch, as the labels were made: a batch of 5 could take another
    # float32 kernel and round differently
    x = result.infer_set.materialise().images
    with torch.no_grad():
        mean = torch.stack([t(x) for t in teachers]).mean(0)
    assert torch.allclose(result.infer_set.labels, mean, atol=1e-5)
    test = prepare("digits").test
    dyn = StudentConfig(
        labels="dynamic",
        dynamic_epochs=1,
        model="shufflenet_g2",
        model_kwargs={"width_mult": 0.125},
    )
    report = evaluate_student(result.infer_set, test, dyn, teachers=teachers)
    assert report.protocol == "infer_dynamic" and 0 <= report.mean <= 1
    with pytest.raises(ConfigError, match="teachers"):
        evaluate_student(result.infer_set, test, dyn)


def test_classic_protocol_on_the_materialised_set(digits_run):
    _, _, result, _ = digits_run
    test = prepare("digits").test
    report = evaluate_classic(
        result.infer_set, test, model="convnet", epochs=1, num_runs=1, model_kwargs={"width": 8}
    )
    assert report.protocol == "classic" and report.settings["n_images"] == 240


def test_missing_teacher_store_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="teacher_dir"):
        run_infer(InferConfig.of(dataset="digits"), tmp_path / "out")
    cfg = InferConfig.of(dataset="digits", teacher_dir=str(tmp_path / "none"))
    with pytest.raises(ArtifactError, match="datadistill teachers"):
        run_infer(cfg, tmp_path / "out")
    assert TeacherStore(tmp_path / "none").archs() == []


def test_random_soft_subset_baseline_uses_the_same_teacher_labels(digits_run):
    cfg, store, _, _ = digits_run
    teachers = [store.load(a) for a in cfg.teachers.archs]
    real = prepare("digits")
    x, z = random_soft_subset(real.train, 3, teachers, torch.Generator().manual_seed(0))
    assert x.shape == (30, 1, 8, 8) and z.shape == (30, 10)
    with torch.no_grad():
        mean = torch.stack([t(x) for t in teachers]).mean(0)
    assert torch.allclose(z, mean, atol=1e-5)
    # the images are real training images, 3 per class in class order
    rows = [(real.train.images.flatten(1) == img).all(1).nonzero().flatten()[0] for img in
            x.flatten(1)]
    assert real.train.labels[torch.stack(rows)].tolist() == sum([[c] * 3 for c in range(10)], [])
    student = StudentConfig(model="convnet", model_kwargs={"width": 8}, epochs=2, eval_every=1,
                            num_runs=2)
    report = evaluate_student_images(x, z, real.test, student)
    assert report.protocol == "infer_static" and len(report.accuracies) == 2
    assert report.settings["n_images"] == 30
    with pytest.raises(ConfigError, match="one row per image"):
        evaluate_student_images(x, z[:5], real.test, student)


def test_train_per_class_reaches_teachers_and_class_groups(tmp_path):
    cfg = InferConfig.of(dataset="digits", ipc=2, train_per_class=4,
                         teacher_dir=str(tmp_path / "teachers"), iterations=1,
                         teachers=TeacherConfig(archs=["shufflenet_g2"], width_mult=0.125,
                                                epochs=1),
                         student=StudentConfig(num_runs=0))
    store = train_teachers(cfg, cfg.teacher_dir)
    assert store.meta("shufflenet_g2")["train_per_class"] == 4
    result = run_infer(cfg, tmp_path / "set")
    small = prepare("digits", train_per_class=4).train
    picked = result.infer_set.base.flatten(0, 1).flatten(1)  # (K*C, pixels)
    flat = small.images.flatten(1)
    assert all((flat == row).all(1).any() for row in picked)  # groups come from the subset
    with pytest.raises(CompatibilityError, match="train_per_class"):
        full = replace(cfg, data=replace(cfg.data, train_per_class=None))
        train_teachers(full, cfg.teacher_dir)


def test_a_killed_infer_resumes_its_compensators_bitwise(digits_run, tmp_path, monkeypatch):
    import dataclasses

    from datadistill.infer import pipeline
    from datadistill.infer.compensators import optimise_compensator

    cfg, _, result, root = digits_run
    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, num_runs=0))
    reference = load_infer_set(result.path)
    calls = []

    def killed_after_two_groups(*args, **kwargs):
        if len(calls) == 2 * 2:  # 2 groups x 2 teachers done, then "kill -9"
            raise KeyboardInterrupt
        calls.append(1)
        return optimise_compensator(*args, **kwargs)

    monkeypatch.setattr("datadistill.infer.compensators.optimise_compensator",
                        killed_after_two_groups)
    with pytest.raises(KeyboardInterrupt):
        run_infer(cfg, tmp_path / "set")
    assert (tmp_path / "set" / pipeline.COMPENSATOR_PROGRESS).is_file()
    calls.clear()
    monkeypatch.setattr("datadistill.infer.compensators.optimise_compensator",
                        lambda *a, **k: calls.append(1) or optimise_compensator(*a, **k))
    run_infer(cfg, tmp_path / "set")
    groups = reference.compensators.shape[0]
    assert len(calls) == (groups - 2) * 2  # only the unfinished groups were computed
    again = load_infer_set(tmp_path / "set")
    assert torch.equal(again.compensators, reference.compensators)
    assert torch.equal(again.labels, reference.labels)


def test_teacher_progress_lines_name_the_architecture(digits_run, tmp_path, capsys):
    cfg = digits_run[0]
    cfg = replace(cfg, teacher_dir=str(tmp_path / "t"),
                  teachers=replace(cfg.teachers, archs=["shufflenet_g2"], epochs=1))
    train_teachers(cfg, cfg.teacher_dir, progress=True)
    err = capsys.readouterr().err
    assert "teacher shufflenet_g2: 1/1 in " in err and "\r" not in err
