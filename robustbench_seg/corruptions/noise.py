"""Noise corruptions in torch (batched, any device), after imagecorruptions' definitions.

Each corruption is a pair: ``draw_<name>(x, severity, seeds)`` makes the random numbers (hashed, see
:mod:`.rng`) and ``apply_<name>(x, severity, draws)`` is the definition. Tests feed ``apply_`` with the
numbers NumPy draws inside the reference package, so the definition is compared exactly and the
sampler separately (by its distribution). ``x`` is (N, 3, H, W) float64 in 0-255; results are
unquantised float64 0-255 (the caller applies the reference's final uint8 cast).
"""
from __future__ import annotations

import torch

from . import rng

GAUSSIAN = [0.08, 0.12, 0.18, 0.26, 0.38]
SHOT = [60, 25, 12, 5, 3]
IMPULSE = [0.03, 0.06, 0.09, 0.17, 0.27]
SPECKLE = [0.15, 0.2, 0.35, 0.45, 0.6]


def draw_gaussian_noise(x, severity, seeds):
    return rng.normal(seeds, tuple(x.shape[1:]), 1, x.device)


def apply_gaussian_noise(x, severity, z):
    c = GAUSSIAN[severity - 1]
    return torch.clamp(x / 255.0 + c * z, 0, 1) * 255


def draw_shot_noise(x, severity, seeds):
    """Poisson(x / 255 * c) counts. ``x`` holds integers 0-255 (``corrupt`` rounds its input), so the rate
    has 256 values: tabulated CDFs and one ``searchsorted`` (``rng.poisson_levels``); the same
    inversion of the same uniforms as the general ``rng.poisson``."""
    c = SHOT[severity - 1]
    v = torch.arange(256, dtype=torch.float64, device=x.device)
    u = rng.uniform(seeds, tuple(x.shape[1:]), 2, x.device)
    return rng.poisson_levels(x.to(torch.int64), v / 255.0 * c, u)


def apply_shot_noise(x, severity, counts):
    c = SHOT[severity - 1]
    return torch.clamp(counts / float(c), 0, 1) * 255


def draw_impulse_noise(x, severity, seeds):
    shape = tuple(x.shape[1:])
    return rng.uniform(seeds, shape, 3, x.device), rng.uniform(seeds, shape, 4, x.device)


def apply_impulse_noise(x, severity, draws):
    """skimage ``random_noise(mode='s&p', amount=c)``: a pixel value flips when u1 <= c, to 1 when u2 <= 0.5, else 0."""
    u_flip, u_salt = draws
    c = IMPULSE[severity - 1]
    flipped = u_flip <= c
    salted = u_salt <= 0.5
    out = x / 255.0
    out = torch.where(flipped & salted, torch.ones_like(out), out)
    out = torch.where(flipped & ~salted, torch.zeros_like(out), out)
    return torch.clamp(out, 0, 1) * 255


def draw_speckle_noise(x, severity, seeds):
    return rng.normal(seeds, tuple(x.shape[1:]), 5, x.device)


def apply_speckle_noise(x, severity, z):
    c = SPECKLE[severity - 1]
    x = x / 255.0
    return torch.clamp(x + x * (c * z), 0, 1) * 255
