"""The evaluation sub-commands: ``eval`` (a distilled set under a protocol), ``score``
(DD-Ranking), ``challenge`` (the ECCV-2024 scorer) and ``baseline`` (random subset, full data).

Each writes one JSON report, which the CLI locks for the command (:func:`guard` checks the
arguments and names the file first). Each handler imports what it runs, so building the CLI's
parser loads no torch (:mod:`datadistill.runtime.commands`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from datadistill.errors import ArtifactError
from datadistill.runtime.commands import Command, Page

if TYPE_CHECKING:
    from torch import nn

CHALLENGE_RUNS = "challenge_runs.jsonl"  # finished networks of `challenge`, per dataset


def _fmt(report) -> str:
    from datadistill.runtime.progress import plural

    return (
        f"{100 * report.mean:.2f} ± {100 * report.std:.2f} % "
        f"({plural(len(report.accuracies), 'run')}, {report.model}, {report.protocol})"
    )


def report_path(args: argparse.Namespace) -> Path:
    """The JSON report the command writes."""
    if args.command == "score" or (args.command == "eval" and args.protocol == "ddranking"):
        return Path(args.out) if args.out else Path(args.path) / "ddranking.json"
    if args.command == "challenge":
        return Path(args.out or ".") / "challenge.json"
    if args.command == "eval":
        folder = Path(args.path) if not Path(args.path).is_file() else Path(args.path).parent
        return Path(args.out) if args.out else folder / "eval.json"  # beside a legacy file
    return Path(args.out or f"baseline_{args.kind}_{args.dataset}.json")  # baseline


def guard(args: argparse.Namespace) -> Path:
    """Before the evaluation, which can take hours: the set exists, the numbers are valid and
    the report can be written; returns the report's path, which the CLI locks."""
    from datadistill.checks import check_eval_args, check_report_path

    report = report_path(args)
    if args.command in ("eval", "score") and not Path(args.path).exists():  # before the lock
        raise ArtifactError(f"{args.path} does not exist; pass a distilled-set folder (e.g. "
                            "runs/digits_mtt_ipc1/distill/best) or a folder with images_best.pt")
    check_eval_args(args)
    check_report_path(report)
    return report


def _write_report(data: dict, path: Path, *, top: bool = True) -> Path:
    """Rank 0 writes a finished report, with the ``world_size`` that made it at the top level
    (``top``; else the caller put it in each entry); returns its path (the other ranks of a
    torchrun job only return the path)."""
    from datadistill import distributed
    from datadistill.io import write_report

    if not distributed.is_main():
        return Path(path)
    return write_report({**data, **distributed.metadata()} if top else data, path)


def _load_set_and_data(args: argparse.Namespace):
    """The distilled set at args.path and its dataset prepared in the set's image space."""
    from datadistill.artifacts.distilled import load_distilled
    from datadistill.artifacts.legacy import load_any
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


# ---------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> Page:
    if args.protocol == "ddranking":
        return cmd_score(args)
    from datadistill import distributed
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
        _print_eval(args.path, name, rep)
    # model -> report (classic) or model_protocol -> report; each records its world_size
    new = {name: {**rep.to_dict(), **distributed.metadata()} for name, rep in reports.items()}
    out = _write_report(merge_evaluations(report_path(args), new), report_path(args), top=False)
    print(f"report written to {out}")
    return Page(out.parent, "eval", time.perf_counter() - t0)


def _print_eval(path: str, name: str, rep) -> None:
    print(f"{path} [{name}]: {_fmt(rep)}")
    if "best_mean" in rep.settings:
        print(f"  best of tests every {rep.settings['period']} epochs: "
              f"{100 * rep.settings['best_mean']:.2f} ± {100 * rep.settings['best_std']:.2f} %")
    if rep.settings.get("labels_replaced"):
        print(f"  note: {rep.settings['labels_replaced']}")
    if rep.settings.get("official") is False:
        print("  UNOFFICIAL challenge score: " + "; ".join(rep.settings["unofficial_settings"]))


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


# ---------------------------------------------------------------- baseline
def cmd_baseline(args: argparse.Namespace) -> None:
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


