"""``report.html``: one self-contained page per run folder, for a person to look at.

The page gathers what the run folder holds: the headline accuracy, named with the set it
belongs to (``best/`` at iteration N), the accuracy table (mean +- std per protocol, from
``eval.json`` / ``eval_infer.json``; below it, marked as such, the best in-loop check while
distilling, which chose ``best/``), the distilled images (readable grids:
:mod:`datadistill.artifacts.grids`), the initial images beside the evaluated set, the curves
(:mod:`datadistill.report.curves`: matching loss, learned step size and accuracy over the
iterations, the experts' per-epoch test accuracy, distilled vs random subset), the method's
paper and its named deviations (:mod:`datadistill.tm.presets`), the resolved config, and the
wall time and hardware of each stage. Images are embedded as base64 PNG data URIs, and the
same PNGs are written to ``figures/`` beside the page; the page has no script and loads
nothing from anywhere. The pictures are drawn by :mod:`datadistill.report.figures`, the HTML
by :mod:`datadistill.report.html`.

Folders it understands (several may be combined):

- a run folder of ``datadistill run``/``distill``: ``pipeline.json``, ``eval.json``,
  ``experts/``, ``distill/`` (``metrics.jsonl``, ``best/``, ``last/``, ``initial/``,
  ``ema_last/``);
- a distillation folder itself (``metrics.jsonl``, ``config.json``); a distillation in a
  folder named ``distill`` reports in the folder above (:func:`run_folder_of`);
- an INFER folder (``meta.json`` of an INFER set, ``eval_infer.json``);
- a distilled-set folder evaluated by ``datadistill eval`` (``meta.json``, ``eval.json``).

Each stage that ends (``run``, ``distill``, ``infer``, ``eval``) records its wall time and the
hardware in ``run_record.json`` through :func:`write_report`, which never raises: a failure
to write the page is logged as a warning and the run goes on.

Example:
    >>> write_report("runs/digits_mtt_ipc1", stage="run", seconds=158.0)   # doctest: +SKIP
    PosixPath('runs/digits_mtt_ipc1/report.html')
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datadistill import __version__
from datadistill.errors import ArtifactError
from datadistill.io import atomic_write, write_json
from datadistill.models import winograd
from datadistill.report import figures as report_figures
from datadistill.report import html as report_html
from datadistill.runtime import ckernels
from datadistill.runtime.progress import plural

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
RECORD_FILE = "run_record.json"
RECORD_VERSION = 1
REFRESH_SECONDS = 60.0  # while distilling, the page is redrawn at most this often


@dataclass
class AccuracyRow:
    """One line of the accuracy table (accuracies are fractions)."""

    what: str
    model: str
    protocol: str
    accuracies: list[float]
    mean: float
    std: float
    note: str = ""
    source: str = ""  # the set evaluated, e.g. "best/, iteration 50"
    in_loop: bool = False  # the distiller's own check (it picks best/), not a final evaluation


@dataclass
class RunContents:
    """What :func:`scan_folder` found in a run folder."""

    root: Path
    distill_dir: Path | None = None
    expert_dir: Path | None = None
    config: dict | None = None  # the resolved config
    config_file: str | None = None  # where it was read
    method: str | None = None
    dataset: str | None = None
    ipc: int | None = None
    eval_files: dict[str, dict] = field(default_factory=dict)  # file name -> content
    record: dict = field(default_factory=dict)  # run_record.json
    infer_dir: Path | None = None  # an INFER set lives here
    teachers: dict[str, dict] = field(default_factory=dict)  # INFER: arch -> its store meta
    set_dir: Path | None = None  # a distilled set evaluated in place lives here
    iterations: dict[str, int] = field(default_factory=dict)  # distill/<set>/ -> its iteration


# ----------------------------------------------------------------------------- entry points


def run_folder_of(path: str | Path) -> Path:
    """The run folder a distillation output belongs to: the parent of a folder named
    ``distill`` (the layout of ``datadistill run``/``distill``), else the folder itself.

    >>> run_folder_of("runs/x/distill").as_posix(), run_folder_of("runs/y").as_posix()
    ('runs/x', 'runs/y')
    """
    path = Path(path)
    return path.parent if path.name == "distill" else path


def write_report(folder: str | Path, *, stage: str | None = None,
                 seconds: float | None = None) -> Path | None:
    """Record ``stage`` (wall ``seconds``, hardware) and (re)write ``folder/report.html``.

    Never raises: a failure is logged as a warning and None returned, so a run that has
    finished its work is not lost to its report.

    Example:
        >>> write_report("runs/digits_mtt_ipc1")                           # doctest: +SKIP
    """
    try:
        if stage is not None:
            record_stage(folder, stage, seconds)
        return build_report(folder)
    except Exception as err:  # the page is a view of the results, never a reason to fail
        log.warning("could not write %s in %s (%s: %s); the run's results are unaffected",
                    REPORT_FILE, folder, type(err).__name__, err)
        return None


def refresh_report(distill_dir: str | Path, *, force: bool = False) -> Path | None:
    """Rewrite the report of the run a distillation folder belongs to (at an evaluation).

    Unless ``force`` (the last evaluation), nothing is drawn within REFRESH_SECONDS of the
    last drawing or of the start of the distillation (``config.json``): a drawing takes
    about a second, which matters between quick evaluations and in short runs.
    """
    folder = run_folder_of(distill_dir)
    page = folder / REPORT_FILE
    try:
        stamps = [p.stat().st_mtime for p in (page, Path(distill_dir) / "config.json")
                  if p.is_file()]
    except OSError:  # a file vanished in between: draw
        stamps = []
    if not force and stamps and time.time() - max(stamps) < REFRESH_SECONDS:
        return page if page.is_file() else None
    return write_report(folder)


def build_report(folder: str | Path) -> Path:
    """Scan ``folder``, draw its figures into ``folder/figures``, write ``report.html``.

    Raises on failure (``write_report`` is the safe wrapper). ArtifactError when the folder
    does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder; pass a run folder (e.g. runs/<name>)")
    contents = scan_folder(root)
    rows = accuracy_rows(contents)
    page = report_html.render_page(contents, rows, report_figures.image_figures(contents),
                                   report_figures.curve_figures(contents, rows, metrics_rows),
                                   hardware(), report_figures.last_iteration_note(contents))
    out = root / REPORT_FILE
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


