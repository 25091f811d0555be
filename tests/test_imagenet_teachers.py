"""INFER's ImageNet teachers load torchvision-format state dicts written here, key for key."""

from __future__ import annotations

import pytest
import torch

from datadistill.errors import ArtifactError, CompatibilityError
from datadistill.models import create_model
from datadistill.models.imagenet_teachers import IMAGENET_TEACHERS, load_teacher_checkpoint

# torchvision's published parameter counts (the `num_params` of its IMAGENET1K_V1 weights).
NUM_PARAMS = {"resnet18_imagenet": 11_689_512, "mobilenet_v2_imagenet": 3_504_872,
              "efficientnet_b0_imagenet": 5_288_548}


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet18(classes: int = 1000) -> dict[str, tuple]:
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for i, w in enumerate((64, 128, 256, 512), start=1):
        for b in (0, 1):
            p = f"layer{i}.{b}"
            keys |= {f"{p}.conv1.weight": (w, cin if b == 0 else w, 3, 3), **_bn(f"{p}.bn1", w),
                     f"{p}.conv2.weight": (w, w, 3, 3), **_bn(f"{p}.bn2", w)}
            if b == 0 and i > 1:
                keys |= {f"{p}.downsample.0.weight": (w, cin, 1, 1), **_bn(f"{p}.downsample.1", w)}
        cin = w
    return keys | {"fc.weight": (classes, 512), "fc.bias": (classes,)}


def torchvision_mobilenet_v2(classes: int = 1000) -> dict[str, tuple]:
    keys = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    idx, cin = 1, 32
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, hidden, j = f"features.{idx}.conv", cin * t, 0
            if t != 1:
                keys |= {f"{p}.0.0.weight": (hidden, cin, 1, 1), **_bn(f"{p}.0.1", hidden)}
                j = 1
            keys |= {f"{p}.{j}.0.weight": (hidden, 1, 3, 3), **_bn(f"{p}.{j}.1", hidden),
                     f"{p}.{j + 1}.weight": (c, hidden, 1, 1), **_bn(f"{p}.{j + 2}", c)}
            idx, cin = idx + 1, c
    keys |= {"features.18.0.weight": (1280, 320, 1, 1), **_bn("features.18.1", 1280)}
    return keys | {"classifier.1.weight": (classes, 1280), "classifier.1.bias": (classes,)}


def torchvision_efficientnet_b0(classes: int = 1000) -> dict[str, tuple]:
    keys = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    stages = ((1, 3, 32, 16, 1), (6, 3, 16, 24, 2), (6, 5, 24, 40, 2), (6, 3, 40, 80, 3),
              (6, 5, 80, 112, 3), (6, 5, 112, 192, 4), (6, 3, 192, 320, 1))
    for s, (e, k, cin, cout, n) in enumerate(stages, start=1):
        for b in range(n):
            p, c_in = f"features.{s}.{b}.block", cin if b == 0 else cout
            hidden, sq, j = c_in * e, max(1, c_in // 4), 0
            if e != 1:
                keys |= {f"{p}.0.0.weight": (hidden, c_in, 1, 1), **_bn(f"{p}.0.1", hidden)}
                j = 1
            keys |= {f"{p}.{j}.0.weight": (hidden, 1, k, k), **_bn(f"{p}.{j}.1", hidden),
                     f"{p}.{j + 1}.fc1.weight": (sq, hidden, 1, 1), f"{p}.{j + 1}.fc1.bias": (sq,),
                     f"{p}.{j + 1}.fc2.weight": (hidden, sq, 1, 1),
                     f"{p}.{j + 1}.fc2.bias": (hidden,),
                     f"{p}.{j + 2}.0.weight": (cout, hidden, 1, 1), **_bn(f"{p}.{j + 2}.1", cout)}
    keys |= {"features.8.0.weight": (1280, 320, 1, 1), **_bn("features.8.1", 1280)}
    return keys | {"classifier.1.weight": (classes, 1280), "classifier.1.bias": (classes,)}


TORCHVISION = {"resnet18_imagenet": torchvision_resnet18,
               "mobilenet_v2_imagenet": torchvision_mobilenet_v2,
               "efficientnet_b0_imagenet": torchvision_efficientnet_b0}


def _random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_the_spec_here_matches_torchvision_parameter_counts():
    for name, spec in TORCHVISION.items():
        params = sum(torch.Size(s).numel() for k, s in spec().items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        assert params == NUM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(IMAGENET_TEACHERS))
def test_torchvision_state_dict_loads_key_for_key(name, tmp_path):
    state = _random_state(TORCHVISION[name]())
    torch.save(state, tmp_path / "w.pth")
    net = load_teacher_checkpoint(name, tmp_path / "w.pth")
    loaded = net.state_dict()
    assert list(loaded) == list(state)  # torchvision's key order, too
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not net.training
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMS[name]


def test_wrapped_and_dataparallel_checkpoints_load(tmp_path):
    state = _random_state(torchvision_resnet18(10))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "ckpt.pth")
    net = load_teacher_checkpoint("resnet18_imagenet", tmp_path / "ckpt.pth", num_classes=10)
    assert torch.equal(net.fc.weight, state["fc.weight"])


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    state = _random_state(torchvision_mobilenet_v2())
    del state["features.3.conv.1.0.weight"]
    state["features.19.0.weight"] = torch.zeros(1)
    state["classifier.1.weight"] = torch.zeros(10, 1280)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CompatibilityError, match=r"missing keys \(1\): features\.3\.conv\.1\.0"
                       r"\.weight; unexpected keys \(1\): features\.19\.0\.weight; shape "
                       r"mismatches \(1\): classifier\.1\.weight \(10, 1280\) \(expected "
                       r"\(1000, 1280\)\)"):
        load_teacher_checkpoint("mobilenet_v2_imagenet", tmp_path / "bad.pth")


class Pickled:
    """Any non-tensor object: weights_only=True must refuse to rebuild it."""


def test_a_pickled_object_is_refused_and_a_non_state_dict_is_named(tmp_path):
    torch.save({"model": Pickled()}, tmp_path / "pickled.pth")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_teacher_checkpoint("resnet18_imagenet", tmp_path / "pickled.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CompatibilityError, match="holds no state dict"):
        load_teacher_checkpoint("resnet18_imagenet", tmp_path / "list.pth")


def test_registered_as_students():
    net = create_model("resnet18_imagenet", 3, 7, 32)
    assert net.fc.out_features == 7
