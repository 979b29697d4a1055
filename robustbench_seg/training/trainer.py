"""``train(config) -> checkpoint path``: the training loop for every method.

* SGD (momentum, weight decay), poly learning rate per step, one optimiser per stage.
* Exact resume: work lists, augmentation seeds and per-step randomness (mixup lambdas, cutmix
  boxes, dropout) are pure functions of ``(seed, stage, epoch, position / step)``; a checkpoint
  stores the model, optimiser, scheduler, scaler, position and RNG states, so a run killed
  anywhere and resumed from its last checkpoint ends with the same weights (bit-identical on CPU).
* Checkpoints are atomic, written by rank 0 at every epoch end, every ``checkpoint_every`` steps
  and at least every ``checkpoint_minutes``; a non-finite loss stops the run before anything is
  written, so the last good checkpoint stays intact; so does a failed write (one line naming the
  file). The output folder is probed and the training data checked (``preflight``) before step 1.
* Each checkpoint records what ran (``record.recorded_config``), ``finished`` (False until the last
  step), the world size (a resume under another one is refused: ``check_resume``) and any data
  change accepted with ``accept_data_change``.
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
    checkpoint_finished, load_state, make_checkpoint, model_config, model_from_checkpoint, read_checkpoint,
    save_checkpoint, utc_now,
)
from ..io import clean_stale_tmp, probe_writable, sha256_file
from .config import TrainConfig, config_mismatch, resolve_config
from .preflight import preflight
from .record import dtype_name, merge_resumed, recorded_config, resolve_runtime
from .data import TrainSamples, collate, dataset_info, image_classes, split_classes, worker_init
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
# Resume checks (pure: the checkpoint, the config and the facts of this run)
# ---------------------------------------------------------------------------------------------


def check_resume(ckpt: dict, cfg: TrainConfig, fingerprint: str, world_size: int, out: Path) -> dict | None:
    """Refuse a ``--resume`` that would not continue the same run; return the data change to record.

    * a different configuration (options that change the weights; ``resume.options``, or the
      ``training`` section of checkpoints written before it existed);
    * another world size: the epoch's work list is sharded by world size, so a resume under another
      WORLD_SIZE would drop or repeat samples and change the schedule -- refused, not re-sharded
      (checkpoints that predate the record are not checked);
    * other training data (the dataset fingerprint differs): refused unless ``accept_data_change``;
      then ``{"from", "to"}`` is returned for the checkpoint's ``dataset.data_changes``.
    """
    if ckpt["kind"] != "training" or "resume" not in ckpt or "progress" not in ckpt:
        raise RbsegError("not a resumable training checkpoint (an exported inference checkpoint?)", out)
    saved_options = (ckpt.get("resume") or {}).get("options") or ckpt.get("training") or {}
    diff = config_mismatch(saved_options, cfg)
    if diff:
        raise RbsegError(f"--resume with a different configuration ({', '.join(diff)}); use the original options", out)
    saved_world = (ckpt.get("progress") or {}).get("world_size")
    if saved_world is not None and int(saved_world) != int(world_size):
        raise RbsegError(
            f"--resume with {world_size} process(es) (WORLD_SIZE), but this run was trained with {saved_world}: the "
            f"epoch's sharding would drop or repeat samples; resume with {saved_world} process(es)", out)
    saved_fp = (ckpt.get("dataset") or {}).get("fingerprint")
    if saved_fp != fingerprint:
        if not cfg.accept_data_change:
            raise RbsegError(
                f"--resume on different training data (dataset fingerprint {saved_fp} when saved, {fingerprint} now); "
                "if you fixed or replaced training files on purpose, add --accept-data-change (recorded in the checkpoint)",
                out)
        return {"from": saved_fp, "to": fingerprint}
    return None


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
    stage1_record = None
    if cfg.stage2_from is not None:  # the model (and its config) come from a stage-1 checkpoint
        src_path = Path(cfg.stage2_from).expanduser()
        src_ckpt = read_checkpoint(src_path)
        if not src_ckpt["model"].get("binding"):
            raise RbsegError("--stage2-from needs a feature-binding checkpoint (this one is a plain DeepLabv3)", src_path)
        if not checkpoint_finished(src_ckpt):
            raise RbsegError("--stage2-from needs a finished stage-1 run (finish it with --resume first)", src_path)
        m = src_ckpt["model"]
        cfg = replace(cfg, arch=m["arch"], fbh=m["fbh"], fbh_hidden=m["fbh_hidden"])
        source = {"stage2_from": str(src_path), "sha256": sha256_file(src_path)}
        stage1_record = {"checkpoint": str(src_path), "sha256": source["sha256"], "config": src_ckpt.get("training") or {}}

    ckpt = None
    data_change = None
    if out.exists():
        if not cfg.resume:
            raise RbsegError("checkpoint already exists; pass --resume to continue that run, or choose another --out", out)
        ckpt = read_checkpoint(out)
        data_change = check_resume(ckpt, cfg, dinfo["fingerprint"], dist.world_size, out)
        if checkpoint_finished(ckpt):
            display.log(f"[green]{out}: already finished[/green]")
            return out
    if dist.main:  # before any long work: a read-only or full folder fails now, not after the first epoch
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RbsegError(f"cannot write the checkpoint here ({exc.strerror or exc})", out.parent) from None
        probe_writable(out.parent, "checkpoint")  # the folder (an --out without a suffix is still a file)
        clean_stale_tmp(out.parent, out.name)
    # every training image and mask decodes and is valid before step 1 (cached by file signature)
    preflight(root, cfg.split, ids, progress=cfg.progress and dist.main)
    if ckpt is not None:
        changes = list((ckpt.get("dataset") or {}).get("data_changes") or [])
        if data_change is not None:
            p = ckpt["progress"]
            changes.append({**data_change, "at": {"stage": p.get("stage"), "global_step": p.get("global_step")},
                            "time": utc_now()})
            display.log(f"[yellow]{out}: training data changed (fingerprint {data_change['from']} -> "
                        f"{data_change['to']}); continuing as asked (--accept-data-change), recorded[/yellow]")
        if changes:
            dinfo["data_changes"] = changes

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
    runtime = resolve_runtime(cfg, device)  # the run uses exactly what the record says
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, runtime.amp, runtime.amp_dtype, runtime.channels_last)

    data = TrainData(len(ids), lambda: image_classes(root, cfg.split, ids),
                     classes_of=partial(split_classes, root), info=dinfo)  # info: cm records its C_ss split there
    stages = METHODS[cfg.method](cfg, data)
    dataset = TrainSamples(root, cfg.split, ids, cfg.crop, cfg.scale, cfg.seed)
    num_workers = cfg.num_workers if cfg.num_workers is not None else 0

    progress = dict(ckpt["progress"]) if ckpt is not None else {"stage": 0, "epoch": 0, "step_in_epoch": 0,
                                                                "global_step": 0, "stage_done": False, "finished": False,
                                                                "seconds": {}}
    progress["world_size"] = dist.world_size
    record = recorded_config(cfg, runtime, dist.world_size, stage1_record)
    if ckpt is not None:
        record = merge_resumed(ckpt.get("training"), record,
                               {"stage": progress.get("stage"), "global_step": progress.get("global_step")})
    options = cfg.to_dict()
    resume_state = ckpt["resume"] if ckpt is not None else None
    metrics: dict = dict(ckpt.get("metrics") or {}) if ckpt is not None else {}
    if resume_state is not None:
        set_rng_state(resume_state["rng"])

    def save(stage_state: dict | None, prog: dict) -> None:
        if not dist.main:
            return
        resume = {"rng": rng_state(), "options": options, **(stage_state or {})}
        ck = make_checkpoint(model, mcfg, "training", method=cfg.method, training=record, dataset=dinfo,
                             finished=bool(prog.get("finished")), progress=dict(prog), metrics=dict(metrics),
                             source=source, resume=resume)
        try:
            save_checkpoint(out, ck)
        except OSError as exc:
            where = f"stage {prog.get('stage')} step {prog.get('global_step')}"
            kept = "the previous checkpoint is kept" if out.exists() else "no checkpoint was written yet"
            raise TrainingError(f"cannot write the checkpoint at {where} ({exc.strerror or exc}); {kept}; "
                                "make room or fix the folder, then run again with --resume", out) from exc

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
            metrics.update(val_miou=val["miou"], val_split=cfg.val_split, val_dtype=dtype_name(runtime.val_dtype), val=val)
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
    """Val mIoU in the dtype the record states (``record.resolve_runtime``: fp32 on CPU, bf16 on CUDA)."""
    from ..evaluation.engine import evaluate_clean

    m = evaluate_clean(model, root, split=cfg.val_split, device=device, batch_size=cfg.val_batch_size,
                       dtype=resolve_runtime(cfg, device).val_dtype)
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
