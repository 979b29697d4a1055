"""SynthVOC: a synthetic PASCAL VOC 2012 segmentation tree, generated deterministically.

``generate(out, preset, seed)`` writes ``out/VOC2012/`` with exactly the real VOC layout
(``JPEGImages/*.jpg``, palette ``SegmentationClass/`` and ``SegmentationClassAug/`` masks,
palette ``SegmentationObject/`` instance masks, ``Annotations/*.xml`` and
``ImageSets/Segmentation/{train,val,trainval,train_aug,ooc}.txt``), so every command of the
suite runs unchanged on real or synthetic data. A ``synthvoc.json`` beside them records the
preset, seed, generator version, occlusion threshold and the ``ooc`` class pairs.

How a scene is made
-------------------
* Class set: sampled from the real VOC train_aug class-set frequencies
  (``voc2012_train_aug_class_sets.csv``, packaged), so class frequencies and co-occurrence
  (person with almost everything) mirror VOC. The number of instances per class is
  ``1 + extra`` with ``P(extra = j) ~ rho**j`` (``rho`` larger for classes that come in groups in
  VOC: person, sheep, cow, bird, bottle, chair, boat), capped by the preset's ``max_instances``.
* Each of the 20 classes has its own parametric shape family (aeroplane: top-view cross; bicycle:
  two rings and a tube frame; bottle: tall rounded body with neck and cap; person: head, torso,
  arms, legs; car: body, cabin, wheels; tvmonitor: framed screen on a stand; ...; see
  ``_SHAPES``), drawn with a random scale, aspect ratio, rotation and mirror, and its own colour
  palettes and texture (stripes, dots, checker, gradient, value noise, rings, spots with
  class-specific frequency/orientation; see ``_STYLES``). Palettes are deliberately shared
  between classes (brown: horse, cow, dog, cat, chair, table, sofa, bird, bottle; red: car,
  bus, bicycle, boat, sofa, train, ...), so colour alone does not separate classes: shape and
  texture do.
* Background (label 0): a two-colour gradient, low-frequency value noise and 2-6 clutter blobs
  (single ellipses, rectangles and bars with generic textures, never a class shape). With
  probability ``occluder_prob`` 1-2 clutter occluders (background label) are drawn in front of
  objects, as a fence or a table edge occludes a person in VOC.
* Instances are drawn back to front in a random depth order, many placed near an earlier one,
  so they overlap. For each instance, ``occ = 1 - visible / drawn`` (drawn = its pixels inside the
  image, visible = those not covered by later instances or occluders). ``occluded = 1`` when
  ``occ >= OCCLUSION_THRESHOLD`` (0.05); ``truncated = 1`` when its drawn mask touches the image
  border; ``difficult = 0``. An instance whose visible area is below ``min_visible`` pixels is
  dropped: its pixels become void (255) in both masks and it has no XML object. A scene is
  redrawn (same random stream, next attempt) until its surviving classes equal the sampled
  class set, so class statistics stay those of the CSV.
* Masks: ``SegmentationObject`` instance ids ``1..n`` in depth order (back to front), equal to
  the order of the ``<object>`` elements in the XML; ``0`` background, ``255`` void. A thin void
  boundary (``void_width`` px, default 1) is drawn where two labels meet, like real VOC: on the
  background side of an object edge, on the occluded side between two instances.
* Bounding boxes are the extent of the visible pixels, 1-based inclusive like VOC.

Splits
------
* ``train`` (= ``train_aug``; its masks are also written to ``SegmentationClassAug/``) and the
  VOC-frequency part of ``val`` are drawn from the CSV frequencies. ``trainval = train + val``.
* ``val`` stratification: every subset the paper evaluates must be non-trivial on ``val``. The
  class-set patterns ``person-<c>`` and ``only-<c>`` (c in horse, motorbike, bicycle, bottle, car),
  ``uniq3`` and ``uniq4`` are topped up to ``val_quota`` images each: the VOC-frequency class sets
  are sampled first; for each pattern with fewer than ``val_quota`` matches, the missing images are
  drawn with a class set forced to match (person-c / only-c: exactly that set; uniqk: a CSV class
  set with exactly k classes) and replace the last VOC-frequency images. ``obj4`` (exactly 4
  instances) and ``occall`` (every object occluded, forced with clutter occluders in front of each
  instance) depend on the rendering and always get ``val_quota`` dedicated images. ``occ1``,
  ``obj1``-``obj3``, ``uniq2`` and the ``coocT`` subsets are common under the VOC frequencies.
  ``synthvoc.json`` lists the pattern of each stratified image.
* Co-occurrence top-up (presets with ``cooc_quota``, i.e. ``bench``): the rarest co-occurrence subset
  (``cooc10`` at the scaled threshold of data/subsets.py, counted over train + val of the plan, which
  is exact because every scene's classes equal its planned set) is topped up to ``cooc_quota`` images
  by replacing VOC-frequency val images (never one a class-set pattern counts) with CSV class sets
  whose every pair stays below that threshold (pattern ``cooc`` in ``synthvoc.json``). Such a preset
  also writes ``cooc_threshold_scaling: true`` to ``synthvoc.json`` (``cooc_scale``), which turns the
  thresholds' scaling on in data/subsets.py. The older presets (tiny, micro) have neither, and their
  trees are byte-identical to before.
* ``ooc``: out-of-context scenes. After ``train`` is generated, the class pairs with zero
  co-occurrence in it are listed; each ``ooc`` image holds exactly one such pair (chosen
  uniformly) and no other class.

Determinism
-----------
Every image draws from its own ``numpy.random.Generator`` seeded by ``(seed, split, index)``;
JPEG quality is fixed (90), files hold no timestamps, and results are gathered by index, so the
same preset and seed give byte-identical files whatever the worker count. Different seeds differ.
The tree is built in a temporary sibling folder and renamed into place at the end.
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..constants import CLASS_INDEX, IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES
from ..errors import RbsegError
from . import voc
from .voc import write_index_png

GENERATOR_VERSION = "2"  # bump whenever the generated content changes (invalidates the cache)
OCCLUSION_THRESHOLD = 0.05
JPEG_QUALITY = 90
CLASS_SETS_CSV = "voc2012_train_aug_class_sets.csv"
TABLE3_CLASSES = ("horse", "motorbike", "bicycle", "bottle", "car")
SPLIT_CODES = {"train": 1, "val": 2, "ooc": 3}
_PLAN, _RENDER = 0, 1


@dataclass(frozen=True)
class Preset:
    """Size of a SynthVOC tree. Image sides are drawn uniformly in [min_side, max_side]."""

    name: str
    n_train: int
    n_val: int
    n_ooc: int
    min_side: int
    max_side: int
    max_instances: int
    val_quota: int
    workers: int
    description: str
    # Added for the ``bench`` preset; the defaults keep the older presets' trees (and synthvoc.json) unchanged.
    # cooc_quota: val images topped up so that the rarest co-occurrence subset (cooc10, at the scaled
    # threshold of data/subsets.py) holds at least this many; cooc_scale: the tree asks evaluation to scale
    # the co-occurrence thresholds to its size (recorded in synthvoc.json, read by data/subsets.py).
    cooc_quota: int = 0
    cooc_scale: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("micro", 40, 24, 10, 56, 72, 5, 1, 1, "for tests: a few dozen 56-72 px images"),
        Preset("tiny", 320, 140, 40, 64, 96, 6, 3, 2, "a few hundred 64-96 px images (the embedded default before bench)"),
        Preset("bench", 4000, 600, 120, 64, 96, 6, 20, 2,
               "the embedded benchmark and default: 4,000 train_aug / 600 val (>= 20 images in every paper subset) / "
               "120 ooc, 64-96 px",
               cooc_quota=20, cooc_scale=True),
        Preset("small", 1600, 400, 100, 128, 160, 7, 5, 2, "about 2,000 images of 128-160 px"),
        Preset("large", 10582, 1449, 300, 256, 500, 8, 5, 2, "VOC-sized: 10,582 train_aug / 1,449 val, 256-500 px"),
    )
}

# the embedded default (default_dataset): what the shipped models were trained and evaluated on
DEFAULT_PRESET = "bench"
DEFAULT_SEED = 0

# ---------------------------------------------------------------------------------------------
# Class-set sampling (real VOC train_aug statistics)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSetTable:
    sets: tuple[tuple[int, ...], ...]  # sorted class indices (1..20) per row
    counts: np.ndarray  # images per row

    @property
    def probs(self) -> np.ndarray:
        return self.counts / self.counts.sum()


_TABLE: ClassSetTable | None = None


def load_class_sets() -> ClassSetTable:
    """The packaged VOC train_aug class-set table (rows with no foreground class are skipped)."""
    global _TABLE
    if _TABLE is None:
        text = resources.files(__package__).joinpath(CLASS_SETS_CSV).read_text(encoding="utf-8")
        sets, counts = [], []
        for row in csv.DictReader(io.StringIO(text)):
            names = row["classes"].split()
            if not names or names == ["(none)"]:
                continue
            sets.append(tuple(sorted(CLASS_INDEX[n] for n in names)))
            counts.append(int(row["count"]))
        _TABLE = ClassSetTable(tuple(sets), np.asarray(counts, dtype=np.float64))
    return _TABLE


def sample_class_set(rng: np.random.Generator, where: Callable[[tuple[int, ...]], bool] | None = None) -> tuple[int, ...]:
    """One class set drawn with the VOC train_aug frequencies (optionally restricted by ``where``)."""
    table = load_class_sets()
    probs = table.probs
    if where is not None:
        keep = np.array([where(s) for s in table.sets], dtype=bool)
        if not keep.any():
            raise ValueError("no class set satisfies the restriction")
        probs = np.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    return table.sets[int(rng.choice(len(table.sets), p=probs))]


# VOC classes that often come in groups get more instances.
_GROUP_RHO = {"person": 0.5, "sheep": 0.5, "cow": 0.45, "bird": 0.45, "bottle": 0.45, "chair": 0.45, "boat": 0.4, "car": 0.35}
_DEFAULT_RHO = 0.2


def sample_counts(rng: np.random.Generator, classes: tuple[int, ...], max_instances: int, total: int | None = None) -> tuple[int, ...]:
    """Instances per class: 1 + a geometric extra (or exactly ``total`` instances in all)."""
    if total is not None:
        counts = [1] * len(classes)
        for _ in range(total - len(classes)):
            counts[int(rng.integers(len(classes)))] += 1
        return tuple(counts)
    counts = []
    for c in classes:
        rho = _GROUP_RHO.get(VOC_CLASSES[c], _DEFAULT_RHO)
        counts.append(1 + int(rng.geometric(1.0 - rho)) - 1)
    while sum(counts) > max(max_instances, len(classes)):
        i = int(np.argmax(counts))
        counts[i] -= 1
    return tuple(counts)


# ---------------------------------------------------------------------------------------------
# Shape primitives in isotropic local coordinates: X in [-k, k] (right), Y in [-1, 1] (down)
# ---------------------------------------------------------------------------------------------


def _ell(X, Y, cx, cy, rx, ry):
    return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1.0


def _circ(X, Y, cx, cy, r):
    return (X - cx) ** 2 + (Y - cy) ** 2 <= r * r


def _ring(X, Y, cx, cy, r, w):
    d2 = (X - cx) ** 2 + (Y - cy) ** 2
    return (d2 <= r * r) & (d2 >= (r - w) ** 2)


def _box(X, Y, x0, y0, x1, y1):
    return (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)


def _rbox(X, Y, x0, y0, x1, y1, r):
    """Rounded rectangle."""
    qx = np.abs(X - (x0 + x1) / 2) - ((x1 - x0) / 2 - r)
    qy = np.abs(Y - (y0 + y1) / 2) - ((y1 - y0) / 2 - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) <= r


def _seg(X, Y, x0, y0, x1, y1, w):
    """Thick line segment of half-width w."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (X - x0 - t * dx) ** 2 + (Y - y0 - t * dy) ** 2 <= w * w


