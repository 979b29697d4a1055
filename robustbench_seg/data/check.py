"""``rbseg data check``: validate a VOC tree and list every problem with the offending file.

What is checked, for every split list in ``ImageSets/Segmentation/``:

- the list: readable, no duplicate ids;
- every listed id: ``JPEGImages/<id>.jpg`` exists and decodes completely (truncated files are
  caught); its mask in the split's mask folder (``SegmentationClass``, or ``SegmentationClassAug``
  for train_aug; none for ``test``) exists, decodes, is an index PNG (``SegmentationClass`` must be
  palette 'P'; ``SegmentationClassAug`` may be 'P' or 'L'; RGB is always a problem), holds only
  labels 0-20 and 255, and has the image's size;
- where present: ``SegmentationObject/<id>.png`` (decodes, index PNG, image size; with the XML,
  no instance id beyond the XML's object count, and every instance's pixels carry its XML class
  in ``SegmentationClass``) and ``Annotations/<id>.xml`` (parses, VOC class names, ``<size>`` equal
  to the image size, boxes inside the image);
- ``trainval`` = ``train`` + ``val`` when all three lists exist;
- the split sizes of a *real VOC* tree (train 1,464, val 1,449, trainval 2,913, test 1,456,
  train_aug 10,582).

Real VOC rule: every listed id has the VOC form ``YYYY_NNNNNN`` and the tree carries no SynthVOC
marker (a ``synthvoc.json`` / ``SYNTHVOC`` file at the root). SynthVOC ids have a form of their own,
so a synthetic tree is never size-checked.

Split-size rule: a size that differs from the real one is a *problem* when ``strict_sizes`` is set,
or when the list holds at least half the real count (a damaged or mixed-up list of a full tree);
a list with fewer than half the ids is an obviously partial tree (a sample, a debugging subset) and
gets a non-failing *warning*.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import VOC_CLASSES
from ..errors import DataError
from . import voc

VOC_ID_PATTERN = re.compile(r"^\d{4}_\d{6}$")
SYNTH_MARKERS = ("synthvoc.json", "SYNTHVOC", "SYNTHVOC.json")
REAL_SPLIT_SIZES = {**voc.REAL_VOC_SPLIT_SIZES, "trainval": 2913, "test": 1456}
PALETTE_FOLDERS = ("SegmentationClass",)  # must be 'P'; other mask folders may be 'P' or 'L'
NO_MASK_SPLITS = ("test",)


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``n`` and the noun, singular for exactly one: '1 problem', '2 problems', '1,449 ids'."""
    return f"{n:,} {noun if n == 1 else (plural_form or noun + 's')}"


@dataclass(frozen=True)
class Problem:
    file: str  # path relative to the tree root
    problem: str

    def to_json(self) -> dict:
        return {"file": self.file, "problem": self.problem}


@dataclass
class CheckReport:
    root: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # split -> ids listed
    checked: dict[str, int] = field(default_factory=dict)  # kind -> files checked
    real_voc: bool = False
    synthetic: bool = False
    strict_sizes: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "real_voc": self.real_voc,
            "synthetic": self.synthetic,
            "strict_sizes": self.strict_sizes,
            "splits": dict(self.splits),
            "checked": dict(self.checked),
            "problems": [p.to_json() for p in self.problems],
            "warnings": [w.to_json() for w in self.warnings],
        }


def _message(exc: DataError) -> str:
    text = str(exc)
    prefix = f"{exc.path}: " if exc.path else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def looks_like_real_voc(root: Path, ids: list[str]) -> bool:
    """Real VOC: every listed id is YYYY_NNNNNN and the tree carries no SynthVOC marker."""
    if is_synthetic(root) or not ids:
        return False
    return all(VOC_ID_PATTERN.match(i) for i in ids)


def is_synthetic(root: Path) -> bool:
    return any((root / name).exists() for name in SYNTH_MARKERS)


