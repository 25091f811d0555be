"""The full-size passes of the ConvNet block (instance norm -> ReLU -> 2x2 average pool) in C
(``norm_act_pool.c``): the student's forward, backward and double backward, and the test of
where they apply. :mod:`.convnet_ops` calls them; where
they do not apply, or no library could be built (:mod:`datadistill.runtime.ckernels`), it runs
the same formulas as PyTorch ops."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from datadistill.runtime import ckernels

ONE = torch.ones(())  # a coefficient of 1 for :func:`run_pass`
SOURCE = str(Path(__file__).with_name("norm_act_pool.c"))


_ARGS = {  # argument types of each C function, after its name
    "nap_pass": (ctypes.c_int,) * 2 + (ctypes.c_void_p,) * 11 + (ctypes.c_long,) * 4,
    "nap_stats": (ctypes.c_void_p,) * 2 + (ctypes.c_long,) * 4,
    "nap_forward": (ctypes.c_int,) + (ctypes.c_void_p,) * 4 + (ctypes.c_long,) * 4,
}


def kernel(name: str, dtype: torch.dtype):
    """The C function ``name`` of ``norm_act_pool.c`` for ``dtype``, or None (no library)."""
    return ckernels.function(SOURCE, name, dtype == torch.float64, _ARGS[name])


def _is_nhwc(t: torch.Tensor | None) -> bool:
    return t is None or t.permute(0, 2, 3, 1).is_contiguous()


def compiled_passes(pool: bool, z: torch.Tensor, *maps: torch.Tensor | None) -> bool:
    """Whether the block's passes over ``z`` and ``maps`` run in C: float CPU maps, all
    channels_last, even sides where pooled, no graph being recorded, one torch thread (the C
    loops are single-threaded) and a compiled library at hand; otherwise the PyTorch ops of
    :mod:`.convnet_ops`."""
    if (torch.is_grad_enabled() or z.device.type != "cpu" or torch.get_num_threads() != 1
            or z.dtype not in (torch.float32, torch.float64)
            or (pool and (z.shape[2] % 2 or z.shape[3] % 2))):
        return False
    if not all(_is_nhwc(t) for t in (z, *maps)):
        return False
    return kernel("nap_pass", z.dtype) is not None


def forward(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, pool: bool,
            stats: tuple[torch.Tensor, torch.Tensor] | None = None):
    """(p, mu, rstd, s, t) of the block's forward on channels_last ``z`` in two C passes:
    p = avgpool2x2(relu(y)) (relu(y) itself without pooling) for the instance norm's output
    y = s * z + t, with s = w * rstd and t = b - mu * s; mu, rstd, s and t (N, C). The
    statistics are accumulated in double; rstd = (var + eps)^-1/2 in z's dtype. relu(y) is not
    kept: the backward passes remake its mask from (z, s, t) (:class:`Maps`). ``stats``:
    (mu, rstd) this function returned for the same ``z`` before; the statistics pass is then
    skipped (one pass)."""
    n, c, h, wd = z.shape
    if stats is not None:
        mu, rstd = stats
    else:
        acc = torch.empty((n, 2, c), dtype=torch.float64)
        kernel("nap_stats", z.dtype)(z.data_ptr(), acc.data_ptr(), n, h, wd, c)
        mu = acc[:, 0].to(z.dtype)
        rstd = ((acc[:, 1] / (h * wd)).to(z.dtype) + eps).rsqrt()
    s = (w.view(1, -1) * rstd).contiguous()
    t = (b.view(1, -1) - mu * s).contiguous()
    size = (n, c, h // 2, wd // 2) if pool else (n, c, h, wd)
    p = torch.empty(size, dtype=z.dtype, memory_format=torch.channels_last)
    kernel("nap_forward", z.dtype)(int(pool), z.data_ptr(), s.data_ptr(), t.data_ptr(),
                                   p.data_ptr(), n, h, wd, c)
    return p, mu, rstd, s, t


@dataclass(frozen=True)
class Maps:
    """A block's saved maps as the C passes read them: the pooled gradient ``dp``, the norm
    input ``z``, the forward's scale and shift ``s``, ``t`` ((N, C) contiguous: the ReLU mask
    is s * z + t > 0, remade by each pass); ``pool``: 2x2 average pooling or none."""

    dp: torch.Tensor
    z: torch.Tensor
    s: torch.Tensor
    t: torch.Tensor
    pool: bool


def relu_of(a: torch.Tensor | None, z: torch.Tensor, mask) -> torch.Tensor:
    """The ReLU output ``a``, or where the C forward kept its (s, t) instead (``mask``),
    relu(s * z + t) remade as that forward made it (one rounding per operation): the same
    mask, for the PyTorch ops' form of a backward."""
    if a is not None:
        return a
    s, t = mask
    n, c = s.shape
    return (z * s.view(n, c, 1, 1)).add_(t.view(n, c, 1, 1)).relu_()