def _poly(X, Y, pts):
    """Polygon (even-odd rule), pts a sequence of (x, y)."""
    inside = np.zeros(X.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        if y0 == y1:
            continue
        cond = (Y >= min(y0, y1)) & (Y < max(y0, y1))
        xc = x0 + (Y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= cond & (X < xc)
    return inside


def _mirror_y(pts):
    return [(x, -y) for x, y in pts]


# Each shape: f(X, Y, k, q) -> (mask, part) with q = 4 uniforms in [0, 1) for pose variation and
# part = the "secondary" region (wheels, screen, clothes, pot, ...) coloured with part_palettes.


def _aeroplane(X, Y, k, q):
    sweep = 0.25 + 0.2 * q[0]
    body = _ell(X, Y, 0.0, 0.0, 0.97 * k, 0.15 + 0.05 * q[1])
    wing = [(0.2 * k, -0.08), (-0.05 * k, -0.08), (-(0.05 + sweep) * k, -0.95), ((0.12 - sweep) * k, -0.95)]
    tail = [(-0.68 * k, -0.05), (-0.88 * k, -0.05), (-0.99 * k, -0.42), (-0.86 * k, -0.42)]
    m = body | _poly(X, Y, wing) | _poly(X, Y, _mirror_y(wing)) | _poly(X, Y, tail) | _poly(X, Y, _mirror_y(tail))
    engines = _ell(X, Y, -0.12 * k, 0.45, 0.12 * k, 0.07) | _ell(X, Y, -0.12 * k, -0.45, 0.12 * k, 0.07)
    return m | engines, engines


def _bicycle(X, Y, k, q):
    r, w = 0.58, 0.11
    rx = 0.98 * k - r
    hub_r, hub_f = (-rx, 0.4), (rx, 0.4)
    pedal, seat, head = (0.0, 0.45), (-0.22 * k, -0.4), (0.45 * k, -0.45)
    wheels = _ring(X, Y, *hub_r, r, w) | _ring(X, Y, *hub_f, r, w)
    t = 0.065
    frame = (
        _seg(X, Y, *hub_r, *seat, t) | _seg(X, Y, *hub_r, *pedal, t) | _seg(X, Y, *seat, *pedal, t)
        | _seg(X, Y, *seat, *head, t) | _seg(X, Y, *pedal, *head, t) | _seg(X, Y, *head, *hub_f, t)
        | _seg(X, Y, *head, 0.38 * k, -0.85, t) | _seg(X, Y, 0.25 * k, -0.85, (0.5 + 0.1 * q[0]) * k, -0.85, t)
        | _seg(X, Y, -0.36 * k, -0.52, -0.08 * k, -0.52, 1.3 * t)
    )
    return wheels | frame, wheels


def _bird(X, Y, k, q):
    body = _ell(X, Y, -0.05 * k, 0.12, 0.55 * k, 0.42)
    head = _circ(X, Y, 0.5 * k, -0.38, 0.28)
    beak = _poly(X, Y, [(0.5 * k + 0.22, -0.48), (0.98 * k, -0.36 + 0.1 * q[0]), (0.5 * k + 0.22, -0.26)])
    tail = _poly(X, Y, [(-0.45 * k, 0.0), (-0.98 * k, -0.3 - 0.3 * q[1]), (-0.98 * k, 0.15)])
    legs = _seg(X, Y, 0.0, 0.45, -0.05 * k, 0.98, 0.05) | _seg(X, Y, 0.15 * k, 0.45, 0.15 * k, 0.98, 0.05)
    wing = _ell(X, Y, -0.15 * k, 0.05, 0.38 * k, 0.22)
    return body | head | beak | tail | legs, wing


def _boat(X, Y, k, q):
    hull = _poly(X, Y, [(-0.98 * k, 0.3), (0.98 * k, 0.3), (0.72 * k, 0.95), (-0.72 * k, 0.95)])
    mast = _seg(X, Y, 0.0, -0.98, 0.0, 0.3, 0.05)
    sail = _poly(X, Y, [(0.06, -0.92), (0.06, 0.2), ((0.45 + 0.35 * q[0]) * k, 0.2)])
    cabin = _box(X, Y, -0.6 * k, 0.0, -0.2 * k, 0.3)
    return hull | mast | sail | cabin, sail


def _bottle(X, Y, k, q):
    body = _rbox(X, Y, -0.95 * k, -0.25, 0.95 * k, 0.99, 0.35 * k)
    shoulder = _ell(X, Y, 0.0, -0.25, 0.95 * k, 0.22 + 0.1 * q[0])
    neck = _box(X, Y, -0.38 * k, -0.82, 0.38 * k, -0.2)
    cap = _box(X, Y, -0.46 * k, -0.99, 0.46 * k, -0.8)
    label = body & (Y > 0.1 + 0.2 * q[1]) & (Y < 0.55 + 0.2 * q[1])
    return body | shoulder | neck | cap, label | cap


def _bus(X, Y, k, q):
    body = _rbox(X, Y, -0.98 * k, -0.88, 0.98 * k, 0.62, 0.22)
    roof_unit = _box(X, Y, (-0.55 + 0.3 * q[0]) * k, -0.99, (-0.1 + 0.3 * q[0]) * k, -0.85)
    mirror = _seg(X, Y, 0.98 * k, -0.55, 0.98 * k + 0.08, -0.25, 0.05)
    wheels = _circ(X, Y, -0.62 * k, 0.66, 0.32) | _circ(X, Y, 0.62 * k, 0.66, 0.32)
    return body | roof_unit | mirror | wheels, wheels


def _car(X, Y, k, q):
    body = _rbox(X, Y, -0.98 * k, -0.12, 0.98 * k, 0.6, 0.16)
    lean = 0.1 * q[0]
    cabin = _poly(X, Y, [(-0.58 * k, -0.1), ((-0.38 + lean) * k, -0.78), ((0.28 + lean) * k, -0.78), (0.62 * k, -0.1)])
    wheels = _circ(X, Y, -0.6 * k, 0.63, 0.33) | _circ(X, Y, 0.6 * k, 0.63, 0.33)
    return body | cabin | wheels, wheels


def _cat(X, Y, k, q):
    body = _ell(X, Y, -0.15 * k, 0.35, 0.6 * k, 0.6)
    head = _circ(X, Y, 0.55 * k, -0.35, 0.36)
    ears = _poly(X, Y, [(0.3 * k, -0.55), (0.36 * k, -0.99), (0.55 * k, -0.68)]) | _poly(
        X, Y, [(0.62 * k, -0.7), (0.78 * k, -0.99), (0.86 * k, -0.52)]
    )
    tail = _seg(X, Y, -0.7 * k, 0.7, -0.95 * k, -0.2 - 0.5 * q[0], 0.08)
    return body | head | ears | tail, ears


def _chair(X, Y, k, q):
    seat = _box(X, Y, -0.95 * k, -0.02, 0.95 * k, 0.16)
    lean = 0.15 * q[0] * k
    back = _poly(X, Y, [(-0.95 * k, 0.0), (-0.66 * k, 0.0), (-0.66 * k - lean, -0.99), (-0.95 * k - lean, -0.99)])
    rail = _box(X, Y, -0.95 * k - lean, -0.99, -0.5 * k - lean, -0.82)
    legs = _box(X, Y, -0.95 * k, 0.16, -0.78 * k, 0.99) | _box(X, Y, 0.78 * k, 0.16, 0.95 * k, 0.99)
    return seat | back | rail | legs, legs


def _cow(X, Y, k, q):
    body = _rbox(X, Y, -0.78 * k, -0.45, 0.42 * k, 0.35, 0.2)
    neck = _poly(X, Y, [(0.3 * k, -0.4), (0.62 * k, -0.55), (0.68 * k, -0.2), (0.35 * k, 0.1)])
    head = _ell(X, Y, 0.78 * k, -0.42, 0.2 * k, 0.28)
    horns = _seg(X, Y, 0.72 * k, -0.65, 0.62 * k, -0.9, 0.04) | _seg(X, Y, 0.84 * k, -0.65, 0.92 * k, -0.9, 0.04)
    legs = np.zeros(X.shape, dtype=bool)
    for x in (-0.68, -0.5, 0.15, 0.32):
        legs |= _box(X, Y, (x - 0.06) * k, 0.2, (x + 0.06) * k, 0.98)
    tail = _seg(X, Y, -0.78 * k, -0.35, -0.92 * k, 0.2 + 0.2 * q[0], 0.04)
    return body | neck | head | horns | legs | tail, horns


def _diningtable(X, Y, k, q):
    top = _box(X, Y, -0.98 * k, -0.62, 0.98 * k, -0.38)
    apron = _box(X, Y, -0.88 * k, -0.38, 0.88 * k, -0.22)
    legs = _box(X, Y, -0.86 * k, -0.22, -0.76 * k, 0.98) | _box(X, Y, 0.76 * k, -0.22, 0.86 * k, 0.98)
    if q[0] > 0.5:
        legs |= _box(X, Y, -0.05 * k, -0.22, 0.05 * k, 0.98)
    return top | apron | legs, apron


def _dog(X, Y, k, q):
    body = _ell(X, Y, -0.12 * k, -0.02, 0.56 * k, 0.34)
    head = _circ(X, Y, 0.6 * k, -0.45, 0.28)
    snout = _ell(X, Y, 0.6 * k + 0.3, -0.36, 0.2, 0.13)
    ear = _ell(X, Y, 0.48 * k, -0.28, 0.1, 0.26)
    legs = np.zeros(X.shape, dtype=bool)
    for x in (-0.55, -0.4, 0.18, 0.32):
        legs |= _box(X, Y, x * k - 0.06, 0.15, x * k + 0.06, 0.98)
    tail = _seg(X, Y, -0.62 * k, -0.1, -0.95 * k, -0.45 - 0.4 * q[0], 0.06)
    return body | head | snout | ear | legs | tail, ear


def _horse(X, Y, k, q):
    body = _ell(X, Y, -0.1 * k, -0.08, 0.55 * k, 0.3)
    neck = _poly(X, Y, [(0.28 * k, -0.25), (0.5 * k, -0.02), (0.8 * k, -0.68), (0.58 * k, -0.85)])
    head = _seg(X, Y, 0.66 * k, -0.85, 0.98 * k - 0.1, -0.5 - 0.15 * q[0], 0.11)
    legs = np.zeros(X.shape, dtype=bool)
    for x in (-0.55, -0.42, 0.2, 0.34):
        legs |= _seg(X, Y, x * k, 0.1, x * k + 0.04 * (q[1] - 0.5), 0.98, 0.055)
    tail = _seg(X, Y, -0.62 * k, -0.15, -0.9 * k, 0.5, 0.06)
    mane = _seg(X, Y, 0.4 * k, -0.3, 0.62 * k, -0.85, 0.06)
    return body | neck | head | legs | tail | mane, mane | tail


def _motorbike(X, Y, k, q):
    r = 0.42
    cx = 0.98 * k - r
    wheels = _circ(X, Y, -cx, 0.52, r) | _circ(X, Y, cx, 0.52, r)
    engine = _poly(X, Y, [(-0.4 * k, 0.1), (0.3 * k, 0.0), (0.45 * k, 0.45), (-0.3 * k, 0.55)])
    tank = _ell(X, Y, 0.05 * k, -0.18, 0.36 * k, 0.18)
    seat = _box(X, Y, -0.55 * k, -0.2, -0.1 * k, -0.08)
    fork = _seg(X, Y, 0.45 * k, -0.3, cx, 0.52, 0.06)
    bar = _seg(X, Y, 0.42 * k, -0.3, (0.55 + 0.1 * q[0]) * k, -0.75, 0.06)
    return wheels | engine | tank | seat | fork | bar, wheels


def _person(X, Y, k, q):
    head = _circ(X, Y, 0.0, -0.8, min(0.18, 0.5 * k))
    neck = _box(X, Y, -0.12 * k, -0.66, 0.12 * k, -0.58)
    torso = _rbox(X, Y, -0.6 * k, -0.62, 0.6 * k, 0.1, 0.08)
    a0, a1 = 0.6 + 0.4 * q[0], 0.6 + 0.4 * q[1]
    arms = _seg(X, Y, -0.58 * k, -0.55, -0.92 * k, -0.55 + a0 * 0.75, 0.07) | _seg(
        X, Y, 0.58 * k, -0.55, 0.92 * k, -0.55 + a1 * 0.75, 0.07
    )
    spread = 0.1 + 0.3 * q[2]
    legs = _seg(X, Y, -0.28 * k, 0.05, -(0.28 + spread) * k, 0.93, 0.1) | _seg(X, Y, 0.28 * k, 0.05, (0.28 + spread) * k, 0.93, 0.1)
    clothes = torso | legs
    return head | neck | torso | arms | legs, clothes


def _pottedplant(X, Y, k, q):
    pot = _poly(X, Y, [(-0.55 * k, 0.35), (0.55 * k, 0.35), (0.4 * k, 0.99), (-0.4 * k, 0.99)])
    rim = _box(X, Y, -0.62 * k, 0.3, 0.62 * k, 0.42)
    stem = _box(X, Y, -0.06 * k, -0.1, 0.06 * k, 0.35)
    leaves = np.zeros(X.shape, dtype=bool)
    for (x, y, r) in ((0.0, -0.55, 0.4), (-0.5, -0.35, 0.3), (0.5, -0.3, 0.3), (-0.3, -0.8, 0.22), (0.32, -0.75, 0.25), (0.0, -0.15, 0.25)):
        leaves |= _circ(X, Y, x * k * (0.8 + 0.3 * q[0]), y, r * min(1.0, 1.6 * k))
    return pot | rim | stem | leaves, pot | rim


def _sheep(X, Y, k, q):
    body = _ell(X, Y, -0.1 * k, -0.05, 0.6 * k, 0.38)
    for t in np.linspace(0.0, 2 * np.pi, 9)[:-1]:
        body |= _circ(X, Y, -0.1 * k + 0.58 * k * math.cos(t), -0.05 + 0.36 * math.sin(t), 0.17)
    head = _ell(X, Y, 0.78 * k, -0.3 + 0.1 * q[0], 0.16, 0.24)
    legs = np.zeros(X.shape, dtype=bool)
    for x in (-0.5, -0.35, 0.15, 0.3):
        legs |= _box(X, Y, x * k - 0.05, 0.3, x * k + 0.05, 0.95)
    return body | head | legs, head | legs


def _sofa(X, Y, k, q):
    base = _box(X, Y, -0.98 * k, 0.1, 0.98 * k, 0.76)
    back = _rbox(X, Y, -0.9 * k, -0.72 - 0.2 * q[0], 0.9 * k, 0.2, 0.12)
    arms = _rbox(X, Y, -0.98 * k, -0.28, -0.76 * k, 0.76, 0.1) | _rbox(X, Y, 0.76 * k, -0.28, 0.98 * k, 0.76, 0.1)
    feet = _box(X, Y, -0.9 * k, 0.76, -0.8 * k, 0.95) | _box(X, Y, 0.8 * k, 0.76, 0.9 * k, 0.95)
    return base | back | arms | feet, arms | feet


def _train(X, Y, k, q):
    body = _box(X, Y, -0.98 * k, -0.55, 0.62 * k, 0.5)
    nose = _poly(X, Y, [(0.62 * k, -0.55), (0.98 * k, 0.12), (0.98 * k, 0.5), (0.62 * k, 0.5)])
    wheels = np.zeros(X.shape, dtype=bool)
    n = 5 + int(4 * q[0])
    for x in np.linspace(-0.85, 0.75, n):
        wheels |= _circ(X, Y, x * k, 0.64, 0.18)
    rail = _box(X, Y, -0.98 * k, 0.5, 0.9 * k, 0.62)
    roof = _box(X, Y, -0.9 * k, -0.68, 0.45 * k, -0.55)
    pantograph = _seg(X, Y, -0.3 * k, -0.68, -0.1 * k, -0.98, 0.04) | _seg(X, Y, -0.1 * k, -0.98, 0.1 * k, -0.68, 0.04)
    return body | nose | wheels | rail | roof | pantograph, wheels | roof | rail


def _tvmonitor(X, Y, k, q):
    frame = _box(X, Y, -0.98 * k, -0.98, 0.98 * k, 0.62)
    b = 0.1 + 0.06 * q[0]
    screen = _box(X, Y, (-0.98 + b) * k, -0.98 + b * 1.2, (0.98 - b) * k, 0.62 - b * 1.2)
    stand = _box(X, Y, -0.12 * k, 0.62, 0.12 * k, 0.84) | _box(X, Y, -0.45 * k, 0.84, 0.45 * k, 0.98)
    return frame | stand, screen


_SHAPES: dict[str, Callable] = {
    "aeroplane": _aeroplane, "bicycle": _bicycle, "bird": _bird, "boat": _boat, "bottle": _bottle,
    "bus": _bus, "car": _car, "cat": _cat, "chair": _chair, "cow": _cow, "diningtable": _diningtable,
    "dog": _dog, "horse": _horse, "motorbike": _motorbike, "person": _person, "pottedplant": _pottedplant,
    "sheep": _sheep, "sofa": _sofa, "train": _train, "tvmonitor": _tvmonitor,
}

# ---------------------------------------------------------------------------------------------
# Colours and textures
# ---------------------------------------------------------------------------------------------

# HSV ranges: hue in degrees (may wrap), saturation, value.
_PALETTES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "white": ((0, 360), (0.0, 0.12), (0.72, 0.97)),
    "grey": ((0, 360), (0.0, 0.12), (0.35, 0.7)),
    "black": ((0, 360), (0.0, 0.25), (0.05, 0.25)),
    "brown": ((15, 40), (0.35, 0.75), (0.25, 0.6)),
    "orange": ((18, 40), (0.6, 0.95), (0.6, 0.95)),
    "red": ((-15, 12), (0.55, 0.95), (0.4, 0.9)),
    "yellow": ((42, 62), (0.55, 0.95), (0.65, 0.97)),
    "green": ((75, 150), (0.35, 0.85), (0.25, 0.75)),
    "blue": ((190, 240), (0.4, 0.9), (0.3, 0.85)),
    "skin": ((12, 32), (0.25, 0.55), (0.55, 0.9)),
    "purple": ((260, 310), (0.3, 0.8), (0.3, 0.8)),
}


@dataclass(frozen=True)
class Texture:
    """A texture family with class-specific parameter ranges (freq in cycles per unit of Y)."""

    family: str  # stripes, dots, checker, gradient, noise, rings, spots
    freq: tuple[float, float]
    angle: tuple[float, float]  # degrees, in the object's frame (rotates with it)
    amp: tuple[float, float]  # how far the secondary colour is mixed in
    second: str = "dark"  # secondary colour: "dark", "light" or a palette name


@dataclass(frozen=True)
class Style:
    palettes: tuple[str, ...]
    texture: Texture
    part_palettes: tuple[str, ...]
    part_texture: Texture
    aspect: tuple[float, float]  # k = half-width / half-height of the shape box
    angle: tuple[float, float]  # rotation range in degrees
    size: float = 1.0  # relative scale


_T = Texture
_STYLES: dict[str, Style] = {
    "aeroplane": Style(("white", "grey", "blue", "red"), _T("gradient", (1, 1), (-20, 20), (0.3, 0.5), "light"),
                       ("grey", "black"), _T("noise", (3, 5), (0, 0), (0.1, 0.2)), (1.2, 1.8), (-35, 35), 1.1),
    "bicycle": Style(("red", "blue", "black", "grey"), _T("noise", (3, 5), (0, 0), (0.2, 0.35)),
                     ("black", "grey"), _T("rings", (6, 9), (0, 0), (0.2, 0.35)), (1.5, 1.8), (-10, 10)),
    "bird": Style(("brown", "grey", "yellow", "black"), _T("stripes", (5, 8), (30, 60), (0.35, 0.6)),
                  ("brown", "white", "black"), _T("stripes", (7, 10), (-20, 20), (0.3, 0.5)), (1.0, 1.5), (-30, 30), 0.8),
    "boat": Style(("white", "red", "blue", "grey"), _T("stripes", (1.5, 3), (85, 95), (0.4, 0.7), "light"),
                  ("white", "red", "yellow"), _T("gradient", (1, 1), (80, 100), (0.2, 0.4)), (1.2, 1.8), (-8, 8)),
    "bottle": Style(("green", "brown", "blue", "white"), _T("cylinder", (1, 1), (0, 0), (0.45, 0.7), "light"),
                    ("white", "red", "yellow"), _T("stripes", (4, 6), (85, 95), (0.2, 0.4)), (0.3, 0.45), (-15, 15), 0.8),
    "bus": Style(("yellow", "red", "white", "blue"), _T("checker", (2.5, 3.5), (0, 0), (0.45, 0.7)),
                 ("black",), _T("rings", (5, 8), (0, 0), (0.2, 0.3)), (1.5, 2.2), (-8, 8), 1.2),
    "car": Style(("red", "blue", "grey", "black", "white"), _T("gradient", (1, 1), (80, 100), (0.35, 0.55), "light"),
                 ("black",), _T("rings", (5, 8), (0, 0), (0.2, 0.3)), (1.6, 2.2), (-8, 8)),
    "cat": Style(("orange", "grey", "black", "brown"), _T("stripes", (3.5, 5.5), (-15, 15), (0.35, 0.6)),
                 ("skin", "black", "grey"), _T("noise", (4, 6), (0, 0), (0.1, 0.2)), (1.1, 1.6), (-15, 15), 0.9),
    "chair": Style(("brown", "black", "red", "grey"), _T("stripes", (6, 9), (-5, 5), (0.2, 0.35)),
                   ("brown", "black"), _T("stripes", (6, 9), (-5, 5), (0.2, 0.35)), (0.6, 0.9), (-8, 8), 0.9),
    "cow": Style(("brown", "black", "white"), _T("spots", (1.8, 2.8), (0, 0), (0.85, 0.95), "contrast"),
                 ("white", "grey"), _T("noise", (4, 6), (0, 0), (0.1, 0.2)), (1.3, 1.7), (-8, 8), 1.1),
    "diningtable": Style(("brown", "white", "orange"), _T("stripes", (10, 16), (85, 95), (0.2, 0.35)),
                         ("brown", "black"), _T("stripes", (10, 16), (85, 95), (0.2, 0.35)), (1.6, 2.4), (-5, 5), 1.2),
    "dog": Style(("brown", "black", "white", "orange"), _T("noise", (2, 4), (0, 0), (0.3, 0.5)),
                 ("brown", "black"), _T("noise", (2, 4), (0, 0), (0.2, 0.4)), (1.1, 1.5), (-12, 12)),
    "horse": Style(("brown", "black", "white", "grey"), _T("noise", (6, 9), (0, 0), (0.15, 0.3)),
                   ("black", "brown"), _T("stripes", (10, 14), (0, 0), (0.2, 0.3)), (1.0, 1.4), (-8, 8), 1.1),
    "motorbike": Style(("black", "red", "grey", "blue"), _T("rings", (3, 5), (0, 0), (0.3, 0.5)),
                       ("black",), _T("rings", (5, 8), (0, 0), (0.2, 0.3)), (1.4, 1.8), (-10, 10)),
    "person": Style(("skin",), _T("gradient", (1, 1), (80, 100), (0.1, 0.2)),
                    ("blue", "red", "black", "grey", "green", "white"), _T("stripes", (3, 6), (85, 95), (0.3, 0.5)),
                    (0.35, 0.5), (-12, 12)),
    "pottedplant": Style(("green",), _T("dots", (5, 8), (0, 30), (0.4, 0.6)),
                         ("brown", "orange", "red"), _T("stripes", (3, 5), (85, 95), (0.15, 0.3)), (0.6, 0.9), (-5, 5), 0.9),
    "sheep": Style(("white", "grey"), _T("dots", (9, 13), (0, 30), (0.25, 0.4)),
                   ("black", "grey"), _T("noise", (4, 6), (0, 0), (0.1, 0.2)), (1.2, 1.5), (-8, 8), 0.9),
    "sofa": Style(("red", "brown", "blue", "grey", "green"), _T("checker", (1.2, 2.0), (0, 0), (0.2, 0.35)),
                  ("red", "brown", "blue", "grey", "green"), _T("noise", (4, 6), (0, 0), (0.1, 0.2)), (1.8, 2.6), (-5, 5), 1.2),
    "train": Style(("red", "blue", "grey", "yellow"), _T("stripes", (2.5, 4), (85, 95), (0.4, 0.6), "light"),
                   ("black", "grey"), _T("noise", (4, 6), (0, 0), (0.1, 0.2)), (2.4, 3.4), (-15, 15), 1.2),
    "tvmonitor": Style(("black", "grey"), _T("noise", (6, 9), (0, 0), (0.05, 0.15)),
                       ("blue", "black", "purple"), _T("gradient", (1, 1), (30, 60), (0.5, 0.8), "light"), (1.1, 1.5), (-5, 5), 0.9),
}

_CLUTTER_TEXTURES = (
    _T("stripes", (1, 12), (0, 180), (0.1, 0.5)),
    _T("noise", (1, 8), (0, 0), (0.1, 0.5)),
    _T("gradient", (1, 1), (0, 360), (0.2, 0.6)),
    _T("checker", (1, 6), (0, 90), (0.1, 0.4)),
    _T("dots", (2, 10), (0, 90), (0.1, 0.4)),
)
_BACKGROUND_PALETTES = tuple(_PALETTES)


def _colour(rng: np.random.Generator, palette: str) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = _PALETTES[palette]
    h = (rng.uniform(h0, h1) % 360.0) / 360.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _value_noise(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, freq: float, bound: float) -> np.ndarray:
    """Smooth value noise in [0, 1] at (X, Y) with about ``freq`` cells per unit, for |X|,|Y| <= bound."""
    n = int(math.ceil(2 * bound * freq)) + 2
    grid = rng.random((n, n), dtype=np.float32)
    gx = np.clip((X + bound) * freq, 0, n - 1.001)
    gy = np.clip((Y + bound) * freq, 0, n - 1.001)
    x0 = gx.astype(np.int64)
    y0 = gy.astype(np.int64)
    fx = gx - x0
    fy = gy - y0
    fx = fx * fx * (3 - 2 * fx)
    fy = fy * fy * (3 - 2 * fy)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bot = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def _texture(rng: np.random.Generator, tex: Texture, X: np.ndarray, Y: np.ndarray, k: float, bound: float) -> np.ndarray:
    """Texture value t in [0, 1] at the local coordinates."""
    f = rng.uniform(*tex.freq)
    a = math.radians(rng.uniform(*tex.angle))
    phase = rng.uniform(0, 2 * math.pi)
    along = X * math.cos(a) + Y * math.sin(a)
    fam = tex.family
    if fam == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * along + phase)
    elif fam == "checker":
        across = -X * math.sin(a) + Y * math.cos(a)
        t = ((np.floor(f * along + phase) + np.floor(f * across + phase)) % 2).astype(np.float32)
    elif fam == "dots":
        across = -X * math.sin(a) + Y * math.cos(a)
        fu = (f * along + phase) % 1.0 - 0.5
        fv = (f * across + phase) % 1.0 - 0.5
        t = ((fu * fu + fv * fv) <= 0.09).astype(np.float32)
    elif fam == "gradient":
        t = np.clip(0.5 + along / (2 * max(bound, 1e-6)), 0, 1)
    elif fam == "cylinder":
        t = np.clip(np.abs(X) / max(k, 1e-6), 0, 1) ** 1.5
    elif fam == "rings":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * np.hypot(X, Y) + phase)
    elif fam == "noise":
        t = _value_noise(rng, X, Y, f, bound)
    elif fam == "spots":
        t = (_value_noise(rng, X, Y, f, bound) > 0.55).astype(np.float32)
    else:  # pragma: no cover - table typo
        raise ValueError(f"unknown texture family {fam}")
    return t.astype(np.float32)


