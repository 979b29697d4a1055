"""The feature-binding network (paper Sec. 3.2, Eq. 2).

``f = f_enc(I)`` (the shared encoder, last feature map), ``S_t = F_t(f)`` (dominant head),
``S_p = F_p(f)`` (phantom head), ``S_fb = F_fb(S_t, S_p)``: concatenate the two 21-class logit
maps, 1x1 conv -> ReLU -> 1x1 conv. The FBH runs at the feature resolution; the three maps are
then bilinearly upsampled to the input size (the paper upsamples before the losses).

``forward`` returns ``{"out", "dominant", "phantom", "binding"}`` at the input resolution;
``"out"`` is ``S_fb`` (or ``S_t`` when the network has no FBH, Table 5c, and then ``"binding"``
is absent), so evaluation code treats it like any other segmentation model.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from ..constants import NUM_CLASSES

DEFAULT_FBH_HIDDEN = 64  # the paper does not give the FBH width; an option (--fbh-hidden)


class FeatureBindingHead(nn.Sequential):
    """F_fb: concat(S_t, S_p) -> 1x1 conv -> ReLU -> 1x1 conv -> S_fb."""

    def __init__(self, num_classes: int = NUM_CLASSES, hidden: int = DEFAULT_FBH_HIDDEN):
        super().__init__(
            nn.Conv2d(2 * num_classes, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, dominant: torch.Tensor, phantom: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([dominant, phantom], dim=1))


class FeatureBindingNet(nn.Module):
    """Shared encoder + source separator module (dominant and phantom DeepLabv3 heads) + FBH."""

    def __init__(self, backbone: nn.Module, dominant: nn.Module, phantom: nn.Module, fbh: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.dominant = dominant
        self.phantom = phantom
        self.fbh = fbh

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)["out"]
        s_t = self.dominant(features)
        s_p = self.phantom(features)
        result: dict[str, torch.Tensor] = OrderedDict()
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        if self.fbh is not None:
            result["out"] = result["binding"] = up(self.fbh(s_t, s_p))
            result["dominant"] = up(s_t)
        else:
            result["out"] = result["dominant"] = up(s_t)
        result["phantom"] = up(s_p)
        return result
