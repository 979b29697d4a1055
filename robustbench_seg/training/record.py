"""What a checkpoint records about its training run: only what ran, from one function.

:func:`recorded_config` is THE function that turns a resolved :class:`TrainConfig` plus the facts
of the run (the resolved device, the world size, the stage-1 checkpoint of a ``--stage2-from``
run) into the ``training`` section of a checkpoint (and so into ``load_model``'s ``info["config"]``,
the zoo manifest's ``config`` and every result's ``model.config``). :func:`resolve_runtime` is the
one place where ``amp``/``channels_last`` left to "auto" and the validation dtype are resolved;
the trainer runs with exactly what it returns, so the record cannot drift from the run.

Rules:

* fields of other methods are absent (no blend or denoise for the baseline, alpha only for
  Mixup/CutMix, no stage-2 fields when stage 2 did not run, no stage-1 fields when it ran elsewhere);
* ``--stage2-from``: stage 1's record is copied from its checkpoint (``stage1.config``, verbatim,
  with its path and sha256), the top level describes stage 2's own run;
* ``device``, ``amp`` / ``amp_dtype``, ``channels_last`` and ``val_dtype`` (the dtype the recorded
  val mIoU was computed in) are the resolved values, never "auto";
* the full option set used to check a ``--resume`` is kept apart, in the checkpoint's ``resume``
  section (dropped on export).

Checkpoints written before this record existed keep their old ``training`` section (the full
TrainConfig, with ``format`` absent); readers must accept both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import PPA_EPS, TrainConfig

RECORD_FORMAT = "rbseg-train-record/1"

# Options every method uses (schedule and method-specific ones are added below).
COMMON_FIELDS = ("method", "preset", "arch", "split", "val_split", "seed", "batch_size", "optimizer", "weight_decay",
                 "poly_power", "crop", "scale", "weights_backbone", "compile")
# Options of single-stage methods beyond the common ones (a new method adds its entry here).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {"baseline": (), "mixup": ("alpha",), "cutmix": ("alpha",)}
# Stage-1 options of blends that do not use the delta range / pairs-per-image (SegMix's cm).
BLEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "cm": ("alpha", "gamma", "cm_delta", "cm_delta_draw", "cm_over_limit", "cm_split"),
}
# Fields that describe where/how a segment ran; a resume on other hardware keeps the earlier values.
RUNTIME_FIELDS = ("device", "amp", "amp_dtype", "channels_last", "val_dtype")

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class Runtime:
    """How the run executes on ``device``: the trainer uses exactly these values."""

    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    val_dtype: torch.dtype


def resolve_runtime(cfg: TrainConfig, device: torch.device) -> Runtime:
    """Resolve the "auto" settings: autocast and channels_last on with CUDA; the validation dtype is
    the evaluation engine's ``auto`` (bf16 on CUDA, fp32 elsewhere)."""
    from ..evaluation.engine import resolve_dtype

    device = torch.device(device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    return Runtime(device, bool(amp), amp_dtype, bool(channels_last), resolve_dtype("auto", device))


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _schedule(epochs: int | None, steps: int | None, prefix: str = "") -> dict:
    """Steps win over epochs (as in the trainer): record the unit that set the length."""
    return {f"{prefix}steps": steps} if steps is not None else {f"{prefix}epochs": epochs}


def weights_backbone_sha256(spec: str | None) -> str | None:
    """sha256 of a ``weights_backbone`` file (None for none / imagenet / a path that is not a file)."""
    if spec is None or str(spec).lower() in ("none", "imagenet"):
        return None
    from pathlib import Path

    from ..io import sha256_file

    path = Path(spec).expanduser()
    return sha256_file(path) if path.is_file() else None


def recorded_config(cfg: TrainConfig, runtime: Runtime, world_size: int = 1, stage1: dict | None = None) -> dict:
    """The ``training`` record of a run of the resolved ``cfg`` (see the module docstring).

    ``stage1``: for a ``--stage2-from`` run, ``{"checkpoint": path, "sha256": ..., "config": the
    stage-1 checkpoint's own training record}``.
    """
    rec: dict[str, Any] = {"format": RECORD_FORMAT}
    d = cfg.to_dict()
    for key in COMMON_FIELDS:
        rec[key] = d[key]
    backbone_sha = weights_backbone_sha256(cfg.weights_backbone)
    if backbone_sha is not None:  # a backbone file (e.g. the bench preset's shared pre-trained one): which one
        rec["weights_backbone_sha256"] = backbone_sha
    if cfg.optimizer == "sgd":
        rec["momentum"] = cfg.momentum
    rec["world_size"] = int(world_size)
    rec["global_batch_size"] = int(cfg.batch_size) * int(world_size)
    rec["device"] = runtime.device.type
    if runtime.device.type == "cuda" and torch.cuda.is_available():
        rec["device_name"] = torch.cuda.get_device_name(runtime.device)
    rec["amp"] = runtime.amp
    if runtime.amp:
        rec["amp_dtype"] = dtype_name(runtime.amp_dtype)
    rec["channels_last"] = runtime.channels_last
    if cfg.val_split:
        rec["val_dtype"] = dtype_name(runtime.val_dtype)
    if cfg.method != "binding":
        rec["lr"] = cfg.lr
        rec.update(_schedule(cfg.epochs, cfg.steps))
        for key in METHOD_OPTIONS.get(cfg.method, ()):
            rec[key] = d[key]
        return rec
    rec["fbh"] = cfg.fbh
    if cfg.fbh:
        rec["fbh_hidden"] = cfg.fbh_hidden
    rec["denoise"] = cfg.denoise
    if cfg.stage2_from is None:  # stage 1 ran here
        from .samplers import WRFB_DELTA

        rec["blend"] = cfg.blend
        if cfg.blend in BLEND_OPTIONS:
            for key in BLEND_OPTIONS[cfg.blend]:
                rec[key] = d.get(key)
        else:
            if cfg.blend == "wrfb":
                rec["delta"] = WRFB_DELTA  # WR_fb ignores the delta range
            else:
                rec["delta_range"] = list(cfg.delta_range)
            rec["pairs_per_image"] = cfg.pairs_per_image
            rec["pairs_resample"] = cfg.pairs_resample
        rec["lr"] = cfg.lr
        rec.update(_schedule(cfg.epochs, cfg.steps))
    else:
        rec["stage2_from"] = cfg.stage2_from
        rec["stage1"] = dict(stage1 or {})
    if cfg.denoise:
        rec["stage2_lr"] = cfg.stage2_lr
        rec.update(_schedule(cfg.stage2_epochs, cfg.stage2_steps, "stage2_"))
        rec["ppa_eps"] = PPA_EPS
        rec["stage2_frozen"] = ["fbh"] if cfg.fbh else []
    return rec


def merge_resumed(saved: dict | None, now: dict, where: dict) -> dict:
    """The record of a resumed run: ``now``, plus the runtime of earlier segments when a resume ran
    on other hardware (``earlier_runtime``: the earlier values and where that segment stopped)."""
    if not saved or saved.get("format") != RECORD_FORMAT:
        return now
    out = dict(now)
    earlier = list(saved.get("earlier_runtime") or [])
    old = {k: saved.get(k) for k in RUNTIME_FIELDS}
    if old != {k: now.get(k) for k in RUNTIME_FIELDS}:
        earlier.append({**{k: v for k, v in old.items() if v is not None}, "until": dict(where)})
    if earlier:
        out["earlier_runtime"] = earlier
    return out
