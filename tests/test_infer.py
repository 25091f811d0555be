"""INFER components: budget arithmetic, BN-statistic loss, shared compensators, the stored set,
mixup of logits, the KD loss and the batched crop/flip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.config import config_from_dict, config_to_dict, list_configs, read_config
from datadistill.data import DatasetInfo, dataset_info, denormalize, prepare
from datadistill.errors import ConfigError
from datadistill.infer import (
    BNStatistics,
    CompensatorSettings,
    InferConfig,
    InferSet,
    TeacherConfig,
    bn_distance,
    generate_compensators,
    instances_per_class,
    kd_loss,
    load_infer_set,
    num_groups,
    optimise_compensator,
    sample_class_groups,
    sample_mixup,
    save_infer_set,
)
from datadistill.infer.labels import Mixup
from datadistill.infer.teachers_train import prepare_infer_data
from datadistill.infer.transforms import (
    black_level,
    crop_flip,
    pixels_at,
    random_crop,
    random_flip,
    uses_flip,
)
from datadistill.models.teachers import create_teacher

# ----------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    "classes,ipc,k,per_class",
    [
        (10, 10, 7, 35),
        (10, 50, 35, 175),
        (100, 10, 9, 45),
        (100, 50, 48, 240),
        (100, 100, 96, 480),
        (200, 10, 9, 45),
        (200, 50, 49, 245),
    ],
)
def test_groups_and_instances_for_published_settings(classes, ipc, k, per_class):
    assert num_groups(ipc, 4, classes) == k
    assert instances_per_class(ipc, 4, classes) == per_class
    assert k * (classes + 4) <= ipc * classes  # storage never exceeds the budget


def test_num_groups_keeps_the_official_float_rounding():
    # 30 groups fit exactly (30 * (10 + 1) = 33 * 10), but the official float formula
    # int(33 / (1 / 10 + 1)) = int(29.999...) gives 29; we keep it, and say so.
    assert 30 * (10 + 1) <= 33 * 10
    assert num_groups(33, 1, 10) == 29
    assert "faithful quirk" in num_groups.__doc__ and "29" in num_groups.__doc__


def test_budget_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="raise ipc"):
        num_groups(1, 4, 2)


def test_jitter_and_crop_padding_scale_with_image_size():
    assert pixels_at((32, 32), None) == 4 and pixels_at((64, 64), None) == 8
    assert pixels_at((8, 8), None) == 1 and pixels_at((28, 28), None) == 4
    assert pixels_at((8, 8), 3) == 3  # a configured value wins


TINY_UFC_STATS = ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262])  # ufc_generation/utils.py


def test_shipped_configs_scale_pixels_and_normalise_consistently():
    for name in [n for n in list_configs() if "/infer_ipc" in n]:
        cfg = config_from_dict(InferConfig, read_config(name).values)
        if cfg.data.dataset == "imagenet":  # official ImageNet values (jitter 32 px), not scaled
            assert cfg.compensator.jitter == 32 and cfg.mean is None and cfg.std is None, name
            continue
        scaled = pixels_at(dataset_info(cfg.data.dataset).image_size, None)
        for value in (cfg.compensator.jitter, cfg.teachers.crop_padding, cfg.student.crop_padding):
            assert value in (None, scaled), f"{name}: {value} px, the scaling rule gives {scaled}"
        if cfg.data.dataset == "tiny_imagenet":
            assert (cfg.mean, cfg.std) == TINY_UFC_STATS, name
        else:
            assert cfg.mean is None and cfg.std is None, name


def test_infer_data_uses_the_configured_normalisation():
    cfg = InferConfig.of(dataset="digits", mean=[0.25], std=[0.5])
    data, plain = prepare_infer_data(cfg), prepare("digits")
    assert data.info.mean == (0.25,) and data.test.info.std == (0.5,)
    # same pixels, other statistics
    raw = denormalize(data.train.images, data.info)
    assert torch.allclose(raw, denormalize(plain.train.images, plain.info), atol=1e-6)
    with pytest.raises(ConfigError, match="both mean and std"):
        InferConfig.of(dataset="digits", mean=[0.25])


def test_shipped_configs_parse_with_official_values():
    names = [n for n in list_configs() if "/infer_ipc" in n]
    expected = {
        "cifar10/infer_ipc10": 7,
        "cifar10/infer_ipc50": 35,
        "cifar100/infer_ipc10": 9,
        "cifar100/infer_ipc50": 48,
        "cifar100/infer_ipc100": 96,
        "tiny_imagenet/infer_ipc10": 9,
        "tiny_imagenet/infer_ipc50": 49,
        "digits/infer_ipc10": 7,
        "mnist/infer_ipc10": 7,
        "fashion_mnist/infer_ipc10": 7,
    }
    assert set(expected) <= set(names)
    classes = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}
    for name, k in expected.items():
        cfg = config_from_dict(InferConfig, read_config(name).values)
        assert num_groups(cfg.ipc, len(cfg.teachers.archs), classes.get(cfg.data.dataset, 10)) == k
        if not name.startswith("digits"):
            comp = cfg.compensator
            assert (comp.iterations, comp.lr, comp.r_bn, comp.first_bn_multiplier) == (
                1000,
                0.25,
                1.0,
                10.0,
            )
            assert (cfg.student.epochs, cfg.student.dynamic_epochs) == (400, 80)
            assert (cfg.student.temperature, cfg.student.batch_size) == (30.0, 64)
            assert cfg.teachers.epochs == 200 and cfg.teachers.width_mult == 1.0
    with pytest.raises(ConfigError, match="r_bn"):
        config_from_dict(InferConfig, {"r_bm": 1.0})


def test_infer_config_holds_data_and_compensator_sections_spelt_flat():
    flat = {"dataset": "digits", "train_per_class": 4, "iterations": 7, "betas": [0.4, 0.8],
            "jitter": 2, "teachers": {"epochs": 3}}
    cfg = config_from_dict(InferConfig, flat)
    assert (cfg.data.dataset, cfg.data.train_per_class, cfg.data.download) == ("digits", 4, False)
    assert cfg.compensator == CompensatorSettings(iterations=7, betas=(0.4, 0.8), jitter=2)
    assert cfg == InferConfig.of(**{**flat, "betas": (0.4, 0.8),
                                    "teachers": TeacherConfig(epochs=3)})
    written = config_to_dict(cfg)  # written back flat, in the declared order
    assert {k: written[k] for k in flat if k != "teachers"} == {
        k: v for k, v in flat.items() if k != "teachers"}
    assert written["teachers"]["epochs"] == 3
    assert list(written)[:5] == ["dataset", "data_root", "download", "train_per_class", "ipc"]
    assert config_from_dict(InferConfig, written) == cfg
    assert InferConfig().data.dataset == "cifar100"  # INFER's own default
    with pytest.raises(ConfigError, match="iterations must be >= 0"):
        InferConfig.of(iterations=-1)


def test_compensator_jitter_none_scales_with_the_image(monkeypatch):
    from datadistill.infer import compensators as comp_mod

    seen = []
    monkeypatch.setattr(comp_mod, "roll_jitter", lambda x, jitter, g: seen.append(jitter) or x)
    teacher = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(),
                            nn.Linear(2 * 8 * 8, 4)).eval().requires_grad_(False)
    with BNStatistics(teacher) as bn:
        for settings in (CompensatorSettings(iterations=1),
                         CompensatorSettings(iterations=1, jitter=3)):
            optimise_compensator(teacher, bn, torch.randn(4, 1, 8, 8), settings)
    assert seen == [pixels_at((8, 8), None), 3] == [1, 3]


# ----------------------------------------------------------------------------- BN loss


def _bn_matching(x: torch.Tensor) -> nn.BatchNorm2d:
    """A BN layer whose running statistics equal x's batch statistics."""
    bn = nn.BatchNorm2d(x.shape[1]).eval()
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    return bn


