"""The compiled C kernels (datadistill.runtime.ckernels) and the two users of them: the Winograd
tile transforms and the norm -> ReLU -> pool block's backward passes. Each must equal the
PyTorch form it replaces, and the package must run the same where no library can be built."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from datadistill.models import convnet_ops, norm_passes, winograd
from datadistill.models.convnet_ops import norm_act_pool
from datadistill.runtime import ckernels

F64 = torch.float64
CL = torch.channels_last
HAS_CC = ckernels._compiler() is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")


def _rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _fresh_load(monkeypatch, tmp_path, **env):
    """``ckernels.load`` without its per-process memo, building under ``tmp_path``."""
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return ckernels.load.__wrapped__


@needs_cc
def test_a_machine_with_a_compiler_uses_the_kernels():
    """Where ``cc`` exists the libraries build and both users find their functions: the
    C paths are what this suite exercises, not silently the fallback."""
    assert ckernels.load(winograd._SOURCE) is not None
    assert ckernels.load(norm_passes.SOURCE) is not None
    for dtype in (torch.float32, F64):
        assert winograd._compiled("input_tiles", dtype) is not None
        assert norm_passes.kernel("nap_pass", dtype) is not None


@needs_cc
def test_the_library_is_built_once_and_reused(monkeypatch, tmp_path):
    load = _fresh_load(monkeypatch, tmp_path)
    assert load(winograd._SOURCE) is not None
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary left behind
    stamp = built[0].stat().st_mtime_ns
    compiler = os.environ.get("CC")
    monkeypatch.setenv("CC", "/nonexistent/cc")  # a rebuild would now fail
    monkeypatch.setattr(ckernels.subprocess, "run", _version_only(ckernels.subprocess.run))
    assert load(winograd._SOURCE) is None  # another compiler is another key: not rebuilt...
    if compiler is None:
        monkeypatch.delenv("CC")
    else:
        monkeypatch.setenv("CC", compiler)
    assert load(winograd._SOURCE) is not None  # ...and the first library is loaded as is
    assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").iterdir()] == [stamp]


@needs_cc
def test_a_damaged_cache_file_is_built_again(monkeypatch, tmp_path):
    """A cache file that is not a library (never loaded in this process: a source of its own)
    is replaced by a fresh build."""
    source = tmp_path / "tiles_copy.c"
    source.write_text(Path(winograd._SOURCE).read_text() + "\n/* a copy */\n")
    load = _fresh_load(monkeypatch, tmp_path)
    _, target = ckernels.library_path(str(source), ckernels._compiler())
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared library")
    lib = load(str(source))
    assert lib is not None and hasattr(lib, "input_tiles_f32")
    assert target.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@needs_cc
def test_cc_may_carry_a_wrapper_command(monkeypatch, tmp_path):
    """``CC="env cc"`` (a launcher before the compiler, as ``ccache cc``) is split."""
    env = shutil.which("env")
    if env is None:
        pytest.skip("no env command")
    load = _fresh_load(monkeypatch, tmp_path, CC=f"{env} {ckernels._compiler()[0]}")
    assert load(winograd._SOURCE) is not None


def _version_only(run):
    def guarded(cmd, *args, **kwargs):
        if cmd[0] == "/nonexistent/cc":
            raise FileNotFoundError(cmd[0])
        assert "--version" in cmd, f"unexpected compile: {cmd}"
        return run(cmd, *args, **kwargs)
    return guarded


def test_switched_off_or_no_compiler_gives_none(monkeypatch, tmp_path):
    load = _fresh_load(monkeypatch, tmp_path, DATADISTILL_C_KERNELS="0")
    assert load(winograd._SOURCE) is None
    monkeypatch.setenv("DATADISTILL_C_KERNELS", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert load(winograd._SOURCE) is None
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())


@needs_cc
def test_a_source_that_does_not_compile_gives_none_and_leaves_nothing(monkeypatch, tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("/* -- per type -- */\nvoid f_SUFFIX(REAL x) { this is not C }\n")
    load = _fresh_load(monkeypatch, tmp_path / "cache")
    assert load(str(bad)) is None
    assert not any((tmp_path / "cache" / "kernels").iterdir())


def test_expand_makes_one_copy_per_type():
    src = "#define N 3\n/* -- per type -- */\nREAL twice_SUFFIX(REAL x) { return 2 * x; }\n"
    out = ckernels.expand(src)
    assert out.count("#define N 3") == 1
    assert "twice_f32" in out and "twice_f64" in out and "SUFFIX" not in out
    assert out.index("#define REAL float") < out.index("twice_f32") < out.index(
        "#define REAL double") < out.index("twice_f64")


# ------------------------------------------------------------------ Winograd tile transforms

# channel counts that are not multiples of the C code's block of 16, maps not multiples of 4
# (2, 32, 64, 8, 8): every product in C (N a multiple of 16 doubles)
TILE_SHAPES = [(2, 36, 40, 8, 8), (3, 33, 32, 9, 14), (1, 48, 17, 13, 7), (2, 32, 64, 8, 8)]


def _torch_form(monkeypatch):
    monkeypatch.setattr(winograd, "_native", lambda name, t: None)


@needs_cc
@pytest.mark.parametrize("n,cin,cout,h,w", TILE_SHAPES)
def test_compiled_transforms_equal_the_pytorch_form(n, cin, cout, h, w, monkeypatch):
    x = _rand(n, cin, h, w).contiguous(memory_format=CL)
    wt = _rand(cout, cin, 3, 3, seed=1)
    dy = _rand(n, cout, h, w, seed=2).contiguous(memory_format=CL)
    th, tw = winograd._tiles(h, w)
    at = winograd._mats(F64)[4]
    got = (winograd._input_tiles(x), winograd._grad_tiles(dy, th, tw, at),
           winograd.conv(x, wt), winograd.conv_input_grad(dy, wt),
           winograd.conv_weight_grad(dy, x))
    _torch_form(monkeypatch)
    want = (winograd._input_tiles(x), winograd._grad_tiles(dy, th, tw, at),
            winograd.conv(x, wt), winograd.conv_input_grad(dy, wt),
            winograd.conv_weight_grad(dy, x))
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=0, atol=1e-11)
    assert got[2].is_contiguous(memory_format=CL)


@needs_cc
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_convolutions_make_the_filter_transform_inside_the_products(dtype, monkeypatch):
    """Where the output channels are whole vector pairs the products build the filter's
    transform panel by panel (``filter_products``) and the weight gradient leaves the
    transform domain in one C pass (``filter_grad``, in the filter's own layout): the stored
    transform is never made, and the values equal the PyTorch form's (float64: 1e-11;
    float32: within its rounding of float64)."""
    x = _rand(3, 32, 12, 12, dtype=dtype).contiguous(memory_format=CL)
    dy = _rand(3, 64, 12, 12, seed=1, dtype=dtype).contiguous(memory_format=CL)
    wt = _rand(64, 32, 3, 3, seed=2, dtype=dtype)
    used = []
    real = winograd._native
    monkeypatch.setattr(winograd, "_native", lambda name, t: used.append(name) or real(name, t))
    monkeypatch.setattr(winograd, "_filter", lambda *a: pytest.fail("transform stored"))
    got = (winograd.conv(x, wt), winograd.conv_input_grad(dy, wt),
           winograd.conv_sum(x, wt, x, 2 * wt), winograd.conv_weight_grad(dy, x))
    assert {"filter_products", "filter_grad"} <= set(used)
    assert got[3].is_contiguous()
    wcl = wt.contiguous(memory_format=CL)  # a filter in the activations' layout
    assert torch.equal(winograd.conv(x, wcl), got[0])
    assert torch.equal(winograd.conv_input_grad(dy, wcl), got[1])
    monkeypatch.undo()
    _torch_form(monkeypatch)
    xd, dyd, wd = x.double(), dy.double(), wt.double()
    want = (winograd.conv(xd, wd), winograd.conv_input_grad(dyd, wd),
            winograd.conv_sum(xd, wd, xd, 2 * wd), winograd.conv_weight_grad(dyd, xd))
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape
        tol = 1e-11 if dtype == F64 else 2e-5 * e.abs().max().item()
        torch.testing.assert_close(g.double(), e, rtol=0, atol=tol)


@needs_cc
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("m,k,n", [(5, 7, 16), (37, 40, 48), (50, 128, 32), (12, 3, 64)])
def test_compiled_tile_products_equal_bmm(m, k, n, transpose_a):
    """The C products: a @ b (or a^T @ b) and the accumulating form equal torch.bmm in
    float64, for row counts that are not multiples of the register block (12 or 6 rows) or of
    the row block (36), and float32 stays within float rounding of float64."""
    a = _rand(3, k, m) if transpose_a else _rand(3, m, k)
    b, acc = _rand(3, k, n, seed=1), _rand(3, m, n, seed=2)
    lhs = a.transpose(1, 2) if transpose_a else a
    assert winograd._native("tile_products", b) is not None
    got = winograd._products(a, b, transpose_a)
    torch.testing.assert_close(got, torch.bmm(lhs, b), rtol=0, atol=1e-12)
    added = winograd._products(a, b, transpose_a, out=acc.clone())
    torch.testing.assert_close(added, acc + torch.bmm(lhs, b), rtol=0, atol=1e-12)
    if n % 32 == 0:
        got32 = winograd._products(a.float(), b.float(), transpose_a)
        torch.testing.assert_close(got32.double(), torch.bmm(lhs, b), rtol=0,
                                   atol=1e-5 * torch.bmm(lhs, b).abs().max().item())


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flag")
def test_tile_products_without_avx512_equal_bmm(monkeypatch, tmp_path):
    """The products' other register blocking (6 rows of two AVX2 vectors, what CPUs without
    AVX-512 build): a library built with AVX-512 switched off gives torch.bmm's values too."""
    monkeypatch.setattr(ckernels, "FLAGS", (*ckernels.FLAGS, "-mno-avx512f"))
    lib = _fresh_load(monkeypatch, tmp_path)(winograd._SOURCE)
    assert lib is not None
    fn = lib.tile_products_f64
    fn.argtypes, fn.restype = list(winograd._ARGS["tile_products"]), None
    m, k, n = 23, 17, 32
    for ta in (0, 1):
        a = _rand(2, k, m) if ta else _rand(2, m, k)
        b, acc = _rand(2, k, n, seed=1), _rand(2, m, n, seed=2)
        want = acc + torch.bmm(a.transpose(1, 2) if ta else a, b)
        fn(ta, 1, a.data_ptr(), b.data_ptr(), acc.data_ptr(), 2, m, k, n)
        torch.testing.assert_close(acc, want, rtol=0, atol=1e-12)


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flag")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_tile_transforms_give_the_same_bits_without_avx512(dtype, monkeypatch, tmp_path):
    """The transforms compute on 16-channel blocks as GCC vectors, which the compiler splits
    into whatever registers the CPU has: a library built with AVX-512 switched off writes the
    same bits, in float32 too, at a partial channel block and at cropped edge tiles; so do
    the products that make the filter's transform and the filter gradient's transform."""
    n, c, h, w = 2, 37, 9, 14
    th, tw = winograd._tiles(h, w)
    maps = torch.randn(n, h, w, c, dtype=dtype, generator=torch.Generator().manual_seed(0))
    tiles = torch.randn(36, n * th * tw, c, dtype=dtype,
                        generator=torch.Generator().manual_seed(1))
    suffix = "f64" if dtype == F64 else "f32"
    libs = [ckernels.load(winograd._SOURCE)]
    monkeypatch.setattr(ckernels, "FLAGS", (*ckernels.FLAGS, "-mno-avx512f"))
    libs.append(_fresh_load(monkeypatch, tmp_path)(winograd._SOURCE))
    assert None not in libs
    for name, src, shape in (("input_tiles", maps, tiles.shape),
                             ("grad_tiles", maps, tiles.shape),
                             ("output_tiles", tiles, maps.shape)):
        outs = []
        for lib in libs:
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = list(winograd._ARGS[name]), None
            out = torch.full(shape, float("nan"), dtype=dtype)
            fn(src.data_ptr(), out.data_ptr(), n, h, w, c)
            outs.append(out)
        assert not outs[0].isnan().any(), name
        assert torch.equal(outs[0], outs[1]), name
    g = winograd._mats(dtype)[1]  # the filter transform made inside the products, and back
    k, m, co = 21, 13, 64
    a = torch.randn(36, m, k, dtype=dtype, generator=torch.Generator().manual_seed(2))
    taps = torch.randn(9, k, co, dtype=dtype, generator=torch.Generator().manual_seed(3))
    du = torch.randn(36, co, k, dtype=dtype, generator=torch.Generator().manual_seed(4))
    outs = []
    for lib in libs:
        fp, fg = getattr(lib, f"filter_products_{suffix}"), getattr(lib, f"filter_grad_{suffix}")
        fp.argtypes, fp.restype = list(winograd._ARGS["filter_products"]), None
        fg.argtypes, fg.restype = list(winograd._ARGS["filter_grad"]), None
        out = torch.full((36, m, co), float("nan"), dtype=dtype)
        fp(0, a.data_ptr(), taps.data_ptr(), g.data_ptr(), out.data_ptr(), m, k, co)
        dw = torch.full((co, k, 3, 3), float("nan"), dtype=dtype)
        fg(du.data_ptr(), g.data_ptr(), dw.data_ptr(), co, k)
        outs.append((out, dw))
    for first, second in zip(*outs, strict=True):
        assert not first.isnan().any()
        assert torch.equal(first, second)


