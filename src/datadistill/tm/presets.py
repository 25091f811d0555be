"""Method presets: each trajectory-matching method is MTT plus a documented set of overrides.

A preset is data, not code: a mapping of pipeline-config overrides (top-level keys and the
``experts`` / ``distill`` / ``curriculum`` / ``evaluation`` sections) that switches the
strategy slots of the one distiller (:mod:`datadistill.tm.distill`) and the one expert trainer
(:mod:`datadistill.experts`). Precedence: dataclass defaults < preset < YAML < ``key=value``.
The preset holds what a method changes everywhere (its defaults are those of the official
code's argparse / ``utils/cfg.py``); the shipped YAML configs
(``configs/<dataset>/<method>_ipc<N>.yaml``) hold the official per-dataset, per-IPC values.

=======  ==========================================================================
mtt      Cazenavette et al., CVPR 2022: plain-SGD experts, window U[0, T+), hard labels
ftd      Du et al., CVPR 2023: GSAM ("flat") experts + an EMA of the images, a second output
datm     Guo et al., ICLR 2024: FTD experts for 100 epochs, difficulty-aligned (expanding)
         window, correct-sample init, learnable soft labels, loss threshold, 10000 iterations
mdatm    Zhou et al., arXiv 2410.13311 (ECCV-2024 DD challenge, track 1): DATM with hard
         labels, a narrower window, no ZCA, scored with the challenge protocol
pad      Li, Guo et al., arXiv 2408.03360: DATM + an easy-to-hard expert curriculum by
         difficulty (EL2N) + matching only the deep parameters (depth mask)
=======  ==========================================================================

Every preset's ``deviations`` names where it differs from the official code, and why.

A method from outside the package is one call of :func:`register_preset` (its ``Preset``,
and the folder that holds its ``_methods/<name>.yaml`` fragment and its
``<dataset>/<name>_ipc<N>.yaml`` configs); then every command, the report and
``datadistill score`` know it as they know the shipped ones (README, "Adding a method").

Example:
    >>> get_preset("datm").overrides["distill"]["label_mode"]
    'soft'
    >>> sorted(list_presets())
    ['datm', 'ftd', 'mdatm', 'mtt', 'pad']
"""

from __future__ import annotations

import copy
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datadistill.config import add_config_root, config_roots, method_values, remove_config_root
from datadistill.errors import ConfigError
from datadistill.evaluation import ddranking_config as ddranking
from datadistill.recipes import Method, register_method, unregister_method


@dataclass(frozen=True)
class Preset(Method):
    """One method: its paper, what it changes vs MTT, its overrides and named deviations.

    ``ddranking`` names the DD-Ranking evaluator preset its sets are scored with
    (``configs/_evaluation/ddranking.yaml`` ``presets:``, e.g. ``hard_dsa``); None: the
    shipped map of that file (``methods:``) decides, as for every shipped preset.
    """

    ddranking: str | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """The method's default values, read from ``configs/_methods/<name>.yaml`` and the
        fragments it ``extends:`` ({} if none).

        YAML holds every value; the preset only names the file.
        """
        return method_values(self.name)


_GUARD = ("divergence guard: a NaN/inf loss or a non-positive learned step size stops the run "
          "with an error instead of continuing silently (MTT issues #16/#24/#42)")

# M-DATM's window keeps DATM's T- and this fraction of DATM's width: fixed
# [T-, T- + ceil(k (T+ - T-))). Chosen by benchmarks/mdatm_window.py (RESULTS.md section 4).
MDATM_WINDOW_FRACTION = 0.75


def mdatm_max_start(min_start: int, datm_max_start: int,
                    fraction: float = MDATM_WINDOW_FRACTION) -> int:
    """M-DATM's T+ from DATM's window [T-, T+): T- + ceil(fraction * (T+ - T-)).

    >>> mdatm_max_start(10, 50)
    40
    """
    return min_start + math.ceil(fraction * (datm_max_start - min_start))

