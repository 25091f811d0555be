"""Distilled-set files: save/load round trips, legacy triple, challenge export, PNG grid and
the refusal of corrupt or pickle-bearing files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.artifacts.challenge_export import export_challenge
from datadistill.artifacts.distilled import (
    FORMAT_VERSION,
    DistilledSet,
    load_distilled,
    save_distilled,
)
from datadistill.artifacts.grids import save_grid
from datadistill.artifacts.legacy import export_legacy, import_legacy, load_any
from datadistill.data import DatasetInfo, denormalize, normalize
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError, CompatibilityError

K, IPC, C, H = 4, 3, 1, 8
INFO = DatasetInfo(
    "toy", K, C, (H, H), (0.5,), (0.25,), ("a", "b", "c", "d"), "color_crop_cutout_scale_rotate"
)
RGB = DatasetInfo("toy_rgb", 2, 3, (4, 4), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), ("x", "y"))


def _set(
    *,
    soft: bool = False,
    zca: bool = False,
    lr: float | None = None,
    config: dict | None = None,
    space: str = "normalized",
) -> DistilledSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(K * IPC, C, H, H, generator=g)
    labels = torch.arange(K).repeat_interleave(IPC)
    if soft:
        labels = torch.randn(K * IPC, K, generator=g)
    state = None
    if zca:
        state = ZCA.fit(torch.rand(40, C, H, H, generator=g), eps=0.1)
        space = "zca"
    return DistilledSet(
        images,
        labels,
        lr,
        INFO,
        space,
        IPC,
        "mtt",
        zca=state,
        config=config,
        extra={"iteration": 5000, "acc": 0.5},
    )


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "soft,zca,lr",
    [(False, False, None), (True, True, 0.0123), (False, True, 0.01), (True, False, None)],
)
def test_round_trip(tmp_path, soft, zca, lr):
    ds = _set(soft=soft, zca=zca, lr=lr, config={"method": "mtt", "size": (32, 32)})
    out = save_distilled(ds, tmp_path / "set")
    back = load_distilled(out)
    assert torch.equal(back.images, ds.images)
    assert torch.equal(back.labels, ds.labels) and back.labels.dtype == ds.labels.dtype
    assert back.lr == lr
    assert back.info == INFO and back.space == ds.space and back.ipc == IPC
    assert back.method == "mtt" and back.extra == {"iteration": 5000, "acc": 0.5}
    assert back.config == {"method": "mtt", "size": [32, 32]}
    if zca:
        assert torch.equal(back.zca.transform, ds.zca.transform)
        assert torch.equal(back.zca.inverse_transform, ds.zca.inverse_transform)
        assert torch.equal(back.zca.mean, ds.zca.mean) and back.zca.eps == ds.zca.eps
    else:
        assert back.zca is None


def test_meta_json_describes_the_set(tmp_path):
    save_distilled(_set(soft=True, lr=0.02), tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["produced_by"].startswith("datadistill ")
    assert meta["dataset"] == "toy" and meta["info"]["class_names"] == ["a", "b", "c", "d"]
    assert meta["labels"] == "soft" and meta["lr"] == 0.02 and meta["ipc"] == IPC
    assert meta["shapes"] == {"images": [K * IPC, C, H, H], "labels": [K * IPC, K]}
    assert not (tmp_path / "config.yaml").exists()  # no config given
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "tensors.pt"]


def test_save_refuses_inconsistent_set(tmp_path):
    bad = _set()
    bad.ipc = 2
    with pytest.raises(ArtifactError, match="ipc 2"):
        save_distilled(bad, tmp_path)


# ----------------------------------------------------------------------------- bad files


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="meta.json"):
        load_distilled(tmp_path)
    save_distilled(_set(), tmp_path)
    (tmp_path / "tensors.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(ArtifactError, match="tensors.pt.*corrupt"):
        load_distilled(tmp_path)
    (tmp_path / "tensors.pt").unlink()
    with pytest.raises(ArtifactError, match="tensors.pt: file not found"):
        load_distilled(tmp_path)
    (tmp_path / "meta.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="meta.json: not valid JSON"):
        load_distilled(tmp_path)


def _edit_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_version_and_shape_checks(tmp_path):
    save_distilled(_set(), tmp_path)
    _edit_meta(tmp_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="upgrade datadistill"):
        load_distilled(tmp_path)
    _edit_meta(tmp_path, format_version=FORMAT_VERSION, ipc=5)
    with pytest.raises(ArtifactError, match=r"tensors.pt: ipc 5 x 4 classes != 12"):
        load_distilled(tmp_path)
    info = json.loads((tmp_path / "meta.json").read_text())["info"]
    _edit_meta(tmp_path, ipc=IPC, info={**info, "channels": 3, "mean": [0] * 3, "std": [1] * 3})
    with pytest.raises(ArtifactError, match=r"images have shape \(12, 1, 8, 8\)"):
        load_distilled(tmp_path)


class _Evil:
    """Unpickling this runs os.mkdir(marker): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_payload_is_refused(tmp_path):
    ds = _set()
    save_distilled(ds, tmp_path)
    marker = tmp_path / "pwned"
    torch.save(
        {"images": ds.images, "labels": ds.labels, "x": _Evil(marker)}, tmp_path / "tensors.pt"
    )
    with pytest.raises(ArtifactError, match="weights_only"):
        load_distilled(tmp_path)
    assert not marker.exists()
    torch.save(_Evil(marker), tmp_path / "images_best.pt")
    with pytest.raises(ArtifactError, match="images_best.pt: refused"):
        import_legacy(tmp_path, INFO)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(tmp_path / "images_best.pt", weights_only=False)
    assert marker.is_dir()


