"""Losses (paper Eq. 3 and 4, Mixup), all built on one per-sample cross-entropy.

``per_sample_ce``: pixel-wise cross-entropy averaged over each sample's non-void pixels (a sample
with no valid pixel contributes 0). Logits are bilinearly upsampled to the label size first
(the models already return input-resolution logits, so this is normally a no-op). A batch loss
is the mean over samples, so per-sample weights (delta, lambda) apply exactly.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..constants import IGNORE_INDEX
from .config import PPA_EPS


def _to_label_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def per_sample_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N,) mean cross-entropy over each sample's pixels whose label is not ``ignore_index``."""
    logits = _to_label_size(logits, target).float()
    pix = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    valid = (target != ignore_index).flatten(1).sum(1)
    return pix.flatten(1).sum(1) / valid.clamp(min=1)


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Baseline: pixel-wise cross-entropy, void ignored."""
    return per_sample_ce(logits, target).mean()


def mixup_loss(logits: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * CE(y1) + (1 - lam) * CE(y2)`` per sample, each term ignoring its own void pixels."""
    lam = lam.to(device=logits.device, dtype=torch.float32)
    return (lam * per_sample_ce(logits, y1) + (1 - lam) * per_sample_ce(logits, y2)).mean()


def binding_loss(out: dict, g1: torch.Tensor, g2: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Eq. 3: ``CE(S_fb, G1) + delta * CE(S_t, G1) + (1 - delta) * CE(S_p, G2)`` per sample.

    Without an FBH (no ``"binding"`` output, Table 5c) the ``CE(S_fb, G1)`` term is dropped.
    """
    delta = delta.to(device=g1.device, dtype=torch.float32)
    l_t = per_sample_ce(out["dominant"], g1)
    l_p = per_sample_ce(out["phantom"], g2)
    total = delta * l_t + (1 - delta) * l_p
    parts = {"l_t": l_t.mean().detach(), "l_p": l_p.mean().detach()}
    if "binding" in out:
        l_fb = per_sample_ce(out["binding"], g1)
        total = total + l_fb
        parts["l_fb"] = l_fb.mean().detach()
    return total.mean(), parts


def phantom_penalty(phantom: torch.Tensor, eps: float = PPA_EPS) -> torch.Tensor:
    """Eq. 4's l_PPA per sample: ``log(sum_{h,w,c} ReLU(S_p))``, the sum floored at ``eps``."""
    s = F.relu(phantom.float()).flatten(1).sum(1)
    return torch.log(s.clamp(min=eps))


def denoise_loss(out: dict, g: torch.Tensor, eps: float = PPA_EPS) -> tuple[torch.Tensor, dict]:
    """Eq. 4: ``CE(S_t, G) + log(sum ReLU(S_p))`` on standard images (stage 2)."""
    l_t = per_sample_ce(out["dominant"], g)
    ppa = phantom_penalty(_to_label_size(out["phantom"], g), eps)
    return (l_t + ppa).mean(), {"l_t": l_t.mean().detach(), "l_ppa": ppa.mean().detach()}
