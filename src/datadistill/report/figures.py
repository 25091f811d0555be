"""The pictures of ``report.html``: readable grids of the sets in a run folder and its curves.

Each picture is written to ``<run>/figures/<name>.png`` and returned with its bytes, for
:mod:`datadistill.report.html` to embed. The page's grids show at most MAX_CLASSES classes
and MAX_PER_CLASS images per class (PAIR_PER_CLASS per side of the initial-vs-final grid),
so that they stay readable at page width; the distiller's ``grids/`` files hold every image.

Example:
    >>> figures = image_figures(scan_folder(Path("runs/digits_mtt_ipc1")))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from datadistill.artifacts.distilled import DistilledSet, load_distilled
from datadistill.experts import ExpertStore
from datadistill.io import atomic_write
from datadistill.runtime.progress import plural

if TYPE_CHECKING:  # annotations only: the report (above) hands its scan and rows down
    from datadistill.report.page import AccuracyRow, RunContents

FIGURES_DIR = "figures"  # <run>/figures/<name>.png

# A recipe's own set format, shown as a grid: {kind: reader(folder) -> DistilledSet}. The
# recipe registers its reader (register_set_view) where it is defined; the page never
# imports a recipe.
SET_VIEWS: dict[str, Callable[[Path], DistilledSet]] = {}


def register_set_view(kind: str, reader: Callable[[Path], DistilledSet]) -> Callable:
    """Let the page draw the sets of ``kind`` (e.g. ``"infer"``) with ``reader``; returns it."""
    SET_VIEWS[kind] = reader
    return reader
MAX_CLASSES = 20  # classes shown in the page's grids (the grid files under grids/ hold all)
MAX_PER_CLASS = 10  # images per class shown in the page's grids
PAIR_PER_CLASS = 4  # images per class on each side of the initial-vs-final grid
MAX_EXPERTS = 100  # expert curves drawn

log = logging.getLogger(__name__)


@dataclass
class Figure:
    """One picture of the page: its PNG bytes, the file beside the page, a caption."""

    title: str
    png: bytes
    path: Path
    caption: str = ""


def _load_set(path: Path):

    return load_distilled(path) if (path / "meta.json").is_file() else None


def _guarded(title: str, make: Callable[[], Figure | None]) -> Figure | None:
    """``make()``, or a Figure without picture that says why it could not be drawn (one
    damaged file costs its picture, not the page)."""
    try:
        return make()
    except Exception as err:  # the page is a view: show the problem, keep the rest
        log.warning("report: could not draw %r (%s: %s)", title, type(err).__name__, err)
        return Figure(title, b"", Path(), f"could not be drawn ({type(err).__name__}: {err})")


def image_figures(c: RunContents) -> list[Figure]:
    """Readable grids of the sets in the folder, written to figures/ and embedded."""
    makers = [(title, partial(_set_figure, c, title, load, name))
              for title, load, name in _sets(c)]
    if c.distill_dir is not None and (c.distill_dir / "initial" / "meta.json").is_file():
        makers.append(("Initial images and the evaluated set", partial(_pair_figure, c)))
    figures = [_guarded(title, make) for title, make in makers]
    return [f for f in figures if f is not None]


def _set_figure(c: RunContents, title: str, load: Callable, name: str) -> Figure | None:
    from datadistill.artifacts.grids import class_grid, png_bytes

    ds = load()
    if ds is None:
        return None
    group = int(ds.extra.get("grid_group", 1))  # columns that belong together (INFER: a group)
    shown = max(group, MAX_PER_CLASS // group * group)  # whole groups only
    grid = class_grid(ds, max_classes=MAX_CLASSES, max_per_class=shown,
                      column_captions=ds.extra.get("grid_columns"))  # a recipe's set view's
    caption = " ".join(t for t in (ds.extra.get("grid_legend", ""),
                                   _limits_caption(c, ds, shown)) if t)
    return _png_figure(c, title(ds) if callable(title) else title, png_bytes(grid), name,
                       caption)


def set_source(c: RunContents, name: str) -> str:
    """``best/, iteration 50``: a set of the distillation folder and its iteration."""
    return f"{name}/" + (f", iteration {c.iterations[name]}" if name in c.iterations else "")


def last_iteration_note(c: RunContents) -> str:
    """A sentence when the last iteration is not best/'s (the set evaluated), else ''."""
    best, last = c.iterations.get("best"), c.iterations.get("last")
    if best is None or last is None or best == last:
        return ""
    return (f"best/ is iteration {best}, the best in-loop check; the last iteration, {last}, "
            "is in last/ and is not evaluated.")


def in_loop_setting(cfg: dict) -> str:
    """``2 networks × 300 epochs each``: what one evaluation while distilling trains
    (``cfg``: the distillation's config.json)."""
    runs, epochs = cfg.get("eval_runs"), cfg.get("eval_epochs")
    if runs is None or epochs is None:
        return ""
    return f"{plural(int(runs), 'network')} × {plural(int(epochs), 'epoch')} each"


