"""Expert training, the expert store, resume, compatibility checks and legacy import."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from datadistill.data import dataset_info
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError
from datadistill.experts import (
    ExpertConfig,
    ExpertStore,
    expert_path,
    import_replay_buffers,
    train_experts,
)
from datadistill.models import flatten_params
from datadistill.training import build_model


def _cfg(**kw):
    base = dict(dataset="digits", num_experts=2, epochs=2, lr=0.1, batch_size=64,
                model_kwargs={"width": 8})
    return ExpertConfig(**(base | kw))


def _same_store(a: ExpertStore, b: ExpertStore) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        assert torch.equal(a.load(i), b.load(i))
        assert torch.equal(a.test_acc(i), b.test_acc(i))


def test_train_experts_layout_and_meta(digits, tmp_path):
    rng = torch.random.get_rng_state()
    store = train_experts(_cfg(), digits, tmp_path, progress=False)
    assert torch.equal(rng, torch.random.get_rng_state())  # the global RNG is untouched
    assert len(store) == 2 and store.epochs == 2
    net = build_model(_cfg(), digits.info)
    params = store.load(1)
    assert params.shape == (3, sum(p.numel() for p in net.parameters()))
    assert store.test_acc(0).shape == (3,)
    assert not torch.equal(params[0], params[-1])  # it trained
    assert not torch.equal(store.load(0)[0], params[0])  # different inits
    meta = json.loads((tmp_path / "meta.json").read_text())
    for key in ("format_version", "dataset", "model", "model_kwargs", "param_names",
                "param_shapes", "optimizer", "lr", "epochs", "batch_size", "seed", "zca",
                "dsa_strategy", "num_classes", "dtype", "produced_by"):
        assert key in meta
    assert meta["param_names"][0] == "conv1.weight" and meta["zca"] is False
    # epoch 0 is the init: rebuilding expert 0's model from its seed gives it back
    theta0, _ = store.epoch_pair(0, 0, 1)
    from datadistill.experts import expert_seeds
    assert torch.equal(theta0, flatten_params(build_model(_cfg(), digits.info,
                                                          expert_seeds(0, 0)[0])))


def test_resume_is_bitwise_equal(digits, tmp_path):
    full = train_experts(_cfg(num_experts=3), digits, tmp_path / "a", progress=False)
    # interrupted after one expert (a stale temp file of the second one left behind)
    train_experts(_cfg(num_experts=1), digits, tmp_path / "b", progress=False)
    (tmp_path / "b" / ".expert_0001.pt.tmp123").write_bytes(b"partial")
    resumed = train_experts(_cfg(num_experts=3), digits, tmp_path / "b", progress=False)
    _same_store(full, resumed)
    # a missing file in the middle is re-created identically
    expected = full.load(1)
    expert_path(tmp_path / "a", 1).unlink()
    again = train_experts(_cfg(num_experts=3), digits, tmp_path / "a", progress=False)
    assert torch.equal(again.load(1), expected)


def test_resume_with_another_config_fails(digits, tmp_path):
    train_experts(_cfg(num_experts=1), digits, tmp_path, progress=False)
    with pytest.raises(CompatibilityError, match="lr"):
        train_experts(_cfg(num_experts=2, lr=0.2), digits, tmp_path, progress=False)


def test_config_validation(digits, tmp_path):
    with pytest.raises(ConfigError, match="optimizer must be one of .*got 'adam'"):
        ExpertConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="dtype must be one of .*got 'bfloat16'"):
        ExpertConfig(dtype="bfloat16")
    with pytest.raises(ConfigError, match="zca"):
        train_experts(_cfg(zca=True), digits, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="dataset"):
        train_experts(_cfg(dataset="mnist"), digits, tmp_path, progress=False)


def test_check_compatible(digits, tmp_path):
    store = train_experts(_cfg(num_experts=1, epochs=1), digits, tmp_path, progress=False)
    info = digits.info
    store.check_compatible(build_model(_cfg(), info), info, zca=False)
    with pytest.raises(CompatibilityError, match="parameters"):
        store.check_compatible(build_model(_cfg(model_kwargs={"width": 16}), info), info)
    with pytest.raises(CompatibilityError, match="zca"):
        store.check_compatible(build_model(_cfg(), info), info, zca=True)
    other = dataclasses.replace(info, name="mnist")
    with pytest.raises(CompatibilityError, match="dataset"):
        store.check_compatible(build_model(_cfg(), info), other)
    fewer = dataclasses.replace(info, num_classes=5, class_names=info.class_names[:5])
    with pytest.raises(CompatibilityError, match="classes|parameters"):
        store.check_compatible(build_model(_cfg(), info), fewer)
    with pytest.raises(CompatibilityError, match="epochs"):
        store.epoch_pair(0, 1, 2)


def test_float16_storage_and_corrupt_file(digits, tmp_path):
    store = train_experts(_cfg(num_experts=1, epochs=1, dtype="float16"), digits, tmp_path,
                          progress=False)
    raw = torch.load(expert_path(tmp_path, 0), weights_only=True)
    assert raw["params"].dtype == torch.float16
    assert store.load(0).dtype == torch.float32
    expert_path(tmp_path, 0).write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="delete it"):
        ExpertStore(tmp_path).load(0)
    with pytest.raises(ArtifactError, match="nowhere/meta.json not found.*datadistill experts"):
        ExpertStore(tmp_path / "nowhere")


def test_gsam_and_epoch_subset_slots(digits, tmp_path):
    seen = []

    def subset(epoch):
        seen.append(epoch)
        return torch.arange(0, 100)

    store = train_experts(_cfg(num_experts=1, optimizer="gsam"), digits, tmp_path,
                          progress=False, epoch_subset=subset)
    assert seen == [0, 1]
    assert store.meta["optimizer"] == "gsam"
    assert torch.isfinite(store.load(0)).all()


def test_import_replay_buffers(tmp_path):
    info = dataset_info("digits")
    cfg = _cfg()
    experts = []
    for e in range(3):  # official layout: [expert][epoch][tensor in parameters() order]
        net = build_model(cfg, info, init_seed=e)
        experts.append([[p.detach().clone() + k for p in net.parameters()] for k in range(4)])
    torch.save(experts[:2], tmp_path / "replay_buffer_0.pt")
    torch.save(experts[2:], tmp_path / "replay_buffer_1.pt")
    files = [tmp_path / "replay_buffer_0.pt", tmp_path / "replay_buffer_1.pt"]
    store = import_replay_buffers(files, tmp_path / "store",
                                  ExpertConfig(dataset="digits", model_kwargs={"width": 8}))
    assert len(store) == 3 and store.epochs == 3
    expected = torch.stack([torch.cat([t.reshape(-1) for t in ep]) for ep in experts[2]])
    assert torch.equal(store.load(2), expected)
    assert torch.isnan(store.test_acc(0)).all()
    assert "import_replay_buffers" in store.meta["produced_by"]
    store.check_compatible(build_model(cfg, info), info, zca=False)
    with pytest.raises(CompatibilityError, match="shapes"):
        import_replay_buffers(files, tmp_path / "bad",
                              ExpertConfig(dataset="digits", model_kwargs={"width": 16}))


def test_a_finished_store_says_nothing_is_left_to_train(digits, tmp_path, capsys):
    train_experts(_cfg(num_experts=1), digits, tmp_path / "s", progress=False)
    train_experts(_cfg(num_experts=1), digits, tmp_path / "s", progress=True)
    err = capsys.readouterr().err
    assert "experts: 1/1 already done, nothing left (resumed)" in err and "0/0" not in err
