"""The rbseg checkpoint format: a dict of plain types and tensors, loaded with ``weights_only=True``.

::

    {"format": "rbseg-checkpoint/1",
     "kind": "training" | "inference",
     "model": {"arch", "num_classes", "binding", "fbh", "fbh_hidden"},   # enough to rebuild it
     "state_dict": {...},              # fp32 (training) or fp16 floats (inference, the zoo)
     "method": "binding", "training": {what ran: training.record.recorded_config},
     "dataset": {name, split, fingerprint, data_changes: [...]},
     "finished": False until the last step, then True (training checkpoints),
     "progress": {"stage", "epoch", "step_in_epoch", "global_step", "finished", "world_size"},
     "metrics": {"val_miou", ...}, "versions": {"rbseg", "torch", "torchvision", "python"},
     "created": "...Z",
     "resume": {"optimizer", "scheduler", "scaler", "rng", "options"}}   # training checkpoints only

``training`` of checkpoints written before issue 10 is the full TrainConfig (no ``format`` key);
``resume.options`` (the full resolved option set a ``--resume`` must match) is then absent.

Anything else (a foreign pickle, a truncated file, a state dict that does not fit the recorded
architecture) raises :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import NUM_CLASSES
from ..errors import CheckpointError
from ..io import atomic_torch_save, safe_torch_load
from .binding import DEFAULT_FBH_HIDDEN

FORMAT = "rbseg-checkpoint/1"
KINDS = ("training", "inference")


def model_config(
    arch: str, num_classes: int = NUM_CLASSES, binding: bool = False, fbh: bool = True, fbh_hidden: int = DEFAULT_FBH_HIDDEN
) -> dict:
    return {"arch": arch, "num_classes": int(num_classes), "binding": bool(binding), "fbh": bool(fbh), "fbh_hidden": int(fbh_hidden)}


def versions() -> dict:
    import torchvision

    from .. import __version__

    return {"rbseg": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_checkpoint(model: nn.Module, model_cfg: dict, kind: str = "training", **sections: Any) -> dict:
    """A checkpoint dict; ``sections`` adds method/training/dataset/progress/metrics/resume."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    ckpt = {
        "format": FORMAT,
        "kind": kind,
        "model": dict(model_cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "versions": versions(),
        "created": utc_now(),
    }
    ckpt.update(sections)
    return ckpt


def save_checkpoint(path: str | Path, ckpt: dict) -> Path:
    return atomic_torch_save(path, ckpt)


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate an rbseg checkpoint (never unpickles code)."""
    path = Path(path)
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        hint = " (a bare state dict? load it with --model module:function --weights FILE)" if isinstance(obj, dict) and "format" not in obj else ""
        raise CheckpointError(f"not an rbseg checkpoint (format {found!r}, expected {FORMAT!r}){hint}", path)
    for key in ("model", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"rbseg checkpoint without a '{key}' section", path)
    if obj.get("kind") not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {obj.get('kind')!r}", path)
    return obj


def checkpoint_finished(ckpt: dict) -> bool:
    """Whether the checkpoint holds a finished training run.

    The top-level ``finished`` flag when recorded (every training checkpoint since issue 10: False
    until the last step); else an inference checkpoint (an export, which requires a finished run)
    counts as finished, and an older training checkpoint is finished when its progress says so, or,
    lacking that, when its step count reached the recorded schedule.
    """
    if "finished" in ckpt:
        return bool(ckpt["finished"])
    if ckpt.get("kind") == "inference":
        return True
    progress = ckpt.get("progress") or {}
    if "finished" in progress:
        return bool(progress["finished"])
    steps = (ckpt.get("training") or {}).get("steps")
    step = progress.get("global_step")
    return isinstance(steps, int) and isinstance(step, int) and step >= steps


def build_from_config(cfg: dict, path: str | Path | None = None) -> nn.Module:
    from . import build_model

    try:
        return build_model(
            cfg["arch"], num_classes=cfg.get("num_classes", NUM_CLASSES), binding=cfg.get("binding", False),
            fbh=cfg.get("fbh", True), fbh_hidden=cfg.get("fbh_hidden", DEFAULT_FBH_HIDDEN), weights_backbone=None,
        )
    except KeyError as exc:
        raise CheckpointError(f"model section lacks {exc}", path) from None


def load_state(model: nn.Module, state: dict, path: str | Path | None) -> nn.Module:
    """Strict ``load_state_dict`` (floats cast to the model's dtype) with a one-line error."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise CheckpointError(f"weights do not fit the model ({msg[:300]})", path) from None
    return model


def model_from_checkpoint(ckpt: dict, path: str | Path | None = None) -> nn.Module:
    model = build_from_config(ckpt["model"], path)
    return load_state(model, ckpt["state_dict"], path)


def cast_state_dict(state: dict, dtype: torch.dtype = torch.float16,
                    path: str | Path | None = None) -> tuple[dict, dict[str, str]]:
    """Floating tensors cast to ``dtype``, checked: ``(cast state, {name: why kept})``.

    A tensor holding NaN or inf raises :class:`CheckpointError` naming it (a broken model: no dtype
    helps). A tensor that the cast would break keeps its own dtype (float32), with the reason: one
    whose largest |v| overflows ``dtype`` (fp16: |v| > 65504 becomes inf), or one whose non-zero
    values all become 0 (every value below fp16's smallest subnormal, ~6e-8: all precision lost).
    """
    out: dict = {}
    kept: dict[str, str] = {}
    name = str(dtype).removeprefix("torch.")
    for key, v in state.items():
        if not v.is_floating_point():
            out[key] = v
            continue
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"tensor '{key}' holds NaN or inf values: the model is broken, not exporting it", path)
        cast = v.to(dtype)
        nonzero = v != 0
        vmax = float(v.abs().max()) if v.numel() else 0.0
        if not bool(torch.isfinite(cast).all()):
            kept[key] = f"max |v| {vmax:.6g} overflows {name} (max {torch.finfo(dtype).max:g})"
        elif bool(nonzero.any()) and not bool((cast[nonzero] != 0).any()):
            kept[key] = f"every non-zero value (max |v| {vmax:.3g}) becomes 0 in {name}"
        out[key] = v if key in kept else cast
    return out, kept


def inference_checkpoint(ckpt: dict, dtype: torch.dtype = torch.float16, path: str | Path | None = None) -> dict:
    """Compact copy for shipping: floating tensors in ``dtype``, no optimiser/RNG state.

    Checked by :func:`cast_state_dict`: a non-finite tensor is refused; a tensor that would overflow
    or vanish in ``dtype`` stays float32, is listed under ``"full_precision_tensors"`` (name -> reason)
    and named in a one-line warning. ``path``: the source file, named in errors.
    """
    out = {k: v for k, v in ckpt.items() if k != "resume"}
    out["kind"] = "inference"
    out["state_dict"], kept = cast_state_dict(ckpt["state_dict"], dtype, path)
    if kept:
        import warnings

        out["full_precision_tensors"] = kept
        warnings.warn(f"kept {len(kept)} tensor{'s' if len(kept) != 1 else ''} in float32 (the "
                      f"{str(dtype).removeprefix('torch.')} cast would break them): "
                      + "; ".join(f"{k}: {why}" for k, why in kept.items()), stacklevel=2)
    return out


def state_sha256(state_dict: dict) -> str:
    """Content hash of a state dict (names, dtypes, shapes, values): identifies weights without a file."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
