"""FTD image EMA: the recurrence, detachment, checkpoints."""

import pytest
import torch

from datadistill.errors import ConfigError
from datadistill.matching.ema import ImageEMA


def test_ema_equals_recurrence_by_hand():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g)
    decay = 0.9
    ema = ImageEMA(x0, decay)
    x0.add_(100.0)  # the EMA holds a copy, not a view
    expected = x0 - 100.0
    for _ in range(5):
        x = torch.randn(4, 3, 5, 5, generator=g)
        ema.update(x)
        expected = decay * expected + (1 - decay) * x
    torch.testing.assert_close(ema.images, expected)
    assert ema.num_updates == 5


def test_ema_does_not_touch_the_optimised_images():
    images = torch.randn(2, 1, 3, 3, requires_grad=True)
    opt = torch.optim.SGD([images], lr=0.1)
    ema = ImageEMA(images, 0.5)
    start = images.detach().clone()
    assert not ema.images.requires_grad
    (images ** 2).sum().backward()
    opt.step()
    before, grad = images.detach().clone(), images.grad.clone()
    ema.update(images)
    assert torch.equal(images.detach(), before) and not ema.images.requires_grad
    assert ema.images.grad_fn is None  # the update added nothing to the autograd graph
    assert torch.equal(images.grad, grad)  # nor touched the accumulated gradient
    torch.testing.assert_close(ema.images, 0.5 * start + 0.5 * before)


def test_state_dict_roundtrip(tmp_path):
    ema = ImageEMA(torch.zeros(2, 1, 2, 2), 0.99)
    ema.update(torch.ones(2, 1, 2, 2))
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = ImageEMA(torch.ones(2, 1, 2, 2), 0.5)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    torch.testing.assert_close(other.images, ema.images)
    assert other.decay == 0.99 and other.num_updates == 1
    with pytest.raises(ConfigError, match="shape"):
        ImageEMA(torch.zeros(3, 1, 2, 2), 0.5).load_state_dict(ema.state_dict())
    with pytest.raises(ConfigError, match="decay"):
        ImageEMA(torch.zeros(1), 1.0)
