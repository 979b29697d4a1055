"""Label statistics of a VOC tree: per-image class sets, class frequencies, co-occurrence.

Everything here starts from the per-image *class sets*: the labels (0-20) present in an image's
ground-truth mask, void (255) left out. They are computed once per split and cached, in memory and
on disk under ``cache_dir()/class-sets/`` (keyed by the split list and the size and mtime of every
mask, so an edited tree is re-read), because the subsets and ``rbseg data stats`` both need them
and reading the 10,582 train_aug masks takes a while.

The co-occurrence matrix ``C`` (21 x 21, int64) counts images: ``C[a, b]`` = number of images whose
mask contains both class a and class b; the diagonal ``C[a, a]`` = number of images containing a.
Over several splits an image id is counted once (the first split listing it supplies its mask).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES
from ..errors import DataError
from ..io import atomic_write_json
from ..paths import cache_dir
from . import voc

ClassSets = dict[str, frozenset[int]]

_MEMORY_CACHE: dict[str, ClassSets] = {}
_CACHE_VERSION = 1


def labels_present(mask: np.ndarray) -> frozenset[int]:
    """Labels 0-20 present in a mask (void 255 left out)."""
    return frozenset(int(v) for v in np.unique(mask) if int(v) != IGNORE_INDEX)


def foreground(labels: Iterable[int]) -> frozenset[int]:
    """Foreground classes (1-20) of a label set."""
    return frozenset(c for c in labels if 0 < c < NUM_CLASSES)


def _fingerprint(root: Path, split: str, ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}\n{root.resolve()}\n{split}\n".encode())
    for image_id in ids:
        path = voc.mask_path(root, image_id, split)
        try:
            st = path.stat()
            h.update(f"{image_id} {st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{image_id} missing\n".encode())
    return h.hexdigest()[:32]


def _read_disk_cache(path: Path, ids: Sequence[str]) -> ClassSets | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sets = {k: frozenset(int(c) for c in v) for k, v in data["class_sets"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent or damaged cache: recompute
    if any(i not in sets for i in ids):
        return None
    return {i: sets[i] for i in ids}


def class_sets(root: str | Path, split: str, progress: bool = False, cache: bool = True) -> ClassSets:
    """``{id: labels present in its mask}`` for every id of ``split``, in split-list order.

    Masks are read and validated with :func:`voc.read_mask` (bad labels, unreadable or missing
    masks raise :class:`DataError` naming the file).
    """
    root = voc.resolve_root(root)
    ids = list(dict.fromkeys(voc.read_split(root, split)))
    key = _fingerprint(root, split, ids)
    if cache and key in _MEMORY_CACHE:
        return dict(_MEMORY_CACHE[key])
    disk = cache_dir() / "class-sets" / f"{key}.json"
    sets = _read_disk_cache(disk, ids) if cache else None
    if sets is None:
        from rich.progress import track

        sets = {}
        for image_id in track(ids, description=f"reading {split} masks", disable=not progress, transient=True):
            sets[image_id] = labels_present(voc.read_mask(voc.mask_path(root, image_id, split)))
        if cache:
            try:
                atomic_write_json(disk, {"root": str(root), "split": split,
                                         "class_sets": {k: sorted(v) for k, v in sets.items()}})
            except OSError:
                pass  # a read-only cache only costs a re-read next time
    if cache:
        _MEMORY_CACHE[key] = dict(sets)
    return sets


def merged_class_sets(root: str | Path, splits: Sequence[str], progress: bool = False) -> ClassSets:
    """Class sets over several splits; an id listed in several splits is counted once (first split wins)."""
    merged: ClassSets = {}
    for split in splits:
        for image_id, labels in class_sets(root, split, progress=progress).items():
            merged.setdefault(image_id, labels)
    return merged


def _indicator(sets: Iterable[frozenset[int]]) -> np.ndarray:
    rows = list(sets)
    x = np.zeros((len(rows), NUM_CLASSES), dtype=np.int64)
    for i, labels in enumerate(rows):
        x[i, sorted(labels)] = 1
    return x


def class_frequencies(sets: Mapping[str, frozenset[int]]) -> np.ndarray:
    """Number of images containing each of the 21 classes (int64, length 21)."""
    return _indicator(sets.values()).sum(axis=0)


def cooccurrence_matrix(sets: Mapping[str, frozenset[int]]) -> np.ndarray:
    """21 x 21 int64: ``C[a, b]`` = images containing both a and b; diagonal = images containing a."""
    x = _indicator(sets.values())
    return x.T @ x


def existing_splits(root: str | Path, splits: Sequence[str]) -> list[str]:
    """The splits of ``splits`` whose list file exists, in the given order."""
    root = voc.resolve_root(root)
    return [s for s in splits if voc.split_file(root, s).is_file()]


@dataclass(frozen=True)
class DatasetStats:
    root: str
    splits: list[str]
    n_images: int  # distinct ids over the splits
    per_split_images: dict[str, int]
    frequencies: np.ndarray  # (21,) int64, images containing each class
    cooccurrence: np.ndarray  # (21, 21) int64

    def to_json(self) -> dict:
        return {
            "data": self.root,
            "splits": list(self.splits),
            "n_images": self.n_images,
            "per_split_images": dict(self.per_split_images),
            "classes": list(VOC_CLASSES),
            "frequencies": {name: int(n) for name, n in zip(VOC_CLASSES, self.frequencies)},
            "cooccurrence": self.cooccurrence.astype(int).tolist(),
        }


def dataset_stats(root: str | Path, splits: Sequence[str] = ("train_aug", "val"), progress: bool = False) -> DatasetStats:
    """Class frequencies and co-occurrence over ``splits`` (each must have a split list)."""
    root = voc.resolve_root(root)
    if not splits:
        raise DataError("no splits given", root)
    missing = [s for s in splits if not voc.split_file(root, s).is_file()]
    if missing:
        have = ", ".join(voc.available_splits(root)) or "none"
        raise DataError(f"split list(s) {', '.join(missing)} not found (splits here: {have})",
                        voc.split_file(root, missing[0]))
    per_split = {s: len(class_sets(root, s, progress=progress)) for s in splits}
    sets = merged_class_sets(root, splits, progress=progress)
    return DatasetStats(
        root=str(root),
        splits=list(splits),
        n_images=len(sets),
        per_split_images=per_split,
        frequencies=class_frequencies(sets),
        cooccurrence=cooccurrence_matrix(sets),
    )
