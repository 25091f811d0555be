"""PAD curriculum: per-class subset sizes per epoch, boundaries, easiest-first order."""

import pytest
import torch

from datadistill.errors import ConfigError
from datadistill.experts.curriculum import CurriculumConfig, curriculum_subset, kept_range


def _order(sizes, seed=0):
    """Per-class easiest-first orders over a shuffled dataset with the given class sizes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    perm = torch.randperm(len(labels), generator=g)
    labels = labels[perm]
    order = [torch.nonzero(labels == c).flatten()[torch.randperm(n, generator=g)]
             for c, n in enumerate(sizes)]
    return labels, order


SIZES = [200, 120, 37]  # not 5000 per class, and unequal


def _expected(n, e, cfg):
    if e <= cfg.add_end_epoch:
        p = min(1.0, cfg.init_ratio + (1 - cfg.init_ratio) * e / cfg.add_end_epoch)
        return 0, int(p * n)
    if e <= cfg.rm_epoch_first:
        return 0, n
    if e <= cfg.rm_epoch_second:
        return int(cfg.rm_easy_ratio_first * n), n
    return int(cfg.rm_easy_ratio_second * n), n


@pytest.mark.parametrize("epoch", [0, 1, 10, 19, 20, 21, 40, 41, 60, 61, 99])
def test_sizes_per_class_and_order(epoch):
    cfg = CurriculumConfig()
    labels, order = _order(SIZES)
    subset = curriculum_subset(order, epoch, **cfg.schedule_kwargs())
    assert subset.dtype == torch.long
    assert len(set(subset.tolist())) == len(subset)  # no duplicates
    for c, n in enumerate(SIZES):
        start, stop = _expected(n, epoch, cfg)
        got = subset[labels[subset] == c]
        # exactly the easiest-first slice [start, stop) of the class, in order
        assert got.tolist() == order[c][start:stop].tolist()


def test_boundaries_are_inclusive():
    cfg = CurriculumConfig()
    kw = cfg.schedule_kwargs()
    n = 200
    assert kept_range(n, 0, **kw) == (0, 150)  # 0.75 * 200
    assert kept_range(n, 10, **kw) == (0, 175)  # 0.875 * 200
    assert kept_range(n, 20, **kw) == (0, 200)  # e == add_end: p = 1 (still "add" phase)
    assert kept_range(n, 40, **kw) == (0, 200)  # e == rm_first: still all data
    assert kept_range(n, 41, **kw) == (20, 200)  # drop easiest 10 %
    assert kept_range(n, 60, **kw) == (20, 200)  # e == rm_second: still 10 %
    assert kept_range(n, 61, **kw) == (40, 200)  # drop easiest 20 %
    # per-class n, not the official hard-coded 5000: 500-sample classes keep 450 here
    assert kept_range(500, 50, **kw) == (50, 500)


def test_official_defaults_and_validation():
    cfg = CurriculumConfig()
    assert (cfg.init_ratio, cfg.add_end_epoch, cfg.rm_epoch_first, cfg.rm_epoch_second,
            cfg.rm_easy_ratio_first, cfg.rm_easy_ratio_second) == (0.75, 20, 40, 60, 0.1, 0.2)
    with pytest.raises(ConfigError, match="init_ratio"):
        CurriculumConfig(init_ratio=1.5)
    with pytest.raises(ConfigError, match="add_end_epoch"):
        CurriculumConfig(add_end_epoch=50, rm_epoch_first=40)
    kw = CurriculumConfig(add_end_epoch=0, rm_epoch_first=0, rm_epoch_second=0).schedule_kwargs()
    assert kept_range(10, 0, **kw) == (0, 10)  # no add phase: all data at epoch 0
    with pytest.raises(ConfigError, match="epoch"):
        curriculum_subset([torch.arange(3)], -1, **kw)
