"""Command-line interface: a thin argparse shell over the Python API.

Every subcommand maps to one library call; errors raised on purpose (DatadistillError) are
printed as one line with exit status 2, so their message (which names the fix) is what the
user sees.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path

from datadistill import __version__
from datadistill.errors import ArtifactError, ConfigError, DatadistillError


class _Lazy:
    """A module imported on first use: ``--version`` and ``--help`` need no torch (about 4 s
    of imports); each command imports what it uses."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


distributed = _Lazy("datadistill.distributed")
checks = _Lazy("datadistill.checks")
torch = _Lazy("torch")


def plural(n: int, word: str) -> str:
    from datadistill.runtime.progress import plural

    return plural(n, word)


def _fmt(report) -> str:
    return (
        f"{100 * report.mean:.2f} ± {100 * report.std:.2f} % "
        f"({plural(len(report.accuracies), 'run')}, {report.model}, {report.protocol})"
    )


# ---------------------------------------------------------------- configs / validate
def cmd_configs(args: argparse.Namespace) -> int:
    from datadistill.config import list_configs, resolve_config_path, resolved_config_text

    if args.action == "ls":
        for name in list_configs():
            print(name)
        return 0
    if args.name is None:
        raise ConfigError(f"`datadistill configs {args.action}` needs a config name, e.g. "
                          f"`datadistill configs {args.action} digits/mtt_ipc1`; "
                          "`datadistill configs ls` lists them")
    src = resolve_config_path(args.name)
    if args.action == "show":
        print(resolved_config_text(src), end="")
        return 0
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest} exists; pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise ConfigError(f"cannot copy to {dest}: the folder {dest.parent} does not exist; "
                          "create it or name an existing folder")
    try:
        dest.write_text(resolved_config_text(src))  # every value written in: runs alone
    except OSError as err:
        raise ConfigError(f"cannot copy to {dest} ({err.strerror or err}); name a writable "
                          "file or folder") from None
    print(f"copied {args.name} to {dest}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from datadistill.recipes import load_config

    recipe, cfg = load_config(args.config, args.overrides)
    print(f"{args.config}: valid ({recipe.label(cfg)})")
    note = recipe.note(cfg)
    if note:
        print(f"  note: {note}")
    return 0


# ---------------------------------------------------------------- experts / distill / run
def _pipeline(args: argparse.Namespace):
    from datadistill.tm.pipeline import load_pipeline_config

    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # `run ipc=10`
    return load_pipeline_config(args.config, args.overrides)


def _run_dir(args: argparse.Namespace, cfg) -> Path:
    return Path(args.out or f"runs/{cfg.dataset}_{cfg.method}_ipc{cfg.ipc}")


def cmd_experts(args: argparse.Namespace) -> int:
    from datadistill.tm.pipeline import store_location, train_pipeline_experts

    cfg = _pipeline(args)
    out = checks.check_output_folder(store_location(cfg, _run_dir(args, cfg), args.experts))
    store = train_pipeline_experts(cfg, out, progress=not args.quiet,
                                   announce=None if args.quiet else print)
    accs = [float(store.test_acc(i)[-1]) for i in range(len(store))]
    print(f"{plural(len(store), 'expert')} in {out}; final test accuracy "
          f"{100 * sum(accs) / len(accs):.2f} % on average")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from datadistill.tm.distill import distill
    from datadistill.tm.pipeline import distill_config, recorded_store, store_location

    cfg = _pipeline(args)
    out = checks.check_output_folder(_run_dir(args, cfg))
    store_dir = store_location(cfg, out, args.experts)
    dcfg = dataclasses.replace(distill_config(cfg), expert_dir=recorded_store(store_dir, out))
    result = distill(dcfg, out / "distill", store=store_dir,  # opened after the checks
                     progress=not args.quiet, resume=not args.restart)
    best = "n/a" if result.best_accuracy is None else f"{100 * result.best_accuracy:.2f} %"
    print(f"{result.iterations_done} iterations; best evaluation {best} at iteration "
          f"{result.best_iteration}; learned step size {result.final_syn_lr:.4g}")
    print(f"best set: {result.best_dir}")
    _report(out, "distill" if distributed.is_main() else None, result.seconds)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from datadistill.recipes import load_config

    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # `run ipc=10`
    recipe, cfg = load_config(args.config, args.overrides)
    out = checks.check_output_folder(args.out or recipe.default_out(cfg))
    print(f"datadistill run: {recipe.label(cfg).replace(', ', ' on ', 1)} -> {out}")
    kw = {} if args.experts is None else {"expert_dir": args.experts}
    if kw and recipe.name != "tm":
        raise ConfigError(f"--experts is for trajectory matching; {args.config} runs the "
                          f"'{recipe.name}' recipe")
    result = recipe.run(cfg, out, progress=not args.quiet, restart=args.restart, **kw)
    for line in recipe.lines(result, out):
        print(line)
    _report(out)  # the recipe's run wrote it
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from datadistill.data import dataset_info
    from datadistill.tm.memory import GB, estimate_config, free_memory
    from datadistill.tm.pipeline import distill_config

    cfg = _pipeline(args)
    dcfg = distill_config(cfg)
    info = dataset_info(dcfg.dataset, root=dcfg.data_root)
    est = estimate_config(dcfg, info, free=free_memory(dcfg.device))
    fp, u = est.footprint, est.unrolled
    print(f"{dcfg.method} on {dcfg.dataset}, IPC {dcfg.ipc}: {u.details['batch']} images per "
          f"step, {dcfg.syn_steps} steps, {dcfg.model} ({fp.num_params:,} parameters), "
          f"{fp.per_image_step_mb():.2f} MB per image and step, device {dcfg.device}")
    print(f"  unrolled: {u.summary()}")
    print(f"  adjoint (micro_batch {est.adjoint.details['micro_batch']}): "
          f"{est.adjoint.summary()}")
    verdict = "fits" if u.total <= est.free else "does NOT fit"
    print(f"free on {dcfg.device}: {est.free / GB:.2f} GB; unrolled {verdict}")
    if est.fits_micro_batch is None:
        print("  adjoint does not fit even with distill.micro_batch=1")
    else:
        print(f"  adjoint fits with distill.micro_batch={est.fits_micro_batch} "
              f"({est.fitting.total / GB:.2f} GB)")
    _print_process_table(dcfg, info)
    return 0


def _print_process_table(dcfg, info) -> None:
    """Adjoint peak per GPU under torchrun with 1, 2, 4, 8 processes (unrolled cannot shard)."""
    from datadistill.tm.memory import GB, process_table

    print(f"adjoint peak per GPU (device memory; micro_batch {dcfg.micro_batch}):")
    for k, est in process_table(dcfg, info, device="cuda"):
        print(f"  {k} process{'es' if k > 1 else '  '}: {est.total / GB:6.2f} GB "
              f"({est.details['batch']} images per step and process; graph "
              f"{est.graph / GB:.2f}, state {est.state / GB:.2f}, snapshots "
              f"{est.snapshots / GB:.2f})")


def cmd_repair(args: argparse.Namespace) -> int:
    from datadistill.tm.pipeline import repair_run

    for what in repair_run(args.out, progress=not args.quiet, experts=args.experts):
        print(f"rebuilt {what}")
    print(f"report written to {Path(args.out) / 'eval.json'}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from datadistill.tm.presets import presets_table

    print(presets_table())
    return 0


def cmd_import_buffers(args: argparse.Namespace) -> int:
    from datadistill.experts import ExpertConfig, import_replay_buffers

    store = import_replay_buffers(args.files, args.out, ExpertConfig(
        dataset=args.dataset, model=args.model, zca=args.zca))
    print(f"imported {plural(len(store), 'expert')} into {args.out}")
    return 0


# ---------------------------------------------------------------- INFER
def cmd_teachers(args: argparse.Namespace) -> int:
    from datadistill.infer import load_infer_config, train_teachers

    cfg = load_infer_config(args.config, args.overrides)
    out = checks.check_output_folder(args.out or cfg.teacher_dir or f"runs/{cfg.dataset}_teachers")
    store = train_teachers(cfg, out, progress=not args.quiet)
    for arch in store.archs():
        print(f"{arch}: test accuracy {100 * store.meta(arch)['test_accuracy']:.2f} %")
    print(f"teachers written to {out}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from datadistill.infer import load_infer_config, run_infer
    from datadistill.infer.recipe import infer_lines

    cfg = load_infer_config(args.config, args.overrides)
    out = checks.check_output_folder(args.out or f"runs/{cfg.dataset}_infer_ipc{cfg.ipc}")
    result = run_infer(cfg, out, progress=not args.quiet)
    for line in infer_lines(result, out):
        print(line)
    _report(out)  # run_infer wrote it
    return 0


# ---------------------------------------------------------------- eval / baseline
def report_path(args: argparse.Namespace) -> Path | None:
    """The JSON report `eval` or `baseline` writes (None for other commands)."""
    if args.command == "score" or (args.command == "eval" and args.protocol == "ddranking"):
        return Path(args.out) if args.out else Path(args.path) / "ddranking.json"
    if args.command == "challenge":
        return Path(args.out or ".") / "challenge.json"
    if args.command == "eval":
        folder = Path(args.path) if not Path(args.path).is_file() else Path(args.path).parent
        return Path(args.out) if args.out else folder / "eval.json"  # beside a legacy file
    if args.command == "baseline":
        return Path(args.out or f"baseline_{args.kind}_{args.dataset}.json")
    return None


def _load_set_and_data(args: argparse.Namespace):
    """The distilled set at args.path and its dataset prepared in the set's image space."""
    from datadistill.artifacts.distilled import load_any, load_distilled
    from datadistill.data import prepare

    path = Path(args.path)
    if (path / "meta.json").is_file():
        ds = load_distilled(path)
        name, zca = ds.info.name, ds.space == "zca"
    elif args.dataset is None:
        ds = load_any(path)  # raises the error naming what is missing
    else:
        ds, name, zca = None, args.dataset, args.zca
    # A ZCA set is tested in the ZCA space fitted on the training split, as the official
    # evaluation does; the fit is deterministic, so it equals the one stored with the set.
    data = prepare(name, args.data_root, zca=zca, download=args.download)
    if ds is None:
        ds = load_any(path, dataset=name, zca=data.zca)
        hint = "--zca given" if zca else "pass --zca for a set distilled with ZCA"
        print(f"{path}: a legacy set does not record its image space; taken as {ds.space} "
              f"({hint})")
    return ds, data


def cmd_eval(args: argparse.Namespace) -> int:
    if args.protocol == "ddranking":
        return cmd_score(args)
    from datadistill.evaluation.ddranking import hard_labels_for
    from datadistill.evaluation.protocols import evaluate, evaluate_cross

    t0 = time.perf_counter()
    ds, data = _load_set_and_data(args)
    test = data.test
    labels = ds.labels
    if args.hard_labels:  # "argmax" of soft labels, or "class_order" (DD-Ranking's)
        labels = hard_labels_for(ds.labels, data.info.num_classes, args.hard_labels)
    lr = args.lr if args.lr is not None else ds.lr
    common = dict(
        protocol=args.protocol, lr=lr, num_runs=args.runs, epochs=args.epochs,
        seed=args.seed, device=args.device, progress=not args.quiet,
        report=args.report, period=args.period, unofficial=args.unofficial, space=ds.space,
    )
    models = args.models or ["convnet"]
    reports = (
        evaluate_cross(ds.images, labels, test, models=models, **common)
        if len(models) > 1
        else {models[0]: evaluate(ds.images, labels, test, model=models[0], **common)}
    )
    for name, rep in reports.items():
        print(f"{args.path} [{name}]: {_fmt(rep)}")
        if "best_mean" in rep.settings:
            print(f"  best of tests every {rep.settings['period']} epochs: "
                  f"{100 * rep.settings['best_mean']:.2f} ± {100 * rep.settings['best_std']:.2f} %")
        if rep.settings.get("labels_replaced"):
            print(f"  note: {rep.settings['labels_replaced']}")
        if rep.settings.get("official") is False:
            print("  UNOFFICIAL challenge score: " + "; ".join(rep.settings["unofficial_settings"]))
    # model -> report (classic) or model_protocol -> report; each records its world_size
    new = {name: {**rep.to_dict(), **distributed.metadata()} for name, rep in reports.items()}
    out = _write_report(merge_evaluations(report_path(args), new), report_path(args), top=False)
    print(f"report written to {out}")
    _report(out.parent, "eval", time.perf_counter() - t0)
    return 0


def eval_key(report: dict) -> str:
    """The key of a set's evaluation in its eval.json: the model for the classic protocol
    (as single-protocol files have it), ``<model>_<protocol>`` for the others."""
    model, protocol = report.get("model", "?"), report.get("protocol", "classic")
    return model if protocol == "classic" else f"{model}_{protocol}"


def merge_evaluations(path: Path, new: dict[str, dict]) -> dict[str, dict]:
    """``new`` (model -> report) merged into the set's evaluations already in ``path``: an
    evaluation of another protocol or model stays; one of the same protocol and model is
    replaced by the new one. A file that is not a set's evaluations (e.g. a run's eval.json)
    is replaced, as before."""
    import json

    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or "config" in old:
        old = {}
    merged = {eval_key(rep): rep for rep in old.values()
              if isinstance(rep, dict) and "protocol" in rep and "accuracies" in rep}
    merged.update({eval_key(rep): rep for rep in new.values()})
    return merged


def cmd_baseline(args: argparse.Namespace) -> int:
    from datadistill.data import prepare
    from datadistill.evaluation.baselines import baseline_full, baseline_random

    data = prepare(args.dataset, args.data_root, zca=args.zca, download=args.download)
    common = dict(num_runs=args.runs, seed=args.seed, device=args.device, progress=not args.quiet)
    if args.kind == "random":
        report = baseline_random(data, args.ipc, epochs=args.epochs, **common)
        label = f"random subset, IPC {args.ipc}"
    else:
        report = baseline_full(data, epochs=args.epochs, **common)
        label = f"full training set, {args.epochs} epochs"
    print(f"{args.dataset} {label}: {_fmt(report)}")
    out = _write_report(report.to_dict(), report_path(args))
    print(f"report written to {out}")
    return 0


def _write_report(data: dict, path: Path, *, top: bool = True) -> Path:
    """Rank 0 writes a finished report, with the ``world_size`` that made it at the top level
    (``top``; else the caller put it in each entry); returns its path (the other ranks of a
    torchrun job only return the path)."""
    from datadistill.io import write_report

    if not distributed.is_main():
        return Path(path)
    return write_report({**data, **distributed.metadata()} if top else data, path)


# ---------------------------------------------------------------- report.html
def _report(folder: Path, stage: str | None = None, seconds: float | None = None) -> None:
    """Write report.html when ``stage`` is given (never fails the command); print its path."""
    from datadistill.recipes import load_recipes
    from datadistill.report.page import REPORT_FILE, write_report

    if stage is not None and distributed.is_main():
        load_recipes()  # the page describes the run's method from the recipes' registry
        write_report(folder, stage=stage, seconds=seconds)
    if (Path(folder) / REPORT_FILE).is_file():
        print(f"page: {Path(folder) / REPORT_FILE}")


def cmd_report(args: argparse.Namespace) -> int:
    from datadistill.recipes import load_recipes
    from datadistill.report.page import build_report

    if Path(args.out).is_dir():  # a missing folder: build_report names it
        checks.check_output_folder(args.out, "run folder")
    load_recipes()  # the page describes the run's method from the recipes' registry
    print(f"page written to {build_report(args.out)}")
    return 0


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="(re)build report.html of a run folder")
    p.add_argument("out", help="run folder, e.g. runs/digits_mtt_ipc1")
    p.set_defaults(func=cmd_report)


# ---------------------------------------------------------------- DD-Ranking / challenge
def _ddranking_config(args: argparse.Namespace, ds):
    from datadistill.evaluation.ddranking import preset_for

    name = args.preset or ds.method
    over: dict = {"train": {}, "full": {}, "rounds": args.runs or 5, "ars": not args.no_ars,
                  "hard_label_variant": args.hard_label_variant or "class_order"}
    if args.epochs is not None:  # the step keeps its place at half the run (500 of 1000)
        over["train"].update(epochs=args.epochs, step_size=max(1, args.epochs // 2))
    if args.full_epochs is not None:
        over["full"].update(epochs=args.full_epochs, step_size=max(1, args.full_epochs // 2))
    if args.full_accuracy is not None:
        over["full_accuracy"] = args.full_accuracy
    if args.train_full:
        over["full_from_cache"] = False
    return preset_for(name, **over)


def cmd_score(args: argparse.Namespace) -> int:
    from datadistill.evaluation.ddranking import score
    from datadistill.evaluation.protocols import build_network

    t0 = time.perf_counter()
    ds, data = _load_set_and_data(args)
    cfg = _ddranking_config(args, ds)
    teachers = None
    if getattr(args, "teacher", None):
        teachers = _load_teacher(args.teacher, build_network(cfg.model, data.info, 0,
                                                             cfg.model_kwargs))
    lr = args.lr if args.lr is not None else ds.lr
    report = score(ds.images, ds.labels, data, cfg, syn_lr=lr, teachers=teachers,
                   seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"{args.path}: {report}")
    for key in ("syn", "syn_hard", "random", "full"):
        if key in report.summary:
            s = report.summary[key]
            print(f"  {key:<9} {100 * s['mean']:6.2f} ± {100 * s['std']:.2f} % (best of tests)")
    out = _write_report(report.to_dict(),
                        Path(args.out) if args.out else Path(args.path) / "ddranking.json")
    print(f"report written to {out}")
    _report(out.parent, args.command, time.perf_counter() - t0)  # beside the set's other
    # evaluations on its page
    return 0


def _load_teacher(path: str, net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with the state_dict in ``path``; a file that is not one is one error line."""
    from datadistill.errors import ArtifactError
    from datadistill.io import load_tensors

    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"--teacher {path} does not hold a state_dict (a mapping of parameter "
                            "names to tensors); save one with torch.save(model.state_dict(), ...)")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ArtifactError(f"--teacher {path} is not a state_dict of this preset's model "
                            f"({str(err).splitlines()[0][:200]}); give the teacher of this "
                            "dataset and model") from None
    return net


CHALLENGE_RUNS = "challenge_runs.jsonl"  # finished networks of `challenge`, per dataset


def cmd_challenge(args: argparse.Namespace) -> int:
    from datadistill.data import prepare
    from datadistill.evaluation.challenge import (
        FILES,
        check_submissions,
        combined_score,
        submission_images,
        write_scores_txt,
    )
    from datadistill.evaluation.protocols import evaluate
    from datadistill.runtime.runlog import RunCache

    submit = Path(args.submit_dir)
    loaded = _challenge_files(submit, FILES.values())  # both files, before any training
    images = {d: submission_images(loaded[f], submit / f) for d, f in FILES.items()}
    check_submissions(images, epochs=args.epochs, num_runs=args.runs, unofficial=args.unofficial)
    out = Path(args.out or ".")
    scores, reports = {}, {}
    for dataset, x in images.items():  # finished networks are kept: a rerun resumes
        data = prepare(dataset, args.data_root, download=args.download)
        rep = evaluate(x, None, data.test, protocol="challenge", num_runs=args.runs,
                       epochs=args.epochs, seed=args.seed, device=args.device,
                       progress=not args.quiet, unofficial=args.unofficial,
                       cache=RunCache(out / CHALLENGE_RUNS, dataset))
        scores[dataset], reports[dataset] = rep.mean, rep.to_dict()
        print(f"{dataset}: {_fmt(rep)}")
    total = combined_score(scores)
    official = all(r["settings"]["official"] for r in reports.values())
    print(f"combined score: {total:.4f}" + ("" if official else " (UNOFFICIAL settings)"))
    if distributed.is_main():
        write_scores_txt(out / "scores.txt", total)
    _write_report({"score": total, "official": official, **reports}, out / "challenge.json")
    print(f"scores.txt and challenge.json written to {out}")
    return 0


def _challenge_files(folder: Path, names) -> dict[str, object]:
    """What each of the submission's files holds, all read before any evaluation starts; a
    missing or unreadable file is one error line."""
    from datadistill.io import load_tensors

    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ArtifactError(f"{folder} holds no {' and no '.join(missing)}; pass the folder "
                            f"that holds the submission's {' and '.join(names)}")
    return {name: load_tensors(folder / name) for name in names}


# ---------------------------------------------------------------- parser
def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="independent evaluation runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--download", action="store_true", help="download missing dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=None, help="where to write the JSON report")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", choices=["last", "best_of_periodic", "both"], default="last",
                   help="classic: accuracy after the last epoch (official loop), the best of "
                        "tests every --period epochs (MTT/FTD's reporting), or both")
    p.add_argument("--period", type=int, default=100, help="epochs between periodic tests")
    p.add_argument("--unofficial", action="store_true",
                   help="challenge: allow non-official settings; the report is marked")


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="DD-Ranking config: a method (mtt, datm, "
                   "sre2l, ...) or preset (hard_dsa, soft_sce_dsa, ...); default: the set's method")
    p.add_argument("--hard-label-variant", choices=["class_order", "argmax"], default=None,
                   help="soft-label sets' hard-label training (default class_order, DD-Ranking)")
    p.add_argument("--full-epochs", type=int, default=None,
                   help="full-data reference epochs (default 200)")
    p.add_argument("--full-accuracy", type=float, default=None,
                   help="known full-data accuracy (fraction): skip training the reference")
    p.add_argument("--train-full", action="store_true",
                   help="train the full-data reference even where DD-Ranking uses its cached "
                        "accuracy (ResNet-18-BN on Tiny ImageNet and ImageNet-1K)")
    p.add_argument("--teacher", default=None,
                   help="soft-label sets: state_dict of a trained teacher (default: train one)")
    p.add_argument("--no-ars", action="store_true", help="skip the no-augmentation trainings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datadistill", description="Dataset distillation: experts, matching, evaluation."
    )
    parser.add_argument("--version", action="version", version=f"datadistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    _add_threads_option(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("configs", help="list, show or copy the shipped configs")
    p.add_argument("action", choices=["ls", "show", "cp"])
    p.add_argument("name", nargs="?", help="config name, e.g. cifar10/mtt_ipc1")
    p.add_argument("dest", nargs="?", default=".", help="cp: destination file or folder")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("validate", help="check a config file and overrides without running")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("eval", help="evaluate a distilled set (ours or a legacy *_best.pt triple)")
    p.add_argument("path", help="distilled-set directory, or a folder with images_best.pt")
    p.add_argument("--dataset", default=None, help="needed for legacy sets")
    p.add_argument("--zca", action="store_true", help="legacy set lives in ZCA space")
    p.add_argument("--protocol", choices=["classic", "challenge", "ddranking"],
                   default="classic", help="ddranking: the same as `datadistill score`")
    p.add_argument("--models", nargs="*", default=None, help="cross-architecture evaluation")
    p.add_argument("--lr", type=float, default=None, help="override the set's learned lr")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--hard-labels", nargs="?", const="argmax", default=None,
                   choices=["argmax", "class_order"],
                   help="train soft-label sets with hard labels: argmax of the soft labels "
                        "(default) or class_order (DD-Ranking's)")
    _report_args(p)
    _score_args(p)
    _common_run_args(p)
    p.set_defaults(func=cmd_eval, runs=None)  # None: 5 classic, 3 challenge, 5 ddranking

    p = sub.add_parser("score", help="DD-Ranking scores (HLR, IOR, LRS, ARS) of a distilled set")
    p.add_argument("path", help="distilled-set directory, or a folder with images_best.pt")
    p.add_argument("--dataset", default=None, help="needed for legacy sets")
    p.add_argument("--zca", action="store_true", help="legacy set lives in ZCA space")
    p.add_argument("--lr", type=float, default=None, help="override the set's learned lr")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--hard-labels", default=None, help=argparse.SUPPRESS)
    _score_args(p)
    _common_run_args(p)
    p.set_defaults(func=cmd_score, runs=None)  # None: DD-Ranking's 5 rounds

    p = sub.add_parser("challenge", help="ECCV-2024 challenge scorer: cifar100.pt + "
                       "tinyimagenet.pt -> scores.txt (strict unless --unofficial)")
    p.add_argument("submit_dir", help="folder holding cifar100.pt and tinyimagenet.pt")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--unofficial", action="store_true",
                   help="allow non-official settings; the report is marked unofficial")
    _common_run_args(p)
    p.set_defaults(func=cmd_challenge, runs=3)

    p = sub.add_parser("baseline", help="random-subset or full-data baseline")
    p.add_argument("kind", choices=["random", "full"])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--zca", action="store_true")
    _common_run_args(p)
    p.set_defaults(func=cmd_baseline)

    for name, func, text in (
        ("run", cmd_run, "the main job: experts if missing, distill, evaluate vs random"),
        ("experts", cmd_experts, "train expert trajectories (resumes)"),
        ("distill", cmd_distill, "trajectory matching from an expert store (resumes)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", nargs="?", default=None,
                       help="shipped config name or YAML file (default: digits/mtt_ipc1)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ipc=10")
        p.add_argument("--out", default=None,
                       help="run folder (default runs/<data>_<method>_ipcN); its expert store "
                            "is <out>/experts unless --experts names another")
        p.add_argument("--experts", default=None, metavar="STORE",
                       help="expert store (default <out>/experts, or distill.expert_dir): "
                            + ("read" if name == "distill" else "trained there if missing"))
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_download_option(p)
        if name in ("run", "distill"):
            p.add_argument("--restart", action="store_true",
                           help="start the distillation and the final evaluation over, ignoring "
                                "the checkpoint (experts are kept)")
        p.set_defaults(func=func)

    p = sub.add_parser("estimate", help="predicted peak memory of one distill iteration")
    p.add_argument("config", nargs="?", default=None,
                   help="shipped config name or YAML file (default: digits/mtt_ipc1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.syn_steps=80")
    _add_download_option(p)
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("repair", help="rebuild best/, last/ and eval.json of a finished run")
    p.add_argument("out", help="the run folder")
    p.add_argument("--experts", default=None, metavar="STORE",
                   help="the run's expert store, when it was moved (default: where the run "
                        "recorded it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("presets", help="what each method preset changes, and its paper")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("import-buffers", help="convert official replay_buffer_*.pt files")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="convnet")
    p.add_argument("--zca", action="store_true", help="the buffers were trained with ZCA")
    p.set_defaults(func=cmd_import_buffers)

    for name, func, text in (
        ("teachers", cmd_teachers, "train INFER's BatchNorm teachers (resumable)"),
        ("infer", cmd_infer, "INFER: compensators, static labels, student evaluation"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="shipped config name or YAML file")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ipc=50")
        p.add_argument("--out", default=None, help="output folder")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_download_option(p)
        p.set_defaults(func=func)

    _add_report_parser(sub)
    for p in sub.choices.values():  # `datadistill run --threads 2` as well as before `run`
        _add_threads_option(p, argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------- threads
# One torch thread, chosen with benchmarks/threads.py (benchmarks/RESULTS.md section 8): for the
# small models of digits, MNIST and CIFAR at low IPC a second thread splits little work and
# spins against any other busy process on the same cores (several times slower there).
DEFAULT_THREADS = 1


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count once for this process; returns the count in use.

    ``None`` (no ``--threads``): :data:`DEFAULT_THREADS`, unless ``OMP_NUM_THREADS`` is set,
    which is then respected. ``0``: torch's own default (one per core).

    Example:
        >>> apply_threads(1)
        1
    """
    if requested is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        requested = DEFAULT_THREADS
    if requested < 0:
        raise ConfigError(f"--threads must be >= 0 (0: one per core), got {requested}")
    if requested > max_threads():  # OpenMP crashes the process on absurd counts (100000)
        raise ConfigError(f"--threads {requested} is more than {max_threads()} (4 per core of "
                          f"the {os.cpu_count()} here, at least 256); use 0 for one per core")
    if requested > 0:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def _add_download_option(p: argparse.ArgumentParser) -> None:
    """Config commands: ``--download`` is the override ``download=true`` (parse_args)."""
    p.add_argument("--download", action="store_true",
                   help="download missing dataset files (the same as download=true)")


def max_threads() -> int:
    """The largest ``--threads`` accepted: 4 per core, at least 256."""
    return max(256, 4 * (os.cpu_count() or 1))


def _add_threads_option(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--threads", type=int, default=default, metavar="N",
                   help=f"torch CPU threads (default {DEFAULT_THREADS}, or OMP_NUM_THREADS "
                        "when set; 0: one per core)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with options anywhere: ``run CONFIG --out DIR ipc=10`` works.

    argparse stops filling ``overrides`` at the first option; the key=value words after it
    come back unrecognised and are appended, in order. Anything else is still an error.

    Example:
        >>> parse_args(build_parser(), ["run", "c", "--out", "d", "ipc=2"]).overrides
        ['ipc=2']
    """
    args, extra = parser.parse_known_args(argv)
    overrides = [w for w in extra if "=" in w and not w.startswith("-")]
    if overrides and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
        extra = [w for w in extra if w not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "download", False) and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, "download=true"]  # config commands
    if getattr(args, "device", "") is None:  # resolved here: it imports torch
        from datadistill.runtime.devices import default_device

        args.device = default_device()
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it stops like Ctrl-C (files stay whole)."""


def _terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def command_guard(args: argparse.Namespace):
    """Around every command: the report of eval/baseline is locked for this process
    (run, experts, distill, teachers and infer lock their folders themselves)."""
    from datadistill.checks import check_eval_args, check_report_path
    from datadistill.runtime.lock import lock_file

    report = report_path(args)
    if report is None:
        yield
        return
    if args.command in ("eval", "score") and not Path(args.path).exists():  # before the lock
        raise ArtifactError(f"{args.path} does not exist; pass a distilled-set folder (e.g. "
                            "runs/digits_mtt_ipc1/distill/best) or a folder with images_best.pt")
    check_eval_args(args)  # before the evaluation, which can take hours
    check_report_path(report)
    with lock_file(report):
        yield


def main(argv: list[str] | None = None) -> int:
    """The ``datadistill`` command; under torchrun, a rank's error also goes to torchrun's
    failure summary (its ``record`` decorator), which names the rank that failed."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun (distributed.env_world_size,
        # read without importing torch, which --version and --help do not need)
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _record_error(err: BaseException) -> None:
    """Under torchrun, hand a handled error to torchrun's summary of the failed rank."""
    if distributed.active() and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        with contextlib.suppress(Exception):
            get_error_handler().record_exception(err)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        apply_threads(args.threads)
    except DatadistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        distributed.init_from_env()  # torchrun: join the other ranks; plain run: no-op
    except DatadistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    main_rank = distributed.is_main()
    logging.basicConfig(
        level=logging.INFO if args.verbose and main_rank else logging.WARNING,
        format=("%(levelname)s %(name)s: %(message)s" if main_rank
                else f"%(levelname)s rank {distributed.rank()} %(name)s: %(message)s"),
    )
    # `kill`, a job's timeout: stop like Ctrl-C. Under torchrun, SIGTERM is how the agent stops
    # the other ranks when one fails, and a rank waiting in a collective runs no Python handler:
    # keep the default (end at once; writes are atomic and locks die with their process).
    handler = signal.SIG_DFL if distributed.active() else _terminated
    previous = signal.signal(signal.SIGTERM, handler)
    rc = 1
    try:
        with _quiet_unless_main(main_rank):
            rc = _run(args)
        return rc
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.shutdown(finished=rc == 0)


@contextlib.contextmanager
def _quiet_unless_main(main_rank: bool):
    """Rank 0 alone prints results; other ranks keep stderr (warnings, errors) only."""
    if main_rank:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


RESUMING = ("experts", "teachers", "challenge")  # keep their finished work


def interrupt_hint(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C: only what the interrupted command really offers."""
    if hasattr(args, "restart"):  # run, distill
        return ("interrupted; rerun the same command to resume (or add --restart to start the "
                "distillation over)")
    if getattr(args, "command", None) in RESUMING:
        return "interrupted; rerun the same command to resume"
    return "interrupted"


def _run(args: argparse.Namespace) -> int:
    try:
        with command_guard(args):
            return args.func(args)
    except DatadistillError as err:
        if getattr(err, "text", None):  # a finished report that could not be written
            print(err.text, end="")
        print(f"error: {err}", file=sys.stderr)
        _record_error(err)
        return 2
    except BrokenPipeError:  # e.g. `datadistill presets | head`
        return 0
    except RuntimeError as err:  # torchrun: a collective whose peer process is gone
        text = distributed.peer_failure(err)
        if text is None:
            raise
        # Not handed to torchrun's summary: its handler records the exception being handled
        # (gloo's, with its traceback); the summary gives this rank's exit code.
        print(f"error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(interrupt_hint(args), file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
