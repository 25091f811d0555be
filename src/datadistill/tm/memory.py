"""Predicted peak memory of one trajectory-matching iteration, unrolled or adjoint.

The unrolled student keeps the graph of all ``syn_steps`` steps (each with its double
backward) until the matching loss is differentiated; the adjoint student keeps one step's graph
at a time plus the parameter snapshots theta_0 ... theta_N. So, with b images per step
(``batch_syn``, or the whole set), m = min(``micro_batch``, b) images per chunk, N steps and
P parameters:

    unrolled = base + data + state + N * (b * g_img + g_step) * GRAPH + b * g_img * TRANSIENT
    adjoint  = base + data + state + K * P * s + m * (g_img * (GRAPH + TRANSIENT) + t_img)
               + g_step
               + (kept - 1) * (b * g_img + g_step) * GRAPH + b * g_img * (GRAPH + TRANSIENT)

(last line: kept = ``distill.kept_graphs`` > 1, m = b: the kept graphs, and a rebuilt step's
graph and temporaries in the freed heap that then stays; s: bytes per float; K = N + 1
snapshots with ``distill.snapshots=memory``, K = 2 with ``spill``, whose theta_0 ...
theta_{N-1} live in a temporary file or, for a CUDA student, in host memory; K doubles
where m = b: the steps' gradients g_i, but for the kept graphs' steps, are recorded beside
the snapshots, in the same place, so a bound within kept + 1 vectors; on the CPU, with the
snapshots in memory, so are those steps' norm values, five per image and norm channel).

- ``g_img`` / ``g_step``: bytes that one student step's graph keeps per image and per step
  (parameter views, the gradient). They are not guessed from the architecture: they are
  *traced*, by running one real student step (the same :func:`unroll_student` the loop runs)
  on 1 and on 2 images under ``torch.autograd.graph.saved_tensors_hooks`` and adding up the
  storages the graph saves. This works for any model the student can run.
- ``t_img``: on the CPU, the bytes per image of the tile transforms that a rebuilt step keeps
  for its product (:func:`datadistill.models.winograd.kept_tiles`), traced by a rebuild.
- ``GRAPH``, ``TRANSIENT``, ``base``: per-path constants calibrated on this machine from
  ``benchmarks/memory.py`` (peak RSS of the real loop on the CIFAR-10 shape at several
  syn_steps and micro_batch sizes, see :data:`CALIBRATION`). GRAPH is the allocator
  overhead on the kept graph, TRANSIENT the temporaries alive while one step's graph is
  differentiated (in units of one step's graph), base the process before any tensor.
- ``data``: the real images held in memory (train + test, x C x H x W float32 + labels);
  ``state``: :data:`SET_COPIES` copies of the synthetic set (images, and soft labels with
  them) and a few flat parameter vectors (expert pair, theta_N, gradient). A copy of the set
  is N_syn x C x H x W floats (+ N_syn x K for soft labels): 491 MB at ImageNet-1K IPC 10,
  2.46 GB at IPC 50, so every copy the loop makes is a term here, not part of a fitted
  constant. Within an iteration the loop makes no other full copy (the divergence guard scans
  the set a chunk at a time); the checkpoint is written from the set's own storage and the
  initialisation fills one tensor. An evaluation (saving best/ and last/, the grid, the
  report) adds about one transient copy, below the iteration's peak.

On CUDA, ``base`` and ``data`` are left out (they live in host memory); the CUDA constants are
the CPU ones (not calibrated on a GPU). DSA is not traced (it saves at most a few copies of the
image per step, under 2 % at the CIFAR shapes; the calibration absorbs it).

Example:
    >>> from datadistill.models import create_model
    >>> fp = trace_step(create_model("convnet", 1, 10, 8, width=8), (1, 8, 8), 10)
    >>> u = estimate_memory(fp, Iteration(num_images=10, syn_steps=20, mode="unrolled"))
    >>> a = estimate_memory(fp, Iteration(num_images=10, syn_steps=20, mode="adjoint"))
    >>> u.graph > a.graph
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from datadistill import distributed
from datadistill.data import dataset_info
from datadistill.data.registry import split_sizes
from datadistill.errors import ConfigError
from datadistill.matching import ConvNetPlan, StudentSteps, student_forward, unroll_student
from datadistill.matching.adjoint import GRAD_MODES as MODES
from datadistill.matching.adjoint_steps import rebuild_tile_bytes
from datadistill.runtime.devices import free_memory
from datadistill.tm.config import adjoint_keys, grad_mode_of, micro_batch_of
from datadistill.training import build_model

logger = logging.getLogger(__name__)

GB = 1e9


@dataclass(frozen=True)
class Calibration:
    """Constants of one student path, fitted to measured peak RSS (see the module docstring)."""

    graph: float  # measured / traced bytes of the kept graph (allocator overhead)
    transient: float  # temporaries while one step's graph is differentiated, in step graphs
    base: int  # bytes of the process before any tensor (CPU only)
    source: str  # how the numbers were obtained


# Fitted on the 2-core CPU of benchmarks/RESULTS.md section 7 with ``benchmarks/memory.py
# --cells calibrate`` (CIFAR-10 shape, ConvNet-3, IPC 10, full batch of 100 images): GRAPH is
# the slope of peak RSS over syn_steps (unrolled, 2 and 6 steps) divided by the traced step
# graph; GRAPH + TRANSIENT the slope over micro_batch (adjoint, 25 and 100 images) divided by
# the traced bytes per image; base the mean of the four intercepts (383 to 421 MB). The
# generic functional student: the same four cells with fast_student=false (--cells
# calibrate_generic; intercepts 534 MB).
CALIBRATION = {
    "convnet_fast": Calibration(graph=1.077, transient=0.600, base=400_000_000,
                                source="CPU peak RSS, CIFAR-10 shape, 4 runs"),
    "generic": Calibration(graph=1.104, transient=0.523, base=534_000_000,
                           source="CPU peak RSS, CIFAR-10 shape, fast_student=false, 4 runs"),
}

# Copies of the synthetic set alive at an iteration's peak (the backward pass): the set
# itself (a leaf), SGD's momentum buffer (0.5, MTT's), and the gradient the backward pass
# accumulates into (adjoint: one (N, ...) tensor filled chunk by chunk; unrolled: autograd's
# .grad). The optimiser step updates both in place; nothing else holds a whole copy.
SET_COPIES = {"set": 1, "momentum": 1, "gradient": 1}


@dataclass(frozen=True)
class StepFootprint:
    """What one student step's graph keeps, traced on the real student.

    Example:
        >>> from datadistill.models import create_model
        >>> fp = trace_step(create_model("convnet", 1, 10, 8, width=8), (1, 8, 8), 10)
        >>> fp.per_image > 0 and fp.num_params == 1386
        True
    """

    per_image: int  # bytes per image in the batch (activations of forward + double backward)
    per_step: int  # bytes per step independent of the batch (parameter views, the gradient)
    num_params: int  # P
    image_elems: int  # C * H * W
    num_classes: int
    path: str  # key of CALIBRATION: convnet_fast | generic
    norm_per_image: int = 0  # bytes of the norm values an adjoint step records (NormValues)
    tiles_per_image: int = 0  # bytes of the tile transforms a rebuilt step keeps (CPU)

    def per_image_step_mb(self) -> float:
        """MB one image adds to one step's graph."""
        return self.per_image / 1e6


