"""The reference package (``imagecorruptions``, installed from the ``imagecorruptions-imaug`` fork) on CPU.

Used for the corruptions whose definition is sequential or tied to a CPU library (glass blur's
pixel-by-pixel swaps, Pillow's JPEG encoder, OpenCV's Canny in spatter, ...) and by the tests as the
ground truth. Each image is corrupted with NumPy's global generator seeded from its own seed
(and the seed passed to the functions that take one), inside a save/restore of the global state.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import RbsegError

REFERENCE_DIST = "imagecorruptions-imaug"
REFERENCE_PIN = "1.1.5"
INSTALL_HINT = "pip install 'robustbench-seg[corruptions-ref]'  (imagecorruptions-imaug==1.1.5)"
SEEDED_KWARG = {"glass_blur", "impulse_noise"}      # functions taking an explicit ``seed``


def available() -> bool:
    try:
        import imagecorruptions  # noqa: F401
    except Exception:
        return False
    return True


def _module():
    try:
        from imagecorruptions import corruption_dict
    except Exception as e:
        raise RbsegError(f"the reference corruption package is not installed ({type(e).__name__}: {e}); "
                         f"install it with {INSTALL_HINT}") from None
    return corruption_dict


def reference_one(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One HxWx3 uint8 image through the reference, deterministic given ``seed``; returns HxWx3 uint8.

    Same steps as ``imagecorruptions.corrupt`` (PIL image in, ``np.uint8`` of the result: truncation)."""
    from PIL import Image

    fn = _module()[name]
    state = np.random.get_state()
    try:
        np.random.seed(int(seed) & 0xFFFFFFFF)
        kwargs = {"seed": int(seed) & 0xFFFFFFFF} if name in SEEDED_KWARG else {}
        out = fn(Image.fromarray(np.ascontiguousarray(img)), severity, **kwargs)
    finally:
        np.random.set_state(state)
    return np.uint8(out)


def reference_batch(x255, name: str, severity: int, seeds: Sequence[int]):
    """(N, 3, H, W) float 0-255 tensor -> the reference's output as a float32 tensor on the same device."""
    import torch

    imgs = torch.clamp(torch.round(x255.detach().float()), 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    outs = [reference_one(im, name, severity, s) for im, s in zip(imgs, seeds)]
    y = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(torch.float32)
    return y.to(x255.device)
