"""Per-pixel losses of the per-image attacks (PGD, SegPGD, CosPGD, SEA's three APGD losses).

Every function takes float logits ``(N, C, H, W)`` and a ground truth ``(N, H, W)`` int64 in which
``IGNORE_INDEX`` (255) marks void pixels, and returns a per-pixel loss ``(N, H, W)`` that is exactly
0 on void pixels (void never enters a loss or its gradient). Weights that depend on the current
prediction (correctly classified or not, cosine similarity) are detached, as in the papers.
:func:`image_mean` reduces a per-pixel loss to one value per image: the sum over the image's pixels
divided by ``H * W`` (void pixels count as 0, as in SEA's ``pixel_to_img_loss``); attacks maximise the
sum of these per-image values, so an image's gradient does not depend on its batch neighbours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX

LN2 = math.log(2.0)


def valid_mask(target: torch.Tensor) -> torch.Tensor:
    """True on non-void pixels."""
    return target != IGNORE_INDEX


def _safe_target(target: torch.Tensor) -> torch.Tensor:
    """Void pixels mapped to class 0 so gathers and one-hots are defined (their loss is zeroed)."""
    return torch.where(target == IGNORE_INDEX, torch.zeros_like(target), target)


def ce_pixels(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy, 0 on void."""
    return F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)


def correct_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """True where the argmax prediction equals the (non-void) ground truth."""
    return logits.detach().argmax(1) == target


def segpgd_lambda(iteration: int, iterations: int) -> float:
    """SegPGD's weight of misclassified pixels at step ``iteration`` (0-based, 0..T-1): ``t / (2T)``.

    The paper writes ``(t - 1) / (2T)`` with 1-based t; the ``cospgd`` package's ``segpgd_scale`` is
    called with the 0-based loop index and computes ``iteration / (2 * iterations)``: the same
    numbers (0 at the first step, ``(T - 1) / (2T)`` at the last)."""
    return iteration / (2 * iterations)


def segpgd_pixels(logits: torch.Tensor, target: torch.Tensor, iteration: int, iterations: int) -> torch.Tensor:
    """CE weighted ``1 - lambda`` on correctly classified pixels and ``lambda`` on misclassified ones."""
    lam = segpgd_lambda(iteration, iterations)
    ce = ce_pixels(logits, target)
    return torch.where(correct_mask(logits, target), (1 - lam) * ce, lam * ce)


COSPGD_ACTIVATIONS = ("softmax", "sigmoid")


def cospgd_weight(logits: torch.Tensor, target: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Cosine similarity between ``activation(logits)`` and the one-hot label, per pixel, detached.

    ``softmax`` is the official ``cospgd`` package's choice, ``sigmoid`` SEA's re-implementation."""
    if activation not in COSPGD_ACTIVATIONS:
        raise ValueError(f"CosPGD activation must be one of {COSPGD_ACTIVATIONS}, got {activation!r}")
    with torch.no_grad():
        probs = torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)
        # F.cosine_similarity(probs, one_hot) computes sum_c (p_c / max(||p||, 1e-8)) * (q_c / ||q||);
        # with q one-hot (||q|| = 1 exactly) that is p_y / max(||p||, 1e-8), bit for bit, without the
        # (N, C, H, W) one-hot, products and sum (F.one_hot would also synchronise a GPU)
        p_y = probs.gather(1, _safe_target(target).unsqueeze(1)).squeeze(1)
        return p_y / torch.linalg.vector_norm(probs, 2, dim=1).clamp_min(1e-8)


def cospgd_pixels(logits: torch.Tensor, target: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """CE weighted by :func:`cospgd_weight` (detached)."""
    return cospgd_weight(logits, target, activation) * ce_pixels(logits, target)


def masked_ce_pixels(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """SEA's masked CE: CE only on pixels still classified correctly (mask detached); with
    ``class_weights`` (C,) the balanced variant, each pixel's CE times the weight of its true class."""
    loss = ce_pixels(logits, target) * correct_mask(logits, target)
    if class_weights is not None:
        loss = loss * class_weights.to(device=logits.device, dtype=loss.dtype)[_safe_target(target)]
    return loss


def js_pixels(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(logits) and the one-hot label, per pixel (nats).

    With q one-hot on class y and m = (p + q) / 2, ``JS = (KL(p||m) + KL(q||m)) / 2`` depends only on
    p_y: ``JS = (2 ln 2 + p_y ln p_y - (1 + p_y) ln(1 + p_y)) / 2`` (0 when p_y = 1, ln 2 when
    p_y = 0). Computed in that closed form from ``log_softmax`` (no 21-channel logarithm)."""
    logp_y = torch.log_softmax(logits, dim=1).gather(1, _safe_target(target).unsqueeze(1)).squeeze(1)
    p_y = logp_y.exp()
    js = 0.5 * (2 * LN2 + p_y * logp_y - (1 + p_y) * torch.log1p(p_y))
    return js * valid_mask(target)


def image_mean(pixels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N,): sum over the image's pixels / (H * W)."""
    return pixels.flatten(1).sum(1) / (pixels.shape[-2] * pixels.shape[-1])


def pixel_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) fraction of non-void pixels classified correctly (1.0 for an all-void image)."""
    valid = valid_mask(target)
    correct = (correct_mask(logits, target) & valid).flatten(1).sum(1)
    total = valid.flatten(1).sum(1)
    return torch.where(total > 0, correct / total.clamp_min(1), torch.ones_like(correct, dtype=torch.float32))


def balanced_class_weights(pixel_counts, num_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency class weights from per-class pixel counts (e.g. of the training split).

    ``w_c = 1 / (K * f_c)`` for the K classes with a non-zero count (f_c = their pixel fraction), so
    the frequency-weighted mean weight is 1 and the loss keeps CE's scale; a class absent from the
    counts gets the largest present weight (treated as the rarest)."""
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64).flatten()
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(f"expected {num_classes} pixel counts, got {counts.numel()}")
    if (counts < 0).any() or not torch.isfinite(counts).all():
        raise ValueError("pixel counts must be finite and non-negative")
    present = counts > 0
    if not present.any():
        raise ValueError("every class has a zero pixel count")
    freq = counts / counts.sum()
    k = int(present.sum())
    w = torch.where(present, 1.0 / (k * freq.clamp_min(1e-300)), torch.zeros_like(freq))
    w = torch.where(present, w, w.max())
    return w.to(torch.float32)