PRESETS: dict[str, Preset] = {
    "mtt": Preset(
        name="mtt",
        paper="Cazenavette et al., Dataset Distillation by Matching Training Trajectories, "
        "CVPR 2022",
        changes="baseline: plain-SGD experts, window U[0, T+), hard labels, normalised "
        "parameter-matching loss",
        deviations=(_GUARD,),
    ),
    "ftd": Preset(
        name="ftd",
        paper="Du et al., Minimizing the Accumulated Trajectory Error to Improve Dataset "
        "Distillation, CVPR 2023",
        changes="experts trained with GSAM (rho 0.01, alpha per setting, adaptive); an EMA of "
        "the images (decay per setting) is a second output, evaluated on its own",
        deviations=(
            "fixed bug: the EMA set is evaluated from freshly initialised networks; the "
            "official code trains the EMA evaluation on the network already trained 1000 "
            "epochs on the raw images (2 x 1000 epochs)",
            "the reported EMA set is the last one (distill/ema_last), not the best by accuracy",
            "GSAM alpha follows paper Table 7 per setting; the official run_buffer.sh leaves "
            "the argparse default 0.4",
            _GUARD,
        ),
    ),
    "datm": Preset(
        name="datm",
        paper="Guo et al., Towards Lossless Dataset Distillation via Difficulty-Aligned "
        "Trajectory Matching, ICLR 2024",
        changes="GSAM experts (alpha 0.3) for 100 epochs; window [T-, T) expanding to T+ (or "
        "fixed) per IPC; init from correctly classified reals; learnable soft labels (lr_y, "
        "momentum 0.9); skip updates with loss > threshold; 10000 iterations; eval batch 128",
        deviations=(
            "eval.json also reports the best set evaluated with its argmax hard labels "
            "(same seeds), so the soft-label effect is visible (`argmax`; DD-Ranking's own hard "
            "labels are by class order: datadistill score)",
            "correct-sample init and soft-label init use our expert store order, not the "
            "official files[int(cur/10)%10][cur%10] walk (which assumes 10 files of 10 "
            "experts)",
            _GUARD,
        ),
    ),
    "mdatm": Preset(
        name="mdatm",
        paper="Zhou, Jiang, Xie, Cao, Yang, M-DATM: 1st place of the ECCV-2024 Dataset "
        "Distillation Challenge, track 1, arXiv 2410.13311",
        changes="DATM without soft labels (hard, class-major) and with a narrower, earlier "
        "window; no ZCA; the challenge tensor file is exported and scored with the challenge "
        "protocol (fixed lr 0.01, ConvNet-3 at any resolution)",
        deviations=(
            "the matching windows are NOT the paper's numbers (the code repository is empty, "
            "the paper body was not available): fixed window [T-, T- + ceil(k (T+ - T-))) from "
            "DATM's config of the same dataset (IPC 5 uses the IPC-10 config), with the width "
            f"fraction k = {MDATM_WINDOW_FRACTION:g} chosen by a search on Fashion-MNIST "
            "(benchmarks/mdatm_window.py, RESULTS.md section 4)",
            "the other hyper-parameters are DATM's, including pixel lrs tuned in ZCA space",
            "the shipped Tiny ImageNet configs distil with ConvNet-3 at 64 px (the challenge "
            "evaluator's network), not DATM's ConvNetD4",
            "eval.json also has the classic protocol (learned lr) beside the challenge score",
            _GUARD,
        ),
    ),
    "pad": Preset(
        name="pad",
        paper="Li, Guo et al., Prioritize Alignment in Dataset Distillation, arXiv 2408.03360",
        changes="DATM, plus experts trained on an easy-to-hard data schedule by EL2N "
        "difficulty (official CIFAR-10 schedule), plus a matching loss restricted to the "
        "deep parameters (param_mask depth, ratio per setting)",
        deviations=(
            "param_mask defaults to 'depth' (drop the shallowest ratio*P entries): the paper "
            "prioritises deep layers, its ablation varies the 'discarded shallow parameter "
            "ratio' and the shipped ratios were set while PAD_depth.py was the code; HEAD's "
            "loss-based variant (param_mask: loss) crashes as shipped (missing "
            "loss_threshold_low key)",
            "difficulty: EL2N (the metric the paper is reported to name; unverified) computed "
            "here from briefly trained networks of the experts' architecture; "
            "the official repo only ships GraNd-named index files (importable with "
            "curriculum.difficulty_file)",
            "fixed bug: the scheduler uses each class's real size; the official code hard-codes "
            "5000 per class, so CIFAR-100/Tiny's remove phases select no data",
            "only CIFAR-10's schedule is published; it is used for every dataset and IPC",
            _GUARD,
        ),
    ),
}


