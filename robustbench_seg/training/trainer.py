"""``train(config) -> checkpoint path``: the training loop for every method.

* SGD (momentum, weight decay), poly learning rate per step, one optimiser per stage.
* Exact resume: work lists, augmentation seeds and per-step randomness (mixup lambdas, cutmix
  boxes, dropout) are pure functions of ``(seed, stage, epoch, position / step)``; a checkpoint
  stores the model, optimiser, scheduler, scaler, position and RNG states, so a run killed
  anywhere and resumed from its last checkpoint ends with the same weights (bit-identical on CPU).
* Checkpoints are atomic, written by rank 0 at every epoch end, every ``checkpoint_every`` steps
  and at least every ``checkpoint_minutes``; a non-finite loss stops the run before anything is
  written, so the last good checkpoint stays intact.
* DDP through torchrun (``torchrun --nproc_per_node N -m robustbench_seg train ...``): every rank
  takes its share of each global batch (``samplers.epoch_batches``), none dropped or duplicated.
* bf16 autocast and channels_last on CUDA by default; ``compile=True`` wraps the model in
  ``torch.compile``.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import voc
from ..errors import RbsegError
from ..models import build_model
from ..models.checkpoint import (
    load_state, make_checkpoint, model_config, model_from_checkpoint, read_checkpoint, save_checkpoint, utc_now,
)
from ..io import sha256_file
from .config import TrainConfig, config_mismatch, resolve_config
from .data import TrainSamples, collate, dataset_info, image_classes, worker_init
from .methods import METHODS, Stage, StepContext, TrainData
from .samplers import STEP, batches_per_epoch, derive_seed, epoch_batches


class TrainingError(RbsegError):
    """Training cannot go on (non-finite loss, an incompatible checkpoint)."""


# Called as AFTER_STEP(stage_name, global_step) after every optimiser step; tests use it to
# simulate a run killed at a chosen step. None in normal use.
AFTER_STEP = None


# ---------------------------------------------------------------------------------------------
# Distributed environment (torchrun)
# ---------------------------------------------------------------------------------------------


class DistEnv:
    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self._owned = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self._owned = True

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_finite(self, finite: bool, device: torch.device) -> bool:
        if not self.enabled:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item() == 0)

    def close(self) -> None:
        if self._owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def resolve_train_device(name: str, dist: DistEnv) -> torch.device:
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RbsegError(f"device '{name}' requested but CUDA is not available")
        if dist.enabled:
            dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    return dev


# ---------------------------------------------------------------------------------------------
# RNG state (restored on resume; the data and step randomness are derived, not carried)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Progress display
# ---------------------------------------------------------------------------------------------


class _Display:
    """rich progress: steps, loss, lr, images/s and ETA (rank 0 only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[ips]} img/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def task(self, description: str, total: int, completed: int):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total, completed=completed, loss="-", lr="-", ips="-")

    def update(self, task, completed: int, loss: float, lr: float, ips: float) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, completed=completed, loss=f"{loss:.4f}", lr=f"{lr:.2e}", ips=f"{ips:.1f}")

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)