def test_tile_products_fall_back_where_c_does_not_apply(monkeypatch):
    """Column counts that are not whole vectors, strided operands and operands that autograd
    must see take torch.bmm, with the same values."""
    calls = []
    real = winograd._native
    monkeypatch.setattr(winograd, "_native", lambda name, t: calls.append(name) or real(name, t))
    a, b = _rand(2, 5, 8), _rand(2, 8, 17, seed=1)
    torch.testing.assert_close(winograd._products(a, b), torch.bmm(a, b), rtol=0, atol=1e-12)
    wide = _rand(2, 8, 32, seed=1)
    strided = _rand(2, 8, 5).transpose(1, 2)
    torch.testing.assert_close(winograd._products(strided, wide), torch.bmm(strided, wide),
                               rtol=0, atol=1e-12)
    tracked = a.clone().requires_grad_()
    out = winograd._products(tracked, wide)
    assert out.grad_fn is not None and calls == []


@needs_cc
@pytest.mark.parametrize("tracked", [False, True])
def test_a_sum_of_two_convolutions_is_one_transform(tracked, monkeypatch):
    """conv_sum adds the two convolutions' products before the output transform: the values
    of conv2d + conv2d, with one output transform (C form), and differentiable where a graph
    is recorded (PyTorch form)."""
    x1, x2 = (_rand(3, 32, 9, 14, seed=s).contiguous(memory_format=CL) for s in (0, 1))
    w1, w2 = _rand(40, 32, 3, 3, seed=2), _rand(40, 32, 3, 3, seed=3)
    calls = []
    real = winograd._native
    monkeypatch.setattr(winograd, "_native", lambda name, t: calls.append(name) or real(name, t))
    if tracked:
        x1, w2 = x1.requires_grad_(), w2.requires_grad_()
    got = winograd.conv_sum(x1, w1, x2, w2)
    f = torch.nn.functional.conv2d
    want = f(x1, w1, padding=1) + f(x2, w2, padding=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
    assert got.is_contiguous(memory_format=CL)
    if tracked:
        v = _rand(*want.shape, seed=4)
        for g, e in zip(torch.autograd.grad((got * v).sum(), (x1, w2)),
                        torch.autograd.grad((want * v).sum(), (x1, w2)), strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-10)
    else:
        assert calls.count("output_tiles") == 1 and calls.count("input_tiles") == 2


@needs_cc
def test_kernel_outputs_are_not_views(monkeypatch):
    """The C kernels' maps come back as channels_last tensors of their own, not permuted
    views of NHWC ones: a view keeps its base alive, and autograd then adds a second
    gradient into a new map instead of into the first in place."""
    x = _rand(2, 32, 8, 8).contiguous(memory_format=CL)
    wt = _rand(32, 32, 3, 3, seed=1)
    y = winograd.conv(x, wt)
    p, _, _, s, t = norm_passes.forward(x, torch.ones(32, dtype=F64),
                                        torch.zeros(32, dtype=F64), 1e-5, True)
    for out in (y, p):
        assert out._base is None and out.is_contiguous(memory_format=CL)
    maps = norm_passes.Maps(dp=p, z=x, s=s, t=t, pool=True)
    for mode in (0, 1):
        out = norm_passes.run_pass(mode, maps, cd=torch.ones(2, 32, 1, 1, dtype=F64))
        assert out._base is None and out.is_contiguous(memory_format=CL)


def test_transforms_stay_differentiable_where_a_graph_is_recorded():
    """Under grad mode with inputs that require grad, the PyTorch form runs (the C form
    writes through raw pointers), so autograd sees the convolution."""
    x = _rand(2, 32, 8, 8).contiguous(memory_format=CL).requires_grad_()
    wt = _rand(32, 32, 3, 3, seed=1).requires_grad_()
    y = winograd.conv(x, wt)
    assert y.grad_fn is not None
    v = _rand(*y.shape, seed=3)
    gx, gw = torch.autograd.grad((y * v).sum(), (x, wt))
    ref_x, ref_w = torch.autograd.grad(
        (torch.nn.functional.conv2d(x, wt, padding=1) * v).sum(), (x, wt))
    torch.testing.assert_close(gx, ref_x, rtol=0, atol=1e-11)
    torch.testing.assert_close(gw, ref_w, rtol=0, atol=1e-10)


# ------------------------------------------------------------ norm -> ReLU -> pool passes


def _second_order(z, w, b, pool, v, lz, lw):
    """First-order gradients and the gradients of a scalar of them (the double backward),
    w.r.t. z, w, b and the incoming gradient."""
    z, w, b = (t.detach().requires_grad_() for t in (z, w, b))
    p = norm_act_pool(z, w, b, 1e-5, pool, CL)
    g = v.clone().requires_grad_()
    gz, gw, gb = torch.autograd.grad(p, (z, w, b), g, create_graph=True)
    scalar = (gz * lz).sum() + (gw * lw).sum() + (gb * gb).sum()
    return (p, gz, gw, gb, *torch.autograd.grad(scalar, (z, w, g)))


@needs_cc
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("channels", [20, 32])
def test_compiled_block_passes_equal_the_pytorch_ops(pool, channels, monkeypatch):
    """Forward, backward and double backward of the block with its C passes against the
    PyTorch ops, in float64."""
    z = _rand(3, channels, 6, 8).contiguous(memory_format=CL)
    w, b = _rand(channels, seed=1).abs() + 0.5, _rand(channels, seed=2)
    v = _rand(3, channels, *((3, 4) if pool else (6, 8)), seed=3).contiguous(memory_format=CL)
    lz, lw = _rand(*z.shape, seed=4).contiguous(memory_format=CL), _rand(channels, seed=5)
    calls = []
    real, real_forward = norm_passes.run_pass, norm_passes.forward
    monkeypatch.setattr(norm_passes, "run_pass",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(norm_passes, "forward",
                        lambda *a: calls.append("forward") or real_forward(*a))
    got = _second_order(z, w, b, pool, v, lz, lw)
    assert set(calls) == {0, 1, 2, "forward"}  # the forward and every mode of the pass ran
    monkeypatch.setattr(convnet_ops, "compiled_passes", lambda *a: False)
    want = _second_order(z, w, b, pool, v, lz, lw)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@needs_cc
@pytest.mark.parametrize("pool", [True, False])
def test_compiled_block_keeps_no_relu_map(pool):
    """The C forward writes the block's output alone: relu(s * z + t) itself is not kept (the
    passes remake its mask from z), and the output is bit for bit the PyTorch ops' on the
    same scale and shift (float32, one rounding per operation, each 2x2 window summed as
    (row pair + row pair))."""
    z = _rand(3, 32, 8, 6, dtype=torch.float32).contiguous(memory_format=CL)
    w = _rand(32, seed=1, dtype=torch.float32).abs() + 0.5
    b = _rand(32, seed=2, dtype=torch.float32)
    p, mu, rstd, s, t = norm_passes.forward(z, w, b, 1e-5, pool)
    torch.testing.assert_close(s, w.view(1, -1) * rstd, rtol=0, atol=0)
    torch.testing.assert_close(t, b.view(1, -1) - mu * s, rtol=0, atol=0)
    r = (z * s.view(3, 32, 1, 1) + t.view(3, 32, 1, 1)).relu()
    if pool:
        r = ((r[..., ::2, ::2] + r[..., ::2, 1::2]) + (r[..., 1::2, ::2] + r[..., 1::2, 1::2])) \
            * 0.25
    assert torch.equal(p, r)
    saved = []
    zz = z.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        norm_act_pool(zz, w, b, 1e-5, pool, CL)
    assert [tuple(x.shape) for x in saved if x.dim() == 4] == [tuple(z.shape)]  # z alone


@needs_cc
def test_block_remakes_its_relu_mask_where_a_backward_falls_back(monkeypatch):
    """A forward that ran as C passes keeps (s, t), not relu(y): where its backward and
    double backward then take the PyTorch ops, relu(s * z + t) is remade and the values are
    those of the C passes (float64)."""
    z = _rand(3, 32, 6, 8).contiguous(memory_format=CL)
    w, b = _rand(32, seed=1).abs() + 0.5, _rand(32, seed=2)
    v = _rand(3, 32, 3, 4, seed=3).contiguous(memory_format=CL)
    lz, lw = _rand(*z.shape, seed=4).contiguous(memory_format=CL), _rand(32, seed=5)
    want = _second_order(z, w, b, True, v, lz, lw)
    real = convnet_ops.compiled_passes
    monkeypatch.setattr(convnet_ops, "compiled_passes",
                        lambda pool, z, *maps: real(pool, z, *maps) if not maps else False)
    got = _second_order(z, w, b, True, v, lz, lw)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@needs_cc
def test_a_pass_reads_every_form_of_coefficient_alike():
    """A coefficient given per instance (as the formulas make it, used without a copy), per
    channel, as ONE, as None (zero), as a strided view or in another dtype: the pass gives
    what it gives for the same values spelled out densely, and again on a second call (the
    cached constants are only read)."""
    n, c = 2, 16
    z = _rand(n, c, 4, 6).contiguous(memory_format=CL)
    maps = norm_passes.Maps(dp=_rand(n, c, 2, 3, seed=1).contiguous(memory_format=CL), z=z,
                            s=_rand(n, c, seed=2), t=_rand(n, c, seed=8), pool=True)
    lz = _rand(n, c, 4, 6, seed=3).contiguous(memory_format=CL)
    per_instance = _rand(n, c, 1, 1, seed=4)
    per_channel = _rand(1, c, 1, 1, seed=5)
    strided = _rand(n, 3, c, seed=6)[:, 1].view(n, c, 1, 1)
    single = _rand(n, c, 1, 1, seed=7).float()
    dense = [k.double().expand(n, c, 1, 1).contiguous()
             for k in (per_instance, per_channel, strided, single)]
    with torch.no_grad():
        for mode in (0, 1, 2):
            for _ in range(2):
                got = norm_passes.run_pass(mode, maps, l=lz, cd=per_instance, cl=per_channel,
                                           cz=strided, c1=single)
                want = norm_passes.run_pass(mode, maps, l=lz, cd=dense[0], cl=dense[1],
                                            cz=dense[2], c1=dense[3])
                torch.testing.assert_close(got, want, rtol=0, atol=0)
                ones = torch.ones(n, c, 1, 1, dtype=F64)
                zeros = torch.zeros(n, c, 1, 1, dtype=F64)
                got = norm_passes.run_pass(mode, maps, l=lz, cd=norm_passes.ONE, cl=None)
                want = norm_passes.run_pass(mode, maps, l=lz, cd=ones, cl=zeros, cz=zeros,
                                            c1=zeros)
                torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 compiler flag")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_block_passes_give_the_same_bits_however_the_library_is_built(dtype, monkeypatch,
                                                                       tmp_path):
    """``-fno-trapping-math`` lets the compiler vectorise the passes' ReLU mask as a select
    where it kept a branch per element (CPUs without AVX-512): it changes no value. The
    passes built without it, and without AVX-512, write the same bits as the library in use
    (every mode, pooled and not; the mask off at about half the pixels, exact zeros and
    negative zeros in the gradient)."""
    n, c, h, w = 2, 37, 6, 8
    z = _rand(n, c, h, w, dtype=dtype).contiguous(memory_format=CL)
    maps = {}
    for pool in (True, False):
        dp = _rand(n, c, *((h // 2, w // 2) if pool else (h, w)), seed=1, dtype=dtype)
        dp.view(-1)[::7] = 0.0
        dp.view(-1)[3::7] = -0.0
        maps[pool] = norm_passes.Maps(dp=dp.contiguous(memory_format=CL), z=z,
                                      s=_rand(n, c, seed=2, dtype=dtype),
                                      t=_rand(n, c, seed=3, dtype=dtype), pool=pool)
    lz = _rand(n, c, h, w, seed=4, dtype=dtype).contiguous(memory_format=CL)
    coefs = [_rand(n, c, 1, 1, seed=5 + i, dtype=dtype) for i in range(4)]

    def passes():
        with torch.no_grad():
            return [norm_passes.run_pass(mode, maps[pool], lz, *coefs)
                    for mode in (0, 1, 2) for pool in (True, False)]

    want = passes()
    for pool in (True, False):  # mode 0 as PyTorch ops, one rounding per operation
        m = maps[pool]
        dp = m.dp
        if pool:
            dp = dp.repeat_interleave(2, 2).repeat_interleave(2, 3) * 0.25
        on = z * m.s.view(n, c, 1, 1) + m.t.view(n, c, 1, 1) > 0
        dy = torch.where(on, dp, 0.0 * dp)
        v = coefs[0] * dy + coefs[1] * lz + coefs[2] * z + coefs[3]
        assert torch.equal(want[0 if pool else 1], v)
    builds = {"without -fno-trapping-math": tuple(f for f in ckernels.FLAGS
                                                  if f != "-fno-trapping-math"),
              "without AVX-512": (*ckernels.FLAGS, "-mno-avx512f")}
    assert len(builds["without -fno-trapping-math"]) == len(ckernels.FLAGS) - 1
    for i, (label, flags) in enumerate(builds.items()):
        monkeypatch.setattr(ckernels, "FLAGS", flags)
        lib = _fresh_load(monkeypatch, tmp_path / str(i))(norm_passes.SOURCE)
        assert lib is not None

        def kernel(name, dt, lib=lib):
            fn = getattr(lib, f"{name}_{'f64' if dt == F64 else 'f32'}")
            fn.argtypes, fn.restype = list(norm_passes._ARGS[name]), None
            return fn

        monkeypatch.setattr(norm_passes, "kernel", kernel)
        for got, e in zip(passes(), want, strict=True):
            for g1, e1 in zip(got if isinstance(got, tuple) else (got,),
                              e if isinstance(e, tuple) else (e,), strict=True):
                assert torch.equal(g1, e1), label
                assert torch.equal(g1.signbit(), e1.signbit()), label


def _gcc_vector_report(source: str, tmp_path: Path, extra: tuple[str, ...]) -> list[str]:
    """GCC's report of the loops it left scalar in the expanded ``source`` built with the
    package's flags (and ``extra``), as lines of that expanded file."""
    src = tmp_path / "kernels.c"
    src.write_text(ckernels.expand(Path(source).read_text()))
    done = subprocess.run([*ckernels._compiler(), *ckernels.FLAGS, *extra,
                           "-fopt-info-vec-missed", str(src), "-o", str(tmp_path / "k.so")],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stderr.splitlines()


def _is_gcc() -> bool:
    if not HAS_CC:
        return False
    out = subprocess.run([*ckernels._compiler(), "--version"], capture_output=True, text=True)
    return "Free Software Foundation" in out.stdout


@pytest.mark.skipif(not _is_gcc() or platform.machine() not in ("x86_64", "AMD64"),
                    reason="GCC's vectoriser report, x86 flags")
@pytest.mark.parametrize("extra", [(), ("-mno-avx512f",)], ids=["native", "without-avx512"])
def test_the_block_passes_vectorise(extra, tmp_path):
    """Every per-channel loop of the norm passes is vectorised, also where the CPU has no
    AVX-512 (AVX2): a loop left with a branch per element (the ReLU mask as a branch, which
    only AVX-512's masked arithmetic vectorises under GCC's default trapping math) ran the
    student's norm backward 8-10x slower on an AMD EPYC Zen 3."""
    lines = _gcc_vector_report(norm_passes.SOURCE, tmp_path, extra)
    text = (tmp_path / "kernels.c").read_text().splitlines()
    heads = [i + 1 for i, ln in enumerate(text) if ln.startswith("void nap_pass_")]
    assert len(heads) == 2  # float and double
    inner = {i + 1 for h in heads for i in range(h, h + 60)
             if "for (long k = 0; k < c; k++) {" in text[i]}
    assert len(inner) == 6  # three modes per type
    left = [ln for ln in lines if "control flow in loop" in ln
            and int(ln.split(":")[1]) in inner]
    assert not left, left


@needs_cc
def test_compiled_block_passes_keep_float32_close(monkeypatch):
    z = _rand(4, 32, 8, 8, dtype=torch.float32).contiguous(memory_format=CL)
    w, b = _rand(32, seed=1, dtype=torch.float32).abs() + 0.5, _rand(32, seed=2,
                                                                     dtype=torch.float32)
    v = _rand(4, 32, 4, 4, seed=3, dtype=torch.float32).contiguous(memory_format=CL)
    lz = _rand(*z.shape, seed=4, dtype=torch.float32).contiguous(memory_format=CL)
    lw = _rand(32, seed=5, dtype=torch.float32)
    want = _second_order(z.double(), w.double(), b.double(), True, v.double(), lz.double(),
                         lw.double())
    got = _second_order(z, w, b, True, v, lz, lw)
    for g, e in zip(got, want, strict=True):
        assert (g.double() - e).abs().max() <= 1e-5 * e.abs().max()


def test_block_passes_fall_back_where_c_does_not_apply():
    z = _rand(2, 4, 5, 6).contiguous(memory_format=CL)  # odd height with pooling
    a, dp = z.relu(), _rand(2, 4, 2, 3).contiguous(memory_format=CL)
    assert not norm_passes.compiled_passes(True, z, a, dp)
    z2 = _rand(2, 4, 6, 6)  # contiguous, not channels_last
    assert not norm_passes.compiled_passes(True, z2, z2.relu(), _rand(2, 4, 3, 3))
    with torch.enable_grad():  # a graph is being recorded
        z3 = _rand(2, 4, 6, 6).contiguous(memory_format=CL)
        dp3 = _rand(2, 4, 3, 3).contiguous(memory_format=CL)
        assert not norm_passes.compiled_passes(True, z3, z3.relu(), dp3)
    if HAS_CC:
        with torch.no_grad():
            assert norm_passes.compiled_passes(True, z3, z3.relu(), dp3)


def test_c_forms_serve_one_thread_only(monkeypatch):
    """With more than one torch thread the PyTorch forms run: they spread over the threads,
    the C forms do not."""
    z = _rand(2, 4, 6, 6).contiguous(memory_format=CL)
    dp = _rand(2, 4, 3, 3).contiguous(memory_format=CL)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.no_grad():
        assert not norm_passes.compiled_passes(True, z, z.relu(), dp)
        assert winograd._native("input_tiles", z) is None
