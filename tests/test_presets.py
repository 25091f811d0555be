"""Method presets and the shipped configs: registry, table, and the official values."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from datadistill.config import config_asdict, list_configs, resolve_config_path
from datadistill.data.imagenet import SUBSETS
from datadistill.errors import ConfigError
from datadistill.tm.config import distill_config, expert_config, load_pipeline_config
from datadistill.tm.presets import (
    MDATM_WINDOW_FRACTION,
    get_preset,
    list_presets,
    preset_overrides,
    presets_table,
)

METHODS = ["mtt", "ftd", "datm", "mdatm", "pad"]
PIPELINE_CONFIGS = [n for n in list_configs() if not n.split("/")[1].startswith("infer")]


def _flat(dcfg) -> SimpleNamespace:
    """The distill config's values under their flat keys, as files and saved runs spell them."""
    return SimpleNamespace(**config_asdict(dcfg))


def _load(name: str):
    cfg = load_pipeline_config(name)
    return cfg, expert_config(cfg), _flat(distill_config(cfg))


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_method_and_names_them_on_error():
    assert list_presets() == METHODS
    for name in METHODS:
        p = get_preset(name)
        assert p.name == name and p.paper and p.changes and p.deviations
    with pytest.raises(ConfigError, match="datm.*ftd.*mdatm.*mtt.*pad"):
        get_preset("dattm")


def test_overrides_are_copies():
    preset_overrides("datm")["distill"]["label_mode"] = "hard"
    assert preset_overrides("datm")["distill"]["label_mode"] == "soft"
    assert preset_overrides("mtt") == {}


def test_table_has_every_preset_paper_and_deviation():
    table = presets_table()
    for name in METHODS:
        p = get_preset(name)
        assert re.search(rf"^{name}\s", table, re.M)
        assert p.paper.split(",")[0] in table
    assert "fixed bug" in table and "NOT the paper's numbers" in table and "search" in table
    assert max(len(line) for line in table.splitlines()) <= 100


@pytest.mark.parametrize("method", METHODS)
def test_preset_on_another_config_switches_the_slots(method):
    """A preset is data: `method=X` on MTT's digits file turns X's slots on."""
    overrides = [f"method={method}"] + (["zca=false"] if method == "mdatm" else [])
    cfg = load_pipeline_config("digits/mtt_ipc1", overrides)
    e, d = expert_config(cfg), _flat(distill_config(cfg))
    assert d.method == method
    assert e.optimizer == ("sgd" if method == "mtt" else "gsam")
    assert (d.ema_decay is not None) == (method == "ftd")
    assert d.label_mode == ("soft" if method in ("datm", "pad") else "hard")
    assert (cfg.curriculum is not None) == (method == "pad")
    assert d.param_mask == ("depth" if method == "pad" else "none")
    assert ("challenge" in cfg.evaluation.protocols) == (method == "mdatm")
    if method in ("datm", "mdatm", "pad"):  # (pix_init: real stays: the YAML sets it)
        assert d.threshold == 1.0 and d.iterations == 100 and d.window == "expanding"
        assert d.eval_batch == 128 and cfg.evaluation.batch_size == 128


# ----------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", PIPELINE_CONFIGS)
def test_every_shipped_config_loads_and_says_where_its_values_come_from(name):
    cfg, e, d = _load(name)  # unknown keys would raise
    dataset, stem = name.split("/")
    method, ipc = re.fullmatch(r"(\w+)_ipc(\d+)", stem).groups()
    # imagenet1k/ holds ImageNet-1K at 64 px (`imagenet64`); `imagenet` is the 224 px dataset
    folder_dataset = {"imagenet1k": "imagenet64"}.get(dataset, dataset)
    assert (cfg.method, cfg.dataset, cfg.ipc) == (method, folder_dataset, int(ipc))
    assert e.epochs >= d.max_start_epoch + d.expert_epochs
    text = re.sub(r"\n# ", " ", resolve_config_path(name).read_text())  # unwrap the header
    assert text.startswith("# ")
    if dataset in ("mnist", "fashion_mnist"):
        assert "DERIVED, not official" in text
    if dataset == "digits":
        assert "CPU-SCALE" in text
    if method == "mdatm":
        assert "NOT the paper's numbers" in text and "mdatm_window.py" in text


def test_shipped_configs_cover_the_research_tables():
    have = set(PIPELINE_CONFIGS)
    want = {f"{d}/ftd_ipc{i}" for d in ("cifar10", "cifar100") for i in (1, 10, 50)}
    want |= {"tiny_imagenet/ftd_ipc1", "tiny_imagenet/ftd_ipc10"}
    for m in ("datm", "pad"):
        want |= {f"cifar10/{m}_ipc{i}" for i in (1, 10, 50, 500, 1000)}
        want |= {f"cifar100/{m}_ipc{i}" for i in (1, 10, 50, 100)}
        want |= {f"tiny_imagenet/{m}_ipc{i}" for i in (1, 10, 50)}
    want |= {f"{d}/mdatm_ipc{i}" for d in ("cifar100", "tiny_imagenet") for i in (5, 10)}
    want |= {f"{d}/{m}_ipc{i}" for d in ("mnist", "fashion_mnist") for m in METHODS
             for i in (1, 10)}
    want |= {f"digits/{m}_ipc1" for m in METHODS}
    want |= {f"{d}/{m}_ipc{i}" for d in SUBSETS for m in ("mtt", "ftd") for i in (1, 10)}
    want |= {"imagenette/datm_ipc1", "imagenette/datm_ipc10"}
    assert want <= have, sorted(want - have)