def test_bn_loss_is_zero_on_matching_statistics_and_reaches_u():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 6, 6, generator=g)
    net = nn.Sequential(_bn_matching(x), nn.Flatten(), nn.Linear(108, 5)).requires_grad_(False)
    with BNStatistics(net) as bn:
        net(x)
        assert bn.loss(10.0).item() == pytest.approx(0.0, abs=1e-5)
        u = torch.zeros(1, 3, 6, 6, requires_grad=True)
        with torch.no_grad():
            u += 0.1 * torch.randn(1, 3, 6, 6, generator=g)
        net(x + u)
        loss = bn.loss(10.0)
        assert loss.item() > 0
        loss.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_bn_distance_by_hand_and_first_layer_weight():
    f64 = torch.float64  # a check of the formula, not of the CPU's float32 kernels
    x = torch.randn(4, 2, 3, 3, dtype=f64)
    rm, rv = torch.tensor([0.5, -0.5], dtype=f64), torch.tensor([2.0, 0.5], dtype=f64)
    mean = x.permute(1, 0, 2, 3).reshape(2, -1).mean(1)
    var = ((x.permute(1, 0, 2, 3).reshape(2, -1) - mean[:, None]) ** 2).mean(1)
    hand = math.sqrt(((mean - rm) ** 2).sum()) + math.sqrt(((var - rv) ** 2).sum())
    assert bn_distance(x, rm, rv).item() == pytest.approx(hand, rel=1e-12)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval().double()
    with BNStatistics(net) as bn:
        net(x)
        t1, t2 = (t.item() for t in bn.terms)
        assert bn.loss(10.0).item() == pytest.approx(10 * t1 + t2, rel=1e-12)


