"""Training data: augmented samples with per-item seeds, the dataset fingerprint, class sets.

Each image of a work item is augmented on its own (``data.transforms.train_transforms``) under a
seed derived from ``(seed, stage, epoch, pos, slot)``, so an item's pixels do not depend on the
worker, the batch it lands in, or what ran before it: a resumed run sees the same data. Blending
happens later, on the training device (``mixing.blend``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from ..data import voc
from ..data.transforms import train_transforms
from .samplers import AUGMENT, WORKER, WorkItem, derive_seed


class TrainSamples(torch.utils.data.Dataset):
    """Indexed by ``(stage, epoch, WorkItem)``; returns the augmented dominant (and phantom) image."""

    def __init__(self, root: str | Path, split: str, ids: Sequence[str], crop: int, scale=(0.5, 2.0), seed: int = 0):
        self.voc = voc.VOCSegmentation(root, split, transforms=train_transforms(crop, tuple(scale)), ids=list(ids))
        self.crop, self.seed = crop, seed

    def __len__(self) -> int:
        return len(self.voc)

    def augmented(self, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: the transforms draw from it
            image, mask, _ = self.voc[index]
        return image, mask

    def __getitem__(self, key: tuple[int, int, WorkItem]) -> dict:
        stage, epoch, item = key
        base = (self.seed, AUGMENT, stage, epoch, item.pos)
        image, mask = self.augmented(item.first, derive_seed(*base, 0))
        sample = {"image": image, "mask": mask, "delta": float(item.delta), "pos": item.pos}
        if item.second >= 0:
            sample["image2"], sample["mask2"] = self.augmented(item.second, derive_seed(*base, 1))
        return sample


def collate(samples: list[dict], paired: bool | None = None) -> dict:
    """Stack a batch. In a paired stage (``paired=True``, or any blended item when None) every item
    gets ``image2``/``mask2``: a standard item's phantom is a zero image with an all-void mask, and
    its delta is 1 (M_fb mixes both kinds, and a batch may hold standard items only)."""
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "delta": torch.tensor([s["delta"] for s in samples], dtype=torch.float32),
        "pos": torch.tensor([s["pos"] for s in samples], dtype=torch.int64),
    }
    if paired or (paired is None and any("image2" in s for s in samples)):
        ref_i, ref_m = batch["image"][0], batch["mask"][0]
        batch["image2"] = torch.stack([s.get("image2", torch.zeros_like(ref_i)) for s in samples])
        batch["mask2"] = torch.stack([s.get("mask2", torch.full_like(ref_m, IGNORE_INDEX)) for s in samples])
    return batch


def worker_init(seed: int, stage: int, epoch: int):
    """``worker_init_fn`` seeding each loader worker's global RNGs from (seed, stage, epoch, worker id)."""
    def init(worker_id: int) -> None:
        import random

        s = derive_seed(seed, WORKER, stage, epoch, worker_id)
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        random.seed(s)

    return init


def dataset_fingerprint(root: str | Path, split: str, ids: Sequence[str]) -> str:
    """sha256 over the split's ids (file order) and the byte sizes of their image and mask files."""
    root = Path(root)
    h = hashlib.sha256(f"{split}\n".encode())
    for image_id in ids:
        img, msk = voc.image_path(root, image_id), voc.mask_path(root, image_id, split)
        size = lambda p: p.stat().st_size if p.is_file() else -1  # noqa: E731
        h.update(f"{image_id}:{size(img)}:{size(msk)}\n".encode())
    return h.hexdigest()[:16]


def dataset_info(root: str | Path, split: str, ids: Sequence[str]) -> dict:
    """What a checkpoint records about its training data."""
    root = Path(root)
    info = {"name": "VOC2012", "root": str(root), "split": split, "n_images": len(ids),
            "fingerprint": dataset_fingerprint(root, split, ids)}
    meta = voc.synth_meta(root)  # None when damaged: training goes on, the fingerprint still identifies the data
    if meta is not None:
        info["name"] = meta.get("dataset", "SynthVOC")
        info["synthvoc"] = {k: meta[k] for k in ("preset", "seed", "generator_version") if k in meta}
    elif (root / voc.SYNTH_META).is_file():
        info["name"] = "SynthVOC"
    return info


def split_classes(root: str | Path, split: str) -> tuple[list[str], list[list[int]]]:
    """(ids, foreground classes per image) of any split of ``root`` (SegMix's C_ss split)."""
    from ..errors import RbsegError

    ids = voc.read_split(root, split)
    if not ids:
        raise RbsegError(f"split '{split}' lists no images", voc.split_file(root, split))
    return ids, image_classes(root, split, ids)


def image_classes(root: str | Path, split: str, ids: Sequence[str]) -> list[list[int]]:
    """Foreground classes present in each image's mask, sorted, in ``ids`` order (read once per split and
    cached by ``data.stats.class_sets``, the one reader of per-image class sets)."""
    from ..data.stats import class_sets, foreground
    from ..errors import DataError

    sets = class_sets(root, split)
    missing = [i for i in ids if i not in sets]
    if missing:
        raise DataError(f"{len(missing)} id(s) not in split '{split}' (first: {missing[0]})", voc.split_file(Path(root), split))
    return [sorted(foreground(sets[i])) for i in ids]
