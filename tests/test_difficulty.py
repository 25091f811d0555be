"""PAD difficulty scores (EL2N / last-layer GraNd), per-class orders and their files."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from datadistill.errors import ArtifactError, CompatibilityError
from datadistill.experts.difficulty import (
    BriefTraining,
    DifficultyOrder,
    difficulty_order,
    el2n,
    el2n_scores,
    grand,
    grand_scores,
    import_official_indices,
    load_difficulty,
    save_difficulty,
    sort_by_difficulty,
)


def _data(n=60, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    centers = torch.randn(k, d, generator=g) * 3
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def _mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _seeded_mlp(seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _mlp()


def test_el2n_matches_hand_computation():
    x, y = _data()
    net = _seeded_mlp(0)
    p = F.softmax(net(x), dim=1).detach()
    expected = torch.sqrt(((p - F.one_hot(y, 3)) ** 2).sum(1))
    torch.testing.assert_close(el2n(net, x, y), expected)


def test_grand_equals_autograd_last_layer_gradient_norm():
    x, y = _data(n=6)  # float64: a check of the maths, not of the CPU's float32 kernels
    x, net = x.double(), _seeded_mlp(1).double()
    fc = net[2]
    expected = []
    for i in range(len(y)):
        loss = F.cross_entropy(net(x[i:i + 1]), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [fc.weight, fc.bias])
        expected.append(torch.cat([gw.flatten(), gb]).norm())
    torch.testing.assert_close(grand(net, x, y), torch.stack(expected), atol=1e-12, rtol=1e-10)


def test_scores_average_models_deterministic_and_rng_untouched():
    x, y = _data()
    state = torch.get_rng_state()
    brief = BriefTraining(num_models=3, epochs=2, lr=0.05, batch_size=16)
    kw = dict(model_fn=_mlp, training=brief)
    a = el2n_scores(x, y, generator=torch.Generator().manual_seed(3), **kw)
    b = el2n_scores(x, y, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG not reseeded
    torch.testing.assert_close(a, b)
    assert a.shape == (60,)
    untrained = el2n_scores(x, y, generator=torch.Generator().manual_seed(3),
                            **{**kw, "training": dataclasses.replace(brief, epochs=0)})
    assert a.mean() < untrained.mean()  # brief training happened: easier after training
    g = grand_scores(x, y, generator=torch.Generator().manual_seed(3), **kw)
    assert g.shape == (60,) and bool((g >= 0).all())


def test_sort_by_difficulty_unequal_classes_and_ties():
    labels = torch.tensor([0, 1, 0, 0, 2, 1, 0])
    scores = torch.tensor([0.5, 0.2, 0.1, 0.5, 0.3, 0.9, 0.0])
    rows = sort_by_difficulty(scores, labels, 3)
    assert [r.tolist() for r in rows] == [[6, 2, 0, 3], [1, 5], [4]]  # tie 0.5: index order


def test_save_load_roundtrip_and_validate(tmp_path):
    labels = torch.tensor([0, 1, 0, 1, 1])
    order = difficulty_order(torch.rand(5), labels, 2, meta={"scorer": "el2n", "models": 10})
    path = save_difficulty(order, tmp_path / "order.pt")
    back = load_difficulty(path)
    assert [t.tolist() for t in back.indices] == [t.tolist() for t in order.indices]
    torch.testing.assert_close(back.scores, order.scores)
    assert back.meta == {"scorer": "el2n", "models": 10} and back.class_sizes == [2, 3]
    back.validate(labels)
    with pytest.raises(CompatibilityError, match="other classes"):
        back.validate(torch.tensor([1, 1, 0, 0, 1]))
    with pytest.raises(CompatibilityError, match="outside"):
        DifficultyOrder([torch.tensor([0, 7])]).validate(labels)


def test_import_official_indices(tmp_path):
    official = torch.arange(12, dtype=torch.int64).view(3, 4)  # [C, n], row c = class c
    torch.save(official, tmp_path / "TOY_GraNd.pt")
    for loader in (import_official_indices, load_difficulty):
        order = loader(tmp_path / "TOY_GraNd.pt")
        assert order.num_classes == 3 and order.scores is None
        assert order.indices[1].tolist() == [4, 5, 6, 7]
    torch.save(torch.arange(10), tmp_path / "flat.pt")  # like CIFAR10_ConvNet.pt
    with pytest.raises(ArtifactError, match="per-class"):
        import_official_indices(tmp_path / "flat.pt")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_difficulty(tmp_path / "missing.pt")