def test_bn_hooks_are_removed():
    net = create_teacher("shufflenet_g2", 1, 3, 8, width_mult=0.125).eval()
    with BNStatistics(net):
        assert any(m._forward_hooks for m in net.modules())
    assert not any(m._forward_hooks for m in net.modules())


# ----------------------------------------------------------------------------- compensators


def _teacher(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = create_teacher("resnet18_cifar", 1, classes, 8, width_mult=0.125)
    net.train()(torch.randn(32, 1, 8, 8))  # give BN non-trivial running statistics
    return net.eval().requires_grad_(False)


def test_class_groups_are_distinct_and_one_per_class():
    x = torch.arange(60.0).view(60, 1, 1, 1).expand(60, 1, 8, 8).contiguous()
    y = torch.arange(60) % 4
    groups = sample_class_groups(x, y, 4, k=3, generator=torch.Generator().manual_seed(0))
    assert groups.images.shape == (3, 4, 1, 8, 8)
    assert (y[groups.indices] == torch.arange(4)).all()  # image c of every group is class c
    assert len(set(groups.indices.flatten().tolist())) == 12  # no image used twice
    assert torch.equal(groups.images[:, :, 0, 0, 0], x[groups.indices][:, :, 0, 0, 0])


def test_one_compensator_is_shared_by_the_group_and_lowers_ce():
    teacher, g = _teacher(), torch.Generator().manual_seed(0)
    group = torch.randn(4, 1, 8, 8, generator=g)  # image c is labelled c
    ce_before = F.cross_entropy(teacher(group), torch.arange(4)).item()
    with BNStatistics(teacher) as bn:
        st = CompensatorSettings(iterations=15, r_bn=0.0, jitter=1)
        u = optimise_compensator(teacher, bn, group, st, generator=g)
    assert u.shape == (1, 1, 8, 8) and not u.requires_grad
    assert F.cross_entropy(teacher(group + u), torch.arange(4)).item() < ce_before
    comps = generate_compensators(
        [teacher, _teacher(1)],
        group[None].repeat(2, 1, 1, 1, 1),
        CompensatorSettings(iterations=2, jitter=1),
        generator=g,
    )
    assert comps.shape == (2, 2, 1, 8, 8)  # (K, M, Ch, H, W): one u per (group, teacher)
    assert not any(m._forward_hooks for m in teacher.modules())


# ----------------------------------------------------------------------------- stored set

INFO = DatasetInfo("toy", 3, 1, (4, 4), (0.5,), (0.5,), ("a", "b", "c"))  # valid range [-1, 1]


def _infer_set(with_labels: bool = True) -> InferSet:
    g = torch.Generator().manual_seed(0)
    k, m, c = 2, 2, 3
    base = torch.rand(k, c, 1, 4, 4, generator=g) - 0.5  # inside [-1, 1]
    comps = 0.2 * torch.randn(k, m, 1, 4, 4, generator=g)
    comps[0, 0, 0, 0, 0] = 5.0  # pushes pixel (0, 0) out of range: must be clamped
    labels = torch.randn(k * (m + 1) * c, c, generator=g) if with_labels else None
    return InferSet(
        base,
        comps,
        labels,
        INFO,
        ipc=3,
        teachers=["resnet18_cifar", "shufflenet_g2"],
        source_indices=torch.arange(6).view(2, 3),
    )


def test_materialise_gives_base_plus_shared_compensator_with_labels():
    s = _infer_set()
    inst = s.materialise()
    assert inst.images.shape == (3 * 2 * 3, 1, 4, 4) and s.instances_per_class == 6
    for i in range(len(inst.images)):
        c, k, v = inst.labels[i].item(), inst.group[i].item(), inst.variant[i].item()
        assert i // 6 == c  # class-major order
        u = s.compensators[k, v] if v >= 0 else torch.zeros(1, 4, 4)
        assert torch.allclose(inst.images[i], (s.base[k, c] + u).clamp(-1, 1))
    assert inst.images.max() <= 1.0 and torch.equal(inst.soft_labels, s.labels)
    # The perturbation of group k, teacher m is the same for every class (away from clamping).
    delta = [
        inst.images[(inst.group == 1) & (inst.variant == 1) & (inst.labels == c)] - s.base[1, c]
        for c in range(3)
    ]
    assert torch.allclose(delta[0], delta[1]) and torch.allclose(delta[1], delta[2])


def test_storage_counts_image_units_against_the_budget():
    rep = _infer_set().storage()
    assert (rep.image_units, rep.budget_units, rep.instances) == (2 * 3 + 2 * 2, 9, 18)
    assert not rep.within_budget  # toy numbers: 10 units for a budget of 9
    assert rep.label_values == 18 * 3 and rep.label_bytes == 18 * 3 * 4


def test_saved_and_loaded_set_gives_identical_instances(tmp_path):
    s = _infer_set()
    save_infer_set(s, tmp_path / "set")
    loaded = load_infer_set(tmp_path / "set")
    a, b = s.materialise(), loaded.materialise()
    assert torch.equal(a.images, b.images) and torch.equal(a.soft_labels, b.soft_labels)
    assert loaded.info == INFO and loaded.teachers == s.teachers and loaded.ipc == 3
    assert torch.equal(loaded.source_indices, s.source_indices)
    ds = loaded.to_distilled()
    assert ds.method == "infer" and ds.labels.shape == (18, 3) and torch.equal(ds.images, a.images)


# ----------------------------------------------------------------------------- labels / loss


def test_mixup_interpolates_logits_with_the_batch_lambda():
    z = torch.randn(6, 4)
    mix = sample_mixup(6, 0.8, torch.Generator().manual_seed(3))
    expected = mix.lam * z + (1 - mix.lam) * z[mix.perm]
    assert torch.allclose(mix.apply(z), expected)
    m = Mixup(0.25, torch.tensor([1, 0]))
    assert torch.allclose(m.apply(torch.tensor([[4.0], [8.0]])), torch.tensor([[7.0], [5.0]]))
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([sample_mixup(2, 0.8, g).lam for _ in range(2000)])
    assert 0 <= lams.min() and lams.max() <= 1
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)  # Beta(0.8, 0.8): mean 1/2
    assert lams.var().item() == pytest.approx(0.25 / 2.6, abs=0.01)  # var = 1 / (4 (2a + 1))


