"""scikit-learn's 8x8 handwritten digits: the embedded default dataset (no files, no network).

1,797 images with values 0..16, scaled to [0,1] by dividing by 16. The train/test split is a
fixed stratified 80/20 split (1,437 / 360 images) drawn with a local numpy Generator seeded
by `SPLIT_SEED`, so it is the same on every machine and never touches global RNG state.

Example:
    >>> split = load_split("test")
    >>> split.images.shape, split.labels.shape
    ((360, 1, 8, 8), (360,))
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from datadistill.data.info import DIGIT_NAMES, DSA_NO_FLIP, DatasetInfo, LoadedSplit

SPLIT_SEED = 0
TEST_FRACTION = 0.2

# Per-channel statistics of the train split after /16 (see tests/test_data_registry.py,
# which recomputes them).
MEAN = (0.3055,)
STD = (0.3761,)

INFO = DatasetInfo("digits", num_classes=10, channels=1, image_size=(8, 8), mean=MEAN, std=STD,
                   class_names=DIGIT_NAMES, dsa_strategy=DSA_NO_FLIP)


def _test_counts(class_counts: np.ndarray, n_test: int) -> np.ndarray:
    """Share `n_test` among classes in proportion to their size (largest remainder)."""
    exact = class_counts * n_test / class_counts.sum()
    counts = np.floor(exact).astype(np.int64)
    # Hand the leftover places to the largest remainders; ties go to the lower class.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n_test - counts.sum()]] += 1
    return counts


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 pixels 0..16 and (1797,) targets, parsed once per process."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    digits = load_digits()
    return digits.images, digits.target


@lru_cache(maxsize=1)
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test images into `load_digits()`, each sorted."""
    targets = _load()[1]
    n_test = int(np.ceil(TEST_FRACTION * len(targets)))
    per_class = _test_counts(np.bincount(targets), n_test)
    rng = np.random.default_rng(SPLIT_SEED)
    test = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in enumerate(per_class)]
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(targets)), test_idx)
    return train_idx, test_idx


def load_split(split: str) -> LoadedSplit:
    """Images (N, 1, 8, 8) float32 in [0,1] and labels (N,) int64 of one split."""
    pixels, targets = _load()
    train_idx, test_idx = split_indices()
    idx = train_idx if split == "train" else test_idx
    images = (pixels[idx] / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8), a fresh copy
    return LoadedSplit(images, targets[idx].astype(np.int64), INFO)
