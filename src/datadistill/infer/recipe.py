"""INFER as a recipe: how ``run`` and ``validate`` load, run and summarise it.

Registers the :class:`~datadistill.recipes.Recipe` ``infer`` and the INFER method's
description for the report.
"""

from __future__ import annotations

from pathlib import Path

from datadistill.infer.config import load_infer_config
from datadistill.infer.pipeline import run_infer
from datadistill.recipes import Method, Recipe, register_method, register_recipe
from datadistill.runtime.progress import plural

# INFER is its own recipe, not a trajectory-matching preset; this describes it the same way
# (paper, what differs, deviations from the official code) for `report.html`, which finds it
# in the method registry.
INFER_METHOD = register_method(Method(
    name="infer",
    paper="Zhang, Du, Liu, Zhou, Breaking Class Barriers: Efficient Dataset Distillation via "
    "Inter-Class Feature Compensator, ICLR 2025",
    changes="its own recipe: class groups of one real image per class, one compensator shared "
    "by a group per BatchNorm teacher, static soft labels (the teachers' mean logits), "
    "students trained with mixup and KL divergence (temperature 30)",
    deviations=(
        "base images and compensators are stored as tensors, with no JPEG round trip",
        "teachers and BatchNorm hooks are built once, not per class group",
        "the reported accuracy is the students' last epoch; the best of the periodic "
        "evaluations (what the official scripts print) is given beside it",
    ),
))


def _run(cfg, out_dir: Path, progress: bool = True, restart: bool = False):
    """INFER keeps no checkpoint: every run starts over, so ``restart`` changes nothing."""
    return run_infer(cfg, out_dir, progress=progress)


def infer_lines(result, out_dir: Path) -> list[str]:
    """What the CLI prints after an INFER run: student accuracy, storage, where the set is."""
    rep = result.report
    lines = [f"INFER student ({rep.protocol}), last epoch: {100 * rep.mean:.2f} ± "
             f"{100 * rep.std:.2f} % ({plural(len(rep.accuracies), 'run')}, {rep.model}, "
             f"{rep.protocol})"]
    if "best_mean" in rep.settings:
        lines.append(f"  best of periodic evaluations (as INFER reports): "
                     f"{100 * rep.settings['best_mean']:.2f} %")
    st = result.infer_set.storage()
    lines.append(f"  storage: {st.image_units} of {st.budget_units} image-units (IPC budget), "
                 f"{st.instances} training instances, label table {st.label_bytes} bytes")
    lines.append(f"set written to {result.path}")
    return lines


RECIPE = register_recipe(Recipe(
    name="infer", summary="INFER: inter-class feature compensators (teachers first)",
    load=load_infer_config, run=_run, label=lambda c: f"infer, {c.data.dataset}, IPC {c.ipc}",
    default_out=lambda c: f"runs/{c.data.dataset}_infer_ipc{c.ipc}", lines=infer_lines))