def test_kd_loss_equals_hand_computation():
    s, t, temp = torch.randn(3, 5).double(), torch.randn(3, 5).double(), 30.0
    p = torch.softmax(t / temp, 1)
    hand = (p * (p.log() - torch.log_softmax(s / temp, 1))).sum() / 3
    assert kd_loss(s, t, temp).item() == pytest.approx(hand.item(), rel=1e-9)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- transforms


def test_random_crop_pads_with_black_and_shifts():
    x = torch.randn(5, 3, 6, 6)
    fill = black_level((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = random_crop(x, 2, fill, g1)
    offsets = torch.randint(0, 5, (5, 2), generator=g2)
    padded = fill.view(1, 3, 1, 1).expand(5, 3, 10, 10).clone()
    padded[:, :, 2:8, 2:8] = x
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])


def test_flip_mirrors_the_drawn_half_and_digit_datasets_have_no_flip():
    x = torch.arange(64 * 6.0).view(16, 1, 2, 12)  # no image is its own mirror
    out = random_flip(x, torch.Generator().manual_seed(0))
    drawn = torch.rand(16, generator=torch.Generator().manual_seed(0)) < 0.5  # (16,) flip?
    assert 0 < int(drawn.sum()) < 16
    for i in range(16):  # the left-right mirror (last axis), exactly where drawn
        assert torch.equal(out[i], x[i, :, :, torch.arange(11, -1, -1)] if drawn[i] else x[i])
    fill = torch.zeros(1)
    assert torch.equal(crop_flip(x, 0, fill, True, torch.Generator().manual_seed(0)), out)
    assert torch.equal(crop_flip(x, 0, fill, False, torch.Generator().manual_seed(0)), x)
    assert not uses_flip("color_crop_cutout_scale_rotate", None)
    assert uses_flip("color_crop_cutout_flip_scale_rotate", None)
    assert not uses_flip("color_crop_cutout_flip_scale_rotate", False)
