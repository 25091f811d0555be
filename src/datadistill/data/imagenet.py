"""ImageNet-1K and MTT's ImageNet subsets from the standard ILSVRC-2012 layout, via a uint8 cache.

Layout (`root`, or `root/imagenet`):

    train/<wnid>/*.JPEG                       1000 class folders; class index = sorted wnids
    val/<wnid>/*.JPEG                         either already in class folders, or
    val/ILSVRC2012_val_00000001.JPEG ...      flat, labelled by one of (looked up in order)
      ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt + meta.mat
        (devkit ids 1..1000 -> wnids through meta.mat; line i labels the i-th sorted file)
      LOC_val_solution.csv                    (Kaggle: ImageId, "wnid x0 y0 x1 y1 ...")

Sorted wnids are torchvision's `ImageNet` order, so MTT's class ids index them directly.
The package ships the 1000 ImageNet-1K classes (``imagenet_classes.tsv``: index in sorted-wnid
order, wnid, the devkit's ``map_clsloc.txt`` id, the synset's words): class names come from it,
train/ folders that are not among its wnids are refused, and a subset's classes are found by
wnid (a misspelled folder is named as missing, never silently replaced by its neighbour).
"test" is the labelled val split (the official test split has no labels).

Pixels are decoded once into a cache (`datadistill.data.cache`) at
`<cache_dir or root/.datadistill-cache>/<name>_<split>_<S>px_<resize>/` and read per batch.
Default resize rules follow the official code: MTT resizes both splits of a subset with
``Resize((128, 128))`` ("squash"); INFER resizes ImageNet-1K training images with
``Resize((224, 224))`` ("squash") and its students are tested as SRe2L does, val images
``Resize(256)`` + ``CenterCrop(224)`` ("eval_crop"). Normalisation is ImageNet's mean/std.
Deviation: the cache holds uint8 after the resize (the official code resizes the float
tensor), a rounding of at most 0.5/255 per pixel.

Example:
    >>> split = load_split(Path("/data/imagenet"), "val", name="imagenette")  # doctest: +SKIP
    >>> len(split.labels), split.info.image_size                            # doctest: +SKIP
    (500, (128, 128))
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io

from datadistill.data.cache import RESIZE_RULES, BuildOptions, build_cache
from datadistill.data.info import DatasetInfo, LoadedSplit
from datadistill.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
CACHE_FOLDER = ".datadistill-cache"
CACHE_ENV = "DATADISTILL_CACHE"  # a cache root used when cache_dir is not given
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"

# MTT's subsets (utils.py `Config` of GeorgeCazenavette/mtt-distillation): ImageNet-1K class
# ids in sorted-wnid order; subset class c is the c-th id of its list (lists are not sorted).
SUBSETS: dict[str, tuple[int, ...]] = {
    # tench, English springer, cassette player, chain saw, church, French horn, garbage
    # truck, gas pump, golf ball, parachute
    "imagenette": (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    # Australian terrier, border terrier, Samoyed, beagle, Shih-Tzu, English foxhound,
    # Rhodesian ridgeback, dingo, golden retriever, Old English sheepdog
    "imagewoof": (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    # pineapple, banana, strawberry, orange, lemon, pomegranate, fig, bell pepper, cucumber,
    # Granny Smith
    "imagefruit": (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    # tabby, tiger cat, Persian, Siamese, Egyptian cat, lion, tiger, jaguar, snow leopard, lynx
    "imagemeow": (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    # peacock, flamingo, macaw, pelican, king penguin, bald eagle, toucan, ostrich, black
    # swan, sulphur-crested cockatoo
    "imagesquawk": (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    # bee, yellow lady's slipper, banana, lemon, corn, school bus, honeycomb, lion, garden
    # spider, goldfinch
    "imageyellow": (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
}
NUM_CLASSES = 1000
WNID = re.compile(r"n\d{8}")
CLASS_INDEX = "imagenet_classes.tsv"  # package data beside this module


class StandardClasses(NamedTuple):
    """The 1000 ImageNet-1K classes in sorted-wnid order (index i is class i)."""
    wnids: tuple[str, ...]
    names: tuple[str, ...]  # the synset's words, e.g. "tench, Tinca tinca"
    release_ids: tuple[int, ...]  # map_clsloc.txt's 1..1000 id (the downsampled release's)

    def name_of(self, wnid: str) -> str:
        return self.names[self.wnids.index(wnid)]


@functools.cache
def standard_classes() -> StandardClasses:
    """The shipped class index (``imagenet_classes.tsv``), checked as it is read."""
    text = resources.files(__package__).joinpath(CLASS_INDEX).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()
            if line and not line.startswith("#")][1:]
    wnids = tuple(r[1] for r in rows)
    if [int(r[0]) for r in rows] != list(range(NUM_CLASSES)) or list(wnids) != sorted(
            set(wnids)) or sorted(int(r[2]) for r in rows) != list(range(1, NUM_CLASSES + 1)):
        raise DatasetError(f"the installed {CLASS_INDEX} is damaged; reinstall datadistill")
    return StandardClasses(wnids, tuple(r[3] for r in rows), tuple(int(r[2]) for r in rows))


def info_for(name: str, resolution: int, class_names: tuple[str, ...] | None = None
             ) -> DatasetInfo:
    """DatasetInfo of "imagenet" or a subset at `resolution`, with the shipped class names.

    Once read, "imagenet" has as many classes as train/ has folders (1000 for ImageNet-1K;
    fewer for a class subset such as ImageNet-100 laid out the same way).
    """
    standard = standard_classes().names
    names = class_names or (standard if name == "imagenet"
                            else tuple(standard[i] for i in SUBSETS[name]))
    return DatasetInfo(name, len(names), 3, (resolution, resolution), MEAN, STD, names)


def find_root(root: Path) -> Path:
    """The folder holding train/ (`root` or `root/imagenet`); a clear error otherwise."""
    for folder in (root, root / "imagenet"):
        if (folder / "train").is_dir():
            return folder
    raise DatasetError(f"no ImageNet train/ folder under {root} or {root / 'imagenet'}; "
                       "arrange it as <root>/train/<wnid>/*.JPEG and <root>/val/...")


def train_wnids(root: Path) -> list[str]:
    """Sorted class folder names of train/ (1000 wnids for ImageNet-1K)."""
    wnids = sorted(p.name for p in (root / "train").iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    if not wnids:
        raise DatasetError(f"{root / 'train'} has no class folders; expected train/<wnid>/")
    return wnids


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _from_class_folders(split_dir: Path, wnids: list[str], keep: list[str]
                        ) -> tuple[list[Path], list[str]]:
    """Files (sorted per class) and their wnids, for the classes in `keep`, in that order."""
    unknown = sorted({p.name for p in split_dir.iterdir() if p.is_dir()} - set(wnids))
    if unknown:
        raise DatasetError(f"{split_dir} has class folders {unknown[:5]} that train/ lacks; "
                           "every class must have a train folder")
    paths: list[Path] = []
    owners: list[str] = []
    for wnid in keep:
        found = _images_in(split_dir / wnid) if (split_dir / wnid).is_dir() else []
        paths += found
        owners += [wnid] * len(found)
    return paths, owners


def _devkit_wnids(root: Path) -> list[str] | None:
    """Val wnids from the devkit (ground-truth ids mapped by meta.mat), or None if absent."""
    truth, meta_path = root / GROUND_TRUTH, root / DEVKIT_META
    if not truth.is_file():
        return None
    if not meta_path.is_file():
        raise DatasetError(f"{truth} needs {meta_path} (devkit ids -> wnids); extract the "
                           "whole ILSVRC2012_devkit_t12 archive")
    try:
        synsets = scipy.io.loadmat(meta_path, squeeze_me=True)["synsets"]
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                      if int(s["num_children"]) == 0}
        ids = [int(line) for line in truth.read_text().split()]
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise DatasetError(f"{meta_path} or {truth} is not the ILSVRC-2012 devkit format "
                           f"({err}); re-extract the devkit") from err
    missing = sorted(set(ids) - set(id_to_wnid))
    if missing:
        raise DatasetError(f"{truth} has class ids {missing[:5]} that {meta_path} lacks")
    return [id_to_wnid[i] for i in ids]


def _kaggle_wnids(root: Path, files: list[Path]) -> list[str] | None:
    """Val wnids from Kaggle's LOC_val_solution.csv (ImageId -> first wnid), or None."""
    path = root / KAGGLE_SOLUTION
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        table = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    absent = [p.name for p in files if p.stem not in table]
    if absent:
        raise DatasetError(f"{path} has no label for {absent[:3]}; use the matching csv")
    return [table[p.stem] for p in files]


