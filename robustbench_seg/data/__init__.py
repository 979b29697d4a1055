"""Data layer: VOC reader, SynthVOC generator, transforms, checks, statistics and paper subsets."""
from .voc import VOCSegmentation, read_split, resolve_root

__all__ = ["VOCSegmentation", "read_split", "resolve_root"]