def trace_step(model: nn.Module, image_shape: tuple[int, int, int], num_classes: int, *,
               fast: bool = True, soft_labels: bool = False) -> StepFootprint:
    """Trace one float32 student step on 1 and 2 images and return its graph's bytes.

    Args:
        model: the student architecture (its parameters give theta_0; CPU).
        image_shape: (C, H, W).
        num_classes: K (soft labels are (b, K) logits).
        fast: use the hand-written ConvNet kernels when they apply (as ``fast_student``).
        soft_labels: trace DATM's soft cross-entropy instead of the hard one.
    """

    model = model.to("cpu", torch.float32)
    forward = student_forward(model, fast=fast)
    fast_path = isinstance(getattr(forward, "__self__", None), ConvNetPlan)
    path = "convnet_fast" if fast_path else "generic"
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    one = _traced_bytes(forward, theta0, image_shape, num_classes, 1, soft_labels)
    two = _traced_bytes(forward, theta0, image_shape, num_classes, 2, soft_labels)
    tiles = [rebuild_tile_bytes(forward, theta0, torch.randn(b, *image_shape),
                                torch.arange(b) % num_classes) for b in (1, 2)]
    c, h, w = image_shape
    norms = [m.num_channels for m in model.modules() if isinstance(m, nn.GroupNorm)]
    return StepFootprint(per_image=two - one, per_step=max(0, 2 * one - two),
                         num_params=theta0.numel(), image_elems=c * h * w,
                         num_classes=num_classes, path=path,
                         norm_per_image=5 * 4 * sum(norms) if fast_path else 0,
                         tiles_per_image=tiles[1] - tiles[0])


