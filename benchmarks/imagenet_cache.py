"""ImageNet-format cache: build throughput, and the peak memory of a training epoch.

A generated ImageNet-layout tree (``train/<wnid>/*.JPEG``, 100 classes, noise JPEGs of
80 x 60 px, quality 90; ``val/<wnid>/`` with 10 per class) is written under ``--tmp``, never
in the repository. For each tree size:

1. **Build**: ``datadistill.data.imagenet.load_split`` decodes the train split into a fresh
   64 px cache ("squash" rule) with 1 and with 2 worker processes; images per second. Then
   the same call again on the finished cache (a second run: listing, checksum, open).
2. **Epoch**: in a fresh subprocess per reader, ``prepare("imagenet", ...)`` then one expert
   epoch (``train_one_expert``: ConvNet depth 4, width 8 to keep the CPU time small, batch
   256, no DSA, the per-epoch test accuracy on 1,000 val images) reading batches:
   - ``pread``: the library's reader (:class:`CachedImages`, positioned reads per batch);
   - ``mmap``: the same cache through ``torch.from_numpy(np.memmap(...))``, uint8 rows
     indexed per batch and normalised (the alternative the issue suggests);
   - ``memory``: the whole split as one float32 tensor first (what the in-memory loaders do).
   Peak memory is the child's max RSS (``resource.getrusage``), which counts mapped file
   pages the process touched.

    python benchmarks/imagenet_cache.py --images 20000 40000
    (``--parts build`` or ``--parts epoch`` runs one half; both merge into the same JSON.)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

CLASSES, VAL_PER_CLASS, SRC_SIZE, RES = 100, 10, (80, 60), 64
READERS = ("pread", "mmap", "memory")


def _write_class(args: tuple[Path, str, int, int]) -> None:
    from PIL import Image

    folder, wnid, count, seed = args
    rng = np.random.default_rng(seed)
    (folder / wnid).mkdir(parents=True, exist_ok=True)
    for j in range(count):
        pixels = rng.integers(0, 256, (SRC_SIZE[1], SRC_SIZE[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / wnid / f"{wnid}_{j}.JPEG", quality=90)


def make_tree(root: Path, images: int) -> None:
    """`images` train JPEGs in CLASSES folders and a val split, unless already there."""
    marker = root / "complete"
    if marker.is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    per_class = images // CLASSES
    jobs = [(root / "train", f"n{c:08d}", per_class, c) for c in range(CLASSES)]
    jobs += [(root / "val", f"n{c:08d}", VAL_PER_CLASS, 10**6 + c) for c in range(CLASSES)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_class, jobs))
    marker.write_text("ok\n")


def build_rate(root: Path, cache: Path, workers: int) -> dict:
    from datadistill.data import imagenet

    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    split = imagenet.load_split(root, "train", image_size=RES, cache_dir=cache, workers=workers)
    seconds = time.perf_counter() - start
    n = len(split.labels)
    return {"workers": workers, "images": n, "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds, 1)}


def reopen_seconds(root: Path, cache: Path) -> float:
    """A second run: list the tree, check the source checksum, open the finished cache."""
    from datadistill.data import imagenet

    start = time.perf_counter()
    imagenet.load_split(root, "train", image_size=RES, cache_dir=cache)
    return round(time.perf_counter() - start, 2)


class MmapImages:
    """uint8 rows of the cache file as a memory-mapped tensor, normalised per batch."""

    def __init__(self, reader) -> None:
        shape = tuple(reader.shape)
        self.x = torch.from_numpy(np.memmap(reader.path, dtype=np.uint8, mode="r", shape=shape))
        self.shape, self.ndim, self.device = reader.shape, 4, torch.device("cpu")
        self.mean = torch.tensor(reader.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(reader.std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device):
        return self

    def __getitem__(self, index) -> torch.Tensor:
        return (self.x[index].float() / 255 - self.mean) / self.std


def epoch_child(args: argparse.Namespace) -> dict:
    """One expert epoch in this process with the given reader; its time and peak RSS."""
    import warnings
    from dataclasses import replace

    from datadistill.data import prepare
    from datadistill.experts.train import ExpertConfig, train_one_expert

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(1)
    data = prepare("imagenet", args.root, image_size=RES, cache_dir=args.cache, workers=1)
    if args.reader == "mmap":
        data = replace(data, train=replace(data.train, images=MmapImages(data.train.images)),
                       test=replace(data.test, images=MmapImages(data.test.images)))
    elif args.reader == "memory":
        data = replace(data, train=replace(data.train, images=data.train.images[:]),
                       test=replace(data.test, images=data.test.images[:]))
    cfg = ExpertConfig(dataset="imagenet", num_experts=1, epochs=1, batch_size=256, dsa=False,
                       model_kwargs={"width": 8, "depth": 4}, test_samples=1000)
    start = time.perf_counter()
    _, acc = train_one_expert(cfg, data, 0)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"reader": args.reader, "train_images": len(data.train), "epoch_s": round(seconds, 1),
            "peak_rss_mb": round(peak_mb, 1), "test_acc_after_epoch": float(acc[-1])}


def run_epoch(root: Path, cache: Path, reader: str) -> dict:
    cmd = [sys.executable, __file__, "--epoch-child", "--root", str(root), "--cache",
           str(cache), "--reader", reader]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[20000, 40000])
    p.add_argument("--tmp", type=Path, default=Path("/tmp/datadistill_imagenet_bench"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    p.add_argument("--parts", nargs="+", default=["build", "epoch"], choices=["build", "epoch"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/imagenet_cache.json"))
    p.add_argument("--epoch-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--reader", choices=READERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.epoch_child:
        print(json.dumps(epoch_child(args)))
        return
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"source_jpeg": f"{SRC_SIZE[0]}x{SRC_SIZE[1]} px noise, quality 90",
                    "cache": f"{RES} px, squash", "classes": CLASSES})
    sizes = {e["train_images"]: e for e in results.get("sizes", [])}
    for n in args.images:
        root, cache = args.tmp / f"tree_{n}", args.tmp / f"cache_{n}"
        entry = sizes.setdefault(n, {"train_images": n})
        start = time.perf_counter()
        make_tree(root, n)
        entry["tree_s"] = round(time.perf_counter() - start, 1)
        if "build" in args.parts or not (cache / f"imagenet_train_{RES}px_squash").is_dir():
            entry["build"] = [build_rate(root, cache, w) for w in args.workers]
            entry["cache_mb"] = round((cache / f"imagenet_train_{RES}px_squash" / "images.u8")
                                      .stat().st_size / 2**20, 1)
            entry["reopen_s"] = reopen_seconds(root, cache)
        if "epoch" in args.parts:
            entry["epoch"] = [run_epoch(root, cache, r) for r in args.readers]
        print(json.dumps(entry), flush=True)
    results["sizes"] = [sizes[n] for n in sorted(sizes)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for e in results["sizes"]:
        for b in e.get("build", []):
            print(f"| {e['train_images']} | build, {b['workers']} worker(s) | "
                  f"{b['images_per_s']} img/s | {b['seconds']} s |")
        for r in e.get("epoch", []):
            print(f"| {e['train_images']} | epoch, {r['reader']} | {r['peak_rss_mb']} MB peak | "
                  f"{r['epoch_s']} s |")


if __name__ == "__main__":
    main()
