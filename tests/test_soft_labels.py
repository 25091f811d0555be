"""DATM soft labels (init from correct experts, soft CE) and correct-sample image init."""

import logging
import math

import pytest
import torch
from torch import nn

from datadistill.errors import CompatibilityError, ConfigError
from datadistill.matching.init import ExpertClassifier, select_correct_samples
from datadistill.matching.soft_labels import init_soft_labels, soft_cross_entropy


def _model(d, k):
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def _flat(w, b):
    return torch.cat([w.flatten(), b])  # parameters() order: weight, bias


# Experts with known outputs: images are the unit vectors e_i, so expert e's logits for image
# i are column i of its weight matrix (bias 0). TABLE[e][i] = logits of expert e on image i.
TABLE = torch.tensor([
    [[2.0, 0, 0], [0, 0, 1], [0, 3, 0], [1, 0, 0]],  # expert 0: right on 0; wrong on 1, 2, 3
    [[1.0, 0, 0], [0, 2, 0], [5, 0, 0], [0, 1, 0]],  # expert 1: right on 0, 1; wrong on 2, 3
    [[0.0, 1, 0], [0, 4, 0], [0, 0, .5], [3, 0, 0]],  # expert 2: right on 1, 2; wrong on 3
])
LABELS = torch.tensor([0, 1, 2, 2])
IMAGES = torch.eye(4).view(4, 1, 1, 4)  # (N, C, H, W)


def _experts():
    return [_flat(t.T.contiguous(), torch.zeros(3)) for t in TABLE]


def test_init_averages_only_correct_experts(caplog):
    with caplog.at_level(logging.WARNING):
        y = init_soft_labels(IMAGES, LABELS, _experts(), _model(4, 3), batch=3)
    expected = torch.stack([
        (TABLE[0, 0] + TABLE[1, 0]) / 2,  # experts 0 and 1 are right on image 0
        (TABLE[1, 1] + TABLE[2, 1]) / 2,
        TABLE[2, 2],  # only expert 2
        TABLE[0, 3],  # nobody: the first expert's logits, with a warning
    ])
    torch.testing.assert_close(y, expected)
    assert "misclassified by all 3 experts" in caplog.text


def test_init_real_uses_first_expert_without_filter():
    model = _model(4, 3).train()
    y = init_soft_labels(IMAGES, LABELS, _experts(), model, only_correct=False)
    torch.testing.assert_close(y, TABLE[0])
    assert model.training  # mode restored
    with pytest.raises(CompatibilityError, match="at least one expert"):
        init_soft_labels(IMAGES, LABELS, [], model)


def test_soft_cross_entropy_by_hand():
    f64 = torch.float64  # a check of the formula, not of the CPU's float32 kernels
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=f64, requires_grad=True)
    target = torch.tensor([[0.2, 0.1, 2.0], [1.0, 1.0, 1.0]], dtype=f64, requires_grad=True)
    expected = 0.0
    for lo, ta in zip(logits.tolist(), target.tolist(), strict=True):
        zt = sum(math.exp(v) for v in ta)
        zl = sum(math.exp(v) for v in lo)
        pairs = zip(ta, lo, strict=True)
        expected -= sum(math.exp(t) / zt * (v - math.log(zl)) for t, v in pairs)
    loss = soft_cross_entropy(logits, target)
    assert float(loss.detach()) == pytest.approx(expected / 2, rel=1e-12)
    loss.backward()
    assert target.grad is not None and logits.grad is not None  # learnable labels get grads
    with pytest.raises(ConfigError, match="logits"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


def _real_set(n_per_class=12, k=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), 1, 1, d, generator=g)
    experts = [_flat(torch.randn(k, d, generator=g), torch.randn(k, generator=g))
               for _ in range(4)]
    return images, labels, experts


def _predictions(images, experts):
    x = images.flatten(1)
    return [(x @ t[:-3].view(3, -1).T + t[-3:]).argmax(1) for t in experts]


def test_correct_init_selects_correct_exact_and_deterministic():
    images, labels, experts = _real_set()
    preds = _predictions(images, experts)
    classifier = ExpertClassifier(_model(5, 3), batch=4)
    a = select_correct_samples(images, labels, experts, classifier, ipc=3,
                               generator=torch.Generator().manual_seed(1))
    b = select_correct_samples(images, labels, experts, classifier, ipc=3,
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.indices, b.indices)
    assert a.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # class-major, exact counts
    assert len(set(a.indices.tolist())) == 9 and a.filled == 0
    torch.testing.assert_close(a.images, images[a.indices])
    for i in a.indices.tolist():  # each one is classified correctly by some expert
        assert any(int(p[i]) == int(labels[i]) for p in preds[:a.experts_used])


def test_correct_init_moves_to_next_expert_and_handles_shortfall(caplog):
    images, labels, _ = _real_set(n_per_class=6)
    k = 3
    always = [_flat(torch.zeros(k, 5), torch.eye(k)[c]) for c in range(k)]  # expert c -> c
    classifier = ExpertClassifier(_model(5, k))
    sel = select_correct_samples(images, labels, always, classifier, ipc=2,
                                 generator=torch.Generator().manual_seed(0))
    assert sel.experts_used == 3 and sel.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(CompatibilityError, match="classes \\[1, 2\\]"):
        select_correct_samples(images, labels, always[:1], classifier, ipc=2,
                               on_shortfall="error")
    with caplog.at_level(logging.WARNING):
        sel = select_correct_samples(images, labels, always[:1], classifier, ipc=2,
                                     generator=torch.Generator().manual_seed(0))
    assert sel.filled == 4 and sel.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert "filled with random real images" in caplog.text
    with pytest.raises(ConfigError, match="fewer than ipc"):
        select_correct_samples(images, labels, always, classifier, ipc=7)
