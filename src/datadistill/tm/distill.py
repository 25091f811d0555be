"""The trajectory-matching distiller: one loop for MTT and, through its strategy fields, for
FTD, DATM, M-DATM and PAD (Cazenavette et al., "Dataset Distillation by Matching Training
Trajectories", CVPR 2022, Algorithm 1).

Each iteration: take the next expert tau* (shuffled order, reshuffled when exhausted), draw a
start epoch t from the window, unroll N student steps from tau*_t on the synthetic set
(:func:`datadistill.matching.unroll_student`), compare with tau*_{t+M}
(:func:`datadistill.matching.matching_loss`, Eq. 3) and update the images (SGD, momentum 0.5,
``lr_img``) and the learnable step size alpha (SGD, momentum 0.5, ``lr_lr``). Evaluation
(classic protocol, learned lr) runs every ``eval_every`` iterations including 0 and the last.

Outputs in ``out_dir``: ``best/`` and ``last/`` distilled sets, ``grids/iter_XXXXX.png``,
``metrics.jsonl``, ``checkpoint.pt`` (resume: a resumed CPU run ends bitwise equal to an
uninterrupted one), ``config.json``.

Several processes (``torchrun --nproc_per_node K -m datadistill distill ...``): adjoint mode
only (the unrolled graph cannot be split; :func:`check_processes`). Each student step's
mini-batch is shared by the ranks (:mod:`datadistill.matching.adjoint`), every rank holds the
same synthetic set, and rank 0 alone writes the outputs; a resume hands rank 0's checkpoint
to all ranks, so a run resumes with any K. The distilled sets record ``world_size``.

Strategy fields (defaults = MTT): ``window`` "expanding" (DATM), ``label_mode`` "soft" with
``lr_y``/``momentum_y`` (DATM/PAD), ``pix_init`` "samples_predicted_correctly" (DATM),
``threshold`` (DATM: skip the update when the loss exceeds it), ``ema_decay`` (FTD),
``param_mask`` + ``param_mask_ratio`` (PAD). Gradient mode (any preset): ``grad_mode``
"unrolled" (official) or "adjoint" (:func:`datadistill.matching.student_trajectory` then
:func:`datadistill.matching.adjoint_backward`: the same gradient at the memory of one student
step; a skipped iteration skips the backward pass), with ``micro_batch`` chunks.
``threshold`` and ``ema_decay`` are coupled on purpose: the EMA is updated after each image
update, as FTD's is after each optimiser step, so an iteration skipped by the threshold
updates neither the images nor the EMA (which thus averages updates, not iterations). No
official code combines the two: DATM has the skip and no EMA, FTD the EMA and no skip.

Deviations from the official code:

- divergence guard: a NaN/inf loss, a non-finite image, or a step size that becomes NaN/inf or
  <= 0 stops the run with a DivergenceError (the official code continues silently, MTT issues
  #16/#24/#42); the last good checkpoint and the best set are kept, a NaN set is never saved;
- the official loop runs ``Iteration + 1`` updates, the last one after the final evaluation
  and never evaluated or saved; here ``iterations`` updates, then the final evaluation;
- randomness comes from generators seeded by ``seed`` (the official code reseeds the global RNG
  from the clock), so runs repeat exactly.

Example:
    >>> cfg = DistillConfig(dataset="digits", ipc=1, syn_steps=10, expert_epochs=2,
    ...                     max_start_epoch=2, lr_img=100, iterations=50,
    ...                     expert_dir="runs/digits/experts")               # doctest: +SKIP
    >>> result = distill(cfg, "runs/digits/mtt")                            # doctest: +SKIP
    >>> result.best_accuracy                                                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from datadistill import distributed
from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.checks import check_distill, check_ipc_fits, check_positive, check_window
from datadistill.config import RunContext, check_choice, check_saved_config
from datadistill.data import check_prepared, prepare
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError, DivergenceError
from datadistill.evaluation import (
    protocols as evaluation,  # module: evaluation.evaluate at call time
)
from datadistill.experts import ExpertStore
from datadistill.labels import is_soft
from datadistill.matching import (
    AdjointOptions,
    StudentSteps,
    adjoint_backward,
    check_micro_batch,
    matching_loss,
    sample_start_epoch,
    student_forward,
    student_trajectory,
    unroll_student,
    window_bounds,
)
from datadistill.matching.adjoint import check_shared_batch
from datadistill.matching.axes import (
    AXES,
    EmaAxis,
    GradAxis,
    LabelAxis,
    MaskAxis,
    WindowAxis,
    check_at_least,
)
from datadistill.matching.ema import ImageEMA
from datadistill.matching.init import ExpertClassifier, select_correct_samples
from datadistill.matching.masks import param_mask
from datadistill.matching.soft_labels import init_soft_labels
from datadistill.report.page import refresh_report
from datadistill.runtime.lock import locks_output
from datadistill.runtime.progress import progress_bar
from datadistill.tm.checkpoint import DistillState, MetricsLog, load_checkpoint, save_checkpoint
from datadistill.tm.memory import check_memory
from datadistill.training import build_model, derive_seeds

logger = logging.getLogger(__name__)

PIX_INITS = ("real", "noise", "samples_predicted_correctly")
# Keys that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_KEYS = ("iterations", "eval_every", "eval_runs", "eval_epochs", "eval_batch",
                  "device", "data_root", "expert_dir", "checkpoint_every", "memory_check",
                  "snapshots")


@dataclass
class DistillSection(GradAxis, EmaAxis, MaskAxis, LabelAxis, WindowAxis):
    """The ``distill:`` section of a pipeline config: the loop's own keys, and the strategy
    axes (window, labels, mask, ema, grad: :mod:`datadistill.matching.axes`) that presets
    switch. Defaults are MTT's (``distill.py`` argparse). The bases are listed last axis
    first, so that the fields (and ``Valid keys`` of an error) read window, labels, mask,
    ema, grad, then the loop's own."""

    syn_steps: int = 20  # N: unrolled student steps per iteration
    lr_img: float = 1000.0  # SGD lr on the pixels (momentum 0.5)
    lr_lr: float = 1e-5  # SGD lr on the learnable step size (momentum 0.5)
    lr_teacher: float = 0.01  # initial learnable step size alpha_0
    batch_syn: int | None = None  # synthetic mini-batch per student step; None = all images
    pix_init: str = "real"  # real | noise | samples_predicted_correctly (DATM)
    iterations: int = 5000  # outer updates
    eval_every: int = 100  # evaluate at 0, eval_every, ... and at the last iteration
    eval_runs: int = 5  # fresh networks per evaluation (0: no evaluation, best = last)
    eval_epochs: int = 1000  # training epochs per evaluation network (classic protocol)
    eval_batch: int = 256  # evaluation mini-batch
    expert_dir: str | None = None  # expert store (distill(store=...) overrides it)
    max_experts: int | None = None  # use only the first K experts (ablations)
    dsa: bool = True  # DSA in the student steps and the evaluation
    dsa_strategy: str | None = None  # None: the dataset's default strategy
    threshold: float | None = None  # skip the update when the loss exceeds it (DATM: 1.0)
    checkpoint_every: int = 50  # iterations between checkpoints (also after every evaluation)

    def __post_init__(self) -> None:
        check_choice("distill.pix_init", self.pix_init, PIX_INITS)
        check_at_least(self, ("syn_steps", "checkpoint_every"), 1)
        check_at_least(self, ("iterations", "eval_every", "eval_runs"), 0)
        check_positive("distill.lr_teacher (initial step size)", self.lr_teacher)
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ConfigError(f"distill.batch_syn must be >= 1 or null, got {self.batch_syn}")
        for axis in AXES:  # each strategy axis is validated beside its math (matching/*.py)
            axis.check(self)


