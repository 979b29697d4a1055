"""SegMix (IJCV 2023, Sect. 3.1.2, Algorithms 1-2): co-occurrence-driven in-batch blending, ``--blend cm``.

Small pure functions; :func:`cm_pairs` puts them together for one training batch.

* :func:`cooccurrence_ss` -- the "co-occurrence matrix" ``C_ss`` (20 x 20 int64, foreground classes
  1..20 at rows/columns 0..19): ``C_ss[i][j]`` = number of training images whose ground truth holds
  both i and j; raw counts, diagonal 0. Built on :func:`robustbench_seg.data.stats.cooccurrence_matrix`
  (the one co-occurrence count of the suite) from the per-image class sets the trainer already caches.
* :func:`similarity_scores` -- for every image k of a batch and every other image m:
  ``score[k, m] = sum_{i in cats(m), j in cats(k)} C_ss[i][j]`` (``cats`` = unique foreground labels;
  background 0 and void 255 removed); ``score[k, k] = -1`` so an image is never its own partner.
* :func:`choose_partners` -- the argmax partner ("top" image) of each image; ties (including the
  all-zero row of an image with no foreground, or of a batch without co-occurring classes) are
  broken uniformly at random among the maxima with the step's generator, i.e. a pure function of
  (seed, stage, step, rank) = (seed, epoch, batch index, rank) and of the batch's content.
* :func:`draw_delta` -- ``d ~ Beta(alpha, alpha)`` (``alpha == 0``: ``d = 1``), once per batch as in
  the pseudo-code (``per="pair"``: one per image); ``mode="max"`` gives ``max(d, 1 - d)`` so the
  dominant image always carries at least half the weight, ``mode="sym"`` the raw draw.
* :func:`apply_over_limit` -- the "max unique category threshold" gamma: a pair with
  ``|cats(I_m)| + |cats(I_k)| > gamma`` gets ``delta = 0.9`` (``"delta09"``, the paper's default,
  Table 11 "inf + gamma-thres"), or is not blended at all (``"skip"``, Table 11 "max = gamma"), or the
  rule is off (``"none"``, Table 11 "max = inf").

The blend itself, ``I_ss = delta * I_k + (1 - delta) * I_top`` with the labels kept apart (dominant
``G_k``, phantom ``G_top``), and the losses are feature binding's (``mixing.blend``,
``losses.binding_loss``). A skipped pair is a standard image: delta 1 and an all-void phantom label.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..constants import IGNORE_INDEX, NUM_CLASSES

N_FG = NUM_CLASSES - 1  # foreground classes 1..20
OVER_LIMIT_DELTA = 0.9  # the paper's delta for pairs over the gamma threshold
DELTA_MODES = ("max", "sym")
DELTA_DRAWS = ("batch", "pair")
OVER_LIMIT_RULES = ("delta09", "skip", "none")


def cooccurrence_ss(classes_per_image: Sequence[Iterable[int]]) -> np.ndarray:
    """C_ss (20 x 20 int64): images holding both foreground classes i+1 and j+1; diagonal 0.

    ``classes_per_image``: the labels present in each training image (background, void and any
    other label outside 1..20 are ignored)."""
    from ..data.stats import cooccurrence_matrix

    sets = {str(k): frozenset(int(c) for c in cl if 0 < int(c) < NUM_CLASSES) for k, cl in enumerate(classes_per_image)}
    c = cooccurrence_matrix(sets)[1:, 1:].astype(np.int64)
    np.fill_diagonal(c, 0)
    return c


def presence(classes_per_image: Sequence[Iterable[int]]) -> np.ndarray:
    """(n, 20) bool: image k holds foreground class c+1."""
    out = np.zeros((len(classes_per_image), N_FG), dtype=bool)
    for k, cl in enumerate(classes_per_image):
        fg = [int(c) - 1 for c in cl if 0 < int(c) < NUM_CLASSES]
        out[k, fg] = True
    return out


def mask_presence(masks: torch.Tensor) -> np.ndarray:
    """(B, 20) bool from a batch of label maps (B, H, W) on any device: the foreground classes each
    map holds (0 and 255 left out). One bincount on the device, then a (B, 20) copy to the host."""
    b = masks.shape[0]
    flat = masks.reshape(b, -1).long().clamp(0, IGNORE_INDEX)
    offset = torch.arange(b, device=masks.device).unsqueeze(1) * (IGNORE_INDEX + 1)
    counts = torch.bincount((flat + offset).reshape(-1), minlength=b * (IGNORE_INDEX + 1)).view(b, IGNORE_INDEX + 1)
    return (counts[:, 1:NUM_CLASSES] > 0).cpu().numpy()


def similarity_scores(pres: np.ndarray, c_ss: np.ndarray) -> np.ndarray:
    """(B, B) int64: ``score[k, m] = sum_{i in cats(m), j in cats(k)} C_ss[i][j]``; -1 on the diagonal."""
    p = np.asarray(pres, dtype=np.int64)
    s = p @ np.asarray(c_ss, dtype=np.int64).T @ p.T  # s[k, m] = sum_{j in k, i in m} C[i, j]
    np.fill_diagonal(s, -1)
    return s


def choose_partners(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's argmax column (the partner), ties uniform among the maxima (one uniform key per
    cell from ``rng``; the tied cell with the largest key wins). Needs B >= 2."""
    scores = np.asarray(scores)
    b = scores.shape[0]
    if b < 2:
        raise ValueError("co-occurrence blending needs at least two images per batch")
    keys = rng.random((b, b))
    best = scores == scores.max(axis=1, keepdims=True)
    return np.where(best, keys, -1.0).argmax(axis=1)