def _second_colour(rng: np.random.Generator, base: np.ndarray, how: str) -> np.ndarray:
    if how == "dark":
        return base * rng.uniform(0.35, 0.6)
    if how == "light":
        return base + (255.0 - base) * rng.uniform(0.4, 0.7)
    if how == "contrast":  # black on light, white on dark (cow patches)
        return _colour(rng, "black") if base.mean() > 110 else _colour(rng, "white")
    return _colour(rng, how)


def _paint(rng: np.random.Generator, palette: str, tex: Texture, X, Y, k, bound) -> np.ndarray:
    base = _colour(rng, palette)
    second = _second_colour(rng, base, tex.second)
    t = _texture(rng, tex, X, Y, k, bound) * np.float32(rng.uniform(*tex.amp))
    return base[None, None, :] * (1 - t[..., None]) + second[None, None, :] * t[..., None]


# ---------------------------------------------------------------------------------------------
# Rendering one scene
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderedObject:
    label: int  # class index 1..20
    bbox: tuple[int, int, int, int]  # VOC 1-based inclusive xmin, ymin, xmax, ymax of visible pixels
    occluded: bool
    truncated: bool
    occlusion: float  # fraction of the drawn area hidden by later instances/occluders
    drawn: int  # drawn pixels inside the image
    visible: int  # drawn pixels not covered by anything drawn later (before the void boundary)


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    classes: np.ndarray  # H x W uint8 (0-20, 255)
    objects_map: np.ndarray  # H x W uint8 (0, 1..n, 255)
    objects: list[RenderedObject]  # kept objects; object k has instance id k + 1
    # With keep_layers=True: every shape drawn after the background, back to front, as
    # (instance id, full-image bool mask); id 0 = a clutter occluder, -1 = a dropped instance.
    layers: list[tuple[int, np.ndarray]] | None = None