@dataclass
class DistillConfig(DistillSection, RunContext):
    """Trajectory-matching hyper-parameters; defaults are MTT's (``distill.py`` argparse).

    The keys are flat: the run context (data, model, seed, device: :class:`RunContext`),
    ``method`` and ``ipc``, then the ``distill`` section (:class:`DistillSection`, grouped by
    strategy axis in :mod:`datadistill.matching.axes`).

    ``grad_mode`` chooses how the gradient reaches the images, the step size and the soft
    labels through the ``syn_steps`` student steps. ``"unrolled"`` (default, the official
    way) keeps the graph of every step: memory grows with syn_steps x batch_syn.
    ``"adjoint"`` runs the steps without a graph, then replays them backwards one at a time
    (:mod:`datadistill.matching.adjoint`): the same gradient up to rounding, from the same
    random draws, at the memory of one step, for about one extra forward and backward per
    step. ``micro_batch`` (adjoint only) also splits each step's mini-batch into chunks of
    that many images, so one step's graph holds ``micro_batch`` images; exact for students
    whose samples do not interact (a BatchNorm student is refused). Both are fixed for a run:
    a checkpoint resumes only with the values it was written with.

    Example:
        >>> cfg = DistillConfig(dataset="cifar100", ipc=50, syn_steps=80, batch_syn=125,
        ...                     grad_mode="adjoint", micro_batch=25)
        >>> cfg.grad_mode, cfg.micro_batch
        ('adjoint', 25)
    """

    method: str = "mtt"  # preset name, recorded with the outputs
    ipc: int = 1  # synthetic images per class

    def __post_init__(self) -> None:
        check_at_least(self, ("ipc",), 1)
        super().__post_init__()


