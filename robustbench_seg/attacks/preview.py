"""A PNG preview of a perturbation: the pattern itself and an example image before and after.

Panel 1 shows the perturbation scaled to 0-255 around 128 (``128 + 127 * v / max|v|``, so a
zero offset is mid-grey and the largest offset is black or white); panels 2 and 3 show an
example image clean and perturbed with :func:`apply_perturbation` (the suite's fit and clip
defaults unless told otherwise). Panels are enlarged with nearest-neighbour sampling so small
SynthVOC-sized patterns stay visible.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import atomic_write_bytes
from .apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation
from .perturbation import Perturbation

MIN_PANEL = 224


def visualise(array: np.ndarray) -> np.ndarray:
    """(3, H, W) offsets -> (H, W, 3) uint8, 128 + 127 * v / max|v| (all-zero -> flat grey)."""
    peak = float(np.abs(array).max())
    scaled = 128.0 + (127.0 * array / peak if peak > 0 else 0.0 * array)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def example_card(height: int = 128, width: int = 128) -> np.ndarray:
    """A deterministic example image (colour gradient with a few shapes) when no dataset is at hand."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1), 128 + 0 * xx], axis=-1)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    draw.ellipse([width * 0.15, height * 0.2, width * 0.5, height * 0.6], fill=(220, 40, 40))
    draw.rectangle([width * 0.55, height * 0.45, width * 0.9, height * 0.85], fill=(30, 160, 60))
    return np.array(pil)


def _panel(img: np.ndarray, scale: int) -> Image.Image:
    pil = Image.fromarray(img)
    return pil.resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST) if scale > 1 else pil


def render_preview(
    pert: Perturbation,
    image: np.ndarray,
    out_png: str | Path,
    fit: FitMode | str = DEFAULT_FIT,
    clip: bool = DEFAULT_CLIP,
) -> Path:
    """Write [perturbation | clean image | perturbed image] as one PNG (atomically)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    perturbed = apply_perturbation(x, pert.tensor(), fit=fit, clip=clip)
    shown = perturbed.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pat = visualise(pert.array)
    s_pat = max(1, -(-MIN_PANEL // max(pat.shape[:2])))
    s_img = max(1, -(-MIN_PANEL // max(image.shape[:2])))
    panels = [_panel(pat, s_pat), _panel(image, s_img), _panel(shown, s_img)]
    gap = 8
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x0 = 0
    for p in panels:
        canvas.paste(p, (x0, 0))
        x0 += p.width + gap
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(out_png, buf.getvalue())
