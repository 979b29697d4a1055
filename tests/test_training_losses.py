"""Eq. 1, 3, 4, Mixup and CutMix on hand-computed tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustbench_seg.training import losses, mixing

LOG2, LOG4 = math.log(2.0), math.log(4.0)


def logits_for(probs_per_pixel: list[list[float]], h: int = 1) -> torch.Tensor:
    """(1, C, h, W) logits = log(p) for the given per-pixel class probabilities."""
    p = torch.tensor(probs_per_pixel, dtype=torch.float64).T  # C x W
    return p.log().unsqueeze(1).expand(-1, h, -1).unsqueeze(0).float().contiguous()


P = [0.5, 0.25, 0.25]  # CE = log 2 for class 0, log 4 for classes 1 and 2


def test_eq1_blend_per_sample_delta():
    x1 = torch.tensor([[[[10.0, 20.0]]], [[[0.0, 100.0]]]])
    x2 = torch.tensor([[[[110.0, 220.0]]], [[[200.0, 0.0]]]])
    out = mixing.blend(x1, x2, torch.tensor([0.75, 0.9]))
    assert torch.allclose(out, torch.tensor([[[[35.0, 70.0]]], [[[20.0, 90.0]]]]))


def test_per_sample_ce_ignores_void_per_sample():
    logits = torch.cat([logits_for([P, P]), logits_for([P, P])])  # (2, 3, 1, 2)
    target = torch.tensor([[[0, 255]], [[1, 2]]])
    ce = losses.per_sample_ce(logits, target)
    assert torch.allclose(ce, torch.tensor([LOG2, LOG4]), atol=1e-6)
    # a sample whose pixels are all void contributes 0, not nan
    ce_void = losses.per_sample_ce(logits, torch.full((2, 1, 2), 255))
    assert torch.equal(ce_void, torch.zeros(2))


def test_per_sample_ce_upsamples_logits_to_label_size():
    logits = logits_for([P]).expand(1, 3, 1, 1)  # 1x1 logits, constant
    ce = losses.per_sample_ce(logits.contiguous(), torch.zeros(1, 4, 4, dtype=torch.long))
    assert torch.allclose(ce, torch.tensor([LOG2]), atol=1e-6)


def test_eq3_binding_loss_hand_computed():
    # sample 0: l_fb = log2 (G1 = 0), l_t = log4 (G1 = 0 under Q), l_p = log2 (G2 = 0)
    # sample 1: l_fb = log4, l_t = log2, l_p = log4 (G2 = 1 under P)
    Q = [0.25, 0.5, 0.25]
    out = {
        "binding": torch.cat([logits_for([P]), logits_for([P])]),
        "dominant": torch.cat([logits_for([Q]), logits_for([Q])]),
        "phantom": torch.cat([logits_for([P]), logits_for([P])]),
    }
    out["out"] = out["binding"]
    g1 = torch.tensor([[[0]], [[1]]])  # P: sample0 log2, sample1 log4; Q: sample0 log4, sample1 log2
    g2 = torch.tensor([[[0]], [[1]]])
    delta = torch.tensor([0.8, 0.7])
    loss, parts = losses.binding_loss(out, g1, g2, delta)
    s0 = LOG2 + 0.8 * LOG4 + 0.2 * LOG2
    s1 = LOG4 + 0.7 * LOG2 + 0.3 * LOG4
    assert loss.item() == pytest.approx((s0 + s1) / 2, rel=1e-6)
    assert parts["l_fb"].item() == pytest.approx((LOG2 + LOG4) / 2, rel=1e-6)
    # without the FBH (Table 5c) the CE(S_fb, G1) term is dropped
    no_fbh = {k: v for k, v in out.items() if k != "binding"}
    loss2, parts2 = losses.binding_loss(no_fbh, g1, g2, delta)
    assert loss2.item() == pytest.approx((0.8 * LOG4 + 0.2 * LOG2 + 0.7 * LOG2 + 0.3 * LOG4) / 2, rel=1e-6)
    assert "l_fb" not in parts2


def test_eq3_void_in_phantom_label_only_affects_its_term():
    out = {"binding": logits_for([P, P]), "dominant": logits_for([P, P]), "phantom": logits_for([P, P])}
    g1 = torch.tensor([[[0, 0]]])
    g2 = torch.full((1, 1, 2), 255)  # a standard image's phantom: all void
    loss, _ = losses.binding_loss(out, g1, g2, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(2 * LOG2, rel=1e-6)


def test_eq4_denoise_loss_hand_computed():
    dominant = logits_for([P, P])
    phantom = torch.tensor([[[[-1.0, 2.0]], [[3.0, -4.0]], [[0.5, -0.5]]]])  # sum of ReLU = 2 + 3 + 0.5 = 5.5
    loss, parts = losses.denoise_loss({"dominant": dominant, "phantom": phantom}, torch.tensor([[[0, 1]]]))
    expected = (LOG2 + LOG4) / 2 + math.log(5.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["l_ppa"].item() == pytest.approx(math.log(5.5), rel=1e-6)


def test_eq4_guard_against_zero_phantom_sum():
    phantom = -torch.ones(2, 3, 1, 2)  # every ReLU is 0
    ppa = losses.phantom_penalty(phantom)
    assert torch.isfinite(ppa).all()
    assert torch.allclose(ppa, torch.full((2,), math.log(1e-6)))
    # and its gradient is finite (zero) there
    p = phantom.clone().requires_grad_(True)
    losses.phantom_penalty(p).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_mixup_labels_and_loss_with_void():
    x = torch.tensor([[[[0.0, 0.0]]], [[[100.0, 200.0]]]])
    y = torch.tensor([[[0, 255]], [[1, 2]]])
    lam = np.array([0.6, 0.9])
    xm, y1, y2, lam_t = mixing.mixup(x, y, lam)
    # partner of sample 0 is sample 1 and vice versa
    assert torch.allclose(xm[0], 0.6 * x[0] + 0.4 * x[1])
    assert torch.allclose(xm[1], 0.9 * x[1] + 0.1 * x[0])
    assert torch.equal(y1, y) and torch.equal(y2, y[[1, 0]])
    logits = torch.cat([logits_for([P, P]), logits_for([P, P])])
    loss = losses.mixup_loss(logits, y1, y2, lam_t)
    # sample 0: 0.6 * CE(y=[0, void]) + 0.4 * CE(y=[1, 2]) = 0.6 log2 + 0.4 log4
    # sample 1: 0.9 * CE([1, 2]) + 0.1 * CE([0, void]) = 0.9 log4 + 0.1 log2
    expected = ((0.6 * LOG2 + 0.4 * LOG4) + (0.9 * LOG4 + 0.1 * LOG2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cutmix_pastes_image_and_label_pixels_and_corrects_lambda():
    rng = np.random.default_rng(3)
    n, h, w = 4, 12, 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    y = torch.arange(n).view(n, 1, 1).expand(n, h, w).contiguous()
    y[1, :6, :] = 255  # void in a partner's label travels with its pixels
    lam = mixing.sample_lambda(1.0, n, rng)
    boxes, lam_adj = mixing.cutmix_boxes(lam, h, w, rng)
    xm, ym = mixing.cutmix(x, y, boxes)
    for i in range(n):
        j = (i + 1) % n
        y0, y1, x0, x1 = boxes[i]
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(xm[i][:, inside], x[j][:, inside]) and torch.equal(xm[i][:, ~inside], x[i][:, ~inside])
        assert torch.equal(ym[i][inside], y[j][inside]) and torch.equal(ym[i][~inside], y[i][~inside])
        # lambda after clipping = share of pixels still from image i
        assert lam_adj[i] == pytest.approx(1 - inside.float().mean().item())
        assert lam_adj[i] >= lam[i] - 1e-12  # clipping only shrinks the box


def test_cutmix_box_area_before_clipping():
    rng = np.random.default_rng(0)
    lam = np.array([0.75])
    boxes, lam_adj = mixing.cutmix_boxes(lam, 100, 100, rng)
    # cut ratio sqrt(0.25) = 0.5: a 50 x 50 box (before clipping) centred anywhere
    y0, y1, x0, x1 = boxes[0]
    assert y1 - y0 <= 50 and x1 - x0 <= 50
    assert lam_adj[0] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1e4)
