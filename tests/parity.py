"""Every stage on two devices, compared: the harness of the ``gpu`` tests and of gpu_check.sh.

Each ``run_<stage>(device, work, ...)`` runs one stage of the library end to end at toy scale
on the embedded digits and returns what it produced as named values, each wrapped with the
tolerance it is compared with (:class:`Exact`, :class:`Close`, :class:`Points`).
:func:`compare` checks a run on one device against the same run on another and returns one
row per value (the largest differences found, the tolerance, pass or fail).

``tests/test_gpu.py`` compares CUDA with the CPU under pytest (``-m gpu``);
``tests/test_parity.py`` runs the CPU halves in the default suite (CPU against CPU must be
bitwise equal, and a rounding-level perturbation of the inputs must stay inside every
tolerance); ``benchmarks/gpu_check.sh`` runs ``python tests/parity.py --device cuda`` on a GPU
machine, which needs no pytest, and writes the rows to its JSON file.

Why the tolerances hold. Every random draw of the library (data order, DSA, window, expert
order, initialisation) comes from CPU generators, so both devices run the same sequence of
operations on the same numbers; they differ only in float32 rounding (summation order, cuDNN
algorithms). :func:`strict_fp32` turns TF32 off for the comparison: with TF32 (the default
for cuDNN convolutions on Ampere and later) a product keeps 10 mantissa bits, not 23, which
is a different precision, not a different rounding. Rounding noise of ~1e-7 per operation is
amplified by training. The amplification was measured on the CPU in two ways: every
training pixel moved by one ulp (``digits(perturb=True)``; the default test
``test_cpu_against_cpu_is_bitwise_and_a_one_ulp_change_stays_inside`` keeps checking it with
a 10x margin), and 2 torch threads against 1 (another summation order inside oneDNN's
convolutions, the closest CPU analogue of another cuDNN algorithm). Relative distances, as
``Close`` measures them (against the displacement from the start), worst of the two ways:

==========================  ==========  ==========  ===============================
values                      one ulp     2 threads   tolerance
==========================  ==========  ==========  ===============================
expert trajectories         2.5e-7      2.8e-7      1e-3 (GSAM: 2e-3)
synthetic images, labels    5.8e-5 (*)  1.4e-6      1e-3; losses 1e-3 each
INFER compensators, labels  6.8e-7      3.5e-7      1e-3
teachers (see TEACHER_RTOL) 0.12        0.16        ResNet-18 5e-2, ShuffleNet 1.0
any accuracy                0 points    0.6 points  2 points per network
==========================  ==========  ==========  ===============================

(*) includes the one-ulp move of the initial images themselves, which CUDA does not have
(the drawn images are compared exactly). 2 points is 7 of the 360 test digits: a test image
changes class only when its top-two logit margin is below the parameter difference.
Exact: initial parameters (built on the CPU under a seed, then moved), which expert and
start epoch each iteration used, which iterations the threshold skipped, the real images a
run drew, and integer counters (BatchNorm's batch counts).

Example (a CUDA machine, no pytest needed)::

    PYTHONPATH=src python tests/parity.py --device cuda --out gpu_parity.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# ----------------------------------------------------------------------------- values


@dataclass
class Exact:
    """Must be equal (tensors: bitwise; anything else: ``==``)."""

    value: Any


@dataclass
class Close:
    """A tensor within a relative Frobenius distance ``|a - b| / |b - origin| <= rtol``.

    ``origin`` is where training started (the same on both devices, checked exactly
    elsewhere): measuring against the displacement ``b - origin`` and not against ``b``
    keeps the check tight when a few steps move a tensor little, so that a wrong or missing
    update cannot hide under the size of the initial values.
    """

    value: torch.Tensor
    rtol: float = 1e-3
    origin: torch.Tensor | None = None


@dataclass
class Points:
    """Accuracies (fractions in [0, 1]), each within ``tol`` of the reference."""

    value: list[float]
    tol: float = 0.02


@dataclass
class Losses:
    """A sequence of floats, each within a relative ``rtol`` of the reference."""

    value: list[float]
    rtol: float = 1e-3


Value = Exact | Close | Points | Losses


def _as_cpu(x: Any) -> Any:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def compare(ref: dict[str, Value], got: dict[str, Value]) -> list[dict]:
    """One row per value of ``ref``: the differences of ``got`` and whether they are within
    the reference's tolerance. A key missing on either side is a failing row.

    Example:
        >>> rows = compare({"w": Close(torch.ones(3))}, {"w": Close(torch.ones(3))})
        >>> rows[0]["ok"], rows[0]["rel"]
        (True, 0.0)
    """
    rows = []
    for key in sorted(set(ref) | set(got)):
        if key not in ref or key not in got:
            rows.append({"key": key, "ok": False, "error": "missing on one side"})
            continue
        rows.append({"key": key, **_compare_one(ref[key], got[key])})
    return rows


def _compare_one(r: Value, g: Value) -> dict:
    a, b = _as_cpu(g.value), _as_cpu(r.value)
    if isinstance(r, Exact):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
        same = same or (not isinstance(b, torch.Tensor) and a == b)
        return {"kind": "exact", "ok": bool(same)}
    if isinstance(r, Close):
        if a.shape != b.shape:
            return {"kind": "close", "ok": False, "error": f"shape {a.shape} vs {b.shape}"}
        a64, b64 = a.double(), b.double()
        base = b64 if r.origin is None else b64 - _as_cpu(r.origin).double()
        diff = (a64 - b64).norm().item()
        rel = diff / max(base.norm().item(), 1e-30)
        max_abs = (a64 - b64).abs().max().item() if a.numel() else 0.0
        ok = math.isfinite(rel) and rel <= r.rtol
        return {"kind": "close", "rel": rel, "max_abs": max_abs, "tol": r.rtol, "ok": ok}
    if isinstance(r, Points):
        if len(a) != len(b):
            return {"kind": "points", "ok": False, "error": f"{len(a)} vs {len(b)} runs"}
        worst = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
        return {"kind": "points", "max_abs": worst, "tol": r.tol, "ok": worst <= r.tol,
                "ref": list(b), "got": list(a)}
    if len(a) != len(b):
        return {"kind": "losses", "ok": False, "error": f"{len(a)} vs {len(b)} values"}
    rel = max((abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b, strict=True)),
              default=0.0)
    return {"kind": "losses", "rel": rel, "tol": r.rtol, "ok": rel <= r.rtol}


def failures(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["ok"]]


def describe(rows: list[dict]) -> str:
    """One line per failing row, for an assertion message."""
    return "\n".join(json.dumps(r) for r in failures(rows))


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off and deterministic cuDNN for the duration (restored afterwards).

    TF32 is another precision (10 mantissa bits), not another rounding; with it a CUDA run
    would differ from the CPU by ~1e-3 per product and no tight comparison would be possible.
    """
    keys = [(torch.backends.cuda.matmul, "allow_tf32", False),
            (torch.backends.cudnn, "allow_tf32", False),
            (torch.backends.cudnn, "deterministic", True),
            (torch.backends.cudnn, "benchmark", False)]
    saved = [getattr(m, k) for m, k, _ in keys]
    for m, k, v in keys:
        setattr(m, k, v)
    try:
        yield
    finally:
        for (m, k, _), v in zip(keys, saved, strict=True):
            setattr(m, k, v)


