"""INFER's teacher architectures, their training loop (resume) and the teacher store."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from datadistill.data import DatasetInfo, ImageSet
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.infer import BNStatistics, TeacherConfig, TeacherStore, train_teacher
from datadistill.infer import teachers_train as tt
from datadistill.models.teachers import create_teacher, list_teachers

SHAPES = [(1, 8), (1, 28), (3, 32), (3, 64)]


@pytest.mark.parametrize("name", list_teachers())
@pytest.mark.parametrize("channels,size", SHAPES)
def test_teacher_forward_backward_all_shapes(name, channels, size):
    net = create_teacher(name, channels, 7, size, width_mult=0.125)
    x = torch.randn(2, channels, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Every BatchNorm layer is used (and so enters INFER's BN loss exactly once): the official
    # code has to drop an unused one of EfficientNet from its hook list; ours has none.
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with BNStatistics(net.eval()) as bn:
        net(x)
        assert n_bn > 0 and len(bn.terms) == n_bn


def test_published_sizes():
    # Parameter counts of the CIFAR-10 reference networks (kuangliu-style / torchvision R18).
    assert sum(p.numel() for p in create_teacher("resnet18_cifar", 3, 10, 32).parameters()) == (
        11_173_962
    )
    assert sum(p.numel() for p in create_teacher("mobilenetv2_cifar", 3, 10, 32).parameters()) == (
        2_296_922
    )
    shuffle = create_teacher("shufflenet_g2", 3, 10, 32)
    assert shuffle.fc.in_features == 800 and len(shuffle.units) == 16
    res = create_teacher("resnet18_cifar", 3, 10, 32)
    assert res.stem[0][0].kernel_size == (3, 3) and res.stem[0][0].stride == (1, 1)


def test_resnet18_stem_keeps_pytorch_default_init_as_the_official_replaced_conv1():
    # Official: torchvision resnet18 (Kaiming-normal fan_out convs), then conv1 replaced by a
    # fresh Conv2d, i.e. PyTorch's default: uniform with bound 1/sqrt(fan_in), std bound/sqrt(3).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = create_teacher("resnet18_cifar", 3, 10, 32)
    stem = net.stem[0][0].weight.detach()  # (64, 3, 3, 3)
    bound = 1 / (3 * 9) ** 0.5
    assert float(stem.abs().max()) <= bound
    assert abs(float(stem.std()) - bound / 3**0.5) < 0.05 * bound / 3**0.5
    inner = net.blocks[0].body[0][0].weight.detach()  # (64, 64, 3, 3): N(0, 2 / fan_out)
    fan_out_std = (2 / (64 * 9)) ** 0.5
    assert abs(float(inner.std()) - fan_out_std) < 0.05 * fan_out_std


def test_unknown_or_too_small_teacher_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18_cifar"):
        create_teacher("resnet99", 3, 10, 32)
    with pytest.raises(ConfigError, match="8x8"):
        create_teacher("resnet18_cifar", 3, 10, 4)


def _toy_set(n: int = 48) -> ImageSet:
    info = DatasetInfo("toy", 3, 1, (8, 8), (0.5,), (0.25,), ("a", "b", "c"), "color_crop")
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3, info, "normalized")


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return create_teacher("resnet18_cifar", 1, 3, 8, width_mult=0.125)


def test_interrupted_teacher_resumes_to_the_same_weights(tmp_path, monkeypatch):
    data, cfg = _toy_set(), TeacherConfig(epochs=3, batch_size=16)
    reference = train_teacher(_tiny_net(), data, cfg=cfg, flip=False, seed=1)

    # The per-epoch checkpoint write is the epoch boundary: crash before the second one lands.
    real_save, calls = tt.save_tensors, {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    ckpt = tmp_path / "resnet18_cifar" / "checkpoint.pt"
    monkeypatch.setattr(tt, "save_tensors", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(_tiny_net(), data, cfg=cfg, flip=False, seed=1,
                      checkpoint=tt.TeacherCheckpoint(ckpt))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(tt, "save_tensors", real_save)
    resumed = train_teacher(_tiny_net(), data, cfg=cfg, flip=False, seed=1,
                            checkpoint=tt.TeacherCheckpoint(ckpt))
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # A checkpoint made with another recipe is refused rather than silently mixed.
    with pytest.raises(CompatibilityError, match="recipe"):
        train_teacher(
            _tiny_net(), data, cfg=cfg, flip=False, seed=1,
            checkpoint=tt.TeacherCheckpoint(ckpt, recipe={"epochs": 99}),
        )


def test_store_round_trip_and_compatibility(tmp_path):
    data = _toy_set()
    net = _tiny_net().eval()
    info = data.info
    meta = {
        **tt.teacher_recipe("resnet18_cifar", info, TeacherConfig(width_mult=0.125), False),
        "class_names": list(info.class_names),
        "mean": list(info.mean),
        "std": list(info.std),
        "test_accuracy": 0.5,
    }
    store = TeacherStore(tmp_path)
    store.save(net, meta)
    assert store.archs() == ["resnet18_cifar"]
    loaded = store.load("resnet18_cifar")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = data.images[:4]
    assert torch.allclose(loaded(x), net(x))
    store.check_compatible(info)
    other = DatasetInfo("toy", 3, 1, (8, 8), (0.5,), (0.25,), ("b", "a", "c"))
    with pytest.raises(CompatibilityError, match="datadistill teachers"):
        store.check_compatible(other)
