"""GSAM (FTD experts): one step equals the written update computed by hand."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from datadistill.errors import ConfigError
from datadistill.experts.gsam import GSAM, ProportionalRho


def _setup(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    x = torch.randn(8, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (8,), generator=g)
    return net, x, y


def _hand_update(net, x, y, *, lr, rho, alpha, adaptive, eps=1e-12):
    """The GSAM step written out with torch.autograd.grad on a flat view of the weights."""
    w = [p.detach().clone() for p in net.parameters()]

    def grad_at(ws):
        ws = [t.clone().requires_grad_() for t in ws]
        names = [n for n, _ in net.named_parameters()]
        out = torch.func.functional_call(net, dict(zip(names, ws, strict=True)), (x,))
        return torch.autograd.grad(F.cross_entropy(out, y), ws)

    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    g = flat(grad_at(w))
    wf = flat(w)
    if adaptive:
        e = rho * g * wf**2 / ((wf.abs() * g).norm() + eps)
    else:
        e = rho * g / (g.norm() + eps)
    sizes = [t.numel() for t in w]
    w_pert = [c.view_as(t) for c, t in zip(torch.split(wf + e, sizes), w, strict=True)]
    gp = flat(grad_at(w_pert))
    cos = (g @ gp) / (g.norm() * gp.norm() + eps)
    v = g - cos * g.norm() * gp / (gp.norm() + eps)
    return wf - lr * (gp - alpha * v)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_one_step_matches_hand_formula(adaptive, alpha):
    net, x, y = _setup(dtype=torch.float64)  # float64: a check of the maths, not of kernels
    rho, lr = 0.5, 0.1  # a large rho makes the perturbation visible in the result
    expected = _hand_update(net, x, y, lr=lr, rho=rho, alpha=alpha, adaptive=adaptive)
    opt = GSAM(net.parameters(), torch.optim.SGD(net.parameters(), lr=lr), rho=rho,
               alpha=alpha, adaptive=adaptive)

    def closure():
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    got = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    # the returned loss is the unperturbed one
    net0, _, _ = _setup(dtype=torch.float64)
    with torch.no_grad():
        loss0 = float(F.cross_entropy(net0(x), y))
    assert float(loss.detach()) == pytest.approx(loss0, abs=1e-12)


def test_rho_zero_alpha_zero_is_plain_sgd():
    net, x, y = _setup(1)
    ref, _, _ = _setup(1)
    opt = GSAM(net.parameters(), torch.optim.SGD(net.parameters(), lr=0.1), rho=0.0, alpha=0.0)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1)

    def closure():
        F.cross_entropy(net(x), y).backward()

    opt.step(closure)
    sgd.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    sgd.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_rho_schedule_and_validation():
    sched = ProportionalRho(rho_max=0.04, rho_min=0.02, lr_max=0.1, lr_min=0.0)
    assert sched(0.1) == pytest.approx(0.04) and sched(0.0) == pytest.approx(0.02)
    assert ProportionalRho(0.01, 0.01, 0.01, 0.01)(0.01) == 0.01  # FTD: constant
    net, _, _ = _setup()
    base = torch.optim.SGD(net.parameters(), lr=0.05)
    assert GSAM(net.parameters(), base, rho=sched).current_rho() == pytest.approx(0.03)
    with pytest.raises(ConfigError, match="rho"):
        GSAM(net.parameters(), base, rho=-1.0)
    with pytest.raises(ConfigError, match="alpha"):
        GSAM(net.parameters(), base, alpha=-0.1)


def test_batchnorm_stats_frozen_in_perturbed_pass():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
        ref = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    ref.load_state_dict(net.state_dict())
    opt = GSAM(net.parameters(), torch.optim.SGD(net.parameters(), lr=0.1), model=net)
    opt.step(lambda: F.cross_entropy(net(x), y).backward())
    ref(x)  # one forward updates the running stats once
    torch.testing.assert_close(net[1].running_mean, ref[1].running_mean)
    assert net[1].momentum == 0.1  # restored
