"""The shared pre-trained backbone of the ``bench`` preset: the analogue of the paper's ImageNet backbone.

In the paper every method fine-tunes DeepLabv3 from one ImageNet-pretrained ResNet-101, trained once
on other images than PASCAL VOC. Here one ``deeplabv3_tiny`` is trained once with the baseline recipe
(pixel-wise cross-entropy) on a *disjoint* SynthVOC tree (the same preset generated with another seed,
:data:`PRETRAIN_DATA_SEED`: other images from the same generator), and its backbone (the ResNet-18
trunk, conv1 .. layer2) is written as a plain state dict (``backbone.pt``). Every model of the preset
then starts from it (``weights_backbone=PATH``; its sha256 is recorded as ``weights_backbone_sha256``
in the model's training record) with freshly initialised heads, exactly as the paper's models start
from the ImageNet trunk. ``rbseg reproduce`` plans it as its own step (``pretrain/backbone``) and
every training step depends on it.

Why: docs/training.md ("The bench preset") has the measured learning curves (fine-tuning from this
backbone against training from scratch at the same per-model budget).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RbsegError
from ..io import atomic_torch_save, safe_torch_load, sha256_file
from ..models.checkpoint import checkpoint_finished, read_checkpoint

BACKBONE_FORMAT = "rbseg-backbone/1"
PRETRAIN_DATA_SEED = 1  # the pre-training tree: the fine-tuning preset's SynthVOC preset, this seed (data seed 0)
# Training presets that fine-tune from the shared backbone -> the pre-training run's options (TrainConfig
# fields; the rest is the preset's own). ``steps``: the backbone is trained once, so it gets a longer run.
PRETRAINED_PRESETS: dict[str, dict] = {
    "bench": {"method": "baseline", "steps": 6000},
}


def needs_backbone(preset: str) -> bool:
    """Does this training preset fine-tune from the shared pre-trained backbone?"""
    return preset in PRETRAINED_PRESETS


def pretrain_backbone(data_root: str | Path, out: str | Path, preset: str = "bench", device: str = "auto",
                      progress: bool = True, **overrides) -> Path:
    """Train (or resume, or find finished) the pre-training run in ``out/pretrain.pt`` on ``data_root``
    (a tree disjoint from the fine-tuning data) and write ``out/backbone.pt``; returns the latter.

    ``overrides``: TrainConfig fields over :data:`PRETRAINED_PRESETS` ``[preset]`` (tests: a few steps)."""
    from .config import TrainConfig
    from .trainer import train

    options = {**PRETRAINED_PRESETS.get(preset, {"method": "baseline"}), **overrides}
    out = Path(out)
    ckpt = train(TrainConfig(data=str(data_root), out=str(out / "pretrain.pt"), preset=preset, device=device,
                             resume=True, progress=progress, **options))
    return export_backbone(ckpt, out / "backbone.pt")


def export_backbone(ckpt: str | Path, path: str | Path) -> Path:
    """Write the backbone tensors of a finished training checkpoint as a state dict that
    ``weights_backbone=PATH`` loads (``models.archs._load_backbone_weights``), with where it came from."""
    ckpt = Path(ckpt)
    src = read_checkpoint(ckpt)
    if src["kind"] == "training" and not checkpoint_finished(src):
        raise RbsegError("the pre-training run has not finished; resume it before exporting its backbone", ckpt)
    prefix = "backbone."
    state = {k[len(prefix):]: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
             for k, v in src["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise RbsegError("the checkpoint holds no backbone.* tensors", ckpt)
    metrics = src.get("metrics") or {}
    payload = {
        "format": BACKBONE_FORMAT,
        "arch": src["model"]["arch"],
        "state_dict": state,
        "pretrain": {"checkpoint_sha256": sha256_file(ckpt), "training": src.get("training") or {},
                     "dataset": {k: v for k, v in (src.get("dataset") or {}).items() if k != "root"},
                     "val_miou": metrics.get("val_miou")},
    }
    path = Path(path)
    atomic_torch_save(path, payload)
    return path


def read_backbone(path: str | Path) -> dict:
    """A backbone file written by :func:`export_backbone` (one-line error otherwise)."""
    obj = safe_torch_load(Path(path))
    if not isinstance(obj, dict) or obj.get("format") != BACKBONE_FORMAT:
        raise RbsegError(f"not an {BACKBONE_FORMAT} file", path)
    return obj
