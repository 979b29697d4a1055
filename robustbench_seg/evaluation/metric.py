"""The one place that computes segmentation scores (mmsegmentation IoUMetric style).

``confusion_matrix`` accumulates counts on whatever device the tensors live on;
``metrics_from_confusion`` turns a (C, C) matrix, rows = ground truth, columns = prediction,
into mIoU and friends. Everything else in the suite calls these two functions.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..constants import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Counts ``cm[g, p]`` of pixels with ground truth g predicted as p; void pixels are ignored.

    ``pred`` and ``target`` are integer tensors of the same shape (any batch layout), on one device.
    Ground-truth values other than 0..num_classes-1 and ``ignore_index`` raise ValueError.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target = target[keep]
    pred = pred[keep]
    _check_label_ranges(pred, target, num_classes, ignore_index)
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _check_label_ranges(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """ValueError when a (non-void) ground-truth or predicted label lies outside 0..num_classes-1."""
    if target.numel():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"ground-truth labels outside 0..{num_classes - 1} and {ignore_index}: min {lo}, max {hi}")
        plo, phi = int(pred.min()), int(pred.max())
        if plo < 0 or phi >= num_classes:
            raise ValueError(f"predicted labels outside 0..{num_classes - 1}: min {plo}, max {phi}")


def intersect_and_union(cm: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class intersection, union, predicted-area and ground-truth-area from a confusion matrix."""
    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    cm = cm.astype(np.float64)
    inter = np.diag(cm)
    area_gt = cm.sum(axis=1)
    area_pred = cm.sum(axis=0)
    union = area_gt + area_pred - inter
    return inter, union, area_pred, area_gt


@dataclass(frozen=True)
class SegMetrics:
    miou: float  # percent; nan when no class has a non-zero union
    iou: list[float]  # per class, percent; nan for classes left out of the mean
    pixel_acc: float  # percent
    mean_acc: float  # percent, over classes present in the ground truth
    classes_counted: int  # classes whose union is non-zero (entered the mean)
    pixels: int  # non-void pixels counted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["miou"] = _nan_to_none(self.miou)
        d["pixel_acc"] = _nan_to_none(self.pixel_acc)
        d["mean_acc"] = _nan_to_none(self.mean_acc)
        d["iou"] = {name: _nan_to_none(v) for name, v in zip(VOC_CLASSES, self.iou)} if len(self.iou) == len(
            VOC_CLASSES
        ) else [_nan_to_none(v) for v in self.iou]
        return d


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def metrics_from_confusion(cm: torch.Tensor | np.ndarray) -> SegMetrics:
    """mIoU = mean IoU over the classes whose union is non-zero (nanmean); the count is reported."""
    inter, union, _, area_gt = intersect_and_union(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
        acc = np.where(area_gt > 0, inter / np.where(area_gt > 0, area_gt, 1), np.nan)
    counted = int(np.sum(union > 0))
    total = float(area_gt.sum())
    miou = float(np.nanmean(iou)) * 100 if counted else math.nan
    mean_acc = float(np.nanmean(acc)) * 100 if np.any(area_gt > 0) else math.nan
    pixel_acc = float(inter.sum() / total) * 100 if total > 0 else math.nan
    return SegMetrics(
        miou=miou,
        iou=[float(v) * 100 if not math.isnan(v) else math.nan for v in iou],
        pixel_acc=pixel_acc,
        mean_acc=mean_acc,
        classes_counted=counted,
        pixels=int(total),
    )


def miou_from_inter_union(inter, union) -> np.ndarray:
    """mIoU (percent) from per-class intersections and unions ``(..., C)``, batched over leading
    dimensions (the per-attack worst-case search evaluates many candidate totals at once): the same
    rule as :func:`metrics_from_confusion` (mean over classes whose union is non-zero, nan when none)."""
    inter = inter.detach().cpu().numpy() if isinstance(inter, torch.Tensor) else np.asarray(inter)
    union = union.detach().cpu().numpy() if isinstance(union, torch.Tensor) else np.asarray(union)
    inter, union = inter.astype(np.float64), union.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    counted = np.sum(union > 0, axis=-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows: nan, as metrics_from_confusion
        miou = np.nanmean(iou, axis=-1) * 100
    return np.where(counted > 0, miou, np.nan)


def class_iou(cm: torch.Tensor | np.ndarray, class_index: int) -> float:
    """IoU (percent) of one class, as Table 3 reports it; nan when its union is zero."""
    return metrics_from_confusion(cm).iou[class_index]


def batched_confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
    validate: bool = True,
) -> torch.Tensor:
    """Per-image confusion matrices in one counting pass: (B, ...) -> (B, C, C), int64.

    ``out[b]`` equals ``confusion_matrix(pred[b], target[b])``: each pixel's bin is offset by its
    image index (b * C * C), void pixels go to one extra bin that is dropped. On CUDA the counts are
    a ``scatter_add_`` into a fixed-size buffer (no host synchronisation); elsewhere ``bincount``.
    ``validate=False`` skips the label-range checks (they synchronise a GPU): only for callers that
    already validated the ground truth and whose predictions are an argmax over ``num_classes``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}")
    if pred.ndim < 1:
        raise ValueError("expected a batch dimension")
    batch = pred.shape[0]
    target = target.reshape(batch, -1).long()
    pred = pred.reshape(batch, -1).long()
    if validate:
        keep = target != ignore_index
        _check_label_ranges(pred[keep], target[keep], num_classes, ignore_index)
    cc = num_classes * num_classes
    dump = batch * cc
    offset = torch.arange(batch, device=pred.device, dtype=torch.long).view(batch, 1) * cc
    index = torch.where(target == ignore_index, dump, offset + target * num_classes + pred).reshape(-1)
    counts = count_bins(index, dump + 1, scatter=index.is_cuda)
    return counts[:dump].view(batch, num_classes, num_classes)


def count_bins(index: torch.Tensor, n_bins: int, scatter: bool = False) -> torch.Tensor:
    """Occurrences of each value 0..n_bins-1 in ``index`` (values must lie in that range), int64.

    ``scatter=True``: ``scatter_add_`` into a fixed-size buffer (no host sync, for CUDA);
    otherwise ``torch.bincount`` (fastest on CPU; synchronises a GPU to size its output).
    """
    if scatter:
        counts = torch.zeros(n_bins, dtype=torch.long, device=index.device)
        return counts.scatter_add_(0, index, torch.ones(1, dtype=torch.long, device=index.device).expand_as(index))
    return torch.bincount(index, minlength=n_bins)
