"""DD-Ranking's settings are read from configs/_evaluation/ddranking.yaml, with the values the
Python dicts of ddranking.py held before they moved there."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from datadistill.config import packaged_values
from datadistill.evaluation.ddranking import (
    FULL_ACCURACY_CACHE,
    METHOD_PRESETS,
    PRESETS,
    SETTINGS_FILE,
    full_accuracy_for,
    preset_for,
)
from datadistill.evaluation.ddranking_train import TrainSpec

# The former Python values (ddranking.py before the move), written out, with the two later
# corrections to match DD-Ranking: full-data batch 256, and DATM's reference trained with DSA.
FORMER_LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)
FORMER_FULL = TrainSpec(lr=0.01, epochs=200, batch_size=256, step_size=100, augment="none",
                        test_every=10)
_MIXUP = {"labels": "soft", "soft_label_mode": "M", "aug_for_hard": False,
          "train": {"loss": "kl", "temperature": 30.0, "augment": "mixup", "optimizer": "adamw",
                    "scheduler": "cosine", "weight_decay": 0.01, "epochs": 400,
                    "test_every": 20}}
FORMER_PRESETS = {
    "hard_dsa": {},
    "hard_noaug": {"train": {"augment": "none"}},
    "soft_sce_dsa": {"labels": "soft", "soft_label_mode": "S",
                     "train": {"loss": "sce", "temperature": 1.0, "test_every": 20},
                     "full": {"augment": "dsa"}},
    "soft_kl_mixup": _MIXUP,
    "soft_kl_cutmix": {**_MIXUP, "train": {**_MIXUP["train"], "temperature": 20.0,
                                           "augment": "cutmix", "epochs": 300}},
}
FORMER_METHODS = {
    "mtt": "hard_dsa", "ftd": "hard_dsa", "mdatm": "hard_dsa", "random": "hard_dsa",
    "datm": "soft_sce_dsa", "pad": "soft_sce_dsa", "dc": "hard_noaug", "dsa": "hard_dsa",
    "dm": "hard_dsa", "sre2l": "soft_kl_mixup", "rded": "soft_kl_cutmix",
}  # fmt: skip


def test_tables_hold_the_former_values():
    assert PRESETS == FORMER_PRESETS
    assert METHOD_PRESETS == FORMER_METHODS


@pytest.mark.parametrize("name", [*FORMER_METHODS, *FORMER_PRESETS])
def test_every_method_and_preset_resolves_as_before(name):
    cfg = preset_for(name)
    values = FORMER_PRESETS[FORMER_METHODS.get(name, name)]
    assert asdict(cfg.train) == asdict(TrainSpec(**{"lr": 0.01, **values.get("train", {})}))
    assert cfg.full == replace(FORMER_FULL, **values.get("full", {}))
    assert cfg.lr_grid == FORMER_LR_GRID
    for key, value in values.items():
        if key not in ("train", "full"):
            assert getattr(cfg, key) == value, key


def test_the_settings_are_one_packaged_yaml_file():
    settings = packaged_values(SETTINGS_FILE)
    assert set(settings) == {"lr_grid", "full", "full_accuracy_cache", "presets", "methods"}
    assert settings["presets"]["soft_kl_cutmix"]["extends"] == "soft_kl_mixup"


def test_the_cached_full_accuracies_hold_the_former_values():
    # the former Python table (DD-Ranking's REAL_DATA_ACC_CACHE as fractions) and its messages
    assert FULL_ACCURACY_CACHE == {("imagenet", "resnet18_imagenet"): 0.565,
                                   ("tiny_imagenet", "resnet18_bn"): 0.464}
    assert full_accuracy_for(preset_for("sre2l", model="resnet18_imagenet"), "imagenet") == (
        0.565, "DD-Ranking's cached full-data accuracy (ImageNet1K-ResNet-18-BN: 56.5)")
    assert full_accuracy_for(preset_for("sre2l", model="resnet18_bn"), "tiny_imagenet") == (
        0.464, "DD-Ranking's cached full-data accuracy (TinyImageNet-ResNet-18-BN: 46.4)")
