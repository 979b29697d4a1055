"""Image mixing, done on the training device after each image's own augmentation.

* :func:`blend` -- Eq. 1, ``I_fb = delta * I1 + (1 - delta) * I2`` per sample (also Mixup's mix).
* :func:`mixup` -- lambda ~ Beta(alpha, alpha) per sample; the partner is the next sample of the
  (already shuffled) batch; labels are kept apart for the loss.
* :func:`cutmix` -- a box of area fraction ``1 - lambda`` (lambda ~ Beta(alpha, alpha)) with a
  uniform centre, clipped to the image, pasted from the partner together with its label pixels;
  lambda is recomputed from the clipped box (the fraction of pixels still from image 1).
"""
from __future__ import annotations

import numpy as np
import torch


def blend(x1: torch.Tensor, x2: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for a batch: ``delta`` has one weight per sample (the dominant image's)."""
    d = delta.to(device=x1.device, dtype=x1.dtype).view(-1, *([1] * (x1.dim() - 1)))
    return d * x1 + (1 - d) * x2


def partner_index(n: int, device=None) -> torch.Tensor:
    """Each sample's partner: the next one in the batch (never itself when n > 1)."""
    return torch.roll(torch.arange(n, device=device), -1)


def sample_lambda(alpha: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.beta(alpha, alpha, size=n)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed images, labels of image 1, labels of the partner, lambda per sample)."""
    p = partner_index(x.shape[0], x.device)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=x.device)
    return blend(x, x[p], lam_t), y, y[p], lam_t


def cutmix_boxes(lam: np.ndarray, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(y0, y1, x0, x1)`` (half-open) of area fraction ``1 - lam`` before clipping, and the
    corrected lambda ``1 - box area / image area`` after clipping (CutMix, Yun et al. 2019)."""
    n = len(lam)
    cut = np.sqrt(1.0 - np.asarray(lam, dtype=np.float64))
    ch, cw = (height * cut).astype(np.int64), (width * cut).astype(np.int64)
    cy, cx = rng.integers(0, height, size=n), rng.integers(0, width, size=n)
    y0, y1 = np.clip(cy - ch // 2, 0, height), np.clip(cy + ch - ch // 2, 0, height)
    x0, x1 = np.clip(cx - cw // 2, 0, width), np.clip(cx + cw - cw // 2, 0, width)
    boxes = np.stack([y0, y1, x0, x1], axis=1)
    lam_adj = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return boxes, lam_adj


def cutmix(x: torch.Tensor, y: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each partner's box (image and label pixels, void included) into the sample."""
    p = partner_index(x.shape[0], x.device)
    x_out, y_out = x.clone(), y.clone()
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        j = int(p[i])
        x_out[i, :, y0:y1, x0:x1] = x[j, :, y0:y1, x0:x1]
        y_out[i, y0:y1, x0:x1] = y[j, y0:y1, x0:x1]
    return x_out, y_out