class _Checker:
    def __init__(self, root: Path, strict_sizes: bool):
        self.root = root
        self.report = CheckReport(root=str(root), strict_sizes=strict_sizes)
        self.sizes: dict[str, tuple[int, int]] = {}  # id -> image (width, height)

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def problem(self, path: Path, message: str) -> None:
        self.report.problems.append(Problem(self.rel(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.report.warnings.append(Problem(self.rel(path), message))

    def count(self, kind: str) -> None:
        self.report.checked[kind] = self.report.checked.get(kind, 0) + 1

    # -- split lists ----------------------------------------------------------------------------
    def read_splits(self) -> dict[str, list[str]]:
        names = voc.available_splits(self.root)
        if not names:
            self.problem(self.root / "ImageSets" / "Segmentation", "no split lists (*.txt) found")
        lists: dict[str, list[str]] = {}
        for split in names:
            path = voc.split_file(self.root, split)
            try:
                ids = voc.read_split(self.root, split)
            except DataError as exc:
                self.problem(path, _message(exc))
                continue
            self.report.splits[split] = len(ids)
            dups = [i for i, n in Counter(ids).items() if n > 1]
            for i in dups:
                self.problem(path, f"duplicate id '{i}' (listed {ids.count(i)} times)")
            if not ids:
                self.problem(path, "split list is empty")
            lists[split] = list(dict.fromkeys(ids))
        return lists

    def check_trainval(self, lists: dict[str, list[str]]) -> None:
        if not all(s in lists for s in ("train", "val", "trainval")):
            return
        union = set(lists["train"]) | set(lists["val"])
        trainval = set(lists["trainval"])
        if union != trainval:
            extra, missing = sorted(trainval - union), sorted(union - trainval)
            parts = []
            if missing:
                parts.append(f"{plural(len(missing), 'id')} of train/val missing (e.g. {', '.join(missing[:3])})")
            if extra:
                parts.append(f"{plural(len(extra), 'id')} in neither train nor val (e.g. {', '.join(extra[:3])})")
            self.problem(voc.split_file(self.root, "trainval"), "trainval != train + val: " + "; ".join(parts))

    def check_sizes(self, lists: dict[str, list[str]]) -> None:
        all_ids = [i for ids in lists.values() for i in ids]
        self.report.synthetic = is_synthetic(self.root)
        self.report.real_voc = looks_like_real_voc(self.root, all_ids)
        if not self.report.real_voc:
            return
        for split, expected in REAL_SPLIT_SIZES.items():
            if split not in lists or self.report.splits[split] == expected:
                continue
            n = self.report.splits[split]
            path = voc.split_file(self.root, split)
            message = f"{plural(n, 'id')} listed, real VOC 2012 {split} has {expected:,}"
            if self.report.strict_sizes or n >= expected / 2:
                self.problem(path, message)
            else:
                self.warn(path, message + " (partial tree; pass --strict-sizes to make this an error)")

    # -- files ----------------------------------------------------------------------------------
    def check_image(self, image_id: str) -> None:
        path = voc.image_path(self.root, image_id)
        self.count("images")
        try:
            img = voc.read_image(path)
        except DataError as exc:
            self.problem(path, _message(exc))
            return
        self.sizes[image_id] = (img.shape[1], img.shape[0])

    def read_index_png(self, path: Path, require_palette: bool, kind: str) -> np.ndarray | None:
        self.count(kind)
        try:
            arr, _ = voc.read_label_png(path, require_palette=require_palette)
        except DataError as exc:
            self.problem(path, _message(exc))
            return None
        return arr

    def check_size(self, path: Path, image_id: str, shape: tuple[int, ...], what: str) -> bool:
        size = self.sizes.get(image_id)
        if size is not None and (shape[1], shape[0]) != size:
            self.problem(path, f"{what} size {shape[1]}x{shape[0]} != image size {size[0]}x{size[1]}")
            return False
        return True

    def check_mask(self, image_id: str, folder: str) -> None:
        path = self.root / folder / f"{image_id}.png"
        mask = self.read_index_png(path, folder in PALETTE_FOLDERS, "masks")
        if mask is None:
            return
        try:
            voc.validate_labels(mask, path)
        except DataError as exc:
            self.problem(path, _message(exc))
        self.check_size(path, image_id, mask.shape, "mask")

    def check_annotation(self, image_id: str) -> list | None:
        path = voc.annotation_path(self.root, image_id)
        if not path.is_file():
            return None
        self.count("annotations")
        try:
            objects = voc.read_annotation(path)
        except DataError as exc:
            self.problem(path, _message(exc))
            return None
        size = self.sizes.get(image_id)
        if size is None:
            return objects
        declared = _xml_size(path)
        if declared is not None and declared != size:
            self.problem(path, f"<size> {declared[0]}x{declared[1]} != image size {size[0]}x{size[1]}")
        for k, obj in enumerate(objects, start=1):
            x0, y0, x1, y1 = obj.bbox
            if not (0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]):
                self.problem(path, f"object {k} ({obj.name}) bndbox {obj.bbox} outside the {size[0]}x{size[1]} image")
        return objects

    def check_instances(self, image_id: str, objects: list | None) -> None:
        path = voc.instance_path(self.root, image_id)
        if not path.is_file():
            return
        inst = self.read_index_png(path, False, "instance masks")
        if inst is None or not self.check_size(path, image_id, inst.shape, "instance mask"):
            return
        if objects is None:
            return
        ids = [int(v) for v in np.unique(inst) if v not in (0, 255)]
        beyond = [v for v in ids if v > len(objects)]
        if beyond:
            self.problem(path, f"instance ids {beyond[:5]} but {self.rel(voc.annotation_path(self.root, image_id))} "
                               f"lists {plural(len(objects), 'object')}")
            return
        cls_path = self.root / "SegmentationClass" / f"{image_id}.png"
        if not cls_path.is_file():
            return
        try:
            cls = voc.read_mask(cls_path)
        except DataError:
            return  # a broken class mask is reported by check_mask, not as an instance problem
        if cls.shape != inst.shape:
            return
        for v in ids:
            labels = np.unique(cls[(inst == v) & (cls != 255)])
            want = VOC_CLASSES.index(objects[v - 1].name)
            wrong = [int(c) for c in labels if c != want]
            if wrong:
                self.problem(path, f"instance {v} is a {objects[v - 1].name} in the XML but covers labels "
                                   f"{wrong[:5]} in {self.rel(cls_path)}")

    def run(self, progress: bool) -> CheckReport:
        from rich.console import Console
        from rich.progress import track

        lists = self.read_splits()
        self.check_trainval(lists)
        self.check_sizes(lists)
        masks: dict[str, list[str]] = {}  # id -> mask folders to check
        for split, ids in lists.items():
            for i in ids:
                folders = masks.setdefault(i, [])
                if split not in NO_MASK_SPLITS and voc.mask_folder(split) not in folders:
                    folders.append(voc.mask_folder(split))
        for image_id in track(list(masks), description="checking", disable=not progress,
                              transient=True, console=Console(stderr=True)):
            self.check_image(image_id)
            for folder in masks[image_id]:
                self.check_mask(image_id, folder)
            objects = self.check_annotation(image_id)
            self.check_instances(image_id, objects)
        return self.report


def _xml_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an Annotations XML's ``<size>``, or None when it has none."""
    try:
        size = ET.parse(path).getroot().find("size")
        return (int(size.findtext("width")), int(size.findtext("height"))) if size is not None else None
    except (ET.ParseError, TypeError, ValueError):
        return None


def check_files(root: Path, image_id: str, mask_folder: str) -> list[Problem]:
    """The per-file checks of one id (the training pre-flight's): the image decodes completely and
    its mask in ``mask_folder`` is an index PNG of the image's size holding valid labels."""
    checker = _Checker(Path(root), strict_sizes=False)
    checker.check_image(image_id)
    checker.check_mask(image_id, mask_folder)
    return checker.report.problems


def check_tree(root: str | Path, strict_sizes: bool = False, progress: bool = False) -> CheckReport:
    """Validate the VOC tree at ``root``; the report lists every problem (and non-failing warnings)."""
    return _Checker(voc.resolve_root(root), strict_sizes).run(progress)
