"""ZCA whitening: the kornia formulas, the inverse, chunking and the state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datadistill.data import zca as zca_module
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError


def correlated_images(n: int = 300, seed: int = 0) -> torch.Tensor:
    """(n, 3, 2, 2) pixels in [0,1] with strongly correlated, unequal-variance features."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 12, generator=g, dtype=torch.float64)
    mixing = torch.randn(12, 12, generator=g, dtype=torch.float64) * torch.linspace(0.01, 1, 12)
    x = torch.sigmoid(z @ mixing + 0.3)
    return x.float().reshape(n, 3, 2, 2)


def reference(x: torch.Tensor, eps: float):
    """Independent numpy version of kornia's fit: unbiased covariance and its SVD."""
    flat = x.reshape(len(x), -1).double().numpy()
    cov = np.cov(flat, rowvar=False)  # divides by N - 1
    u, s, _ = np.linalg.svd(cov)
    t = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    return flat.mean(0), u, s, t


def test_fit_matches_kornia_formulas():
    x = correlated_images()
    zca = ZCA.fit(x, eps=0.1)
    mean, _, _, t = reference(x, 0.1)
    assert zca.eps == 0.1 and zca.transform.dtype == torch.float32
    assert np.allclose(zca.mean.numpy(), mean, atol=1e-6)
    assert np.allclose(zca.transform.numpy(), t, atol=1e-4)
    assert torch.allclose(zca.transform @ zca.inverse_transform, torch.eye(12), atol=1e-4)


def test_whitened_covariance_is_shrunk_identity():
    x = correlated_images()
    eps = 0.1
    zca = ZCA.fit(x, eps=eps)
    white = zca.apply(x).reshape(len(x), -1).double()
    cov = torch.cov(white.T)  # unbiased, like the fit
    _, u, s, _ = reference(x, eps)
    expected = u @ np.diag(s / (s + eps)) @ u.T  # identity up to the eigenvalue shrinkage
    assert np.allclose(cov.numpy(), expected, atol=1e-4)
    assert white.mean(0).abs().max().item() < 1e-5
    # With a negligible eps the training covariance is the identity.
    tiny_eps = ZCA.fit(x, eps=1e-8).apply(x).reshape(len(x), -1).double()
    assert torch.allclose(torch.cov(tiny_eps.T), torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_inverse_round_trip_and_shape():
    x = correlated_images()
    zca = ZCA.fit(x)
    held_out = correlated_images(n=17, seed=1)
    white = zca.apply(held_out)
    assert white.shape == held_out.shape and white.dtype == torch.float32
    assert torch.allclose(zca.invert(white), held_out, atol=1e-4)


def test_chunking_does_not_change_results(monkeypatch):
    x = correlated_images()
    whole = ZCA.fit(x)
    chunked = ZCA.fit(x, chunk=7)
    assert torch.allclose(whole.transform, chunked.transform, atol=1e-5)
    expected = whole.apply(x)
    monkeypatch.setattr(zca_module, "CHUNK", 11)
    assert torch.allclose(whole.apply(x), expected, atol=1e-6)
    assert torch.allclose(whole.invert(expected), x, atol=1e-4)


def test_apply_is_differentiable():
    zca = ZCA.fit(correlated_images())
    x = correlated_images(n=4, seed=2).requires_grad_(True)
    zca.apply(x).sum().backward()
    expected = zca.transform.sum(dim=1).reshape(3, 2, 2)  # d sum((x - mu) T) / dx = T 1
    assert torch.allclose(x.grad[0], expected, atol=1e-5)


def test_state_dict_round_trip(tmp_path):
    x = correlated_images()
    zca = ZCA.fit(x, eps=0.05)
    torch.save(zca.state_dict(), tmp_path / "zca.pt")
    restored = ZCA.from_state_dict(torch.load(tmp_path / "zca.pt", weights_only=True))
    assert restored.eps == 0.05 and restored.dim == 12
    for name in ("mean", "transform", "inverse_transform"):
        assert torch.equal(getattr(restored, name), getattr(zca, name))
    assert torch.equal(restored.apply(x), zca.apply(x))


def test_errors():
    zca = ZCA.fit(correlated_images())
    with pytest.raises(CompatibilityError, match="12 values"):
        zca.apply(torch.rand(2, 3, 4, 4))
    state = zca.state_dict()
    with pytest.raises(ArtifactError, match="lacks"):
        ZCA.from_state_dict({k: v for k, v in state.items() if k != "transform"})
    with pytest.raises(ArtifactError, match="inconsistent shapes"):
        ZCA.from_state_dict({**state, "transform": torch.zeros(3, 3)})
    with pytest.raises(ConfigError, match="eps"):
        ZCA.fit(correlated_images(), eps=0.0)
