"""Blur corruptions in torch (batched, any device), after imagecorruptions' definitions.

``x`` is (N, 3, H, W) float64 in 0-255; results are unquantised float 0-255.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

DEFOCUS = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]
GAUSSIAN_BLUR = [1, 2, 3, 4, 6]
MOTION = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]
ZOOM = [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)]


def _reflect101(n: int, r: int) -> np.ndarray:
    """Indices of a line of length n padded by r on both sides, OpenCV BORDER_REFLECT_101."""
    i = np.arange(-r, n + r)
    i = np.abs(i)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


@lru_cache(maxsize=64)
def disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """imagecorruptions' ``disk``: an aliased disk, normalised, smoothed by cv2.GaussianBlur (reflect-101)."""
    if radius <= 8:
        L, ks = np.arange(-8, 8 + 1), 3
    else:
        L, ks = np.arange(-radius, radius + 1), 5
    X, Y = np.meshgrid(L, L)
    d = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    d /= np.sum(d)
    t = np.arange(ks) - (ks - 1) / 2
    g = np.exp(-(t ** 2) / (2 * alias_blur ** 2))
    g = g / g.sum()
    r = ks // 2
    idx = _reflect101(d.shape[0], r)
    p = d.astype(np.float64)[idx][:, idx]
    rows = sum(g[k] * p[k:k + d.shape[0], :] for k in range(ks))
    out = sum(g[k] * rows[:, k:k + d.shape[1]] for k in range(ks))
    return out.astype(np.float32)


def apply_defocus_blur(x, severity, draws=None):
    radius, alias = DEFOCUS[severity - 1]
    k = torch.as_tensor(disk_kernel(radius, alias), dtype=x.dtype, device=x.device)
    r = k.shape[0] // 2
    y = F.pad(x / 255.0, (r, r, r, r), mode="reflect")        # torch reflect == OpenCV REFLECT_101
    return torch.clamp(fft_correlate_valid(y, k), 0, 1) * 255


def fft_correlate_valid(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """2-D correlation of every channel of ``y`` (N, C, H+2r, W+2r) with ``k`` (2r+1, 2r+1), 'valid' part,
    via FFT: one product per pixel instead of (2r+1)**2 (OpenCV's filter2D also uses a DFT for large kernels)."""
    kh, kw = k.shape
    hp, wp = y.shape[-2:]
    kf = torch.fft.rfft2(torch.flip(k, (0, 1)), s=(hp, wp))
    out = torch.fft.irfft2(torch.fft.rfft2(y) * kf, s=(hp, wp))
    return out[..., kh - 1:, kw - 1:]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's kernel (radius int(truncate * sigma + 0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (sigma * sigma) * t ** 2)
    return w / w.sum()


@lru_cache(maxsize=64)
def filter_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) matrix applying scipy's 1-D Gaussian (``gaussian_kernel1d``) along a line of length n with its ``nearest``
    border (edge samples repeated): the padding folded into the matrix."""
    k1d = gaussian_kernel1d(sigma, truncate)
    r = len(k1d) // 2
    m = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)[:, None]
    src = np.clip(rows + np.arange(-r, r + 1)[None, :], 0, n - 1)
    np.add.at(m, (np.broadcast_to(rows, src.shape), src), np.broadcast_to(k1d, src.shape))
    return m


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian over H and W of (N, C, H, W) with scipy's ``nearest`` border (skimage's default),
    as two batched matrix products (dense (H, H) and (W, W) band matrices: fast on a GPU, no padding)."""
    mh = torch.as_tensor(filter_matrix(x.shape[-2], float(sigma), truncate), dtype=x.dtype, device=x.device)
    mw = torch.as_tensor(filter_matrix(x.shape[-1], float(sigma), truncate), dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(mh, x), mw.T)


def apply_gaussian_blur(x, severity, draws=None):
    y = gaussian_filter(x / 255.0, GAUSSIAN_BLUR[severity - 1])
    return torch.clamp(y, 0, 1) * 255


def motion_offsets(width: int, angle: float) -> list[tuple[int, int]]:
    """The (dy, dx) pixel shifts of imagecorruptions' ``_motion_blur``, taken in order."""
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    out = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        out.append((dy, dx))
    return out


