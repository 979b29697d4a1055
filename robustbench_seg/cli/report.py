"""``rbseg report``: the paper's tables (Markdown, CSV, LaTeX), figures (PNG, PDF) and index.html."""
from __future__ import annotations

import argparse

from .common import add_data_arg, console, finish_command, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write the paper's tables and figures and an index.html from a results folder",
        description="Write Tables 1-5 (Markdown, CSV, LaTeX), Figure 4, the Table 4 chart, the qualitative "
                    "Figures 2, 3, 5, 6 (PNG, PDF) and one static index.html from the results of `rbseg evaluate`. "
                    "A table whose inputs are missing says which and the rest still renders. The qualitative "
                    "figures run the evaluated models on a few images of the data (--data, else the folder the "
                    "results record, else the embedded default).",
    )
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--out", default="reports-out", metavar="DIR",
                   help="output folder (default: reports-out/); a folder that already holds files (a previous "
                        "report, the shipped reports/) needs --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that already holds files")
    add_data_arg(p, required=False,
                 help_text="VOC2012/ folder for the qualitative figures (default: the one the results record)")
    p.add_argument("--models-dir", default=None, metavar="DIR",
                   help="zoo folder (zoo.json) holding the evaluated models, e.g. a `rbseg reproduce` output's models/")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="report this dataset's results when the folder holds several (e.g. SynthVOC-bench)")
    p.add_argument("--no-qualitative", action="store_true",
                   help="skip the figures that run models (Figures 2, 3, 5, 6)")
    p.add_argument("--device", default="cpu", help="device for the qualitative figures (default: cpu)")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..reports import build_report
    from ..reports.build import check_report_out
    from ..reports.inputs import load_result_index

    index = load_result_index(args.results, dataset=args.dataset)  # a missing results folder fails first
    check_report_out(args.out, overwrite=args.overwrite)
    log = None if args.json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    summary = build_report(
        args.results, args.out, data_root=args.data, models_dir=args.models_dir, dataset=args.dataset,
        qualitative=not args.no_qualitative, device=args.device, log=log, index=index,
    )
    if args.json:
        print_json(summary.to_json())
        return 0
    incomplete = [t.key for t, _ in summary.tables if not t.complete]
    skipped = [f.key for f in summary.figures if f.skipped]
    console.print(f"wrote {len(summary.tables)} tables and {sum(f.written for f in summary.figures)} figures; "
                  f"open {summary.index_html}")
    if incomplete:
        console.print(f"[yellow]tables with missing inputs (listed in each): {', '.join(incomplete)}[/yellow]")
    if skipped:
        console.print(f"[yellow]figures not drawn (reason in index.html): {', '.join(skipped)}[/yellow]")
    for w in summary.warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    return 0
