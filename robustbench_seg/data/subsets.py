"""The evaluation subsets of the paper (Table 2, Table 3, Figure 4), as defined in NOTES.md.

On the evaluated split (VOC 2012 val by default):

- ``occ1``: at least one Annotations-XML object has ``occluded=1``; ``occall``: every object is
  occluded (images with no objects belong to neither).
- ``obj1``..``obj4``: exactly k object instances: the distinct instance ids of
  ``SegmentationObject/<id>.png`` (0 = background and 255 = void excluded), or, for an image with
  no instance mask, the number of objects in its Annotations XML.
- ``uniq2``..``uniq4``: exactly k distinct foreground classes in the ground-truth mask.
- ``person-<c>`` / ``only-<c>`` for c in horse, motorbike, bicycle, bottle, car: the mask's
  foreground classes are exactly {c, person} / exactly {c}. Table 3 reports the IoU of class c.
- ``cooc50`` .. ``cooc10``: images with at least two foreground classes in which every pair of
  their classes co-occurs in fewer than T images of the co-occurrence splits (default train_aug and
  val; a split without a split list is dropped with a warning naming its file, and both the splits
  used and the missing ones are recorded: ``cooccur_splits_used`` / ``cooccur_splits_missing``).
  Threshold scaling (``cooc_scale``): the paper's T = 50/40/30/20/10 count co-occurrences among
  VOC's 12,031 train_aug + val images; on a smaller tree the same T would select almost every
  multi-class image at every threshold. With scaling on, each T becomes ``round(T * n / 12031)``
  (n = images counted; kept >= 5, 4, 3, 2, 1 and strictly decreasing, so the five thresholds stay
  distinct), never scaled up. ``"auto"`` (default) scales a SynthVOC tree whose ``synthvoc.json``
  asks for it (``cooc_threshold_scaling``: the ``bench`` preset; the legacy ``tiny``/``micro`` trees
  keep the paper's values until the shipped zoo is regenerated) and any other tree (real VOC) not;
  the thresholds used are recorded (``cooc_thresholds``, ``cooc_scaling``). The subset names stay
  ``cooc50``..``cooc10`` (the paper's rows).

A subset whose annotations the tree lacks for some image of the split is *unavailable* (with the
reason), never empty: a subset computed on part of the split would silently be a different subset.
Ids keep the split-list order.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from ..constants import CLASS_INDEX, IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES
from ..errors import DataError, RbsegError
from . import voc
from .stats import class_sets, cooccurrence_matrix, existing_splits, foreground, merged_class_sets

OCCLUSION_SUBSETS = ("occ1", "occall")
OBJECT_COUNTS = (1, 2, 3, 4)
UNIQUE_COUNTS = (2, 3, 4)
TABLE3_CLASSES = ("horse", "motorbike", "bicycle", "bottle", "car")
COOC_THRESHOLDS = (50, 40, 30, 20, 10)
# VOC 2012 train_aug (10,582) + val (1,449): the images the paper's thresholds count co-occurrences in
VOC_COOCCUR_IMAGES = 10582 + 1449
COOC_SCALE_MODES = ("auto", "on", "off")
DEFAULT_COOCCUR_SPLITS = ("train_aug", "val")

SUBSET_NAMES: tuple[str, ...] = (
    *OCCLUSION_SUBSETS,
    *(f"obj{k}" for k in OBJECT_COUNTS),
    *(f"uniq{k}" for k in UNIQUE_COUNTS),
    *(f"person-{c}" for c in TABLE3_CLASSES),
    *(f"only-{c}" for c in TABLE3_CLASSES),
    *(f"cooc{t}" for t in COOC_THRESHOLDS),
)

_PERSON = CLASS_INDEX["person"]


def subset_class(name: str) -> int | None:
    """Class index whose IoU Table 3 reports for ``person-<c>`` / ``only-<c>``; None for other subsets."""
    if name not in SUBSET_NAMES:
        raise RbsegError(f"unknown subset '{name}' (known: {', '.join(SUBSET_NAMES)})")
    prefix, _, cls = name.partition("-")
    return CLASS_INDEX[cls] if prefix in ("person", "only") else None


# --- the definitions, as pure functions of per-image facts -------------------------------------

def occlusion_subsets(occluded_flags: Mapping[str, Sequence[bool]]) -> dict[str, list[str]]:
    """``occ1`` / ``occall`` from each image's per-object occluded flags."""
    return {
        "occ1": [i for i, flags in occluded_flags.items() if any(flags)],
        "occall": [i for i, flags in occluded_flags.items() if len(flags) > 0 and all(flags)],
    }