@dataclass
class DistillResult:
    """Where the outputs are and how the run ended."""

    out_dir: Path
    best_dir: Path  # best/ (by mean evaluation accuracy; = last/ when eval_runs is 0)
    last_dir: Path
    metrics_path: Path
    checkpoint_path: Path
    best_accuracy: float | None  # mean over eval_runs, fraction in [0, 1]
    best_iteration: int | None
    final_syn_lr: float
    iterations_done: int
    seconds: float


@dataclass
class _Run:
    """Everything fixed for the run: data, experts, student, augmentation, output paths."""

    cfg: DistillConfig
    data: object  # RealData
    store: object  # ExpertStore
    model: torch.nn.Module
    forward: Callable
    dsa: object | None
    dsa_strategy: str | None
    out: Path
    num_experts: int


@locks_output("out_dir")
def distill(cfg: DistillConfig, out_dir: str | Path, *, data=None, store=None,
            progress: bool = True, resume: bool = True,
            on_iteration: Callable[[int, dict], None] | None = None) -> DistillResult:
    """Run trajectory matching (MTT Algorithm 1) and write the outputs to ``out_dir``.

    Args:
        cfg: the hyper-parameters.
        out_dir: output directory (created).
        data: :class:`datadistill.data.RealData`; default ``prepare(cfg.dataset, zca=cfg.zca)``.
        store: :class:`datadistill.experts.ExpertStore` or its folder; default
            ``ExpertStore(cfg.expert_dir)`` (opened after the memory and config checks).
        progress: show a progress bar (loss, step size, last accuracy).
        resume: continue from ``out_dir/checkpoint.pt`` if present (else start over).
        on_iteration: called as ``on_iteration(it, row)`` after every update (logging hooks;
            an exception raised there stops the run like an interruption).

    Returns:
        A :class:`DistillResult`.
    """

    t0 = time.time()
    check_processes(cfg)
    check_memory(cfg, data)  # before any work: an unrolled run that cannot fit is refused
    run = _setup(cfg, out_dir, data, store)
    # rank 0's folder decides (other ranks may not see it, e.g. on another node)
    resumed = distributed.broadcast_object(resume and (run.out / "checkpoint.pt").is_file())
    state, opts, gens, ema = _initial_state(run, resumed)  # checks a resumed config first
    log = _NullLog(run.out / "metrics.jsonl")  # rank 0 alone writes (module docstring)
    if distributed.is_main():
        (run.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2)
                                             + "\n")
        log = MetricsLog(run.out / "metrics.jsonl", state.iteration if resumed else None)
    eval_points = _eval_points(cfg)
    bar = progress_bar(total=cfg.iterations, initial=state.iteration, desc="distill",
                       enabled=progress, stage=True)
    last_acc, row = state.best_accuracy, None
    for it in range(state.iteration, cfg.iterations + 1):
        state.iteration = it
        if it in eval_points and state.evaluated != it:
            last_acc = _evaluate_and_save(run, state, ema, it, log)
            _checkpoint(run, state, opts, gens, ema)
        elif it % cfg.checkpoint_every == 0:
            _checkpoint(run, state, opts, gens, ema)
        if it == cfg.iterations:
            break
        row = _matching_step(run, state, opts, gens, ema, it)
        log.write(row)
        bar.update(1)
        _show(bar, row, last_acc, state)
        if on_iteration is not None:
            on_iteration(it, row)
    _show(bar, row, last_acc, state)  # the final evaluation came after the last step's postfix
    bar.close()
    return DistillResult(run.out, run.out / "best", run.out / "last", log.path,
                         run.out / "checkpoint.pt", state.best_accuracy, state.best_iteration,
                         float(state.syn_lr.detach()), cfg.iterations, time.time() - t0)


