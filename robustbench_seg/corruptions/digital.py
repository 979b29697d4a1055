"""Colour and digital corruptions in torch (batched, any device), after imagecorruptions' definitions.

The HSV conversions follow scikit-image's ``rgb2hsv`` / ``hsv2rgb`` operation by operation (float64),
so brightness and saturate agree with the reference to the last bit on most pixels. ``pixelate``
reproduces Pillow's BOX resize (its 22-bit fixed-point weights and uint8 rounding between the
horizontal and vertical passes) and its NEAREST upscale.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

BRIGHTNESS = [0.1, 0.2, 0.3, 0.4, 0.5]
CONTRAST = [0.4, 0.3, 0.2, 0.1, 0.05]
SATURATE = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)]
PIXELATE = [0.6, 0.5, 0.4, 0.3, 0.25]


def rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``rgb2hsv`` on (N, 3, H, W) in [0, 1]; returns (N, 3, H, W) h, s, v."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(dim=1).values
    delta = v - x.min(dim=1).values
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe                                            # red is max (later cases override)
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    return torch.stack([h, s, v], dim=1)


def hsv2rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = torch.remainder(hi, 6)
    cases = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))    # scikit-image's np.choose table
    out = []
    for ch in range(3):
        y = cases[5][ch]
        for k in range(4, -1, -1):
            y = torch.where(hi == k, cases[k][ch], y)
        out.append(y)
    return torch.stack(out, dim=1)


def apply_brightness(x, severity, draws=None):
    c = BRIGHTNESS[severity - 1]
    hsv = rgb2hsv(x / 255.0)
    hsv = torch.stack([hsv[:, 0], hsv[:, 1], torch.clamp(hsv[:, 2] + c, 0, 1)], dim=1)
    return torch.clamp(hsv2rgb(hsv), 0, 1) * 255


def apply_saturate(x, severity, draws=None):
    a, b = SATURATE[severity - 1]
    hsv = rgb2hsv(x / 255.0)
    hsv = torch.stack([hsv[:, 0], torch.clamp(hsv[:, 1] * a + b, 0, 1), hsv[:, 2]], dim=1)
    return torch.clamp(hsv2rgb(hsv), 0, 1) * 255


def apply_contrast(x, severity, draws=None):
    c = CONTRAST[severity - 1]
    x = x / 255.0
    means = x.mean(dim=(2, 3), keepdim=True)
    return torch.clamp((x - means) * c + means, 0, 1) * 255


PRECISION_BITS = 32 - 8 - 2


@lru_cache(maxsize=64)
def box_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BOX resample coefficients (``precompute_coeffs``), as 22-bit fixed-point integers (out, in)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    W = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        for x in range(xmax):
            t = (x + xmin - center + 0.5) * ss
            ws.append(1.0 if -0.5 < t <= 0.5 else 0.0)
        tot = sum(ws)
        for x, wv in enumerate(ws):
            k = wv / tot if tot != 0.0 else wv
            W[xx, xmin + x] = int(0.5 + k * (1 << PRECISION_BITS)) if k >= 0 else int(-0.5 + k * (1 << PRECISION_BITS))
    return W


@lru_cache(maxsize=64)
def nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's NEAREST resize source index per output pixel (``ImagingScaleAffine``: accumulated x0 + a * (x + 0.5))."""
    a = in_size / out_size
    idx = np.empty(out_size, dtype=np.int64)
    xo = a * 0.5
    for x in range(out_size):
        idx[x] = min(int(xo), in_size - 1)
        xo += a
    return idx


def _fixed_round(y: torch.Tensor) -> torch.Tensor:
    half = float(1 << (PRECISION_BITS - 1))
    return torch.clamp(torch.floor((y + half) / float(1 << PRECISION_BITS)), 0, 255)


def apply_pixelate(x, severity, draws=None):
    c = PIXELATE[severity - 1]
    n, ch, h, w = x.shape
    ow, oh = int(w * c), int(h * c)
    dev = x.device
    xi = torch.round(torch.clamp(x, 0, 255))
    if ow != w:
        Ww = torch.as_tensor(box_weights(w, ow), dtype=torch.float64, device=dev)
        xi = _fixed_round(torch.matmul(xi, Ww.T))                           # horizontal pass first
    if oh != h:
        Wh = torch.as_tensor(box_weights(h, oh), dtype=torch.float64, device=dev)
        xi = _fixed_round(torch.matmul(Wh, xi))
    ri = torch.as_tensor(nearest_index(oh, h), device=dev)
    ci = torch.as_tensor(nearest_index(ow, w), device=dev)
    return xi[:, :, ri][:, :, :, ci]
