"""Counter-based random numbers in torch: the same numbers on every device, batched over images.

Each number is a hash of (image seed, stream, element index) -- the `lowbias32` integer hash
(C. Wellons) evaluated with int64 arithmetic that never overflows -- so a draw depends only on the
seed, never on the device, the batch it sits in or the order images are processed in. That is what
makes a corrupted image reproducible and cacheable per (image id, corruption, severity, seed).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 without int64 overflow (the constant split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijective 32-bit avalanche hash (int64 tensor holding values in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seeds: Sequence[int] | torch.Tensor, stream: int, device) -> torch.Tensor:
    s = torch.as_tensor([int(v) & M32 for v in seeds] if not isinstance(seeds, torch.Tensor) else seeds,
                        dtype=torch.int64, device=device) & M32
    st = mix32(torch.tensor([(stream * 0x9E3779B9 + 0x85EBCA6B) & M32], dtype=torch.int64, device=device))
    return mix32(mix32(s) ^ st)


def uniform(seeds, shape: tuple[int, ...], stream: int, device, dtype=torch.float64) -> torch.Tensor:
    """(N, *shape) uniform numbers in the open interval (0, 1), 32 random bits each."""
    n = math.prod(shape)
    key = _keys(seeds, stream, device)                                    # (N,)
    idx = torch.arange(n, dtype=torch.int64, device=device)
    h = mix32((mix32(idx)[None, :] + key[:, None] * 0x2545F491) & M32)    # (N, n); key * c < 2**62
    h = mix32(h ^ key[:, None])
    return ((h.to(dtype) + 0.5) / 4294967296.0).reshape(len(key), *shape)


def normal(seeds, shape: tuple[int, ...], stream: int, device, dtype=torch.float64) -> torch.Tensor:
    """(N, *shape) standard normal numbers (Box-Muller on two uniform streams)."""
    u1 = uniform(seeds, shape, 2 * stream + 1000, device, dtype)
    u2 = uniform(seeds, shape, 2 * stream + 1001, device, dtype)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def poisson(lam: torch.Tensor, seeds, stream: int) -> torch.Tensor:
    """Poisson counts with rates ``lam`` (N, ...) by exact inversion of the CDF at a hashed uniform.

    Start from the normal approximation of the quantile, then step until
    ``P(X <= k-1) < u <= P(X <= k)`` (``P(X <= k) = gammaincc(k + 1, lam)``): a handful of
    vectorised steps instead of one step per count.
    """
    lam = lam.to(torch.float64)
    u = uniform(seeds, tuple(lam.shape[1:]), stream, lam.device)
    z = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    k = torch.clamp(torch.floor(lam + torch.sqrt(lam) * z + 0.5), min=0.0)
    for _ in range(64):
        up = torch.special.gammaincc(k + 1.0, lam) < u                    # CDF(k) < u: go up
        k = torch.where(up, k + 1.0, k)
        down = (k > 0) & (torch.special.gammaincc(k, lam) >= u)           # CDF(k-1) >= u: go down
        k = torch.where(down, k - 1.0, k)
        if not bool((up | down).any()):
            break
    return k


def poisson_levels(levels: torch.Tensor, rates: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Poisson counts by the same inversion (smallest k with ``P(X <= k) >= u``) when the rate takes few
    values: ``levels`` (integer tensor) indexes ``rates`` (L,). The CDFs of the L rates are tabulated once
    and one ``searchsorted`` inverts every element (rows offset by 2 per level so the table is one sorted
    line; the offset costs ~1e-13 of resolution in ``u``)."""
    rates = rates.to(torch.float64)
    kmax = int(math.ceil(float(rates.max()) + 12.0 * math.sqrt(float(rates.max())) + 20.0))
    k = torch.arange(kmax, dtype=torch.float64, device=rates.device)
    cdf = torch.special.gammaincc(k[None, :] + 1.0, rates[:, None])                 # (L, K)
    cdf[:, -1] = 1.0                                                                # mass beyond K: < 1e-30
    offset = 2.0 * torch.arange(len(rates), dtype=torch.float64, device=rates.device)
    line = (cdf + offset[:, None]).reshape(-1)
    lv = levels.to(torch.int64)
    pos = torch.searchsorted(line, (u.to(torch.float64) + offset[lv]).reshape(-1)).reshape(u.shape)
    return (pos - lv * kmax).to(torch.float64)