# ---------------------------------------------------------------------------------------------
# train()
# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig | dict) -> Path:
    """Train one model as ``config`` says and return its checkpoint path (``config.out``)."""
    cfg = resolve_config(config)
    dist = DistEnv()
    device = resolve_train_device(cfg.device, dist)
    dist.init(device)
    try:
        return _train(cfg, dist, device)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: DistEnv, device: torch.device) -> Path:
    root = voc.resolve_root(cfg.data)
    ids = voc.read_split(root, cfg.split)
    if not ids:
        raise RbsegError(f"split '{cfg.split}' lists no images", voc.split_file(root, cfg.split))
    dinfo = dataset_info(root, cfg.split, ids)
    out = Path(cfg.out).expanduser()
    display = _Display(cfg.progress and dist.main)

    source: dict | None = None
    src_ckpt = None
    if cfg.stage2_from is not None:  # the model (and its config) come from a stage-1 checkpoint
        src_path = Path(cfg.stage2_from).expanduser()
        src_ckpt = read_checkpoint(src_path)
        if not src_ckpt["model"].get("binding"):
            raise RbsegError("--stage2-from needs a feature-binding checkpoint (this one is a plain DeepLabv3)", src_path)
        m = src_ckpt["model"]
        cfg = replace(cfg, arch=m["arch"], fbh=m["fbh"], fbh_hidden=m["fbh_hidden"])
        source = {"stage2_from": str(src_path), "sha256": sha256_file(src_path)}

    ckpt = None
    if out.exists():
        if not cfg.resume:
            raise RbsegError("checkpoint already exists; pass --resume to continue that run, or choose another --out", out)
        ckpt = read_checkpoint(out)
        if ckpt["kind"] != "training" or "resume" not in ckpt or "progress" not in ckpt:
            raise RbsegError("not a resumable training checkpoint (an exported inference checkpoint?)", out)
        diff = config_mismatch(ckpt.get("training", {}), cfg)
        if diff:
            raise RbsegError(f"--resume with a different configuration ({', '.join(diff)}); use the original options", out)
        if (ckpt.get("dataset") or {}).get("fingerprint") != dinfo["fingerprint"]:
            raise RbsegError("--resume on different training data (dataset fingerprint differs)", out)
        if ckpt["progress"].get("finished"):
            display.log(f"[green]{out}: already finished[/green]")
            return out

    binding = cfg.method == "binding"
    mcfg = model_config(cfg.arch, binding=binding, fbh=cfg.fbh, fbh_hidden=cfg.fbh_hidden)
    torch.manual_seed(cfg.seed)
    if src_ckpt is not None:
        model = model_from_checkpoint(src_ckpt, cfg.stage2_from)
    else:
        model = build_model(cfg.arch, binding=binding, fbh=cfg.fbh, fbh_hidden=cfg.fbh_hidden,
                            weights_backbone=None if ckpt is not None else cfg.weights_backbone)
    if ckpt is not None:
        load_state(model, ckpt["state_dict"], out)
    model.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, amp, torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16, channels_last)

    data = TrainData(len(ids), lambda: image_classes(root, cfg.split, ids, dinfo["fingerprint"]))
    stages = METHODS[cfg.method](cfg, data)
    dataset = TrainSamples(root, cfg.split, ids, cfg.crop, cfg.scale, cfg.seed)
    num_workers = cfg.num_workers if cfg.num_workers is not None else 0

    progress = dict(ckpt["progress"]) if ckpt is not None else {"stage": 0, "epoch": 0, "step_in_epoch": 0,
                                                                "global_step": 0, "stage_done": False, "finished": False,
                                                                "seconds": {}}
    resume_state = ckpt["resume"] if ckpt is not None else None
    metrics: dict = dict(ckpt.get("metrics") or {}) if ckpt is not None else {}
    if resume_state is not None:
        set_rng_state(resume_state["rng"])

    def save(stage_state: dict | None, prog: dict) -> None:
        if not dist.main:
            return
        resume = {"rng": rng_state(), **(stage_state or {})}
        ck = make_checkpoint(model, mcfg, "training", method=cfg.method, training=cfg.to_dict(), dataset=dinfo,
                             progress=dict(prog), metrics=dict(metrics), source=source, resume=resume)
        save_checkpoint(out, ck)

    with display:
        for stage in stages:
            if stage.index < progress["stage"] or (stage.index == progress["stage"] and progress["stage_done"]):
                continue
            if stage.index > progress["stage"]:
                progress.update(stage=stage.index, epoch=0, step_in_epoch=0, global_step=0, stage_done=False)
                resume_state = None
            _run_stage(stage, cfg, model, ctx, dataset, num_workers, dist, device, progress, resume_state, save, display, out,
                       metrics, root)
            resume_state = None
        if cfg.val_split and dist.main:
            val = _validate(model, root, cfg, device)
            metrics.update(val_miou=val["miou"], val_split=cfg.val_split, val=val)
            display.log(f"val mIoU ({cfg.val_split}): {val['miou']:.2f}")
        progress["finished"] = True
        progress["stage_done"] = True
        progress["finished_at"] = utc_now()
        save(None, progress)
        dist.barrier()
    return out


