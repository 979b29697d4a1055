"""Common corruptions (ImageNet-C, Hendrycks & Dietterich; as packaged by Michaelis et al.'s
``imagecorruptions``) for segmentation robustness (Kamann & Rother): 15 benchmark corruptions plus
4 validation ones, severities 1-5.

``corrupt(x255, name, severity, seeds)`` takes a batch (N, 3, H, W) float 0-255 on any device and
returns it corrupted on the same device, quantised like the reference (``np.uint8`` of its float
result: values truncated to integers in 0-255). Corruptions whose definition allows it run in torch
on the input's device (batched, float64); the others run the reference package on CPU, per image,
with NumPy seeded from that image's seed (``CORRUPTIONS[name].impl`` says which). Random numbers
depend only on ``seeds[i]`` (see ``corruption_seed``), never on the batch or the device.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import RbsegError
from . import blur, digital, noise, weather

VERSION = "1"

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression")
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionDef:
    name: str
    family: str                 # noise | blur | weather | digital
    impl: str                   # "torch" (on the input's device) | "reference" (the reference package, CPU)
    tolerance: str              # how closely it matches the reference and why
    apply: Callable | None = None   # torch: apply(x float64 0-255, severity, draws) -> float 0-255 (unquantised)
    draw: Callable | None = None    # torch: draw(x, severity, seeds) -> draws (None: deterministic)

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "impl": self.impl, "tolerance": self.tolerance}


_EXACT_DRAWS = ("same definition; checked with the reference's own NumPy draws injected: equal up to "
                "float rounding at the uint8 truncation (|diff| <= 1 on < 0.5% of values). rbseg draws "
                "its numbers with a device-independent hash RNG, so the images are not NumPy's: the "
                "sampler is checked by its distribution")
_DEF = [
    CorruptionDef("gaussian_noise", "noise", "torch", _EXACT_DRAWS, noise.apply_gaussian_noise, noise.draw_gaussian_noise),
    CorruptionDef("shot_noise", "noise", "torch", _EXACT_DRAWS + " (Poisson by exact CDF inversion)",
                  noise.apply_shot_noise, noise.draw_shot_noise),
    CorruptionDef("impulse_noise", "noise", "torch", _EXACT_DRAWS, noise.apply_impulse_noise, noise.draw_impulse_noise),
    CorruptionDef("defocus_blur", "blur", "torch",
                  "deterministic; |diff| <= 1 on < 0.5% of values (OpenCV's float32 kernel and DFT filter vs a float64 conv)",
                  blur.apply_defocus_blur),
    CorruptionDef("glass_blur", "blur", "reference",
                  "reference package (its pixel swaps are sequential: each depends on the previous ones)"),
    CorruptionDef("motion_blur", "blur", "torch", "same shifts and weights as the reference given the angle: "
                  "|diff| <= 1 on < 0.5% of values; the angle is a hashed draw", blur.apply_motion_blur, blur.draw_motion_blur),
    CorruptionDef("zoom_blur", "blur", "torch",
                  "deterministic; |diff| <= 1 on < 1% of values (scipy's spline interpolation vs explicit bilinear, float32 sums)",
                  blur.apply_zoom_blur),
    CorruptionDef("snow", "weather", "torch",
                  "same definition given the normal layer and the angle (scipy zoom, motion blur, OpenCV's float32 "
                  "grey conversion reproduced): |diff| <= 1 on < 0.5% of values; the draws are hashed",
                  weather.apply_snow, weather.draw_snow),
    CorruptionDef("frost", "weather", "torch",
                  "same definition given (photo, crop row, crop column): exact. The photographs are the reference "
                  "package's, decoded and bicubic-resized by OpenCV on CPU once per (photo, image size) and cached "
                  "(so frost needs the corruptions-ref extra); the crop and blend run on the device",
                  weather.apply_frost, weather.draw_frost),
    CorruptionDef("fog", "weather", "torch",
                  "same definition given the uniform draws (diamond-square plasma fractal vectorised per level, "
                  "float32 map as the reference): |diff| <= 1 on < 0.5% of values; the draws are hashed",
                  weather.apply_fog, weather.draw_fog),
    CorruptionDef("brightness", "weather", "torch",
                  "deterministic; scikit-image's HSV round trip op by op in float64: |diff| <= 1 on < 0.5% of values",
                  digital.apply_brightness),
    CorruptionDef("contrast", "digital", "torch", "deterministic; |diff| <= 1 on < 0.5% of values (summation order of the mean)",
                  digital.apply_contrast),
    CorruptionDef("elastic_transform", "digital", "torch",
                  "same definition given the two uniform fields (scipy Gaussian and map_coordinates with the "
                  "'reflect' border reproduced): |diff| <= 1 on < 0.5% of values; the fields are hashed draws",
                  blur.apply_elastic_transform, blur.draw_elastic_transform),
    CorruptionDef("pixelate", "digital", "torch",
                  "deterministic; Pillow's BOX fixed-point weights and NEAREST indices reproduced: exact",
                  digital.apply_pixelate),
    CorruptionDef("jpeg_compression", "digital", "reference", "reference package (Pillow's libjpeg encoder)"),
    CorruptionDef("speckle_noise", "noise", "torch", _EXACT_DRAWS, noise.apply_speckle_noise, noise.draw_speckle_noise),
    CorruptionDef("gaussian_blur", "blur", "torch",
                  "deterministic; scipy's kernel, nearest border: |diff| <= 1 on < 0.5% of values", blur.apply_gaussian_blur),
    CorruptionDef("spatter", "weather", "reference", "reference package (OpenCV Canny, distance transform, histogram equalisation)"),
    CorruptionDef("saturate", "digital", "torch",
                  "deterministic; scikit-image's HSV round trip op by op in float64: |diff| <= 1 on < 0.5% of values",
                  digital.apply_saturate),
]
CORRUPTIONS: dict[str, CorruptionDef] = {d.name: d for d in _DEF}
assert tuple(CORRUPTIONS) == BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS


def parse_corruptions(text: str) -> list[str]:
    """``all`` -> the 15 benchmark corruptions, ``extra`` -> the 4 validation ones, or names; comma-separated, no repeats."""
    out: list[str] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if part == "all":
            names = list(BENCHMARK_CORRUPTIONS)
        elif part == "extra":
            names = list(EXTRA_CORRUPTIONS)
        elif part in CORRUPTIONS:
            names = [part]
        else:
            raise RbsegError(f"unknown corruption {part!r}; valid: all, extra, " + ", ".join(CORRUPTIONS))
        out.extend(n for n in names if n not in out)
    if not out:
        raise RbsegError(f"no corruption named in {text!r}; valid: all, extra, " + ", ".join(CORRUPTIONS))
    return out


def parse_severities(text: str) -> list[int]:
    """``1-5``, ``1,3,5``, ``3`` -> sorted distinct severities in 1..5."""
    out: set[int] = set()
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise RbsegError(f"bad severities {text!r}; expected e.g. 1-5, 1,3,5 or 3") from None
    if not out or not out <= set(SEVERITIES):
        raise RbsegError(f"bad severities {text!r}; severities are integers 1 to 5 (e.g. 1-5, 1,3,5 or 3)")
    return sorted(out)


def corruption_seed(image_id: str, name: str, severity: int, seed: int = 0) -> int:
    """A 32-bit seed from sha256 of (image id, corruption, severity, seed): stable across runs and processes."""
    key = f"rbseg-corruption/{VERSION}\0{image_id}\0{name}\0{int(severity)}\0{int(seed)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def _check(x255: torch.Tensor, name: str, severity: int, seeds: Sequence[int]) -> None:
    if name not in CORRUPTIONS:
        raise RbsegError(f"unknown corruption {name!r}; valid: " + ", ".join(CORRUPTIONS))
    if int(severity) not in SEVERITIES:
        raise RbsegError(f"corruption severity {severity!r} out of range 1-5")
    if x255.ndim != 4 or x255.shape[1] != 3:
        raise RbsegError(f"corrupt expects (N, 3, H, W) images, got shape {tuple(x255.shape)}")
    if min(x255.shape[2], x255.shape[3]) < 32:
        raise RbsegError(f"corruptions need images of at least 32 x 32 pixels, got {tuple(x255.shape[2:])}")
    if len(seeds) != x255.shape[0]:
        raise RbsegError(f"corrupt got {len(seeds)} seeds for {x255.shape[0]} images")


def corrupt(x255: torch.Tensor, name: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """Corrupt a batch; see the module docstring. Returns x255's shape, device and floating dtype."""
    severity = int(severity)
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    _check(x255, name, severity, seeds)
    d = CORRUPTIONS[name]
    out_dtype = x255.dtype if x255.is_floating_point() else torch.float32
    if d.impl == "reference":
        from .reference import reference_batch

        return reference_batch(x255, name, severity, seeds).to(out_dtype)
    with torch.no_grad():
        x = torch.clamp(torch.round(x255.detach().to(torch.float64)), 0, 255)   # the reference takes uint8 images
        draws = d.draw(x, severity, seeds) if d.draw is not None else None
        y = d.apply(x, severity, draws)
        y = torch.floor(torch.clamp(y.to(torch.float64), 0, 255))               # np.uint8 of a float in 0..255
    return y.to(out_dtype)


def reference_corrupt(x255: torch.Tensor, name: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """Always the reference package (CPU, per image), whatever ``CORRUPTIONS[name].impl`` says."""
    from .reference import reference_batch

    seeds = [int(s) for s in seeds]
    _check(x255, name, severity, seeds)
    return reference_batch(x255, name, int(severity), seeds).to(x255.dtype if x255.is_floating_point() else torch.float32)


__all__ = ["BENCHMARK_CORRUPTIONS", "EXTRA_CORRUPTIONS", "SEVERITIES", "VERSION", "CORRUPTIONS", "CorruptionDef",
           "parse_corruptions", "parse_severities", "corruption_seed", "corrupt", "reference_corrupt"]
