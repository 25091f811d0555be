"""The main job: experts (if missing) -> trajectory matching -> evaluation against baselines.

A pipeline config is one YAML file with the keys shared by every stage at the top level
(dataset, ipc, zca, model, seed, device) and one section per stage:

    recipe: tm                # datadistill.recipes: trajectory matching
    method: mtt               # preset: mtt | ftd | datm | mdatm | pad
    dataset: cifar10
    ipc: 1
    zca: true
    experts: {epochs: 50, num_experts: 100}
    distill: {syn_steps: 50, expert_epochs: 2, max_start_epoch: 2, lr_img: 100, ...}
    curriculum: {schedule: {init_ratio: 0.75, ...}, score: el2n}   # PAD only (else absent)
    evaluation: {runs: 5, batch_size: 256, protocols: [classic]}

Precedence: dataclass defaults < method preset < YAML < ``key=value`` overrides. The
top-level keys besides ``method`` and ``ipc`` are the run context every stage shares
(:class:`~datadistill.config.RunContext`: data, model, seed, device); each is set once, at
the top (``distill.zca`` is an error that says so). ``experts`` and ``distill`` are typed
sections (:class:`~datadistill.experts.ExpertSection`, :class:`~datadistill.tm.distill.
DistillSection`, the latter grouped by strategy axis in :mod:`datadistill.matching.axes`);
:func:`expert_config` and :func:`distill_config` join a section with the run context into
the stage's config.

Evaluation (``eval.json``): every model of ``evaluation.models`` trains fresh networks on the
best distilled set (classic protocol, learned lr); a soft-label set is also evaluated with its
argmax hard labels when ``evaluation.hard_labels`` (DATM/PAD: the label effect; the ``argmax``
variant, not DD-Ranking's ``class_order``, see :mod:`datadistill.evaluation.ddranking`),
FTD's EMA set (``distill/ema_last``) is evaluated on its own from fresh networks, and
``protocols: [challenge]`` exports the ECCV-2024 challenge tensor file and scores it with the
challenge protocol (M-DATM).

Example:
    >>> cfg = load_pipeline_config("digits/mtt_ipc1", ["distill.iterations=10"])
    >>> result = run_pipeline(cfg, "runs/digits")       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from datadistill import distributed
from datadistill.artifacts.challenge_export import export_challenge
from datadistill.artifacts.distilled import load_distilled, set_digest
from datadistill.checks import check_ipc_fits, check_pipeline
from datadistill.config import (
    config_from_dict,
    config_to_dict,
)
from datadistill.data import prepare, random_subset
from datadistill.errors import ArtifactError, CompatibilityError, ConfigError, DatadistillError
from datadistill.evaluation.baselines import baseline_random
from datadistill.evaluation.challenge import FILES as CHALLENGE_FILES
from datadistill.evaluation.protocols import PROTOCOLS, evaluate
from datadistill.experts import ExpertStore, train_experts
from datadistill.experts.forecast import check_disk, forecast_store
from datadistill.experts.pad import (
    check_no_curriculum,
    prepare_curriculum,
    record_served,
)
from datadistill.experts.store import expert_path
from datadistill.io import read_json, write_json, write_report
from datadistill.matching.soft_labels import init_soft_labels
from datadistill.report.page import write_report as write_page
from datadistill.runtime.lock import lock_folder, lock_folder_if, locks_output
from datadistill.runtime.runlog import RunCache, StageClock
from datadistill.tm.checkpoint import load_checkpoint
from datadistill.tm.config import PipelineConfig, distill_config, expert_config
from datadistill.tm.distill import (
    check_processes,
    check_resume,
    distill,
)
from datadistill.tm.memory import check_memory
from datadistill.tm.repair import finished_state, restore_outputs
from datadistill.training import build_model

log = logging.getLogger(__name__)


# Seed offsets of the final evaluations, added to ``seed``: one stream per output, so no two
# outputs share initialisations or batches. Fixed: finished evaluations in eval_runs.jsonl and
# the recorded results were drawn with them.
SEED_DISTILLED = 1000  # the best set; its hard-label evaluation reuses it (only labels differ)
SEED_RANDOM_SUBSET = 2000  # the random real subset of the same size
SEED_EMA = 3000  # FTD's EMA set
SEED_CHALLENGE = 4000  # the exported challenge file, scored by the challenge protocol
SEED_DDRANKING = 5000  # DD-Ranking's rounds


def store_location(cfg: PipelineConfig, out_dir: str | Path,
                   explicit: str | Path | None = None) -> Path:
    """The expert store of the run in ``out_dir``: ``explicit`` (the CLI's ``--experts``), else
    ``distill.expert_dir``, else ``<out_dir>/experts``; the two set differently is an error."""
    given = cfg.distill.expert_dir
    if explicit is not None and given is not None and \
            Path(explicit).resolve() != Path(given).resolve():
        raise ConfigError(f"--experts {explicit} and distill.expert_dir={given} name two "
                          "different expert stores; give one of them")
    found = explicit if explicit is not None else given
    return Path(found) if found is not None else Path(out_dir) / "experts"


def recorded_store(store: str | Path, out_dir: str | Path) -> str:
    """How a run records its expert store: relative to the run folder when the store is inside
    it (the two move together), else as an absolute path (a move of the run folder keeps it).

    Example:
        >>> recorded_store("runs/a/experts", "runs/a")
        'experts'
    """
    store, out = Path(store).resolve(), Path(out_dir).resolve()
    return store.relative_to(out).as_posix() if store.is_relative_to(out) else str(store)


def find_recorded_store(recorded: str | None, out_dir: str | Path,
                        explicit: str | Path | None = None) -> Path:
    """The expert store a run in ``out_dir`` recorded (:func:`recorded_store`), or ``explicit``.

    A relative record is looked up in the run folder, then (runs recorded before records were
    made relative to the run folder) in the working directory. ArtifactError naming
    ``--experts`` when no store is found.
    """

    out = Path(out_dir)
    if explicit is not None:
        candidates = [Path(explicit)]
    elif recorded is None:
        candidates = [out / "experts"]
    elif Path(recorded).is_absolute():
        candidates = [Path(recorded)]
    else:
        candidates = [out / recorded, Path(recorded)]
    for path in candidates:
        if (path / "meta.json").is_file():
            return path
    where = " or ".join(str(p) for p in dict.fromkeys(candidates))
    raise ArtifactError(f"the expert store of {out} is not at {where} (moved or deleted?); "
                        "pass its location with --experts STORE")


def _check(cfg: PipelineConfig) -> None:
    """Fail before any training when the stages cannot fit together."""
    check_pipeline(cfg, expert_config(cfg), distill_config(cfg))


def train_pipeline_experts(cfg: PipelineConfig, out_dir: str | Path, *, data=None,
                           progress: bool = True, announce=None):
    """The expert stage alone: train (or finish) the store in ``out_dir`` for this config.

    Before the first missing expert, the store's size and time are predicted
    (:func:`~datadistill.experts.forecast.forecast_store`; logged, and passed line by line to
    ``announce`` on rank 0) and a disk too small for it refuses the run.

    With a ``curriculum`` section (PAD) the difficulty order is computed or loaded first and
    saved beside the experts, and every expert epoch trains on the scheduled subset
    (:mod:`datadistill.experts.pad`); ``curriculum.json`` records the sizes served.
    """

    if data is None:
        data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca, download=cfg.download,
                       train_per_class=cfg.train_per_class, progress=progress)
    ecfg, device = expert_config(cfg), cfg.resolved_device()
    _forecast(ecfg, data, out_dir, device, announce)
    if cfg.curriculum is None:
        check_no_curriculum(out_dir)
        return train_experts(ecfg, data, out_dir, device=device, progress=progress)
    done = all(expert_path(Path(out_dir), i).is_file() for i in range(ecfg.num_experts))
    with lock_folder_if(not done, out_dir):  # the curriculum files are written with the experts
        hook = prepare_curriculum(cfg.curriculum, ecfg, data, out_dir, device=device,
                                  progress=progress)
        store = train_experts(ecfg, data, out_dir, device=device, progress=progress,
                              epoch_subset=hook)
        record_served(hook, out_dir)
    return store


def _forecast(ecfg, data, out_dir, device: str, announce) -> None:
    """Predict the missing experts' disk and time on rank 0; every rank refuses a full disk."""

    if all(expert_path(Path(out_dir), i).is_file() for i in range(ecfg.num_experts)):
        return
    forecast = distributed.broadcast_object(
        forecast_store(ecfg, data, out_dir, device=device,
                       processes=distributed.world_size()) if distributed.is_main() else None)
    for line in forecast.lines():
        log.info(line)
        if announce is not None and distributed.is_main():
            announce(line)
    check_disk(forecast, out_dir)


@locks_output("out_dir")
def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, *, progress: bool = True,
                 expert_dir: str | Path | None = None, restart: bool = False) -> dict:
    """Run experts (reusing a compatible store), distillation, then the evaluation report.

    ``expert_dir`` (default ``distill.expert_dir``, else ``out_dir/experts``:
    :func:`store_location`) lets several runs share one store; experts missing there are
    trained there, and a store started with another expert config is an error, never silently
    reused. The run records the store relative to ``out_dir`` when inside it, else absolute
    (:func:`recorded_store`), so the run folder can be moved or copied and still repaired.

    Writes ``eval.json`` in ``out_dir`` with the distilled and random-subset accuracies (and,
    per method, the hard-label, EMA and challenge scores; see the module docstring). Every
    stage resumes: experts at the first missing one, distillation from its checkpoint, the
    final evaluation at its first unfinished network (``eval_runs.jsonl``); ``seconds`` sums
    all calls. ``restart`` starts the distillation and the evaluation over (the experts are
    kept). A rerun refused for a changed config writes nothing.

    Under torchrun every rank runs this; rank 0 alone holds the folder lock and writes
    ``pipeline.json``, ``seconds.json``, ``eval.json`` (with ``"world_size": K``) and the page,
    and the other ranks wait where they read what rank 0 wrote (``best/``, the challenge file).
    """

    out = Path(out_dir)
    experts_at = store_location(cfg, out, expert_dir)
    recorded = recorded_store(experts_at, out)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, expert_dir=recorded))
    dcfg = distill_config(cfg)
    _refuse_early(cfg, dcfg, out, restart)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "seconds.json", fresh=restart)
    with clock.stage("experts"):
        data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca, download=cfg.download,
                       train_per_class=cfg.train_per_class, progress=progress)
        check_ipc_fits(cfg.ipc, data.train.labels, data.info.class_names)  # before experts
        store = train_pipeline_experts(cfg, experts_at, data=data, progress=progress)
    main = distributed.is_main()  # under torchrun rank 0 alone writes the run's files
    if main:
        write_json(config_to_dict(cfg), out / "pipeline.json")
    with clock.stage("distill"):
        result = distill(dcfg, out / "distill", data=data, store=store, progress=progress,
                         resume=not restart)
        if main:
            restore_outputs(partial(distill_config, cfg), out, lambda: data,  # damaged best/, last/
                            lambda: store)
        distributed.wait_for_others()  # best/ and last/ are on disk for every rank
    report = {"config": config_to_dict(cfg), "seconds": {}}
    with clock.stage("evaluation"):
        report.update(_final_evaluation(cfg, data, result, out, restart, progress, store))
    report["seconds"] = clock.report()
    report.update(distributed.metadata())
    if main:  # the other ranks hold the same report
        write_report(report, out / "eval.json")
        write_page(out, stage="run", seconds=report["seconds"]["total"])  # never raises
    return report


