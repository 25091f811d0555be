"""Tests of differentiable Siamese augmentation (DSA)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from datadistill.data.augment import DSA, FAMILIES, AugDraw, DSAParams
from datadistill.errors import CompatibilityError, ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_images(family):
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    out = DSA(family)(x, generator=gen(1))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_a_draw_is_identical_and_siamese(family):
    dsa = DSA(family)
    draw = dsa.sample(5, (16, 16), generator=gen(3))
    assert draw.family == family
    assert all(v.device.type == "cpu" and v.shape[0] == 5 for v in draw.params.values())
    x, other = torch.randn(5, 3, 16, 16), torch.randn(5, 3, 16, 16)
    other[:2] = x[:2]
    out = dsa.apply(x, draw)
    assert torch.equal(out, dsa(x, generator=gen(3)))  # the draw a call makes, replayed
    assert not torch.equal(out, x)  # the draw does transform the batch
    replayed = dsa.apply(other, draw)  # siamese: the same per-sample transform on another batch
    assert torch.equal(replayed[:2], out[:2]) and not torch.equal(replayed[2:], out[2:])


def test_same_seed_same_result_different_seed_different_result():
    dsa, x = DSA(), torch.randn(8, 3, 32, 32)
    assert torch.equal(dsa(x, generator=gen(7)), dsa(x, generator=gen(7)))
    outs = [dsa(x, generator=gen(s)) for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_parameters_stay_in_range_and_every_family_is_drawn():
    dsa, p, g = DSA(), DSAParams(), gen(0)
    counts: Counter[str] = Counter()
    for _ in range(300):
        draw = dsa.sample(32, (32, 32), generator=g)
        counts[draw.family] += 1
        q = draw.params
        if draw.family == "color":
            assert q["brightness"].min() >= -0.5 and q["brightness"].max() < 0.5
            assert q["saturation"].min() >= 0 and q["saturation"].max() < p.saturation
            assert q["contrast"].min() >= 0.5 and q["contrast"].max() < 1.5
        elif draw.family == "crop":
            for k in ("dy", "dx"):
                assert q[k].dtype == torch.int64 and q[k].abs().max() <= 4
        elif draw.family == "cutout":
            for k in ("cy", "cx"):
                assert q[k].dtype == torch.int64 and 0 <= q[k].min() and q[k].max() <= 32
        elif draw.family == "flip":
            assert q["flip"].dtype == torch.bool
        elif draw.family == "scale":
            for k in ("sx", "sy"):
                assert q[k].min() >= 1 / 1.2 - 1e-6 and q[k].max() <= 1.2
        elif draw.family == "rotate":
            assert q["angle"].abs().max() <= 15.0
    assert set(counts) == set(FAMILIES)
    assert min(counts.values()) > 20  # roughly uniform: 50 expected each


def test_crop_range_scales_with_image_size():
    draw = DSA("crop").sample(4000, (64, 64), generator=gen(0))
    assert draw.params["dy"].min() == -8 and draw.params["dy"].max() == 8


def test_flip_flips_exactly_the_chosen_samples():
    dsa, x = DSA("flip"), torch.randn(64, 3, 8, 8)
    draw = dsa.sample(64, (8, 8), generator=gen(2))
    chosen = draw.params["flip"]
    assert 0 < chosen.sum() < 64
    out = dsa.apply(x, draw)
    assert torch.equal(out[chosen], x[chosen].flip(3))
    assert torch.equal(out[~chosen], x[~chosen])


def test_crop_is_an_integer_shift_with_zero_fill():
    x = torch.randn(2, 3, 10, 10)
    draw = AugDraw("crop", {"dy": torch.tensor([2, -1]), "dx": torch.tensor([-3, 0])})
    out = DSA("crop").apply(x, draw)
    expected = torch.zeros_like(x)
    expected[0, :, :8, 3:] = x[0, :, 2:, :7]  # output (r, c) reads input (r + 2, c - 3)
    expected[1, :, 1:, :] = x[1, :, :9, :]  # output (r, c) reads input (r - 1, c)
    assert torch.equal(out, expected)


def test_cutout_zeroes_a_square_of_the_right_size():
    dsa, x = DSA("cutout"), torch.ones(3, 1, 32, 32)
    draw = AugDraw("cutout", {"cy": torch.tensor([16, 0, 32]), "cx": torch.tensor([10, 0, 5])})
    out = dsa.apply(x, draw)
    zeros = out == 0
    assert zeros[0].sum() == 16 * 16  # side int(0.5 * 32 + 0.5) = 16
    assert zeros[0, 0, 8:24, 2:18].all()
    assert zeros[1].sum() == 8 * 8 and zeros[1, 0, :8, :8].all()  # clipped at the corner
    assert zeros[2].sum() == 8 * 13 and zeros[2, 0, 24:, :13].all()  # clipped bottom and left


def test_color_equals_the_written_formula():
    x = torch.randn(3, 3, 8, 8)
    b, s, c = (
        torch.tensor([0.2, -0.4, 0.0]),
        torch.tensor([0.5, 1.5, 1.0]),
        torch.tensor([0.7, 1.2, 1.0]),
    )
    out = DSA("color").apply(x, AugDraw("color", {"brightness": b, "saturation": s,
                                                  "contrast": c}))  # fmt: skip
    e = x + b.view(-1, 1, 1, 1)
    m = e.mean(dim=1, keepdim=True)
    e = (e - m) * s.view(-1, 1, 1, 1) + m
    m = e.mean(dim=(1, 2, 3), keepdim=True)
    e = (e - m) * c.view(-1, 1, 1, 1) + m
    torch.testing.assert_close(out, e)
    # factors of 1 and no shift leave the images unchanged
    ident = {"brightness": torch.zeros(3), "saturation": torch.ones(3), "contrast": torch.ones(3)}
    torch.testing.assert_close(DSA("color").apply(x, AugDraw("color", ident)), x)


def test_scale_and_rotate_with_identity_parameters_return_the_input():
    x = torch.randn(4, 3, 16, 12, dtype=torch.float64)  # maths: float64, not the CPU's kernels
    ones, zeros = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(DSA("scale").apply(x, AugDraw("scale", {"sx": ones, "sy": ones})),
                               x, atol=1e-12, rtol=1e-12)  # fmt: skip
    torch.testing.assert_close(DSA("rotate").apply(x, AugDraw("rotate", {"angle": zeros})), x,
                               atol=1e-12, rtol=1e-12)  # fmt: skip


def test_rotate_by_90_degrees_is_rot90():
    # With align_corners=True pixel centres map onto pixel centres, so 90 degrees is exact.
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    out = DSA("rotate").apply(x, AugDraw("rotate", {"angle": torch.full((2,), 90.0)}))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-12, rtol=1e-12)


def test_scale_zooms_out_with_zero_padding():
    x = torch.ones(1, 1, 9, 9)
    draw = AugDraw("scale", {"sx": torch.tensor([2.0]), "sy": torch.tensor([2.0])})
    out = DSA("scale").apply(x, draw)
    # sampling grid spans twice the image: the centre keeps content, the rim falls outside
    assert out[0, 0, 4, 4] == 1 and out[0, 0, 0, 0] == 0


@pytest.mark.parametrize("strategy", ["", "none", "None", None])
def test_empty_strategy_is_the_identity(strategy):
    dsa, x = DSA(strategy), torch.randn(2, 3, 8, 8)
    assert dsa.is_identity
    draw = dsa.sample(2, 8, generator=gen(0))
    assert draw.family == "none" and draw.params == {}
    assert dsa(x, generator=gen(0)) is x


def test_bad_strategy_and_params_are_config_errors():
    with pytest.raises(ConfigError, match="valid families are"):
        DSA("color_blur")
    with pytest.raises(ConfigError, match="prob_flip"):
        DSAParams(prob_flip=1.5)
    with pytest.raises(ConfigError, match="ratio_scale"):
        DSAParams(ratio_scale=0.5)


def test_draw_for_another_batch_size_is_rejected():
    dsa = DSA("flip")
    draw = dsa.sample(4, 8, generator=gen(0))
    with pytest.raises(CompatibilityError, match="batch has 5"):
        dsa.apply(torch.zeros(5, 3, 8, 8), draw)


def test_no_flip_strategy_for_digits_never_flips():
    dsa = DSA("color_crop_cutout_scale_rotate")
    assert "flip" not in dsa.families
    assert {dsa.sample(2, 8, generator=gen(s)).family for s in range(50)} <= set(dsa.families)


def test_angle_is_in_degrees():
    draw = DSA("rotate", DSAParams(ratio_rotate=90.0)).sample(2000, 8, generator=gen(0))
    assert math.isclose(float(draw.params["angle"].abs().max()), 90.0, rel_tol=0.01)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_same_draw_on_cpu_and_cuda(family):
    dsa, x = DSA(family), torch.randn(8, 3, 32, 32)
    draw = dsa.sample(8, (32, 32), generator=gen(5))
    cpu = dsa.apply(x, draw)
    cuda = dsa.apply(x.cuda(), draw).cpu()
    torch.testing.assert_close(cuda, cpu, atol=1e-5, rtol=1e-5)
    # sampling inside __call__ stays on the CPU generator, so both devices draw the same
    torch.testing.assert_close(
        DSA()(x.cuda(), generator=gen(9)).cpu(), DSA()(x, generator=gen(9)), atol=1e-5, rtol=1e-5
    )
