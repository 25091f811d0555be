"""Curves of a run as PNG figures (matplotlib, Agg backend, no pyplot global state).

- :func:`distill_curves`: matching loss, learned step size and evaluation accuracy over the
  iterations of a distillation (the rows of ``metrics.jsonl``);
- :func:`expert_curves`: per-epoch test accuracy of every expert, with their mean;
- :func:`accuracy_bars`: mean +- std accuracy of several evaluated sets (distilled vs random
  subset), each run as a dot.

Each returns a matplotlib ``Figure`` (None when there is nothing to draw); :func:`save_figure`
writes it as PNG atomically and returns the bytes (for embedding in the report).

Example:
    >>> rows = [json.loads(l) for l in open("runs/x/distill/metrics.jsonl")]  # doctest: +SKIP
    >>> save_figure(distill_curves(rows), "runs/x/figures/distill.png")      # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from datadistill.io import atomic_write
from datadistill.runtime.progress import plural

DPI = 100
JOIN_FROM = 10  # evaluations drawn as markers only below this many, joined by a line from it


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot may have selected
    return fig


def _finite(values) -> bool:
    return any(v is not None and math.isfinite(v) for v in values)


def distill_curves(rows: list[dict], eval_title: str = "") -> Figure | None:
    """Loss, learned step size (training rows) and accuracy (evaluation rows) vs iteration.

    Rows are those of ``metrics.jsonl``: training rows have ``loss``/``syn_lr``; evaluation
    rows have ``eval: true`` and ``mean``/``std`` (fractions), ``ema: true`` for FTD's EMA set.
    ``eval_title`` heads the accuracy panel (e.g. how many networks each evaluation trains).
    The x ticks end at the last iteration; the accuracy axis stays within 0-100 %.
    """
    train = [r for r in rows if not r.get("eval") and "loss" in r]
    evals = [r for r in rows if r.get("eval") and r.get("mean") is not None]
    if not train and not evals:
        return None
    fig = _figure(8.0, 7.5)
    ax_loss, ax_lr, ax_acc = fig.subplots(3, 1, sharex=True)
    it = [r["iteration"] for r in train]
    ax_loss.plot(it, [r["loss"] for r in train], color="tab:blue", lw=1)
    skipped = [r for r in train if r.get("skipped")]
    if skipped:  # DATM: updates skipped because the loss exceeded the threshold
        ax_loss.plot([r["iteration"] for r in skipped], [r["loss"] for r in skipped], "x",
                     color="tab:red", ms=4, label="update skipped (threshold)")
        ax_loss.legend(loc="upper right")
    ax_loss.set_ylabel("matching loss")
    ax_lr.plot(it, [r["syn_lr"] for r in train], color="tab:green", lw=1)
    ax_lr.set_ylabel("learned step size")
    _accuracy_panel(ax_acc, evals)
    if eval_title:
        ax_acc.set_title(eval_title, fontsize=10)
    ax_acc.set_xlabel("iteration")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
    iterations = [r["iteration"] for r in train + evals]
    _ticks_ending_at_last(ax_acc, min(iterations), max(iterations))
    return fig


def _ticks_ending_at_last(ax, first: int, last: int) -> None:
    """Integer x ticks from about ``first`` whose last one is ``last`` (the axis ends there,
    with a small margin for the markers), e.g. 0, 20, ..., 100 for iterations 0-100."""
    span = max(last - first, 1)
    ticks = [int(t) for t in MaxNLocator(integer=True).tick_values(first, last)
             if first <= t <= last - 0.08 * span]  # none so near the last that labels overlap
    ax.set_xticks([*ticks, last])
    ax.set_xlim(first - 0.03 * span, last + 0.03 * span)


def _percent_limits(ax, low: float, high: float) -> None:
    """Accuracy axis (%) around [low, high] with a margin, never beyond 0-100 %."""
    pad = max(2.0, 0.1 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))


def _accuracy_panel(ax, evals: list[dict]) -> None:
    """Mean +- std (%) per evaluation: markers, joined by a line only from JOIN_FROM
    evaluations on (a line between a few points suggests values that were never measured)."""
    for ema, label, color in ((False, "distilled set", "tab:purple"),
                              (True, "EMA set", "tab:orange")):
        sel = [r for r in evals if bool(r.get("ema")) == ema]
        if sel:
            ax.errorbar([r["iteration"] for r in sel], [100 * r["mean"] for r in sel],
                        yerr=[100 * (r.get("std") or 0.0) for r in sel], marker="o", ms=5,
                        capsize=3, color=color, label=label,
                        linestyle="-" if len(sel) >= JOIN_FROM else "none", lw=1)
    if any(r.get("ema") for r in evals):
        ax.legend(loc="lower right")
    if not evals:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                transform=ax.transAxes)
    else:
        _percent_limits(ax, min(100 * (r["mean"] - (r.get("std") or 0.0)) for r in evals),
                        max(100 * (r["mean"] + (r.get("std") or 0.0)) for r in evals))
    ax.set_ylabel("test accuracy (%)")


def expert_curves(accuracies: list[np.ndarray]) -> Figure | None:
    """Per-epoch test accuracy (fractions, (E+1,) each, epoch 0 = init) of every expert.

    Experts without recorded accuracy (imported buffers: all NaN) are left out; None when
    none has any.
    """
    curves = [np.asarray(a, dtype=float) for a in accuracies]
    curves = [a for a in curves if np.isfinite(a).any()]
    if not curves:
        return None
    fig = _figure(8.0, 3.5)
    ax = fig.subplots()
    for a in curves:
        ax.plot(np.arange(len(a)), 100 * a, color="tab:gray", lw=0.7, alpha=0.5)
    length = min(len(a) for a in curves)
    mean = np.nanmean(np.stack([a[:length] for a in curves]), axis=0)
    ax.plot(np.arange(length), 100 * mean, color="tab:blue", lw=2,
            label=f"mean of {plural(len(curves), 'expert')}")
    ax.set_xlabel("epoch (0 = initialisation)")
    _ticks_ending_at_last(ax, 0, max(len(a) for a in curves) - 1)
    _percent_limits(ax, 100 * float(np.nanmin(np.concatenate(curves))),
                    100 * float(np.nanmax(np.concatenate(curves))))
    ax.set_ylabel("test accuracy (%)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def accuracy_bars(entries: dict[str, list[float]]) -> Figure | None:
    """Horizontal bars of mean +- std (%) per evaluated set; each run's accuracy as a dot;
    the mean +- std written under each label (the axis spans 0-100 %).

    ``entries`` maps a label (e.g. "distilled (convnet)", "random subset") to accuracies in
    [0, 1]. None when no entry has a finite accuracy.
    """
    entries = {k: v for k, v in entries.items() if v and _finite(v)}
    if not entries:
        return None
    fig = _figure(8.0, 0.75 * len(entries) + 1.2)
    ax = fig.subplots()
    labels = []
    for y, (label, values) in enumerate(entries.items()):
        accs = 100 * np.asarray(values, dtype=float)
        ax.barh(y, accs.mean(), xerr=accs.std(), color="tab:blue" if y % 2 == 0 else
                "tab:cyan", alpha=0.8, capsize=4)
        ax.plot(accs, np.full(len(accs), y), "k.", ms=4)
        labels.append(f"{label}\n{accs.mean():.2f} ± {accs.std():.2f} %")  # beside, not on
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The PNG encoding of ``fig``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path) -> bytes:
    """Write ``fig`` as PNG to ``path`` atomically; returns the PNG bytes."""
    data = figure_png(fig)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return data