def _from_flat_val(root: Path, val_dir: Path, keep: list[str]) -> tuple[list[Path], list[str]]:
    """Files of a flat val/ whose wnid is in `keep` (class by class, in `keep`'s order)."""
    files = _images_in(val_dir)
    wnids = _devkit_wnids(root) or _kaggle_wnids(root, files)
    if wnids is None:
        raise DatasetError(
            f"{val_dir} is flat but no labels were found: put the devkit at {root / GROUND_TRUTH}"
            f" (with meta.mat), or {root / KAGGLE_SOLUTION}, or sort val/ into val/<wnid>/")
    if len(wnids) != len(files):
        raise DatasetError(f"{val_dir} has {len(files)} images but the ground truth lists "
                           f"{len(wnids)}; the val folder or the label file is incomplete")
    by_class: dict[str, list[Path]] = {w: [] for w in keep}
    for path, wnid in zip(files, wnids, strict=True):
        if wnid in by_class:
            by_class[wnid].append(path)
    paths: list[Path] = []
    owners: list[str] = []
    for wnid in keep:  # class by class, files sorted within a class: the same as folders
        paths += by_class[wnid]
        owners += [wnid] * len(by_class[wnid])
    return paths, owners


def list_split(root: Path, split: str, name: str = "imagenet"
               ) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Image paths, labels (N,) int64 and class wnids of one split of ImageNet or a subset.

    Example:
        >>> paths, labels, wnids = list_split(Path("in1k"), "train", "imagewoof")  # doctest: +SKIP
        >>> wnids[0]                                                           # doctest: +SKIP
        'n02096294'
    """
    wnids = train_wnids(root)
    _check_standard_wnids(root, wnids)
    keep = wnids if name == "imagenet" else [standard_classes().wnids[i] for i in SUBSETS[name]]
    if split == "train":
        paths, owners = _from_class_folders(root / "train", wnids, keep)
    else:
        val_dir = root / "val"
        if not val_dir.is_dir():
            raise DatasetError(f"{root} has no val/ folder; ImageNet's test split is val/")
        has_folders = any(p.is_dir() for p in val_dir.iterdir())
        paths, owners = (_from_class_folders(val_dir, wnids, keep) if has_folders
                         else _from_flat_val(root, val_dir, keep))
    if not paths:
        raise DatasetError(f"no {split} images of {name} under {root}")
    if name != "imagenet":
        _check_every_class_has_images(root, split, name, keep, set(owners))
    index = {w: i for i, w in enumerate(keep)}
    return paths, np.array([index[w] for w in owners], dtype=np.int64), tuple(keep)


def _check_standard_wnids(root: Path, wnids: list[str]) -> None:
    """train/ folders must be ImageNet-1K wnids: anything else is a typo or a stray folder."""
    unknown = sorted(set(wnids) - set(standard_classes().wnids))
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise DatasetError(f"{root / 'train'} has folders {unknown[:5]}{more} that are not "
                           "among the 1000 ImageNet-1K wnids; rename (a misspelled wnid?) "
                           "or remove them")


def _check_every_class_has_images(root: Path, split: str, name: str, keep: list[str],
                                  found: set[str]) -> None:
    """Every class of a subset must have images in `split`, before anything is decoded."""
    for c, wnid in enumerate(keep):
        if wnid not in found:
            where = root / split / wnid if (root / split / wnid).is_dir() or split == "train" \
                else root / split
            raise DatasetError(f"{name} class {c} ({wnid}, {standard_classes().name_of(wnid)!r})"
                               f" has no {split} images in {where}; put its images there "
                               "(is its folder's name misspelled?)")


def cache_folder(root: Path, name: str, split: str, resolution: int, resize: str,
                 cache_dir: str | Path | None = None) -> Path:
    """Where a split's cache lives: cache_dir, else $DATADISTILL_CACHE, else beside the data."""
    base = cache_dir or os.environ.get(CACHE_ENV) or root / CACHE_FOLDER
    return Path(base).expanduser() / f"{name}_{split}_{resolution}px_{resize}"


