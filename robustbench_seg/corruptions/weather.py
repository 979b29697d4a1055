"""Weather corruptions in torch (batched, any device): fog, snow and frost (spatter stays with the reference).

``x`` is (N, 3, H, W) float64 in 0-255; results are unquantised float 0-255.
"""
from __future__ import annotations

import torch

FOG = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)]


def next_power_of_2(v: int) -> int:
    return 1 if v == 0 else 2 ** (v - 1).bit_length()


def plasma_shapes(mapsize: int) -> list[tuple[int, int]]:
    """The shapes of the uniform draws of ``plasma_fractal``, in the order the reference draws them
    (per level: the squares, then the two diamond sets; each (mapsize / step) squared)."""
    out, step = [], mapsize
    while step >= 2:
        k = mapsize // step
        out += [(k, k)] * 3
        step //= 2
    return out


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, uniforms: list[torch.Tensor], device) -> torch.Tensor:
    """Batched diamond-square (imagecorruptions' ``plasma_fractal``): (N, mapsize, mapsize) float32 in [0, 1].

    ``uniforms[j]`` (N, k, k) in [0, 1) are the j-th draw's unit uniforms; ``uniform(-w, w)`` is
    ``-w + 2w u`` as NumPy computes it. Each level is vectorised over the grid and the batch; the
    map is float32 as in the reference (every assignment rounds)."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float32, device=device)
    step, wibble, j = mapsize, 100.0, 0

    def wibbled(a, u):
        return a.to(torch.float64) / 4 + wibble * (-wibble + (wibble - -wibble) * u)

    while step >= 2:
        h = step // 2
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + torch.roll(corner, shifts=-1, dims=1)
        sq = sq + torch.roll(sq, shifts=-1, dims=2)
        m[:, h:mapsize:step, h:mapsize:step] = wibbled(sq, uniforms[j]).to(torch.float32)
        dr = m[:, h:mapsize:step, h:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = (dr + torch.roll(dr, 1, dims=1)) + (ul + torch.roll(ul, -1, dims=2))
        m[:, 0:mapsize:step, h:mapsize:step] = wibbled(lt, uniforms[j + 1]).to(torch.float32)
        td = dr + torch.roll(dr, 1, dims=2)
        tu = ul + torch.roll(ul, -1, dims=1)
        m[:, h:mapsize:step, 0:mapsize:step] = wibbled(td + tu, uniforms[j + 2]).to(torch.float32)
        j += 3
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def draw_fog(x, severity, seeds):
    from . import rng

    mapsize = next_power_of_2(int(max(x.shape[2], x.shape[3])))
    return [rng.uniform(seeds, shape, 200 + j, x.device) for j, shape in enumerate(plasma_shapes(mapsize))]


def apply_fog(x, severity, uniforms):
    c0, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    mapsize = next_power_of_2(int(max(h, w)))
    plasma = plasma_fractal(n, mapsize, decay, uniforms, x.device)[:, :h, :w]
    x = x / 255.0
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + c0 * plasma[:, None].to(torch.float64)
    return torch.clamp(x * max_val / (max_val + c0), 0, 1) * 255


SNOW = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]


def _zoom_full(a: torch.Tensor, z: float) -> torch.Tensor:
    """imagecorruptions' ``clipped_zoom`` of (N, C, H, W) without the final crop: scipy ``zoom`` (order 1,
    mode constant) of the centre crop, output round(ceil(n / z) * z) per side (float64)."""
    import numpy as np

    from .blur import _zoom_axis

    n, c, h, w = a.shape
    dev = a.device
    r0, r1, fr, oh, kr = _zoom_axis(h, z, full=True)
    c0, c1, fc, ow, kc = _zoom_axis(w, z, full=True)
    fr_t = torch.as_tensor(fr, dtype=torch.float64, device=dev).view(1, 1, -1, 1)
    fc_t = torch.as_tensor(fc, dtype=torch.float64, device=dev).view(1, 1, 1, -1)
    rows = (1 - fr_t) * a[:, :, torch.as_tensor(r0, device=dev)] + fr_t * a[:, :, torch.as_tensor(r1, device=dev)]
    y = (1 - fc_t) * rows[..., torch.as_tensor(c0, device=dev)] + fc_t * rows[..., torch.as_tensor(c1, device=dev)]
    keep = torch.as_tensor(np.outer(kr, kc), dtype=torch.float64, device=dev)
    return y * keep


def draw_snow(x, severity, seeds):
    from . import rng

    n, _, h, w = x.shape
    z = rng.normal(seeds, (h, w), 8, x.device)
    u = rng.uniform(seeds, (), 9, "cpu").reshape(-1)
    return z, -135.0 + 90.0 * u


def apply_snow(x, severity, draws):
    """A zoomed, thresholded, motion-blurred normal layer (and its 180-degree rotation) over the
    image brightened towards its grey level: float32 where the reference computes in float32."""
    from .blur import motion_blur_t

    z, angles = draws
    c = SNOW[severity - 1]
    n, _, h, w = x.shape
    layer = c[0] + c[1] * z.to(torch.float64)                      # normal(loc, scale) = loc + scale * gauss
    layer = _zoom_full(layer[:, None], c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer)
    layer = torch.clamp(layer, 0, 1)
    angles = angles.tolist() if isinstance(angles, torch.Tensor) else list(angles)
    layer = motion_blur_t(layer, c[4], c[5], angles)
    layer = torch.round(layer * 255).to(torch.uint8).to(torch.float64) / 255.0   # np.round: half to even, like torch
    layer = layer[:, :, :h, :w]
    x32 = (x.to(torch.float32) / 255.0)
    gray = x32[:, 0:1] * 0.299 + x32[:, 1:2] * 0.587 + x32[:, 2:3] * 0.114        # cv2 RGB2GRAY on float32
    x32 = c[6] * x32 + (1 - c[6]) * torch.maximum(x32, gray * 1.5 + 0.5)
    y = x32.to(torch.float64) + layer + torch.flip(layer, dims=(2, 3))
    return torch.clamp(y, 0, 1) * 255


FROST = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST_CACHE: dict = {}
_FROST_CACHE_MAX = 48


def frost_layer(idx: int, h: int, w: int) -> "np.ndarray":
    """The reference's frost photograph ``idx`` decoded and resized (OpenCV, bicubic) for an h x w image,
    BGR uint8 (H', W', 3): exactly the array ``imagecorruptions.frost`` crops from. Needs the reference
    package (its photographs and OpenCV); cached per (photo, image size) since it does not depend on the
    image's pixels or on any random draw."""
    import importlib.resources

    import numpy as np

    key = (idx, h, w)
    if key in _FROST_CACHE:
        return _FROST_CACHE[key]
    try:
        import cv2
        import imagecorruptions
    except Exception as e:
        from ..errors import RbsegError
        from .reference import INSTALL_HINT

        raise RbsegError(f"frost needs the reference package's photographs and OpenCV ({type(e).__name__}: {e}); "
                         f"install them with {INSTALL_HINT}") from None
    ref = importlib.resources.files(imagecorruptions) / "frost" / FROST_FILES[idx]
    with importlib.resources.as_file(ref) as path:
        frost = cv2.imread(str(path))
    fh, fw = frost.shape[:2]
    if fh >= h and fw >= w:
        sf = 1
    elif fh < h and fw >= w:
        sf = h / fh
    elif fh >= h and fw < w:
        sf = w / fw
    else:
        sf = np.maximum(h / fh, w / fw)
    sf *= 1.1
    new_shape = (int(np.ceil(fw * sf)), int(np.ceil(fh * sf)))
    out = cv2.resize(frost, dsize=new_shape, interpolation=cv2.INTER_CUBIC)
    if len(_FROST_CACHE) >= _FROST_CACHE_MAX:
        _FROST_CACHE.pop(next(iter(_FROST_CACHE)))
    _FROST_CACHE[key] = out
    return out