def _local_coords(H, W, cx, cy, hw, hh, angle, flip):
    """Crop slices around an object and its isotropic local coordinates (X in [-k,k], Y in [-1,1])."""
    rad = math.hypot(hw, hh) + 1.0
    y0, y1 = max(0, int(math.floor(cy - rad))), min(H, int(math.ceil(cy + rad)) + 1)
    x0, x1 = max(0, int(math.floor(cx - rad))), min(W, int(math.ceil(cx + rad)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = math.cos(angle), math.sin(angle)
    X = (c * xs + s * ys) * (flip / hh)
    Y = (-s * xs + c * ys) / hh
    return (slice(y0, y1), slice(x0, x1)), X, Y


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    yy = np.arange(H, dtype=np.float32)[:, None] / max(H, W)
    xx = np.arange(W, dtype=np.float32)[None, :] / max(H, W)
    c0 = _colour(rng, _BACKGROUND_PALETTES[int(rng.integers(len(_BACKGROUND_PALETTES)))])
    c1 = _colour(rng, _BACKGROUND_PALETTES[int(rng.integers(len(_BACKGROUND_PALETTES)))])
    a = rng.uniform(0, 2 * math.pi)
    g = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)
    img = c0 * (1 - g[..., None]) + c1 * g[..., None]
    noise = _value_noise(rng, np.broadcast_to(xx, (H, W)), np.broadcast_to(yy, (H, W)), rng.uniform(3, 8), 1.0)
    img = img * (0.75 + 0.5 * noise[..., None])
    for _ in range(int(rng.integers(2, 7))):
        _draw_clutter(rng, img, None, H, W, rng.uniform(0.08, 0.35))
    return img.astype(np.float32)


def _draw_clutter(rng, img, idmap, H, W, rel, centre=None):
    """One clutter shape (ellipse, rectangle or bar) with a generic texture; label background.
    Returns (crop slices, mask) or None when it falls outside the image."""
    R = rel * min(H, W)
    if centre is None:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    else:
        cx, cy = centre
    kind = int(rng.integers(3))
    k = rng.uniform(0.5, 2.0) if kind < 2 else rng.uniform(3.0, 8.0)
    hh = R / math.sqrt(k)
    got = _local_coords(H, W, cx, cy, hh * k, hh, rng.uniform(0, math.pi), 1.0)
    if got is None:
        return None
    sl, X, Y = got
    if kind == 0:
        mask = _ell(X, Y, 0.0, 0.0, k, 1.0)
    else:
        mask = _box(X, Y, -k, -1.0, k, 1.0)
    tex = _CLUTTER_TEXTURES[int(rng.integers(len(_CLUTTER_TEXTURES)))]
    pal = _BACKGROUND_PALETTES[int(rng.integers(len(_BACKGROUND_PALETTES)))]
    rgb = _paint(rng, pal, tex, X, Y, k, math.hypot(k, 1.0))
    img[sl][mask] = rgb[mask]
    if idmap is not None:
        idmap[sl][mask] = 0
    return sl, mask


def _void_boundary(depth: np.ndarray, width: int) -> np.ndarray:
    """Pixels to void where two labels meet: the side with the smaller depth id (background, or
    the instance behind)."""
    edge = np.zeros(depth.shape, dtype=bool)
    a, b = depth[:, :-1], depth[:, 1:]
    diff = a != b
    edge[:, :-1] |= diff & (a < b)
    edge[:, 1:] |= diff & (b < a)
    a, b = depth[:-1, :], depth[1:, :]
    diff = a != b
    edge[:-1, :] |= diff & (a < b)
    edge[1:, :] |= diff & (b < a)
    if width > 1:
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge, iterations=width - 1)
    return edge