def run_pass(mode: int, M: Maps, l=None, cd=None, cl=None, cz=None, c1=None):
    """One pass of ``norm_act_pool.c`` over v = cd*dy + cl*l + cz*z + c1, coefficients
    per (sample, channel) (broadcastable to (N, C, 1, 1); None: zero). mode 0: v, mode 1:
    avgpool(mask * v) (channels_last, as ``dp``); mode 2: the per-instance sums of v, v*z
    and v*dy, (N, C, 1, 1) each."""
    z, pool = M.z, M.pool
    n, c, h, w = z.shape
    coef = [_coefficient(k, n, c, z.dtype) for k in (cd, cl, cz, c1)]
    sums = out = None
    if mode == 2:
        sums = torch.empty((n, 3, c), dtype=torch.float64)
    else:  # channels_last (N, C, H, W), not a permuted view: see winograd._winograd
        size = (n, c, h // 2, w // 2) if mode == 1 and pool else (n, c, h, w)
        out = torch.empty(size, dtype=z.dtype, memory_format=torch.channels_last)
    src = l if l is not None else z
    kernel("nap_pass", z.dtype)(mode, int(pool), M.dp.data_ptr(), M.s.data_ptr(),
                                M.t.data_ptr(), src.data_ptr(), z.data_ptr(),
                                *(k.data_ptr() for k in coef),
                                0 if out is None else out.data_ptr(),
                                0 if sums is None else sums.data_ptr(), n, h, w, c)
    if sums is not None:
        sums = sums.to(z.dtype)  # one conversion; the three are views of it
        return tuple(sums[:, i].view(n, c, 1, 1) for i in range(3))
    return out


_CONSTANTS: dict[tuple, torch.Tensor] = {}  # (value, n, c, dtype) -> a filled (n, c) tensor


def _coefficient(k: torch.Tensor | None, n: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    """k as the dense (n, c) array of ``dtype`` the C pass reads (None: zero). A contiguous
    (N, C, 1, 1) array of that dtype is used as it is, zero and :data:`ONE` come from a cache
    (the passes only read their coefficients): these calls run a thousand times per matching
    iteration, where each PyTorch op on a small tensor costs microseconds."""
    if k is None or k is ONE:
        key = (0.0 if k is None else 1.0, n, c, dtype)
        if key not in _CONSTANTS:
            _CONSTANTS[key] = torch.full((n, c), key[0], dtype=dtype)
        return _CONSTANTS[key]
    if k.dtype == dtype and k.shape == (n, c, 1, 1) and k.is_contiguous():
        return k
    return k.to(dtype).expand(n, c, 1, 1).reshape(n, c).contiguous()


# ------------------------------------------- the per-instance formulas and the C forms


@dataclass
class Terms:
    """Per-instance quantities shared by the backward and the double backward ((N, C, 1, 1))."""

    dy: torch.Tensor | None  # (N, C, H, W) gradient at the norm output u (None: not made)
    s: torch.Tensor  # w * rstd
    A: torch.Tensor  # mean(dy)
    B: torch.Tensor  # mean(dy * xh)
    m: int  # H * W


def terms_from(dy, s1, sz, w, mu, rstd, m: int) -> Terms:
    """The terms from the per-instance sums s1 = sum(dy), sz = sum(dy * z)."""
    B = rstd * (sz - mu * s1) / m  # mean(dy * xh) with xh = rstd * (z - mu)
    return Terms(dy, w.view(1, -1, 1, 1) * rstd, s1 / m, B, m)


def _terms(M: Maps, w, mu, rstd) -> Terms:
    """The terms by one C pass of sums (``convnet_ops._terms`` in PyTorch ops); dy is not
    materialised."""
    s1, sz, _ = run_pass(2, M, cd=ONE)
    return terms_from(None, s1, sz, w, mu, rstd, M.z.shape[2] * M.z.shape[3])


@dataclass
class Adjoints:
    """The incoming adjoints and their per-instance sums ((N, C, 1, 1) unless noted)."""

    Lz: torch.Tensor | None  # (N, C, H, W) adjoint of dz, or None
    L1: torch.Tensor  # sum(Lz)
    C1: torch.Tensor  # mean(Lz * xh)
    Lt: torch.Tensor  # mean(Lz * t)
    Lw4: torch.Tensor  # adjoint of dw, (1, C, 1, 1)
    Lb4: torch.Tensor  # adjoint of db, (1, C, 1, 1)


def q_coefs(T: Terms, L: Adjoints, mu, rstd):
    """q = s*Lz + qz*z + qc (the adjoint of dy, xh = rstd*(z - mu) expanded): (qz, qc)."""
    qz = (L.Lw4 - T.s * L.C1) * rstd
    return qz, L.Lb4 - T.s * L.L1 / T.m - qz * mu


def z_coefs(T: Terms, L: Adjoints, w, mu, rstd, G1, Gz):
    """d z = rstd*G + kz*z + kc, from G's per-instance sums G1 = sum(G), Gz = sum(G*z)."""
    Gx = rstd * (Gz - mu * G1) / T.m  # mean(G * xh)
    kz = -rstd * rstd * (Gx + w.view(1, -1, 1, 1) * L.Lt * rstd)  # coefficient of z
    return kz, -rstd * G1 / T.m - kz * mu


def adjoints(T: Terms, Lz, sums, Lw4, Lb4, mu, rstd) -> tuple[Adjoints, torch.Tensor | None]:
    """The adjoints' per-instance terms from ``sums`` = (sum Lz, sum Lz*z, sum Lz*dy), and
    d w's first term; Lw4, Lb4 None: zero."""
    zero = torch.zeros_like(T.s)
    Lw4 = zero if Lw4 is None else Lw4
    Lb4 = zero if Lb4 is None else Lb4
    if Lz is None:
        return Adjoints(None, zero, zero, zero, Lw4, Lb4), None
    L1, Lzz, Ldy = sums
    C1 = rstd * (Lzz - mu * L1) / T.m  # mean(Lz * xh)
    Lt = (Ldy - T.A * L1 - T.B * rstd * (Lzz - mu * L1)) / T.m  # mean(Lz * t)
    return Adjoints(Lz, L1, C1, Lt, Lw4, Lb4), (Lt * T.m * rstd).sum((0, 2, 3))


def grad(M: Maps, w, mu, rstd, sums=None) -> tuple[torch.Tensor, Terms]:
    """The first-order dz and the terms by two C passes: the sums, then dz. ``sums``: the
    terms' (s, A, B) this function gave for the same maps before; the sums pass is then
    skipped."""
    if sums is not None:
        T = Terms(None, *sums, M.z.shape[2] * M.z.shape[3])
    else:
        T = _terms(M, w, mu, rstd)
    k = -T.s * rstd * T.B  # dz = s*dy + k*z + c  (xh expanded)
    return run_pass(0, M, cd=T.s, cz=k, c1=-T.s * T.A - k * mu), T


def double_backward(M: Maps, w, stats, sums, adj, need):
    """(d dp, d z, d w) of ``convnet_ops._NormActPoolGrad`` by C passes: the adjoint's sums,
    then d dp (one pass), then d z (two); ``sums``: the forward's (s, A, B) or None."""
    (mu, rstd), (Lz, Lw4, Lb4) = stats, adj
    if sums is None:
        T = _terms(M, w, mu, rstd)
    else:
        T = Terms(None, *sums, M.z.shape[2] * M.z.shape[3])
    L_sums = None if Lz is None else run_pass(2, M, l=Lz, cl=ONE)
    L, g_w = adjoints(T, Lz, L_sums, Lw4, Lb4, mu, rstd)
    g_dp = _adjoint_dp(T, L, M, mu, rstd) if need[0] else None
    g_z = _adjoint_z(T, L, M, w, mu, rstd) if need[1] else None
    return g_dp, g_z, g_w


def _adjoint_dp(T: Terms, L: Adjoints, M: Maps, mu, rstd):
    """d dp = avgpool(mask * q) (``convnet_ops._adjoint_dp``) in one C pass."""
    qz, qc = q_coefs(T, L, mu, rstd)
    return run_pass(1, M, l=L.Lz, cl=None if L.Lz is None else T.s, cz=qz, c1=qc)


def _adjoint_z(T: Terms, L: Adjoints, M: Maps, w, mu, rstd):
    """d z (``convnet_ops._adjoint_z``) in two C passes: G's sums, then the result (G itself
    is not stored)."""
    gd = L.Lw4 - T.s * L.C1
    gl = None if L.Lz is None else -T.s * T.B
    G1, Gz, _ = run_pass(2, M, l=L.Lz, cd=gd, cl=gl)
    kz, kc = z_coefs(T, L, w, mu, rstd, G1, Gz)
    return run_pass(0, M, l=L.Lz, cd=gd * rstd, cl=None if gl is None else gl * rstd, cz=kz,
                    c1=kc)