# ----------------------------------------------------------------------------- legacy


def test_legacy_round_trip(tmp_path):
    ds = _set(soft=True, lr=0.03)
    export_legacy(ds, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "images_best.pt",
        "labels_best.pt",
        "lr_best.pt",
    }
    back = import_legacy(tmp_path / "images_best.pt", INFO)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.lr == pytest.approx(0.03) and back.ipc == IPC and back.space == "normalized"


def test_legacy_official_files(tmp_path):
    # As MTT writes them: hard labels, images in ZCA space, lr as a 0-d tensor with grad.
    images = torch.randn(K * IPC, C, H, H)
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(torch.arange(K).repeat_interleave(IPC), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.01, requires_grad=True), tmp_path / "lr_best.pt")
    zca = ZCA.fit(torch.rand(30, C, H, H))
    ds = import_legacy(tmp_path, INFO, zca=zca)
    assert ds.space == "zca" and ds.zca is zca and ds.ipc == IPC and ds.method == "legacy"
    assert ds.lr == pytest.approx(0.01) and ds.labels.dtype == torch.int64
    # lr is optional; load_any needs the dataset for a legacy directory.
    (tmp_path / "lr_best.pt").unlink()
    assert load_any(tmp_path, dataset=INFO).lr is None
    with pytest.raises(ArtifactError, match="pass dataset="):
        load_any(tmp_path)
    with pytest.raises(ArtifactError, match="neither meta.json nor images_best.pt"):
        load_any(tmp_path / "empty")


def test_legacy_import_by_dataset_name(tmp_path):
    torch.save(torch.randn(20, 1, 8, 8), tmp_path / "images_best.pt")
    torch.save(torch.arange(10).repeat_interleave(2), tmp_path / "labels_best.pt")
    ds = import_legacy(tmp_path, "digits")
    assert ds.info.name == "digits" and ds.ipc == 2 and ds.info.num_classes == 10


def test_legacy_checks(tmp_path):
    torch.save(torch.randn(10, C, H, H), tmp_path / "images_best.pt")
    torch.save(torch.zeros(10, dtype=torch.int64), tmp_path / "labels_best.pt")
    with pytest.raises(ArtifactError, match="not a multiple of 4 classes; pass ipc="):
        import_legacy(tmp_path, INFO)
    torch.save(torch.randn(8, 3, H, H), tmp_path / "images_best.pt")
    with pytest.raises(ArtifactError, match="images have shape"):
        import_legacy(tmp_path, INFO)


def test_load_any_reads_both_formats(tmp_path):
    ds = _set()
    save_distilled(ds, tmp_path / "new")
    export_legacy(ds, tmp_path / "old")
    assert torch.equal(load_any(tmp_path / "new").images, ds.images)
    assert torch.equal(load_any(tmp_path / "old", dataset=INFO).labels, ds.labels)


# ----------------------------------------------------------------------------- challenge


def test_challenge_export_is_class_major_and_normalised(tmp_path):
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(K * IPC, C, H, H, generator=g)
    labels = torch.arange(K).repeat_interleave(IPC)[torch.randperm(K * IPC, generator=g)]
    ds = DistilledSet(raw, labels, None, INFO, "raw", IPC, "mtt")
    out = export_challenge(ds, tmp_path / "sub" / "toy.pt")
    x = torch.load(out, weights_only=True)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (K * IPC, C, H, H)
    order = torch.sort(labels, stable=True).indices
    assert torch.allclose(x, normalize(raw[order], INFO))
    # An already-normalised set is written as is, reordered.
    ds.images, ds.space = normalize(raw, INFO), "normalized"
    assert torch.allclose(torch.load(export_challenge(ds, tmp_path / "n.pt")), x, atol=1e-6)


