"""How a package describes its ``datadistill`` sub-commands, and the options several share.

The recipes (``tm/commands.py``, ``infer/commands.py``) and ``evaluation/commands.py`` each
list their sub-commands as :class:`Command` objects in ``COMMANDS``; the CLI collects them by
module name, adds their parsers, runs their handlers inside its error guard and builds the
report page a handler asks for (:class:`Page`). Nothing here imports torch: the CLI imports
every commands module to build its parser, and ``datadistill --help`` stays fast, so a
commands module imports what a handler runs inside that handler.

Example:
    >>> def hello(args):
    ...     print("hello")
    >>> cmd = Command("hello", "say hello", lambda p: None, hello)
    >>> cmd.name, cmd.guard is None, cmd.resumes
    ('hello', True, False)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_HELP = "shipped config name or YAML file (default: digits/mtt_ipc1)"


@dataclass(frozen=True)
class Page:
    """What a handler returns to have the CLI print the path of ``folder``'s report.html,
    after (re)building it when ``stage`` is given (the stage that just finished, and how many
    seconds it took)."""

    folder: Path
    stage: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Command:
    """One sub-command: its name and one-line help, how it adds its arguments to its parser,
    and its handler (argparse namespace -> a :class:`Page` or None; exit status 0, errors
    raised as :class:`~datadistill.errors.DatadistillError`). ``guard`` (optional) checks
    the arguments before the handler runs and returns the report file the command writes,
    which the CLI locks for it; ``resumes``: rerunning after Ctrl-C keeps finished work."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], Page | None]
    guard: Callable[[argparse.Namespace], Path | None] | None = None
    resumes: bool = False


def add_download_option(p: argparse.ArgumentParser) -> None:
    """Config commands: ``--download`` is the override ``download=true`` (the CLI adds it)."""
    p.add_argument("--download", action="store_true",
                   help="download missing dataset files (the same as download=true)")


def add_config_arguments(p: argparse.ArgumentParser, example: str, *,
                         config_help: str | None = DEFAULT_CONFIG_HELP) -> None:
    """A config name or file (optional unless ``config_help`` is None: required) and
    ``key=value`` overrides, e.g. ``example``."""
    if config_help is None:
        p.add_argument("config", help="shipped config name or YAML file")
    else:
        p.add_argument("config", nargs="?", default=None, help=config_help)
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")


def add_run_arguments(p: argparse.ArgumentParser, experts: str, restart: bool) -> None:
    """The options of ``run``, ``experts`` and ``distill``: the run folder, the expert store
    (``experts``: what the command does with it), and ``--restart`` where it applies."""
    add_config_arguments(p, "ipc=10")
    p.add_argument("--out", default=None,
                   help="run folder (default runs/<data>_<method>_ipcN); its expert store "
                        "is <out>/experts unless --experts names another")
    p.add_argument("--experts", default=None, metavar="STORE",
                   help=f"expert store (default <out>/experts, or distill.expert_dir): {experts}")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_download_option(p)
    if restart:
        p.add_argument("--restart", action="store_true",
                       help="start the distillation and the final evaluation over, ignoring "
                            "the checkpoint (experts are kept)")


def config_words(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config and overrides of a command whose config is optional: ``run ipc=10`` gives
    no config and the override ``ipc=10`` (a word with ``=`` that names no file)."""
    if args.config and "=" in args.config and not Path(args.config).is_file():
        return None, [args.config, *args.overrides]
    return args.config, args.overrides
