"""Score a folder of prediction PNGs from any framework against a VOC split's ground truth.

Predictions are index images, one ``<id>.png`` per id of the split: palette ('P') or plain 8-bit
('L') PNGs of class indices 0-20, at the ground truth's size. The scores come from the suite's one
metric (:func:`confusion_matrix` accumulated over the split, then :func:`metrics_from_confusion`).

Every problem with the predictions (missing, extra, unreadable, mis-sized, values outside 0-20) is
collected over the whole folder first and raised as one line naming the ids.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..constants import NUM_CLASSES
from ..data import voc
from ..errors import DataError
from ..io import ids_hash
from .metric import SegMetrics, confusion_matrix, metrics_from_confusion


def format_ids(ids: Sequence[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class ScoreResult:
    data: str
    split: str
    pred_dir: str
    n_images: int
    ids_hash: str
    metrics: SegMetrics
    confusion: np.ndarray  # (21, 21) int64, rows = ground truth, columns = prediction

    def to_json(self) -> dict:
        return {
            "data": self.data,
            "split": self.split,
            "pred_dir": self.pred_dir,
            "n_images": self.n_images,
            "ids_hash": self.ids_hash,
            "metrics": self.metrics.to_dict(),
        }


def check_prediction_files(pred_dir: Path, ids: Sequence[str], split: str) -> dict[str, Path]:
    """``{id: path}`` for every id; raises one DataError naming missing and extra predictions."""
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found", pred_dir)
    found = {p.stem: p for p in sorted(pred_dir.glob("*.png"))}
    missing = [i for i in ids if i not in found]
    wanted = set(ids)
    extra = [i for i in found if i not in wanted]
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'prediction')} missing for split '{split}': {format_ids(missing)}")
    if extra:
        parts.append(f"{_count(len(extra), 'extra prediction')} for ids not in split '{split}': {format_ids(extra)}")
    if parts:
        raise DataError("; ".join(parts), pred_dir)
    return {i: found[i] for i in ids}


def score_predictions(
    pred_dir: str | Path,
    root: str | Path,
    split: str = "val",
    ids: Sequence[str] | None = None,
    progress: bool = False,
) -> ScoreResult:
    """mIoU and friends of the predictions in ``pred_dir`` against ``split`` (or the given ``ids``)."""
    from rich.console import Console
    from rich.progress import track

    root = voc.resolve_root(root)
    pred_dir = Path(pred_dir).expanduser()
    ids = list(dict.fromkeys(ids if ids is not None else voc.read_split(root, split)))
    if not ids:
        raise DataError(f"split '{split}' lists no ids", voc.split_file(root, split))
    files = check_prediction_files(pred_dir, ids, split)

    bad: dict[str, list[str]] = {"unreadable or not an index PNG": [], "of the wrong size": [], "with values outside 0-20": []}
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for image_id in track(ids, description="scoring", disable=not progress, transient=True,
                          console=Console(stderr=True)):
        gt = voc.read_mask(voc.mask_path(root, image_id, split))
        try:
            pred, _ = voc.read_label_png(files[image_id])
        except DataError:
            bad["unreadable or not an index PNG"].append(image_id)
            continue
        if pred.shape != gt.shape:
            bad["of the wrong size"].append(f"{image_id} ({pred.shape[1]}x{pred.shape[0]}, gt {gt.shape[1]}x{gt.shape[0]})")
            continue
        if int(pred.max()) >= NUM_CLASSES:
            bad["with values outside 0-20"].append(image_id)
            continue
        if not any(bad.values()):
            cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt))
    problems = [f"{_count(len(v), 'prediction')} {k}: {format_ids(v)}" for k, v in bad.items() if v]
    if problems:
        raise DataError("; ".join(problems), pred_dir)
    return ScoreResult(
        data=str(root),
        split=split,
        pred_dir=str(pred_dir),
        n_images=len(ids),
        ids_hash=ids_hash(ids),
        metrics=metrics_from_confusion(cm),
        confusion=cm.numpy(),
    )
