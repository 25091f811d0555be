"""DATM's initialisation of the synthetic images from real samples the experts get right.

DATM (Guo et al., ICLR 2024, section 4.2; ``pix_init='samples_predicted_correctly'``, the
default of most configs; research note trajectory-matching.md section 4.2): for each class c,
walk a random permutation of the class's real images in batches and keep those that an
expert's final checkpoint classifies as c, until ``ipc`` are collected; when a pass over the
class ends short, continue with the next expert (already chosen images are not taken twice).

Differences from the official code, named here on purpose:

- it indexes experts as ``files[cur // 10 % 10][cur % 10]``, which assumes >= 10 files of 10
  experts; any number of experts works here (a sequence of flat final parameter vectors);
- when every expert is exhausted the official loop never ends; here ``on_shortfall="fill"``
  (default) completes the class with random unselected real images and logs a warning, and
  ``on_shortfall="error"`` raises CompatibilityError;
- the loop runs over experts outside and classes inside, so each expert is read once; the
  result equals the official per-class order (each class's choice only depends on its own
  permutation and the expert order).

Example:
    >>> sel = select_correct_samples(train.images, train.labels, finals,
    ...                              ExpertClassifier(model), ipc=10,
    ...                              generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> sel.images.shape                                                      # doctest: +SKIP
    torch.Size([100, 3, 32, 32])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from datadistill.errors import CompatibilityError, ConfigError
from datadistill.matching.soft_labels import expert_logits

logger = logging.getLogger(__name__)


@dataclass
class InitSelection:
    """Real samples chosen to initialise the synthetic set, class-major ([0]*ipc, [1]*ipc...)."""

    indices: torch.Tensor  # (C * ipc,) int64 indices into the real set
    images: torch.Tensor  # (C * ipc, C, H, W)
    labels: torch.Tensor  # (C * ipc,) int64
    experts_used: int  # how many experts were consulted
    filled: int  # how many images were random fill-ins (on_shortfall="fill")


@dataclass(frozen=True, eq=False)
class ExpertClassifier:
    """How an expert classifies candidate images: ``model`` with an expert's flat parameters,
    in eval mode, in batches of ``batch`` images on ``device`` (None: the parameters' device).
    """

    model: nn.Module
    batch: int = 256
    device: str | torch.device | None = None

    def classes(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n,) predicted classes of ``x`` (n, C, H, W) under the flat parameters ``theta``."""
        return expert_logits(self.model, theta, x, batch=self.batch,
                             device=self.device).argmax(dim=1)


def select_correct_samples(images: torch.Tensor, labels: torch.Tensor,
                           expert_final_params: Sequence[torch.Tensor],
                           classifier: ExpertClassifier, ipc: int, *,
                           num_classes: int | None = None,
                           generator: torch.Generator | None = None,
                           on_shortfall: str = "fill") -> InitSelection:
    """Pick ``ipc`` real images per class that some expert classifies correctly.

    ``images`` (N, C, H, W) and ``labels`` (N,) are the real training set in the space the
    experts were trained in (normalised or ZCA); ``expert_final_params`` holds one flat (P,)
    vector per expert (a lazy sequence works, each item is read at most once), which
    ``classifier`` runs; each class's permutation is walked in its batches.
    """
    if on_shortfall not in ("fill", "error"):
        raise ConfigError(f"on_shortfall must be 'fill' or 'error', got {on_shortfall!r}.")
    if len(expert_final_params) == 0:
        raise CompatibilityError("correct-sample init needs at least one expert; train experts "
                                 "first or use pix_init='real'.")
    labels = labels.cpu()
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    perms = _class_permutations(labels, k, ipc, generator)  # per class: (n_c,) shuffled indices
    chosen: list[list[int]] = [[] for _ in range(k)]
    used = 0
    for e in range(len(expert_final_params)):
        short = [c for c in range(k) if len(chosen[c]) < ipc]
        if not short:
            break
        used += 1
        theta = expert_final_params[e]
        for c in short:
            _scan_class(chosen[c], perms[c], c, ipc, images, classifier, theta)
    filled = _handle_shortfall(chosen, perms, ipc, on_shortfall, used)
    idx = torch.tensor([i for row in chosen for i in row], dtype=torch.long)
    return InitSelection(idx, images[idx.to(images.device)], labels[idx], used, filled)


def _class_permutations(labels: torch.Tensor, k: int, ipc: int,
                        generator: torch.Generator | None) -> list[torch.Tensor]:
    perms = []
    for c in range(k):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < ipc:
            raise ConfigError(f"class {c} has {len(idx)} real images, fewer than ipc={ipc}; "
                              "lower ipc or use another dataset split.")
        perms.append(idx[torch.randperm(len(idx), generator=generator)])
    return perms


def _scan_class(chosen: list[int], perm: torch.Tensor, c: int, ipc: int, images: torch.Tensor,
                classifier: ExpertClassifier, theta: torch.Tensor) -> None:
    """One pass of one expert over class c's permutation, appending correct hits in order."""
    taken, batch = set(chosen), classifier.batch
    for s in range(0, len(perm), batch):
        cand = [i for i in perm[s:s + batch].tolist() if i not in taken]
        if not cand:
            continue
        x = images[torch.tensor(cand, device=images.device)]
        pred = classifier.classes(theta, x)
        for i, p in zip(cand, pred.tolist(), strict=True):
            if p == c:
                chosen.append(i)
                taken.add(i)
                if len(chosen) == ipc:
                    return


def _handle_shortfall(chosen: list[list[int]], perms: list[torch.Tensor], ipc: int,
                      on_shortfall: str, used: int) -> int:
    short = {c: ipc - len(row) for c, row in enumerate(chosen) if len(row) < ipc}
    if not short:
        return 0
    if on_shortfall == "error":
        raise CompatibilityError(
            f"after all {used} experts, classes {sorted(short)} have fewer than ipc={ipc} "
            "correctly classified real images; train more or longer experts, lower ipc, pass "
            "on_shortfall='fill', or use pix_init='real'.")
    for c, missing in short.items():
        taken = set(chosen[c])
        rest = [i for i in perms[c].tolist() if i not in taken]  # already in random order
        chosen[c].extend(rest[:missing])
    logger.warning("correct-sample init: %d images in %d classes were filled with random real "
                   "images (no expert classified enough of them correctly).",
                   sum(short.values()), len(short))
    return sum(short.values())