def motion_blur_t(x: torch.Tensor, radius: int, sigma: float, angles) -> torch.Tensor:
    """Batched ``_motion_blur``: sum over kernel taps of edge-clamped shifts (one angle per image).

    The loop runs over the taps (at most 41), never over images: each tap gathers every image of
    the batch with its own shift. A shift reaching past the image ends that image's sum, as in
    the reference."""
    n, c, h, w = x.shape
    width = 2 * radius + 1
    t = np.arange(width)
    kern = np.exp(-(t ** 2) / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    kern = kern / kern.sum()
    offs = np.array([motion_offsets(width, float(a)) for a in angles], dtype=np.int64)   # (N, width, 2)
    alive = np.cumprod((np.abs(offs[..., 0]) < h) & (np.abs(offs[..., 1]) < w), axis=1).astype(bool)
    dev = x.device
    offs_t = torch.as_tensor(offs, device=dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    out = torch.zeros_like(x)
    for i in range(width):
        if not alive[:, i].any():
            break
        rows = torch.clamp(ar_h[None, :] - offs_t[:, i, 0:1], 0, h - 1)   # shifted[y] = x[clamp(y - dy)]
        cols = torch.clamp(ar_w[None, :] - offs_t[:, i, 1:2], 0, w - 1)
        shifted = x.gather(2, rows[:, None, :, None].expand(n, c, h, w)).gather(3, cols[:, None, None, :].expand(n, c, h, w))
        wgt = torch.as_tensor(kern[i] * alive[:, i], dtype=x.dtype, device=dev).view(n, 1, 1, 1)
        out = out + wgt * shifted
    return out


def draw_motion_blur(x, severity, seeds):
    from . import rng

    return rng.uniform(seeds, (), 6, "cpu").reshape(-1) * 90.0 - 45.0


def apply_motion_blur(x, severity, angles):
    radius, sigma = MOTION[severity - 1]
    angles = angles.tolist() if isinstance(angles, torch.Tensor) else list(angles)
    return torch.clamp(motion_blur_t(x, radius, sigma, angles), 0, 255)


def _zoom_axis(n: int, z: float, full: bool = False):
    """scipy.ndimage.zoom (order 1, grid_mode False) of the centre crop of ``clipped_zoom``: the first n
    outputs (``full``: all of them). Returns (index below, index above, fraction, output size, keep)."""
    ch = int(np.ceil(n / float(z)))
    top = (n - ch) // 2
    out_n = int(round(ch * z))
    ratio = (ch - 1) / (out_n - 1) if out_n > 1 else 0.0
    coord = np.arange(out_n if full else min(n, out_n)) * ratio
    i0 = np.clip(np.floor(coord).astype(np.int64), 0, ch - 1)
    i1 = np.clip(i0 + 1, 0, ch - 1)
    f = coord - i0
    # scipy's mode 'constant' (no interpolation beyond the edge): a coordinate that float rounding puts
    # past the last sample (e.g. 70 * (58 / 70) = 58.00000000000001) reads the constant 0
    outside = coord > ch - 1
    keep = (~outside).astype(np.float64)
    return top + i0, top + i1, f, out_n, keep


def apply_zoom_blur(x, severity, draws=None):
    """Mean of the image and its centre zooms (float32 accumulation, as the reference)."""
    n, c, h, w = x.shape
    dev = x.device
    x32 = (x / 255.0).to(torch.float32)
    out = torch.zeros_like(x32)
    for z in ZOOM[severity - 1]:
        r0, r1, fr, oh, kr = _zoom_axis(h, z)
        c0, c1, fc, ow, kc = _zoom_axis(w, z)
        xd = x32.to(torch.float64)
        fr_t = torch.as_tensor(fr, dtype=torch.float64, device=dev).view(1, 1, -1, 1)
        fc_t = torch.as_tensor(fc, dtype=torch.float64, device=dev).view(1, 1, 1, -1)
        rows = (1 - fr_t) * xd[:, :, torch.as_tensor(r0, device=dev), :] + fr_t * xd[:, :, torch.as_tensor(r1, device=dev), :]
        cc0, cc1 = torch.as_tensor(c0, device=dev), torch.as_tensor(c1, device=dev)
        layer = ((1 - fc_t) * rows[:, :, :, cc0] + fc_t * rows[:, :, :, cc1])
        keep = torch.as_tensor(kr[:, None] * kc[None, :], dtype=torch.float64, device=dev)
        layer = (layer * keep).to(torch.float32)
        out[:, :, :layer.shape[2], :layer.shape[3]] += layer
    y = (x32 + out) / (len(ZOOM[severity - 1]) + 1)
    return (torch.clamp(y, 0, 1) * 255).to(torch.float64)


# --- elastic transform (imagecorruptions' family "digital"; lives here beside the other filters) ---

ELASTIC_ALPHA = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12]


def _symmetric(i: torch.Tensor, n: int) -> torch.Tensor:
    """scipy's ``reflect`` (half-sample symmetric) for integer indices: -1 -> 0, n -> n - 1."""
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


@lru_cache(maxsize=64)
def reflect_filter_matrix(n: int, sigma: float, truncate: float) -> np.ndarray:
    """(n, n) matrix of scipy's 1-D Gaussian with its ``reflect`` border (d c b a | a b c d | d c b a)."""
    k1d = gaussian_kernel1d(sigma, truncate)
    r = len(k1d) // 2
    rows = np.arange(n)[:, None]
    src = rows + np.arange(-r, r + 1)[None, :]
    period = 2 * n
    src = np.remainder(src, period)
    src = np.where(src >= n, period - 1 - src, src)
    m = np.zeros((n, n), dtype=np.float64)
    np.add.at(m, (np.broadcast_to(rows, src.shape), src), np.broadcast_to(k1d, src.shape))
    return m


def draw_elastic_transform(x, severity, seeds):
    """The two uniform fields of the reference (``uniform(-max_d, max_d, (H, W))`` for dx, then dy)."""
    from . import rng

    n, _, h, w = x.shape
    max_d = h * 0.005
    u = rng.uniform(seeds, (2, h, w), 7, x.device)
    return -max_d + 2 * max_d * u[:, 0], -max_d + 2 * max_d * u[:, 1]


def apply_elastic_transform(x, severity, draws):
    """Smooth the fields (scipy Gaussian, sigma 1% of each side, truncate 3, reflect), scale by alpha,
    sample the image bilinearly at (row + dy, col + dx) with scipy's ``reflect`` border."""
    ux, uy = draws                                                   # (N, H, W) each
    n, c, h, w = x.shape
    alpha = ELASTIC_ALPHA[severity - 1]
    dev = x.device
    mh = torch.as_tensor(reflect_filter_matrix(h, h * 0.01, 3.0), dtype=torch.float64, device=dev)
    mw = torch.as_tensor(reflect_filter_matrix(w, w * 0.01, 3.0), dtype=torch.float64, device=dev)
    dx = (torch.matmul(torch.matmul(mh, ux.to(torch.float64)), mw.T) * alpha).to(torch.float32).to(torch.float64)
    dy = (torch.matmul(torch.matmul(mh, uy.to(torch.float64)), mw.T) * alpha).to(torch.float32).to(torch.float64)
    img = (x / 255.0).to(torch.float32).to(torch.float64)            # the reference samples a float32 image
    rr = torch.arange(h, device=dev, dtype=torch.float64)[None, :, None] + dy
    cc = torch.arange(w, device=dev, dtype=torch.float64)[None, None, :] + dx
    r0, c0 = torch.floor(rr), torch.floor(cc)
    fr, fc = (rr - r0)[:, None], (cc - c0)[:, None]
    r0, c0 = r0.to(torch.int64), c0.to(torch.int64)
    flat = img.reshape(n, c, h * w)

    def at(ri, ci):
        idx = (_symmetric(ri, h) * w + _symmetric(ci, w)).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, idx).reshape(n, c, h, w)

    out = ((1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c0 + 1))
           + fr * ((1 - fc) * at(r0 + 1, c0) + fc * at(r0 + 1, c0 + 1)))
    return torch.clamp(out, 0, 1) * 255
