"""Segmentation models: torchvision DeepLabv3 variants, the feature-binding network, the zoo.

``build_model(arch, ...)`` builds a fresh network; ``load_model(spec)`` loads a zoo name, a
checkpoint path or a user's ``module:function``. Every model takes ``normalize(x255)`` and returns
a dict whose ``"out"`` holds 21-class logits at the input resolution, and has a ``.backbone``.
"""
from __future__ import annotations

from torch import nn

from ..constants import NUM_CLASSES
from .archs import ARCHITECTURES, arch_parts, build_deeplabv3, list_archs, register_arch
from .binding import DEFAULT_FBH_HIDDEN, FeatureBindingHead, FeatureBindingNet
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import model_config, read_checkpoint
from .loading import load_model
from .zoo import ZOO_NAMES, load_zoo


def build_model(
    arch: str,
    num_classes: int = NUM_CLASSES,
    binding: bool = False,
    fbh: bool = True,
    fbh_hidden: int = DEFAULT_FBH_HIDDEN,
    weights_backbone: str | None = None,
) -> nn.Module:
    """A plain DeepLabv3 (torchvision's class) or, with ``binding=True``, the feature-binding network
    (dominant and phantom DeepLabv3 heads on the shared encoder, plus the FBH unless ``fbh=False``)."""
    parts = arch_parts(arch, num_classes=num_classes, weights_backbone=weights_backbone)
    if not binding:
        return build_deeplabv3(parts)
    dominant = parts.head if parts.head is not None else parts.make_head()
    head = FeatureBindingHead(num_classes, fbh_hidden) if fbh else None
    return FeatureBindingNet(parts.backbone, dominant, parts.make_head(), head)


__all__ = [
    "ARCHITECTURES", "CHECKPOINT_FORMAT", "DEFAULT_FBH_HIDDEN", "FeatureBindingHead", "FeatureBindingNet",
    "ZOO_NAMES", "build_model", "list_archs", "load_model", "load_zoo", "model_config", "read_checkpoint",
    "register_arch",
]
