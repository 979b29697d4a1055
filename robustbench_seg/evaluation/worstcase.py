"""Worst case over several attacks, per image (SEA's protocol), from stored per-image statistics.

Per-image statistics (:func:`per_image_stats`, :func:`stats_from_confusion`): an int64 tensor
``(N, C, 3)``; for image n and class c: ``[..., 0]`` intersection (pixels of class c predicted c),
``[..., 1]`` union (ground-truth area + predicted area - intersection), ``[..., 2]`` ground-truth
area. Void pixels are ignored. All three add up over images, so a dataset's (or subset's) totals are
sums, and its mIoU follows from :func:`metric.miou_from_inter_union` (the rule of
:func:`metric.metrics_from_confusion`). Stack one such tensor per attack to ``(A, N, C, 3)``: the
worst case can be recomputed whenever an attack is added without re-running the others.

* Pixel accuracy decomposes over images: :func:`worst_case_pixel_acc` takes, per image, the attack
  with the lowest pixel accuracy (ties: the first attack).
* mIoU does not: :func:`greedy_worst_case` is SEA's greedy search. Start from the attack with the
  lowest dataset mIoU (``start="attack"``, ties: the first) or from the per-image pixel-accuracy
  choice (``start="pixel-acc"``); then, image by image in order, switch the image to the attack that
  lowers the dataset mIoU most (strictly, by more than ``tol`` points); a pass over all images is a
  round; stop after a round without a switch (``converged``) or after ``max_rounds``. The result is
  a 1-switch local minimum: never above the best single attack, never below the exact minimum over
  all ``A ** N`` assignments.

For a subset, pass its images' rows: ``greedy_worst_case(stats[:, index])``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..constants import IGNORE_INDEX, NUM_CLASSES
from .metric import batched_confusion_matrix, miou_from_inter_union

STAT_FIELDS = ("intersection", "union", "gt_area")


def stats_from_confusion(cms: torch.Tensor) -> torch.Tensor:
    """Per-image confusion matrices (N, C, C) (rows = ground truth) -> (N, C, 3) int64."""
    cms = torch.as_tensor(cms).long()
    inter = torch.diagonal(cms, dim1=-2, dim2=-1)
    gt = cms.sum(-1)
    pred = cms.sum(-2)
    return torch.stack([inter, gt + pred - inter, gt], dim=-1)


def per_image_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N, H, W) predictions and ground truth -> (N, C, 3) int64 (via ``batched_confusion_matrix``)."""
    return stats_from_confusion(batched_confusion_matrix(pred, target, num_classes, ignore_index))


def _np(stats) -> np.ndarray:
    return stats.detach().cpu().numpy() if isinstance(stats, torch.Tensor) else np.asarray(stats)


def dataset_miou(stats) -> float:
    """mIoU (percent) of the images of one (N, C, >=2) statistics tensor."""
    s = _np(stats).sum(0)
    return float(miou_from_inter_union(s[..., 0], s[..., 1]))


def pixel_acc_per_image(stats) -> np.ndarray:
    """(..., N, C, 3) -> (..., N) pixel accuracy in [0, 1]; nan for an image without labelled pixels."""
    s = _np(stats)
    if s.shape[-1] < 3:
        raise ValueError("pixel accuracy needs the ground-truth area (statistics with 3 fields)")
    correct, total = s[..., 0].sum(-1).astype(np.float64), s[..., 2].sum(-1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, correct / np.where(total > 0, total, 1), np.nan)


@dataclass
class WorstCase:
    choice: np.ndarray  # (N,) index of the attack chosen per image
    miou: float  # percent, of the chosen combination
    pixel_acc: float  # percent, of the chosen combination (nan without ground-truth areas)
    stats: np.ndarray  # (N, C, F) the chosen images' statistics
    per_attack_miou: list[float]  # dataset mIoU of each single attack
    rounds: int = 0  # passes over the images (greedy)
    swaps: int = 0  # attack switches made (greedy)
    converged: bool = True  # the last round made no switch
    start: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        nan = lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)  # noqa: E731
        return {"choice": [int(c) for c in self.choice], "miou": nan(self.miou), "pixel_acc": nan(self.pixel_acc),
                "per_attack_miou": [nan(v) for v in self.per_attack_miou], "rounds": self.rounds,
                "swaps": self.swaps, "converged": self.converged, "start": self.start}


