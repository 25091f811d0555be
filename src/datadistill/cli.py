"""Command-line interface: parses, guards, and collects the sub-commands that the recipes
(``tm/commands.py``, ``infer/commands.py``) and ``evaluation/commands.py`` describe
(:class:`~datadistill.runtime.commands.Command`) beside its own generic ones (``configs``,
``validate``, ``run``, ``report``). Errors raised on purpose (DatadistillError) are printed as
one ``error:`` line, exit status 2: their message names the fix. ``--version`` and ``--help``
load no torch: every handler imports what it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

from datadistill import __version__
from datadistill.errors import ConfigError, DatadistillError
from datadistill.runtime.commands import Command, Page, add_run_arguments, config_words
from datadistill.runtime.threads import add_threads_option, apply_threads

# The sub-commands in the order `--help` lists them: the CLI's own by name, the others from
# the modules that describe them (each module's COMMANDS, in its order).
COMMAND_SOURCES = ("configs", "validate", "datadistill.evaluation.commands", "run",
                   "datadistill.tm.commands", "datadistill.infer.commands", "report")


def cmd_configs(args: argparse.Namespace) -> None:
    from datadistill.config import list_configs, resolve_config_path, resolved_config_text

    if args.action == "ls":
        for name in list_configs():
            print(name)
        return
    if args.name is None:
        raise ConfigError(f"`datadistill configs {args.action}` needs a config name, e.g. "
                          f"`datadistill configs {args.action} digits/mtt_ipc1`; "
                          "`datadistill configs ls` lists them")
    src = resolve_config_path(args.name)
    if args.action == "show":
        print(resolved_config_text(src), end="")
        return
    dest = Path(args.dest) / src.name if Path(args.dest).is_dir() else Path(args.dest)
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


def cmd_validate(args: argparse.Namespace) -> None:
    from datadistill.recipes import load_config

    recipe, cfg = load_config(args.config, args.overrides)
    print(f"{args.config}: valid ({recipe.label(cfg)})")
    if note := recipe.note(cfg):
        print(f"  note: {note}")


def cmd_run(args: argparse.Namespace) -> Page:
    from datadistill.checks import check_output_folder
    from datadistill.recipes import load_config

    config, overrides = config_words(args)  # `run ipc=10`: the default config
    recipe, cfg = load_config(config, overrides)
    out = check_output_folder(args.out or recipe.default_out(cfg))
    print(f"datadistill run: {recipe.label(cfg).replace(', ', ' on ', 1)} -> {out}")
    kw = {} if args.experts is None else {"expert_dir": args.experts}
    if kw and recipe.name != "tm":
        raise ConfigError(f"--experts is for trajectory matching; {config} runs the "
                          f"'{recipe.name}' recipe")
    result = recipe.run(cfg, out, progress=not args.quiet, restart=args.restart, **kw)
    for line in recipe.lines(result, out):
        print(line)
    return Page(out)  # the recipe's run wrote it


def cmd_report(args: argparse.Namespace) -> None:
    from datadistill.checks import check_output_folder
    from datadistill.recipes import load_recipes
    from datadistill.report.page import build_report

    if Path(args.out).is_dir():  # a missing folder: build_report names it
        check_output_folder(args.out, "run folder")
    load_recipes()  # the page describes the run's method from the recipes' registry
    print(f"page written to {build_report(args.out)}")


def write_page(page: Page) -> None:
    """Build report.html when ``page`` names a stage (never fails the command); print its path."""
    from datadistill import distributed
    from datadistill.recipes import load_recipes
    from datadistill.report.page import REPORT_FILE, write_report

    if page.stage is not None and distributed.is_main():
        load_recipes()  # the page describes the run's method from the recipes' registry
        write_report(page.folder, stage=page.stage, seconds=page.seconds)
    if (Path(page.folder) / REPORT_FILE).is_file():
        print(f"page: {Path(page.folder) / REPORT_FILE}")


def _configs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["ls", "show", "cp"])
    p.add_argument("name", nargs="?", help="config name, e.g. cifar10/mtt_ipc1")
    p.add_argument("dest", nargs="?", default=".", help="cp: destination file or folder")
    p.add_argument("--force", action="store_true")


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")


OWN_COMMANDS = {c.name: c for c in [
    Command("configs", "list, show or copy the shipped configs", _configs_arguments,
            cmd_configs),
    Command("validate", "check a config file and overrides without running",
            _validate_arguments, cmd_validate),
    Command("run", "the main job: experts if missing, distill, evaluate vs random",
            lambda p: add_run_arguments(p, "trained there if missing", restart=True), cmd_run),
    Command("report", "(re)build report.html of a run folder",
            lambda p: p.add_argument("out", help="run folder, e.g. runs/digits_mtt_ipc1"),
            cmd_report),
]}


def commands() -> list[Command]:
    """Every sub-command, in :data:`COMMAND_SOURCES` order."""
    return [c for source in COMMAND_SOURCES
            for c in ([OWN_COMMANDS[source]] if source in OWN_COMMANDS
                      else importlib.import_module(source).COMMANDS)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datadistill", description="Dataset distillation: experts, matching, evaluation."
    )
    parser.add_argument("--version", action="version", version=f"datadistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_threads_option(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=command.handler, guard=command.guard, resumes=command.resumes)
        add_threads_option(p, argparse.SUPPRESS)  # `run --threads 2` as well as before `run`
    return parser


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
    """Around every command: its own checks (its ``guard``), and the report it names locked
    for this process (run, experts, distill, teachers and infer lock their folders themselves)."""
    from datadistill.runtime.lock import lock_file

    report = args.guard(args) if getattr(args, "guard", None) else None
    with contextlib.nullcontext() if report is None else lock_file(report):
        yield


def main(argv: list[str] | None = None) -> int:
    """The ``datadistill`` command; under torchrun, a rank's error also goes to torchrun's
    failure summary (its ``record`` decorator), which names the rank that failed."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun; read without torch
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(build_parser(), argv)  # --version and --help end here, with no torch
    from datadistill import distributed
    from datadistill.recipes import load_plugins

    try:
        apply_threads(args.threads)
        distributed.init_from_env()  # torchrun: join the other ranks; plain run: no-op
        load_plugins()  # installed methods and recipes (entry points) register themselves
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


def interrupt_hint(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C: only what the interrupted command really offers."""
    if hasattr(args, "restart"):  # run, distill
        return ("interrupted; rerun the same command to resume (or add --restart to start the "
                "distillation over)")
    if getattr(args, "resumes", False):  # keeps its finished work
        return "interrupted; rerun the same command to resume"
    return "interrupted"


def _run(args: argparse.Namespace) -> int:
    from datadistill import distributed

    try:
        with command_guard(args):
            page = args.func(args)
            if isinstance(page, Page):
                write_page(page)
            return 0
    except DatadistillError as err:
        if getattr(err, "text", None):  # a finished report that could not be written
            print(err.text, end="")
        print(f"error: {err}", file=sys.stderr)
        if distributed.active() and os.environ.get("TORCHELASTIC_ERROR_FILE"):
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            with contextlib.suppress(Exception):  # torchrun's summary of the failed rank
                get_error_handler().record_exception(err)
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
