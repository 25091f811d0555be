"""Resident memory while an expert trains on ImageNet-1K's full training length (64 px).

The training split is a uint8 cache file of 1,281,167 rows of 3 x 64 x 64 (15.7 GB) created
sparse (no disk blocks; reads return zeros), with random labels over 1,000 classes, opened as
`imagenet64` opens its cache (`CachedImages`, positioned reads). One expert of
imagenet1k/mtt_ipc1 (ConvNetD4, batch 256, SGD, DSA) runs the real training loop
(:func:`datadistill.experts.train.train_one_expert` -> :func:`datadistill.training.fit`) for
``--batches`` batches; after every batch the process's ``VmRSS``, ``RssAnon`` and ``RssFile``
(/proc/self/status) are recorded. What it shows: the resident set does not grow with the
batches read, and ``RssFile`` (file-backed resident pages, where a memory map of the split
would show) stays at the libraries' size: no step holds the split's pages. ``--width`` lowers
the ConvNet width to keep the run short on a CPU (the data path does not depend on it).

    python benchmarks/imagenet1k_rss.py --batches 40 --width 32 \\
        --out benchmarks/results/imagenet1k_rss.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TRAIN = 1_281_167  # ImageNet-1K training images
TEST = 1000  # a small monitoring split: the per-epoch accuracy is not what is measured


class Stop(Exception):
    """Raised after the requested number of batches."""


def status() -> dict:
    """VmRSS, RssAnon, RssFile, VmHWM of this process, bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(line.split()[1]) * 1024
    return out


def mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps); 0 if unmapped."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and first == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


def sparse_split(folder: Path, count: int, seed: int):
    """An ImageSet over a sparse uint8 cache file of ``count`` rows, labels random."""
    from datadistill.data import dataset_info
    from datadistill.data.cache import CachedImages
    from datadistill.data.info import ImageSet

    info = dataset_info("imagenet64")
    path = folder / f"images_{count}.u8"
    with open(path, "wb") as f:
        f.truncate(count * 3 * 64 * 64)  # sparse: no blocks written
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, 1000, count))
    return ImageSet(CachedImages(path, count, 64, info.mean, info.std), labels, info,
                    "normalized"), path


def run(batches: int, width: int) -> dict:
    from datadistill.data.augment import DSA
    from datadistill.data.prepare import RealData
    from datadistill.experts.train import ExpertConfig, train_one_expert
    from datadistill.tm.config import expert_config, load_pipeline_config

    torch.set_num_threads(1)
    cfg = load_pipeline_config("imagenet1k/mtt_ipc1", [
        f"model_kwargs.width={width}", "experts.epochs=1", "distill.max_start_epoch=1",
        "distill.expert_epochs=1"])
    ecfg: ExpertConfig = expert_config(cfg)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dd_in1k_rss_") as tmp:
        train, path = sparse_split(Path(tmp), TRAIN, 0)
        test, _ = sparse_split(Path(tmp), TEST, 1)
        data = RealData(train, test, train.info, None)
        reader = train.images
        read = reader.read_uint8
        start = {"before": status(), "t": time.time()}

        def counted(indices):  # after each batch's read: record, stop after `batches`
            out = read(indices)
            rows.append({"batch": len(rows), "rows": len(indices), **status(),
                         "split_mapped_rss": mapped_rss(path)})
            if len(rows) > batches:
                raise Stop
            return out

        reader.read_uint8 = counted
        try:
            train_one_expert(ecfg, data, 0, dsa=DSA(train.info.dsa_strategy))
        except Stop:
            pass
        disk = path.stat().st_blocks * 512
    first = rows[1]  # after the first batch: model, optimiser and the first graph exist
    return {
        "train_rows": TRAIN, "file_bytes": TRAIN * 3 * 64 * 64, "file_disk_bytes": disk,
        "batch_size": ecfg.batch_size, "width": width, "batches": len(rows) - 1,
        "seconds": time.time() - start["t"], "before_training": start["before"],
        "rss_after_first_batch": first["VmRSS"],
        "rss_max": max(r["VmRSS"] for r in rows[1:]),
        "rss_growth_after_first_batch": max(r["VmRSS"] for r in rows[1:]) - first["VmRSS"],
        "rss_file_max": max(r["RssFile"] for r in rows),
        "rss_file_before": start["before"]["RssFile"], "vmhwm": rows[-1]["VmHWM"],
        "split_mapped_rss_max": max(r["split_mapped_rss"] for r in rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/imagenet1k_rss.json")
    args = p.parse_args(argv)
    result = run(args.batches, args.width)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    mb = 1e6
    print(f"{result['batches']} batches of {result['batch_size']} over {TRAIN:,} rows "
          f"({result['file_bytes'] / 1e9:.1f} GB file, {result['file_disk_bytes'] / mb:.0f} MB "
          f"on disk): RSS {result['rss_after_first_batch'] / mb:.0f} MB after the first batch, "
          f"max {result['rss_max'] / mb:.0f} MB (+{result['rss_growth_after_first_batch'] / mb:.1f}"
          f" MB); RssFile {result['rss_file_before'] / mb:.0f} -> max "
          f"{result['rss_file_max'] / mb:.0f} MB (libraries); pages of the split resident: "
          f"{result['split_mapped_rss_max']} bytes; {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
