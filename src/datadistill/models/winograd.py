"""3x3 convolution by Winograd's minimal filtering F(4x4, 3x3), for the student on the CPU.

A 3x3, stride-1, padding-1 convolution computes each 4x4 output tile from a 6x6 input tile.
Lavin & Gray (CVPR 2016) write it as ``Y = A^T [(G w G^T) * (B^T d B)] A``: the input tile and
the filter are taken into a 6x6 transform domain where the convolution is an element-wise
product, summed over input channels. Summed over channels that product is 36 independent
matrix products, (tiles x Cin) @ (Cin x Cout): 36 multiply-adds per 4x4 output tile and pair of
channels where the direct convolution does 16 x 9 = 144, 4 times fewer. oneDNN uses Winograd
only on AVX-512 machines; elsewhere its direct kernels already run at the matmul rate, so fewer
FLOPs is the only way left to a faster convolution there.

The three kernels the student's double backward needs are all written in that form:

- :func:`conv` (the forward) and :func:`conv_input_grad` (the same with the filter rotated by
  180 degrees and its channel axes swapped),
- :func:`conv_weight_grad` (the filter gradient ``G^T [sum_tiles (B^T d B)^T (A dY A^T)] G``).

The result is exact in exact arithmetic (the float64 tests agree with ``F.conv2d`` to 1e-11);
in float32 the transforms' constants (up to 8 and 1/24) round more than the direct sum: at
the CIFAR-10 shapes the output is within about 1e-5 of float64, relative to its largest
magnitude, where the direct kernel is within about 2e-6 (``benchmarks/winograd.py``).
:func:`applies` keeps the direct kernel where Winograd does not pay (few channels, small maps)
and everywhere off the CPU; ``DATADISTILL_WINOGRAD=0`` in the environment turns it off.

The tile transforms run as C loops (``winograd_tiles.c``, built by
:mod:`datadistill.runtime.ckernels` where a C compiler is at hand, one torch thread, no graph
being recorded): one pass each, with the transforms' few additions per element. Elsewhere
they are PyTorch ops (a padded copy of the tiles times the dense 36x36 Kronecker matrix), with
the same values up to float rounding. The 36 products between them run there too, as a
register-blocked loop (``tile_products``) where the channel count is a whole number of vector
pairs, else as ``torch.bmm``: where the BLAS library does not use the CPU's widest kernels
(MKL on AMD EPYC) it was measured 10-30 % faster at these sizes. In the convolutions'
products the filter's transform is made inside that loop, panel by panel from the taps
(``filter_products``), and the filter gradient leaves the transform domain in one pass
written in the filter's layout (``filter_grad``): a stored (36, Cin, Cout) transform is four
times the filter, written and read back through memory at every call.

One step of the student transforms the same map several times: a layer's input x in the
forward convolution, again for its weight gradient, and (differentiating that gradient) twice
more; the first-order gradient dz for the input gradient and again in the double backward.
Within :func:`kept_tiles` a transform is kept for the kernels that follow in the same step
(see there); the double backward's two terms that read the adjoint lx share its transform
(:func:`conv_sum_weight_grad`). A kept transform is the same tensor the kernel would compute
again, so the results are the same bits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from datadistill.runtime import ckernels

__all__ = ["ENABLED", "FORWARD", "INPUT_GRAD", "KeptTiles", "applies", "conv", "conv_input_grad",
           "conv_sum", "conv_sum_weight_grad", "conv_weight_grad", "kept_tiles"]

ENABLED = os.environ.get("DATADISTILL_WINOGRAD", "1") != "0"
# kept_tiles keeps transforms and the double backward shares lx's (DATADISTILL_KEEP_TILES=0:
# every kernel makes its own, as before they were kept; the same bits either way)
KEEP_TILES = os.environ.get("DATADISTILL_KEEP_TILES", "1") != "0"

MIN_CHANNELS = 32  # both Cin and Cout; below it the transforms cost more than they save
MIN_SIZE = 8       # both H and W: a 4x4 map is one tile per image
CHUNK_ELEMENTS = 1 << 20  # largest transform-domain block per chunk of images (4 MB in float32)

# Lavin & Gray's F(4x4, 3x3) with interpolation points 0, +-1, +-2 (and infinity).
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))

_MATS: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
_SOURCE = str(Path(__file__).with_name("winograd_tiles.c"))


_TILE_ARGS = (ctypes.c_void_p, ctypes.c_void_p) + (ctypes.c_long,) * 4  # in, out, sizes
_ARGS = {  # argument types of each C function of winograd_tiles.c, after its name
    "input_tiles": _TILE_ARGS, "output_tiles": _TILE_ARGS, "grad_tiles": _TILE_ARGS,
    "tile_products": (ctypes.c_int,) * 2 + (ctypes.c_void_p,) * 3 + (ctypes.c_long,) * 4,
    "filter_products": (ctypes.c_int,) + (ctypes.c_void_p,) * 4 + (ctypes.c_long,) * 3,
    "filter_grad": (ctypes.c_void_p,) * 3 + (ctypes.c_long,) * 2,
}


def _compiled(name: str, dtype: torch.dtype):
    """The C form of a tile transform (``winograd_tiles.c``: one pass, no padded copy) or of
    the tile products, or None where :func:`datadistill.runtime.ckernels.load` has no library
    (the PyTorch form is used)."""
    return ckernels.function(_SOURCE, name, dtype == torch.float64, _ARGS[name])


def _products(a: torch.Tensor, b: torch.Tensor, transpose_a: bool = False,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """The 36 products of the transform domain: (36, M, N) = a @ b, or a^T @ b with
    ``transpose_a`` (a stored (36, K, M)); with ``out``, added to it (``baddbmm_``).

    ``tile_products`` of ``winograd_tiles.c`` where it serves (see :func:`_native`; contiguous
    operands and N a multiple of 32 floats or 16 doubles, two vectors of the widest kind);
    otherwise ``torch.bmm``. Where the BLAS library does not run its widest kernels (MKL on
    AMD EPYC) the C loops are 10-30 % faster at these sizes."""
    nb, k, m = a.shape if transpose_a else (a.shape[0], a.shape[2], a.shape[1])
    n = b.shape[2]
    native = None
    if (n % (128 // b.element_size()) == 0 and a.is_contiguous() and b.is_contiguous()
            and a.dtype == b.dtype and not (torch.is_grad_enabled() and a.requires_grad)):
        native = _native("tile_products", b)
    lhs = a.transpose(1, 2) if transpose_a else a
    if native is None:
        return torch.bmm(lhs, b) if out is None else out.baddbmm_(lhs, b)
    acc = out is not None
    if out is None:
        out = torch.empty((nb, m, n), dtype=a.dtype)
    native(int(transpose_a), int(acc), a.data_ptr(), b.data_ptr(), out.data_ptr(), nb, m, k, n)
    return out


def _native(name: str, t: torch.Tensor):
    """:func:`_compiled` for ``t``'s dtype, unless autograd must see the transform (the C form
    writes through raw pointers, so it serves only where no graph is being recorded) or torch
    runs more than one thread (the C form is single-threaded; PyTorch's ops spread over them)."""
    if (torch.is_grad_enabled() and t.requires_grad) or torch.get_num_threads() != 1:
        return None
    return _compiled(name, t.dtype)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """The (N, H, W, C) view of a channels_last map, made dense if it is not."""
    v = t.permute(0, 2, 3, 1)
    return v if v.is_contiguous() else v.contiguous()


def _mats(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(B, G, G flipped, A, A^T) as Kronecker products over a tile's rows and columns, in
    ``dtype``: B 36x36 maps a flattened 6x6 input tile, G 36x9 a flattened filter (G flipped:
    the filter rotated by 180 degrees), A 16x36 a product tile back to a flattened 4x4 output
    tile. Built in float64, rounded once."""
    if dtype not in _MATS:
        bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
        gk, a = torch.kron(g, g), torch.kron(at, at)
        _MATS[dtype] = tuple(m.to(dtype).contiguous()
                             for m in (torch.kron(bt, bt), gk, gk.flip(1), a, a.T))
    return _MATS[dtype]


def applies(x: torch.Tensor, w: torch.Tensor, pad: int) -> bool:
    """Whether :func:`conv` is used for ``conv2d(x, w, padding=pad)``: on the CPU, a 3x3 filter
    with padding 1, float32/float64, channels_last ``x``, and both channel counts and both map
    sides at least :data:`MIN_CHANNELS` / :data:`MIN_SIZE`."""
    return (ENABLED and pad == 1 and x.device.type == "cpu" and x.dim() == 4
            and tuple(w.shape[2:]) == (3, 3) and x.dtype in (torch.float32, torch.float64)
            and w.dtype == x.dtype and x.shape[1] >= MIN_CHANNELS
            and w.shape[0] >= MIN_CHANNELS and min(x.shape[2:]) >= MIN_SIZE
            and x.is_contiguous(memory_format=torch.channels_last))


def _tiles(h: int, w: int) -> tuple[int, int]:
    return (h + 3) // 4, (w + 3) // 4


FORWARD = "forward"  # the input x of a forward convolution
INPUT_GRAD = "input_grad"  # the gradient dz an input gradient takes


class KeptTiles:
    """The input-tile transforms kept in one :func:`kept_tiles` block: for each map (a chunk
    of the batch, by its storage address, shape, strides and dtype) the map itself, which
    holds its memory so that no other tensor can take that address while the entry lives,
    its version counter when transformed, and the transform. ``roles``: whose transforms a
    kernel keeps here (:data:`FORWARD`, :data:`INPUT_GRAD`); may be changed within the
    block (empty: look up only)."""

    def __init__(self, roles: tuple[str, ...]):
        self.roles = frozenset(roles)
        self.entries: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for _, _, t in self.entries.values())


_SCOPES: list[KeptTiles] = []  # the open kept_tiles blocks, innermost last


@contextlib.contextmanager
def kept_tiles(*roles: str) -> Iterator[KeptTiles]:
    """Within the block, the convolutions keep the input-tile transforms of their ``roles``
    (:data:`FORWARD`: the forward convolution's input x; :data:`INPUT_GRAD`: the gradient
    dz that an input gradient transforms), and every kernel reads a kept transform of the
    map it is given instead of computing it again: the weight gradient of x after the
    forward convolution, and the double backward's terms in x and dz. The kept transforms
    are freed when the block ends; an entry serves only while its map is unchanged (same
    version counter), and never while autograd records the transform.

    For one student step (``matching.student``, ``matching.adjoint_steps``): at CIFAR-10
    IPC 10 the transforms of x and dz are 2.25 times the maps, about 74 MB for one step's
    two Winograd layers. Blocks nest: a kernel keeps its transform in the innermost block
    that takes its role and looks in all of them."""
    scope = KeptTiles(roles if KEEP_TILES else ())
    _SCOPES.append(scope)
    try:
        yield scope
    finally:
        _SCOPES.remove(scope)
        scope.entries.clear()


def _input_tiles(x: torch.Tensor, role: str | None = None) -> torch.Tensor:
    """:func:`_tile_transform` of x, read from an open :func:`kept_tiles` block where one
    holds it, and kept there where a block takes ``role``."""
    if not _SCOPES or (torch.is_grad_enabled() and x.requires_grad):
        return _tile_transform(x)
    key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
    for scope in reversed(_SCOPES):
        hit = scope.entries.get(key)
        if hit is not None and hit[1] == x._version:
            return hit[2]
    tiles = _tile_transform(x)
    for scope in reversed(_SCOPES):
        if role in scope.roles:
            scope.entries[key] = (x, x._version, tiles)
            break
    return tiles


def _tile_transform(x: torch.Tensor) -> torch.Tensor:
    """(36, T * C): the overlapping 6x6 input tiles (stride 4) of channels_last x (N, C, H, W),
    zero-padded, in the transform domain; T = N * ceil(H/4) * ceil(W/4)."""
    n, c, h, w = x.shape
    th, tw = _tiles(h, w)
    native = _native("input_tiles", x)
    if native is not None:
        src = _nhwc(x)
        out = torch.empty((36, n * th * tw * c), dtype=x.dtype)
        native(src.data_ptr(), out.data_ptr(), n, h, w, c)
        return out
    nhwc = x.permute(0, 2, 3, 1)  # a view: x is channels_last
    p = F.pad(nhwc, (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
    s = p.stride()
    d = p.as_strided((6, 6, n, th, tw, c), (s[1], s[2], s[0], 4 * s[1], 4 * s[2], s[3]))
    return _mats(x.dtype)[0] @ d.reshape(36, -1)


def _output_tiles(dy: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(16, T * C): the 4x4 output tiles of channels_last dy (N, C, H, W), zero-padded."""
    n, c, h, w = dy.shape
    nhwc = dy.permute(0, 2, 3, 1)
    if (4 * th, 4 * tw) != (h, w):
        nhwc = F.pad(nhwc, (0, 0, 0, 4 * tw - w, 0, 4 * th - h))
    return nhwc.reshape(n, th, 4, tw, 4, c).permute(2, 4, 0, 1, 3, 5).reshape(16, -1)


def _grad_tiles(dy: torch.Tensor, th: int, tw: int, at: torch.Tensor) -> torch.Tensor:
    """(36, T * C): ``A g A^T`` for the 4x4 tiles g of channels_last dy; ``at`` is A's
    Kronecker form (36x16), used where the C form is not."""
    native = _native("grad_tiles", dy)
    if native is None:
        return at @ _output_tiles(dy, th, tw)
    n, c, h, w = dy.shape
    src = _nhwc(dy)
    out = torch.empty((36, n * th * tw * c), dtype=dy.dtype)
    native(src.data_ptr(), out.data_ptr(), n, h, w, c)
    return out


def _filter(w: torch.Tensor, flip: bool) -> torch.Tensor:
    """(36, K, N), contiguous: the filter w (Cout, Cin, 3, 3) in the transform domain as the
    right factor of the tile products, K = Cin and N = Cout for the convolution; rotated by
    180 degrees with its channel axes swapped (K = Cout, N = Cin) for the input gradient. One
    copy of w's 9 K x N slices (whatever its layout) and one (36 x 9) @ (9 x K N) product."""
    g = _mats(w.dtype)[2 if flip else 1]
    taps = w.permute(2, 3, 0, 1) if flip else w.permute(2, 3, 1, 0)  # (3, 3, K, N)
    return (g @ taps.reshape(9, -1)).view(36, *taps.shape[2:])


def batch_slices(n: int, per_item: int, budget: int) -> list[slice]:
    """Slices of a batch of n items, as many items each as fit ``budget`` at ``per_item``
    (at least one)."""
    step = max(1, budget // max(1, per_item))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _chunks(n: int, per_image: int) -> list[slice]:
    """Slices of the batch whose (36, tiles, channels) blocks hold at most CHUNK_ELEMENTS:
    temporaries that small are recycled from the heap, where whole-batch ones (29 MB at
    CIFAR-10 IPC 10) left holes between the saved activations of an unrolled graph."""
    return batch_slices(n, 36 * per_image, CHUNK_ELEMENTS)


class _Factor:
    """The right factor of a convolution's tile products: the filter w (Cout, Cin, 3, 3),
    rotated by 180 degrees with its channel axes swapped where ``flip`` (the input gradient).

    Where ``filter_products`` of ``winograd_tiles.c`` serves (no graph recorded, one thread,
    N a whole number of vector pairs) the products make its transform panel by panel from a
    copy of the taps (9, K, N), never storing the (36, K, N) transform: written out, that is
    four times the filter's size in memory that the products read back. Elsewhere it is
    :func:`_filter`'s transform and :func:`_products`."""

    def __init__(self, w: torch.Tensor, flip: bool, tracked: bool):
        self.w, self.flip = w, flip
        self.n = w.shape[1] if flip else w.shape[0]
        self.native = None
        if not tracked and self.n % (128 // w.element_size()) == 0:
            self.native = _native("filter_products", w)
        self.u = None
        if self.native is not None:
            taps = w.permute(2, 3, 0, 1) if flip else w.permute(2, 3, 1, 0)  # (3, 3, K, N)
            self.taps = taps.contiguous()
            self.g = _mats(w.dtype)[2 if flip else 1]

    def products(self, a: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """(36, M, N) = a @ U for a (36, M, K); with ``out``, added to it."""
        if self.native is None or not a.is_contiguous() or a.dtype != self.w.dtype:
            if self.u is None:
                self.u = _filter(self.w, self.flip)
            return _products(a, self.u, out=out)
        acc = out is not None
        if out is None:
            out = torch.empty((36, a.shape[1], self.n), dtype=a.dtype)
        self.native(int(acc), a.data_ptr(), self.taps.data_ptr(), self.g.data_ptr(),
                    out.data_ptr(), a.shape[1], a.shape[2], self.n)
        return out


def _winograd(pairs: list[tuple[torch.Tensor, torch.Tensor, bool]], role: str | None = None,
              dy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum over input channels (and over the pairs) of the tile products: each pair an x
    (N, C, H, W) channels_last and a filter w with its ``flip`` (see :class:`_Factor`), every
    x of one shape -> the sum of their convolutions (N, Cout, H, W), channels_last. The pairs'
    products add up in the transform domain, so a sum of convolutions costs one output
    transform. ``role``: what the maps are to :func:`kept_tiles`. With ``dy`` (N, Cout, H, W)
    also the transform-domain weight gradient of the first pair's x (see
    :func:`conv_weight_grad`), from the same tiles; else None."""
    x = pairs[0][0]
    n, c, h, wd = x.shape
    tracked = torch.is_grad_enabled() and any(
        xi.requires_grad or w.requires_grad for xi, w, _ in pairs)
    factors = [(xi, _Factor(w, flip, tracked)) for xi, w, flip in pairs]
    co = factors[0][1].n
    th, tw = _tiles(h, wd)
    exact = (4 * th, 4 * tw) == (h, wd)
    a = _mats(x.dtype)[3]
    # a channels_last tensor, not a permuted view of an NHWC one: a view keeps its base, so
    # autograd could not add another gradient into it in place
    out = torch.empty((n, co, h, wd), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    y = out.permute(0, 2, 3, 1)  # (N, H, W, Cout), the same memory
    native = None if tracked else _native("output_tiles", x)
    du = None  # (36, Cout, Cin) with dy, summed over the chunks' tiles as conv_weight_grad
    at = _mats(x.dtype)[4]
    for s in _chunks(n, th * tw * max(c, co)):
        k = x[s].shape[0]
        t = k * th * tw
        m = None
        for j, (xi, f) in enumerate(factors):  # the second pair's products added in place
            v = _input_tiles(xi[s], role).view(36, t, c)  # (autograd follows)
            m = f.products(v, out=m)
            if dy is not None and j == 0:
                dm = _grad_tiles(dy[s], th, tw, at).view(36, t, co)
                du = _products(dm, v, transpose_a=True, out=du)
        if native is not None:
            native(m.data_ptr(), y[s].data_ptr(), k, h, wd, co)
            continue
        m = m.view(36, t * co)
        tiles = (a @ m).view(4, 4, k, th, tw, co).permute(2, 3, 0, 4, 1, 5)
        if exact:
            y[s].view(k, th, 4, tw, 4, co).copy_(tiles)
        else:
            y[s] = tiles.reshape(k, 4 * th, 4 * tw, co)[:, :h, :wd]
    return out, du


def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """conv2d(x, w, padding=1) for channels_last x (N, Cin, H, W) and w (Cout, Cin, 3, 3);
    the result is channels_last."""
    return _winograd([(x, w, False)], FORWARD)[0]


def conv_sum(x1: torch.Tensor, w1: torch.Tensor, x2: torch.Tensor,
             w2: torch.Tensor) -> torch.Tensor:
    """conv(x1, w1) + conv(x2, w2) for maps and filters of one shape, summed before the
    output transform (the convolution double backward's gradient w.r.t. its incoming
    gradient): equal in exact arithmetic, one transform and one map fewer."""
    return _winograd([(x1, w1, False), (x2, w2, False)])[0]


def conv_sum_weight_grad(x1: torch.Tensor, w1: torch.Tensor, x2: torch.Tensor,
                         w2: torch.Tensor, dy: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(:func:`conv_sum` (x1, w1, x2, w2), :func:`conv_weight_grad` (dy, x1)), the second from
    the tiles of x1 the first transforms, chunk by chunk: the convolution double backward's
    gradients w.r.t. its incoming gradient and w.r.t. the filter both read its adjoint lx.
    The same bits as the two calls (which it makes where :data:`KEEP_TILES` is off). ``dy``
    None: (conv_sum, None)."""
    if not KEEP_TILES and dy is not None:
        return conv_sum(x1, w1, x2, w2), conv_weight_grad(dy, x1)
    out, du = _winograd([(x1, w1, False), (x2, w2, False)], dy=dy)
    return out, None if du is None else _filter_grad(du, x1.dtype)


def conv_input_grad(dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dL/dx of conv2d(x, w, padding=1) for dL/dy = dy: the convolution of dy with the filter
    rotated by 180 degrees and its channel axes swapped."""
    return _winograd([(dy, w, True)], INPUT_GRAD)[0]


def conv_weight_grad(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dw (Cout, Cin, 3, 3) of conv2d(x, w, padding=1) for dL/dy = dy, both channels_last."""
    n, c, h, wd = x.shape
    co = dy.shape[1]
    th, tw = _tiles(h, wd)
    at = _mats(x.dtype)[4]
    du = None  # (36, Cout, Cin), summed over the chunks' tiles
    for s in _chunks(n, th * tw * max(c, co)):
        t = (s.stop - s.start) * th * tw
        v = _input_tiles(x[s]).view(36, t, c)
        dm = _grad_tiles(dy[s], th, tw, at).view(36, t, co)
        du = _products(dm, v, transpose_a=True, out=du)  # (36, Cout, Cin)
    return _filter_grad(du, x.dtype)


def _filter_grad(du: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The filter gradient (Cout, Cin, 3, 3) from its transform dU (36, Cout, Cin)."""
    _, co, c = du.shape
    g = _mats(dtype)[1]
    native = _native("filter_grad", du)
    if native is not None:  # G^T dU written in the filter's layout, one pass
        dw = torch.empty((co, c, 3, 3), dtype=dtype)
        native(du.data_ptr(), g.data_ptr(), dw.data_ptr(), co, c)
        return dw
    # G^T dU, then a permuted view: 6x faster than dU^T G, whose 9 columns starve the matmul
    return (g.T @ du.view(36, co * c)).view(3, 3, co, c).permute(2, 3, 0, 1)
