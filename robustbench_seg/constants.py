"""PASCAL VOC 2012 constants shared by every module (classes, palette, normalisation)."""
from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = 21
IGNORE_INDEX = 255
FOREGROUND_CLASSES: tuple[str, ...] = VOC_CLASSES[1:]
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(VOC_CLASSES)}

# ImageNet statistics in 0-255 pixel units: perturbations are added in this space, then normalised.
MEAN_255: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_255: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), flattened to 768 ints for PIL's putpalette."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


VOC_PALETTE: list[int] = voc_palette()
