"""Model adapters: the ONE place that knows how a segmentation model is fed and what it returns.

The evaluation engine (``evaluation.engine.forward_outputs`` / ``forward_logits``) and hence every
attack ``Forward`` call a model through :func:`adapter_for`: ``adapter.prepare(x255)`` turns float
0-255 pixels (N, 3, H, W) into the model's input (its declared normalisation, padding), and
``adapter.outputs(raw, (H, W))`` turns whatever the model returned into a dict whose ``"out"`` holds
per-class scores (N, C, H, W) at the input size. Nothing else in the suite special-cases a model.

Outputs understood (:func:`standard_outputs`):

* a tensor (N, C, h, w) -- logits;
* a mapping with ``"out"`` -- torchvision's convention (the binding network adds more keys);
* an object or mapping with ``class_queries_logits`` (N, Q, C+1) and ``masks_queries_logits``
  (N, Q, h, w) -- mask classification (MaskFormer / Mask2Former, Hugging Face ``transformers``):
  the mask logits are upsampled bilinearly to the input size, then
  ``scores = einsum("nqc,nqhw->nchw", softmax(class)[..., :-1], sigmoid(masks))`` (the last class is
  "no object"), exactly ``post_process_semantic_segmentation``. These scores are PROBABILITY-LIKE
  (non-negative, not normalised over classes), NOT logits: ``"probs"`` holds them, and ``"out"``
  holds ``log(scores + 1e-8)``. The argmax (the prediction) is that of the scores; the attacks'
  losses (cross entropy, ...) see ``"out"`` as logits, i.e. they attack ``softmax(out)`` = the
  scores normalised per pixel;
* an object or mapping with ``.logits`` (N, C, h, w) -- Hugging Face semantic segmentation outputs
  (SegFormer's are at 1/4 of the input resolution: upsampled bilinearly, ``align_corners=False``).

Anything at a lower resolution than the input is upsampled bilinearly to it (torchvision's convention).

Input normalisation is DECLARED, never assumed: :class:`InputNorm` (the model's input range and the
mean/std in that range). rbseg's own models and torchvision's take ImageNet mean/std on [0, 1]
(= ``data.transforms.normalize`` on 0-255 pixels). A model declares its own with the attribute
``model.rbseg_adapter = Adapter(norm=InputNorm(...), pad_to=...)`` (or :func:`declare`); models of
a known library get that library's adapter from :data:`LIBRARY_ADAPTERS`:

* ``segmentation_models_pytorch``: ImageNet normalisation (smp's default for its encoders), inputs
  padded (bottom/right, with zeros = the mean colour after normalisation) to a multiple of the
  encoder's output stride (32 by default) and the outputs cropped back;
* ``transformers``: ImageNet normalisation (the default of ``SegformerImageProcessor`` and the
  Mask(2)Former image processors); declare another one for a checkpoint whose processor differs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RbsegError

MASK_SCORE_EPS = 1e-8  # "out" = log(scores + eps) for mask-classification outputs


@dataclass(frozen=True)
class InputNorm:
    """The input a model expects: pixels mapped from 0-255 to ``range``, then ``(x - mean) / std``
    per channel (mean and std in ``range`` units)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        for name in ("mean", "std", "range"):  # lists given by a user: stored as float tuples (hashable)
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.mean) != 3 or len(self.std) != 3 or any(float(s) <= 0 for s in self.std):
            raise RbsegError(f"InputNorm needs 3 means and 3 positive stds, got mean={self.mean} std={self.std}")
        if len(self.range) != 2 or not float(self.range[1]) > float(self.range[0]):
            raise RbsegError(f"InputNorm range must be (low, high) with high > low, got {self.range}")

    def affine(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(scale, shift) per channel: ``model input = x255 * scale + shift``."""
        lo, hi = float(self.range[0]), float(self.range[1])
        scale = tuple((hi - lo) / 255.0 / float(s) for s in self.std)
        shift = tuple((lo - float(m)) / float(s) for m, s in zip(self.mean, self.std))
        return scale, shift

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "range": [float(v) for v in self.range]}


IMAGENET = InputNorm()


@dataclass(frozen=True)
class Adapter:
    """How one model is called: ``norm`` (its declared input), ``pad_to`` (inputs padded bottom/right
    to a multiple of it, outputs cropped back; 1: no padding), ``name`` (recorded in results)."""

    name: str = "rbseg"
    norm: InputNorm = IMAGENET
    pad_to: int = 1

    def prepare(self, x255: torch.Tensor) -> torch.Tensor:
        """float 0-255 pixels (N, 3, H, W) -> the model's input (normalised, padded)."""
        x = _normalize(x255, self.norm)
        if self.pad_to > 1:
            h, w = x.shape[-2:]
            ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))  # zeros = the mean colour after normalisation
        return x

    def outputs(self, raw, size: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model's raw output -> dict with ``"out"`` (N, C, H, W) at ``size`` (the unpadded input)."""
        size = tuple(int(s) for s in size)
        padded = size
        if self.pad_to > 1:
            padded = tuple(s + (-s) % self.pad_to for s in size)
        out = standard_outputs(raw, padded)
        if padded != size:
            out = {k: (v[..., : size[0], : size[1]] if isinstance(v, torch.Tensor) and v.ndim == 4
                       and tuple(v.shape[-2:]) == padded else v) for k, v in out.items()}
        out["out"] = upsample(out["out"], size)
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "norm": self.norm.to_dict(), "pad_to": int(self.pad_to)}