def _layout(rng, counts_by_class, H, W):
    """Instances (class, cx, cy, hw, hh, angle, flip, q) in a random depth order."""
    labels = [c for c, n in counts_by_class for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    n = len(labels)
    side = min(H, W)
    placed = []
    for c in labels:
        st = _STYLES[VOC_CLASSES[c]]
        k = rng.uniform(*st.aspect)
        scale = rng.uniform(0.2, 0.42) * st.size / n ** 0.3
        R = scale * side  # half-diagonal-ish size in pixels
        hh = R / math.sqrt(k)
        hw = hh * k
        if placed and rng.random() < 0.6:
            ref = placed[int(rng.integers(len(placed)))]
            cx = ref[1] + rng.normal(0, 0.8) * ref[3]
            cy = ref[2] + rng.normal(0, 0.8) * ref[4]
        else:
            cx = rng.uniform(0.12, 0.88) * W
            cy = rng.uniform(0.12, 0.88) * H
        cx = float(np.clip(cx, 0.05 * W, 0.95 * W))
        cy = float(np.clip(cy, 0.05 * H, 0.95 * H))
        angle = math.radians(rng.uniform(*st.angle))
        flip = 1.0 if rng.random() < 0.5 else -1.0
        placed.append((c, cx, cy, hw, hh, angle, flip, rng.random(4)))
    return placed


def render_scene(
    rng: np.random.Generator,
    H: int,
    W: int,
    counts_by_class: tuple[tuple[int, int], ...],
    occluder_prob: float = 0.3,
    occlude_all: bool = False,
    min_visible: int | None = None,
    void_width: int = 1,
    keep_layers: bool = False,
) -> Scene:
    """Draw one scene: background, instances back to front, optional clutter occluders in front.

    ``counts_by_class`` is ``((class, n_instances), ...)``. ``occlude_all`` puts an occluder over
    part of every instance. Objects with fewer than ``min_visible`` visible pixels are dropped
    (their pixels become void). Returns the image, both masks and the kept objects (and, with
    ``keep_layers``, every drawn shape in depth order, to recompute occlusion independently).
    """
    if min_visible is None:
        min_visible = max(12, int(0.004 * H * W))
    img = _background(rng, H, W)
    depth = np.zeros((H, W), dtype=np.int16)  # 0 background, i+1 = i-th instance drawn
    drawn = []
    layout = _layout(rng, counts_by_class, H, W)
    for i, (c, cx, cy, hw, hh, angle, flip, q) in enumerate(layout):
        got = _local_coords(H, W, cx, cy, hw, hh, angle, flip)
        if got is None:
            drawn.append(None)
            continue
        sl, X, Y = got
        k = hw / hh
        name = VOC_CLASSES[c]
        mask, part = _SHAPES[name](X, Y, k, q)
        st = _STYLES[name]
        bound = math.hypot(k, 1.0)
        rgb = _paint(rng, st.palettes[int(rng.integers(len(st.palettes)))], st.texture, X, Y, k, bound)
        prgb = _paint(rng, st.part_palettes[int(rng.integers(len(st.part_palettes)))], st.part_texture, X, Y, k, bound)
        rgb = np.where(part[..., None], prgb, rgb)
        shade = np.float32(rng.uniform(0.8, 1.15))
        img[sl][mask] = rgb[mask] * shade
        depth[sl][mask] = i + 1
        drawn.append((sl, mask))
    # clutter occluders in front of the objects (background label)
    targets, occluders = [], []
    if occlude_all:
        targets = list(range(len(layout)))
    elif layout and rng.random() < occluder_prob:
        targets = [int(t) for t in rng.choice(len(layout), size=min(len(layout), int(rng.integers(1, 3))), replace=False)]
    for t in targets:
        c, cx, cy, hw, hh, angle, flip, q = layout[t]
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(0.5, 0.9)
        centre = (cx + math.cos(ang) * hw * dist, cy + math.sin(ang) * hh * dist)
        rel = rng.uniform(0.25, 0.5) * math.hypot(hw, hh) / min(H, W)
        occluders.append(_draw_clutter(rng, img, depth, H, W, rel, centre=centre))

    # visibility, occlusion, drops
    n = len(layout)
    visible = np.bincount(depth.ravel(), minlength=n + 1)[1:]
    full = np.zeros((H, W), dtype=bool)
    kept, dropped = [], []
    for i in range(n):
        if drawn[i] is None or visible[i] < min_visible:
            dropped.append(i)
        else:
            kept.append(i)
    void = _void_boundary(depth, void_width) if void_width > 0 else np.zeros((H, W), dtype=bool)
    for i in dropped:
        void |= depth == i + 1
    # an instance reduced to a sliver by the void boundary is dropped as well
    remaining = np.bincount(depth[~void].ravel(), minlength=n + 1)[1:]
    for i in list(kept):
        if remaining[i] < max(4, min_visible // 3):
            kept.remove(i)
            void |= depth == i + 1

    classes = np.zeros((H, W), dtype=np.uint8)
    objects_map = np.zeros((H, W), dtype=np.uint8)
    objects = []
    for new_id, i in enumerate(kept, start=1):
        sl, mask = drawn[i]
        vis = depth == i + 1
        classes[vis] = layout[i][0]
        objects_map[vis] = new_id
        full[:] = False
        full[sl] = mask
        area = int(mask.sum())
        occ = 1.0 - float(visible[i]) / area
        ys, xs = np.nonzero(vis)
        truncated = bool(full[0, :].any() or full[-1, :].any() or full[:, 0].any() or full[:, -1].any())
        objects.append(RenderedObject(
            label=int(layout[i][0]),
            bbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
            occluded=occ >= OCCLUSION_THRESHOLD,
            truncated=truncated,
            occlusion=occ,
            drawn=area,
            visible=int(visible[i]),
        ))
    classes[void] = IGNORE_INDEX
    objects_map[void] = IGNORE_INDEX

    # global lighting and sensor noise
    yy = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, W, dtype=np.float32)[None, :]
    gain = 1.0 + rng.uniform(-0.25, 0.25) * xx + rng.uniform(-0.25, 0.25) * yy
    img = img * np.float32(rng.uniform(0.85, 1.1)) * gain[..., None]
    img = img + rng.normal(0.0, rng.uniform(2.0, 6.0), size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    layers = None
    if keep_layers:
        ids = {i: new_id for new_id, i in enumerate(kept, start=1)}
        layers = [(ids.get(i, -1), _full_mask(H, W, d)) for i, d in enumerate(drawn)]
        layers += [(0, _full_mask(H, W, d)) for d in occluders]
    return Scene(image, classes, objects_map, objects, layers)


def _full_mask(H: int, W: int, drawn) -> np.ndarray:
    full = np.zeros((H, W), dtype=bool)
    if drawn is not None:
        full[drawn[0]] = drawn[1]
    return full


# ---------------------------------------------------------------------------------------------
# Scene specifications (what each image must contain) and the per-image task
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """What one image must hold: its classes, instances per class, and an optional pattern."""

    classes: tuple[int, ...]
    counts: tuple[int, ...] | None  # None: sample per attempt
    total: int | None = None  # exact number of objects required (objK)
    occlude_all: bool = False  # every object occluded (occall)
    pattern: str = ""  # the stratification pattern or "ooc:<a>+<b>", "" for VOC-frequency images


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index), stream])))


