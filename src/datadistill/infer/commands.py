"""INFER's sub-commands: ``teachers`` (train the BatchNorm teachers) and ``infer`` (the INFER
recipe's run, as ``datadistill run`` does it for an INFER config).

Each handler imports what it runs, so building the CLI's parser loads no torch
(:mod:`datadistill.runtime.commands`).
"""

from __future__ import annotations

import argparse

from datadistill.runtime.commands import Command, Page, add_config_arguments, add_download_option


def _load(args: argparse.Namespace):
    from datadistill.infer.recipe import RECIPE

    return RECIPE, RECIPE.load(args.config, args.overrides)


def cmd_teachers(args: argparse.Namespace) -> None:
    from datadistill.checks import check_output_folder
    from datadistill.infer.teachers_train import train_teachers

    _, cfg = _load(args)
    out = check_output_folder(args.out or cfg.teacher_dir or f"runs/{cfg.data.dataset}_teachers")
    store = train_teachers(cfg, out, progress=not args.quiet)
    for arch in store.archs():
        print(f"{arch}: test accuracy {100 * store.meta(arch)['test_accuracy']:.2f} %")
    print(f"teachers written to {out}")


def cmd_infer(args: argparse.Namespace) -> Page:
    from datadistill.checks import check_output_folder

    recipe, cfg = _load(args)
    out = check_output_folder(args.out or recipe.default_out(cfg))
    result = recipe.run(cfg, out, progress=not args.quiet)
    for line in recipe.lines(result, out):
        print(line)
    return Page(out)  # the run wrote it


def _arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, "ipc=50", config_help=None)
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_download_option(p)


COMMANDS = [
    Command("teachers", "train INFER's BatchNorm teachers (resumable)", _arguments, cmd_teachers,
            resumes=True),
    Command("infer", "INFER: compensators, static labels, student evaluation", _arguments,
            cmd_infer),
]