def object_count_subsets(counts: Mapping[str, int]) -> dict[str, list[str]]:
    """``obj<k>``: images with exactly k object instances."""
    return {f"obj{k}": [i for i, n in counts.items() if n == k] for k in OBJECT_COUNTS}


def class_set_subsets(fg_sets: Mapping[str, frozenset[int]]) -> dict[str, list[str]]:
    """``uniq<k>``, ``person-<c>``, ``only-<c>`` from each image's foreground class set."""
    out = {f"uniq{k}": [i for i, s in fg_sets.items() if len(s) == k] for k in UNIQUE_COUNTS}
    for c in TABLE3_CLASSES:
        out[f"person-{c}"] = [i for i, s in fg_sets.items() if s == {CLASS_INDEX[c], _PERSON}]
    for c in TABLE3_CLASSES:
        out[f"only-{c}"] = [i for i, s in fg_sets.items() if s == {CLASS_INDEX[c]}]
    return out


def max_pair_count(fg: frozenset[int], cooc: np.ndarray) -> int | None:
    """Largest co-occurrence count over the pairs of an image's foreground classes (None if < 2 classes)."""
    pairs = list(combinations(sorted(fg), 2))
    return max(int(cooc[a, b]) for a, b in pairs) if pairs else None


def cooccurrence_subsets(fg_sets: Mapping[str, frozenset[int]], cooc: np.ndarray,
                         thresholds: Sequence[int] = COOC_THRESHOLDS) -> dict[str, list[str]]:
    """``cooc<T>``: >= 2 foreground classes and every pair's count < the threshold used for T
    (``thresholds[k]`` for the paper's ``COOC_THRESHOLDS[k]``; the paper's own values by default)."""
    worst = {i: max_pair_count(s, cooc) for i, s in fg_sets.items()}
    return {f"cooc{t}": [i for i, m in worst.items() if m is not None and m < used]
            for t, used in zip(COOC_THRESHOLDS, thresholds)}


def scaled_thresholds(n_images: int, reference: int = VOC_COOCCUR_IMAGES,
                      base: Sequence[int] = COOC_THRESHOLDS) -> tuple[int, ...]:
    """The paper's thresholds scaled by ``n_images / reference`` (never up), rounded, kept >= 5, 4, 3,
    2, 1 and strictly decreasing so that five distinct thresholds remain."""
    factor = min(1.0, max(0, n_images) / reference)
    k = len(base)
    out: list[int] = []
    for i, t in enumerate(base):
        v = max(int(round(t * factor)), k - i)
        if out:
            v = min(v, out[-1] - 1)
        out.append(v)
    return tuple(out)


def tree_asks_scaling(root: str | Path) -> bool:
    """A SynthVOC tree whose ``synthvoc.json`` asks for scaled thresholds (``cooc_threshold_scaling``:
    the ``bench`` preset; the ``tiny``/``micro`` trees keep the paper's values). Any other tree (real
    VOC): False."""
    return (voc.synth_meta(root) or {}).get("cooc_threshold_scaling") is True


# --- reading the per-image facts from a tree ----------------------------------------------------

def instance_count(path: str | Path) -> int:
    """Distinct instance ids of a SegmentationObject PNG (0 and 255 excluded)."""
    inst, _ = voc.read_label_png(path)
    return int(sum(1 for v in np.unique(inst) if v not in (0, IGNORE_INDEX)))


def _missing_reason(what: str, missing: list[str], total: int) -> str:
    examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return f"no {what} for {len(missing)} of {total} images (e.g. {examples})"


class CooccurSplitMissing(UserWarning):
    """A requested co-occurrence split has no split list: it is left out of the co-occurrence counts."""


def cooccur_missing_message(root: Path, split: str) -> str:
    """One line naming the missing split file."""
    return (f"{voc.split_file(root, split)}: co-occurrence split '{split}' has no split list; "
            f"left out of the co-occurrence counts (cooc50-cooc10)")


@dataclass
class SubsetReport:
    split: str
    subsets: dict[str, list[str]]  # available subsets, in SUBSET_NAMES order
    unavailable: dict[str, str]  # name -> reason
    cooccurrence: np.ndarray  # (21, 21) int64 over cooccur_splits
    cooccur_splits: list[str]  # the splits actually counted
    requested_cooccur_splits: list[str] = field(default_factory=list)
    cooccur_splits_missing: list[str] = field(default_factory=list)  # requested, but without a split list
    cooc_thresholds: dict[str, int] = field(default_factory=lambda: {f"cooc{t}": t for t in COOC_THRESHOLDS})
    cooc_scaling: dict = field(default_factory=lambda: {"mode": "off", "scaled": False})

    @property
    def cooccur_splits_used(self) -> list[str]:
        """The co-occurrence splits actually counted (the name results record)."""
        return list(self.cooccur_splits)

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "subsets": {name: list(ids) for name, ids in self.subsets.items()},
            "unavailable": dict(self.unavailable),
            "cooccur_splits_used": list(self.cooccur_splits),
            "cooccur_splits_missing": list(self.cooccur_splits_missing),
            "cooc_thresholds": dict(self.cooc_thresholds),
            "cooc_scaling": dict(self.cooc_scaling),
            "cooccurrence": {
                "splits": list(self.cooccur_splits),
                "classes": list(VOC_CLASSES),
                "matrix": self.cooccurrence.astype(int).tolist(),
            },
        }


