"""``rbseg reproduce``: data -> train -> export -> surrogates -> craft -> evaluate -> report, resumable."""
from __future__ import annotations

import argparse

from rich import box
from rich.table import Table

from .common import add_device_arg, console, finish_command, print_json


def register(subparsers) -> None:
    from ..reproduce import PRESETS

    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    p = subparsers.add_parser(
        "reproduce", help="run the whole pipeline: data, training, attacks, evaluation, report",
        description="Reproduce the paper end to end: generate SynthVOC (unless --data), train the twelve zoo "
                    "models (baseline, mixup, cutmix, binding and its six ablations, segmix, segmix-no-denoise), the "
                    "GD-UAP source model and (bench) the seed replicates, export them to OUT/models, train the "
                    "two UAP surrogates, craft the five Table 4 perturbations into OUT/perturbations, evaluate every "
                    "model clean and under each perturbation on val (all subsets) and the baseline/binding on ooc, "
                    "write the report to OUT/reports and freeze OUT/reports/expected.json. With --out . in a "
                    f"checkout this regenerates what the suite ships. Presets: {presets}.",
    )
    p.add_argument("--preset", default="bench", choices=list(PRESETS),
                   help="pipeline size (default: bench, what the suite ships)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="VOC2012/ folder to use instead of generating SynthVOC (required by --preset paper)")
    p.add_argument("--out", default="reproduce", metavar="DIR", help="output folder (default: ./reproduce)")
    add_device_arg(p)
    p.add_argument("--resume", action="store_true",
                   help="continue a previous run in OUT: finished steps are skipped, interrupted ones resume")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    log = None if args.json else (lambda msg: console.print(f"[bold cyan]reproduce[/bold cyan] {msg}"))
    summary = reproduce(args.preset, data_root=args.data, out=args.out, device=args.device, resume=args.resume, log=log)
    if args.json:
        print_json(summary.to_json())
        return 0
    table = Table(title=f"rbseg reproduce --preset {summary.preset}: {summary.out}", box=box.SIMPLE_HEAD)
    for col, justify in (("stage", "left"), ("ran", "right"), ("skipped", "right"), ("seconds", "right")):
        table.add_column(col, justify=justify)
    for row in summary.stage_rows():
        table.add_row(row["stage"], str(row["ran"]), str(row["skipped"]), f"{row['seconds']:.1f}")
    table.add_row("total", "", "", f"{summary.seconds:.1f}", style="bold")
    console.print(table)
    console.print(f"data: {summary.data_root}\nreport: {summary.out / 'reports' / 'index.html'}")
    return 0