def _show(bar, row: dict | None, acc: float | None, state: DistillState) -> None:
    """The bar's postfix: the last step's loss and step size, the latest evaluation and the
    best one (the set kept in best/) with its iteration."""
    shown = {} if row is None else {"loss": f"{row['loss']:.4f}", "syn_lr": f"{row['syn_lr']:.3g}"}
    shown["acc"] = "-" if acc is None else f"{acc:.4f}"
    if state.best_accuracy is not None:
        shown["best"] = f"{state.best_accuracy:.4f}@{state.best_iteration}"
    bar.set_postfix(**shown)


# ----------------------------------------------------------------------------- setup


def check_processes(cfg: DistillConfig) -> None:
    """Under torchrun with several processes only adjoint mode can share the work."""
    k = distributed.world_size()
    if k > 1 and cfg.grad_mode != "adjoint":
        raise ConfigError(
            f"distill.grad_mode={cfg.grad_mode} runs in one process, but {k} were started "
            "(torchrun): the unrolled graph of all student steps cannot be split across "
            "processes. Set distill.grad_mode=adjoint (the same gradient; each student step's "
            "mini-batch is then shared by the processes), or run without torchrun.")


def _setup(cfg: DistillConfig, out_dir, data, store) -> _Run:

    check_distill(cfg)  # learning rates, evaluation sizes, device: before any data is read
    if data is None:
        data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca,
                       train_per_class=cfg.train_per_class)
    if store is None and cfg.expert_dir is None:
        raise ConfigError("distill needs experts: set distill.expert_dir or pass store=")
    if store is None or isinstance(store, (str, Path)):
        store = ExpertStore(cfg.expert_dir if store is None else store)
    _check_data(cfg, data)
    model = build_model(cfg, data.info)
    n_syn = data.info.num_classes * cfg.ipc
    check_micro_batch(model, cfg.micro_batch, min(cfg.batch_syn or n_syn, n_syn),
                      f"model={cfg.model}")
    check_shared_batch(model, distributed.world_size(), min(cfg.batch_syn or n_syn, n_syn),
                       f"model={cfg.model}")
    store.check_compatible(model, data.info, zca=cfg.zca)
    _check_store(cfg, store)
    strategy = (cfg.dsa_strategy or data.info.dsa_strategy) if cfg.dsa else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num = len(store) if cfg.max_experts is None else min(len(store), cfg.max_experts)
    store.check_complete(cfg.max_experts)
    store.check_files(num)  # every file sampled later: found damaged now, not mid-run
    forward = student_forward(model.to(cfg.device), fast=cfg.fast_student)
    return _Run(cfg, data, store, model, forward, DSA(strategy) if strategy else None,
                strategy, out, num)