def make_optimizer(cfg: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW; weight decay from the config."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a step draws from (dropout): the CPU one and the training device's."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _validate(model: nn.Module, root: Path, cfg: TrainConfig, device: torch.device) -> dict:
    from ..evaluation.engine import evaluate_clean

    m = evaluate_clean(model, root, split=cfg.val_split, device=device, batch_size=cfg.val_batch_size)
    return m.to_dict()


def _run_stage(stage: Stage, cfg: TrainConfig, model: nn.Module, ctx: StepContext, dataset: TrainSamples, num_workers: int,
               dist: DistEnv, device: torch.device, progress: dict, resume_state: dict | None, save, display: _Display,
               out: Path, metrics: dict, root: Path) -> None:
    world, rank = dist.world_size, dist.rank
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(stage.frozen) if stage.frozen else True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, stage.lr)
    n_batches = batches_per_epoch(len(stage.sampler), cfg.batch_size, world)
    total = stage.steps if stage.steps is not None else stage.epochs * n_batches
    power = cfg.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1.0 - min(s, total) / total) ** power)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.amp and ctx.amp_dtype == torch.float16)
    if resume_state is not None and "optimizer" in resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])

    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    model.train()

    def stage_state() -> dict:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}

    epoch, k, gstep = progress["epoch"], progress["step_in_epoch"], progress["global_step"]
    seconds = dict(progress.get("seconds") or {})
    elapsed0 = float(seconds.get(stage.name, 0.0))
    t_start = time.monotonic()
    last_ckpt = time.monotonic()
    label = f"{cfg.method} {stage.name}" if stage.name != "train" else cfg.method
    task = display.task(label, total, gstep)
    window: list[tuple[float, int]] = []

    def mark(**changes) -> dict:
        seconds[stage.name] = elapsed0 + time.monotonic() - t_start
        progress.update(stage=stage.index, epoch=epoch, step_in_epoch=k, global_step=gstep, seconds=dict(seconds), **changes)
        return progress

    while gstep < total:
        batches = epoch_batches(stage.sampler.epoch_items(epoch), cfg.batch_size, world, rank)
        keyed = [[(stage.index, epoch, item) for item in b] for b in batches[k:]]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=keyed, collate_fn=partial(collate, paired=stage.sampler.paired), num_workers=num_workers,
            pin_memory=device.type == "cuda", worker_init_fn=worker_init(cfg.seed, stage.index, epoch) if num_workers else None,
        )
        for batch in loader:
            seed = derive_seed(cfg.seed, STEP, stage.index, gstep, rank)
            _seed_step(seed, device)
            rng = np.random.default_rng(seed)
            batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
            loss, _logs = stage.step(ctx, train_model, batch, rng)
            loss_value = float(loss.detach())
            if not dist.all_finite(bool(np.isfinite(loss_value)), device):
                where = f"{stage.name} epoch {epoch} step {gstep}"
                kept = "the last good checkpoint is kept" if out.exists() else "no checkpoint was written yet"
                raise TrainingError(f"non-finite loss ({loss_value}) at {where}; stopped, {kept}; "
                                    "try a lower --lr or --no-amp", out)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            gstep += 1
            k += 1
            now = time.monotonic()
            window = (window + [(now, batch["image"].shape[0] * world)])[-20:]
            ips = sum(n for _, n in window[1:]) / max(window[-1][0] - window[0][0], 1e-9) if len(window) > 1 else 0.0
            display.update(task, gstep, loss_value, optimizer.param_groups[0]["lr"], ips)
            if AFTER_STEP is not None:
                AFTER_STEP(stage.name, gstep)
            if gstep >= total:
                break
            due_steps = cfg.checkpoint_every and gstep % cfg.checkpoint_every == 0
            due_time = cfg.checkpoint_minutes and (now - last_ckpt) > 60 * cfg.checkpoint_minutes
            if (due_steps or due_time) and k < len(batches):
                save(stage_state(), mark())
                last_ckpt = time.monotonic()
        if k >= len(batches):
            epoch, k = epoch + 1, 0
            if cfg.val_every and epoch % cfg.val_every == 0 and cfg.val_split and dist.main:
                val = _validate(model, root, cfg, device)
                metrics.setdefault("history", []).append({"stage": stage.name, "epoch": epoch, "step": gstep, "val_miou": val["miou"]})
                display.log(f"{label} epoch {epoch}: val mIoU {val['miou']:.2f}")
                model.train()
        done = gstep >= total
        save(stage_state(), mark(stage_done=done))
        last_ckpt = time.monotonic()
    if gstep >= total and not progress.get("stage_done"):
        save(stage_state(), mark(stage_done=True))
    for p in model.parameters():
        p.requires_grad_(True)
