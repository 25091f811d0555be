"""DD-Ranking scores against hand computations."""

from __future__ import annotations

import math

import pytest

from datadistill.errors import ConfigError
from datadistill.evaluation.protocols import EvalReport
from datadistill.evaluation.scores import (
    augmentation_robust_score,
    hard_label_recovery,
    improvement_over_random,
    label_robust_score,
    ranking_scores,
    robust_normalise,
)

E1 = math.exp(-1)


def test_normalisation_maps_minus_one_one_to_zero_one():
    assert robust_normalise(-1.0) == pytest.approx(0.0)
    assert robust_normalise(1.0) == pytest.approx(1.0)
    assert robust_normalise(0.0) == pytest.approx((1 - E1) / (math.e - E1))


def test_single_scores_by_hand():
    assert hard_label_recovery(0.84, 0.60) == pytest.approx(0.24)
    assert improvement_over_random(0.65, 0.30) == pytest.approx(0.35)
    a = 0.5 * 0.35 - 0.5 * 0.24  # 0.055
    assert label_robust_score(0.24, 0.35) == pytest.approx((math.exp(a) - E1) / (math.e - E1))
    a = 0.8 * 0.35 - 0.2 * 0.24
    assert label_robust_score(0.24, 0.35, weight=0.8) == pytest.approx(
        (math.exp(a) - E1) / (math.e - E1)
    )
    b = 0.5 * (0.5 - 0.4) + 0.5 * (0.45 - 0.25)  # 0.15
    assert augmentation_robust_score(0.5, 0.4, 0.45, 0.25) == pytest.approx(
        (math.exp(b) - E1) / (math.e - E1)
    )


def test_ranking_scores_pairs_rounds():
    s = ranking_scores(full_hard=0.8, syn_hard=[0.5, 0.6], syn=[0.6, 0.7], random=[0.3, 0.3])
    hlr, ior = [0.3, 0.2], [0.3, 0.4]
    lrs = [label_robust_score(h, i) for h, i in zip(hlr, ior, strict=True)]
    assert s.hlr == pytest.approx(0.25) and s.hlr_std == pytest.approx(0.05)
    assert s.ior == pytest.approx(0.35) and s.ior_std == pytest.approx(0.05)
    assert s.lrs == pytest.approx(sum(lrs) / 2)
    assert s.lrs_std == pytest.approx(abs(lrs[0] - lrs[1]) / 2)
    assert s.ars is None and s.to_dict()["ars_std"] is None


def test_ranking_scores_accepts_reports_and_ars():
    syn = EvalReport.from_accuracies("classic", "convnet", [0.6, 0.62])
    s = ranking_scores(
        full_hard=0.9,
        syn_hard=syn,
        syn=syn,
        random=0.3,
        syn_aug=0.6,
        rdm_aug=0.4,
        syn_noaug=0.5,
        rdm_noaug=0.2,
    )
    assert s.hlr == pytest.approx(0.29) and s.ior == pytest.approx(0.31)
    assert s.ars == pytest.approx(augmentation_robust_score(0.6, 0.4, 0.5, 0.2))
    assert s.ars_std == pytest.approx(0.0)


def test_ranking_scores_input_errors():
    with pytest.raises(ConfigError, match="divide percentages by 100"):
        ranking_scores(full_hard=84.0, syn_hard=0.5, syn=0.5, random=0.3)
    with pytest.raises(ConfigError, match="different lengths"):
        ranking_scores(full_hard=0.8, syn_hard=[0.5, 0.6], syn=[0.5, 0.6, 0.7], random=0.3)
    with pytest.raises(ConfigError, match="ARS needs all"):
        ranking_scores(full_hard=0.8, syn_hard=0.5, syn=0.5, random=0.3, syn_aug=0.5)
