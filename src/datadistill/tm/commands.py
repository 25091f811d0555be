"""Trajectory matching's sub-commands: ``experts``, ``distill``, ``estimate``, ``repair``,
``presets`` and ``import-buffers`` (``run`` is the CLI's own, for every recipe).

Each handler imports what it runs, so building the CLI's parser loads no torch
(:mod:`datadistill.runtime.commands`). Default folders come from the recipe
(:data:`datadistill.tm.recipe.RECIPE`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from datadistill.runtime.commands import (
    Command,
    Page,
    add_config_arguments,
    add_download_option,
    add_run_arguments,
    config_words,
)


def _config(args: argparse.Namespace):
    from datadistill.tm.recipe import RECIPE

    return RECIPE.load(*config_words(args))


def _run_dir(args: argparse.Namespace, cfg) -> Path:
    from datadistill.tm.recipe import RECIPE

    return Path(args.out or RECIPE.default_out(cfg))


def cmd_experts(args: argparse.Namespace) -> None:
    from datadistill.checks import check_output_folder
    from datadistill.runtime.progress import plural
    from datadistill.tm.pipeline import store_location, train_pipeline_experts

    cfg = _config(args)
    out = check_output_folder(store_location(cfg, _run_dir(args, cfg), args.experts))
    store = train_pipeline_experts(cfg, out, progress=not args.quiet,
                                   announce=None if args.quiet else print)
    accs = [float(store.test_acc(i)[-1]) for i in range(len(store))]
    print(f"{plural(len(store), 'expert')} in {out}; final test accuracy "
          f"{100 * sum(accs) / len(accs):.2f} % on average")


def cmd_distill(args: argparse.Namespace) -> Page:
    from datadistill.checks import check_output_folder
    from datadistill.tm.config import distill_config
    from datadistill.tm.distill import distill
    from datadistill.tm.pipeline import recorded_store, store_location

    cfg = _config(args)
    out = check_output_folder(_run_dir(args, cfg))
    store_dir = store_location(cfg, out, args.experts)
    dcfg = dataclasses.replace(distill_config(cfg), expert_dir=recorded_store(store_dir, out))
    result = distill(dcfg, out / "distill", store=store_dir,  # opened after the checks
                     progress=not args.quiet, resume=not args.restart)
    best = "n/a" if result.best_accuracy is None else f"{100 * result.best_accuracy:.2f} %"
    print(f"{result.iterations_done} iterations; best evaluation {best} at iteration "
          f"{result.best_iteration}; learned step size {result.final_syn_lr:.4g}")
    print(f"best set: {result.best_dir}")
    return Page(out, "distill", result.seconds)


def cmd_estimate(args: argparse.Namespace) -> None:
    from datadistill.data import dataset_info
    from datadistill.tm.config import distill_config
    from datadistill.tm.memory import GB, estimate_config, free_memory

    dcfg = distill_config(_config(args))
    info = dataset_info(dcfg.dataset, root=dcfg.data_root)
    est = estimate_config(dcfg, info, free=free_memory(dcfg.device))
    fp, u = est.footprint, est.unrolled
    print(f"{dcfg.method} on {dcfg.dataset}, IPC {dcfg.ipc}: {u.details['batch']} images per "
          f"step, {dcfg.syn_steps} steps, {dcfg.model} ({fp.num_params:,} parameters), "
          f"{fp.per_image_step_mb():.2f} MB per image and step, device {dcfg.device}")
    print(f"  unrolled: {u.summary()}")
    kept = dcfg.grad.kept_graphs
    print(f"  adjoint (micro_batch {est.adjoint.details['micro_batch']}"
          f"{f', kept_graphs {kept}' if kept != 1 else ''}): {est.adjoint.summary()}")
    verdict = "fits" if u.total <= est.free else "does NOT fit"
    print(f"free on {dcfg.device}: {est.free / GB:.2f} GB; unrolled {verdict}")
    if est.fits_micro_batch is None:
        print("  adjoint does not fit even with distill.micro_batch=1")
    else:
        print(f"  adjoint fits with distill.micro_batch={est.fits_micro_batch} "
              f"({est.fitting.total / GB:.2f} GB)")
    if est.fits_kept_graphs is not None and est.adjoint.details["micro_batch"] == \
            est.adjoint.details["batch"]:  # kept graphs need whole steps
        print(f"  adjoint fits with up to distill.kept_graphs={est.fits_kept_graphs} (each "
              "kept graph saves one step's extra pass)")
    _print_process_table(dcfg, info)


def _print_process_table(dcfg, info) -> None:
    """Adjoint peak per GPU under torchrun with 1, 2, 4, 8 processes (unrolled cannot shard)."""
    from datadistill.tm.memory import GB, process_table

    print(f"adjoint peak per GPU (device memory; micro_batch {dcfg.grad.micro_batch}):")
    for k, est in process_table(dcfg, info, device="cuda"):
        print(f"  {k} process{'es' if k > 1 else '  '}: {est.total / GB:6.2f} GB "
              f"({est.details['batch']} images per step and process; graph "
              f"{est.graph / GB:.2f}, state {est.state / GB:.2f}, snapshots "
              f"{est.snapshots / GB:.2f})")


def cmd_repair(args: argparse.Namespace) -> None:
    from datadistill.tm.pipeline import repair_run

    for what in repair_run(args.out, progress=not args.quiet, experts=args.experts):
        print(f"rebuilt {what}")
    print(f"report written to {Path(args.out) / 'eval.json'}")


def cmd_presets(args: argparse.Namespace) -> None:
    from datadistill.tm.presets import presets_table

    print(presets_table())


def cmd_import_buffers(args: argparse.Namespace) -> None:
    from datadistill.experts import ExpertConfig, import_replay_buffers
    from datadistill.runtime.progress import plural

    store = import_replay_buffers(args.files, args.out, ExpertConfig(
        dataset=args.dataset, model=args.model, zca=args.zca))
    print(f"imported {plural(len(store), 'expert')} into {args.out}")


# ---------------------------------------------------------------- arguments
def _estimate_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, "distill.syn_steps=80")
    add_download_option(p)


def _repair_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="the run folder")
    p.add_argument("--experts", default=None, metavar="STORE",
                   help="the run's expert store, when it was moved (default: where the run "
                        "recorded it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="convnet")
    p.add_argument("--zca", action="store_true", help="the buffers were trained with ZCA")


COMMANDS = [
    Command("experts", "train expert trajectories (resumes)",
            lambda p: add_run_arguments(p, "trained there if missing", restart=False), cmd_experts,
            resumes=True),
    Command("distill", "trajectory matching from an expert store (resumes)",
            lambda p: add_run_arguments(p, "read", restart=True), cmd_distill),
    Command("estimate", "predicted peak memory of one distill iteration", _estimate_arguments,
            cmd_estimate),
    Command("repair", "rebuild best/, last/ and eval.json of a finished run", _repair_arguments,
            cmd_repair),
    Command("presets", "what each method preset changes, and its paper", lambda p: None,
            cmd_presets),
    Command("import-buffers", "convert official replay_buffer_*.pt files", _import_arguments,
            cmd_import_buffers),
]
