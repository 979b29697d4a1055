"""Segmentation architectures, built from torchvision parts, in a registry (arch name -> builder).

Each builder returns :class:`ArchParts`: the shared encoder (a torchvision
``IntermediateLayerGetter`` returning ``{"out": features}``), a factory for the DeepLabv3 head
on its last feature map, and the number of feature channels. :func:`build_model` assembles
torchvision's ``DeepLabV3`` from them, or the feature-binding network (two heads + FBH).

* ``deeplabv3_resnet101`` / ``deeplabv3_resnet50``: torchvision's builders (output stride 8,
  ``DeepLabHead`` with atrous rates 12/24/36, 21 classes, aux loss off) -- the paper's network.
* ``deeplabv3_tiny``: a small DeepLabv3 for CPU work: torchvision's ``resnet18`` cut after
  ``layer2`` (output stride 8) and a DeepLabv3 head (torchvision ``ASPP`` + 3x3 conv + classifier,
  i.e. ``DeepLabHead`` with 64 channels and atrous rates 2/4/6 suited to 64-96 px inputs).

Backbone weights (``weights_backbone``): ``None``/``"none"`` (random init), ``"imagenet"``
(torchvision's weights API: the torch hub cache or a download) or a PATH to an ImageNet
classification state dict (e.g. torchvision's ``resnet101-63fe2227.pth``), loaded safely.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3

from ..constants import NUM_CLASSES
from ..errors import CheckpointError, RbsegError


@dataclass
class ArchParts:
    backbone: nn.Module  # IntermediateLayerGetter -> {"out": features}
    make_head: Callable[[], nn.Module]  # a fresh DeepLabv3 head (features -> num_classes logits)
    feature_channels: int
    head: nn.Module | None = None  # the head torchvision's builder already made, if any


ARCHITECTURES: dict[str, Callable[..., ArchParts]] = {}


def register_arch(name: str):
    def deco(fn: Callable[..., ArchParts]) -> Callable[..., ArchParts]:
        ARCHITECTURES[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    return sorted(ARCHITECTURES)


def arch_parts(arch: str, num_classes: int = NUM_CLASSES, weights_backbone: str | None = None) -> ArchParts:
    if arch not in ARCHITECTURES:
        raise RbsegError(f"unknown architecture '{arch}' (choose from {', '.join(list_archs())})")
    return ARCHITECTURES[arch](num_classes=num_classes, weights_backbone=weights_backbone)


# ---------------------------------------------------------------------------------------------
# ResNet DeepLabv3 (torchvision's builders)
# ---------------------------------------------------------------------------------------------


def _torchvision_deeplab(builder, weights_enum, num_classes: int, weights_backbone: str | None) -> ArchParts:
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    _load_backbone_weights(model.backbone, weights_backbone, weights_enum, prefix="")
    return ArchParts(model.backbone, lambda: DeepLabHead(2048, num_classes), 2048, head=model.classifier)


@register_arch("deeplabv3_resnet101")
def deeplabv3_resnet101_parts(num_classes: int = NUM_CLASSES, weights_backbone: str | None = None) -> ArchParts:
    return _torchvision_deeplab(deeplabv3_resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1, num_classes, weights_backbone)


@register_arch("deeplabv3_resnet50")
def deeplabv3_resnet50_parts(num_classes: int = NUM_CLASSES, weights_backbone: str | None = None) -> ArchParts:
    return _torchvision_deeplab(deeplabv3_resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, num_classes, weights_backbone)


# ---------------------------------------------------------------------------------------------
# deeplabv3_tiny
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinySpec:
    layer: str = "layer2"  # last torchvision resnet18 stage kept (layer2: 128 channels, output stride 8)
    head_channels: int = 64  # ASPP / head width (torchvision's DeepLabHead: 256)
    atrous_rates: tuple[int, ...] = (2, 4, 6)  # (12, 24, 36) in torchvision, for 8-12 px feature maps


TINY = TinySpec()
_RESNET18_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


def tiny_head(in_channels: int, num_classes: int, channels: int, atrous_rates) -> nn.Sequential:
    """torchvision's DeepLabHead layout (ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 classifier), narrower."""
    return nn.Sequential(
        ASPP(in_channels, atrous_rates, out_channels=channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


@register_arch("deeplabv3_tiny")
def deeplabv3_tiny_parts(num_classes: int = NUM_CLASSES, weights_backbone: str | None = None, spec: TinySpec = TINY) -> ArchParts:
    """torchvision resnet18 cut after ``spec.layer`` (conv1 .. layer2: output stride 8, no dilation
    needed) + a narrow DeepLabv3 head. Plain 3x3 convolutions run far faster on CPUs than the
    depthwise ones of MobileNet, and learn faster from scratch on SynthVOC (docs/training.md)."""
    if spec.layer not in _RESNET18_CHANNELS:
        raise RbsegError(f"deeplabv3_tiny layer must be one of {', '.join(_RESNET18_CHANNELS)}, got {spec.layer}")
    backbone = IntermediateLayerGetter(resnet.resnet18(weights=None), return_layers={spec.layer: "out"})
    _load_backbone_weights(backbone, weights_backbone, resnet.ResNet18_Weights.IMAGENET1K_V1, prefix="")
    channels = _RESNET18_CHANNELS[spec.layer]
    return ArchParts(backbone, lambda: tiny_head(channels, num_classes, spec.head_channels, spec.atrous_rates), channels)


# ---------------------------------------------------------------------------------------------
# Assembling a plain DeepLabv3
# ---------------------------------------------------------------------------------------------


def build_deeplabv3(parts: ArchParts) -> DeepLabV3:
    head = parts.head if parts.head is not None else parts.make_head()
    return DeepLabV3(parts.backbone, head, None)


# ---------------------------------------------------------------------------------------------
# Backbone weights
# ---------------------------------------------------------------------------------------------


def _load_backbone_weights(module: nn.Module, spec: str | None, weights_enum, prefix: str) -> None:
    """Load ImageNet classification weights into ``module`` (the feature layers of the backbone).

    ``spec``: None/"none" (nothing), "imagenet" (torchvision weights API) or a file path. Keys of
    the classifier that the segmentation backbone does not hold (``fc.*``, ``classifier.*``,
    cut-off feature blocks) are ignored; every backbone parameter must be present.
    """
    if spec is None or str(spec).lower() == "none":
        return
    if str(spec).lower() == "imagenet":
        state, source = _download_state(weights_enum), f"{weights_enum} ({weights_enum.url})"
    else:
        from ..io import safe_torch_load

        path = Path(spec).expanduser()
        obj = safe_torch_load(path)
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError("not a state dict of tensors (expected an ImageNet classification checkpoint)", path)
        source = str(path)
    own = module.state_dict()
    mapped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in mapped]
    if missing:
        raise CheckpointError(
            f"backbone weights lack {len(missing)} of {len(own)} tensors (first: {missing[0]}); "
            f"expected an ImageNet checkpoint of {weights_enum.__class__.__name__.replace('_Weights', '').lower()}",
            source,
        )
    bad = [k for k in own if tuple(mapped[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"backbone weight '{bad[0]}' has shape {tuple(mapped[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}", source)
    module.load_state_dict({k: mapped[k] for k in own}, strict=True)


def _download_state(weights_enum) -> dict:
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, OSError, socket errors: no network
        from torch.hub import get_dir

        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RbsegError(
            f"cannot fetch ImageNet weights {weights_enum} ({reason}); download {weights_enum.url} "
            f"elsewhere and pass --weights-backbone PATH (or place it in {get_dir()}/checkpoints/)"
        ) from None
