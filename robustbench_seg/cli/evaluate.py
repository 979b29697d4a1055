"""``rbseg evaluate``: a model clean and under every perturbation, on the full split and each subset."""
from __future__ import annotations

import argparse
import math
import sys

from rich import box
from rich.table import Table

from ..attacks.apply import DEFAULT_FIT, FitMode
from .common import add_data_arg, add_device_arg, console, finish_command, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a model clean, under universal perturbations and per-image attacks (mIoU, subsets)",
        description="Evaluate a segmentation model at full resolution, clean, under each universal "
                    "perturbation, each per-image attack (--attacks; with their per-image worst case) and each "
                    "common corruption (--corruptions, --severities), on the "
                    "full split and every paper subset, in one pass over the data (torchrun shards the images). "
                    "Results go to OUT/<model>/<dataset>/<split>-<fit>-<clip>-<dtype>/<input>.json and are "
                    "reused on re-runs with the same protocol. With no --data: the embedded SynthVOC bench "
                    "benchmark (generated into the cache on first use).",
    )
    p.add_argument("--model", required=True, action="append", metavar="NAME|CKPT|MODULE:FUNCTION",
                   help="a zoo name (rbseg zoo list), a checkpoint path, torchvision:NAME[:WEIGHTS], or module:function "
                        "returning an nn.Module; "
                        "several (a comma list, or --model repeated) are evaluated one after another")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="state dict for a module:function model, or the weights file of a torchvision:NAME model "
                        "(loaded safely, weights only)")
    add_data_arg(p, required=False,
                 help_text="VOC2012/ folder (real VOC or SynthVOC); default: the embedded SynthVOC bench")
    p.add_argument("--split", default="val", help="split to evaluate (default: val; 'ooc' on SynthVOC)")
    p.add_argument("--perturbations", default="all", metavar="all|none|NAME,...",
                   help="shipped perturbation names or .npy paths, 'all' (every shipped one) may be among them "
                        "(default: all); clean is always included")
    p.add_argument("--attacks", default=None, metavar="all|NAME,...",
                   help="per-image white-box attacks (pgd, segpgd, cospgd, sea = sea-mce,sea-bmce,sea-js; 'all': every "
                        "one); each at every --eps; with two or more, the per-image worst case per eps is added")
    p.add_argument("--eps", default=None, metavar="E,...",
                   help="l-inf budgets of the attacks in 0-255 pixel units ('4/255' notation accepted; "
                        "default: the preset's)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="attack iterations (default: the preset's)")
    p.add_argument("--attack-preset", default="quick", choices=["quick", "full"],
                   help="quick: few steps and eps values, every image and subset (CPU); full: the published "
                        "protocol (GPU) (default: quick)")
    p.add_argument("--attack-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="precision of the attacks' forward and backward passes (default: fp32; recorded)")
    p.add_argument("--corruptions", default=None, metavar="all|extra|NAME,...",
                   help="common corruptions (ImageNet-C style; all: the 15 benchmark ones, extra: the 4 validation "
                        "ones), each at every --severities, computed from the clean image (results "
                        "corruption-<name>-s<severity>)")
    p.add_argument("--severities", default=None, metavar="1-5|S,...",
                   help="corruption severities (default: 1-5)")
    p.add_argument("--corruption-seed", type=int, default=0, metavar="N",
                   help="seed of the corruptions' random draws (per image: corruption_seed(id, name, severity, N); "
                        "default: 0; recorded)")
    p.add_argument("--allow-any-magnitude", action="store_true",
                   help="evaluate a perturbation whose max |v| the loader refuses as implausible (above its xi, or "
                        "without a JSON sidecar above 32 or below 0.5 in 0-255 units); max |v| is recorded anyway")
    p.add_argument("--subsets", default="all", metavar="all|none|NAME,...",
                   help="paper subsets to score besides the full split (default: all)")
    p.add_argument("--fit", default=DEFAULT_FIT.value, choices=[m.value for m in FitMode],
                   help="how a perturbation meets an image of another size (default: tile)")
    p.add_argument("--no-clip", action="store_true", help="do not clip perturbed pixels to [0, 255]")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per batch, same-size images only (default: 8); changes no prediction")
    add_device_arg(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (recorded with the results)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image-decoding workers (default: 0 on a small CPU machine, up to 8 with CUDA)")
    p.add_argument("--out", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--force", action="store_true", help="recompute even when stored results match")
    p.add_argument("--show-subsets", action="store_true", help="also print the mIoU of every subset")
    finish_command(p, run)


def model_specs(values) -> list[str]:
    """The models of repeated ``--model`` options, each possibly a comma list (an existing file whose
    name holds a comma stays whole), in order, without repeats."""
    from pathlib import Path

    from ..errors import RbsegError

    specs: list[str] = []
    for value in values if isinstance(values, (list, tuple)) else [values]:
        parts = [value] if Path(value).expanduser().is_file() else [s.strip() for s in value.split(",")]
        if not all(parts):
            raise RbsegError(f"--model '{value}': an empty model name in the list")
        specs += parts
    return list(dict.fromkeys(specs))


def run(args: argparse.Namespace) -> int:
    from ..errors import RbsegError
    from ..evaluation.engine import evaluate, subset_names
    from ..io import probe_writable

    if args.batch_size < 1:
        raise RbsegError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps is not None and args.steps < 1:
        raise RbsegError(f"--steps must be >= 1, got {args.steps}")
    if args.attacks is None and (args.eps is not None or args.steps is not None):
        raise RbsegError("--eps and --steps apply to per-image attacks: add --attacks NAME,... (or all)")
    if args.corruptions is None and (args.severities is not None or args.corruption_seed != 0):
        raise RbsegError("--severities and --corruption-seed apply to corruptions: add --corruptions all|extra|NAME,...")
    import os

    writer = int(os.environ.get("RANK", "0") or 0) == 0  # torchrun: rank 0 reports
    specs = model_specs(args.model)
    if args.weights is not None and len(specs) > 1:
        raise RbsegError(f"--weights applies to one module:function model, not to {len(specs)} models")
    wanted_subsets = subset_names(args.subsets)  # bad names fail before any model loads
    probe_writable(args.out, "results folder")
    all_records = []
    for spec in specs:
        records = evaluate(
            spec, data_root=args.data, split=args.split, perturbations=args.perturbations, subsets=args.subsets,
            fit=args.fit, clip=not args.no_clip, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            out=args.out, weights=args.weights, num_workers=args.workers, progress=not args.json,
            force=args.force, allow_any_magnitude=args.allow_any_magnitude, attacks=args.attacks, eps=args.eps,
            steps=args.steps, attack_preset=args.attack_preset, attack_dtype=args.attack_dtype,
            corruptions=args.corruptions, severities=args.severities, corruption_seed=args.corruption_seed,
        )
        all_records += records
        if not args.json and writer:
            show_model(args, records, wanted_subsets)
    if args.json and writer:
        print_json([r.to_dict() for r in all_records])
    return 0


def show_model(args: argparse.Namespace, records, wanted_subsets: list[str]) -> None:
    console.print(results_table(records))
    published = (records[0].model or {}).get("published")
    if published and published.get("miou") is not None:  # e.g. torchvision's figure for its weights
        console.print(f"[dim]published mIoU {published['miou']} on {published.get('dataset')} "
                      f"({published.get('source')}), beside ours above[/dim]")
    if args.show_subsets:
        console.print(subsets_table(records, wanted_subsets))
    if args.perturbations == "all" and not any(r.perturbation.get("kind", "perturbation") == "perturbation"
                                               and r.perturbation["name"] != "clean" for r in records):
        from ..paths import shipped_perturbations_dir

        console.print(f"[dim]no shipped perturbations in {shipped_perturbations_dir()} (rbseg reproduce or "
                      "rbseg craft makes them); evaluated clean only[/dim]")
    unavailable = records[0].unavailable_subsets
    if unavailable:
        console.print(f"[dim]{len(unavailable)} subset(s) unavailable on this tree: "
                      + "; ".join(f"{k}: {v}" for k, v in list(unavailable.items())[:3])
                      + (" ..." if len(unavailable) > 3 else "") + "[/dim]")


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def results_table(records) -> Table:
    first = records[0]
    proto = first.protocol
    table = Table(
        title=f"{first.model['name']} on {proto['dataset']} {proto['split']}",
        caption=(f"{proto['n_images']} images, full resolution; fit={proto['fit']}, clip={'on' if proto['clip'] else 'off'}, "
                 f"{proto['dtype']}, {proto['device']}"),
        box=box.SIMPLE_HEAVY,
    )
    table.add_column("input")
    table.add_column("mIoU", justify="right")
    table.add_column("drop", justify="right")
    table.add_column("pixel acc", justify="right")
    table.add_column("classes", justify="right")
    clean = first.miou()
    for r in records:
        m = r.miou()
        drop = None if r is first or m is None or clean is None else clean - m
        metrics = r.subsets["all"]["metrics"]
        table.add_row(r.perturbation["name"], _fmt(m), _fmt(drop), _fmt(metrics.get("pixel_acc")),
                      str(metrics.get("classes_counted")))
    return table


def subset_order(names) -> list[str]:
    """"all", then the paper's subsets in SUBSET_NAMES order, then any other (e.g. "ooc")."""
    from ..data.subsets import SUBSET_NAMES

    rank = {name: k for k, name in enumerate(("all", *SUBSET_NAMES))}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def subsets_table(records, wanted: list[str] | None = None) -> Table:
    """mIoU per subset; for person-<c> / only-<c> the IoU of class c, as the paper's Table 3 reports.

    ``wanted``: the subsets asked for (``all`` / ``ooc`` always show); None: every recorded subset
    (a reused result may hold more than were asked for)."""
    from ..constants import VOC_CLASSES
    from ..data.subsets import SUBSET_NAMES, subset_class

    table = Table(title="per subset (n = images)", box=box.SIMPLE_HEAVY)
    table.add_column("subset")
    table.add_column("n", justify="right")
    table.add_column("metric")
    for r in records:
        table.add_column(r.perturbation["name"], justify="right")
    names = [n for n in records[0].subsets if wanted is None or n in ("all", "ooc") or n in wanted]
    for name in subset_order(names):
        cls = subset_class(name) if name in SUBSET_NAMES else None
        if cls is None:
            values = [r.miou(name) for r in records]
        else:
            values = [r.subsets[name]["metrics"]["iou"].get(VOC_CLASSES[cls]) for r in records]
        table.add_row(name, str(records[0].subsets[name]["n_images"]), "mIoU" if cls is None else f"IoU {VOC_CLASSES[cls]}",
                      *(_fmt(v) for v in values))
    return table
