"""Run every bad input we know of through the CLI and write the table of what each gets.

Each case builds its input in a scratch folder, runs ``datadistill ...`` (in this process, or
in a child process where a crash or a second process is the point) and records the exit
status and the first line of the message. The table in ``docs/bad-inputs.md`` is this
script's output, so it stays true:

    PYTHONPATH=src python benchmarks/bad_inputs.py --out docs/bad-inputs.md

A case passes when the command refuses with exit status 2 and a one-line ``error:`` message
(no traceback), or, where the input is recoverable (a torn log line, a dead owner's lock),
when it succeeds with a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SMALL = ["train_per_class=20", "experts.num_experts=1", "experts.epochs=3",
         "distill.iterations=2", "distill.syn_steps=2", "distill.max_start_epoch=1",
         "distill.expert_epochs=2", "distill.eval_every=0", "distill.eval_runs=1",
         "distill.eval_epochs=1", "evaluation.runs=1", "evaluation.epochs=1",
         "model_kwargs={width: 8}"]
QUICK = ["--epochs", "1", "--runs", "1", "--quiet"]


@dataclass
class Case:
    """One bad input: what it is, and how to build and run it (argv, or a callable)."""

    kind: str
    setup: Callable[[Path], list[str]]
    child: bool = False  # run in a separate process (crashes, concurrency)
    recoverable: bool = False  # success with a warning is the right answer


@dataclass
class Outcome:
    code: int
    message: str
    clean: bool


# ----------------------------------------------------------------------------- inputs
def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _bytes(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _digits_set(tmp: Path, bad: float | None = None, name: str = "set") -> Path:
    from datadistill.artifacts.distilled import DistilledSet, save_distilled
    from datadistill.data import create_dataset
    from datadistill.evaluation.baselines import random_subset

    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    if bad is not None:
        x[0, 0, 0, 0] = bad
    ds = DistilledSet(images=x, labels=y, lr=0.01, info=train.info, space="normalized", ipc=1,
                      method="random")
    return save_distilled(ds, tmp / name)


def _edited_set(tmp: Path, meta: dict | None = None, tensors: dict | None = None) -> Path:
    """A valid digits set with keys of meta.json and tensors.pt replaced."""
    folder = _digits_set(tmp)
    if meta:
        data = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**data, **meta}))
    if tensors:
        data = torch.load(folder / "tensors.pt", weights_only=True)
        data.update({k: v(data) if callable(v) else v for k, v in tensors.items()})
        torch.save(data, folder / "tensors.pt")
    return folder


def _eval_edited(tmp: Path, meta: dict | None = None, tensors: dict | None = None) -> list[str]:
    return ["eval", str(_edited_set(tmp, meta, tensors)), *QUICK]


_MOUNTS: list[Path] = []  # tmpfs mounted by a case, unmounted after it


def _mount(tmp: Path, name: str, options: str) -> Path:
    """A tmpfs at tmp/name (root only); else a plain folder made read-only by its mode, which
    binds every user but root."""
    folder = tmp / name
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode == 0:
        _MOUNTS.append(folder)
    elif "ro" in options.split(","):
        folder.chmod(0o555)
    return folder


def _readonly(tmp: Path) -> Path:
    return _mount(tmp, "ro", "ro,size=1m")


def _full_disk(tmp: Path) -> Path:
    """A 256 KiB tmpfs filled to its last byte: every write fails with ENOSPC."""
    folder = _mount(tmp, "full", "size=256k")
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return folder


def _readonly_run(tmp: Path) -> list[str]:
    """`report` of a finished run folder on a read-only file system."""
    out = _finished_run(tmp)
    ro = _mount(tmp, "ro", "size=4m")
    subprocess.run(["cp", "-a", str(out), str(ro / "r")], check=True)
    done = subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True)
    if done.returncode:  # not root: permissions
        subprocess.run(["chmod", "-R", "a-w", str(ro)], check=False)
    return ["report", str(ro / "r")]


def _special(tmp: Path, kind: str) -> Path:
    """A FIFO, or a character device equal to /dev/null (root; else a FIFO)."""
    path = tmp / kind
    if kind == "device" and os.geteuid() == 0:
        import stat

        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        os.mkfifo(path)
    return path


def _loop(tmp: Path) -> Path:
    (tmp / "loop1").symlink_to(tmp / "loop2")
    (tmp / "loop2").symlink_to(tmp / "loop1")
    return tmp / "loop1" / "out"


def _experts(tmp: Path, out: Path) -> list[str]:
    return ["experts", "digits/mtt_ipc1", *SMALL, "--out", str(out), "--quiet"]


def _score(tmp: Path, *extra: str) -> list[str]:
    return ["score", str(_digits_set(tmp)), "--epochs", "1", "--full-accuracy", "0.9",
            "--quiet", *extra]


def _legacy(tmp: Path, shape=(10, 1, 8, 8)) -> Path:
    folder = tmp / "legacy"
    folder.mkdir()
    torch.save(torch.zeros(shape), folder / "images_best.pt")
    torch.save(torch.arange(shape[0]) % 10, folder / "labels_best.pt")
    return folder


def _cifar(tmp: Path, test_batch: bytes) -> Path:
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir()
    good = pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))})
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(good)
    (folder / "test_batch").write_bytes(test_batch)
    return tmp


def _forged_meta(tmp: Path) -> list[str]:
    """batches.meta whose label_names are numpy arrays of a structured dtype with a field
    offset a gigabyte past their buffer (protocol 2): touching one read outside the buffer."""
    class Forger(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, np.dtype) and obj.fields is not None:
                cls, args, state = obj.__reduce__()
                fields = {k: (v[0], 10**9) for k, v in state[4].items()}
                return cls, args, (*state[:4], fields, *state[5:])
            return NotImplemented

    buf = io.BytesIO()
    forged = np.zeros(3, [("a", "<i8"), ("b", "<f8")])
    Forger(buf, protocol=2).dump({"label_names": [forged] * 10})  # str(name) reads it
    argv = _cifar_argv(tmp, pickle.dumps({"data": np.zeros((10, 3072), np.uint8),
                                          "labels": list(range(10))}))
    (tmp / "cifar-10-batches-py" / "batches.meta").write_bytes(buf.getvalue())
    return argv


def _cifar_argv(tmp: Path, test_batch: bytes) -> list[str]:
    return ["baseline", "random", "--dataset", "cifar10", "--data-root",
            str(_cifar(tmp, test_batch)), *QUICK, "--out", str(tmp / "b.json")]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


# {"data": numpy.ndarray((2,), dtype("O"), 16 forged bytes), "labels": [0, 1]}
OBJECT_ARRAY = (b"\x80\x02}(X\x04\x00\x00\x00datacnumpy\nndarray\nK\x02\x85cnumpy\ndtype\n"
                b"X\x01\x00\x00\x00O\x85RC\x10" + b"A" * 16 + b"\x87RX\x06\x00\x00\x00labels]"
                b"(K\x00K\x01eu.")


def _run(tmp: Path, *extra: str) -> list[str]:
    return ["run", "digits/mtt_ipc1", *SMALL, *extra, "--out", str(tmp / "r"), "--quiet"]


def _finished_run(tmp: Path) -> Path:
    from datadistill.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(_run(tmp)) == 0
    return tmp / "r"


def _changed_rerun(tmp: Path) -> list[str]:
    _finished_run(tmp)
    return _run(tmp, "distill.lr_img=5")


def _damaged_checkpoint(tmp: Path) -> list[str]:
    out = _finished_run(tmp)
    (out / "distill" / "checkpoint.pt").write_bytes(b"garbage")
    (out / "eval.json").unlink()
    return _run(tmp)


def _torn_metrics(tmp: Path) -> list[str]:
    out = _finished_run(tmp)
    with (out / "distill" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 1, "lo')
    return ["distill", "digits/mtt_ipc1", *SMALL, "--out", str(out), "--quiet"]


def _damaged_best(tmp: Path) -> list[str]:
    out = _finished_run(tmp)
    (out / "distill" / "best" / "tensors.pt").write_bytes(b"torn")
    return ["repair", str(out), "--quiet"]


def _swapped_best(tmp: Path) -> list[str]:
    """A finished run whose distill/best/ was replaced by another valid set, then rerun."""
    import shutil

    out = _finished_run(tmp)
    best = out / "distill" / "best"
    shutil.rmtree(best)
    shutil.copytree(_digits_set(tmp / "other" if (tmp / "other").mkdir() is None else tmp), best)
    return _run(tmp)


def _other_experts(tmp: Path) -> list[str]:
    _finished_run(tmp)
    return _run(tmp, "experts.lr=0.5")


def _busy(tmp: Path) -> list[str]:
    return _run(tmp)


def _stale_lock(tmp: Path) -> list[str]:
    (tmp / "r").mkdir()
    (tmp / "r" / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone",
                                                 "started": "yesterday", "command": "x"}))
    return _run(tmp)


def _gzip_bomb(tmp: Path) -> list[str]:
    import gzip

    from datadistill.data import safe_archive

    safe_archive.MAX_IN_MEMORY_BYTES = 2**26  # 64 MiB for the demo (restored after the case)
    folder = tmp / "mnist"
    folder.mkdir()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        for _ in range(5):  # 80 MiB of zeros in a 0.3 MiB file
            f.write(b"\0" * 2**24)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"")
    return ["baseline", "random", "--dataset", "mnist", "--data-root", str(folder), *QUICK,
            "--out", str(tmp / "b.json")]


CASES: list[Case] = [
    # configs and overrides
    Case("unknown key in a section", lambda t: ["validate", "digits/mtt_ipc1",
                                                "distill.lr_imgg=1"]),
    Case("unknown top-level key", lambda t: ["validate", "digits/mtt_ipc1", "ipcc=2"]),
    Case("config name that does not exist", lambda t: ["validate", "digits/mtt_ipc99"]),
    Case("override without '='", lambda t: ["validate", "digits/mtt_ipc1", "ipc"]),
    Case("override of the wrong type", lambda t: ["validate", "digits/mtt_ipc1", "ipc=abc"]),
    Case("YAML syntax error", lambda t: ["validate", str(_file(t, "c.yaml", "ipc: [1,\n"))]),
    Case("YAML that is not a mapping", lambda t: ["validate", str(_file(t, "c.yaml", "- 1\n"))]),
    Case("unknown method preset", lambda t: ["validate", "digits/mtt_ipc1", "method=mttt"]),
    Case("unknown dataset", lambda t: ["validate", "digits/mtt_ipc1", "dataset=digitz"]),
    Case("unknown model", lambda t: ["validate", "digits/mtt_ipc1", "model=convnett"]),
    Case("bad choice (pix_init)", lambda t: ["validate", "digits/mtt_ipc1",
                                             "distill.pix_init=magic"]),
    Case("ipc 0", lambda t: ["validate", "digits/mtt_ipc1", "ipc=0"]),
    Case("IPC larger than the smallest class", lambda t: ["validate", "digits/mtt_ipc1",
                                                          "ipc=500"]),
    Case("IPC larger than train_per_class", lambda t: ["validate", "digits/mtt_ipc1", "ipc=5",
                                                       "train_per_class=3"]),
    Case("matching window beyond the expert length", lambda t: [
        "validate", "digits/mtt_ipc1", "experts.epochs=10", "distill.max_start_epoch=10"]),
    Case("min_start_epoch >= max_start_epoch", lambda t: [
        "validate", "digits/mtt_ipc1", "distill.min_start_epoch=5", "distill.max_start_epoch=5"]),
    Case("negative lr_img", lambda t: ["validate", "digits/mtt_ipc1", "distill.lr_img=-100"]),
    Case("negative lr_lr", lambda t: ["validate", "digits/mtt_ipc1", "distill.lr_lr=-1e-5"]),
    Case("negative lr_y (soft labels)", lambda t: [
        "validate", "digits/mtt_ipc1", "distill.label_mode=soft", "distill.lr_y=-2"]),
    Case("lr_teacher 0", lambda t: ["validate", "digits/mtt_ipc1", "distill.lr_teacher=0"]),
    Case("negative expert lr", lambda t: ["validate", "digits/mtt_ipc1", "experts.lr=-0.01"]),
    Case("eval_batch 0", lambda t: ["validate", "digits/mtt_ipc1", "distill.eval_batch=0"]),
    Case("negative eval_epochs", lambda t: ["validate", "digits/mtt_ipc1",
                                            "distill.eval_epochs=-1"]),
    Case("negative iterations", lambda t: ["validate", "digits/mtt_ipc1",
                                           "distill.iterations=-1"]),
    Case("evaluation.runs 0", lambda t: ["validate", "digits/mtt_ipc1", "evaluation.runs=0"]),
    Case("device=cuda without CUDA", lambda t: ["validate", "digits/mtt_ipc1", "device=cuda"]),
    Case("device that does not exist", lambda t: ["validate", "digits/mtt_ipc1", "device=tpu"]),
    Case("challenge protocol with ZCA", lambda t: [
        "validate", "digits/mdatm_ipc1", "zca=true"]),
    Case("INFER: negative teacher lr", lambda t: ["validate", "digits/infer_ipc10",
                                                  "teachers.lr=-0.1"]),
    Case("INFER: student batch 0", lambda t: ["validate", "digits/infer_ipc10",
                                              "student.batch_size=0"]),
    # run folders
    Case("run --out is a file", lambda t: _run(t)[:-3] + ["--out", str(_file(t, "f", "x")),
                                                          "--quiet"]),
    Case("run --out where no folder can be made", lambda t: _run(t)[:-3] + [
        "--out", "/proc/datadistill-out", "--quiet"]),
    Case("second run into a busy folder", _busy, child=True),
    Case("stale lock of a dead process", _stale_lock, recoverable=True),
    Case("rerun with another config", _changed_rerun),
    Case("expert store made with another config", _other_experts),
    Case("damaged checkpoint", _damaged_checkpoint),
    Case("torn last line of metrics.jsonl", _torn_metrics, recoverable=True),
    Case("damaged best/ of a finished run (repair)", _damaged_best, recoverable=True),
    # eval / baseline
    Case("eval of a path that does not exist", lambda t: ["eval", str(t / "nope"), *QUICK]),
    Case("eval of an empty folder", lambda t: ["eval", str((t / "e").mkdir() or t / "e"),
                                               *QUICK]),
    Case("eval of a corrupt tensors.pt", lambda t: [
        "eval", str(_corrupt(_digits_set(t), "tensors.pt")), *QUICK]),
    Case("eval of a set with NaN pixels", lambda t: ["eval", str(_digits_set(t, float("nan"))),
                                                     *QUICK]),
    Case("eval of a set with Inf pixels", lambda t: ["eval", str(_digits_set(t, float("inf"))),
                                                     *QUICK]),
    Case("eval --epochs -1", lambda t: ["eval", str(_digits_set(t)), "--epochs", "-1",
                                        "--quiet"]),
    Case("eval --runs 0", lambda t: ["eval", str(_digits_set(t)), "--runs", "0", "--quiet"]),
    Case("eval --lr -1", lambda t: ["eval", str(_digits_set(t)), "--lr", "-1", *QUICK]),
    Case("eval --device cuda without CUDA", lambda t: [
        "eval", str(_digits_set(t)), "--device", "cuda", "--epochs", "1", "--runs", "1"]),
    Case("eval --out is a folder", lambda t: ["eval", str(_digits_set(t)), *QUICK, "--out",
                                              str(t)]),
    Case("eval --out under a file", lambda t: ["eval", str(_digits_set(t)), *QUICK, "--out",
                                               str(_file(t, "f", "x") / "r.json")]),
    Case("eval --models unknown", lambda t: ["eval", str(_digits_set(t)), *QUICK, "--models",
                                             "convnet", "resnet99"]),
    Case("legacy triple without --dataset", lambda t: ["eval", str(_legacy(t)), *QUICK]),
    Case("legacy triple of the wrong shape", lambda t: [
        "eval", str(_legacy(t, (10, 3, 32, 32))), "--dataset", "digits", *QUICK]),
    Case("baseline IPC larger than a class", lambda t: [
        "baseline", "random", "--ipc", "1000", *QUICK, "--out", str(t / "b.json")]),
    Case("baseline of an unknown dataset", lambda t: [
        "baseline", "random", "--dataset", "cifar11", *QUICK, "--out", str(t / "b.json")]),
    Case("baseline --runs 0", lambda t: ["baseline", "random", "--epochs", "1", "--runs", "0",
                                         "--out", str(t / "b.json")]),
    # data files
    Case("dataset files missing", lambda t: [
        "baseline", "random", "--dataset", "cifar10", "--data-root", str(t), *QUICK,
        "--out", str(t / "b.json")]),
    Case("CIFAR batch calling os.system", lambda t: _cifar_argv(
        t, pickle.dumps({"data": _Evil(), "labels": []}))),
    Case("CIFAR batch with an object array", lambda t: _cifar_argv(t, OBJECT_ARRAY), child=True),
    Case("CIFAR batch with float labels", lambda t: _cifar_argv(t, pickle.dumps(
        {"data": np.zeros((10, 3072), np.uint8), "labels": [0.5] * 10}))),
    Case("CIFAR batch truncated", lambda t: _cifar_argv(t, pickle.dumps(
        {"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))})[:100])),
    Case("gzip bomb (MNIST file; limit lowered to 64 MiB for the demo)", _gzip_bomb),
    Case("official buffers that are not tensors", lambda t: [
        "import-buffers", str(_file(t, "replay_buffer_0.pt", "not a tensor file")), "--out",
        str(t / "x"), "--dataset", "digits"]),
    Case("configs cp over an existing file", lambda t: [
        "configs", "cp", "digits/mtt_ipc1", str(_file(t, "mine.yaml", "x"))]),
    # the re-run with 221 inputs: what still got a traceback, a crash or a silent wrong answer
    Case("CIFAR batches.meta with a forged field offset (segfault)", _forged_meta, child=True),
    *[Case(f"validate/run refuse {o}", lambda t, o=o: ["validate", "digits/mtt_ipc1", o])
      for o in ("model_kwargs={widht: 8}", "model_kwargs={width: -2}", "seed=-1",
                "distill.max_experts=0", "experts.momentum=-0.5", "experts.weight_decay=-1",
                "experts.lr=nan")],
    Case("--threads 100000", lambda t: ["--threads", "100000", "validate", "digits/mtt_ipc1"],
         child=True),
    Case("experts --out is a file", lambda t: _experts(t, _file(t, "f", "x"))),
    Case("experts --out under /proc", lambda t: _experts(t, Path("/proc/datadistill-out"))),
    Case("experts --out inside a symlink loop", lambda t: _experts(t, _loop(t))),
    Case("experts --out on a read-only file system", lambda t: _experts(t, _readonly(t) / "e")),
    Case("eval --out inside a symlink loop", lambda t: [
        "eval", str(_digits_set(t)), *QUICK, "--out", str(_loop(t))]),
    Case("eval --out naming a device node", lambda t: [
        "eval", str(_digits_set(t)), *QUICK, "--out", str(_special(t, "device"))]),
    Case("eval --out naming a FIFO", lambda t: [
        "eval", str(_digits_set(t)), *QUICK, "--out", str(_special(t, "fifo"))]),
    Case("eval with 0 bytes free", lambda t: [
        "eval", str(_digits_set(t)), *QUICK, "--out", str(_full_disk(t) / "e.json")], child=True),
    Case("baseline with 0 bytes free", lambda t: [
        "baseline", "random", *QUICK, "--out", str(_full_disk(t) / "b.json")], child=True),
    Case("run with 0 bytes free", lambda t: _run(t)[:-3] + [
        "--out", str(_full_disk(t) / "r"), "--quiet"], child=True),
    Case("report on a read-only folder", _readonly_run),
    Case("rerun of a finished run whose best/ was swapped for another set", _swapped_best),
    Case("score --runs 0", lambda t: _score(t, "--runs", "0")),
    Case("score --out /proc/x.json (checked before scoring)", lambda t: _score(
        t, "--runs", "1", "--out", "/proc/x.json")),
    Case("score --teacher that is garbage", lambda t: _score(
        t, "--preset", "soft_kl_mixup", "--runs", "1", "--teacher",
        str(_file(t, "teacher.pt", "garbage")))),
    Case("challenge with a garbage cifar100.pt", lambda t: [
        "challenge", str(_garbage_submission(t)), "--quiet", "--out", str(t / "ch")]),
    Case("a one-class ImageFolder", lambda t: _folder_argv(t, 1)),
    Case("a 20000 x 20000 PNG in an ImageFolder", lambda t: _folder_argv(t, 3, bomb=True)),
    Case("YAML nested 100,000 deep", lambda t: [
        "validate", str(_file(t, "deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n"))]),
    Case("binary file as the config", lambda t: ["validate", str(_bytes(t, "c.yaml", bytes(
        range(256)) * 4))]),
    Case("eval of a set with finite huge pixels (3e38)", lambda t: [
        "eval", str(_digits_set(t, 3e38)), *QUICK]),
    Case("eval of a set whose meta.json says space zca without ZCA state", lambda t: _eval_edited(
        t, {"space": "zca"})),
    Case('meta.json with "ipc": "abc"', lambda t: _eval_edited(t, {"ipc": "abc"})),
    Case('meta.json with "ipc": null', lambda t: _eval_edited(t, {"ipc": None})),
    Case('meta.json with "info": [...]', lambda t: _eval_edited(t, {"info": [1, 2]})),
    Case("a set whose lr has 2 elements", lambda t: _eval_edited(
        t, tensors={"lr": torch.tensor([0.01, 0.02])})),
    Case("a set whose images are float16 (read as float32)", lambda t: _eval_edited(
        t, tensors={"images": lambda d: d["images"].half()}), recoverable=True),
    *[Case(f"run, not only validate, refuses {o} before any work", lambda t, o=o: _run(t, o))
      for o in ("seed=-1", "distill.max_experts=0", "experts.lr=nan")],
]


def _image_folder(tmp: Path, classes: int, bomb: bool = False) -> Path:
    """An ImageFolder of 8x8 PNGs, 3 per class; with ``bomb`` one file claims 20000 x 20000
    pixels in its header (a few bytes on disk, 1.2 GB decoded)."""
    import struct
    import zlib

    from PIL import Image

    root = tmp / "folder"
    for c in range(classes):
        for split in ("train", "test"):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(
                    root / split / f"c{c}" / f"{i}.png")
    if bomb:
        path = root / "train" / "c0" / "0.png"
        data = bytearray(path.read_bytes())  # IHDR: 8-byte signature, length, type, w, h, ...
        data[16:24] = struct.pack(">II", 20000, 20000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        path.write_bytes(bytes(data))
    return root


def _folder_argv(tmp: Path, classes: int, bomb: bool = False) -> list[str]:
    return ["baseline", "random", "--dataset", "imagefolder", "--data-root",
            str(_image_folder(tmp, classes, bomb)), *QUICK, "--out", str(tmp / "b.json")]


def _garbage_submission(tmp: Path) -> Path:
    folder = tmp / "submit"
    folder.mkdir()
    for name in ("cifar100.pt", "tinyimagenet.pt"):
        (folder / name).write_bytes(b"not a tensor file\n")
    return folder


def _corrupt(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(b"\x00garbage")
    return folder


# ----------------------------------------------------------------------------- running
def _in_process(argv: list[str]) -> tuple[int, str]:
    from datadistill.cli import main

    err, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # warnings, as the CLI shows them on stderr
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the point is to see what escapes
        return 1, f"Traceback: {type(exc).__name__}: {exc}"
    finally:
        logging.getLogger().removeHandler(handler)
    said = err.getvalue()
    return code, said if said.strip() or code else out.getvalue()  # what a success printed


def _child(argv: list[str], busy: Path | None) -> tuple[int, str]:
    src = os.environ.get("DATADISTILL_SRC", str(Path(__file__).resolve().parents[1] / "src"))
    env = {**os.environ, "PYTHONPATH": src}
    holder = None
    if busy is not None:  # another process owns the folder
        code = ("import sys, time\nfrom datadistill.runtime.lock import lock_folder\n"
                "with lock_folder(sys.argv[1]):\n    print('held', flush=True)\n"
                "    time.sleep(600)\n")
        holder = subprocess.Popen([sys.executable, "-c", code, str(busy)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
    try:
        done = subprocess.run([sys.executable, "-m", "datadistill", *argv], env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    return done.returncode, done.stderr


def run_case(case: Case) -> Outcome:
    from datadistill.data import safe_archive

    limit = getattr(safe_archive, "MAX_IN_MEMORY_BYTES", None)  # older versions: none
    try:
        return _run_case(case)
    finally:
        safe_archive.MAX_IN_MEMORY_BYTES = limit


def _run_case(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            argv = case.setup(Path(tmp))
            busy = Path(tmp) / "r" if case.setup is _busy else None
            code, err = _child(argv, busy) if case.child else _in_process(argv)
        finally:
            while _MOUNTS:  # before the folder is removed
                subprocess.run(["umount", "-l", str(_MOUNTS.pop())], capture_output=True)
        err = err.replace(str(Path(tmp).resolve()), "$TMP").replace(tmp, "$TMP")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    warned = [ln for ln in lines if ln.startswith("WARNING")]
    message = (errors or warned or lines or ["(no message)"])[0]
    traceback = "Traceback" in err or code < 0
    clean = not traceback and ((code == 2 and len(errors) == 1) or
                               (case.recoverable and code == 0))
    return Outcome(code, message, clean)


def _cell(text: str, width: int = 400) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[:width] + " ..."


def table(rows: list[tuple[Case, Outcome]], before: dict[str, dict]) -> str:
    head = "| # | bad input | exit | message now | clean |"
    rule = "|---|---|---|---|---|"
    if before:
        head, rule = head + " before: exit | before: message |", rule + "---|---|"
    lines = [head, rule]
    for i, (case, out) in enumerate(rows, 1):
        line = (f"| {i} | {case.kind} | {out.code} | {_cell(out.message)} | "
                f"{'yes' if out.clean else 'NO'} |")
        if before:
            old = before.get(case.kind, {"code": "-", "message": "(not run)"})
            line += f" {old['code']} | {_cell(old['message'], 160)} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


HEADER = """# Bad inputs and the messages they get