def _pattern_spec(rng: np.random.Generator, pattern: str, max_instances: int) -> SceneSpec:
    if pattern.startswith("person-"):
        c = CLASS_INDEX[pattern[len("person-"):]]
        classes = tuple(sorted((c, CLASS_INDEX["person"])))
        return SceneSpec(classes, sample_counts(rng, classes, max_instances), pattern=pattern)
    if pattern.startswith("only-"):
        classes = (CLASS_INDEX[pattern[len("only-"):]],)
        return SceneSpec(classes, sample_counts(rng, classes, max_instances), pattern=pattern)
    if pattern.startswith("uniq"):
        k = int(pattern[4:])
        classes = sample_class_set(rng, lambda s: len(s) == k)
        return SceneSpec(classes, sample_counts(rng, classes, max_instances), pattern=pattern)
    if pattern.startswith("obj"):
        k = int(pattern[3:])
        classes = sample_class_set(rng, lambda s: len(s) <= k)
        return SceneSpec(classes, sample_counts(rng, classes, max_instances, total=k), total=k, pattern=pattern)
    if pattern == "occall":
        classes = sample_class_set(rng)
        return SceneSpec(classes, sample_counts(rng, classes, max_instances), occlude_all=True, pattern=pattern)
    raise ValueError(f"unknown pattern {pattern}")


