"""``rbseg train``: train DeepLabv3 with baseline / Mixup / CutMix / feature binding."""
from __future__ import annotations

import argparse
import os

from .common import finish_command, print_json


def register(subparsers) -> None:
    from ..training.config import BLEND_NAMES, METHOD_NAMES, PRESETS

    p = subparsers.add_parser(
        "train", help="train a segmentation model (baseline, mixup, cutmix, feature binding)",
        description="Train DeepLabv3 on a VOC tree (real VOC with train_aug, or SynthVOC). Checkpoints are written "
                    "atomically to --out every epoch; --resume continues an interrupted run exactly. "
                    "Multi-GPU: torchrun --nproc_per_node N -m robustbench_seg train ... (see docs/training.md).",
    )
    p.add_argument("--method", required=True, choices=METHOD_NAMES, help="training method")
    p.add_argument("--data", required=True, metavar="ROOT", help="the VOC2012/ folder (holds JPEGImages/)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write (and to --resume from)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="paper: DeepLabv3-ResNet-101, 30 epochs, crop 321, lr 2.5e-4 (needs a GPU); ijcv: the SegMix paper's 50 epochs, "
                        "crop 513; tiny (default): SynthVOC tiny on CPU")
    p.add_argument("--arch", default=None, help="architecture (default: the preset's; see `rbseg zoo archs`)")
    p.add_argument("--split", default="train_aug", help="training split (default: train_aug)")
    p.add_argument("--val-split", default="val", help="split scored after training (default: val; 'none' to skip)")
    g = p.add_argument_group("feature binding")
    g.add_argument("--blend", default="cfb", choices=BLEND_NAMES, help="pair sampler (Table 5a; default: cfb)")
    g.add_argument("--delta-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="dominant weight delta ~ U[LO, HI] (Eq. 1); default 0.7 1.0")
    g.add_argument("--pairs-per-image", type=int, default=None, metavar="N",
                   help="partners per (cluster, image): cfb/cafb 19 (the paper's expansion), rfb/wrfb/mfb 10")
    g.add_argument("--pairs-resample", default="epoch", choices=["epoch", "once"],
                   help="draw fresh pairs every epoch (default), or one fixed pair set like the paper's disk copy")
    g.add_argument("--no-fbh", dest="fbh", action="store_false", help="no feature binding head: predict from S_t (Table 5c)")
    g.add_argument("--fbh-hidden", type=int, default=None, metavar="N", help="FBH hidden width (default 64)")
    g.add_argument("--no-denoise", dest="denoise", action="store_false", help="stop after stage 1 (Table 5b)")
    g.add_argument("--stage2-from", default=None, metavar="CKPT", help="run only the denoising stage from this stage-1 checkpoint")
    g.add_argument("--stage2-epochs", type=int, default=None, metavar="N")
    g.add_argument("--stage2-steps", type=int, default=None, metavar="N")
    g.add_argument("--stage2-lr", type=float, default=None, metavar="X", help="default: the preset's (paper: 2.5e-5)")
    c = p.add_argument_group("SegMix co-occurrence blend (--method binding --blend cm)")
    c.add_argument("--gamma", type=int, default=None, metavar="G",
                   help="max unique categories of a pair before the over-limit rule (default 4)")
    c.add_argument("--cm-delta", default=None, choices=["max", "sym"],
                   help="max (default): delta = max(d, 1-d), the dominant image weighs more; sym: d ~ Beta as drawn")
    c.add_argument("--cm-delta-draw", default=None, choices=["batch", "pair"],
                   help="one delta per batch (default, the paper's pseudo-code) or one per image")
    c.add_argument("--cm-over-limit", default=None, choices=["delta09", "skip", "none"],
                   help="pairs over --gamma: delta 0.9 (default, the paper's), not blended (Table 11 max=G), or no rule (max=inf)")
    c.add_argument("--cm-split", default=None, metavar="SPLIT", help="split whose ground truth C_ss counts (default: --split)")
    m = p.add_argument_group("mixup / cutmix")
    m.add_argument("--alpha", type=float, default=None, metavar="A",
                   help="Beta(A, A) for lambda / SegMix's delta (default: mixup 0.2, cutmix 1.0, cm 0.4; cm: 0 = no blending)")
    s = p.add_argument_group("schedule")
    s.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs (overrides the preset's length)")
    s.add_argument("--steps", type=int, default=None, metavar="N", help="optimiser steps (overrides --epochs)")
    s.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per process and step")
    s.add_argument("--lr", type=float, default=None, metavar="X", help="initial learning rate (poly decay, power 0.9)")
    s.add_argument("--crop", type=int, default=None, metavar="N", help="random crop size")
    s.add_argument("--scale", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="random rescale range before the crop (paper preset 0.5 2.0, tiny 0.75 1.25)")
    s.add_argument("--optimizer", default=None, choices=["sgd", "adamw"], help="paper preset: sgd (momentum 0.9); tiny: adamw")
    s.add_argument("--weight-decay", type=float, default=None, metavar="X", help="paper: 5e-4; tiny: 1e-4")
    s.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    e = p.add_argument_group("engineering")
    e.add_argument("--weights-backbone", default=None, metavar="imagenet|PATH|none",
                   help="ImageNet backbone weights: torchvision's (download/cache) or a local file")
    e.add_argument("--amp", dest="amp", action="store_true", default=None, help="autocast (default: on with CUDA)")
    e.add_argument("--no-amp", dest="amp", action="store_false")
    e.add_argument("--amp-dtype", default="bf16", choices=["bf16", "fp16"], help="autocast dtype (default: bf16; fp16 adds a GradScaler)")
    e.add_argument("--channels-last", dest="channels_last", action="store_true", default=None, help="default: on with CUDA")
    e.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    e.add_argument("--compile", action="store_true", help="torch.compile the model")
    e.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")
    e.add_argument("--num-workers", type=int, default=None, metavar="N", help="data-loading workers (default: the preset's)")
    e.add_argument("--resume", action="store_true", help="continue the run in --out")
    e.add_argument("--accept-data-change", action="store_true",
                   help="with --resume: continue although the training data changed (e.g. a fixed corrupt file); "
                        "the old and new dataset fingerprints are recorded in the checkpoint")
    e.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS", help="also checkpoint every STEPS steps")
    e.add_argument("--val-every", type=int, default=0, metavar="EPOCHS", help="also report val mIoU every N epochs")
    e.add_argument("--quiet", action="store_true", help="no progress display")
    finish_command(p, run)


def config_from_args(args: argparse.Namespace):
    from ..training import TrainConfig

    opts = dict(
        method=args.method, data=args.data, out=args.out, preset=args.preset, arch=args.arch, split=args.split,
        val_split=None if str(args.val_split).lower() == "none" else args.val_split,
        blend=args.blend, pairs_per_image=args.pairs_per_image, pairs_resample=args.pairs_resample, fbh=args.fbh,
        fbh_hidden=args.fbh_hidden, denoise=args.denoise, stage2_from=args.stage2_from, alpha=args.alpha,
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr, crop=args.crop,
        optimizer=args.optimizer, weight_decay=args.weight_decay,
        scale=None if args.scale is None else tuple(args.scale),
        stage2_epochs=args.stage2_epochs, stage2_steps=args.stage2_steps, stage2_lr=args.stage2_lr,
        weights_backbone=args.weights_backbone, amp=args.amp, amp_dtype=args.amp_dtype,
        channels_last=args.channels_last, compile=args.compile, device=args.device, seed=args.seed,
        num_workers=args.num_workers, resume=args.resume, accept_data_change=args.accept_data_change,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every, progress=not (args.quiet or args.json),
        gamma=args.gamma, cm_delta=args.cm_delta, cm_delta_draw=args.cm_delta_draw, cm_over_limit=args.cm_over_limit,
        cm_split=args.cm_split,
    )
    if args.delta_range is not None:
        opts["delta_range"] = tuple(args.delta_range)
    return TrainConfig(**opts)


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import read_checkpoint
    from ..training import train

    path = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    ckpt = read_checkpoint(path)
    metrics = ckpt.get("metrics") or {}
    summary = {"checkpoint": str(path), "method": ckpt.get("method"), "model": ckpt["model"],
               "val_miou": metrics.get("val_miou"), "val_split": metrics.get("val_split"),
               "seconds": (ckpt.get("progress") or {}).get("seconds"), "dataset": ckpt.get("dataset")}
    if args.json:
        print_json(summary)
    else:
        from .common import console

        miou = summary["val_miou"]
        console.print(f"wrote {path}" + (f"  (val mIoU {miou:.2f})" if miou is not None else ""))
    return 0