def _check(stats) -> np.ndarray:
    s = _np(stats)
    if s.ndim != 4 or s.shape[-1] not in (2, 3):
        raise ValueError(f"expected statistics (attacks, images, classes, 2 or 3), got {s.shape}")
    if s.shape[0] < 1:
        raise ValueError("no attacks")
    return s.astype(np.int64)


def _pixel_acc_total(chosen: np.ndarray) -> float:
    if chosen.shape[-1] < 3:
        return float("nan")
    total = chosen[..., 2].sum()
    return float(chosen[..., 0].sum() / total * 100) if total > 0 else float("nan")


def _per_attack_miou(s: np.ndarray) -> np.ndarray:
    tot = s.sum(1)  # (A, C, F)
    return miou_from_inter_union(tot[..., 0], tot[..., 1])


def worst_case_pixel_acc(stats) -> WorstCase:
    """Per image the attack with the lowest pixel accuracy (stats (A, N, C, 3)); an image without
    labelled pixels keeps attack 0. ``miou`` is that combination's dataset mIoU (SEA's released
    code reports it as the worst-case mIoU; :func:`greedy_worst_case` searches lower)."""
    s = _check(stats)
    acc = pixel_acc_per_image(s)  # (A, N)
    choice = np.argmin(np.where(np.isnan(acc), np.inf, acc), axis=0)
    chosen = s[choice, np.arange(s.shape[1])]
    tot = chosen.sum(0)
    return WorstCase(choice=choice, miou=float(miou_from_inter_union(tot[:, 0], tot[:, 1])),
                     pixel_acc=_pixel_acc_total(chosen), stats=chosen, per_attack_miou=list(_per_attack_miou(s)),
                     start="pixel-acc", extra={"per_image_pixel_acc": acc[choice, np.arange(s.shape[1])]})


def greedy_worst_case(stats, max_rounds: int = 10, start: str = "attack", tol: float = 1e-9) -> WorstCase:
    """SEA's greedy worst-case mIoU over attacks (see the module docstring); stats (A, N, C, 2|3)."""
    s = _check(stats)
    n_att, n_img = s.shape[:2]
    per_attack = _per_attack_miou(s)
    if start == "attack":
        first = int(np.argmin(np.where(np.isnan(per_attack), np.inf, per_attack)))
        choice = np.full(n_img, first, dtype=np.int64)
    elif start == "pixel-acc":
        choice = worst_case_pixel_acc(s).choice.astype(np.int64)
    else:
        raise ValueError(f"start must be 'attack' or 'pixel-acc', got {start!r}")
    iu = s[..., :2]  # (A, N, C, 2)
    current = iu[choice, np.arange(n_img)].sum(0)  # (C, 2)
    cur_miou = float(miou_from_inter_union(current[:, 0], current[:, 1]))
    rounds = swaps = 0
    converged = n_att == 1 or n_img == 0
    while not converged and rounds < max_rounds:
        rounds += 1
        changed = False
        for i in range(n_img):
            cand = current[None] - iu[choice[i], i][None] + iu[:, i]  # (A, C, 2)
            m = miou_from_inter_union(cand[..., 0], cand[..., 1])
            m = np.where(np.isnan(m), np.inf, m)
            best = int(np.argmin(m))
            if m[best] < cur_miou - tol:
                choice[i] = best
                current = cand[best]
                cur_miou = float(m[best])
                swaps += 1
                changed = True
        converged = not changed
    chosen = s[choice, np.arange(n_img)]
    return WorstCase(choice=choice, miou=cur_miou, pixel_acc=_pixel_acc_total(chosen), stats=chosen,
                     per_attack_miou=list(per_attack), rounds=rounds, swaps=swaps, converged=converged, start=start)
