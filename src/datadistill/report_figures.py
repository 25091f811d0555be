"""The pictures of ``report.html``: readable grids of the sets in a run folder and its curves.

Each picture is written to ``<run>/figures/<name>.png`` and returned with its bytes, for
:mod:`datadistill.report_html` to embed. The page's grids show at most MAX_CLASSES classes
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

from datadistill.artifact import DistilledSet, load_distilled
from datadistill.experts import ExpertStore
from datadistill.io import atomic_write

if TYPE_CHECKING:  # annotations only: the report (above) hands its scan and rows down
    from datadistill.report import AccuracyRow, RunContents

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
        makers.append(("Initial and final images", partial(_pair_figure, c)))
    figures = [_guarded(title, make) for title, make in makers]
    return [f for f in figures if f is not None]


def _set_figure(c: RunContents, title: str, load: Callable, name: str) -> Figure | None:
    from datadistill.grids import class_grid, png_bytes

    ds = load()
    if ds is None:
        return None
    grid = class_grid(ds, max_classes=MAX_CLASSES, max_per_class=MAX_PER_CLASS,
                      column_captions=ds.extra.get("grid_columns"))  # a recipe's set view's
    caption = " ".join(t for t in (ds.extra.get("grid_legend", ""),
                                   _limits_caption(ds, MAX_PER_CLASS)) if t)
    return _png_figure(c, title(ds) if callable(title) else title, png_bytes(grid), name,
                       caption)


def _pair_figure(c: RunContents) -> Figure | None:
    from datadistill.grids import before_after_grid, png_bytes

    initial, final = _load_set(c.distill_dir / "initial"), _load_set(c.distill_dir / "last")
    if final is None:
        return None
    title = (f"Initial (iteration 0) and final (iteration {final.extra.get('iteration', '?')})"
             " images")
    png = png_bytes(before_after_grid(initial, final, max_classes=MAX_CLASSES,
                                      max_per_class=PAIR_PER_CLASS))
    return _png_figure(c, title, png, "initial_vs_final.png",
                       _limits_caption(final, PAIR_PER_CLASS))


def _best_title(ds) -> str:
    acc = ds.extra.get("accuracy")
    score = "" if acc is None else f", accuracy {100 * acc:.2f} % while distilling"
    return f"Distilled set (best, iteration {ds.extra.get('iteration', '?')}{score})"


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


def _limits_caption(ds, max_per_class: int) -> str:
    per_class = int(torch.bincount(ds.hard_labels, minlength=ds.info.num_classes).max())
    parts = []
    if ds.info.num_classes > MAX_CLASSES:
        parts.append(f"the first {MAX_CLASSES} of {ds.info.num_classes} classes")
    if per_class > max_per_class:
        parts.append(f"{max_per_class} of {per_class} images per class")
    return ("Shown: " + ", ".join(parts) + "; the grids/ files hold every image.") if parts \
        else ""


def _png_figure(c: RunContents, title: str, png: bytes, name: str, caption: str = "") -> Figure:
    path = c.root / FIGURES_DIR / name
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    return Figure(title, png, path, caption)


def curve_figures(c: RunContents, rows: list[AccuracyRow],
                  metrics: Callable[[Path | None], list[dict]]) -> list[Figure]:
    """Distillation curves, expert accuracy and the accuracy comparison, as PNG figures:
    ``rows`` are the page's accuracy rows, ``metrics(distill_dir)`` reads metrics.jsonl."""
    from datadistill.curves import accuracy_bars, distill_curves, expert_curves

    drawn = [("Distillation: matching loss, learned step size, accuracy",
              lambda: distill_curves(metrics(c.distill_dir)), "distill_curves.png",
              "Evaluations while distilling use distill.eval_runs networks of "
              "distill.eval_epochs epochs."),
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
    from datadistill.curves import figure_png

    fig = plot()
    return None if fig is None else _png_figure(c, title, figure_png(fig), name, caption)


def _expert_accuracies(c: RunContents) -> list:
    if c.expert_dir is None:
        return []

    store = ExpertStore(c.expert_dir)
    return [store.test_acc(i).numpy() for i in range(min(len(store), MAX_EXPERTS))]


def _final_accuracies(rows: list[AccuracyRow]) -> dict[str, list[float]]:
    """Label -> accuracies of the final evaluations (eval.json / eval_infer.json)."""
    out = {}
    for row in rows:
        if row.what not in ("best evaluation while distilling",) and row.protocol != "teacher":
            out[f"{row.what} ({row.model}, {row.protocol})"] = row.accuracies
    return out