def compute_subsets(
    root: str | Path,
    split: str = "val",
    cooccur_splits: Sequence[str] = DEFAULT_COOCCUR_SPLITS,
    progress: bool = False,
    cooc_scale: str = "auto",
) -> SubsetReport:
    """Every subset of :data:`SUBSET_NAMES` on ``split`` (available ones, and why the others are not).

    ``cooc_scale``: ``"auto"`` (scale the co-occurrence thresholds on a SynthVOC tree, keep the
    paper's elsewhere), ``"on"`` or ``"off"`` (module docstring)."""
    if cooc_scale not in COOC_SCALE_MODES:
        raise RbsegError(f"cooc_scale must be one of {', '.join(COOC_SCALE_MODES)}, got {cooc_scale!r}")
    root = voc.resolve_root(root)
    ids = list(dict.fromkeys(voc.read_split(root, split)))
    if not ids:
        raise DataError(f"split '{split}' lists no ids", voc.split_file(root, split))
    fg_sets = {i: foreground(s) for i, s in class_sets(root, split, progress=progress).items()}
    found: dict[str, list[str]] = {}
    unavailable: dict[str, str] = {}

    # Annotations XML: occlusion flags, and the object count fallback.
    xml_objects = {i: voc.read_annotation(voc.annotation_path(root, i))
                   for i in ids if voc.annotation_path(root, i).is_file()}
    no_xml = [i for i in ids if i not in xml_objects]
    if no_xml:
        reason = _missing_reason("Annotations/*.xml", no_xml, len(ids))
        unavailable.update({name: reason for name in OCCLUSION_SUBSETS})
    else:
        found.update(occlusion_subsets({i: [o.occluded for o in xml_objects[i]] for i in ids}))

    counts: dict[str, int] = {}
    for i in ids:
        inst = voc.instance_path(root, i)
        if inst.is_file():
            counts[i] = instance_count(inst)
        elif i in xml_objects:
            counts[i] = len(xml_objects[i])
    no_count = [i for i in ids if i not in counts]
    if no_count:
        reason = _missing_reason("SegmentationObject/*.png or Annotations/*.xml", no_count, len(ids))
        unavailable.update({f"obj{k}": reason for k in OBJECT_COUNTS})
    else:
        found.update(object_count_subsets(counts))

    found.update(class_set_subsets(fg_sets))

    requested = list(dict.fromkeys(cooccur_splits))
    used = existing_splits(root, requested)
    missing = [s for s in requested if s not in used]
    for s in missing:
        warnings.warn(cooccur_missing_message(root, s), CooccurSplitMissing, stacklevel=2)
    thresholds = tuple(COOC_THRESHOLDS)
    scale = cooc_scale == "on" or (cooc_scale == "auto" and tree_asks_scaling(root))
    scaling: dict = {"mode": cooc_scale, "scaled": False}
    if used:
        merged = merged_class_sets(root, used, progress=progress)
        cooc = cooccurrence_matrix(merged)
        if scale:
            thresholds = scaled_thresholds(len(merged))
            scaling = {"mode": cooc_scale, "scaled": thresholds != tuple(COOC_THRESHOLDS),
                       "cooccur_images": len(merged), "reference_images": VOC_COOCCUR_IMAGES,
                       "factor": round(min(1.0, len(merged) / VOC_COOCCUR_IMAGES), 6)}
        found.update(cooccurrence_subsets(fg_sets, cooc, thresholds))
    else:
        cooc = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        reason = f"none of the co-occurrence splits ({', '.join(requested) or 'none given'}) has a split list"
        unavailable.update({f"cooc{t}": reason for t in COOC_THRESHOLDS})

    return SubsetReport(
        split=split,
        subsets={name: found[name] for name in SUBSET_NAMES if name in found},
        unavailable={name: unavailable[name] for name in SUBSET_NAMES if name in unavailable},
        cooccurrence=cooc,
        cooccur_splits=used,
        requested_cooccur_splits=requested,
        cooccur_splits_missing=missing,
        cooc_thresholds={f"cooc{t}": int(u) for t, u in zip(COOC_THRESHOLDS, thresholds)},
        cooc_scaling=scaling,
    )