def test_challenge_export_refusals(tmp_path):
    with pytest.raises(CompatibilityError, match="ZCA space"):
        export_challenge(_set(zca=True), tmp_path / "a.pt")
    soft = _set(soft=True)
    with pytest.raises(CompatibilityError, match="drop_soft_labels=True"):
        export_challenge(soft, tmp_path / "a.pt")
    soft.labels = torch.nn.functional.one_hot(torch.arange(K).repeat_interleave(IPC)) * 5.0
    assert export_challenge(soft, tmp_path / "a.pt", drop_soft_labels=True).is_file()
    unbalanced = _set()
    unbalanced.labels = unbalanced.labels.clone()
    unbalanced.labels[0] = 1
    with pytest.raises(CompatibilityError, match="class 0 has 2 images"):
        export_challenge(unbalanced, tmp_path / "b.pt")


# ----------------------------------------------------------------------------- PNG grid


def test_grid_one_row_per_class(tmp_path):
    # Raw pixels: class c is a flat image of intensity (c + 1) / 5, shuffled order.
    labels = torch.arange(K).repeat_interleave(IPC).flip(0)
    raw = ((labels.float() + 1) / 5).view(-1, 1, 1, 1).expand(-1, C, H, H).clone()
    ds = DistilledSet(normalize(raw, INFO), labels, None, INFO, "normalized", IPC, "mtt")
    path = save_grid(ds, tmp_path / "grid.png")
    img = np.asarray(Image.open(path))
    pad = 2
    assert img.shape == (K * H + (K + 1) * pad, IPC * H + (IPC + 1) * pad)  # (rows, cols)
    for c in range(K):
        top = pad + c * (H + pad)
        row = img[top : top + H, pad:-pad]
        tiles = np.concatenate([row[:, j * (H + pad) : j * (H + pad) + H] for j in range(IPC)])
        assert np.all(np.abs(tiles.astype(int) - round(255 * (c + 1) / 5)) <= 1)
    assert img[0].max() == 0  # padding is black


def test_grid_from_tensor_and_zca(tmp_path):
    x = torch.rand(5, 3, 4, 4)
    path = save_grid(normalize(x, RGB), tmp_path / "rgb.png", nrow=5, info=RGB)
    img = np.asarray(Image.open(path))
    assert img.shape == (4 + 2 * 2, 5 * 4 + 6 * 2, 3)
    assert np.abs(img[2:6, 2:6].astype(float) / 255 - x[0].permute(1, 2, 0).numpy()).max() < 0.01
    # ZCA space is inverted for viewing; values beyond [0,1] are clipped.
    ds = _set(zca=True)
    ds.images = ds.zca.apply(torch.rand(K * IPC, C, H, H) * 1.5)
    assert np.asarray(Image.open(save_grid(ds, tmp_path / "z.png"))).shape == (42, 32)


def test_denormalize_is_used_for_viewing():
    # Guards the assumption save_grid relies on: denormalize inverts normalize.
    x = torch.rand(2, C, H, H, dtype=torch.float64)  # maths: float64, not the CPU's kernels
    assert torch.allclose(denormalize(normalize(x, INFO), INFO), x, rtol=0, atol=1e-12)


def test_class_grid_converts_only_the_drawn_rows(monkeypatch):
    # A grid of the first classes of a large set must not copy the whole set to pixels
    # (ImageNet-1K: 491 MB per copy at IPC 10): only the drawn rows are converted, and
    # they are the same pixels the whole-set conversion gives.
    from datadistill.artifacts import grids

    labels = torch.arange(K).repeat_interleave(IPC).flip(0)
    raw = torch.rand(len(labels), C, H, H, generator=torch.Generator().manual_seed(0))
    ds = DistilledSet(normalize(raw, INFO), labels, None, INFO, "normalized", IPC, "mtt")
    seen = []
    real = grids.to_pixels
    monkeypatch.setattr(grids, "to_pixels", lambda x, *a: seen.append(len(x)) or real(x, *a))
    groups = grids._per_class(ds, 2, None)
    assert seen == [2 * IPC]
    whole = real(ds.images, "normalized", INFO, None)
    for c, group in enumerate(groups):
        rows = torch.nonzero(labels == c).flatten()
        assert torch.equal(torch.stack(group), whole[rows])
