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

The config (:class:`~datadistill.tm.config.DistillConfig`: the strategy axes, their
coupling) is in :mod:`datadistill.tm.config`; evaluations, saved sets and checkpoints in
:mod:`datadistill.tm.outputs`; the loop carries one state object
(:class:`~datadistill.tm.state.Loop`).

Deviations from the official code:

- divergence guard: a NaN/inf loss, a non-finite image, or a step size that becomes NaN/inf or
  <= 0 stops the run with a DivergenceError (the official code continues silently, MTT issues
  #16/#24/#42); the last good checkpoint and the best set are kept, a NaN set is never saved;
- the official loop runs ``Iteration + 1`` updates, the last one after the final evaluation
  and never evaluated or saved; here ``iterations`` updates, then the final evaluation;
- randomness comes from generators seeded by ``seed`` (the official code reseeds the global RNG
  from the clock), so runs repeat exactly.

Example:
    >>> cfg = DistillConfig.of(dataset="digits", ipc=1, syn_steps=10, expert_epochs=2,
    ...                        max_start_epoch=2, lr_img=100, iterations=50,
    ...                        expert_dir="runs/digits/experts")            # doctest: +SKIP
    >>> result = distill(cfg, "runs/digits/mtt")                            # doctest: +SKIP
    >>> result.best_accuracy                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from datadistill import distributed
from datadistill.checks import check_distill, check_ipc_fits, check_window
from datadistill.config import config_asdict
from datadistill.data import check_prepared, prepare
from datadistill.data.augment import DSA
from datadistill.errors import CompatibilityError, ConfigError, DivergenceError
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
from datadistill.matching.ema import ImageEMA
from datadistill.matching.init import ExpertClassifier, select_correct_samples
from datadistill.matching.masks import param_mask
from datadistill.matching.soft_labels import init_soft_labels
from datadistill.runtime.lock import locks_output
from datadistill.runtime.progress import progress_bar
from datadistill.tm.checkpoint import DistillState, MetricsLog, load_checkpoint
from datadistill.tm.config import DistillConfig, DistillSection, check_resume, stage_seeds
from datadistill.tm.memory import check_memory
from datadistill.tm.outputs import (
    DistillResult,
    NullLog,
    eval_points,
    evaluate_and_save,
    show,
    write_checkpoint,
)
from datadistill.tm.state import Loop, Run
from datadistill.training import build_model

# The config and the result are imported from here too (the loop's public face).
__all__ = ["DistillConfig", "DistillResult", "DistillSection", "check_processes",
           "check_resume", "distill"]

logger = logging.getLogger(__name__)


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
    loop = _initial_state(run, resumed)  # checks a resumed config first
    state = loop.state
    log = NullLog(run.out / "metrics.jsonl")  # rank 0 alone writes (module docstring)
    if distributed.is_main():
        (run.out / "config.json").write_text(json.dumps(config_asdict(cfg), indent=2) + "\n")
        log = MetricsLog(run.out / "metrics.jsonl", state.iteration if resumed else None)
    points = eval_points(cfg)
    bar = progress_bar(total=cfg.iterations, initial=state.iteration, desc="distill",
                       enabled=progress, stage=True)
    last_acc, row = state.best_accuracy, None
    for it in range(state.iteration, cfg.iterations + 1):
        state.iteration = it
        if it in points and state.evaluated != it:
            last_acc = evaluate_and_save(run, loop, it, log)
            write_checkpoint(run, loop)
        elif it % cfg.checkpoint_every == 0:
            write_checkpoint(run, loop)
        if it == cfg.iterations:
            break
        row = _matching_step(run, loop, it)
        log.write(row)
        bar.update(1)
        show(bar, row, last_acc, state)
        if on_iteration is not None:
            on_iteration(it, row)
    show(bar, row, last_acc, state)  # the final evaluation came after the last step's postfix
    bar.close()
    return DistillResult(run.out, run.out / "best", run.out / "last", log.path,
                         run.out / "checkpoint.pt", state.best_accuracy, state.best_iteration,
                         float(state.syn_lr.detach()), cfg.iterations, time.time() - t0)


# ----------------------------------------------------------------------------- setup


def check_processes(cfg: DistillConfig) -> None:
    """Under torchrun with several processes only adjoint mode can share the work."""
    k = distributed.world_size()
    if k > 1 and cfg.grad.grad_mode != "adjoint":
        raise ConfigError(
            f"distill.grad_mode={cfg.grad.grad_mode} runs in one process, but {k} were started "
            "(torchrun): the unrolled graph of all student steps cannot be split across "
            "processes. Set distill.grad_mode=adjoint (the same gradient; each student step's "
            "mini-batch is then shared by the processes), or run without torchrun.")


def _setup(cfg: DistillConfig, out_dir, data, store) -> Run:

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
    check_micro_batch(model, cfg.grad.micro_batch, min(cfg.batch_syn or n_syn, n_syn),
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
    forward = student_forward(model.to(cfg.device), fast=cfg.grad.fast_student)
    return Run(cfg, data, store, model, forward, DSA(strategy) if strategy else None,
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
    check_window(cfg.window.max_start_epoch, cfg.window.expert_epochs, store.epochs,
                 f"the experts in {store.directory} have")
    if len(store) == 0:
        raise CompatibilityError(f"the expert store {store.directory} holds no experts yet; "
                                 "run train_experts first.")


_GENERATORS = ("init", "expert", "window", "student")


def _initial_state(run: Run, resumed: bool) -> Loop:
    """The loop's state, fresh or restored from the checkpoint.

    Under several processes every rank draws from the same seeded generators, and rank 0's
    state (fresh or read from its checkpoint) is handed to all, so every rank starts equal.
    """
    cfg = run.cfg
    path = run.out / "checkpoint.pt"
    gens = {k: torch.Generator().manual_seed(s)
            for k, s in zip(_GENERATORS, stage_seeds(cfg.seed, len(_GENERATORS)), strict=True)}
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
    return Loop(state, opts, gens, _ema(cfg, state))


def _fresh_state(run: Run, gens: dict[str, torch.Generator]) -> DistillState:
    cfg, info = run.cfg, run.data.info
    hard = torch.arange(info.num_classes).repeat_interleave(cfg.ipc)  # (N,) class-major
    images = _init_images(run, gens["init"])  # (N, C, H, W)
    labels = hard if cfg.labels.label_mode == "hard" else _soft_labels(run, images, hard)
    order = torch.randperm(run.num_experts, generator=gens["expert"])
    return DistillState(iteration=0, images=images, labels=labels,
                        syn_lr=torch.tensor(float(cfg.lr_teacher)), optimizers={},
                        generators={}, expert_order=order, expert_pos=0,
                        config=config_asdict(cfg))


def _init_images(run: Run, gen: torch.Generator) -> torch.Tensor:
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

    def __init__(self, run: Run) -> None:
        self.store, self.n = run.store, run.num_experts

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.store.load(i)[-1]


def _soft_labels(run: Run, images: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:

    only_correct = run.cfg.pix_init == "samples_predicted_correctly"
    return init_soft_labels(images, hard, _FinalParams(run), run.model,
                            only_correct=only_correct, device=run.cfg.device).detach()


def _optimizers(cfg: DistillConfig, state: DistillState) -> dict[str, torch.optim.Optimizer]:
    opts = {"images": torch.optim.SGD([state.images], lr=cfg.lr_img, momentum=0.5),
            "syn_lr": torch.optim.SGD([state.syn_lr], lr=cfg.lr_lr, momentum=0.5)}
    labels = cfg.labels
    if labels.label_mode == "soft":
        opts["labels"] = torch.optim.SGD([state.labels], lr=labels.lr_y, momentum=labels.momentum_y)
    return opts


def _ema(cfg: DistillConfig, state: DistillState):
    if cfg.ema.ema_decay is None:
        return None

    ema = ImageEMA(state.images, cfg.ema.ema_decay)
    if state.ema is not None:
        ema.load_state_dict(state.ema)
    return ema


# ----------------------------------------------------------------------------- one iteration


def _next_expert(run: Run, state: DistillState, gen: torch.Generator) -> int:
    if state.expert_pos >= len(state.expert_order):  # exhausted: reshuffle (MTT)
        state.expert_order = torch.randperm(run.num_experts, generator=gen)
        state.expert_pos = 0
    i = int(state.expert_order[state.expert_pos])
    state.expert_pos += 1
    return i


def _matching_step(run: Run, loop: Loop, it: int) -> dict:
    """One outer update (MTT Algorithm 1, lines 4-12); returns the metrics row."""
    cfg, t0 = run.cfg, time.time()
    state, gens = loop.state, loop.generators
    expert = _next_expert(run, state, gens["expert"])
    low, high = window_bounds(cfg.window.window, it, min_start=cfg.window.min_start_epoch,
                              max_start=cfg.window.max_start_epoch,
                              current_max_start=cfg.window.current_max_start_epoch,
                              expansion_end=cfg.window.expansion_end)
    start = sample_start_epoch(low, high, gens["window"])
    theta0, target = (t.to(cfg.device) for t in
                      run.store.epoch_pair(expert, start, cfg.window.expert_epochs))  # (P,) each
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
        for opt in loop.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _check_state(state, it)
        if loop.ema is not None:
            loop.ema.update(state.images)
    return {"iteration": it, "loss": value, "syn_lr": float(state.syn_lr.detach()),
            "start_epoch": start, "expert": expert, "skipped": skipped,
            "time": round(time.time() - t0, 4)}


def _student(run: Run, state: DistillState, gen: torch.Generator, theta0: torch.Tensor):
    """(theta_N, trajectory): unrolled, theta_N carries the graph of all steps and the
    trajectory is None; adjoint, theta_N is a leaf and the trajectory replays the steps."""
    cfg = run.cfg
    args = (run.forward, theta0, state.images, state.labels, state.syn_lr,
            StudentSteps(cfg.syn_steps, cfg.batch_syn, run.dsa))
    if cfg.grad.grad_mode == "unrolled":
        return unroll_student(*args, generator=gen), None
    traj = student_trajectory(*args, generator=gen,
                              options=AdjointOptions(cfg.grad.micro_batch, cfg.grad.snapshots,
                                                     cfg.grad.kept_graphs))
    return traj.final.detach().requires_grad_(True), traj


def _gradients(run: Run, state: DistillState, loss, theta_n, traj, learnable) -> list:
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
    if cfg.mask.param_mask == "none":
        return None

    sq_err = (theta_n.detach() - target).square() if cfg.mask.param_mask == "loss" else None
    return param_mask(cfg.mask.param_mask, cfg.mask.param_mask_ratio, numel=theta_n.numel(),
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


