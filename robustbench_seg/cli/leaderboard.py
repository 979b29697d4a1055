"""``rbseg leaderboard``: one row per model (clean, universal, per-image worst case, corruptions)."""
from __future__ import annotations

import argparse

from rich import box
from rich.table import Table as RichTable

from .common import console, finish_command, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "leaderboard", help="one row per evaluated model: clean, universal, worst case per eps, mean corruption mIoU",
        description="Print a leaderboard of a results folder: per model the clean mIoU, the mean over the universal "
                    "perturbations evaluated, the per-image worst case at each eps (worst-eps*.json) and the mean "
                    "corruption mIoU, with the protocol of each number; a '*' marks a number whose protocol differs "
                    "from its column's most common one. With --out: also leaderboard.md/.csv/.tex/.json and a section "
                    "of DIR/index.html (added to a report's page, or a page of its own).",
    )
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--out", default=None, metavar="DIR", help="write the leaderboard files and index.html section here")
    p.add_argument("--overwrite", action="store_true", help="replace a leaderboard already written in --out")
    p.add_argument("--split", default="val", help="split whose results are ranked (default: val)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="the dataset whose results are ranked when the folder holds several")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..reports.leaderboard import leaderboard, write_leaderboard
    from ..reports.tables import format_cell

    table, protocols, index = leaderboard(args.results, split=args.split, dataset=args.dataset)
    files = write_leaderboard(table, protocols, args.out, overwrite=args.overwrite) if args.out else []
    if args.json:
        print_json({"columns": [c.label for c in table.columns],
                    "rows": [{"model": r.key, "protocol": protocols.get(r.key, {}),
                              **{c.label: cell.value for c, cell in zip(table.columns, r.cells)}} for r in table.rows],
                    "notes": table.notes, "warnings": index.warnings, "files": [str(f) for f in files]})
        return 0
    view = RichTable(title=table.title, box=box.SIMPLE_HEAVY)
    view.add_column("model")
    view.add_column("protocol")
    for col in table.columns:
        view.add_column(col.label, justify="right")
    for row in table.rows:
        view.add_row(*row.stub, *(format_cell(c, row.kind) for c in row.cells))
    console.print(view)
    for note in table.notes:
        console.print(f"[dim]{note}[/dim]")
    for w in index.warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    if files:
        console.print("wrote " + ", ".join(str(f) for f in files))
    return 0
