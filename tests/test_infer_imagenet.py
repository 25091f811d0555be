"""INFER on ImageNet: recover-step crops, CutMix, checkpoint teachers, configs, a tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.config import config_from_dict, merge, read_config
from datadistill.data.imagenet import standard_classes
from datadistill.errors import ConfigError
from datadistill.infer import InferConfig, StudentConfig, num_groups, run_infer
from datadistill.infer import compensators as comp_mod
from datadistill.infer.compensators import BNStatistics, CompensatorSettings, optimise_compensator
from datadistill.infer.imagenet import (
    CropBox,
    batch_resized_crop_flip,
    crop_resize,
    resized_crop_box,
    sample_cutmix,
    sample_resized_crop_flip,
)
from datadistill.infer.pipeline import labelling_teachers, load_teachers
from datadistill.models.imagenet_teachers import create_imagenet_teacher

TEACHERS = ["resnet18_imagenet", "mobilenet_v2_imagenet", "efficientnet_b0_imagenet"]


# ----------------------------------------------------------------------------- crops, CutMix


def test_crop_box_stays_inside_and_covers_the_scale_range():
    gen = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(200):
        b = resized_crop_box(224, 224, gen)
        assert 0 <= b.top and b.top + b.height <= 224 and 0 <= b.left and b.left + b.width <= 224
        assert 3 / 4 - 0.05 <= b.width / b.height <= 4 / 3 + 0.05
        areas.append(b.height * b.width / 224**2)
    assert min(areas) < 0.2 and max(areas) > 0.8  # scale (0.08, 1)


def test_crop_box_falls_back_to_the_centre_at_the_nearest_ratio():
    # 10 x 1000: no crop of area >= 8 % with ratio <= 4/3 fits; centre crop 10 x round(13.3)
    b = resized_crop_box(10, 1000, torch.Generator().manual_seed(0))
    assert b == CropBox(0, (1000 - 13) // 2, 10, 13)


def test_full_box_resize_is_the_identity_and_one_draw_serves_the_batch():
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(crop_resize(x, CropBox(0, 0, 16, 16), (16, 16)), x)
    same = torch.randn(1, 3, 32, 32).repeat(3, 1, 1, 1)  # three equal images
    out = batch_resized_crop_flip(same, torch.Generator().manual_seed(1))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    per_sample = sample_resized_crop_flip(same, torch.Generator().manual_seed(1))
    assert not torch.equal(per_sample[0], per_sample[1])


def test_cutmix_pastes_one_box_and_mixes_logits_by_the_kept_area():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for seed in range(20):
        mix = sample_cutmix(2, 8, 8, 1.0, torch.Generator().manual_seed(seed))
        out, b = mix.apply(x), mix.box
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[b.top:b.top + b.height, b.left:b.left + b.width] = True
        assert torch.equal(out[:, :, inside], x[mix.perm][:, :, inside])
        assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
        assert mix.lam == pytest.approx(1 - inside.float().mean().item())
        torch.testing.assert_close(mix.apply(z), mix.lam * z + (1 - mix.lam) * z[mix.perm])


def test_compensator_crops_and_flips_before_the_jitter(monkeypatch):
    teacher = create_imagenet_teacher("resnet18_imagenet", 4).eval().requires_grad_(False)
    seen = []

    def record(x, generator):
        seen.append(tuple(x.shape))
        return x.flip(-1)

    jittered = []
    real_roll = comp_mod.roll_jitter

    def roll(x, jitter, generator):
        jittered.append(jitter)
        return real_roll(x, jitter, generator)

    monkeypatch.setattr(comp_mod, "batch_resized_crop_flip", record)
    monkeypatch.setattr(comp_mod, "roll_jitter", roll)
    group = torch.randn(4, 3, 32, 32)
    with BNStatistics(teacher) as bn:
        optimise_compensator(teacher, bn, group, CompensatorSettings(iterations=3, r_bn=0.01,
                                                                     jitter=32, crop_flip=True))
        optimise_compensator(teacher, bn, group, CompensatorSettings(iterations=2))
    assert seen == [(4, 3, 32, 32)] * 3 and jittered == [32] * 3 + [4] * 2


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("ipc, k", [(10, 9), (50, 49)])
def test_shipped_imagenet_configs_have_the_official_values(ipc, k):
    cfg = config_from_dict(InferConfig, read_config(f"imagenet/infer_ipc{ipc}").values)
    assert cfg.data.dataset == "imagenet" and cfg.teachers.archs == TEACHERS
    assert num_groups(cfg.ipc, 3, 1000) == k
    comp = cfg.compensator
    assert (comp.iterations, comp.lr, comp.r_bn, comp.first_bn_multiplier, comp.jitter) == (
        2000, 0.25, 0.01, 10.0, 32)
    assert comp.crop_flip and set(cfg.teachers.checkpoints) == set(TEACHERS)
    st = cfg.student
    assert (st.model, st.augment, st.mix, st.temperature, st.lr, st.weight_decay) == (
        "resnet18_imagenet", "resized_crop_flip", "cutmix", 20.0, 1e-3, 0.01)
    assert (st.epochs, st.batch_size, st.dynamic_teachers) == (300, 1024, ["resnet18_imagenet"])


def test_missing_checkpoint_files_are_found_before_any_decoding(tmp_path, monkeypatch):
    import datadistill.infer.pipeline as recipe_mod

    def no_prepare(*args, **kwargs):
        raise AssertionError("the data must not be prepared before the checkpoints are checked")

    monkeypatch.setattr(recipe_mod, "prepare_infer_data", no_prepare)
    cfg = config_from_dict(InferConfig, read_config("imagenet/infer_ipc10").values)
    cfg.teachers.checkpoints = {a: str(tmp_path / f"{a}.pth") for a in TEACHERS}
    with pytest.raises(ConfigError, match="resnet18_imagenet = .* does not exist"):
        run_infer(cfg, tmp_path / "out")


def test_checkpoint_teachers_are_not_trained(tmp_path):
    from datadistill.infer import train_teachers

    cfg = config_from_dict(InferConfig, read_config("imagenet/infer_ipc10").values)
    with pytest.raises(ConfigError, match="nothing to train: run `datadistill infer`"):
        train_teachers(cfg, tmp_path)


def test_bad_student_options_are_config_errors():
    with pytest.raises(ConfigError, match="student.augment"):
        InferConfig(student=StudentConfig(mix="mixcut"))
    with pytest.raises(ConfigError, match="dynamic_teachers"):
        InferConfig(student=StudentConfig(dynamic_teachers=["resnet50"]))


# ----------------------------------------------------------------------------- teachers


def _checkpoints(tmp_path, classes: int) -> dict[str, str]:
    out = {}
    for i, arch in enumerate(TEACHERS):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            state = create_imagenet_teacher(arch, classes).state_dict()
        torch.save(state, tmp_path / f"{arch}.pth")
        out[arch] = str(tmp_path / f"{arch}.pth")
    return out


def test_load_teachers_reads_checkpoints_and_picks_the_dynamic_labeller(tmp_path):
    ckpts = _checkpoints(tmp_path, 5)
    cfg = config_from_dict(InferConfig, {"dataset": "imagenet", "teachers": {
        "archs": TEACHERS, "checkpoints": ckpts}, "student": {
        "dynamic_teachers": ["resnet18_imagenet"]}})
    info = type("Info", (), {"num_classes": 5})()
    teachers, names = load_teachers(cfg, None, info)
    assert names == TEACHERS and not any(t.training for t in teachers)
    saved = torch.load(ckpts["mobilenet_v2_imagenet"], weights_only=True)
    assert torch.equal(teachers[1].classifier[1].weight, saved["classifier.1.weight"])
    assert labelling_teachers(cfg, teachers, names) == [teachers[0]]
    cfg.student.dynamic_teachers = None
    assert labelling_teachers(cfg, teachers, names) == teachers
    cfg.teachers.checkpoints = {**ckpts, "resnet18_imagenet": str(tmp_path / "nope.pth")}
    with pytest.raises(ConfigError, match="teachers.checkpoints.resnet18_imagenet = .*nope.pth "
                                          "does not exist"):
        load_teachers(cfg, None, info)
    cfg.teachers.checkpoints = {"resnet18_imagenet": ckpts["resnet18_imagenet"]}
    with pytest.raises(ConfigError, match="no file for: \\['mobilenet_v2_imagenet'"):
        load_teachers(cfg, None, info)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("archs", [
    TEACHERS[:1], pytest.param(TEACHERS, marks=pytest.mark.slow)])
def test_tiny_imagenet_layout_run_with_checkpoint_teachers(tmp_path, monkeypatch, archs):
    """Three classes of generated JPEGs at 224 px: the ImageNet recipe end to end on the CPU
    (2 compensator iterations, 1 student epoch with dynamic labels from the ResNet-18)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "in1k"
    for c in range(3):
        for split, n in (("train", 2), ("val", 2)):
            folder = root / split / standard_classes().wnids[c]
            folder.mkdir(parents=True)
            for j in range(n):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{j}.JPEG")
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    m = len(archs)
    overrides = {"data_root": str(root), "ipc": 2, "iterations": 2,  # K = 1 group
                 "teachers": {"archs": archs, "checkpoints": _checkpoints(tmp_path, 3)},
                 "student": {"epochs": 1, "dynamic_epochs": 1, "batch_size": 4,
                             "labels": "dynamic", "eval_every": 1}}
    cfg = config_from_dict(InferConfig, merge(read_config(
        "imagenet/infer_ipc10").values, overrides))
    result = run_infer(cfg, tmp_path / "out")
    s = result.infer_set
    assert s.base.shape == (1, 3, 3, 224, 224) and s.compensators.shape == (1, m, 3, 224, 224)
    n = 3 * (m + 1)  # C * K * (M + 1) instances
    assert s.labels.shape == (n, 3) and torch.isfinite(s.labels).all()
    assert result.report.settings["n_images"] == n and len(result.report.accuracies) == 1
    assert (tmp_path / "cache" / "imagenet_val_224px_eval_crop" / "meta.json").is_file()


def test_lazy_instances_equal_the_materialised_rows():
    from datadistill.data import DatasetInfo
    from datadistill.infer import InferSet
    from datadistill.infer.instances import LazyInstances

    gen = torch.Generator().manual_seed(0)
    info = DatasetInfo("toy", 3, 2, (4, 4), (0.4, 0.5), (0.2, 0.3), ("a", "b", "c"))
    s = InferSet(base=torch.randn(2, 3, 2, 4, 4, generator=gen) * 3,  # K=2, C=3: clamps too
                 compensators=torch.randn(2, 4, 2, 4, 4, generator=gen), labels=None,
                 info=info, ipc=4, teachers=["t0", "t1", "t2", "t3"])
    full = s.materialise().images  # (C * K * (M + 1), ...) = (30, 2, 4, 4)
    lazy = LazyInstances(s)
    assert lazy.shape == full.shape and len(lazy) == 30
    assert torch.equal(lazy[:], full) and torch.equal(lazy[7:19], full[7:19])
    idx = torch.tensor([29, 0, 13, 13, 5])
    assert torch.equal(lazy[idx], full[idx]) and torch.equal(lazy[11], full[11])
    assert torch.equal(lazy.to("cpu")[idx], full[idx])