@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_imagenet_subset_configs_official_values(subset):
    for ipc in (1, 10):
        cfg, e, d = _load(f"{subset}/mtt_ipc{ipc}")  # MTT issue #1 (author)
        assert (cfg.model_kwargs, cfg.zca, e.optimizer) == ({"depth": 5}, False, "sgd")
        assert (d.syn_steps, d.expert_epochs, d.max_start_epoch, d.lr_img, d.lr_lr,
                d.lr_teacher) == (20, 2, 10, 1e5, 1e-6, 0.01)
        assert d.batch_syn == (20 if ipc == 10 else None)
        cfg, e, d = _load(f"{subset}/ftd_ipc{ipc}")  # FTD issue #3 (author)
        assert (cfg.model_kwargs, cfg.zca, e.optimizer, e.gsam_rho, e.gsam_alpha) == (
            {"depth": 5}, False, "gsam", 0.01, 1.0)
        assert (d.syn_steps, d.expert_epochs, d.max_start_epoch, d.lr_img, d.lr_lr,
                d.ema_decay) == (20, 2, 10, 1e4, 1e-4, 0.999)
        assert (d.lr_teacher, d.batch_syn) == ((0.01, None) if ipc == 1 else (0.001, 64))


def test_datm_imagenette_official_values():
    cfg, e, d = _load("imagenette/datm_ipc1")
    assert (cfg.model_kwargs, cfg.zca, d.window, d.current_max_start_epoch, d.max_start_epoch,
            d.expansion_end) == ({"depth": 5}, False, "expanding", 8, 10, 1)
    assert (d.syn_steps, d.lr_img, d.lr_teacher, d.lr_y, d.threshold, d.lr_lr) == (
        20, 1e4, 0.001, 1000.0, 1.0, 1e-6)
    _, e, d = _load("imagenette/datm_ipc10")
    assert (d.syn_steps, d.lr_img, d.lr_teacher, d.lr_y, d.threshold, d.batch_syn) == (
        40, 1e5, 0.01, 5.0, 2.0, None)
    assert (d.pix_init, d.label_mode, d.iterations, e.epochs) == (
        "samples_predicted_correctly", "soft", 10000, 100)


def test_datm_official_values():
    cfg, e, d = _load("cifar10/datm_ipc10")
    assert (d.syn_steps, d.expert_epochs, d.min_start_epoch) == (80, 2, 0)
    assert (d.window, d.current_max_start_epoch, d.max_start_epoch) == ("expanding", 10, 20)
    assert (d.expansion_end, d.batch_syn, d.lr_img, d.lr_lr) == (1000, 100, 100, 1e-5)
    assert (d.label_mode, d.lr_y, d.momentum_y, d.threshold) == ("soft", 2.0, 0.9, 1.0)
    assert (d.iterations, d.eval_batch, cfg.evaluation.batch_size) == (10000, 128, 128)
    assert cfg.zca and cfg.evaluation.hard_labels
    assert (e.optimizer, e.gsam_rho, e.gsam_alpha, e.epochs) == ("gsam", 0.01, 0.3, 100)
    _, _, d = _load("cifar10/datm_ipc1")
    assert (d.window, d.max_start_epoch, d.threshold, d.lr_y, d.lr_lr) == (
        "fixed", 4, 1.1, 5.0, 1e-7)
    _, _, d = _load("cifar100/datm_ipc50")
    assert (d.pix_init, d.min_start_epoch, d.max_start_epoch) == ("real", 20, 70)
    cfg, _, d = _load("tiny_imagenet/datm_ipc10")
    assert cfg.model_kwargs == {"depth": 4} and cfg.zca
    assert (d.window, d.min_start_epoch, d.max_start_epoch, d.batch_syn, d.lr_img) == (
        "fixed", 10, 50, 500, 100)


def test_ftd_official_values():
    cfg, e, d = _load("cifar10/ftd_ipc1")
    assert (d.syn_steps, d.expert_epochs, d.max_start_epoch, d.lr_img, d.lr_lr) == (
        50, 2, 2, 100, 1e-7)
    assert (e.optimizer, e.gsam_rho, e.gsam_alpha, e.epochs) == ("gsam", 0.01, 0.3, 50)
    assert (d.ema_decay, d.iterations, d.window, d.label_mode) == (0.9999, 5000, "fixed", "hard")
    _, e, d = _load("cifar10/ftd_ipc10")
    assert (d.lr_teacher, d.ema_decay, e.gsam_alpha) == (0.001, 0.9995, 0.3)
    _, e, d = _load("cifar100/ftd_ipc50")
    assert (d.syn_steps, d.batch_syn, d.ema_decay, e.gsam_alpha) == (80, 1000, 0.999, 1.0)
    cfg, _, d = _load("tiny_imagenet/ftd_ipc10")
    assert (d.batch_syn, d.lr_img, d.lr_lr, d.max_start_epoch) == (500, 10000, 1e-4, 40)
    assert cfg.model_kwargs == {"depth": 4}