# ----------------------------------------------------------------------------- record


def hardware() -> dict[str, Any]:
    """The machine this process runs on: CPU model, GPU, torch version and threads, and the
    student's CPU kernels (Winograd on or off, the compiled C loops this process loaded)."""
    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "datadistill": __version__, "winograd": winograd.ENABLED,
            "compiled_loops": ckernels.loaded()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def record_stage(folder: str | Path, stage: str, seconds: float | None) -> None:
    """Add ``stage`` (its wall seconds, when it finished, the hardware) to run_record.json."""
    path = Path(folder) / RECORD_FILE
    record = _read_json(path) or {"format_version": RECORD_VERSION, "stages": {}}
    record.setdefault("stages", {})[stage] = {
        "seconds": None if seconds is None else round(float(seconds), 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(),
    }
    write_json(record, path)


# ----------------------------------------------------------------------------- scan


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is absent or unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("report: skipping %s (%s)", path, err)
        return None


def scan_folder(root: Path) -> RunContents:
    """Find the configs, evaluations, distillation, experts and sets under ``root``."""
    c = RunContents(root=root, record=_read_json(root / RECORD_FILE) or {})
    if (root / "metrics.jsonl").is_file():
        c.distill_dir = root
    elif (root / "distill" / "config.json").is_file():
        c.distill_dir = root / "distill"
    for name in ("eval.json", "eval_infer.json", "ddranking.json"):
        if isinstance(content := _read_json(root / name), dict):
            c.eval_files[name] = content
    _scan_config(c)
    _scan_teachers(c)
    for name in ("initial", "best", "last", "ema_last") if c.distill_dir is not None else ():
        extra = (_read_json(c.distill_dir / name / "meta.json") or {}).get("extra") or {}
        if isinstance(extra.get("iteration"), int):
            c.iterations[name] = extra["iteration"]
    if (root / "experts" / "meta.json").is_file():
        c.expert_dir = root / "experts"
    elif c.distill_dir is not None:
        where = (_read_json(c.distill_dir / "config.json") or {}).get("expert_dir")
        # recorded relative to the run folder (or, by older runs, to the working directory)
        run = c.distill_dir.parent if c.distill_dir.name == "distill" else root
        for path in ([run / where, Path(where)] if where else []):
            if (path / "meta.json").is_file():
                c.expert_dir = path
                break
    return c


def _scan_config(c: RunContents) -> None:
    """The resolved config, method, dataset and ipc, from the most complete source present."""
    root = c.root
    meta = _read_json(root / "meta.json") or {}
    if meta.get("kind") == "infer_set":
        c.infer_dir = root
    elif "format_version" in meta and "info" in meta:
        c.set_dir = root
    sources = [("pipeline.json", _read_json(root / "pipeline.json"))]
    if c.distill_dir is not None:
        sources.append((str((c.distill_dir / "config.json").relative_to(root)),
                        _read_json(c.distill_dir / "config.json")))
    sources.append(("meta.json (config)", meta.get("config")))
    if c.set_dir is not None:
        sources.append(("config.yaml", _read_yaml(root / "config.yaml")))
    for name, config in sources:
        if isinstance(config, dict):
            c.config, c.config_file = config, name
            break
    c.method = meta.get("method") or (c.config or {}).get("method")
    c.dataset = (c.config or {}).get("dataset") or meta.get("dataset") or \
        (meta.get("info") or {}).get("name")
    c.ipc = (c.config or {}).get("ipc") or meta.get("ipc")


def _scan_teachers(c: RunContents) -> None:
    """INFER's teachers as their store records them (what they were trained with, which the
    config's ``teachers:`` section does not change once they exist)."""
    where = (c.config or {}).get("teacher_dir") if c.infer_dir is not None else None
    if not where or not Path(where).is_dir():
        return
    for sub in sorted(Path(where).iterdir()):
        meta = _read_json(sub / "meta.json")
        if isinstance(meta, dict) and meta.get("kind") == "infer_teacher":
            c.teachers[sub.name] = meta


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        log.warning("report: skipping %s (%s)", path, err)
        return None


def metrics_rows(distill_dir: Path | None) -> list[dict]:
    """The rows of ``metrics.jsonl`` (a torn last line, from an interrupted write, is skipped)."""
    path = None if distill_dir is None else distill_dir / "metrics.jsonl"
    if path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ----------------------------------------------------------------------------- accuracy


_NAMES = {"random_subset": "random real subset", "challenge": "challenge file"}


def _describe(key: str) -> str:
    """A readable name for an eval.json key (distilled_convnet_hard_labels -> ...)."""
    if key in _NAMES:
        return _NAMES[key]
    for prefix, name in (("distilled_", "distilled set"), ("ema_", "EMA set")):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.endswith("_hard_labels"):
                return f"{name}, argmax hard labels"
            return name
    return key.replace("_", " ")


def _row(what: str, rep: dict, note: str = "") -> AccuracyRow | None:
    accs = rep.get("accuracies")
    if not isinstance(accs, list) or rep.get("mean") is None:
        return None
    return AccuracyRow(what, str(rep.get("model", "")), str(rep.get("protocol", "")),
                       [float(a) for a in accs], float(rep["mean"]), float(rep.get("std") or 0),
                       note)


def accuracy_rows(c: RunContents) -> list[AccuracyRow]:
    """Every evaluation in the folder, sorted by protocol (the table of the page)."""
    rows: list[AccuracyRow] = []
    for name, content in c.eval_files.items():
        if "accuracies" in content:  # eval_infer.json: one report
            settings = content.get("settings") or {}
            note = ("last epoch; best of periodic evaluations "
                    f"{100 * settings['best_mean']:.2f} %") if "best_mean" in settings else ""
            rows.append(_row(f"INFER student ({name})", content, note))
            continue
        if content.get("protocol") == "ddranking":  # ddranking.json of `eval --protocol`
            rows += _ddranking_rows(name, content)
            continue
        pipeline = "config" in content  # eval.json of `run`; else of `eval`: model -> report
        for key, rep in content.items():
            if isinstance(rep, dict) and (row := _row(_describe(key) if pipeline else
                                                      "evaluated set", rep, f"{name}: {key}")):
                row.source = _pipeline_source(c, key) if pipeline else ""
                rows.append(row)
    rows += _teacher_rows(c)
    rows = sorted([r for r in rows if r is not None], key=lambda r: r.protocol)
    in_loop = _best_during_distillation(c)  # last: a check, not one of the results
    return rows if in_loop is None else [*rows, in_loop]


def _pipeline_source(c: RunContents, key: str) -> str:
    """The set behind an eval.json entry of ``run``: distilled_* score best/, ema_* ema_last/."""
    if key.startswith("distilled_"):
        return report_figures.set_source(c, "best")
    return report_figures.set_source(c, "ema_last") if key.startswith("ema_") else ""


_DDRANKING_SETS = {"syn": "evaluated set, its labels", "syn_hard": "evaluated set, hard labels",
                   "random": "random real subset", "full": "full training set"}


def _ddranking_rows(name: str, content: dict) -> list[AccuracyRow | None]:
    """DD-Ranking's trainings (best of tests per round) from its report."""
    model = (content.get("settings") or {}).get("config", {}).get("model", "")
    summary = content.get("summary") or {}
    return [_row(what, {"accuracies": s.get("values"), "mean": s.get("mean"),
                        "std": s.get("std"), "model": model, "protocol": "ddranking"},
                 f"{name}: best of tests per round")
            for key, what in _DDRANKING_SETS.items() if isinstance(s := summary.get(key), dict)]


def _best_during_distillation(c: RunContents) -> AccuracyRow | None:
    evals = [r for r in metrics_rows(c.distill_dir) if r.get("eval") and not r.get("ema")
             and r.get("mean") is not None]
    if not evals:
        return None
    best = max(evals, key=lambda r: r["mean"])  # first of the maxima, as distill keeps it
    cfg = _read_json(c.distill_dir / "config.json") or {}
    setting = report_figures.in_loop_setting(cfg)
    note = (f"the best of {plural(len(evals), 'check')}, at iteration {best['iteration']}"
            + (f"; {setting}" if setting else ""))
    row = _row("in-loop check while distilling", {**best, "model": cfg.get("model", ""),
                                                   "protocol": "classic"}, note)
    if row is not None:
        row.in_loop = True
    return row


def _teacher_rows(c: RunContents) -> list[AccuracyRow]:
    """INFER's teachers: each one's test accuracy (one network each)."""
    rows = []
    for arch, meta in c.teachers.items():
        if "test_accuracy" in meta:
            acc = float(meta["test_accuracy"])
            rows.append(AccuracyRow(f"teacher {arch}", arch, "teacher", [acc], acc, 0.0,
                                    f"labels and guides INFER; {teacher_recipe_text(meta)}"))
    return rows


def teacher_recipe_text(meta: dict) -> str:
    """How a stored teacher was trained, e.g. ``2 epochs, batch 128, lr 0.1 (its store)``."""
    return (f"{meta.get('epochs', '?')} epochs, batch {meta.get('batch_size', '?')}, "
            f"lr {meta.get('lr', '?')} (its store's record)")