def draw_frost(x, severity, seeds):
    """(photo index, crop row, crop column) per image, each uniform over the reference's ranges."""
    from . import rng

    n, _, h, w = x.shape
    u = rng.uniform(seeds, (3,), 10, "cpu")                            # (N, 3)
    idx = torch.clamp(torch.floor(u[:, 0] * 6), max=5).to(torch.int64)
    rows, cols = [], []
    for k, (a, b) in enumerate(u[:, 1:].tolist()):                     # scalars only: the ranges per photo
        fh, fw = frost_layer(int(idx[k]), h, w).shape[:2]
        rows.append(min(int(a * (fh - h)), fh - h - 1))
        cols.append(min(int(b * (fw - w)), fw - w - 1))
    return idx, torch.tensor(rows), torch.tensor(cols)


def apply_frost(x, severity, draws):
    """``c0 * x + c1 * crop`` of the photograph (RGB), clipped to 0-255; the crops are gathered per
    photograph (at most 6 groups), every image of a group at once."""
    idx, rows, cols = (torch.as_tensor(d, dtype=torch.int64) for d in draws)
    c0, c1 = FROST[severity - 1]
    n, _, h, w = x.shape
    dev = x.device
    layer = torch.empty(n, 3, h, w, dtype=torch.float64, device=dev)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    for k in sorted(set(idx.tolist())):
        sel = torch.nonzero(idx == k).reshape(-1)
        photo = torch.from_numpy(frost_layer(k, h, w)[..., ::-1].copy()).to(dev)      # BGR -> RGB, (H', W', 3)
        r = (rows[sel][:, None] + ar_h[None, :]).to(dev)
        c = (cols[sel][:, None] + ar_w[None, :]).to(dev)
        crop = photo[r[:, :, None], c[:, None, :]]                                     # (n_k, h, w, 3)
        layer[sel.to(dev)] = crop.permute(0, 3, 1, 2).to(torch.float64)
    return torch.clamp(c0 * x + c1 * layer, 0, 255)