# ----------------------------------------------------------------------------- data


def digits(train: int = 300, perturb: bool = False):
    """The embedded digits with ``train`` training images (the tests' fixture).

    ``perturb`` moves every training image pixel by one ulp (``nextafter`` towards +inf): a
    rounding-level change of the inputs, used to measure how much training amplifies it.
    """
    from datadistill.data import prepare

    real = prepare("digits")
    images = real.train.images[:train]
    if perturb:
        images = torch.nextafter(images, torch.full_like(images, math.inf))
    split = dataclasses.replace(real.train, images=images, labels=real.train.labels[:train])
    return dataclasses.replace(real, train=split)


@contextlib.contextmanager
def perturbed_infer_data() -> Iterator[None]:
    """INFER reads its data itself (``prepare_infer_data``): move its training images by one
    ulp too, for the perturbation measurement of the teachers and INFER stages."""
    import datadistill.infer.pipeline as recipe
    import datadistill.infer.teachers_train as teachers_train

    real = teachers_train.prepare_infer_data

    def moved(cfg, progress=False):
        data = real(cfg, progress)
        x = data.train.images
        split = dataclasses.replace(
            data.train, images=torch.nextafter(x, torch.full_like(x, math.inf)))
        return dataclasses.replace(data, train=split)

    teachers_train.prepare_infer_data = recipe.prepare_infer_data = moved
    try:
        yield
    finally:
        teachers_train.prepare_infer_data = recipe.prepare_infer_data = real


