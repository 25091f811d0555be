"""DD-Ranking robustness scores (Li et al., "DD-Ranking", arXiv 2505.13300).

All accuracies are fractions in [0, 1]; the reference code feeds percentages into ``exp``,
which breaks the [0, 1] range of the scores, so we do not follow it there.

- Hard Label Recovery ``HLR = Acc(real full, hard) - Acc(syn, hard)`` (lower is better);
- Improvement Over Random ``IOR = Acc(syn, own eval) - Acc(random subset, same eval)``;
- Label-Robust Score ``LRS = (e^a - e^-1) / (e - e^-1)``, ``a = w*IOR - (1-w)*HLR``, w = 0.5;
- Augmentation-Robust Score: the same normalisation of
  ``b = g*(syn_aug - rdm_aug) + (1-g)*(syn_noaug - rdm_noaug)``, g = 0.5.

Each input may be one accuracy, a list of per-round accuracies, or an EvalReport (its
``accuracies``). Rounds are paired by index, as DD-Ranking scores each round and then reports
mean and std; a single value pairs with every round.

Example:
    >>> s = ranking_scores(full_hard=0.84, syn_hard=0.60, syn=0.65, random=0.30)
    >>> round(s.hlr, 2), round(s.ior, 2), round(s.lrs, 3)
    (0.24, 0.35, 0.293)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datadistill.errors import ConfigError

Accuracies = float | Sequence[float] | Any  # Any: an object with .accuracies (EvalReport)


def robust_normalise(x: float) -> float:
    """Map x in [-1, 1] to [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hard_label_recovery(acc_full_hard: float, acc_syn_hard: float) -> float:
    """HLR: how much of the full-data hard-label accuracy the synthetic set fails to recover."""
    return acc_full_hard - acc_syn_hard


def improvement_over_random(acc_syn: float, acc_random: float) -> float:
    """IOR: gain of the synthetic set over a random real subset under the same evaluation."""
    return acc_syn - acc_random


def label_robust_score(hlr: float, ior: float, weight: float = 0.5) -> float:
    """LRS from HLR and IOR; `weight` is DD-Ranking's ``lrs_lambda`` (w)."""
    return robust_normalise(weight * ior - (1.0 - weight) * hlr)


def augmentation_robust_score(
    syn_aug: float, rdm_aug: float, syn_noaug: float, rdm_noaug: float, weight: float = 0.5
) -> float:
    """ARS from accuracies with and without augmentation; `weight` is ``ars_lambda`` (g)."""
    beta = weight * (syn_aug - rdm_aug) + (1.0 - weight) * (syn_noaug - rdm_noaug)
    return robust_normalise(beta)


@dataclass
class RankingScores:
    """Mean and std (ddof 0) over rounds of each score; ARS is None without its inputs."""

    hlr: float
    hlr_std: float
    ior: float
    ior_std: float
    lrs: float
    lrs_std: float
    ars: float | None = None
    ars_std: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def _rounds(value: Accuracies, name: str) -> np.ndarray:
    """Per-round accuracies as a float array, checked to be fractions."""
    if hasattr(value, "accuracies"):
        value = value.accuracies
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name}: expected one accuracy or a list of per-round accuracies")
    if ((arr < 0) | (arr > 1)).any():
        raise ConfigError(
            f"{name}: accuracies must be fractions in [0, 1], got {arr.tolist()}; "
            "divide percentages by 100"
        )
    return arr


def _paired(**values: Accuracies) -> dict[str, np.ndarray]:
    """Broadcast per-round arrays against each other (equal lengths or length 1)."""
    arrays = {k: _rounds(v, k) for k, v in values.items()}
    lengths = {a.size for a in arrays.values()} - {1}
    if len(lengths) > 1:
        raise ConfigError(
            f"per-round accuracies have different lengths {sorted(lengths)}; "
            "give the same number of rounds or one value"
        )
    n = lengths.pop() if lengths else 1
    return {k: np.broadcast_to(a, (n,)) for k, a in arrays.items()}


ARS_INPUTS = ("syn_aug", "rdm_aug", "syn_noaug", "rdm_noaug")  # ARS's accuracies


def ranking_scores(*, full_hard: Accuracies, syn_hard: Accuracies, syn: Accuracies,
                   random: Accuracies, lrs_weight: float = 0.5, ars_weight: float = 0.5,
                   **augmentation: Accuracies) -> RankingScores:
    """HLR, IOR and LRS (and ARS when all four augmentation accuracies are given).

    `augmentation`: ARS's inputs ``syn_aug``, ``rdm_aug``, ``syn_noaug`` and ``rdm_noaug``
    (accuracies with and without augmentation), all or none.

    Example:
        >>> ranking_scores(full_hard=0.8, syn_hard=0.5, syn=[0.6, 0.62],
        ...                random=[0.3, 0.32]).ior
        0.3
    """
    unknown = sorted(set(augmentation) - set(ARS_INPUTS))
    if unknown:
        raise TypeError(f"ranking_scores() got an unexpected keyword argument {unknown[0]!r}")
    a = _paired(full_hard=full_hard, syn_hard=syn_hard, syn=syn, random=random)
    hlr = a["full_hard"] - a["syn_hard"]
    ior = a["syn"] - a["random"]
    lrs = np.array([label_robust_score(h, i, lrs_weight) for h, i in zip(hlr, ior, strict=True)])
    scores = RankingScores(
        float(hlr.mean()),
        float(hlr.std()),
        float(ior.mean()),
        float(ior.std()),
        float(lrs.mean()),
        float(lrs.std()),
    )
    aug = [augmentation.get(k) for k in ARS_INPUTS]
    if all(v is not None for v in aug):
        b = _paired(**dict(zip(ARS_INPUTS, aug, strict=True)))
        ars = np.array(
            [
                augmentation_robust_score(*row, weight=ars_weight)
                for row in zip(
                    b["syn_aug"], b["rdm_aug"], b["syn_noaug"], b["rdm_noaug"], strict=True
                )
            ]
        )
        scores.ars, scores.ars_std = float(ars.mean()), float(ars.std())
    elif any(v is not None for v in aug):
        raise ConfigError("ARS needs all of syn_aug, rdm_aug, syn_noaug and rdm_noaug")
    return scores