DEFAULT = Adapter()


def declare(model: nn.Module, norm: InputNorm | None = None, pad_to: int = 1, name: str = "declared") -> nn.Module:
    """Attach an :class:`Adapter` to ``model`` (its input normalisation and padding); returns the model."""
    model.rbseg_adapter = Adapter(name=name, norm=norm or IMAGENET, pad_to=int(pad_to))
    return model


# --- library adapters ---------------------------------------------------------------------------------


def _packages_of(model: nn.Module) -> set[str]:
    """Top-level packages of the model's class and its bases (a user's subclass of smp.Unet counts as smp)."""
    return {(cls.__module__ or "").split(".")[0] for cls in type(model).__mro__}


def _smp_adapter(model: nn.Module) -> Adapter:
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    stride = int(stride) if isinstance(stride, int) and stride > 0 else 32
    return Adapter(name="segmentation_models_pytorch", norm=IMAGENET, pad_to=stride)


def _transformers_adapter(model: nn.Module) -> Adapter:
    return Adapter(name="transformers", norm=IMAGENET)


# (top-level package of the model's class or a base class, adapter factory): the first match wins
LIBRARY_ADAPTERS: list[tuple[str, Callable[[nn.Module], Adapter]]] = [
    ("segmentation_models_pytorch", _smp_adapter),
    ("transformers", _transformers_adapter),
]


def adapter_for(model: nn.Module) -> Adapter:
    """The model's declared adapter (``model.rbseg_adapter``), else its library's, else the default
    (ImageNet normalisation of 0-255 pixels, no padding)."""
    declared = getattr(model, "rbseg_adapter", None)
    if isinstance(declared, Adapter):
        return declared
    packages = _packages_of(model)
    for package, factory in LIBRARY_ADAPTERS:
        if package in packages:
            return factory(model)
    return DEFAULT


# --- outputs --------------------------------------------------------------------------------------------


def _field(raw, name: str):
    """``raw[name]`` or ``raw.name`` (Hugging Face outputs are both a mapping and an object)."""
    value = raw.get(name) if isinstance(raw, Mapping) else None
    return value if value is not None else getattr(raw, name, None)


def upsample(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) to ``size`` when the spatial size differs (float32 for bf16)."""
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return t


def mask_class_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Per-class scores (N, C, H, W) of a mask-classification model (probability-like, not logits)."""
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        raise RbsegError(f"mask-classification outputs must be class_queries_logits (N, Q, C+1) and "
                         f"masks_queries_logits (N, Q, h, w), got {tuple(class_logits.shape)} and {tuple(mask_logits.shape)}")
    masks = upsample(mask_logits, size).float().sigmoid()
    classes = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", classes, masks)


def standard_outputs(raw, size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Any supported model output -> dict with ``"out"`` (N, C, h, w) (module docstring)."""
    if isinstance(raw, torch.Tensor):
        out = {"out": raw}
    elif isinstance(raw, Mapping) and "out" in raw:
        out = dict(raw)
    else:
        cls, masks = _field(raw, "class_queries_logits"), _field(raw, "masks_queries_logits")
        logits = _field(raw, "logits")
        if isinstance(cls, torch.Tensor) and isinstance(masks, torch.Tensor):
            scores = mask_class_scores(cls, masks, size)
            out = {"out": torch.log(scores + MASK_SCORE_EPS), "probs": scores}
        elif isinstance(logits, torch.Tensor):
            out = {"out": logits}
        else:
            found = sorted(raw.keys()) if isinstance(raw, Mapping) else type(raw).__name__
            raise RbsegError(f"the model must return logits (N, C, H, W), a dict with 'out' holding them, an output "
                             f"with .logits, or mask-classification queries; got {found}")
    logits = out["out"]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        raise RbsegError("the model must return logits (N, C, H, W) or a dict with 'out' holding them")
    return out


# --- normalisation --------------------------------------------------------------------------------------

_AFFINE: dict[tuple[InputNorm, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _normalize(x255: torch.Tensor, norm: InputNorm) -> torch.Tensor:
    if norm == IMAGENET:  # rbseg's own models: the exact function training used
        from ..data.transforms import normalize

        return normalize(x255)
    key = (norm, x255.device, x255.dtype)
    if key not in _AFFINE:
        scale, shift = norm.affine()
        with torch.inference_mode(False):  # attacks differentiate through it
            _AFFINE[key] = (torch.tensor(scale, dtype=x255.dtype).view(1, 3, 1, 1).to(x255.device),
                            torch.tensor(shift, dtype=x255.dtype).view(1, 3, 1, 1).to(x255.device))
    scale_t, shift_t = _AFFINE[key]
    return x255 * scale_t + shift_t


__all__ = ["Adapter", "DEFAULT", "IMAGENET", "InputNorm", "LIBRARY_ADAPTERS", "MASK_SCORE_EPS", "adapter_for",
           "declare", "mask_class_scores", "standard_outputs", "upsample"]
