"""Predictions for any folder of images (or a split's ids): VOC-palette label PNGs and confidence maps.

Layout under ``out``:

- ``pred/<stem>.png``: the predicted labels as a VOC palette PNG at the image's size;
- ``confidence/<stem>.png`` (with ``confidence=True``): the max softmax probability per pixel, jet
  colormap (blue = low, red = high); for a binding model also ``confidence-dominant/`` and
  ``confidence-phantom/`` (the S_t and S_p branches, the paper's Figure 2);
- with ``voc_submission=True`` the labels go instead to
  ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``, the VOC evaluation server's layout.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import voc
from ..data.voc import write_index_png
from ..errors import DataError, RbsegError
from ..io import atomic_write_bytes
from ..io import probe_writable
from .engine import (
    EvalImages, EvaluationWarning, NonFiniteLogits, _ids_text, at_input_size, batch_loader, default_num_workers,
    forward_outputs, image_size, model_failure, progress_bar, resolve_device, resolve_dtype, resolve_model, size_batches,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
SUBMISSION_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
BRANCHES = {"out": "confidence", "dominant": "confidence-dominant", "phantom": "confidence-phantom"}


@dataclass
class PredictSummary:
    model: dict
    out: Path
    n_images: int
    label_dir: Path
    confidence_dirs: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "out": str(self.out), "n_images": self.n_images, "label_dir": str(self.label_dir),
                "confidence_dirs": [str(p) for p in self.confidence_dirs]}


def folder_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder not found", folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", folder)
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise DataError(f"several images share a name ({', '.join(dup[:3])}): outputs would overwrite each other", folder)
    return paths


def split_images(data_root: str | Path, split: str) -> list[Path]:
    root = voc.resolve_root(data_root)
    return [voc.image_path(root, i) for i in voc.read_split(root, split)]


def jet_png(values: np.ndarray) -> bytes:
    """H x W values in [0, 1] -> RGB PNG bytes with matplotlib's jet colormap."""
    from matplotlib import colormaps

    rgb = (colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def predict_images(
    model_spec,
    image_paths: Sequence[Path],
    out: str | Path,
    confidence: bool = False,
    voc_submission: bool = False,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    weights: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> PredictSummary:
    """Write label PNGs (and confidence maps) for ``image_paths`` under ``out`` (layout: module doc)."""
    if batch_size < 1:
        raise RbsegError(f"batch size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise RbsegError("no images to predict")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    out = Path(out)
    probe_writable(out, "output folder")  # a read-only or full disk fails before the model runs
    model, model_rec = resolve_model(model_spec, dev, weights, model_name)
    if not model_rec.get("finished", True):
        warnings.warn(f"model '{model_rec['name']}' comes from an unfinished training run (the checkpoint of a "
                      "stopped or running job)", EvaluationWarning, stacklevel=2)
    label = str(model_rec.get("spec") or model_rec["name"])
    names = [p.name for p in paths]
    label_dir = out / (SUBMISSION_DIR if voc_submission else Path("pred"))
    batches = size_batches([image_size(p) for p in paths], batch_size)
    loader = batch_loader(EvalImages(paths), batches, dev, default_num_workers(dev) if num_workers is None else num_workers)
    written_conf: set[Path] = set()
    bar = progress_bar(progress, f"predicting {len(paths)} images", len(batches), 0)
    batch_no = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                if isinstance(batch, str):
                    raise RbsegError(batch)
                images, _, index, _ = batch
                x = images.to(dev).float()
                batch_no += 1
                try:
                    outputs = forward_outputs(model, x, torch_dtype)
                    size = x.shape[-2:]
                    logits = at_input_size(outputs["out"], size).float()
                except RbsegError:
                    raise
                except Exception as exc:  # the model's own error: one line (traceback: rbseg --debug)
                    raise model_failure(label, exc, batch_no, len(batches), names, index) from exc
                finite = torch.isfinite(logits).flatten(1).all(1)
                if not bool(finite.all()):
                    raise NonFiniteLogits(f"model '{label}' returned non-finite logits (NaN or inf) on batch {batch_no} "
                                          f"of {len(batches)} (images {_ids_text(names, index[~finite.cpu()])})")
                labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
                conf = {}
                if confidence:
                    for key, folder in BRANCHES.items():
                        t = outputs.get(key)
                        if isinstance(t, torch.Tensor) and t.ndim == 4:
                            probs = at_input_size(t, size).float().softmax(1)
                            conf[folder] = probs.max(1).values.cpu().numpy()
                for b, k in enumerate(index.tolist()):
                    stem = paths[k].stem
                    write_index_png(label_dir / f"{stem}.png", labels[b])
                    for folder, maps in conf.items():
                        atomic_write_bytes(out / folder / f"{stem}.png", jet_png(maps[b]))
                        written_conf.add(out / folder)
                if bar is not None:
                    bar.advance(bar.task_ids[0])
    finally:
        if bar is not None:
            bar.stop()
    return PredictSummary(model_rec, out, len(paths), label_dir, sorted(written_conf))