# ----------------------------------------------------------------------------- stages

PRESETS = ("datm", "ftd", "mdatm", "mtt", "pad")
GRAD_MODES = ("unrolled", "adjoint")
TINY_NET = {"width": 8}


def expert_config(optimizer: str = "sgd", seed: int = 0):
    from datadistill.experts import ExpertConfig

    return ExpertConfig(dataset="digits", num_experts=2, epochs=4, lr=0.1, batch_size=64,
                        model_kwargs=TINY_NET, optimizer=optimizer, seed=seed)


def run_experts(device: str, work: Path, data=None, optimizer: str = "sgd",
                seed: int = 0) -> dict[str, Value]:
    """Two experts of 4 epochs (SGD as MTT, or GSAM as FTD/DATM): trajectories, accuracies."""
    from datadistill.experts import train_experts

    data = data if data is not None else digits()
    store = train_experts(expert_config(optimizer, seed), data, work, device=device,
                          progress=False)
    out: dict[str, Value] = {}
    for i in range(len(store)):
        params = store.load(i)  # (E+1, P), stored on the CPU
        out[f"expert{i}.init"] = Exact(params[0])
        out[f"expert{i}.trajectory"] = Close(params[1:], 2e-3 if optimizer == "gsam" else 1e-3,
                                             origin=params[:1])
        out[f"expert{i}.accuracy"] = Points(store.test_acc(i).tolist())
    return out


def toy_strategy(preset: str) -> dict:
    """The preset's distillation strategy on a window that fits the 4-epoch test experts
    (its run-length keys dropped; DATM's expanding window shrunk, its threshold out of the way)."""
    from datadistill.tm.presets import get_preset

    section = dict(get_preset(preset).overrides.get("distill", {}))
    for key in ("iterations", "eval_every", "eval_runs", "eval_batch", "lr_teacher"):
        section.pop(key, None)
    if section.get("window") == "expanding":
        section |= {"min_start_epoch": 0, "current_max_start_epoch": 1, "max_start_epoch": 2,
                    "expansion_end": 2, "threshold": 10.0}
    return section


def distill_config(preset: str, grad_mode: str, device: str, iterations: int = 3):
    """A few iterations of ``preset`` on the 4-epoch experts (the tests' toy window)."""
    from datadistill.tm.distill import DistillConfig

    section = toy_strategy(preset)
    if section.get("ema_decay") is not None:
        # FTD's decay (0.999+) barely moves the EMA in 3 iterations, leaving its displacement
        # at the rounding level of the images it averages; 0.5 makes it a comparable quantity.
        section["ema_decay"] = 0.5
    base = dict(dataset="digits", model_kwargs=TINY_NET, ipc=2, syn_steps=3, expert_epochs=2,
                max_start_epoch=2, lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01, batch_syn=8,
                iterations=iterations, eval_every=iterations, eval_runs=0,
                checkpoint_every=10**6, grad_mode=grad_mode, device=device)
    return DistillConfig.of(**(base | section | {"method": preset}))


def run_distill(device: str, work: Path, store, preset: str, grad_mode: str,
                data=None) -> dict[str, Value]:
    """``preset`` for 3 iterations from a given expert store: final set, losses, draws."""
    from datadistill.tm.distill import distill

    data = data if data is not None else digits()
    distill(distill_config(preset, grad_mode, device), work, data=data, store=store,
            progress=False)
    return distill_values(work)


