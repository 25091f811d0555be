"""Tests of the model registry and the DC/MTT model zoo (shapes, counts, errors)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from datadistill.errors import ConfigError
from datadistill.models import create_model, list_models
from datadistill.models.convnet import ConvNet, _say_default_depth

ZOO = (
    "convnet", "convnet_bn", "convnetd4", "convnetd5", "lenet", "alexnet", "vgg11",
    "vgg11_bn", "resnet18", "resnet18_bn", "resnet18_ap", "mlp",
)  # fmt: skip
# (in_channels, side): MNIST, CIFAR, Tiny ImageNet, sklearn digits
SHAPES = ((1, 28), (3, 32), (3, 64), (1, 8))
# Architectures whose maps shrink below 1x1 on 8x8 input: a clear ConfigError is expected.
# Instance-norm ResNets refuse them too: their last stage would normalise 1x1 maps.
TOO_SMALL = {
    ("lenet", 8), ("vgg11", 8), ("vgg11_bn", 8), ("convnetd4", 8), ("convnetd5", 8),
    ("resnet18", 8), ("resnet18_ap", 8),
}  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_zoo():
    assert set(ZOO) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize(
    "name, channels, classes, size, kwargs, expected",
    [
        ("convnet", 3, 10, 32, {}, 320_010),  # CIFAR-10 ConvNet-3
        ("convnet", 3, 100, 32, {}, 504_420),  # CIFAR-100 ConvNet-3
        ("convnetd4", 3, 200, 64, {}, 857_160),  # Tiny ConvNetD4
        ("convnet", 3, 200, 64, {"depth": 3}, 1_938_120),  # Tiny ConvNet-3 (challenge)
        ("convnet", 3, 200, 64, {}, 857_160),  # depth None -> 4 at 64 px
    ],
)
def test_convnet_parameter_counts(name, channels, classes, size, kwargs, expected):
    assert n_params(create_model(name, channels, classes, size, **kwargs)) == expected


def test_convnet_parameter_order_is_the_expert_order():
    names = [n for n, _ in create_model("convnet", 3, 10, 32).named_parameters()]
    expected = []
    for d in (1, 2, 3):
        expected += [f"conv{d}.weight", f"conv{d}.bias", f"norm{d}.weight", f"norm{d}.bias"]
    assert names == expected + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("channels, side", SHAPES)
@pytest.mark.parametrize("name", ZOO)
def test_every_model_runs_on_every_dataset_shape(name, channels, side):
    if (name, side) in TOO_SMALL:
        with pytest.raises(ConfigError, match="cannot take 8x8"):
            create_model(name, channels, 10, side)
        return
    # Shapes only: built and run on the meta device, so the 11M-parameter nets cost nothing.
    # Real forward/backward of every model is in test_functional.py.
    with torch.device("meta"):
        model = create_model(name, channels, 10, (side, side))
        out = model(torch.empty(2, channels, side, side))
    assert out.shape == (2, 10)


def test_unknown_name_lists_valid_models():
    with pytest.raises(ConfigError, match="valid models are: .*convnet"):
        create_model("convnet9000", 3, 10, 32)


def test_unknown_kwarg_lists_valid_kwargs():
    with pytest.raises(ConfigError, match="valid kwargs are: width, depth, norm, act, pool"):
        create_model("convnet", 3, 10, 32, widht=64)
    with pytest.raises(ConfigError, match="valid kwargs are: \\(none\\)"):
        create_model("lenet", 3, 10, 32, norm="batchnorm")


@pytest.mark.parametrize("kwargs", [{"norm": "weirdnorm"}, {"act": "gelu"}, {"pool": "lp"}])
def test_bad_choice_names_valid_values(kwargs):
    with pytest.raises(ConfigError, match="valid values are"):
        create_model("convnet", 3, 10, 32, **kwargs)


@pytest.mark.parametrize(
    "side, depth, feat",
    [(8, 1, 4), (16, 2, 4), (28, 3, 3), (32, 3, 4), (64, 4, 4), (128, 5, 4)],
)
def test_default_depth_follows_image_size(side, depth, feat):
    model = create_model("convnet", 3, 10, side, width=8)
    assert model.depth == depth
    assert model.feature_shape == (8, feat, feat)


def test_default_depth_at_64_px_says_which_depth_it_took(caplog):
    _say_default_depth.cache_clear()
    with caplog.at_level(logging.WARNING, logger="datadistill.models.convnet"):
        create_model("convnet", 3, 10, 64, width=8)
        create_model("convnet", 3, 10, 64, width=8)  # said once, not per model
        create_model("convnet", 3, 10, 64, width=8, depth=3)  # explicit: nothing to say
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "depth 4" in said[0] and "depth=3" in said[0]


def test_mnist_first_conv_pads_to_32():
    model = create_model("convnet", 1, 10, (28, 28))
    assert model.conv1.padding == (3, 3) and model.conv2.padding == (1, 1)
    assert model.feature_shape == (128, 4, 4) and model.fc.in_features == 2048
    # the DC zoo's other 1-channel paddings: VGG 3, AlexNet 4, LeNet 2
    assert create_model("vgg11", 1, 10, 28).features[0].padding == (3, 3)
    assert create_model("alexnet", 1, 10, 28).conv1.padding == (4, 4)
    assert create_model("lenet", 1, 10, 28).conv1.padding == (2, 2)


def test_digits_convnet_keeps_a_4x4_map():
    model = create_model("convnet", 1, 10, 8)
    assert model.conv1.padding == (1, 1)
    assert model.feature_shape == (128, 4, 4)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    deep = create_model("convnet", 1, 10, 8, depth=3)  # still buildable on request
    assert deep.feature_shape == (128, 1, 1)


def test_instancenorm_is_per_sample_per_channel_normalisation():
    model = create_model("convnet", 3, 10, 16, width=8, depth=1).double()  # maths: float64
    norm = model.norm1
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 8 and norm.eps == 1e-5
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    assert not list(norm.buffers())  # no running statistics
    h = torch.randn(4, 8, 16, 16, dtype=torch.float64) * 3 + 1
    var, mean = torch.var_mean(h, dim=(2, 3), unbiased=False, keepdim=True)
    manual = (h - mean) / torch.sqrt(var + 1e-5) * norm.weight[:, None, None] + norm.bias[
        :, None, None
    ]
    torch.testing.assert_close(norm(h), manual, atol=1e-12, rtol=1e-12)


def test_norm_variants():
    def net(norm):
        return create_model("convnet", 3, 10, 32, width=16, norm=norm)

    assert isinstance(net("batchnorm").norm1, nn.BatchNorm2d)
    assert isinstance(create_model("convnet_bn", 3, 10, 32).norm2, nn.BatchNorm2d)
    assert net("layernorm").norm1.weight.shape == (16, 32, 32)  # (C, H, W) elementwise affine
    assert net("layernorm").norm2.weight.shape == (16, 16, 16)
    assert net("groupnorm").norm1.num_groups == 4
    names = [n for n, _ in net("none").named_parameters()]
    assert names == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight",
                     "conv3.bias", "fc.weight", "fc.bias"]  # fmt: skip
    for norm in ("batchnorm", "layernorm", "groupnorm", "none"):
        assert net(norm)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("act", ["relu", "leakyrelu", "sigmoid", "swish"])
@pytest.mark.parametrize("pool", ["avgpool", "maxpool", "none"])
def test_activation_and_pooling_variants(act, pool):
    model = create_model("convnet", 3, 4, 8, width=4, depth=2, act=act, pool=pool).double()
    acts = {"relu": lambda h: h.clamp(min=0),
            "leakyrelu": lambda h: torch.where(h > 0, h, 0.01 * h),
            "sigmoid": lambda h: 1 / (1 + torch.exp(-h)),
            "swish": lambda h: h / (1 + torch.exp(-h))}
    pools = {"avgpool": lambda h: h.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)),
             "maxpool": lambda h: h.unfold(2, 2, 2).unfold(3, 2, 2).amax((-1, -2)),
             "none": lambda h: h}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # maths: float64, not the CPU's kernels
    h = x
    for d in (1, 2):  # conv -> norm -> activation -> 2x2 pooling, by hand
        h = pools[pool](acts[act](getattr(model, f"norm{d}")(getattr(model, f"conv{d}")(h))))
    side = 2 if pool != "none" else 8
    assert model.fc.in_features == 4 * side * side
    torch.testing.assert_close(model(x), model.fc(h.flatten(1)), atol=1e-12, rtol=1e-12)


def test_aliases_set_defaults_that_can_be_overridden():
    assert create_model("convnetd4", 3, 10, 64).depth == 4
    assert create_model("convnetd5", 3, 10, 128, width=8).depth == 5
    assert isinstance(create_model("convnet_bn", 3, 10, 32, norm="instancenorm").norm1,
                      nn.GroupNorm)  # fmt: skip
    assert isinstance(create_model("vgg11_bn", 3, 10, 32).features[1], nn.BatchNorm2d)
    assert isinstance(create_model("vgg11", 3, 10, 32).features[1], nn.GroupNorm)
    assert isinstance(create_model("resnet18_bn", 3, 10, 32).norm1, nn.BatchNorm2d)
    assert isinstance(create_model("resnet18", 3, 10, 32).norm1, nn.GroupNorm)
    assert isinstance(create_model("alexnet", 3, 10, 32, norm="batchnorm").norm1, nn.BatchNorm2d)


def test_resnet18_ap_flattens_the_last_map_as_dc():
    assert create_model("resnet18_ap", 3, 10, 32).fc.in_features == 512 * 4 * 4
    assert create_model("resnet18_ap", 1, 10, 28).fc.in_features == 512 * 3 * 3
    assert create_model("resnet18", 3, 10, 64).fc.in_features == 512  # global pooling
    # strided downsampling convs vs stride-1 convs + average pooling
    assert create_model("resnet18", 3, 10, 32).layer2[0].conv1.stride == (2, 2)
    assert create_model("resnet18_ap", 3, 10, 32).layer2[0].conv1.stride == (1, 1)


def test_factory_uses_but_never_reseeds_the_global_rng():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = create_model("convnet", 3, 10, 32, width=8)
        b = create_model("convnet", 3, 10, 32, width=8)
        torch.manual_seed(0)
        c = create_model("convnet", 3, 10, 32, width=8)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # not reseeded between calls
    assert torch.equal(a.conv1.weight, c.conv1.weight)  # reproducible under a caller's seed
    assert a.conv1.weight.device.type == "cpu"


def test_convnet_class_is_usable_directly():
    model = ConvNet(3, 10, (32, 32), width=8)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 8 * 4 * 4)