def _check_data(cfg: DistillConfig, data) -> None:
    check_prepared(data, cfg.dataset, cfg.zca, "distill", cfg.train_per_class)
    check_ipc_fits(cfg.ipc, data.train.labels, data.info.class_names)


def _check_store(cfg: DistillConfig, store) -> None:

    made = (store.meta.get("config") or {}).get("train_per_class", cfg.train_per_class)
    if made != cfg.train_per_class:  # (a store that does not record it is not checked)
        def word(n):
            return "null" if n is None else n

        raise CompatibilityError(
            f"the experts in {store.directory} were trained with train_per_class={word(made)} "
            f"but this run has train_per_class={word(cfg.train_per_class)} (null: the whole "
            "training split): use a store trained on the same subset, or set "
            f"train_per_class={word(made)}")
    check_window(cfg.max_start_epoch, cfg.expert_epochs, store.epochs,
                 f"the experts in {store.directory} have")
    if len(store) == 0:
        raise CompatibilityError(f"the expert store {store.directory} holds no experts yet; "
                                 "run train_experts first.")


def _eval_points(cfg: DistillConfig) -> set[int]:
    points = {cfg.iterations}
    if cfg.eval_every > 0:
        points |= set(range(0, cfg.iterations + 1, cfg.eval_every))
    return points


def _seeds(seed: int, n: int) -> list[int]:

    return list(derive_seeds(seed, 7, n=n))


_GENERATORS = ("init", "expert", "window", "student")


def _initial_state(run: _Run, resumed: bool):
    """(state, optimisers, generators, ema): fresh, or restored from the checkpoint.

    Under several processes every rank draws from the same seeded generators, and rank 0's
    state (fresh or read from its checkpoint) is handed to all, so every rank starts equal.
    """
    cfg = run.cfg
    path = run.out / "checkpoint.pt"
    gens = {k: torch.Generator().manual_seed(s)
            for k, s in zip(_GENERATORS, _seeds(cfg.seed, len(_GENERATORS)), strict=True)}
    if resumed:
        state = load_checkpoint(path) if distributed.is_main() else None
        state = distributed.broadcast_object(state)
        check_resume(cfg, state.config, path)
        logger.info("resuming %s at iteration %d", run.out, state.iteration)
    else:
        state = distributed.broadcast_object(_fresh_state(run, gens))
    state.images = state.images.to(cfg.device).requires_grad_(True)
    state.syn_lr = state.syn_lr.to(cfg.device).requires_grad_(True)
    if is_soft(state.labels):
        state.labels = state.labels.to(cfg.device).requires_grad_(True)
    else:
        state.labels = state.labels.to(cfg.device)
    opts = _optimizers(cfg, state)
    for name, opt in opts.items():
        if name in state.optimizers:
            opt.load_state_dict(state.optimizers[name])
    for name, g in gens.items():
        if name in state.generators:
            g.set_state(state.generators[name])
    ema = _ema(cfg, state)
    return state, opts, gens, ema


def check_resume(cfg: DistillConfig, saved: dict, path: Path) -> None:
    """A checkpoint written with ``saved`` may be resumed under ``cfg`` (else an error)."""
    now = dataclasses.asdict(cfg)
    # A key added after the checkpoint was written (e.g. grad_mode) had its default then.
    saved = {f.name: f.default for f in dataclasses.fields(DistillConfig)
             if f.default is not dataclasses.MISSING} | saved
    check_saved_config(saved, now, path, what="config", free=RESUMABLE_KEYS,
                       fix="resume with the same settings, or rerun with --restart (Python: "
                       "resume=False) to start over.")


def _fresh_state(run: _Run, gens: dict[str, torch.Generator]) -> DistillState:
    cfg, info = run.cfg, run.data.info
    hard = torch.arange(info.num_classes).repeat_interleave(cfg.ipc)  # (N,) class-major
    images = _init_images(run, gens["init"])  # (N, C, H, W)
    labels = hard if cfg.label_mode == "hard" else _soft_labels(run, images, hard)
    order = torch.randperm(run.num_experts, generator=gens["expert"])
    return DistillState(iteration=0, images=images, labels=labels,
                        syn_lr=torch.tensor(float(cfg.lr_teacher)), optimizers={},
                        generators={}, expert_order=order, expert_pos=0,
                        config=dataclasses.asdict(cfg))


