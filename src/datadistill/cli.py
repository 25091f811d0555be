"""Command-line interface: a thin argparse shell over the Python API.

Every subcommand maps to one library call; errors raised on purpose (DatadistillError) are
printed as one line with exit status 2, so their message (which names the fix) is what the
user sees.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from datadistill import __version__
from datadistill.devices import default_device
from datadistill.errors import ConfigError, DatadistillError


def _fmt(report) -> str:
    return (
        f"{100 * report.mean:.2f} ± {100 * report.std:.2f} % "
        f"({len(report.accuracies)} runs, {report.model}, {report.protocol})"
    )


# ---------------------------------------------------------------- configs / validate
def cmd_configs(args: argparse.Namespace) -> int:
    from datadistill.config import list_configs, resolve_config_path

    if args.action == "ls":
        for name in list_configs():
            print(name)
    elif args.action == "show":
        print(resolve_config_path(args.name).read_text(), end="")
    elif args.action == "cp":
        src = resolve_config_path(args.name)
        dest = Path(args.dest)
        if dest.is_dir():
            dest = dest / src.name
        if dest.exists() and not args.force:
            print(f"error: {dest} exists; pass --force to overwrite it", file=sys.stderr)
            return 2
        shutil.copyfile(src, dest)
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
    from datadistill.pipeline import load_pipeline_config

    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # `run ipc=10`
    return load_pipeline_config(args.config, args.overrides)


def _run_dir(args: argparse.Namespace, cfg) -> Path:
    return Path(args.out or f"runs/{cfg.dataset}_{cfg.method}_ipc{cfg.ipc}")


def cmd_experts(args: argparse.Namespace) -> int:
    from datadistill.pipeline import train_pipeline_experts

    cfg = _pipeline(args)
    out = Path(args.out or f"runs/{cfg.dataset}_{cfg.method}_ipc{cfg.ipc}/experts")
    store = train_pipeline_experts(cfg, out, progress=not args.quiet)
    accs = [float(store.test_acc(i)[-1]) for i in range(len(store))]
    print(f"{len(store)} experts in {out}; final test accuracy "
          f"{100 * sum(accs) / len(accs):.2f} % on average")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from datadistill.distill import distill
    from datadistill.pipeline import distill_config

    cfg = _pipeline(args)
    out = _run_dir(args, cfg)
    expert_dir = args.experts or str(out / "experts")
    result = distill(distill_config(cfg, expert_dir=expert_dir), out / "distill",
                     progress=not args.quiet, resume=not args.restart)
    best = "n/a" if result.best_accuracy is None else f"{100 * result.best_accuracy:.2f} %"
    print(f"{result.iterations_done} iterations; best evaluation {best} at iteration "
          f"{result.best_iteration}; learned step size {result.final_syn_lr:.4g}")
    print(f"best set: {result.best_dir}")
    _report(out, "distill", result.seconds)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from datadistill.recipes import load_config

    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # `run ipc=10`
    recipe, cfg = load_config(args.config, args.overrides)
    out = Path(args.out or recipe.default_out(cfg))
    print(f"datadistill run: {recipe.label(cfg).replace(', ', ' on ', 1)} -> {out}")
    result = recipe.run(cfg, out, progress=not args.quiet, restart=args.restart)
    for line in recipe.lines(result, out):
        print(line)
    _report(out)  # the recipe's run wrote it
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from datadistill.data import dataset_info
    from datadistill.memory import GB, estimate_config, free_memory
    from datadistill.pipeline import distill_config

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
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from datadistill.repair import repair_run

    for what in repair_run(args.out, progress=not args.quiet):
        print(f"rebuilt {what}")
    print(f"report written to {Path(args.out) / 'eval.json'}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from datadistill.presets import presets_table

    print(presets_table())
    return 0


def cmd_import_buffers(args: argparse.Namespace) -> int:
    from datadistill.experts import import_replay_buffers

    store = import_replay_buffers(args.files, args.out, dataset=args.dataset, model=args.model,
                                  zca=args.zca)
    print(f"imported {len(store)} experts into {args.out}")
    return 0


# ---------------------------------------------------------------- INFER
def cmd_teachers(args: argparse.Namespace) -> int:
    from datadistill.infer import load_infer_config, train_teachers

    cfg = load_infer_config(args.config, args.overrides)
    out = Path(args.out or cfg.teacher_dir or f"runs/{cfg.dataset}_teachers")
    store = train_teachers(cfg, out, progress=not args.quiet)
    for arch in store.archs():
        print(f"{arch}: test accuracy {100 * store.meta(arch)['test_accuracy']:.2f} %")
    print(f"teachers written to {out}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from datadistill.infer import load_infer_config, run_infer
    from datadistill.recipes import infer_lines

    cfg = load_infer_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{cfg.dataset}_infer_ipc{cfg.ipc}")
    result = run_infer(cfg, out, progress=not args.quiet)
    for line in infer_lines(result, out):
        print(line)
    _report(out)  # run_infer wrote it
    return 0


# ---------------------------------------------------------------- eval / baseline
def report_path(args: argparse.Namespace) -> Path | None:
    """The JSON report `eval` or `baseline` writes (None for other commands)."""
    if args.command == "eval":
        folder = Path(args.path) if not Path(args.path).is_file() else Path(args.path).parent
        return Path(args.out) if args.out else folder / "eval.json"  # beside a legacy file
    if args.command == "baseline":
        return Path(args.out or f"baseline_{args.kind}_{args.dataset}.json")
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from datadistill.artifact import load_any, load_distilled
    from datadistill.data import prepare
    from datadistill.evaluate import evaluate, evaluate_cross, hard_labels_from
    from datadistill.io import write_report

    path = Path(args.path)
    t0 = time.perf_counter()
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
    test = data.test
    labels = hard_labels_from(ds.labels) if args.hard_labels else ds.labels
    lr = args.lr if args.lr is not None else ds.lr
    common = dict(
        protocol=args.protocol, lr=lr, num_runs=args.runs, epochs=args.epochs,
        seed=args.seed, device=args.device, progress=not args.quiet,
    )
    models = args.models or ["convnet"]
    reports = (
        evaluate_cross(ds.images, labels, test, models=models, **common)
        if len(models) > 1
        else {models[0]: evaluate(ds.images, labels, test, model=models[0], **common)}
    )
    for name, rep in reports.items():
        print(f"{args.path} [{name}]: {_fmt(rep)}")
    out = write_report({name: rep.to_dict() for name, rep in reports.items()}, report_path(args))
    print(f"report written to {out}")
    _report(out.parent, "eval", time.perf_counter() - t0)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from datadistill.baselines import baseline_full, baseline_random
    from datadistill.data import prepare
    from datadistill.io import write_report

    data = prepare(args.dataset, args.data_root, zca=args.zca, download=args.download)
    common = dict(num_runs=args.runs, seed=args.seed, device=args.device, progress=not args.quiet)
    if args.kind == "random":
        report = baseline_random(data, args.ipc, epochs=args.epochs, **common)
        label = f"random subset, IPC {args.ipc}"
    else:
        report = baseline_full(data, epochs=args.epochs, **common)
        label = f"full training set, {args.epochs} epochs"
    print(f"{args.dataset} {label}: {_fmt(report)}")
    out = write_report(report.to_dict(), report_path(args))
    print(f"report written to {out}")
    return 0


# ---------------------------------------------------------------- report.html
def _report(folder: Path, stage: str | None = None, seconds: float | None = None) -> None:
    """Write report.html when ``stage`` is given (never fails the command); print its path."""
    from datadistill.report import REPORT_FILE, write_report

    if stage is not None:
        write_report(folder, stage=stage, seconds=seconds)
    if (Path(folder) / REPORT_FILE).is_file():
        print(f"page: {Path(folder) / REPORT_FILE}")


def cmd_report(args: argparse.Namespace) -> int:
    from datadistill.report import build_report

    print(f"page written to {build_report(args.out)}")
    return 0


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="(re)build report.html of a run folder")
    p.add_argument("out", help="run folder, e.g. runs/digits_mtt_ipc1")
    p.set_defaults(func=cmd_report)


# ---------------------------------------------------------------- parser
def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="independent evaluation runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=default_device())
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--download", action="store_true", help="download missing dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=None, help="where to write the JSON report")


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
    p.add_argument("--protocol", choices=["classic", "challenge"], default="classic")
    p.add_argument("--models", nargs="*", default=None, help="cross-architecture evaluation")
    p.add_argument("--lr", type=float, default=None, help="override the set's learned lr")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--hard-labels", action="store_true", help="argmax soft labels first")
    _common_run_args(p)
    p.set_defaults(func=cmd_eval)

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
        p.add_argument("--out", default=None, help="run folder (default runs/<data>_<method>_ipcN)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "distill":
            p.add_argument("--experts", default=None, help="expert store (default <out>/experts)")
        if name in ("run", "distill"):
            p.add_argument("--restart", action="store_true",
                           help="start the distillation and the final evaluation over, ignoring "
                                "the checkpoint (experts are kept)")
        p.set_defaults(func=func)

    p = sub.add_parser("estimate", help="predicted peak memory of one distill iteration")
    p.add_argument("config", nargs="?", default=None,
                   help="shipped config name or YAML file (default: digits/mtt_ipc1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.syn_steps=80")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("repair", help="rebuild best/, last/ and eval.json of a finished run")
    p.add_argument("out", help="the run folder")
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
        p.set_defaults(func=func)

    _add_report_parser(sub)
    for p in sub.choices.values():  # `datadistill run --threads 2` as well as before `run`
        _add_threads_option(p, argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------- threads
# One torch thread: measured with benchmarks/threads.py (benchmarks/RESULTS.md section 8). For
# the small models of digits, MNIST and CIFAR at low IPC a second thread gains little on a
# quiet machine and spins against any other busy process on a shared one.
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
    if requested > 0:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


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
    from datadistill.lock import lock_file

    report = report_path(args)
    if report is None:
        yield
        return
    check_eval_args(args)  # before the evaluation, which can take hours
    check_report_path(report)
    with lock_file(report):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        apply_threads(args.threads)
    except DatadistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    previous = signal.signal(signal.SIGTERM, _terminated)  # `kill`, a job's timeout: Ctrl-C
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        with command_guard(args):
            return args.func(args)
    except DatadistillError as err:
        if getattr(err, "text", None):  # a finished report that could not be written
            print(err.text, end="")
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `datadistill presets | head`
        return 0
    except KeyboardInterrupt as err:
        print("interrupted; rerun the same command to resume (or add --restart to start the "
              "distillation over)", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