def _traced_bytes(forward, theta0: torch.Tensor, image_shape, num_classes: int, b: int,
                  soft: bool) -> int:
    """Bytes of the distinct storages saved by one unrolled step on b images."""

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, *image_shape, generator=gen).requires_grad_(True)  # (b, C, H, W)
    labels = (torch.randn(b, num_classes, generator=gen).requires_grad_(True) if soft
              else torch.arange(b) % num_classes)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    saved: dict[int, int] = {}  # storage pointer -> bytes (views share one storage)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        theta = unroll_student(forward, theta0, images, labels, syn_lr, StudentSteps(1))
    inputs = {t.untyped_storage().data_ptr() for t in (images, labels, theta0, syn_lr)}
    del theta  # the graph (and the storages it saved) goes with it
    return sum(n for ptr, n in saved.items() if ptr not in inputs)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of one iteration, and its parts.

    Example:
        >>> MemoryEstimate("adjoint", base=1, data=2, state=3, graph=4, snapshots=5).total
        15
    """

    mode: str
    base: int  # the process before any tensor
    data: int  # the real training set
    state: int  # synthetic images/labels with gradient and momentum, flat parameter vectors
    graph: int  # student graphs kept at the peak (N steps unrolled, one chunk adjoint)
    snapshots: int  # adjoint: theta_0 ... theta_N
    details: dict = field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return self.base + self.data + self.state + self.graph + self.snapshots

    def summary(self) -> str:
        """One line: total and parts in GB."""
        parts = ", ".join(f"{k} {getattr(self, k) / GB:.2f}" for k in
                          ("graph", "snapshots", "state", "data", "base"))
        return f"{self.total / GB:.2f} GB ({parts})"


@dataclass(frozen=True)
class Iteration:
    """One distillation iteration as the estimate sees it.

    Fields:
        num_images: synthetic images N_syn (classes x IPC).
        syn_steps: N student steps.
        mode: "unrolled" or "adjoint".
        batch_syn: images per student step (None: all).
        micro_batch: adjoint: images per chunk inside a step (None: the whole step batch).
        soft_labels: (N_syn, K) learnable logits (DATM/PAD) instead of hard labels.
        snapshots: adjoint: "memory" keeps theta_0 ... theta_N ((N + 1) x P); "spill" moves
            them to a file (CPU) or host memory (CUDA), leaving theta_N and the one in use.
        kept_graphs: adjoint: the last steps whose graph the forward pass keeps.
        real_images: real images (train + test) held in memory (0 when none).
        device: "cpu" (peak RSS) or "cuda" (device memory: no process base, no data).
        dtype_bytes: 4 for float32 (the trace's dtype), 8 for float64.
    """

    num_images: int
    syn_steps: int
    mode: str = "unrolled"
    batch_syn: int | None = None
    micro_batch: int | None = None
    soft_labels: bool = False
    snapshots: str = "memory"
    kept_graphs: int = 1
    real_images: int = 0
    device: str = "cpu"
    dtype_bytes: int = 4


def estimate_memory(fp: StepFootprint, it: Iteration) -> MemoryEstimate:
    """Predicted peak memory of one distillation iteration (see the module docstring);
    ``fp`` is the traced step (:func:`trace_step`)."""
    num_images, syn_steps, mode, snapshots = it.num_images, it.syn_steps, it.mode, it.snapshots
    batch_syn, micro_batch, dtype_bytes = it.batch_syn, it.micro_batch, it.dtype_bytes
    real_images, soft_labels, device = it.real_images, it.soft_labels, it.device
    if mode not in MODES:
        raise ConfigError(f"grad_mode={mode!r}; choose one of {', '.join(MODES)}")
    cal = CALIBRATION[fp.path]
    scale = dtype_bytes / 4  # the trace runs in float32
    b = min(batch_syn or num_images, num_images)
    m = min(micro_batch or b, b)
    cpu = not str(device).startswith("cuda")
    per_image, per_step = fp.per_image * scale, fp.per_step * scale
    learnable = fp.image_elems + (fp.num_classes if soft_labels else 0)
    set_copy = num_images * learnable * dtype_bytes  # one copy of the synthetic set
    state = sum(SET_COPIES.values()) * set_copy + 4 * fp.num_params * dtype_bytes
    data = real_images * (fp.image_elems * 4 + 8) if cpu else 0
    if mode == "unrolled":
        graph = syn_steps * (b * per_image + per_step) * cal.graph \
            + b * per_image * cal.transient
        snapshots = 0
    else:
        graph = m * per_image * (cal.graph + cal.transient) + per_step
        if cpu:  # the rebuilt chunk's kept tile transforms, alive through its product
            graph += m * fp.tiles_per_image * scale
        if m == b and it.kept_graphs > 1:  # each as an unrolled step's; the freed heap kept
            graph += (min(it.kept_graphs, syn_steps) - 1) * (b * per_image + per_step) \
                * cal.graph + b * per_image * (cal.graph + cal.transient)
        snapshots = (syn_steps + 1 if snapshots == "memory" else 2) * fp.num_params \
            * dtype_bytes * (2 if m == b else 1)  # the recorded g_i where a step is one chunk
        if m == b and it.snapshots == "memory" and cpu:  # and those steps' norm values
            snapshots += max(0, syn_steps - it.kept_graphs) * b * fp.norm_per_image * scale
    return MemoryEstimate(mode, base=cal.base if cpu else 0, data=int(data), state=int(state),
                          graph=int(graph), snapshots=int(snapshots),
                          details={"batch": b, "micro_batch": m, "syn_steps": syn_steps,
                                   "per_image_step": int(per_image), "path": fp.path,
                                   "set_copy": int(set_copy), "set_copies": dict(SET_COPIES)})


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ConfigEstimate:
    """Both modes' estimates for one distill config, and the micro_batch that fits.

    ``fits_micro_batch`` is the largest chunk (at most the step batch) whose adjoint estimate
    is within ``free`` bytes; None when not even one image per chunk fits.
    """

    unrolled: MemoryEstimate
    adjoint: MemoryEstimate  # with the config's micro_batch (None: the whole step batch)
    footprint: StepFootprint
    free: int | None
    fits_micro_batch: int | None
    fitting: MemoryEstimate | None  # adjoint with fits_micro_batch
    fits_kept_graphs: int | None = None  # the most kept graphs that fit, at the micro_batch


def footprint_for(cfg, info) -> StepFootprint:
    """Trace the student of a :class:`~datadistill.tm.distill.DistillConfig` on ``info``'s shape."""

    model = build_model(cfg, info, init_seed=0)
    return trace_step(model, (info.channels, *info.image_size), info.num_classes,
                      fast=cfg.grad.fast_student, soft_labels=cfg.labels.label_mode == "soft")


def real_images_of(cfg, info) -> int:
    """Real images distill holds (train, or its train_per_class subset, plus test), from the
    registry's split sizes (:func:`~datadistill.data.split_sizes`; an unregistered dataset is
    an error). Where the files decide the sizes (imagefolder, ImageNet) they count 0 here, as
    logged: distill's own check counts the loaded data."""
    sizes = split_sizes(cfg.dataset)
    if sizes is None:
        logger.info("%s: real images not counted before loading (the files decide their "
                    "number)", cfg.dataset)
    train, test = sizes or (0, 0)
    if cfg.train_per_class is not None:
        train = cfg.train_per_class * info.num_classes
    return train + test


def estimate_config(cfg, info, *, real_images: int | None = None,
                    free: int | None = None) -> ConfigEstimate:
    """Estimates of both modes for ``cfg`` (a DistillConfig) on dataset ``info``.

    Example:
        >>> from datadistill.tm.distill import DistillConfig
        >>> from datadistill.data import dataset_info
        >>> est = estimate_config(DistillConfig(dataset="digits", ipc=1, syn_steps=10),
        ...                       dataset_info("digits"))
        >>> est.unrolled.total > est.adjoint.total
        True
    """
    fp = footprint_for(cfg, info)
    n = info.num_classes * cfg.ipc
    common = dict(num_images=n, syn_steps=cfg.syn_steps, batch_syn=cfg.batch_syn,
                  real_images=real_images_of(cfg, info) if real_images is None
                  else real_images, soft_labels=cfg.labels.label_mode == "soft",
                  device=cfg.device, **adjoint_keys(cfg))
    unrolled = estimate_memory(fp, Iteration(mode="unrolled", **common))
    adjoint = estimate_memory(fp, Iteration(mode="adjoint", micro_batch=micro_batch_of(cfg),
                                            **common))
    fits = None if free is None else fitting_micro_batch(fp, free, **common)
    fitting = None if fits is None else estimate_memory(
        fp, Iteration(mode="adjoint", micro_batch=fits, **common))
    kept = None if free is None else fitting_kept_graphs(fp, free, micro_batch_of(cfg), **common)
    return ConfigEstimate(unrolled, adjoint, fp, free, fits, fitting, kept)


def fitting_micro_batch(fp: StepFootprint, free: int, **common) -> int | None:
    """Largest micro_batch (<= the step batch) whose adjoint estimate is within ``free``."""
    b = min(common.get("batch_syn") or common["num_images"], common["num_images"])
    fixed = estimate_memory(fp, Iteration(mode="adjoint", micro_batch=1, **common)).total
    if fixed > free:
        return None
    per_image = estimate_memory(fp, Iteration(mode="adjoint", micro_batch=2, **common)).total
    per_image -= fixed
    if per_image <= 0:
        return b
    k = int(min(b, 1 + (free - fixed) // per_image))

    def total(m: int) -> int:
        return estimate_memory(fp, Iteration(mode="adjoint", micro_batch=m, **common)).total

    while k > 1 and total(k) > free:  # the linear guess can be one off (integer bytes)
        k -= 1
    while k < b and total(k + 1) <= free:
        k += 1
    return k


def fitting_kept_graphs(fp: StepFootprint, free: int, micro_batch: int | None,
                        **common) -> int | None:
    """Largest ``distill.kept_graphs`` (<= syn_steps) whose adjoint estimate with
    ``micro_batch`` is within ``free``; None where not even 1 fits."""
    fit = [k for k in range(1, common["syn_steps"] + 1) if estimate_memory(fp, Iteration(
        mode="adjoint", micro_batch=micro_batch, **{**common, "kept_graphs": k})).total <= free]
    return fit[-1] if fit else None


PROCESS_COUNTS = (1, 2, 4, 8)  # what `datadistill estimate` tabulates


def per_process(fp: StepFootprint, processes: int, **common) -> MemoryEstimate:
    """Adjoint peak of one process when ``processes`` share every student step.

    Under torchrun rank r takes the r-th of K consecutive parts of each step's mini-batch
    (ceil(b / K) images at most) and then its micro-batches, so the graph shrinks with K while
    the state (synthetic set, its gradient and momentum, soft labels) and the snapshots are
    held by every rank.

    Example:
        >>> from datadistill.models import create_model
        >>> fp = trace_step(create_model("convnet", 1, 10, 8, width=8), (1, 8, 8), 10)
        >>> one = per_process(fp, 1, num_images=40, syn_steps=5, micro_batch=None)
        >>> two = per_process(fp, 2, num_images=40, syn_steps=5, micro_batch=None)
        >>> one.graph > two.graph and one.state == two.state
        True
    """
    b = min(common.get("batch_syn") or common["num_images"], common["num_images"])
    share = -(-b // processes)
    return estimate_memory(fp, Iteration(mode="adjoint", **{**common, "batch_syn": share}))


def process_table(cfg, info, *, device: str = "cuda", real_images: int | None = None,
                  counts: tuple[int, ...] = PROCESS_COUNTS) -> list[tuple[int, MemoryEstimate]]:
    """[(K, adjoint peak per process on ``device``)] for a DistillConfig on ``info``."""
    fp = footprint_for(cfg, info)
    common = dict(num_images=info.num_classes * cfg.ipc, syn_steps=cfg.syn_steps,
                  batch_syn=cfg.batch_syn, micro_batch=micro_batch_of(cfg),
                  real_images=real_images_of(cfg, info) if real_images is None else real_images,
                  soft_labels=cfg.labels.label_mode == "soft", device=device,
                  **adjoint_keys(cfg))
    return [(k, per_process(fp, k, **common)) for k in counts]


def check_memory(cfg, data=None) -> ConfigEstimate | None:
    """Refuse a run whose estimate exceeds the device's free memory.

    Unrolled: the whole graph must fit, else the error names the adjoint mode. Adjoint: the
    peak of one process (its share of each step under torchrun, :func:`per_process`) must fit,
    else the error names the ``distill.micro_batch`` that does. The distillation loop and the
    main job call it before any work. ``cfg`` is a DistillConfig; ``data`` (a RealData)
    gives the dataset's shape and size when already loaded (else the registry's metadata).
    ``distill.memory_check=false`` skips the check.

    Example:
        >>> check_memory(DistillConfig(dataset="digits", ipc=1))   # doctest: +SKIP
    """
    if not getattr(getattr(cfg, "grad", None), "memory_check", True):
        return None

    if data is not None:  # a disk cache (CachedImages) is read per batch: not held
        info = data.info
        real = sum(len(s) for s in (data.train, data.test) if isinstance(s.images, torch.Tensor))
    else:
        info, real = dataset_info(cfg.dataset, root=cfg.data_root), None
    free = free_memory(cfg.device)
    if grad_mode_of(cfg) == "adjoint":
        return _check_adjoint(cfg, info, real, free, distributed.world_size())
    est = estimate_config(cfg, info, real_images=real, free=free)
    if est.unrolled.total <= free:
        return est
    raise ConfigError(refusal_message(cfg, est))


def _check_adjoint(cfg, info, real: int | None, free: int, processes: int) -> None:
    """Refuse an adjoint run whose per-process peak exceeds ``free``, naming what fits."""
    fp = footprint_for(cfg, info)
    common = dict(num_images=info.num_classes * cfg.ipc, syn_steps=cfg.syn_steps,
                  batch_syn=cfg.batch_syn, real_images=real_images_of(cfg, info)
                  if real is None else real, soft_labels=cfg.labels.label_mode == "soft",
                  device=cfg.device, **adjoint_keys(cfg))
    need = per_process(fp, processes, micro_batch=micro_batch_of(cfg), **common)
    if need.total <= free:
        return None
    b = min(cfg.batch_syn or common["num_images"], common["num_images"])
    share = {**common, "batch_syn": -(-b // processes)}
    fits, kept = fitting_micro_batch(fp, free, **share), common["kept_graphs"]
    head = (f"the adjoint student needs about {need.total / GB:.1f} GB per process "
            f"({processes} process(es), micro_batch {need.details['micro_batch']}, kept_graphs "
            f"{kept}; synthetic state {need.state / GB:.1f} GB), but {cfg.device} has "
            f"{free / GB:.1f} GB free.")
    k = fitting_kept_graphs(fp, free, micro_batch_of(cfg), **share) if kept > 1 else None
    if k is not None:  # fewer kept graphs: the same chunks, less of the unrolled memory
        raise ConfigError(head + f" Use distill.kept_graphs={k}, or distill.memory_check=false"
                          " to try anyway.")
    if fits is not None:
        raise ConfigError(head + f" Use distill.micro_batch={fits}, or "
                          "distill.memory_check=false to try anyway.")
    raise ConfigError(head + " Even distill.micro_batch=1 does not fit: the synthetic set itself "
                      "is too large for this device; lower ipc, use a device with more memory, "
                      "or distill.memory_check=false to try anyway.")


def refusal_message(cfg, est: ConfigEstimate) -> str:
    """Why an unrolled run cannot start, and the settings that would."""
    head = (f"the unrolled student needs about {est.unrolled.total / GB:.1f} GB for one "
            f"iteration ({cfg.syn_steps} steps x {est.unrolled.details['batch']} images), but "
            f"{cfg.device} has {est.free / GB:.1f} GB free.")
    if est.fits_micro_batch is None:
        return (head + " Even distill.grad_mode=adjoint with distill.micro_batch=1 does not "
                "fit; free memory, or lower ipc/batch_syn. distill.memory_check=false skips "
                "this check.")
    return (head + f" Use the exact constant-memory student: distill.grad_mode=adjoint "
            f"distill.micro_batch={est.fits_micro_batch} (about "
            f"{est.fitting.total / GB:.1f} GB), or "
            "distill.memory_check=false to try anyway.")