# Stratified val patterns: class-set patterns are topped up to the quota; render-dependent ones
# always get the quota (see the module docstring).
CLASS_SET_PATTERNS = tuple(f"person-{c}" for c in TABLE3_CLASSES) + tuple(f"only-{c}" for c in TABLE3_CLASSES) + ("uniq3", "uniq4")
RENDER_PATTERNS = ("obj4", "occall")


def _matches(pattern: str, classes: tuple[int, ...]) -> bool:
    person = CLASS_INDEX["person"]
    if pattern.startswith("person-"):
        return classes == tuple(sorted((CLASS_INDEX[pattern[7:]], person)))
    if pattern.startswith("only-"):
        return classes == (CLASS_INDEX[pattern[5:]],)
    if pattern.startswith("uniq"):
        return len(classes) == int(pattern[4:])
    raise ValueError(pattern)


def _image_size(rng: np.random.Generator, preset: Preset) -> tuple[int, int]:
    if preset.name == "large":  # VOC-like: long side near 500
        long_side = int(rng.integers(375, preset.max_side + 1))
        short_side = int(rng.integers(preset.min_side, long_side + 1))
        return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    return int(rng.integers(preset.min_side, preset.max_side + 1)), int(rng.integers(preset.min_side, preset.max_side + 1))


def _accept(scene: Scene, spec: SceneSpec) -> bool:
    present = tuple(sorted({o.label for o in scene.objects}))
    if present != spec.classes:
        return False
    if spec.total is not None and len(scene.objects) != spec.total:
        return False
    if spec.occlude_all and not all(o.occluded for o in scene.objects):
        return False
    return True


MAX_ATTEMPTS = 200


def make_scene(seed: int, split: str, index: int, spec: SceneSpec, preset: Preset, void_width: int = 1) -> Scene:
    """Render image ``index`` of ``split``: redraw until the scene satisfies ``spec``."""
    rng = _rng(seed, split, index, _RENDER)
    H, W = _image_size(rng, preset)
    for _ in range(MAX_ATTEMPTS):
        counts = spec.counts if spec.counts is not None else sample_counts(rng, spec.classes, preset.max_instances)
        scene = render_scene(rng, H, W, tuple(zip(spec.classes, counts)), occlude_all=spec.occlude_all, void_width=void_width)
        if _accept(scene, spec):
            return scene
    raise RuntimeError(f"SynthVOC: could not draw {split} image {index} for {spec} in {MAX_ATTEMPTS} attempts")


def annotation_xml(image_id: str, scene: Scene, source: str) -> str:
    """VOC-style Annotations XML for a rendered scene (objects in instance-id order)."""
    H, W = scene.classes.shape
    lines = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>SynthVOC</database>",
        f"\t\t<annotation>{source}</annotation>",
        "\t\t<image>synthetic</image>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{W}</width>",
        f"\t\t<height>{H}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        lines += [
            "\t<object>",
            f"\t\t<name>{VOC_CLASSES[obj.label]}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(obj.truncated)}</truncated>",
            f"\t\t<occluded>{int(obj.occluded)}</occluded>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0}</xmin>",
            f"\t\t\t<ymin>{y0}</ymin>",
            f"\t\t\t<xmax>{x1}</xmax>",
            f"\t\t\t<ymax>{y1}</ymax>",
            "\t\t</bndbox>",
            "\t\t<difficult>0</difficult>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _write_scene(root: Path, image_id: str, scene: Scene, aug: bool, source: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(scene.image, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(buf.getvalue())
    write_index_png(root / "SegmentationClass" / f"{image_id}.png", scene.classes)
    if aug:
        write_index_png(root / "SegmentationClassAug" / f"{image_id}.png", scene.classes)
    write_index_png(root / "SegmentationObject" / f"{image_id}.png", scene.objects_map)
    (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, scene, source), encoding="utf-8")


def _task(args) -> tuple[str, tuple[int, ...], int, int]:
    """Worker entry: render and write one image; return (id, classes, n_objects, n_occluded)."""
    root, seed, split, index, image_id, spec, preset, void_width = args
    scene = make_scene(seed, split, index, spec, preset, void_width)
    _write_scene(Path(root), image_id, scene, aug=split == "train", source=f"rbseg SynthVOC {preset.name} seed {seed}")
    present = tuple(sorted({o.label for o in scene.objects}))
    return image_id, present, len(scene.objects), sum(o.occluded for o in scene.objects)


# ---------------------------------------------------------------------------------------------
# Planning the splits
# ---------------------------------------------------------------------------------------------


def plan_free(seed: int, split: str, index: int, preset: Preset) -> SceneSpec:
    """A VOC-frequency scene spec (class set from the CSV, instance counts sampled when drawn)."""
    rng = _rng(seed, split, index, _PLAN)
    return SceneSpec(sample_class_set(rng), None)


def plan_val(seed: int, preset: Preset, train_sets=None) -> list[SceneSpec]:
    """The val specs: VOC-frequency scenes, the last ones replaced by the stratification quota
    (and, when the preset has a ``cooc_quota``, some free ones by rare-pair scenes: ``train_sets``,
    the train class sets, are needed to count co-occurrences)."""
    n, q = preset.n_val, preset.val_quota
    stream = [plan_free(seed, "val", i, preset) for i in range(n)]
    fixed = [p for p in RENDER_PATTERNS for _ in range(q)]

    def deficits(n_free: int) -> list[str]:
        head = stream[:n_free]
        out = []
        for p in CLASS_SET_PATTERNS:
            have = sum(_matches(p, s.classes) for s in head)
            out += [p] * max(0, q - have)
        return out

    need = len(fixed)
    while True:  # smallest number of replaced images that covers the deficits of the rest
        extra = deficits(n - need)
        if len(fixed) + len(extra) <= need or need >= n:
            break
        need += 1
    patterns = fixed + extra
    n_free = n - len(patterns)
    if n_free < 0:
        raise RbsegError(f"preset '{preset.name}': val has {n} images, fewer than its {len(patterns)} stratified ones")
    specs = stream[:n_free]
    for j, p in enumerate(patterns):
        idx = n_free + j
        specs.append(_pattern_spec(_rng(seed, "val", idx, _PLAN), p, preset.max_instances))
    if preset.cooc_quota:
        if train_sets is None:
            raise ValueError(f"preset '{preset.name}' has a cooc_quota: plan_val needs the train class sets")
        specs = _top_up_cooc(seed, preset, specs, n_free, train_sets)
    return specs


_COOC_STREAM = 2  # the rng stream of a val image replaced by the co-occurrence top-up


def _top_up_cooc(seed: int, preset: Preset, specs: list[SceneSpec], n_free: int, train_sets) -> list[SceneSpec]:
    """Replace VOC-frequency val images (from the end of the free part backwards, skipping any that a
    class-set pattern or the subset itself counts) by class sets whose every pair is rare, until the
    rarest co-occurrence subset (``cooc10`` at the scaled threshold, counted over train + val exactly as
    data/subsets.py does) holds ``preset.cooc_quota`` images. Candidates are CSV class sets (>= 2
    classes), drawn with the VOC frequencies among those that keep every pair below the threshold."""
    from itertools import combinations

    from .subsets import scaled_thresholds

    t = scaled_thresholds(preset.n_train + preset.n_val)[-1]
    base = cooccurrence(train_sets)
    specs = list(specs)

    def counts() -> np.ndarray:
        return base + cooccurrence(s.classes for s in specs)

    def rare(cooc) -> set[int]:
        return {i for i, s in enumerate(specs)
                if len(s.classes) >= 2 and max(int(cooc[a, b]) for a, b in combinations(s.classes, 2)) < t}

    j = n_free - 1
    while True:
        cooc = counts()
        have = rare(cooc)
        if len(have) >= preset.cooc_quota:
            return specs
        while j >= 0 and (j in have or any(_matches(p, specs[j].classes) for p in CLASS_SET_PATTERNS)):
            j -= 1
        if j < 0:
            raise RbsegError(f"preset '{preset.name}': val is too small for {preset.cooc_quota} co-occurrence images")
        old = specs[j].classes
        cooc = cooc - cooccurrence([old])  # without the image being replaced
        ok = lambda s: len(s) >= 2 and all(int(cooc[a, b]) + 1 < t for a, b in combinations(s, 2))  # noqa: E731
        specs[j] = SceneSpec(sample_class_set(_rng(seed, "val", j, _COOC_STREAM), where=ok), None, pattern="cooc")
        j -= 1


