"""Joint image + mask transforms (torchvision.transforms.v2) and input normalisation.

Training: random scale, pad (image with the mean pixel, mask with void 255) to the crop size,
random crop (default 321 x 321, the paper's), horizontal flip. Evaluation: none (full resolution).
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..constants import IGNORE_INDEX, MEAN_255, STD_255

MEAN_FILL = tuple(int(round(m)) for m in MEAN_255)


def train_transforms(crop_size: int = 321, scale: tuple[float, float] = (0.5, 2.0), flip: bool = True) -> v2.Compose:
    """Random scale -> pad to crop (image: mean pixel, mask: 255) -> random crop -> flip."""
    steps: list = [
        _RandomScale(scale),
        v2.RandomCrop(
            crop_size,
            pad_if_needed=True,
            fill={tv_tensors.Image: MEAN_FILL, tv_tensors.Mask: IGNORE_INDEX},
        ),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps)


class _RandomScale(v2.Transform):
    """Resize both by one factor drawn from U[lo, hi]; bilinear for images, nearest for masks."""

    def __init__(self, scale: tuple[float, float]):
        super().__init__()
        self.lo, self.hi = float(scale[0]), float(scale[1])

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        f = float(torch.empty(()).uniform_(self.lo, self.hi))
        return {"size": [max(1, int(round(h * f))), max(1, int(round(w * f)))]}

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Mask):
            return v2.functional.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        if isinstance(inpt, tv_tensors.Image):
            return v2.functional.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


def normalize(x255: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float pixels in 0-255 -> ImageNet-normalised model input."""
    mean, std = _mean_std(x255.device, x255.dtype)
    return (x255 - mean) / std


_MEAN_STD: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, 1, 1) mean and std, made once per (device, dtype): building them from Python
    lists on every call is a blocking host-to-device copy on CUDA (a host sync per batch). Made
    outside inference mode, so autograd may save them (attacks differentiate through normalize)."""
    key = (device, dtype)
    if key not in _MEAN_STD:
        with torch.inference_mode(False):
            _MEAN_STD[key] = (
                torch.tensor(MEAN_255, dtype=dtype).view(1, 3, 1, 1).to(device),
                torch.tensor(STD_255, dtype=dtype).view(1, 3, 1, 1).to(device),
            )
    return _MEAN_STD[key]