def distill_values(work: Path) -> dict[str, Value]:
    """What a distillation folder holds: final set against its start, losses, draws."""
    from datadistill.artifacts.distilled import load_distilled
    from datadistill.tm.checkpoint import load_checkpoint

    rows = [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    state = load_checkpoint(work / "checkpoint.pt")
    start = load_distilled(work / "initial")  # iteration 0: the real images drawn
    out: dict[str, Value] = {
        "draws": Exact([(r["expert"], r["start_epoch"], r["skipped"]) for r in rows]),
        "losses": Losses([float(r["loss"]) for r in rows]),
        "iteration": Exact(state.iteration),
        "initial_images": Exact(start.images),
        "images": Close(state.images, origin=start.images),
        "syn_lr": Close(state.syn_lr.reshape(1), origin=torch.tensor([start.lr])),
    }
    if state.labels.is_floating_point():  # learned soft labels (DATM, PAD)
        out["initial_labels"] = Close(start.labels)  # an expert's logits, made on the device
        out["labels"] = Close(state.labels, origin=start.labels)
    else:
        out["labels"] = Exact(state.labels)
    for name, t in (state.ema or {}).items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            out[f"ema.{name}"] = Close(t, origin=start.images)
    return out


def run_eval(device: str, work: Path, data=None) -> dict[str, Value]:
    """The classic protocol (2 runs x 30 epochs, DSA) on 2 real images per class, with hard
    and with soft labels; the drawn images themselves must be the same bytes."""
    from datadistill.evaluation.protocols import evaluate

    data = data if data is not None else digits()
    pick = torch.cat([torch.nonzero(data.train.labels == c)[:2, 0]
                      for c in range(data.info.num_classes)])
    images, labels = data.train.images[pick], data.train.labels[pick]
    soft = torch.nn.functional.one_hot(labels, data.info.num_classes).float() * 4.0
    kw = dict(lr=0.01, num_runs=2, epochs=30, device=device, model_kwargs=TINY_NET)
    hard_report = evaluate(images, labels, data.test, **kw)
    soft_report = evaluate(images, soft, data.test, **kw)
    return {"picked": Exact(pick), "hard": Points(hard_report.accuracies),
            "soft": Points(soft_report.accuracies)}


def run_baselines(device: str, work: Path, data=None) -> dict[str, Value]:
    """The random-subset baseline (IPC 2, 2 runs x 30 epochs) and the full-data baseline
    (1 run, 3 epochs)."""
    from datadistill.evaluation.baselines import baseline_full, baseline_random

    data = data if data is not None else digits()
    rnd = baseline_random(data, 2, num_runs=2, epochs=30, device=device, model_kwargs=TINY_NET)
    full = baseline_full(data, epochs=3, num_runs=1, device=device, model_kwargs=TINY_NET)
    return {"random": Points(rnd.accuracies), "full": Points(full.accuracies)}


# Teachers are the ill-conditioned stage at toy scale: BatchNorm over channels that are nearly
# constant on 8 px digits (width 0.125) divides rounding noise by sqrt(eps). Another summation
# order on the CPU (2 threads instead of 1) moves ResNet-18's weights by 5.3e-3 of their
# two-step displacement and ShuffleNet's by 0.16, their test logits by 4.2e-2 and 2.1e-2;
# the tolerances are 10x and 6x that, so they catch only gross errors (a missed step, a wrong
# learning rate or device), not small ones. The accuracy check (2 points) is the tight one.
TEACHER_RTOL = {"resnet18_cifar": 5e-2, "shufflenet_g2": 1.0}
TEACHER_LOGITS_RTOL = 0.25


def infer_config(device: str, teacher_dir: Path):
    from datadistill.infer import InferConfig, StudentConfig, TeacherConfig

    return InferConfig.of(
        dataset="digits", ipc=10, device=device, teacher_dir=str(teacher_dir),
        # batch 2048 > 1437 images: one full-batch step per epoch (see TEACHER_RTOL)
        teachers=TeacherConfig(archs=["resnet18_cifar", "shufflenet_g2"], width_mult=0.125,
                               epochs=2, batch_size=2048),
        iterations=3,
        student=StudentConfig(model_kwargs={"width_mult": 0.125}, epochs=2, eval_every=1,
                              num_runs=1))


def run_teachers(device: str, work: Path) -> dict[str, Value]:
    """INFER's two BatchNorm teachers, two full-batch SGD steps each: every weight and running
    statistic (against where they started), and the test accuracy."""
    from datadistill.data import dataset_info
    from datadistill.infer import TeacherStore, train_teachers
    from datadistill.infer.teachers_train import prepare_infer_data
    from datadistill.models.teachers import create_teacher
    from datadistill.training import run_seeds, seeded

    cfg = infer_config(device, work)
    train_teachers(cfg, work)
    store, info, tc = TeacherStore(work), dataset_info("digits"), cfg.teachers
    test = prepare_infer_data(cfg).test
    out: dict[str, Value] = {}
    for i, arch in enumerate(tc.archs):
        fresh = seeded(lambda a=arch: create_teacher(a, info.channels, info.num_classes,
                                                     info.image_size, tc.width_mult),
                       run_seeds(tc.seed, i)[0])  # the initialisation train_teachers drew
        start, state = fresh.state_dict(), store.load(arch, "cpu").state_dict()
        names = [k for k, t in state.items() if t.is_floating_point()]
        out[f"{arch}.weights"] = Close(torch.cat([state[k].reshape(-1) for k in names]),
                                       TEACHER_RTOL[arch],
                                       origin=torch.cat([start[k].reshape(-1) for k in names]))
        out[f"{arch}.counters"] = Exact([int(t) for t in state.values()
                                         if not t.is_floating_point()])
        out[f"{arch}.test_accuracy"] = Points([store.meta(arch)["test_accuracy"]])
        net = store.load(arch, "cpu").eval()
        with torch.no_grad():
            out[f"{arch}.logits"] = Close(net(test.images), TEACHER_LOGITS_RTOL)  # (360, 10)
    return out


def run_infer(device: str, work: Path, teacher_dir: Path) -> dict[str, Value]:
    """INFER from a given teacher store: compensators, static labels, student accuracy."""
    from datadistill.infer import run_infer as infer

    result = infer(infer_config(device, teacher_dir), work)
    s = result.infer_set
    out: dict[str, Value] = {"base": Exact(s.base), "compensators": Close(s.compensators)}
    if s.source_indices is not None:
        out["source_indices"] = Exact(s.source_indices)
    if s.labels is not None:
        out["labels"] = Close(s.labels)
    if result.report is not None:
        out["student"] = Points(result.report.accuracies)
    return out


# ----------------------------------------------------------------------------- the CLI pair


def cli_pair(device: str, work: Path, stage: str = "experts", nproc: int = 2,
             timeout: float = 600.0) -> dict[str, Any]:
    """``stage`` of the digits job under ``torchrun --nproc_per_node nproc`` and as a single
    process, same config; returns both run folders (compare their stores / sets).

    On CUDA each rank takes GPU ``LOCAL_RANK`` and the group talks NCCL; on the CPU, gloo.
    """
    import os
    import subprocess

    overrides = ["experts.num_experts=4", "experts.epochs=3", f"device={device}",
                 "distill.iterations=3", "distill.syn_steps=4", "distill.eval_runs=0",
                 "distill.eval_every=3", "distill.grad_mode=adjoint", "distill.max_start_epoch=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    folders = {}
    for name, launcher in (("single", [sys.executable, "-m", "datadistill"]),
                           ("torchrun", [sys.executable, "-m", "torch.distributed.run",
                                         "--standalone", f"--nproc_per_node={nproc}",
                                         "-m", "datadistill"])):
        out = work / name
        stages = ["experts"] if stage == "experts" else ["experts", "distill"]
        for s in stages:  # both --out DIR: experts write DIR/experts, distill reads it
            launch = launcher if s == stage else [sys.executable, "-m", "datadistill"]
            cmd = [*launch, s, "digits/mtt_ipc1", "--out", str(out), "--quiet", *overrides]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                                   f"{proc.stderr[-3000:]}")
        folders[name] = out
    return folders


def store_values(folder: Path) -> dict[str, Value]:
    """Every expert trajectory of a run folder's store (``experts/``)."""
    from datadistill.experts.store import ExpertStore

    store = ExpertStore(folder / "experts")
    out: dict[str, Value] = {"count": Exact(len(store))}
    for i in range(len(store)):
        params = store.load(i)  # (E+1, P)
        out[f"expert{i}.init"] = Exact(params[0])
        out[f"expert{i}.trajectory"] = Close(params[1:], origin=params[:1])
    return out


def checkpoint_values(folder: Path) -> dict[str, Value]:
    """The synthetic set of a run folder's distillation checkpoint, against its start."""
    from datadistill.artifacts.distilled import load_distilled
    from datadistill.tm.checkpoint import load_checkpoint

    state = load_checkpoint(folder / "distill" / "checkpoint.pt")
    start = load_distilled(folder / "distill" / "initial")
    return {"initial_images": Exact(start.images),
            "images": Close(state.images, origin=start.images),
            "syn_lr": Close(state.syn_lr.reshape(1), origin=torch.tensor([start.lr])),
            "iteration": Exact(state.iteration)}


def compare_pair(device: str, work: Path, stage: str, nproc: int = 2) -> list[dict]:
    """``stage`` under torchrun (``nproc`` ranks) against one process, on ``device``."""
    values = store_values if stage == "experts" else checkpoint_values
    folders = cli_pair(device, work, stage, nproc)
    rows = compare(values(folders["single"]), values(folders["torchrun"]))
    # The outputs record how many processes made them: proof that torchrun really ran nproc
    # ranks (a pair that fell back to one process would otherwise compare equal trivially).
    meta = (folders["torchrun"] / ("experts/meta.json" if stage == "experts"
                                   else "distill/last/meta.json"))
    size = json.loads(meta.read_text()).get("world_size") if meta.is_file() else None
    rows.append({"key": "world_size", "kind": "exact", "got": size, "ok": size == nproc})
    return rows


# ----------------------------------------------------------------------------- the runner


def stage_runs(store_dir: Path, teacher_dir: Path) -> dict[str, Callable[[str, Path], dict]]:
    """Every comparison by name -> ``fn(device, work)``; distill and infer read the CPU-made
    store and teachers in ``store_dir`` / ``teacher_dir`` so that only their own stage differs."""
    from datadistill.experts.store import ExpertStore

    runs: dict[str, Callable[[str, Path], dict]] = {
        "experts_sgd": lambda d, w: run_experts(d, w),
        "experts_gsam": lambda d, w: run_experts(d, w, optimizer="gsam"),
        "eval": run_eval,
        "baselines": run_baselines,
        "teachers": run_teachers,
        "infer": lambda d, w: run_infer(d, w, teacher_dir),
    }
    for preset in PRESETS:
        for mode in GRAD_MODES:
            runs[f"distill_{preset}_{mode}"] = (
                lambda d, w, p=preset, m=mode: run_distill(d, w, ExpertStore(store_dir), p, m))
    return runs


def prepare_shared(work: Path) -> tuple[Path, Path]:
    """The CPU-made expert store and teacher store the distill and infer comparisons share."""
    from datadistill.experts import train_experts
    from datadistill.infer import train_teachers

    store_dir, teacher_dir = work / "shared_experts", work / "shared_teachers"
    train_experts(expert_config(), digits(), store_dir, device="cpu", progress=False)
    train_teachers(infer_config("cpu", teacher_dir), teacher_dir)
    return store_dir, teacher_dir


def compare_stage(fn: Callable[[str, Path], dict], device: str, reference: str,
                  work: Path) -> list[dict]:
    """``fn`` on ``reference`` and on ``device`` (TF32 off), compared; on CUDA one more row
    checks that the device half really allocated CUDA memory (a stage that ignored its device
    argument would otherwise pass by running on the CPU twice)."""
    with strict_fp32():
        ref = fn(reference, work / "ref")
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        got = fn(device, work / "got")
    rows = compare(ref, got)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        rows.append({"key": "ran_on_cuda", "kind": "device", "peak_bytes": peak, "ok": peak > 0})
    return rows


def needs_shared(name: str) -> bool:
    return name.startswith(("distill_", "infer"))


def run_all(device: str, reference: str = "cpu", only: list[str] | None = None,
            pairs: bool = True) -> dict:
    """Every stage on ``reference`` and on ``device``; rows and seconds per comparison, and
    the torchrun pairs (NCCL) when ``pairs`` and at least 2 CUDA devices exist."""
    report: dict[str, Any] = {"device": device, "reference": reference,
                              "torch": torch.__version__, "tf32": False, "stages": {}}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(torch.device(device))
    with tempfile.TemporaryDirectory(prefix="dd_parity_") as tmp:
        work = Path(tmp)
        names = list(stage_runs(work, work))
        unknown = sorted(set(only or []) - set(names))
        if unknown:
            raise SystemExit(f"unknown comparison(s) {unknown}; choose from {names}")
        names = [n for n in names if not only or n in only]
        shared = (prepare_shared(work) if any(map(needs_shared, names))
                  else (work / "none", work / "none"))
        runs = stage_runs(*shared)
        for name in names:
            t0 = time.perf_counter()
            try:
                rows = compare_stage(runs[name], device, reference, work / name)
                entry = {"ok": not failures(rows), "rows": rows}
            except Exception as err:  # one stage failing must not hide the others
                entry = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            entry["seconds"] = time.perf_counter() - t0
            report["stages"][name] = entry
            print(f"{name}: {'ok' if entry['ok'] else 'FAIL'} ({entry['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
        if pairs and device.startswith("cuda") and torch.cuda.device_count() >= 2:
            for stage in ("experts", "distill"):
                name, t0 = f"torchrun_nccl_{stage}", time.perf_counter()
                try:
                    rows = compare_pair("cuda", work / name, stage)
                    entry = {"ok": not failures(rows), "rows": rows}
                except Exception as err:
                    entry = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                entry["seconds"] = time.perf_counter() - t0
                report["stages"][name] = entry
                print(f"{name}: {'ok' if entry['ok'] else 'FAIL'}", file=sys.stderr, flush=True)
        elif pairs:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            report["torchrun_nccl"] = f"skipped: {count} CUDA device(s), the pair needs 2"
    report["ok"] = bool(report["stages"]) and all(e["ok"] for e in report["stages"].values())
    return report


def allreduce_smoke(out: str | None) -> int:
    """One rank of ``torchrun --nproc_per_node K tests/parity.py --allreduce-smoke``: join the
    group as the CLI does (NCCL on CUDA, gloo on the CPU), sum each rank's ``rank + 1`` (on
    its own GPU under NCCL), and check the sum K (K + 1) / 2 on every rank; rank 0 writes
    ``out``. Exit status 0 only when every rank saw the right sum."""
    from datadistill import distributed as dist

    size = dist.init_from_env()
    try:
        device = dist.device_for("cuda") if dist.backend() == "nccl" else "cpu"
        value = torch.full((1024,), float(dist.rank() + 1), device=device)
        t0 = time.perf_counter()
        dist.all_reduce_sum_(value)
        dist.barrier()
        seconds = time.perf_counter() - t0
        want = size * (size + 1) / 2
        ok = bool((value == want).all())
        verdicts = dist.all_gather_objects(ok)
        report = {"world_size": size, "backend": dist.backend(), "device": str(device),
                  "sum": float(value[0]), "expected": want, "ok": all(verdicts),
                  "ranks_ok": verdicts, "seconds": seconds}
        if dist.is_main():
            print(json.dumps(report), flush=True)
            if out:
                Path(out).write_text(json.dumps(report, indent=1) + "\n")
        return 0 if all(verdicts) and size > 1 else 1
    finally:
        dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the device compared with --reference")
    p.add_argument("--reference", default="cpu")
    p.add_argument("--only", nargs="*", default=None, help="comparison names to run")
    p.add_argument("--no-pairs", action="store_true", help="skip the torchrun NCCL pairs")
    p.add_argument("--out", default=None, help="JSON file for every row")
    p.add_argument("--allreduce-smoke", action="store_true",
                   help="under torchrun: one all-reduce across the ranks (NCCL on CUDA)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.allreduce_smoke:
        return allreduce_smoke(args.out)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return 2
    report = run_all(args.device, args.reference, args.only, pairs=not args.no_pairs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    bad = [k for k, e in report["stages"].items() if not e["ok"]]
    print(f"parity {args.device} vs {args.reference}: {len(report['stages']) - len(bad)} of "
          f"{len(report['stages'])} comparisons within tolerance"
          + (f"; failing: {', '.join(bad)}" if bad else ""), file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