# ---------------------------------------------------------------- DD-Ranking
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


def cmd_score(args: argparse.Namespace) -> Page:
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
    out = _write_report(report.to_dict(), report_path(args))
    print(f"report written to {out}")
    # beside the set's other evaluations on its page
    return Page(out.parent, args.command, time.perf_counter() - t0)


def _load_teacher(path: str, net: nn.Module) -> nn.Module:
    """``net`` with the state_dict in ``path``; a file that is not one is one error line."""
    import torch

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


# ---------------------------------------------------------------- challenge
def cmd_challenge(args: argparse.Namespace) -> None:
    from datadistill import distributed
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
    _write_report({"score": total, "official": official, **reports}, report_path(args))
    print(f"scores.txt and challenge.json written to {out}")


def _challenge_files(folder: Path, names) -> dict[str, object]:
    """What each of the submission's files holds, all read before any evaluation starts; a
    missing or unreadable file is one error line."""
    from datadistill.io import load_tensors

    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ArtifactError(f"{folder} holds no {' and no '.join(missing)}; pass the folder "
                            f"that holds the submission's {' and '.join(names)}")
    return {name: load_tensors(folder / name) for name in names}


# ---------------------------------------------------------------- arguments
def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="independent evaluation runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--download", action="store_true", help="download missing dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=None, help="where to write the JSON report")


def _set_args(p: argparse.ArgumentParser) -> None:
    """The set to evaluate, and how to read a legacy one."""
    p.add_argument("path", help="distilled-set directory, or a folder with images_best.pt")
    p.add_argument("--dataset", default=None, help="needed for legacy sets")
    p.add_argument("--zca", action="store_true", help="legacy set lives in ZCA space")


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
    _common_run_args(p)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _set_args(p)
    p.add_argument("--protocol", choices=["classic", "challenge", "ddranking"],
                   default="classic", help="ddranking: the same as `datadistill score`")
    p.add_argument("--models", nargs="*", default=None, help="cross-architecture evaluation")
    p.add_argument("--lr", type=float, default=None, help="override the set's learned lr")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--hard-labels", nargs="?", const="argmax", default=None,
                   choices=["argmax", "class_order"],
                   help="train soft-label sets with hard labels: argmax of the soft labels "
                        "(default) or class_order (DD-Ranking's)")
    p.add_argument("--report", choices=["last", "best_of_periodic", "both"], default="last",
                   help="classic: accuracy after the last epoch (official loop), the best of "
                        "tests every --period epochs (MTT/FTD's reporting), or both")
    p.add_argument("--period", type=int, default=100, help="epochs between periodic tests")
    p.add_argument("--unofficial", action="store_true",
                   help="challenge: allow non-official settings; the report is marked")
    _score_args(p)
    p.set_defaults(runs=None)  # None: 5 classic, 3 challenge, 5 ddranking


def _score_arguments(p: argparse.ArgumentParser) -> None:
    _set_args(p)
    p.add_argument("--lr", type=float, default=None, help="override the set's learned lr")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--hard-labels", default=None, help=argparse.SUPPRESS)
    _score_args(p)
    p.set_defaults(runs=None)  # None: DD-Ranking's 5 rounds


def _challenge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submit_dir", help="folder holding cifar100.pt and tinyimagenet.pt")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--unofficial", action="store_true",
                   help="allow non-official settings; the report is marked unofficial")
    _common_run_args(p)
    p.set_defaults(runs=3)


def _baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["random", "full"])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--zca", action="store_true")
    _common_run_args(p)


COMMANDS = [
    Command("eval", "evaluate a distilled set (ours or a legacy *_best.pt triple)",
            _eval_arguments, cmd_eval, guard),
    Command("score", "DD-Ranking scores (HLR, IOR, LRS, ARS) of a distilled set",
            _score_arguments, cmd_score, guard),
    Command("challenge", "ECCV-2024 challenge scorer: cifar100.pt + tinyimagenet.pt -> "
            "scores.txt (strict unless --unofficial)", _challenge_arguments, cmd_challenge,
            guard, resumes=True),
    Command("baseline", "random-subset or full-data baseline", _baseline_arguments,
            cmd_baseline, guard),
]
