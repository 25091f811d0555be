"""`datadistill run imagenette/...` end to end on a generated ILSVRC-layout tree, and the
checks that keep a subset on its own classes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datadistill.cli import main
from datadistill.data.imagenet import SUBSETS, standard_classes

WNIDS = list(standard_classes().wnids)  # sorted order = class id


def _jpeg(path: Path, seed: int, side: int = 12) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def make_tree(root: Path, name: str = "imagenette", train: int = 2, val: int = 1) -> Path:
    """The standard train/val layout: 1000 train folders, images only in the subset's."""
    for c in range(1000):
        (root / "train" / WNIDS[c]).mkdir(parents=True, exist_ok=True)
    for c in SUBSETS[name]:
        for j in range(train):
            _jpeg(root / "train" / WNIDS[c] / f"{WNIDS[c]}_{j}.JPEG", 10 * c + j)
        for j in range(val):
            _jpeg(root / "val" / WNIDS[c] / f"val_{c}_{j}.JPEG", 10**5 + 10 * c + j)
    return root


TINY = ["model_kwargs.width=4", "experts.num_experts=1", "experts.epochs=2",
        "experts.batch_size=10", "distill.syn_steps=2", "distill.max_start_epoch=1",
        "distill.expert_epochs=1", "distill.iterations=2", "distill.eval_every=2",
        "distill.eval_runs=1", "distill.eval_epochs=1", "evaluation.runs=1",
        "evaluation.epochs=1"]


def test_subset_run_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    root = make_tree(tmp_path / "in1k")
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["run", "imagenette/mtt_ipc1", f"data_root={root}", *TINY, "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert len(report["distilled_convnet"]["accuracies"]) == 1
    assert len(report["random_subset"]["accuracies"]) == 1  # the step that used to crash
    assert report["random_subset"]["settings"]["ipc"] == 1
    # A rerun resumes every finished network from eval_runs.jsonl (the fingerprint of
    # cached images is stable) and reports the same numbers.
    assert main(["run", "imagenette/mtt_ipc1", f"data_root={root}", *TINY, "--out", str(out),
                 "--quiet"]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["random_subset"]["accuracies"] == report["random_subset"]["accuracies"]


def _experts(root: Path, tmp_path: Path) -> int:
    return main(["experts", "imagenette/mtt_ipc1", f"data_root={root}", *TINY,
                 "--out", str(tmp_path / "experts"), "--quiet"])


def test_an_empty_subset_class_folder_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                   capsys):
    root = make_tree(tmp_path / "in1k")
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    folder = root / "train" / WNIDS[482]
    for f in folder.iterdir():
        f.unlink()
    assert _experts(root, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and WNIDS[482] in err and str(folder) in err
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "experts").exists()  # --out is checked without being created


def test_empty_val_folder_is_found_before_the_train_split_is_decoded(tmp_path, monkeypatch,
                                                                     capsys):
    root = make_tree(tmp_path / "in1k")
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    for f in (root / "val" / WNIDS[0]).iterdir():
        f.unlink()
    assert _experts(root, tmp_path) == 2
    assert f"{WNIDS[0]}" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


NEXT_TO_218 = f"n{int(WNIDS[218][1:]) + 1:08d}"  # well-formed, sorts after the 218th wnid


@pytest.mark.parametrize("typo", ["n0210204", NEXT_TO_218])  # malformed; well-formed, moved
def test_a_misspelled_wnid_does_not_move_the_subset_onto_other_classes(tmp_path, monkeypatch,
                                                                        capsys, typo):
    """Class 218 has images too (as in the real ImageNet): picking classes by sorted position,
    the subset's class 1 (id 217) would silently have become class 218."""
    assert WNIDS[218] < NEXT_TO_218 < WNIDS[219]
    root = make_tree(tmp_path / "in1k")
    _jpeg(root / "train" / WNIDS[218] / "a.JPEG", 1)
    _jpeg(root / "val" / WNIDS[218] / "a.JPEG", 2)
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    (root / "train" / WNIDS[217]).rename(root / "train" / typo)  # still 1000 folders
    assert _experts(root, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("error:") == 1
    assert typo in err and "not among the 1000 ImageNet-1K wnids" in err
    assert not (tmp_path / "cache").exists()


def test_a_subset_folder_named_as_another_class_names_the_missing_one(tmp_path, monkeypatch,
                                                                       capsys):
    """Only the subset's ten folders; one carries another real wnid: the expected wnid is
    named with its class name and the folder where it was expected."""
    root = tmp_path / "in1k"
    for c in SUBSETS["imagenette"]:
        for split in ("train", "val"):
            _jpeg(root / split / WNIDS[c] / "a.JPEG", c)
    for split in ("train", "val"):
        (root / split / WNIDS[217]).rename(root / split / WNIDS[218])
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    assert _experts(root, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and WNIDS[217] in err and "English springer" in err
    assert str(root / "train") in err
    assert not (tmp_path / "cache").exists()


DECODE_FOREVER = """
import sys, time
from pathlib import Path
from datadistill.data import cache
import numpy as np

def slow(paths, resolution, rule):
    time.sleep(600)

cache._decode_chunk = slow  # forked workers inherit it
paths = sorted(Path(sys.argv[1]).rglob("*.JPEG"))
cache.build_cache(paths, np.zeros(len(paths), dtype=np.int64), sys.argv[2], resolution=8,
                  options=cache.BuildOptions(chunk_size=1, workers=2, progress=False))
"""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(c) for c in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_decoding_workers_end_when_their_parent_is_killed(tmp_path):
    root = make_tree(tmp_path / "in1k", train=1, val=0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", DECODE_FOREVER, str(root / "train"),
                             str(tmp_path / "cache")], env=env)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) >= 2, "the decoding workers did not start"
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs in the parent
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)]
    finally:  # never leave a process of this test behind, whatever failed
        for w in [w for w in workers if _alive(w)]:
            os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
