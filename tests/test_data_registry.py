"""Registry, metadata, normalisation, the embedded digits dataset and `prepare`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datadistill.data import (
    DatasetInfo,
    ImageSet,
    UnknownDatasetError,
    create_dataset,
    dataset_info,
    denormalize,
    list_datasets,
    normalize,
    prepare,
)
from datadistill.data import digits as digits_module
from datadistill.errors import ConfigError, DatasetError

FIXED = ["cifar10", "cifar100", "digits", "fashion_mnist", "imagenet64", "mnist", "svhn",
         "tiny_imagenet"]


IMAGENET = ["imagenet", "imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk",
            "imageyellow"]


def test_list_datasets_names_every_format():
    assert list_datasets() == sorted(FIXED + ["imagefolder"] + IMAGENET)


@pytest.mark.parametrize("name", FIXED)
def test_dataset_info_is_consistent(name):
    info = dataset_info(name)
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.channels
    assert len(info.class_names) == info.num_classes
    assert all(0 < s < 1 for s in info.std) and all(0 < m < 1 for m in info.mean)


def test_published_constants_and_dsa_strategies():
    assert dataset_info("mnist").mean == (0.1307,)
    assert dataset_info("cifar100").std == (0.2673, 0.2564, 0.2762)
    assert dataset_info("tiny_imagenet").image_size == (64, 64)
    assert "flip" not in dataset_info("svhn").dsa_strategy
    assert "flip" not in dataset_info("digits").dsa_strategy
    assert "flip" in dataset_info("cifar10").dsa_strategy


def test_unknown_name_lists_available_names():
    with pytest.raises(UnknownDatasetError) as err:
        create_dataset("cifar11")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, DatasetError)
    for name in list_datasets():
        assert name in str(err.value)
    with pytest.raises(UnknownDatasetError, match="available"):
        dataset_info("imagenet21k")


def test_aliases_and_bad_split_and_options():
    assert dataset_info("CIFAR-10").name == "cifar10"
    assert dataset_info("FashionMNIST").name == "fashion_mnist"
    with pytest.raises(ConfigError, match="no split 'val'"):
        create_dataset("digits", split="val")
    with pytest.raises(ConfigError, match="image_size"):
        create_dataset("digits", image_size=16)
    with pytest.raises(ConfigError, match="root="):
        dataset_info("imagefolder")


def test_digits_split_is_fixed_stratified_and_disjoint():
    train_idx, test_idx = digits_module.split_indices()
    assert (len(train_idx), len(test_idx)) == (1437, 360)
    assert not set(train_idx) & set(test_idx)
    train = create_dataset("digits", split="train", normalize=False)
    test = create_dataset("digits", split="test", normalize=False)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.float32
    assert test.labels.dtype == torch.int64 and train.space == "raw"
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    # Stratified: every class keeps 20% of its images in test, give or take one.
    counts = np.bincount(test.labels.numpy(), minlength=10)
    totals = counts + np.bincount(train.labels.numpy(), minlength=10)
    assert np.all(np.abs(counts - 0.2 * totals) <= 1)
    # Deterministic: the split depends on nothing but the seed inside the module.
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(create_dataset("digits", split="test", normalize=False).images, test.images)


def test_digits_constants_match_train_split():
    raw = create_dataset("digits", split="train", normalize=False).images.double()
    assert raw.mean().item() == pytest.approx(digits_module.MEAN[0], abs=1e-4)
    assert raw.std(unbiased=False).item() == pytest.approx(digits_module.STD[0], abs=1e-4)
    normed = create_dataset("digits", split="train").images
    assert normed.mean().abs().item() < 1e-3 and normed.std().item() == pytest.approx(1, abs=1e-3)


def test_normalize_round_trip_channelwise():
    info = DatasetInfo("toy", 2, 3, (4, 4), (0.1, 0.5, 0.9), (0.2, 0.25, 0.5), ("a", "b"))
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = normalize(x, info)
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.5) / 0.25)
    assert torch.allclose(denormalize(y, info), x, atol=1e-6)
    assert normalize(x[0], info).shape == (3, 4, 4)  # a single (C, H, W) image works too
    with pytest.raises(DatasetError, match="3, H, W"):
        normalize(torch.rand(2, 1, 4, 4), info)


def test_info_and_imageset_validation():
    with pytest.raises(ConfigError, match="one value per channel"):
        DatasetInfo("bad", 1, 3, (4, 4), (0.5,), (0.5,), ("a",))
    info = DatasetInfo("toy", 1, 1, (4, 4), (0.5,), (0.5,), ("a",))
    with pytest.raises(DatasetError, match="labels"):
        ImageSet(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.int64), info, "raw")
    with pytest.raises(ConfigError, match="space"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), info, "pixels")


def test_prepare_normalized_and_zca():
    plain = prepare("digits")
    assert plain.zca is None and plain.train.space == plain.test.space == "normalized"
    assert plain.info.name == "digits"
    whitened = prepare("digits", zca=True)
    assert whitened.train.space == whitened.test.space == "zca"
    raw_test = create_dataset("digits", split="test", normalize=False).images
    # Fitted on train only, applied to test: the inverse gives back the raw test pixels.
    assert torch.allclose(whitened.zca.invert(whitened.test.images), raw_test, atol=1e-4)
    # Whitened train pixels have mean 0 (the ZCA mean is the train mean).
    assert whitened.train.images.mean(0).abs().max().item() < 1e-4


def test_root_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATADISTILL_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match=str(tmp_path)):
        create_dataset("mnist")


def test_split_sizes_are_the_registry_facts_and_unknown_names_fail():
    from datadistill.data import split_sizes

    assert split_sizes("digits") == (len(create_dataset("digits", split="train")),
                                     len(create_dataset("digits", split="test")))
    assert split_sizes("cifar-10") == (50_000, 10_000)  # aliases resolve
    assert split_sizes("imagefolder") is None  # the files decide
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'; available: "):
        split_sizes("nope")


def test_memory_counts_real_images_from_the_registry():
    from types import SimpleNamespace

    from datadistill.tm.memory import real_images_of

    info = dataset_info("cifar100")
    cfg = SimpleNamespace(dataset="cifar100", train_per_class=None)
    assert real_images_of(cfg, info) == 60_000
    assert real_images_of(SimpleNamespace(dataset="cifar100", train_per_class=10), info) == 11_000
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'cifar1000'"):
        real_images_of(SimpleNamespace(dataset="cifar1000", train_per_class=None), info)
