"""Hand-made VOC trees for tests: images, masks, instance masks, Annotations XML, split lists.

Usage::

    from vocfactory import VOCTree, stripes

    tree = VOCTree(tmp_path)                       # tmp_path/VOC2012/ (tree.root)
    tree.add("2008_000001", stripes([0, 15, 13]),  # mask: vertical bands of these labels
             splits=("val",),                      # listed in val.txt, mask in SegmentationClass/
             instances=stripes([0, 1, 2]),         # optional SegmentationObject/<id>.png
             objects=[("person", True), ("horse", False)])  # optional Annotations XML (name, occluded)
    tree.root  # pass this as --data

``add`` writes a JPEG of the mask's size, the mask into every folder its splits read
(``SegmentationClass``; ``SegmentationClassAug`` for train_aug; none for test), and rewrites the
split lists (ids in the order added). Low-level writers (``write_jpeg``, ``write_png``,
``write_xml``, ``write_split``) are exposed for building broken trees.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from robustbench_seg.constants import VOC_PALETTE
from robustbench_seg.data import voc


def stripes(labels: Sequence[int], h: int = 8, w: int | None = None) -> np.ndarray:
    """An h x w uint8 mask of vertical bands, one per label, left to right (w defaults to 4 per band)."""
    w = w or 4 * len(labels)
    cols = np.array_split(np.arange(w), len(labels))
    mask = np.zeros((h, w), dtype=np.uint8)
    for label, c in zip(labels, cols):
        mask[:, c] = label
    return mask


def write_jpeg(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path, quality=90)
    return path


def write_png(path: Path, array: np.ndarray, mode: str = "P") -> Path:
    """Write a mask as palette ('P', VOC colours), plain 8-bit ('L'), or colour ('RGB', VOC colours) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array, dtype=np.uint8)
    if mode == "RGB":
        pal = np.array(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)
        Image.fromarray(pal[array], "RGB").save(path)
        return path
    if mode not in ("P", "L"):
        raise ValueError(f"mode must be P, L or RGB, not {mode}")
    img = Image.fromarray(array, mode)
    if mode == "P":
        img.putpalette(VOC_PALETTE)
    img.save(path)
    return path


def write_xml(path: Path, objects: Iterable[tuple], size: tuple[int, int] | None = None) -> Path:
    """VOC Annotations XML. Each object is (name, occluded) or (name, occluded, (xmin, ymin, xmax, ymax))."""
    parts = ["<annotation>", f"<filename>{path.stem}.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        name, occluded = obj[0], obj[1]
        box = obj[2] if len(obj) > 2 else (1, 1, size[0] if size else 1, size[1] if size else 1)
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<occluded>{int(bool(occluded))}</occluded><difficult>0</difficult>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>"
            "</object>"
        )
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_split(root: Path, split: str, ids: Iterable[str]) -> Path:
    path = voc.split_file(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


class VOCTree:
    """A VOC2012/ tree under ``base`` that tests fill id by id with :meth:`add`."""

    def __init__(self, base: Path):
        self.root = Path(base) / "VOC2012"
        (self.root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        self.splits: dict[str, list[str]] = {}

    def add(
        self,
        image_id: str,
        mask: np.ndarray,
        splits: Sequence[str] = ("val",),
        instances: np.ndarray | None = None,
        objects: Iterable[tuple] | None = None,
        mask_mode: str = "P",
    ) -> str:
        mask = np.asarray(mask, dtype=np.uint8)
        h, w = mask.shape
        write_jpeg(voc.image_path(self.root, image_id), h, w, seed=sum(map(ord, image_id)))
        for split in splits:
            if split != "test":
                write_png(voc.mask_path(self.root, image_id, split), mask, mask_mode)
            self.splits.setdefault(split, []).append(image_id)
            write_split(self.root, split, self.splits[split])
        if instances is not None:
            write_png(voc.instance_path(self.root, image_id), instances, "P")
        if objects is not None:
            write_xml(voc.annotation_path(self.root, image_id), objects, size=(w, h))
        return image_id
