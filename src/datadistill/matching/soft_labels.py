"""DATM's learnable soft labels: initialisation from expert logits and the soft cross-entropy.

DATM (Guo et al., "Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory
Matching", ICLR 2024, section 4.2 "soft label initialisation") stores the labels of the
synthetic set as (N, K) logits, learnt by SGD through the unrolled student like the images.
Research note trajectory-matching.md section 4.3:

- init (``pix_init='samples_predicted_correctly'``): for each synthetic image, the mean of the
  final-epoch logits of only those experts whose argmax is the image's class (eval mode, no
  augmentation). The official code divides by the number of correct experts without a guard,
  which gives NaN labels for an image no expert gets right; here such images keep the first
  expert's logits and a warning is logged (with correct-sample init this cannot happen for the
  expert that selected the image, unless the model or experts changed in between);
- init (``pix_init='real'``): the first expert's logits, no filter (``only_correct=False``);
- loss: l = -(1/B) sum_i sum_c softmax(y_i)_c log softmax(f(x_i))_c, temperature 1.

Example:
    >>> y = init_soft_labels(x_syn, y_syn, [store.load(i)[-1] for i in range(len(store))],
    ...                      model)                                         # doctest: +SKIP
    >>> loss = soft_cross_entropy(student_logits, y[idx])                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from datadistill.config import check_choice
from datadistill.errors import CompatibilityError
from datadistill.labels import soft_cross_entropy  # noqa: F401  DATM's loss, re-exported
from datadistill.models.functional import functional_forward

logger = logging.getLogger(__name__)


@torch.no_grad()
def expert_logits(model: nn.Module, flat_params: torch.Tensor, images: torch.Tensor, *,
                  batch: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """(N, K) logits of ``model`` with the flat parameters (P,), eval mode, no augmentation.

    Returned on the CPU. The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else flat_params.device
    theta = flat_params.detach().to(device=device, dtype=torch.float32)  # fp16 stores upcast
    was_training = model.training
    model.eval()
    try:
        parts = [functional_forward(model, theta, images[s:s + batch].to(device)).float().cpu()
                 for s in range(0, len(images), batch)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def init_soft_labels(images: torch.Tensor, labels: torch.Tensor,
                     expert_final_params: Sequence[torch.Tensor], model: nn.Module, *,
                     batch: int = 256, only_correct: bool = True,
                     device: str | torch.device | None = None) -> torch.Tensor:
    """(N, K) initial soft-label logits for synthetic ``images`` (N, C, H, W) of class ``labels``.

    ``expert_final_params`` holds one flat (P,) vector per expert (their final epoch, DATM's
    ``Label_Model_Timestamp=-1``); a lazy sequence works, each item is read once. With
    ``only_correct`` the logits are averaged over the experts that classify the image
    correctly; otherwise (``pix_init='real'``) they are the first expert's logits.
    """
    if len(expert_final_params) == 0:
        raise CompatibilityError("init_soft_labels needs at least one expert; train experts "
                                 "first (datadistill.experts.train_experts).")
    first = expert_logits(model, expert_final_params[0], images, batch=batch, device=device)
    if not only_correct:
        return first
    labels = labels.cpu()
    total = torch.zeros_like(first)  # (N, K) sum of correct experts' logits
    count = torch.zeros(len(labels))  # (N,) number of correct experts
    for i in range(len(expert_final_params)):
        logits = first if i == 0 else expert_logits(model, expert_final_params[i], images,
                                                    batch=batch, device=device)
        correct = (logits.argmax(dim=1) == labels).float()  # (N,)
        total += logits * correct[:, None]
        count += correct
    out = total / count.clamp(min=1.0)[:, None]
    missed = count == 0
    if bool(missed.any()):
        logger.warning("%d of %d synthetic images are misclassified by all %d experts; their "
                       "soft labels are the first expert's logits.", int(missed.sum()),
                       len(labels), len(expert_final_params))
        out[missed] = first[missed]
    return out


LABEL_MODES = ("hard", "soft")  # soft: DATM's learnable (N, K) logits


def check_labels_config(label_mode: str) -> None:
    """The labels axis of a distillation config (``distill.label_mode``).

    >>> check_labels_config("soft")
    """
    check_choice("distill.label_mode", label_mode, LABEL_MODES)
