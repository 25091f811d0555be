"""The main job: experts (if missing) -> trajectory matching -> evaluation against baselines.

A pipeline config is one YAML file with the keys shared by every stage at the top level
(dataset, ipc, zca, model, seed, device) and one section per stage:

    method: mtt               # preset: mtt | ftd | datm | mdatm | pad
    dataset: cifar10
    ipc: 1
    zca: true
    experts: {epochs: 50, num_experts: 100}
    distill: {syn_steps: 50, expert_epochs: 2, max_start_epoch: 2, lr_img: 100, ...}
    evaluation: {runs: 5}

Precedence: dataclass defaults < method preset < YAML < ``key=value`` overrides. The shared
keys are copied into the stage configs, so they are written once.

Example:
    >>> cfg = load_pipeline_config("digits/mtt_ipc1", ["distill.iterations=10"])
    >>> result = run_pipeline(cfg, "runs/digits")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datadistill.config import (
    config_from_dict,
    config_to_dict,
    load_yaml,
    merge,
    parse_overrides,
    resolve_config_path,
)
from datadistill.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "digits/mtt_ipc1"


@dataclass
class EvaluationConfig:
    runs: int = 5  # fresh networks per evaluation (MTT: 5)
    epochs: int = 1000  # classic protocol: 1000 (+1) epochs
    random_baseline: bool = True  # also evaluate a random real subset at the same IPC
    models: list[str] = field(default_factory=lambda: ["convnet"])  # >1: cross-architecture


@dataclass
class PipelineConfig:
    method: str = "mtt"  # preset name; `datadistill presets` lists them
    dataset: str = "digits"  # registry name; `digits` ships with the package
    data_root: str | None = None  # folder holding the dataset files (None: not needed/default)
    download: bool = False  # fetch missing dataset files from their official URLs
    ipc: int = 1  # images per class of the distilled set
    zca: bool = False  # distil and evaluate in ZCA-whitened space (MTT: per setting)
    model: str = "convnet"  # network of experts, student and evaluation
    model_kwargs: dict = field(default_factory=dict)  # e.g. {depth: 4} for Tiny ImageNet
    seed: int = 0  # every random draw of the run derives from this
    device: str = "auto"  # "auto": cuda when available, else cpu
    experts: dict = field(default_factory=dict)  # ExpertConfig fields
    distill: dict = field(default_factory=dict)  # DistillConfig fields
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


SHARED_KEYS = ("dataset", "data_root", "zca", "model", "model_kwargs", "seed", "device")


def load_pipeline_config(name_or_path: str | None = None, overrides: list[str] | None = None):
    """Read a shipped or user YAML config, apply the preset and overrides, validate it all."""
    from datadistill.presets import preset_overrides

    raw = load_yaml(resolve_config_path(name_or_path or DEFAULT_CONFIG))
    raw = merge(raw, parse_overrides(overrides or []))
    method = raw.get("method", PipelineConfig.method)
    data = merge(preset_overrides(method, raw.get("dataset"), raw.get("ipc")), raw)
    cfg = config_from_dict(PipelineConfig, data)
    expert_config(cfg)  # unknown keys in the stage sections fail now, not an hour later
    distill_config(cfg)
    return cfg


def _shared(cfg: PipelineConfig) -> dict[str, Any]:
    shared = {k: getattr(cfg, k) for k in SHARED_KEYS}
    shared["device"] = cfg.resolved_device()
    return shared


def expert_config(cfg: PipelineConfig):
    from datadistill.experts import ExpertConfig

    return config_from_dict(ExpertConfig, merge(_shared(cfg), cfg.experts), prefix="experts.")


def distill_config(cfg: PipelineConfig, expert_dir: str | None = None):
    from datadistill.distill import DistillConfig

    section = merge(_shared(cfg) | {"ipc": cfg.ipc, "method": cfg.method}, cfg.distill)
    if expert_dir is not None:
        section.setdefault("expert_dir", expert_dir)
    return config_from_dict(DistillConfig, section, prefix="distill.")


def _check(cfg: PipelineConfig) -> None:
    """Fail before any training when the stages cannot fit together."""
    if cfg.ipc < 1:
        raise ConfigError(f"ipc must be at least 1, got {cfg.ipc}")
    ecfg, dcfg = expert_config(cfg), distill_config(cfg)
    needed = dcfg.max_start_epoch + dcfg.expert_epochs
    if ecfg.epochs < needed:
        raise ConfigError(
            f"distill.max_start_epoch ({dcfg.max_start_epoch}) + distill.expert_epochs "
            f"({dcfg.expert_epochs}) = {needed} expert epochs are needed, but experts.epochs is "
            f"{ecfg.epochs}; raise experts.epochs or lower distill.max_start_epoch"
        )


def train_pipeline_experts(cfg: PipelineConfig, out_dir: str | Path, *, data=None,
                           progress: bool = True):
    """The expert stage alone: train (or finish) the store in ``out_dir`` for this config."""
    from datadistill.data import prepare
    from datadistill.experts import train_experts

    if data is None:
        data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca, download=cfg.download)
    return train_experts(expert_config(cfg), data, out_dir, device=cfg.resolved_device(),
                         progress=progress)


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run experts (reusing a compatible store), distillation, then the evaluation report.

    Writes ``eval.json`` in ``out_dir`` with the distilled and random-subset accuracies.
    """
    from datadistill.artifact import load_distilled
    from datadistill.baselines import baseline_random
    from datadistill.data import prepare
    from datadistill.distill import distill
    from datadistill.evaluate import evaluate

    _check(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    device = cfg.resolved_device()
    t0 = time.time()
    data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca, download=cfg.download)
    store = train_pipeline_experts(cfg, out / "experts", data=data, progress=progress)
    t_experts = time.time() - t0
    dcfg = distill_config(cfg, expert_dir=str(out / "experts"))
    result = distill(dcfg, out / "distill", data=data, store=store, progress=progress)
    t_distill = time.time() - t0 - t_experts
    best = load_distilled(result.best_dir)
    ev = cfg.evaluation
    report = {"config": config_to_dict(cfg), "seconds": {}}
    for model in ev.models:
        rep = evaluate(best.images, best.labels, data.test, model=model, lr=best.lr,
                       num_runs=ev.runs, epochs=ev.epochs, seed=cfg.seed + 1000,
                       device=device, progress=progress)
        report[f"distilled_{model}"] = rep.to_dict()
    if ev.random_baseline:
        rep = baseline_random(data, cfg.ipc, num_runs=ev.runs, epochs=ev.epochs,
                              seed=cfg.seed + 2000, device=device, progress=progress)
        report["random_subset"] = rep.to_dict()
    report["seconds"] = {"experts": round(t_experts, 1), "distill": round(t_distill, 1),
                         "total": round(time.time() - t0, 1)}
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