def _refuse_early(cfg: PipelineConfig, dcfg, out: Path, restart: bool) -> None:
    """Every check that can refuse the run, before experts or anything else is written."""

    _check(cfg)
    check_memory(dcfg)  # an unrolled run that cannot fit
    check_processes(dcfg)  # torchrun: adjoint mode only
    if not restart:
        _check_checkpoint(dcfg, out / "distill")  # a checkpoint of another config


def _final_evaluation(cfg: PipelineConfig, data, result, out: Path, restart: bool,
                      progress: bool, store=None) -> dict:
    """The distilled sets' scores and the random subset's, resumed from ``eval_runs.jsonl``."""

    device, ev = cfg.resolved_device(), cfg.evaluation
    runs = out / "eval_runs.jsonl"
    if restart and distributed.is_main():
        runs.unlink(missing_ok=True)
    if not restart:
        _check_same_best(out, result.best_dir)
    report = _evaluate_outputs(cfg, data, result, out, device, progress)
    if ev.random_baseline:
        rep = baseline_random(data, cfg.ipc, model=cfg.model, model_kwargs=cfg.model_kwargs,
                              num_runs=ev.runs, epochs=ev.epochs, batch_size=ev.batch_size,
                              seed=cfg.seed + SEED_RANDOM_SUBSET, device=device, progress=progress,
                              cache=RunCache(runs, "random_subset"))
        report["random_subset"] = rep.to_dict()
        if ev.soft_random and cfg.distill.labels.label_mode == "soft" and store is not None:
            report["random_subset_soft"] = _soft_random(cfg, data, store, runs, device,
                                                        progress)
    return report


