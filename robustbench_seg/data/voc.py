"""Reader for a PASCAL VOC 2012 segmentation tree (real or SynthVOC: same layout, same code).

``ROOT`` is the ``VOC2012/`` folder that holds ``JPEGImages/``. Masks are PNGs of class indices
0-20 with 255 for void; ``SegmentationClass`` holds palette PNGs, ``SegmentationClassAug`` (the
SBD-augmented set read by the ``train_aug`` split) palette or plain 8-bit PNGs.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..constants import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, VOC_PALETTE
from ..errors import DataError

SPLITS = ("train", "val", "trainval", "test", "train_aug")
REAL_VOC_SPLIT_SIZES = {"train": 1464, "val": 1449, "train_aug": 10582}
VALID_LABELS = frozenset(range(NUM_CLASSES)) | {IGNORE_INDEX}


def resolve_root(root: str | Path) -> Path:
    """Accept ROOT (holding JPEGImages/), or a parent holding VOC2012/ or VOCdevkit/VOC2012/."""
    root = Path(root).expanduser()
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.exists():
        raise DataError("dataset folder not found", root)
    raise DataError("not a VOC tree: no JPEGImages/ folder here (pass the VOC2012/ folder)", root)


SYNTH_META = "synthvoc.json"  # a SynthVOC tree's description (data.synth writes it; real VOC has none)


def synth_meta(root: str | Path) -> dict | None:
    """The parsed ``synthvoc.json`` of a SynthVOC tree; None for a tree without one (real VOC) or
    with a damaged one (callers then treat the tree as plain VOC; the fingerprint still identifies it)."""
    import json

    path = Path(root) / SYNTH_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_split(root: str | Path, split: str) -> list[str]:
    """Ids listed in ImageSets/Segmentation/<split>.txt, in file order."""
    path = split_file(Path(root), split)
    if not path.is_file():
        raise DataError(f"split list for '{split}' not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable split list ({exc})", path) from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def available_splits(root: str | Path) -> list[str]:
    folder = Path(root) / "ImageSets" / "Segmentation"
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def mask_folder(split: str) -> str:
    """train_aug reads the SBD-augmented masks; every other split the official ones."""
    return "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"


def image_path(root: Path, image_id: str) -> Path:
    return Path(root) / "JPEGImages" / f"{image_id}.jpg"


def mask_path(root: Path, image_id: str, split: str) -> Path:
    return Path(root) / mask_folder(split) / f"{image_id}.png"


def instance_path(root: Path, image_id: str) -> Path:
    return Path(root) / "SegmentationObject" / f"{image_id}.png"


def annotation_path(root: Path, image_id: str) -> Path:
    return Path(root) / "Annotations" / f"{image_id}.xml"


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable or truncated image ({exc})", path) from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """RGB image as an H x W x 3 uint8 array."""
    img = _open_image(Path(path))
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_label_png(path: str | Path, require_palette: bool = False) -> tuple[np.ndarray, str]:
    """Index PNG (palette 'P' or 8-bit 'L') as an H x W uint8 array, plus the PIL mode.

    Raises DataError for unreadable files, colour (RGB) masks, or a non-palette mask where a palette
    is required.
    """
    path = Path(path)
    img = _open_image(path)
    if img.mode not in ("P", "L"):
        raise DataError(f"mask is mode {img.mode}, expected an index PNG (palette 'P' or 8-bit 'L')", path)
    if require_palette and img.mode != "P":
        raise DataError(f"mask is mode {img.mode}, expected a palette ('P') PNG", path)
    return np.array(img, dtype=np.uint8), img.mode


def validate_labels(mask: np.ndarray, path: str | Path) -> None:
    values = np.unique(mask)
    bad = [int(v) for v in values if int(v) not in VALID_LABELS]
    if bad:
        raise DataError(f"label values outside 0-20/255: {bad[:10]}", path)


def read_mask(path: str | Path, require_palette: bool = False) -> np.ndarray:
    """Class-index mask (0-20, 255 void) as H x W uint8, validated."""
    mask, _ = read_label_png(path, require_palette=require_palette)
    validate_labels(mask, path)
    return mask


def write_index_png(path: str | Path, mask: np.ndarray) -> None:
    """Write an H x W uint8 index array as a palette PNG with the VOC colour map (atomically)."""
    from ..io import atomic_write_bytes
    import io

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(VOC_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class ObjectAnnotation:
    name: str
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (1-based, inclusive, as VOC)
    occluded: bool
    truncated: bool
    difficult: bool

    @property
    def label(self) -> int:
        return VOC_CLASSES.index(self.name)


def read_annotation(path: str | Path) -> list[ObjectAnnotation]:
    """Objects of a VOC Annotations XML file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DataError(f"malformed XML ({exc})", path) from None
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES[1:]:
            raise DataError(f"object class '{name}' is not a VOC class", path)
        box = obj.find("bndbox")
        try:
            bbox = tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")) if box is not None else (0, 0, 0, 0)
        except (TypeError, ValueError):
            raise DataError("object with a malformed bndbox", path) from None
        flag = lambda key: (obj.findtext(key) or "0").strip() == "1"  # noqa: E731
        objects.append(ObjectAnnotation(name, bbox, flag("occluded"), flag("truncated"), flag("difficult")))
    return objects


class VOCSegmentation:
    """Map-style dataset over one split: returns (image uint8 3xHxW tensor, mask int64 HxW tensor, id).

    ``transforms`` is a callable on (tv_tensors.Image, tv_tensors.Mask) -> (image, mask), e.g.
    :func:`robustbench_seg.data.transforms.train_transforms`. Without it, images come at full
    resolution, as evaluation needs.
    """

    def __init__(self, root: str | Path, split: str = "val", transforms=None, ids: list[str] | None = None):
        self.root = resolve_root(root)
        self.split = split
        self.ids = list(ids) if ids is not None else read_split(self.root, split)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_id = self.ids[index]
        image = read_image(image_path(self.root, image_id))
        mpath = mask_path(self.root, image_id, self.split)
        mask = read_mask(mpath)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask size {mask.shape[::-1]} != image size {image.shape[1::-1]}", mpath)
        return image, mask, image_id

    def __getitem__(self, index: int):
        import torch
        from torchvision import tv_tensors

        image, mask, image_id = self.load(index)
        img_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        mask_t = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        if self.transforms is not None:
            img_t, mask_t = self.transforms(img_t, mask_t)
        return img_t.as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor), image_id