def _init_images(run: _Run, gen: torch.Generator) -> torch.Tensor:
    cfg, train, info = run.cfg, run.data.train, run.data.info
    if cfg.pix_init == "noise":
        return torch.randn(info.num_classes * cfg.ipc, info.channels, *info.image_size,
                           generator=gen)
    if cfg.pix_init == "samples_predicted_correctly":
        sel = select_correct_samples(train.images, train.labels, _FinalParams(run),
                                     ExpertClassifier(run.model, device=cfg.device), cfg.ipc,
                                     num_classes=info.num_classes, generator=gen)
        return sel.images.detach().cpu().clone()
    labels = train.labels.cpu()
    picks = []
    for c in range(info.num_classes):  # MTT get_images: a random permutation of class c
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:cfg.ipc]])
    # One (N, C, H, W) tensor filled class by class: a list of per-class parts joined by
    # torch.cat would hold the set twice at the peak, and the parts (small allocations) stay
    # resident in the heap after they are freed.
    out = torch.empty(sum(len(p) for p in picks), *train.images.shape[1:],
                      dtype=train.images.dtype)
    row = 0
    for pick in picks:
        out[row:row + len(pick)] = train.images[pick.to(train.images.device)].detach()
        row += len(pick)
    return out


class _FinalParams:
    """Lazy sequence of each expert's final-epoch flat parameters (DATM's label model)."""

    def __init__(self, run: _Run) -> None:
        self.store, self.n = run.store, run.num_experts

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.store.load(i)[-1]


