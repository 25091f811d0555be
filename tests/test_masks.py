"""PAD parameter masks: depth (drop the first entries) and loss (drop the best aligned)."""

import pytest
import torch

from datadistill.errors import ConfigError
from datadistill.matching.masks import depth_mask, loss_mask, num_dropped, param_mask


@pytest.mark.parametrize("numel,ratio", [(10, 0.25), (320010, 0.5), (7, 0.3), (5, 0.0)])
def test_depth_mask_drops_exactly_the_first_entries(numel, ratio):
    mask = depth_mask(numel, ratio)
    k = int(ratio * numel)
    assert mask.dtype == torch.bool and mask.shape == (numel,)
    assert not mask[:k].any() and mask[k:].all()


def test_depth_mask_on_convnet_cifar10_matches_research_note():
    # ConvNet-3 on CIFAR-10 (P = 320,010): r = 0.5 keeps conv3 partly, everything after it.
    from datadistill.models import create_model, param_spec

    spec = param_spec(create_model("convnet", in_channels=3, num_classes=10, image_size=32))
    assert spec.numel == 320010
    mask = depth_mask(spec.numel, 0.5)
    assert int((~mask).sum()) == 160005


def test_loss_mask_keeps_worst_aligned():
    sq = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.7, 0.3])
    mask = loss_mask(sq, 0.5)  # drop the 3 smallest: 0.1, 0.2, 0.3
    assert mask.tolist() == [True, False, True, False, True, False]
    assert sq[mask].min() >= sq[~mask].max()


def test_loss_mask_ties_deterministic_and_no_grad():
    sq = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    mask = loss_mask(sq, 0.5)
    assert mask.tolist() == [False, False, True, True]  # lower index dropped first
    assert not mask.requires_grad
    g = torch.Generator().manual_seed(0)
    sq = torch.randint(0, 3, (1000,), generator=g).float()  # many ties
    assert torch.equal(loss_mask(sq, 0.37), loss_mask(sq.clone(), 0.37))
    assert int((~loss_mask(sq, 0.37)).sum()) == 370


def test_ratio_zero_keeps_all_and_validation():
    assert depth_mask(9, 0.0).all()
    assert loss_mask(torch.rand(9), 0.0).all()
    assert param_mask("depth", 0.0, numel=9) is None  # nothing dropped: no mask at all
    assert param_mask("none", 0.0, numel=9) is None
    assert param_mask("depth", 0.5, numel=4).tolist() == [False, False, True, True]
    assert param_mask("loss", 0.5, numel=4, sq_err=torch.tensor([4.0, 3, 2, 1])).tolist() == [
        True, True, False, False]
    with pytest.raises(ConfigError, match="ratio"):
        num_dropped(10, 1.0)
    with pytest.raises(ConfigError, match="unknown param_mask"):
        param_mask("layer", 0.5, numel=4)
    with pytest.raises(ConfigError, match="sq_err"):
        param_mask("loss", 0.5, numel=4)