def cooccurrence(class_sets) -> np.ndarray:
    """21 x 21 matrix: number of images containing both classes (diagonal: images with the class)."""
    m = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for s in class_sets:
        idx = np.asarray(sorted(set(s)), dtype=np.int64)
        if idx.size:
            m[np.ix_(idx, idx)] += 1
    return m


def zero_pairs(cooc: np.ndarray) -> list[tuple[int, int]]:
    """Foreground class pairs (a < b) that never co-occur."""
    return [(a, b) for a in range(1, NUM_CLASSES) for b in range(a + 1, NUM_CLASSES) if cooc[a, b] == 0]


def plan_ooc(seed: int, preset: Preset, train_sets) -> list[SceneSpec]:
    pairs = zero_pairs(cooccurrence(train_sets))
    if not pairs:
        raise RbsegError("SynthVOC: every class pair co-occurs in train; no out-of-context pair left for 'ooc'")
    specs = []
    for i in range(preset.n_ooc):
        rng = _rng(seed, "ooc", i, _PLAN)
        a, b = pairs[int(rng.integers(len(pairs)))]
        specs.append(SceneSpec((a, b), sample_counts(rng, (a, b), preset.max_instances),
                               pattern=f"ooc:{VOC_CLASSES[a]}+{VOC_CLASSES[b]}"))
    return specs


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

_FOLDERS = ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "SegmentationObject", "Annotations", "ImageSets/Segmentation")


def _run_tasks(tasks, workers: int, progress):
    results = []
    # Worker processes are forked (Linux): spawning would re-import the caller's __main__ script.
    # Elsewhere the work runs in-process; the files are identical either way.
    if workers <= 1 or len(tasks) < 8 or not sys.platform.startswith("linux"):
        for t in tasks:
            results.append(_task(t))
            if progress is not None:
                progress.advance()
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        for r in pool.map(_task, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
            results.append(r)
            if progress is not None:
                progress.advance()
    return results


class _Progress:
    """Thin wrapper over a rich progress bar with one task."""

    def __init__(self, total: int, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
        self._id = self._p.add_task(description, total=total)

    def advance(self) -> None:
        self._p.advance(self._id)

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)


def generate(
    out: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    progress: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    void_width: int = 1,
) -> Path:
    """Write a SynthVOC tree to ``out/VOC2012/`` and return that root.

    Refuses to replace a non-empty ``out/VOC2012`` unless ``overwrite``. ``workers`` defaults to the
    preset's (at most the CPU count); the files do not depend on it.
    """
    if preset not in PRESETS:
        raise RbsegError(f"unknown SynthVOC preset '{preset}' (choose from {', '.join(PRESETS)})")
    if void_width < 0:
        raise RbsegError(f"void_width must be >= 0, got {void_width}")
    p = PRESETS[preset]
    out = Path(out).expanduser()
    final = out / "VOC2012"
    if final.exists() and not final.is_dir():
        raise RbsegError("exists and is not a folder", final)
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise RbsegError("already holds a dataset; pass --overwrite to replace it", final)
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(p.workers, os.cpu_count() or 1)

    tmp = Path(tempfile.mkdtemp(prefix=".VOC2012.tmp-", dir=out))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder is not
        for f in _FOLDERS:
            (tmp / f).mkdir(parents=True, exist_ok=True)
        train_ids = [f"train_{i:06d}" for i in range(p.n_train)]
        val_ids = [f"val_{i:06d}" for i in range(p.n_val)]
        ooc_ids = [f"ooc_{i:06d}" for i in range(p.n_ooc)]
        train_specs = [plan_free(seed, "train", i, p) for i in range(p.n_train)]
        val_specs = plan_val(seed, p, [s.classes for s in train_specs])
        total = p.n_train + p.n_val + p.n_ooc
        ctx = _Progress(total, f"SynthVOC {preset} (seed {seed})") if progress else None
        if ctx is not None:
            ctx.__enter__()
        try:
            mk = lambda split, ids, specs: [(str(tmp), seed, split, i, ids[i], specs[i], p, void_width) for i in range(len(ids))]  # noqa: E731
            train_res = _run_tasks(mk("train", train_ids, train_specs) + mk("val", val_ids, val_specs), workers, ctx)
            train_sets = [r[1] for r in train_res[: p.n_train]]
            ooc_specs = plan_ooc(seed, p, train_sets)
            ooc_res = _run_tasks(mk("ooc", ooc_ids, ooc_specs), workers, ctx)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        val_res = train_res[p.n_train:]
        sets_dir = tmp / "ImageSets" / "Segmentation"
        lists = {"train": train_ids, "train_aug": train_ids, "val": val_ids, "trainval": train_ids + val_ids, "ooc": ooc_ids}
        for name, ids in lists.items():
            (sets_dir / f"{name}.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
        meta = {
            "dataset": f"SynthVOC-{preset}",
            "generator_version": GENERATOR_VERSION,
            "preset": _preset_meta(p),
            "seed": int(seed),
            "void_width": int(void_width),
            "occlusion_threshold": OCCLUSION_THRESHOLD,
            "jpeg_quality": JPEG_QUALITY,
            "splits": {k: len(v) for k, v in lists.items()},
            "objects": {"train": sum(r[2] for r in train_res[: p.n_train]), "val": sum(r[2] for r in val_res),
                        "ooc": sum(r[2] for r in ooc_res)},
            "ooc_pairs": sorted({s.pattern[4:] for s in ooc_specs}),
            **({"cooc_threshold_scaling": True} if p.cooc_scale else {}),
            "val_stratified": {val_ids[i]: s.pattern for i, s in enumerate(val_specs) if s.pattern},
        }
        (tmp / voc.SYNTH_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _install(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _preset_meta(p: Preset) -> dict:
    """The preset as synthvoc.json records it; fields added later are left out at their defaults, so
    the older presets' files stay byte-identical."""
    d = asdict(p)
    for key, default in (("cooc_quota", 0), ("cooc_scale", False)):
        if d[key] == default:
            del d[key]
    return d


def _install(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished tree into place (an empty or, with overwrite, an old tree is replaced)."""
    old = None
    if final.is_dir():
        if any(final.iterdir()):
            if not overwrite:
                raise RbsegError("already holds a dataset; pass --overwrite to replace it", final)
            old = final.with_name(f".VOC2012.old-{os.getpid()}")
            os.rename(final, old)
        else:
            final.rmdir()
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_dataset_root() -> Path:
    """Where :func:`default_dataset` keeps its tree (``cache_dir()/synthvoc-<DEFAULT_PRESET>-seed0/VOC2012``);
    it may not exist yet."""
    from ..paths import cache_dir

    return cache_dir() / f"synthvoc-{DEFAULT_PRESET}-seed{DEFAULT_SEED}" / "VOC2012"


def default_dataset(progress: bool = False) -> Path:
    """The embedded default (SynthVOC :data:`DEFAULT_PRESET`, seed 0: what the shipped models were
    trained and evaluated on): generated once into :func:`default_dataset_root` and reused.

    Safe against concurrent callers: each generates into its own temporary folder and renames it
    into place; the first rename wins and the others use its tree. A cache left by another
    generator version is moved aside and replaced.
    """
    root = default_dataset_root()
    base = root.parent
    if _complete(root):
        return root
    work = Path(tempfile.mkdtemp(prefix=f".{base.name}.tmp-", dir=base.parent))
    try:
        os.chmod(work, 0o755)
        generate(work, preset=DEFAULT_PRESET, seed=DEFAULT_SEED, progress=progress)
        for _ in range(2):
            try:
                os.rename(work, base)
                break
            except OSError:
                if _complete(root):  # another process finished first: use its tree
                    break
                stale = base.with_name(f".{base.name}.stale-{os.getpid()}")
                try:
                    os.rename(base, stale)  # a stale (other version) or partial cache
                except FileNotFoundError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
        else:
            raise RbsegError("could not install the default SynthVOC dataset", base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def _complete(root: Path) -> bool:
    if not (root / "ImageSets" / "Segmentation" / "ooc.txt").is_file():
        return False
    return (voc.synth_meta(root) or {}).get("generator_version") == GENERATOR_VERSION