def _soft_labels(run: _Run, images: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:

    only_correct = run.cfg.pix_init == "samples_predicted_correctly"
    return init_soft_labels(images, hard, _FinalParams(run), run.model,
                            only_correct=only_correct, device=run.cfg.device).detach()


def _optimizers(cfg: DistillConfig, state: DistillState) -> dict[str, torch.optim.Optimizer]:
    opts = {"images": torch.optim.SGD([state.images], lr=cfg.lr_img, momentum=0.5),
            "syn_lr": torch.optim.SGD([state.syn_lr], lr=cfg.lr_lr, momentum=0.5)}
    if cfg.label_mode == "soft":
        opts["labels"] = torch.optim.SGD([state.labels], lr=cfg.lr_y, momentum=cfg.momentum_y)
    return opts


def _ema(cfg: DistillConfig, state: DistillState):
    if cfg.ema_decay is None:
        return None

    ema = ImageEMA(state.images, cfg.ema_decay)
    if state.ema is not None:
        ema.load_state_dict(state.ema)
    return ema


# ----------------------------------------------------------------------------- one iteration


def _next_expert(run: _Run, state: DistillState, gen: torch.Generator) -> int:
    if state.expert_pos >= len(state.expert_order):  # exhausted: reshuffle (MTT)
        state.expert_order = torch.randperm(run.num_experts, generator=gen)
        state.expert_pos = 0
    i = int(state.expert_order[state.expert_pos])
    state.expert_pos += 1
    return i


def _matching_step(run: _Run, state: DistillState, opts, gens, ema, it: int) -> dict:
    """One outer update (MTT Algorithm 1, lines 4-12); returns the metrics row."""
    cfg, t0 = run.cfg, time.time()
    expert = _next_expert(run, state, gens["expert"])
    low, high = window_bounds(cfg.window, it, min_start=cfg.min_start_epoch,
                              max_start=cfg.max_start_epoch,
                              current_max_start=cfg.current_max_start_epoch,
                              expansion_end=cfg.expansion_end)
    start = sample_start_epoch(low, high, gens["window"])
    theta0, target = (t.to(cfg.device) for t in
                      run.store.epoch_pair(expert, start, cfg.expert_epochs))  # (P,) each
    theta_n, traj = _student(run, state, gens["student"], theta0)
    loss = matching_loss(theta_n, theta0, target, _mask(cfg, theta_n, target))
    value = float(loss.detach())
    _guard(math.isfinite(value), f"the matching loss became {value} at iteration {it}")
    learnable = [state.images, state.syn_lr] + ([state.labels] if is_soft(state.labels) else [])
    skipped = cfg.threshold is not None and value > cfg.threshold  # DATM: no update
    if not skipped:
        grads = _gradients(run, state, loss, theta_n, traj, learnable)
        for p, g in zip(learnable, grads, strict=True):
            p.grad = g
        for opt in opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _check_state(state, it)
        if ema is not None:
            ema.update(state.images)
    return {"iteration": it, "loss": value, "syn_lr": float(state.syn_lr.detach()),
            "start_epoch": start, "expert": expert, "skipped": skipped,
            "time": round(time.time() - t0, 4)}


def _student(run: _Run, state: DistillState, gen: torch.Generator, theta0: torch.Tensor):
    """(theta_N, trajectory): unrolled, theta_N carries the graph of all steps and the
    trajectory is None; adjoint, theta_N is a leaf and the trajectory replays the steps."""
    cfg = run.cfg
    args = (run.forward, theta0, state.images, state.labels, state.syn_lr,
            StudentSteps(cfg.syn_steps, cfg.batch_syn, run.dsa))
    if cfg.grad_mode == "unrolled":
        return unroll_student(*args, generator=gen), None
    traj = student_trajectory(*args, generator=gen,
                              options=AdjointOptions(cfg.micro_batch, cfg.snapshots))
    return traj.final.detach().requires_grad_(True), traj


def _gradients(run: _Run, state: DistillState, loss, theta_n, traj, learnable) -> list:
    """d loss / d learnable (images, syn_lr[, soft labels]); theta_0 is a constant."""
    if traj is None:
        return list(torch.autograd.grad(loss, learnable))
    (lam,) = torch.autograd.grad(loss, theta_n)  # lambda_N: the loss enters here only
    with traj:  # frees a spilled trajectory's file, also on error
        out = adjoint_backward(run.forward, traj, state.images, state.labels, state.syn_lr,
                               lam)
    return [out.images, out.syn_lr] + ([out.labels] if len(learnable) == 3 else [])


def _mask(cfg: DistillConfig, theta_n: torch.Tensor, target: torch.Tensor):
    """PAD's parameter selection (None = every entry of the flat vector)."""
    if cfg.param_mask == "none":
        return None

    sq_err = (theta_n.detach() - target).square() if cfg.param_mask == "loss" else None
    return param_mask(cfg.param_mask, cfg.param_mask_ratio, numel=theta_n.numel(),
                      sq_err=sq_err, device=theta_n.device)


def _guard(ok: bool, what: str) -> None:
    if not ok:
        raise DivergenceError(f"{what}; the run stopped (checkpoint.pt and best/ hold the last "
                              "good state). Lower lr_lr and/or lr_img and rerun with "
                              "--restart (Python: resume=False).")


def _check_state(state: DistillState, it: int) -> None:
    lr = float(state.syn_lr.detach())
    _guard(math.isfinite(lr), f"the learned step size became {lr} at iteration {it}")
    _guard(lr > 0, f"the learned step size became {lr:.3g} <= 0 at iteration {it}")
    _guard(all_finite(state.images), f"the images became non-finite at iteration {it}")
    if is_soft(state.labels):  # soft labels: a NaN/inf logit would be saved at the next eval
        _guard(all_finite(state.labels), f"the soft labels became non-finite "
               f"at iteration {it} (lower lr_y)")


FINITE_CHUNK = 1 << 20  # elements checked at a time by all_finite (4 MB of float32)


def all_finite(t: torch.Tensor) -> bool:
    """``bool(torch.isfinite(t).all())``, a chunk at a time: on the whole tensor isfinite's
    temporaries (t == t, |t|, two masks) add 1.7 copies of it, 0.84 GB for ImageNet-1K's
    synthetic set at IPC 10."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(FINITE_CHUNK))


# ----------------------------------------------------------------------------- outputs


def _distilled(run: _Run, images: torch.Tensor, state: DistillState, extra: dict):

    return DistilledSet(images=images.detach().cpu(), labels=state.labels.detach().cpu(),
                        lr=float(state.syn_lr.detach()), info=run.data.info,
                        space=run.data.train.space,
                        ipc=run.cfg.ipc, method=run.cfg.method, zca=run.data.zca,
                        config=dataclasses.asdict(run.cfg),
                        extra={**extra, **distributed.metadata()})


def _evaluate_here(run: _Run, images: torch.Tensor, state: DistillState, it: int) -> dict:
    cfg = run.cfg
    if cfg.eval_runs == 0:
        return {"iteration": it, "eval": True, "mean": None, "std": None, "accuracies": []}

    report = evaluation.evaluate(
                      images.detach(), state.labels.detach(), run.data.test, protocol="classic",
                      model=cfg.model, lr=float(state.syn_lr.detach()), num_runs=cfg.eval_runs,
                      epochs=cfg.eval_epochs, batch_size=cfg.eval_batch,
                      seed=_seeds(cfg.seed + it, 1)[0], device=cfg.device,
                      dsa_strategy=run.dsa_strategy or "none", model_kwargs=cfg.model_kwargs,
                      space=run.data.train.space)
    return {"iteration": it, "eval": True, "mean": report.mean, "std": report.std,
            "accuracies": list(report.accuracies)}


def _evaluate(run: _Run, images: torch.Tensor, state: DistillState, it: int) -> dict:
    """The evaluation row; under several processes rank 0's row, so every rank keeps the
    same best iteration (each rank takes part, in case the protocol shares its runs)."""
    return distributed.broadcast_object(_evaluate_here(run, images, state, it))


def _evaluate_and_save(run: _Run, state: DistillState, ema, it: int, log) -> float | None:
    """Evaluate (images and, with FTD's EMA, the EMA images); save last/, best/ and a grid."""
    from datadistill.artifacts.grids import save_class_grid

    main = distributed.is_main()  # every rank evaluates and keeps the best; rank 0 writes
    row = _evaluate(run, state.images, state, it)
    log.write(row)
    ds = _distilled(run, state.images, state, {"iteration": it, "accuracy": row["mean"],
                                               "std": row["std"]})
    if main:
        save_distilled(ds, run.out / "last")
        save_class_grid(ds, run.out / "grids" / f"iter_{it:05d}.png")
    if it == 0 and main:  # the initial images, for the report's initial-vs-final grid
        save_distilled(ds, run.out / "initial")
    better = row["mean"] is None or state.best_accuracy is None or \
        row["mean"] > state.best_accuracy
    if better:
        if main:
            save_distilled(ds, run.out / "best")
        state.best_accuracy, state.best_iteration = row["mean"], it
    if ema is not None:
        ema_row = {**_evaluate(run, ema.images, state, it), "ema": True}
        log.write(ema_row)
        if main:
            save_distilled(_distilled(run, ema.images, state, {"iteration": it, "ema": True,
                                                               "accuracy": ema_row["mean"]}),
                           run.out / "ema_last")
    state.evaluated = it
    logger.info("iteration %d: accuracy %s", it, row["mean"])
    if main:
        refresh_report(run.out, force=it == run.cfg.iterations)  # report.html; never raises
    return row["mean"]


def _checkpoint(run: _Run, state: DistillState, opts, gens, ema) -> None:
    """Rank 0 writes; the others hold the same state in memory (a resume reads rank 0's)."""
    if not distributed.is_main():
        return
    state.optimizers = {k: o.state_dict() for k, o in opts.items()}
    state.generators = {k: g.get_state() for k, g in gens.items()}
    state.ema = ema.state_dict() if ema is not None else None
    save_checkpoint(run.out / "checkpoint.pt", state)


class _NullLog:
    """The metrics log of a rank other than 0: same interface, writes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict) -> None:
        pass
