"""Tests of the flat-parameter functional forward used by the unrolled student."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datadistill.errors import CompatibilityError, ConfigError
from datadistill.models import create_model, list_models
from datadistill.models.functional import (
    ParamSpec,
    flatten_params,
    functional_forward,
    load_flat_params,
    param_spec,
)


def _smallest_model(name: str, batch: int = 2):
    """The model on the smallest input it takes (fast): 1 x 8 x 8, 3 x 16 x 16 or 3 x 32 x 32."""
    for channels, side in ((1, 8), (3, 16)):
        try:
            return create_model(name, channels, 10, side), (batch, channels, side, side)
        except ConfigError:
            pass
    return create_model(name, 3, 10, 32), (batch, 3, 32, 32)


@pytest.mark.parametrize("name", list_models())
def test_functional_forward_equals_module_forward_and_gradients(name):
    """The two code paths compute the same maths: compared in float64, with a batch of 4 so
    that BatchNorm at a 1 x 1 map normalises more than two values (in float32 that
    normalisation amplifies the CPU kernels' rounding differences into O(1) output gaps)."""
    torch.manual_seed(0)
    model, shape = _smallest_model(name, batch=4)
    model = model.double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.tensor([1, 7, 3, 0])

    torch.manual_seed(1)  # the same dropout / stochastic-depth draws in both forwards
    out = model(x)
    F.cross_entropy(out, y).backward()
    module_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    flat = flatten_params(model).requires_grad_()
    torch.manual_seed(1)
    out_f = functional_forward(model, flat, x)
    (flat_grad,) = torch.autograd.grad(F.cross_entropy(out_f, y), flat)

    assert out_f.dtype == flat_grad.dtype == torch.float64
    torch.testing.assert_close(out_f, out, atol=1e-9, rtol=1e-9)
    # allclose, not assert_close: 11M-entry gradients, and assert_close is several times slower
    err = (flat_grad - module_grad).abs().max().item()
    assert torch.allclose(flat_grad, module_grad, atol=1e-9, rtol=1e-7), f"max |diff| {err}"


def test_param_spec_follows_parameters_order():
    model = create_model("convnet", 3, 10, 32)
    spec = param_spec(model)
    assert spec.names[:4] == ("conv1.weight", "conv1.bias", "norm1.weight", "norm1.bias")
    assert spec.names[-2:] == ("fc.weight", "fc.bias")
    assert spec.shapes[0] == (128, 3, 3, 3) and spec.numel == 320_010
    assert sum(spec.sizes) == spec.numel
    assert ParamSpec.from_dict(spec.to_dict()) == spec


def test_flatten_and_load_round_trip():
    model = create_model("convnet", 3, 10, 16, width=8)
    flat = flatten_params(model)
    assert flat.shape == (param_spec(model).numel,) and not flat.requires_grad
    flat += 1.0  # a copy: the module must not change
    assert not torch.equal(flatten_params(model), flat)
    load_flat_params(model, flat)
    assert torch.equal(flatten_params(model), flat)
    assert torch.equal(model.conv1.weight.reshape(-1), flat[: model.conv1.weight.numel()])


def test_wrong_flat_size_is_a_compatibility_error():
    model = create_model("convnet", 3, 10, 16, width=8)
    bad = torch.zeros(param_spec(model).numel + 1)
    with pytest.raises(CompatibilityError, match="another model"):
        load_flat_params(model, bad)
    with pytest.raises(CompatibilityError, match=r"shape \(\d+,\) but the model has \d+"):
        functional_forward(model, bad, torch.zeros(1, 3, 16, 16))


def test_gradient_wrt_input_matches_module():
    model = create_model("convnet", 3, 10, 16, width=8)
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    model(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    functional_forward(model, flatten_params(model), x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)


def _unrolled_loss(model, theta0, x_syn, y_syn, x_real, y_real, lr=0.1, steps=2):
    """MTT's inner loop: theta_{i+1} = theta_i - lr * grad CE(student(x_syn)), then a loss."""
    theta = theta0
    for _ in range(steps):
        ce = F.cross_entropy(functional_forward(model, theta, x_syn), y_syn)
        (g,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - lr * g
    return F.cross_entropy(functional_forward(model, theta, x_real), y_real)


def test_double_backward_of_the_unrolled_student_is_exact():
    torch.manual_seed(0)
    model = create_model("convnet", 1, 3, 4, width=3, depth=2).double()
    theta0 = flatten_params(model).requires_grad_()
    y_syn, x_real, y_real = torch.tensor([0, 2]), torch.randn(3, 1, 4, 4).double(), torch.arange(3)
    x_syn = torch.randn(2, 1, 4, 4, dtype=torch.double, requires_grad=True)

    def loss(x):
        return _unrolled_loss(model, theta0, x, y_syn, x_real, y_real)

    # The gradient w.r.t. the synthetic images needs the create_graph double backward.
    assert torch.autograd.gradcheck(loss, (x_syn,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_batchnorm_buffers_are_used_and_updated_like_the_module():
    model = create_model("convnet_bn", 3, 10, 16, width=8)
    twin = create_model("convnet_bn", 3, 10, 16, width=8)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    model(x)
    functional_forward(twin, flatten_params(twin), x)
    torch.testing.assert_close(twin.norm1.running_mean, model.norm1.running_mean)
    model.eval(), twin.eval()
    torch.testing.assert_close(functional_forward(twin, flatten_params(twin), x), model(x))