def draw_delta(alpha: float, n: int, rng: np.random.Generator, mode: str = "max", per: str = "batch") -> np.ndarray:
    """(n,) dominant weights: ``Beta(alpha, alpha)`` (1 when ``alpha == 0``), one draw for the batch
    (``per="batch"``) or one per image; ``mode="max"`` folds it to ``max(d, 1 - d)``."""
    if mode not in DELTA_MODES:
        raise ValueError(f"mode must be one of {DELTA_MODES}")
    if per not in DELTA_DRAWS:
        raise ValueError(f"per must be one of {DELTA_DRAWS}")
    if alpha <= 0:
        return np.ones(n)
    d = np.full(n, rng.beta(alpha, alpha)) if per == "batch" else rng.beta(alpha, alpha, size=n)
    return np.maximum(d, 1.0 - d) if mode == "max" else d


def apply_over_limit(delta: np.ndarray, n_cats: np.ndarray, partner: np.ndarray, gamma: int, rule: str = "delta09") -> tuple[np.ndarray, np.ndarray]:
    """(delta, blended) after the gamma rule: ``n_cats[k] + n_cats[partner[k]] > gamma`` gives
    ``delta = 0.9`` (``delta09``), or delta 1 and ``blended = False`` (``skip``); ``none``: no rule."""
    if rule not in OVER_LIMIT_RULES:
        raise ValueError(f"rule must be one of {OVER_LIMIT_RULES}")
    delta = np.asarray(delta, dtype=np.float64).copy()
    blended = np.ones(len(delta), dtype=bool)
    if rule == "none":
        return delta, blended
    over = (n_cats + n_cats[partner]) > gamma
    if rule == "delta09":
        delta[over] = OVER_LIMIT_DELTA
    else:
        delta[over] = 1.0
        blended[over] = False
    return delta, blended


class CMPairs(NamedTuple):
    partner: np.ndarray  # (B,) index of I_top in the batch
    delta: np.ndarray  # (B,) dominant weight
    blended: np.ndarray  # (B,) False: a skipped pair (standard image)
    scores: np.ndarray  # (B, B)


def cm_pairs(pres: np.ndarray, c_ss: np.ndarray, rng: np.random.Generator, alpha: float, gamma: int,
             mode: str = "max", per: str = "batch", rule: str = "delta09") -> CMPairs:
    """Algorithm 1 for one batch: partners, then delta, then the gamma rule (this draw order is fixed:
    tie keys first, then delta, so a run's randomness is reproducible)."""
    scores = similarity_scores(pres, c_ss)
    partner = choose_partners(scores, rng)
    delta = draw_delta(alpha, len(partner), rng, mode, per)
    n_cats = np.asarray(pres, dtype=bool).sum(axis=1)
    delta, blended = apply_over_limit(delta, n_cats, partner, gamma, rule)
    return CMPairs(partner, delta, blended, scores)