# methods registered from outside the package -> the config folder each brought (or None)
_ADDED: dict[str, Path | None] = {}


def register_preset(preset: Preset, configs: str | Path | None = None) -> Preset:
    """Add a trajectory-matching method from outside the package; returns ``preset``.

    ``configs`` is the method's own config folder, laid out as the shipped one: its default
    values in ``_methods/<name>.yaml`` (which may ``extends:`` a shipped fragment) and its
    per-setting configs ``<dataset>/<name>_ipc<N>.yaml``, found by name after the shipped
    ones (:func:`datadistill.config.add_config_root`). The preset becomes what
    ``method: <name>`` resolves to, the report's description of the method
    (:func:`datadistill.recipes.register_method`) and, with ``preset.ddranking``, the
    DD-Ranking preset ``datadistill score`` uses for its sets. A taken name, an unknown
    DD-Ranking preset or a fragment that does not resolve is a ConfigError, and nothing is
    registered.

    Example:
        >>> register_preset(Preset(name="my_mtt", paper="...", changes="...",
        ...                        ddranking="hard_dsa"), configs="my_method/configs")
        ...                                                             # doctest: +SKIP
    """
    if preset.name in PRESETS:
        raise ConfigError(f"a method named {preset.name!r} is already registered; choose "
                          f"another name (taken: {', '.join(sorted(PRESETS))})")
    if preset.ddranking is not None and preset.ddranking not in ddranking.PRESETS:
        raise ConfigError(f"method {preset.name!r}: ddranking={preset.ddranking!r} is no "
                          f"DD-Ranking preset; use one of {', '.join(sorted(ddranking.PRESETS))}")
    root = None
    if configs is not None:
        known = set(config_roots())
        root = add_config_root(configs)
        try:
            method_values(preset.name)  # its fragment and what it extends resolve
        except ConfigError:
            if root not in known:
                remove_config_root(root)
            raise
    PRESETS[preset.name] = preset
    _ADDED[preset.name] = root
    register_method(preset)
    if preset.ddranking is not None:
        ddranking.ADDED_METHODS[preset.name] = preset.ddranking
    return preset


def unregister_preset(name: str) -> None:
    """Undo :func:`register_preset` for method ``name`` (a shipped preset stays)."""
    if name not in _ADDED:
        raise ConfigError(f"{name!r} is not a method added with register_preset")
    root = _ADDED.pop(name)
    del PRESETS[name]
    unregister_method(name)
    ddranking.ADDED_METHODS.pop(name, None)
    if root is not None and root not in _ADDED.values():
        remove_config_root(root)


def list_presets() -> list[str]:
    """Names of the registered presets, in registry order (the shipped ones, MTT first)."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError naming the available ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; available presets: {', '.join(sorted(PRESETS))}"
        ) from None


def preset_overrides(name: str, dataset: str | None = None, ipc: int | None = None) -> dict:
    """A deep copy of the overrides the preset applies beneath the YAML file.

    ``dataset`` and ``ipc`` are accepted for presets that would depend on them; the current
    ones do not (per-setting values live in the shipped YAMLs).
    """
    return copy.deepcopy(get_preset(name).overrides)


def presets_table(width: int = 100) -> str:
    """A plain-text table of the presets: name, paper, change vs MTT, deviations.

    Example:
        >>> "datm" in presets_table()
        True
    """
    wrap = textwrap.TextWrapper(width=width - 8, subsequent_indent="  ")
    lines = [f"{'preset':<8}what it changes vs MTT; paper; deviations from the official code",
             "-" * width]
    for p in PRESETS.values():
        first, *rest = textwrap.wrap(p.changes, width - 8)
        lines.append(f"{p.name:<8}{first}")
        lines += [f"{'':<8}{line}" for line in rest]
        lines += [f"{'':<8}{line}" for line in textwrap.wrap(f"paper: {p.paper}", width - 8)]
        for dev in p.deviations:
            lines += [f"{'':<8}{line}" for line in wrap.wrap(f"- {dev}")]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


for _preset in PRESETS.values():  # the report describes every shipped preset
    register_method(_preset)
