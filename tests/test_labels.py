"""The one soft/hard label helper, and the places that must agree with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datadistill.artifacts.distilled import DistilledSet
from datadistill.data import dataset_info
from datadistill.labels import hard_labels, is_soft
from datadistill.matching.soft_labels import soft_cross_entropy
from datadistill.matching.student import label_loss


def test_is_soft_and_hard_labels():
    hard = torch.tensor([2, 0, 1])
    soft = torch.tensor([[0.0, 1.0, 3.0], [5.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert not is_soft(hard) and is_soft(soft)
    assert not is_soft(torch.zeros(3, 3, dtype=torch.int64))  # not logits
    assert torch.equal(hard_labels(soft), hard) and hard_labels(hard) is hard


def test_artifact_and_student_loss_use_the_helper():
    info = dataset_info("digits")
    soft = torch.randn(10, info.num_classes, generator=torch.Generator().manual_seed(0))
    images = torch.zeros(10, info.channels, *info.image_size)
    ds = DistilledSet(images=images, labels=soft, lr=0.01, info=info, space="normalized",
                      ipc=1, method="datm")
    assert ds.soft_labels and torch.equal(ds.hard_labels, soft.argmax(dim=1))
    assert label_loss(soft) is soft_cross_entropy
    assert label_loss(soft.argmax(dim=1)) is F.cross_entropy
