"""Training configuration: one dataclass, two presets (``paper``, ``tiny``), explicit overrides.

A value left ``None`` takes the preset's (then the method's / blend's) default when the config is
resolved; the resolved config is what every checkpoint records, so a run is fully described by it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import RbsegError

METHOD_NAMES = ("baseline", "mixup", "cutmix", "binding")
BLEND_NAMES = ("cfb", "rfb", "cafb", "wrfb", "mfb", "cm")
# SegMix (--blend cm, training/cooccurrence.py): delta ~ Beta(0.4, 0.4) folded to max(d, 1-d) (mean 0.84, like
# BMVC's U[0.7, 1]), gamma = 4 (Table 11's best cap), pairs over gamma blended with delta 0.9 (the paper's rule).
# The paper gives neither alpha nor gamma: docs/training.md (SegMix) has the reasons.
CM_DEFAULTS = {"alpha": 0.4, "gamma": 4, "cm_delta": "max", "cm_delta_draw": "batch", "cm_over_limit": "delta09"}
DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}  # Zhang et al. 2018 (ImageNet) and Yun et al. 2019; the paper gives neither
DEFAULT_DELTA_RANGE = (0.7, 1.0)  # Eq. 1, the paper's
PPA_EPS = 1e-6  # Eq. 4 guard: log(max(sum ReLU(S_p), eps))


@dataclass
class TrainConfig:
    method: str = "baseline"
    data: str | None = None  # VOC2012 root
    out: str | None = None  # checkpoint path
    preset: str = "tiny"
    arch: str | None = None
    split: str = "train_aug"
    val_split: str | None = "val"  # None: no validation mIoU
    # feature binding
    blend: str = "cfb"
    delta_range: tuple[float, float] = DEFAULT_DELTA_RANGE
    pairs_per_image: int | None = None  # cfb/cafb: 19, rfb/wrfb/mfb: 10
    pairs_resample: str = "epoch"  # "epoch": fresh pairs every epoch; "once": one fixed pair set (the paper's disk copy)
    fbh: bool = True
    fbh_hidden: int | None = None
    denoise: bool = True
    stage2_from: str | None = None
    # SegMix co-occurrence blend (--blend cm); None: CM_DEFAULTS (cm_split: the training split)
    gamma: int | None = None  # max unique categories of a pair
    cm_delta: str | None = None  # "max": max(d, 1-d); "sym": d as drawn
    cm_delta_draw: str | None = None  # "batch": one delta per batch (the pseudo-code); "pair": one per image
    cm_over_limit: str | None = None  # "delta09" (paper), "skip" (Table 11 max = gamma), "none" (max = inf)
    cm_split: str | None = None  # split whose ground truth C_ss counts
    # mixup / cutmix
    alpha: float | None = None
    # schedule (stage 1, or the only stage)
    epochs: int | None = None
    steps: int | None = None  # total optimiser steps; overrides epochs
    batch_size: int | None = None  # per process
    lr: float | None = None
    optimizer: str | None = None  # "sgd" (the paper's) or "adamw"
    momentum: float = 0.9
    weight_decay: float | None = None  # paper: 5e-4
    poly_power: float = 0.9
    crop: int | None = None
    scale: tuple[float, float] | None = None  # random rescale range before the crop
    # stage 2 (denoising)
    stage2_epochs: int | None = None
    stage2_steps: int | None = None
    stage2_lr: float | None = None
    # model / engineering
    weights_backbone: str | None = None
    amp: bool | None = None  # None: bf16 autocast on CUDA, off on CPU
    amp_dtype: str = "bf16"
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    resume: bool = False
    accept_data_change: bool = False  # --resume although the training data changed (recorded in the checkpoint)
    checkpoint_every: int | None = None  # also checkpoint every N steps (always at each epoch end)
    checkpoint_minutes: float = 10.0  # and at least every this many minutes
    val_every: int = 0  # also validate every N epochs (0: at the end only)
    val_batch_size: int = 8
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delta_range"] = list(self.delta_range)
        d["scale"] = None if self.scale is None else list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RbsegError(f"unknown training option(s): {', '.join(unknown)}")
        d = dict(d)
        for key in ("delta_range", "scale"):
            if key in d and d[key] is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


# Preset values fill every field left None. ``paper``: Sec. 4 "Implementation details" (batch 10
# and the ImageNet backbone are the DeepLab recipe the paper's schedule comes from).
# ``tiny``: SynthVOC tiny on 2 CPU cores, ~60-70 s per zoo model; see docs/training.md.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        arch="deeplabv3_resnet101", epochs=30, stage2_epochs=30, batch_size=10, lr=2.5e-4, stage2_lr=2.5e-5,
        crop=321, weights_backbone="imagenet", num_workers=4, fbh_hidden=64, optimizer="sgd", weight_decay=5e-4,
        scale=(0.5, 2.0),
    ),
    # ``ijcv``: the SegMix paper's changes to ``paper``: 50 epochs and 513 x 513 crops (its 513 centre-crop
    # testing equals full-image testing on VOC, whose images are at most 500 x 500; docs/training.md).
    "ijcv": dict(
        arch="deeplabv3_resnet101", epochs=50, stage2_epochs=30, batch_size=10, lr=2.5e-4, stage2_lr=2.5e-5,
        crop=513, weights_backbone="imagenet", num_workers=4, fbh_hidden=64, optimizer="sgd", weight_decay=5e-4,
        scale=(0.5, 2.0),
    ),
    "tiny": dict(
        arch="deeplabv3_tiny", steps=1000, binding_steps=850, stage2_steps=150, batch_size=16, optimizer="adamw",
        lr=2e-3, stage2_lr=2e-5, weight_decay=1e-4, crop=64, scale=(0.75, 1.25), weights_backbone=None,
        num_workers=0, fbh_hidden=64, channels_last=True, checkpoint_every=200,
    ),
    # ``bench``: SynthVOC bench (4,000 train_aug images), the embedded benchmark. Every model fine-tunes from
    # the shared pre-trained backbone (training/pretrain.py; pass weights_backbone=PATH, as rbseg reproduce
    # does); the tiny preset's optimiser and augmentation; see docs/training.md "The bench preset".
    "bench": dict(
        arch="deeplabv3_tiny", steps=3000, binding_steps=2550, stage2_steps=450, batch_size=16, optimizer="adamw",
        lr=2e-3, stage2_lr=2e-5, weight_decay=1e-4, crop=64, scale=(0.75, 1.25), weights_backbone=None,
        num_workers=0, fbh_hidden=64, channels_last=True, checkpoint_every=200,
    ),
}


def resolve_config(cfg: TrainConfig | dict) -> TrainConfig:
    """Fill preset defaults, check every option, and return a new, complete config."""
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    if cfg.preset not in PRESETS:
        raise RbsegError(f"unknown preset '{cfg.preset}' (choose from {', '.join(PRESETS)})")
    if cfg.method not in METHOD_NAMES:
        raise RbsegError(f"unknown method '{cfg.method}' (choose from {', '.join(METHOD_NAMES)})")
    if cfg.blend not in BLEND_NAMES:
        raise RbsegError(f"unknown blend '{cfg.blend}' (choose from {', '.join(BLEND_NAMES)})")
    preset = PRESETS[cfg.preset]
    updates: dict[str, Any] = {}
    explicit_epochs = cfg.epochs is not None and cfg.steps is None
    explicit_stage2_epochs = cfg.stage2_epochs is not None and cfg.stage2_steps is None
    for key, value in preset.items():
        if key in ("steps", "binding_steps", "stage2_steps", "epochs", "stage2_epochs"):
            continue
        if getattr(cfg, key) is None:
            updates[key] = value
    # schedule length: explicit --epochs / --steps win over the preset's unit
    if cfg.steps is None and not explicit_epochs:
        # stage 1 of feature binding may get a shorter schedule so that both stages together match the others
        two_stage = cfg.method == "binding" and cfg.stage2_from is None
        updates["steps"] = preset.get("binding_steps", preset.get("steps")) if two_stage else preset.get("steps")
        updates["epochs"] = preset.get("epochs")
    if cfg.stage2_steps is None and not explicit_stage2_epochs:
        updates["stage2_steps"] = preset.get("stage2_steps")
        updates["stage2_epochs"] = preset.get("stage2_epochs")
    if cfg.alpha is None and cfg.method in DEFAULT_ALPHA:
        updates["alpha"] = DEFAULT_ALPHA[cfg.method]
    if cfg.method == "binding" and cfg.blend == "cm":
        updates.update({k: v for k, v in CM_DEFAULTS.items() if getattr(cfg, k) is None})
        if cfg.cm_split is None:
            updates["cm_split"] = cfg.split
    if cfg.pairs_per_image is None and cfg.method == "binding" and cfg.blend != "cm":
        updates["pairs_per_image"] = 19 if cfg.blend in ("cfb", "cafb") else 10
    out = replace(cfg, **updates)
    _check(out)
    return out


def _check(c: TrainConfig) -> None:
    def bad(msg: str) -> None:
        raise RbsegError(msg)

    if c.steps is None and c.epochs is None:
        bad("give --epochs or --steps")
    for name in ("steps", "epochs", "stage2_steps", "stage2_epochs"):
        v = getattr(c, name)
        if v is not None and v < 1:
            bad(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if c.batch_size < 2:
        bad(f"--batch-size must be >= 2 (BatchNorm in the ASPP pooling branch), got {c.batch_size}")
    if c.crop < 16:
        bad(f"--crop must be >= 16, got {c.crop}")
    lo, hi = c.delta_range
    if not (0.0 <= lo <= hi <= 1.0):
        bad(f"--delta-range must satisfy 0 <= LO <= HI <= 1, got {lo} {hi}")
    if c.pairs_per_image is not None and c.pairs_per_image < 1:
        bad(f"--pairs-per-image must be >= 1, got {c.pairs_per_image}")
    if c.blend == "cfb" and c.pairs_per_image is not None and c.pairs_per_image > 19:
        bad(f"--pairs-per-image for cfb is at most 19 (one partner per other cluster), got {c.pairs_per_image}")
    if c.pairs_resample not in ("epoch", "once"):
        bad(f"--pairs-resample must be 'epoch' or 'once', got {c.pairs_resample}")
    cm = c.method == "binding" and c.blend == "cm"
    if c.alpha is not None and (c.alpha < 0 if cm else c.alpha <= 0):
        bad(f"--alpha must be {'>= 0 (0: no blending)' if cm else '> 0'}, got {c.alpha}")
    if cm:
        if c.gamma < 1:
            bad(f"--gamma must be >= 1, got {c.gamma}")
        for key, allowed in (("cm_delta", ("max", "sym")), ("cm_delta_draw", ("batch", "pair")),
                             ("cm_over_limit", ("delta09", "skip", "none"))):
            if getattr(c, key) not in allowed:
                bad(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(c, key)}")
    elif any(getattr(c, k) is not None for k in ("gamma", "cm_delta", "cm_delta_draw", "cm_over_limit", "cm_split")):
        bad("--gamma, --cm-delta, --cm-delta-draw, --cm-over-limit and --cm-split only apply to --method binding --blend cm")
    if c.lr <= 0 or (c.stage2_lr is not None and c.stage2_lr <= 0):
        bad("learning rates must be > 0")
    if c.optimizer not in ("sgd", "adamw"):
        bad(f"--optimizer must be sgd or adamw, got {c.optimizer}")
    if c.weight_decay < 0:
        bad(f"--weight-decay must be >= 0, got {c.weight_decay}")
    if c.amp_dtype not in ("bf16", "fp16"):
        bad(f"--amp-dtype must be bf16 or fp16, got {c.amp_dtype}")
    if c.stage2_from is not None and c.method != "binding":
        bad("--stage2-from only applies to --method binding")
    if c.stage2_from is not None and not c.denoise:
        bad("--stage2-from runs the denoising stage; it cannot be combined with --no-denoise")
    if c.fbh_hidden is not None and c.fbh_hidden < 1:
        bad(f"--fbh-hidden must be >= 1, got {c.fbh_hidden}")
    if c.scale[0] <= 0 or c.scale[0] > c.scale[1]:
        bad(f"scale range must satisfy 0 < LO <= HI, got {c.scale}")
    if c.accept_data_change and not c.resume:
        bad("--accept-data-change only applies to --resume")
    if c.data is None:
        bad("--data ROOT is required")
    if c.out is None:
        bad("--out CKPT is required")


# Fields that may differ between a run and its --resume (they do not change the weights).
RESUME_FREE = frozenset({
    "resume", "device", "num_workers", "progress", "checkpoint_every", "checkpoint_minutes", "val_batch_size",
    "out", "data", "accept_data_change",
})


def config_mismatch(saved: dict, now: TrainConfig) -> list[str]:
    cur = now.to_dict()
    return sorted(k for k in cur if k not in RESUME_FREE and saved.get(k) != cur[k])
