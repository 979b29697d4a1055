"""Applying a universal perturbation to segmentation inputs: the one function used everywhere.

The perturbation is added in 0-255 pixel space, before mean/std normalisation. How a perturbation
of one size meets an input of another is the ``fit`` mode (the paper does not say; recorded with
every result):

- ``tile`` (default): repeat the pattern from the top-left corner, then cut to the input size;
- ``crop``: take the top-left window; where the input is larger, pad with zeros (GD-UAP's way);
- ``resize``: bilinear resize to the input size.

The result is clipped to [0, 255] unless ``clip=False``.
"""
from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F


class FitMode(str, Enum):
    TILE = "tile"
    CROP = "crop"
    RESIZE = "resize"


DEFAULT_FIT = FitMode.TILE
DEFAULT_CLIP = True


def fit_perturbation(delta: torch.Tensor, height: int, width: int, fit: FitMode | str = DEFAULT_FIT) -> torch.Tensor:
    """(C, h, w) perturbation -> (C, height, width) by the given fit mode."""
    if delta.ndim != 3:
        raise ValueError(f"perturbation must be (C, H, W), got {tuple(delta.shape)}")
    fit = FitMode(fit)
    c, h, w = delta.shape
    if (h, w) == (height, width):
        return delta
    if fit is FitMode.TILE:
        reps_h, reps_w = -(-height // h), -(-width // w)
        return delta.repeat(1, reps_h, reps_w)[:, :height, :width]
    if fit is FitMode.CROP:
        out = delta[:, :height, :width]
        pad_h, pad_w = height - out.shape[1], width - out.shape[2]
        if pad_h > 0 or pad_w > 0:
            out = F.pad(out, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
        return out
    return F.interpolate(delta[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0].to(delta.dtype)


def apply_perturbation(
    x255: torch.Tensor, delta: torch.Tensor, fit: FitMode | str = DEFAULT_FIT, clip: bool = DEFAULT_CLIP
) -> torch.Tensor:
    """x255: (N, C, H, W) or (C, H, W) pixels in 0-255; delta: (C, h, w) in 0-255 units."""
    h, w = x255.shape[-2:]
    d = fit_perturbation(delta.to(device=x255.device, dtype=x255.dtype), h, w, fit)
    out = x255 + d
    return out.clamp(0.0, 255.0) if clip else out