def _pair_figure(c: RunContents) -> Figure | None:
    """The initial images beside the evaluated set, best/ (last/ before best/ exists)."""
    from datadistill.artifacts.grids import before_after_grid, png_bytes

    initial = _load_set(c.distill_dir / "initial")
    name = "best" if (c.distill_dir / "best" / "meta.json").is_file() else "last"
    final = _load_set(c.distill_dir / name)
    if final is None:
        return None
    title = f"Initial images (iteration 0) and the evaluated set ({set_source(c, name)})"
    png = png_bytes(before_after_grid(initial, final, max_classes=MAX_CLASSES,
                                      max_per_class=PAIR_PER_CLASS, names=("initial", f"{name}/")))
    caption = " ".join(t for t in (last_iteration_note(c) if name == "best" else "",
                                   _limits_caption(c, final, PAIR_PER_CLASS)) if t)
    return _png_figure(c, title, png, "initial_vs_best.png", caption)


def _best_title(ds) -> str:
    acc = ds.extra.get("accuracy")
    score = "" if acc is None else f"; in-loop check {100 * acc:.2f} %"
    return f"Distilled set best/ (iteration {ds.extra.get('iteration', '?')}{score})"


def _sets(c: RunContents) -> list[tuple[Any, Callable, str]]:
    """(title or title-of-set function, loader of the DistilledSet, file name) per set."""
    found: list[tuple[Any, Callable, str]] = []
    if c.distill_dir is not None:
        found.append((_best_title, partial(_load_set, c.distill_dir / "best"), "distilled.png"))
        found.append(("EMA of the images (FTD, last)",
                      partial(_load_set, c.distill_dir / "ema_last"), "ema.png"))
    if c.set_dir is not None:
        found.append(("Evaluated set", partial(_load_set, c.set_dir), "set.png"))
    if c.infer_dir is not None and "infer" in SET_VIEWS:
        found.append(("INFER training instances (base images and base + compensator)",
                      partial(SET_VIEWS["infer"], c.infer_dir), "infer_instances.png"))
    return found


def _limits_caption(c: RunContents, ds, max_per_class: int) -> str:
    """What the page's grid leaves out; the distiller's grids/ files (when the folder has
    them) hold every image."""
    per_class = int(torch.bincount(ds.hard_labels, minlength=ds.info.num_classes).max())
    parts = []
    if ds.info.num_classes > MAX_CLASSES:
        parts.append(f"the first {MAX_CLASSES} of {ds.info.num_classes} classes")
    if per_class > max_per_class:
        parts.append(f"{max_per_class} of {per_class} images per class")
    if not parts:
        return ""
    grids = c.distill_dir is not None and (c.distill_dir / "grids").is_dir()
    return "Shown: " + ", ".join(parts) + ("; the grids/ files hold every image." if grids
                                           else ".")


def _png_figure(c: RunContents, title: str, png: bytes, name: str, caption: str = "") -> Figure:
    path = c.root / FIGURES_DIR / name
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    return Figure(title, png, path, caption)


def curve_figures(c: RunContents, rows: list[AccuracyRow],
                  metrics: Callable[[Path | None], list[dict]]) -> list[Figure]:
    """Distillation curves, expert accuracy and the accuracy comparison, as PNG figures:
    ``rows`` are the page's accuracy rows, ``metrics(distill_dir)`` reads metrics.jsonl."""
    from datadistill.report.curves import accuracy_bars, distill_curves, expert_curves

    cfg = _config_json(c)
    check = in_loop_setting(cfg) or "as distill.eval_runs and distill.eval_epochs set"
    in_loop = next((r for r in rows if r.in_loop), None)
    best = "" if in_loop is None else (
        f"; the best, {100 * in_loop.mean:.2f} ± {100 * in_loop.std:.2f} %, chose best/")
    drawn = [("Distillation: matching loss, learned step size, accuracy",
              lambda: distill_curves(metrics(c.distill_dir), f"in-loop check: {check}"),
              "distill_curves.png",
              f"Accuracy: the in-loop check of the distiller, {check}{best}. The headline "
              "accuracy is the final evaluation (Summary)."),
             ("Experts: test accuracy per epoch", lambda: expert_curves(_expert_accuracies(c)),
              "expert_accuracy.png", ""),
             ("Accuracy of the distilled set and the baselines",
              lambda: accuracy_bars(_final_accuracies(rows)), "accuracy.png",
              "Mean ± std over independently trained networks; each dot is one network.")]
    figures = [_guarded(title, partial(_curve_figure, c, title, plot, name, caption))
               for title, plot, name, caption in drawn]
    return [f for f in figures if f is not None]


def _curve_figure(c: RunContents, title: str, plot: Callable, name: str,
                  caption: str) -> Figure | None:
    from datadistill.report.curves import figure_png

    fig = plot()
    return None if fig is None else _png_figure(c, title, figure_png(fig), name, caption)


def _config_json(c: RunContents) -> dict:
    """The distillation's config.json, {} when there is none."""
    import json

    path = None if c.distill_dir is None else c.distill_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _expert_accuracies(c: RunContents) -> list:
    if c.expert_dir is None:
        return []

    store = ExpertStore(c.expert_dir)
    return [store.test_acc(i).numpy() for i in range(min(len(store), MAX_EXPERTS))]


def _final_accuracies(rows: list[AccuracyRow]) -> dict[str, list[float]]:
    """Label -> accuracies of the final evaluations (eval.json / eval_infer.json)."""
    out = {}
    for row in rows:
        if not row.in_loop and row.protocol != "teacher":
            which = f"{row.what}, {row.source}" if row.source else row.what
            out[f"{which} ({row.model}, {row.protocol})"] = row.accuracies
    return out