def default_resize(name: str, split: str) -> str:
    """The official rule: "squash" for MTT's subsets and for INFER's ImageNet-1K training
    images, "eval_crop" for ImageNet-1K val (SRe2L's student test transform)."""
    return "eval_crop" if name == "imagenet" and split != "train" else "squash"


def load_split(root: Path, split: str, *, name: str = "imagenet", image_size=None,
               resize: str | dict | None = None, cache_dir: str | Path | None = None,
               workers: int = 2, progress: bool = False) -> LoadedSplit:
    """One split as a `LoadedSplit` whose images are a `CachedImages` reader ([0,1] pixels).

    `resize`: a rule of RESIZE_RULES, a mapping split -> rule ({"train": ..., "val": ...}),
    or None for :func:`default_resize`. The cache is built on first use (resumed if
    interrupted) and reused afterwards.
    """
    resolution = _resolution(name, image_size)
    split = "val" if split == "test" else split
    if isinstance(resize, dict):
        resize = resize.get(split)
    resize = resize or default_resize(name, split)
    if resize not in RESIZE_RULES:
        raise ConfigError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")
    root = find_root(Path(root).expanduser())
    paths, labels, wnids = list_split(root, split, name)
    if split == "train":  # the val tree is checked too before hours of decoding
        list_split(root, "val", name)
    elif name != "imagenet":  # and a subset's train classes before its val split is built
        list_split(root, "train", name)
    folder = cache_folder(root, name, split, resolution, resize, cache_dir)
    cache = build_cache(paths, labels, folder, resolution=resolution, resize=resize, base=root,
                        extra_meta={"dataset": name, "split": split, "class_names": wnids},
                        options=BuildOptions(workers=workers, progress=progress))
    names = tuple(standard_classes().name_of(w) for w in wnids)
    return LoadedSplit(cache.images(), cache.labels, info_for(name, resolution, names))


def _resolution(name: str, image_size) -> int:
    if image_size is None:
        return 224 if name == "imagenet" else 128  # INFER's 224 px; MTT's subsets at 128 px
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if size[0] != size[1] or size[0] < 8:
        raise ConfigError(f"{name} caches square images; pass image_size=S (e.g. 64, 128, "
                          f"224), got {image_size!r}")
    return int(size[0])
