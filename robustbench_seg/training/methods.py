"""Training methods as a registry: method name -> its stages (sampler, loss step, lr, length).

* ``baseline`` -- standard images, pixel-wise cross-entropy.
* ``mixup`` / ``cutmix`` -- standard images mixed within the batch on the device (``mixing``).
* ``binding`` -- stage 1: blended pairs from the chosen blend sampler, Eq. 3; stage 2
  (unless ``denoise=False``): standard images, Eq. 4, FBH frozen (left out of the optimiser),
  learning rate ``stage2_lr``. ``stage2_from`` skips stage 1 and starts from that checkpoint.
  ``blend="cm"`` (SegMix): stage 1 on standard batches, each image blended on the device with the
  argmax-co-occurrence partner of its batch (``cooccurrence.cm_pairs``), same Eq. 3 loss.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.transforms import normalize
from ..constants import IGNORE_INDEX
from ..errors import RbsegError
from ..io import ids_hash
from . import cooccurrence, losses, mixing
from .config import PPA_EPS, TrainConfig
from .samplers import BlendContext, PairSampler, PlainSampler, build_clusters


@dataclass
class StepContext:
    """How a step runs a model: normalisation, memory format and autocast."""

    device: torch.device
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, model: nn.Module, x255: torch.Tensor) -> dict:
        x = normalize(x255)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return model(x)


StepFn = Callable[[StepContext, nn.Module, dict, np.random.Generator], tuple[torch.Tensor, dict]]


@dataclass
class Stage:
    name: str  # "train", "stage1" or "stage2"
    index: int  # position among the method's stages (seeds derive from it)
    sampler: PlainSampler | PairSampler
    step: StepFn
    lr: float
    epochs: int | None
    steps: int | None
    frozen: tuple[str, ...] = ()  # parameter-name prefixes left out of the optimiser


@dataclass
class TrainData:
    """The training split, as the samplers need it."""

    n_images: int
    classes: Callable[[], list[list[int]]]  # lazily computed foreground classes per image
    # where the split lives (blends that read another split's labels: cm's --cm-split)
    classes_of: Callable[[str], tuple[list[str], list[list[int]]]] | None = None  # split -> (ids, classes)
    info: dict | None = None  # the checkpoint's dataset section: a method may add what it derived from the data


# ---------------------------------------------------------------------------------------------
# Steps: (context, model, device batch, numpy rng for this step) -> (loss, logs)
# ---------------------------------------------------------------------------------------------


def baseline_step(ctx: StepContext, model, batch, rng):
    out = ctx.forward(model, batch["image"].float())
    return losses.ce_loss(out["out"], batch["mask"]), {}


def make_mixup_step(alpha: float) -> StepFn:
    def step(ctx: StepContext, model, batch, rng):
        lam = mixing.sample_lambda(alpha, batch["image"].shape[0], rng)
        x, y1, y2, lam_t = mixing.mixup(batch["image"].float(), batch["mask"], lam)
        out = ctx.forward(model, x)
        return losses.mixup_loss(out["out"], y1, y2, lam_t), {"lam": float(lam.mean())}

    return step


def make_cutmix_step(alpha: float) -> StepFn:
    def step(ctx: StepContext, model, batch, rng):
        x = batch["image"].float()
        lam = mixing.sample_lambda(alpha, x.shape[0], rng)
        boxes, lam_adj = mixing.cutmix_boxes(lam, x.shape[-2], x.shape[-1], rng)
        x, y = mixing.cutmix(x, batch["mask"], boxes)
        out = ctx.forward(model, x)
        return losses.ce_loss(out["out"], y), {"lam": float(lam_adj.mean())}

    return step


def binding_step(ctx: StepContext, model, batch, rng):
    x = mixing.blend(batch["image"].float(), batch["image2"].float(), batch["delta"])
    out = ctx.forward(model, x)
    return losses.binding_loss(out, batch["mask"], batch["mask2"], batch["delta"])


def make_cm_step(c_ss: np.ndarray, alpha: float, gamma: int, mode: str = "max", per: str = "batch",
                 rule: str = "delta09") -> StepFn:
    """SegMix stage 1: each image ``I_k`` of the batch blended with its co-occurrence partner ``I_top``
    (``delta * I_k + (1 - delta) * I_top``), labels kept apart, Eq. 3. Categories are read from the
    batch's (augmented) label maps; the partner and delta are drawn from the step's generator."""
    c_ss = np.asarray(c_ss, dtype=np.int64)

    def step(ctx: StepContext, model, batch, rng):
        x, y = batch["image"].float(), batch["mask"]
        pairs = cooccurrence.cm_pairs(cooccurrence.mask_presence(y), c_ss, rng, alpha, gamma, mode, per, rule)
        partner = torch.as_tensor(pairs.partner, device=x.device)
        delta = torch.as_tensor(pairs.delta, dtype=torch.float32, device=x.device)
        y2 = y[partner]
        if not pairs.blended.all():  # skipped pairs: a standard image (delta 1, all-void phantom label)
            keep = torch.as_tensor(pairs.blended, device=y.device).view(-1, *([1] * (y.dim() - 1)))
            y2 = torch.where(keep, y2, torch.full_like(y2, IGNORE_INDEX))
        out = ctx.forward(model, mixing.blend(x, x[partner], delta))
        loss, parts = losses.binding_loss(out, y, y2, delta)
        return loss, {**parts, "delta": float(pairs.delta.mean()), "blended": float(pairs.blended.mean())}

    return step


def cm_cooccurrence(cfg: TrainConfig, data: TrainData) -> np.ndarray:
    """C_ss over ``cfg.cm_split`` (default: the training split), recorded in ``data.info``."""
    split = cfg.cm_split or cfg.split
    if data.classes_of is not None:
        ids, classes = data.classes_of(split)
    elif split == cfg.split:
        ids, classes = None, data.classes()
    else:
        raise RbsegError(f"--cm-split {split}: this training data gives the class sets of its own split only")
    c_ss = cooccurrence.cooccurrence_ss(classes)
    if data.info is not None:
        data.info["cooccurrence"] = {
            "split": split, "n_images": len(classes), "ids_hash": None if ids is None else ids_hash(ids),
            "matrix_sha256": hashlib.sha256(c_ss.astype("<i8").tobytes()).hexdigest()[:16],
        }
    return c_ss


def make_denoise_step(eps: float = PPA_EPS) -> StepFn:
    def step(ctx: StepContext, model, batch, rng):
        out = ctx.forward(model, batch["image"].float())
        return losses.denoise_loss(out, batch["mask"], eps)

    return step


# ---------------------------------------------------------------------------------------------
# Methods: (config, data) -> stages
# ---------------------------------------------------------------------------------------------


def _single(cfg: TrainConfig, data: TrainData, step: StepFn) -> list[Stage]:
    return [Stage("train", 0, PlainSampler(data.n_images, cfg.seed, 0), step, cfg.lr, cfg.epochs, cfg.steps)]


def baseline_stages(cfg: TrainConfig, data: TrainData) -> list[Stage]:
    return _single(cfg, data, baseline_step)


def mixup_stages(cfg: TrainConfig, data: TrainData) -> list[Stage]:
    return _single(cfg, data, make_mixup_step(cfg.alpha))


def cutmix_stages(cfg: TrainConfig, data: TrainData) -> list[Stage]:
    return _single(cfg, data, make_cutmix_step(cfg.alpha))


def binding_stages(cfg: TrainConfig, data: TrainData) -> list[Stage]:
    stages = []
    if cfg.stage2_from is None and cfg.blend == "cm":
        step = make_cm_step(cm_cooccurrence(cfg, data), cfg.alpha, cfg.gamma, cfg.cm_delta, cfg.cm_delta_draw,
                            cfg.cm_over_limit)
        stages.append(Stage("stage1", 0, PlainSampler(data.n_images, cfg.seed, 0), step, cfg.lr, cfg.epochs, cfg.steps))
    elif cfg.stage2_from is None:
        needs_clusters = cfg.blend in ("cfb", "cafb")
        ctx = BlendContext(
            n_images=data.n_images,
            clusters=build_clusters(data.classes()) if needs_clusters else [],
            pairs_per_image=cfg.pairs_per_image,
            delta_range=tuple(cfg.delta_range),
            seed=cfg.seed,
        )
        stages.append(Stage("stage1", 0, PairSampler(cfg.blend, ctx, 0, cfg.pairs_resample), binding_step,
                            cfg.lr, cfg.epochs, cfg.steps))
    if cfg.denoise:
        stages.append(Stage("stage2", 1, PlainSampler(data.n_images, cfg.seed, 1), make_denoise_step(),
                            cfg.stage2_lr, cfg.stage2_epochs, cfg.stage2_steps, frozen=("fbh.",)))
    return stages


METHODS: dict[str, Callable[[TrainConfig, TrainData], list[Stage]]] = {
    "baseline": baseline_stages,
    "mixup": mixup_stages,
    "cutmix": cutmix_stages,
    "binding": binding_stages,
}