Every row was produced by running the input through the command line
(`PYTHONPATH=src python benchmarks/bad_inputs.py --before
benchmarks/results/bad_inputs_before.json --out docs/bad-inputs.md`; temporary folders shown
as `$TMP`). *clean* means: refused before any work with exit status 2 and a
one-line `error:` message naming the problem and the fix, or, for an input the program can
recover from (a dead owner's lock, a torn log line, a damaged `best/` given to `repair`),
handled with a warning and exit 0. Exit 143/130 and the resume after `kill -9` are covered
by `tests/test_housekeeping.py` and the drill in `tests/test_drill.py`.

"""


BEFORE = """The *before* columns are the same inputs on the code before these checks (commit
1e66ff4), from `benchmarks/results/bad_inputs_before.json`, written by
`PYTHONPATH=<old>/src DATADISTILL_SRC=<old>/src python benchmarks/bad_inputs.py --json ...`
and shown with `--before`. Exit 0 with a result there is a silent acceptance; exit 1 a
traceback.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="markdown file (default: print)")
    parser.add_argument("--only", default=None, help="run the cases whose name has this text")
    parser.add_argument("--json", default=None, help="also write the outcomes as JSON")
    parser.add_argument("--new", action="store_true",
                        help="only the cases of the second drill (from the forged batches.meta)")
    parser.add_argument("--before", default=None,
                        help="JSON outcomes of an older version, shown as extra columns")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    first_new = next(i for i, c in enumerate(CASES) if c.setup is _forged_meta)
    for case in CASES[first_new:] if args.new else CASES:
        if args.only and args.only not in case.kind:
            continue
        t0 = time.time()
        rows.append((case, run_case(case)))
        print(f"{time.time() - t0:5.1f} s  {rows[-1][1].code:>3}  {case.kind}", file=sys.stderr)
    before = json.loads(Path(args.before).read_text()) if args.before else {}
    text = HEADER + (BEFORE if before else "") + table(rows, before) + (
        f"\n{sum(o.clean for _, o in rows)} of {len(rows)} inputs are handled cleanly"
        + (f" (before: {sum(b['clean'] for b in before.values())})" if before else "") + ".\n")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {c.kind: {"code": o.code, "message": o.message, "clean": o.clean} for c, o in rows},
            indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