def best_changed(out: Path, best_dir: Path) -> tuple[str, str] | None:
    """(SHA-256 of the set in ``best_dir``, the one ``eval.json`` scored) when they differ;
    None when they agree or there is nothing to compare (no report, or one without it)."""

    try:
        recorded = json.loads((out / "eval.json").read_text())["outputs"]["best_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = set_digest(load_distilled(best_dir))
    return None if now == recorded else (now, recorded)


def _check_same_best(out: Path, best_dir: Path) -> None:
    """The set in ``best_dir`` is the one ``eval.json`` scored, else a CompatibilityError: a
    best/ swapped for another set would otherwise be scored and the report rewritten without
    a word."""
    changed = best_changed(out, best_dir)
    if changed:
        raise CompatibilityError(
            f"{best_dir} is not the set {out / 'eval.json'} scored (SHA-256 {changed[0][:12]} vs "
            f"{changed[1][:12]}): it was replaced or edited. Rebuild it from the checkpoint with "
            f"`datadistill repair {out}`, or move eval.json away to score the set now there")


def _soft_random(cfg: PipelineConfig, data, store, runs: Path, device: str,
                 progress: bool) -> dict:
    """The random-subset baseline with soft labels, for a soft-label method: the same seeded
    draw as the hard-label baseline's first run, labelled by DATM's rule (the experts' final
    logits, averaged over the experts that classify each image correctly), classic protocol,
    lr 0.01."""

    ev = cfg.evaluation
    gen = torch.Generator().manual_seed(cfg.seed + 2000)
    images, hard = random_subset(data.train, cfg.ipc, gen)  # (K * ipc, C, H, W), class-major
    finals = [store.load(i)[-1] for i in range(len(store))]  # final epochs, (P,) each
    model = build_model(expert_config(cfg), data.info)
    logits = init_soft_labels(images, hard, finals, model, device=device).detach()
    rep = evaluate(images.to(device), logits.to(device), data.test, lr=0.01, num_runs=ev.runs,
                   epochs=ev.epochs, batch_size=ev.batch_size, seed=cfg.seed + 2000,
                   device=device, model=cfg.model, model_kwargs=cfg.model_kwargs,
                   progress=progress, cache=RunCache(runs, "random_subset_soft"))
    return rep.to_dict()


def _check_checkpoint(dcfg, folder: Path) -> None:
    """A distillation checkpoint in ``folder`` must have been written with this config."""

    path = folder / "checkpoint.pt"
    if path.is_file():
        check_resume(dcfg, load_checkpoint(path).config, path)


def _evaluate_outputs(cfg: PipelineConfig, data, result, out: Path, device: str,
                      progress: bool) -> dict[str, Any]:
    """Fresh-network evaluations of the distilled outputs, keyed as in ``eval.json``."""

    ev, best = cfg.evaluation, load_distilled(result.best_dir)
    ema_dir = result.out_dir / "ema_last"  # FTD: written by distill when ema_decay is set
    ema = load_distilled(ema_dir) if (ema_dir / "meta.json").is_file() else None
    common = dict(num_runs=ev.runs, epochs=ev.epochs, device=device, progress=progress)
    runs = out / "eval_runs.jsonl"  # finished networks, so a killed evaluation resumes
    report: dict[str, Any] = {"outputs": {"best": str(result.best_dir),
                                          "best_sha256": set_digest(best)}}
    for model in ev.models if "classic" in ev.protocols else []:
        kw = dict(model=model, lr=best.lr, batch_size=ev.batch_size, report=ev.report,
                  space=best.space,
                  period=ev.period, model_kwargs=cfg.model_kwargs if model == cfg.model else {},
                  **common)
        # The hard-label run reuses the seed: same inits and batches, only the labels differ.
        report[f"distilled_{model}"] = evaluate(
            best.images, best.labels, data.test, seed=cfg.seed + SEED_DISTILLED,
            cache=RunCache(runs, f"distilled_{model}"), **kw).to_dict()
        if ev.hard_labels and best.soft_labels:
            report[f"distilled_{model}_hard_labels"] = evaluate(
                best.images, best.hard_labels, data.test, seed=cfg.seed + SEED_DISTILLED,
                cache=RunCache(runs, f"distilled_{model}_hard_labels"), **kw).to_dict()
        if ema is not None:  # FTD's EMA set from fresh networks (the official code reuses the
            # network already trained on the raw set: a fixed bug, see presets.py)
            report[f"ema_{model}"] = evaluate(ema.images, ema.labels, data.test,
                                              seed=cfg.seed + SEED_EMA,
                                              cache=RunCache(runs, f"ema_{model}"),
                                              **{**kw, "space": ema.space}).to_dict()
    if ema is not None:
        report["outputs"]["ema"] = str(ema_dir)
    if "ddranking" in ev.protocols:
        report["ddranking"] = _ddranking(cfg, data, best, device, progress)
    if "challenge" in ev.protocols:
        name = CHALLENGE_FILES.get(cfg.dataset, f"{cfg.dataset}.pt")
        path = Path(distributed.broadcast_object(  # rank 0 writes it, then every rank reads it
            str(export_challenge(best, out / "challenge" / name)) if distributed.is_main()
            else None))
        images = torch.load(path, map_location="cpu", weights_only=True)  # what is submitted
        # unofficial=True: a pipeline may run reduced settings or other datasets; the report
        # lists every setting that differs from the official evaluator.
        report["challenge"] = evaluate(images, None, data.test, protocol="challenge",
                                       ipc=cfg.ipc, seed=cfg.seed + SEED_CHALLENGE, unofficial=True,
                                       cache=RunCache(runs, "challenge"), **common).to_dict()
        report["outputs"]["challenge_file"] = str(path)
    return report


def _ddranking(cfg: PipelineConfig, data, best, device: str, progress: bool) -> dict:
    """DD-Ranking's scores of the best set: the method's DD-Ranking config, with
    ``evaluation.runs`` rounds and ``evaluation.epochs`` epochs (StepLR at half), then the
    overrides in ``evaluation.ddranking`` (e.g. ``{full: {epochs: 20}, ars: false}``)."""

    ev = cfg.evaluation
    over = {"rounds": ev.runs, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
            **ev.ddranking}
    over["train"] = {"epochs": ev.epochs, "step_size": max(1, ev.epochs // 2),
                     **ev.ddranking.get("train", {})}
    ddranking = PROTOCOLS["ddranking"]
    ddr = ddranking.settings(cfg.method, **over)
    return ddranking.evaluate(best.images, best.labels, data, ddr, syn_lr=best.lr,
                              seed=cfg.seed + SEED_DDRANKING, device=device,
                              progress=progress).to_dict()


def _set_aside_a_replaced_best(out: Path) -> list[str]:
    """A readable best/ that is not the set eval.json scored (replaced by hand) is renamed
    best.replaced-<n>/ (kept, never deleted), so it is rebuilt from the checkpoint."""
    best = out / "distill" / "best"
    try:
        changed = best_changed(out, best)
    except DatadistillError:  # unreadable: restore_outputs rebuilds it
        return []
    if changed is None:
        return []
    n = 0
    while (aside := best.with_name(f"best.replaced-{n}")).exists():
        n += 1
    best.rename(aside)
    log.warning("%s is not the set eval.json scored; moved it to %s", best, aside)
    return [f"moved the replaced best/ to {aside.name}/"]


def repair_run(out_dir: str | Path, *, progress: bool = False,
               experts: str | Path | None = None) -> list[str]:
    """Restore ``best/``, ``last/`` and ``eval.json`` of the finished run in ``out_dir``.

    Works from any working directory and after the run folder was moved or copied: the expert
    store is the one the run recorded (:func:`find_recorded_store`), or ``experts`` when given
    (the CLI's ``--experts``, for a store that was moved).

    Returns what was rebuilt, in words.
    """
    out = Path(out_dir)
    cfg = config_from_dict(PipelineConfig, read_json(out / "pipeline.json"))
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, expert_dir=None))
    stage_config = partial(distill_config, cfg)  # expert_dir: as the checkpoint recorded it
    with lock_folder(out):
        dcfg, _ = finished_state(stage_config, out / "distill")  # unfinished: resumed instead
        store_dir = find_recorded_store(dcfg.expert_dir, out, experts)
        moved = _set_aside_a_replaced_best(out)
        done = moved + restore_outputs(stage_config, out, lambda: prepare(
            cfg.dataset, cfg.data_root, zca=cfg.zca, train_per_class=cfg.train_per_class),
            lambda: ExpertStore(store_dir))
        run_pipeline(cfg, out, progress=progress, expert_dir=store_dir)
    return [*done, "eval.json (finished evaluation networks reused)"]