def test_pad_official_values():
    cfg, e, d = _load("cifar10/pad_ipc50")
    assert (d.expert_epochs, d.batch_syn, d.param_mask, d.param_mask_ratio) == (
        3, 1000, "depth", 0.25)
    s = cfg.curriculum.schedule
    assert (s.init_ratio, s.add_end_epoch, s.rm_epoch_first, s.rm_epoch_second) == (
        0.75, 20, 40, 60)
    assert (s.rm_easy_ratio_first, s.rm_easy_ratio_second) == (0.1, 0.2)
    assert cfg.curriculum.score == "el2n" and e.epochs == 100 and e.gsam_alpha == 0.3
    _, _, d = _load("cifar10/pad_ipc500")
    assert (d.window, d.min_start_epoch, d.current_max_start_epoch, d.max_start_epoch,
            d.expansion_end) == ("expanding", 40, 60, 70, 2000)
    _, _, d = _load("cifar100/pad_ipc1")
    assert (d.current_max_start_epoch, d.max_start_epoch) == (20, 30)
    assert _load("cifar100/pad_ipc50")[2].param_mask_ratio == 0.0
    assert _load("cifar10/pad_ipc1")[2].param_mask_ratio == 0.0
    assert _load("tiny_imagenet/pad_ipc10")[2].param_mask_ratio == 0.5


@pytest.mark.parametrize("dataset, ipc", [("cifar100", 5), ("cifar100", 10),
                                          ("tiny_imagenet", 5), ("tiny_imagenet", 10)])
def test_mdatm_challenge_configs(dataset, ipc):
    cfg, e, d = _load(f"{dataset}/mdatm_ipc{ipc}")
    _, _, datm = _load(f"{dataset}/datm_ipc10")
    assert not cfg.zca and d.label_mode == "hard" and cfg.model_kwargs == {"depth": 3}
    assert cfg.evaluation.protocols[0] == "challenge"
    # Narrower and earlier than DATM's window: [T-, T- + ceil(k (T+ - T-))), fixed.
    width = datm.max_start_epoch - datm.min_start_epoch
    upper = datm.min_start_epoch + math.ceil(MDATM_WINDOW_FRACTION * width)
    assert d.window == "fixed" and (d.min_start_epoch, d.max_start_epoch) == (
        datm.min_start_epoch, upper)
    assert 0 < MDATM_WINDOW_FRACTION < 1  # strictly narrower than DATM's
    assert (d.syn_steps, d.lr_img, d.lr_lr, d.threshold) == (
        datm.syn_steps, datm.lr_img, datm.lr_lr, datm.threshold)
    assert e.optimizer == "gsam" and e.epochs == 100


@pytest.mark.parametrize("dataset, ipc", [("mnist", 1), ("mnist", 10), ("fashion_mnist", 1),
                                          ("fashion_mnist", 10), ("digits", 1), ("cifar10", 1),
                                          ("cifar10", 10)])
def test_derived_mdatm_configs_narrow_their_datm_window_by_the_same_rule(dataset, ipc):
    _, _, d = _load(f"{dataset}/mdatm_ipc{ipc}")
    _, _, datm = _load(f"{dataset}/datm_ipc{ipc}")
    width = datm.max_start_epoch - datm.min_start_epoch
    assert (d.window, d.min_start_epoch, d.max_start_epoch) == (
        "fixed", datm.min_start_epoch,
        datm.min_start_epoch + math.ceil(MDATM_WINDOW_FRACTION * width))


# The DATM repository's config folders (NUS-HPC-AI-Lab/DATM, configs/<dataset>/ConvIN/IPCn.yaml).
# The ImageNet-subset folder is spelt "ImageNetSubuset" in the DATM repository (commit b1d4823).
DATM_CONFIG_PATH = re.compile(
    r"configs/(CIFAR-10|CIFAR-100|TinyImageNet|ImageNetSubuset/imagenette)/ConvIN/IPC\d+\.yaml")


@pytest.mark.parametrize("name", [n for n in list_configs()
                                  if re.search(r"/(datm|mdatm|pad)_ipc", n)])
def test_datm_family_headers_cite_real_official_paths(name):
    header = [line for line in resolve_config_path(name).read_text().splitlines()
              if line.startswith("#")]
    cited = re.findall(r"configs/\S+?\.yaml", "\n".join(header))
    official = name.startswith(("cifar10/", "cifar100/", "tiny_imagenet/"))
    assert cited or not official, f"{name} cites no official DATM config"
    for path in cited:
        assert DATM_CONFIG_PATH.fullmatch(path), f"{name} cites {path}, not a DATM config path"
