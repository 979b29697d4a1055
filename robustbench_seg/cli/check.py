"""``rbseg check``: recorded mIoUs against frozen expected values (the regression gate CI runs)."""
from __future__ import annotations

import argparse

from rich import box
from rich.table import Table

from .common import console, finish_command, print_json

STYLE = {"ok": "green", "improved": "cyan", "new": "dim", "regressed": "bold red", "missing": "bold red"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="compare recorded mIoUs with expected values; exit 1 on a regression",
        description="Compare every expected mIoU (per model, dataset, split, fit, clip, perturbation and subset) "
                    "with the one recorded under --results. Exit 1 when any falls more than --tolerance points "
                    "below its expected value or is missing; results without an expected value are listed as new.",
    )
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--expected", default=None, metavar="FILE",
                   help="expected values (default: the shipped reports/expected.json)")
    p.add_argument("--tolerance", type=float, default=0.5, metavar="POINTS",
                   help="allowed drop in mIoU points (default: 0.5)")
    p.add_argument("--all", action="store_true", help="list every entry, not only the differences")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.results import check_results
    from ..paths import shipped_reports_dir

    expected = args.expected or shipped_reports_dir() / "expected.json"
    report = check_results(args.results, expected, tolerance=args.tolerance)
    if args.json:
        print_json(report.to_dict())
        return 0 if report.passed else 1
    rows = report.rows if args.all else [r for r in report.rows if r.status != "ok"]
    table = Table(title=f"rbseg check: {args.results} vs {expected} (tolerance {args.tolerance:g} points)",
                  box=box.SIMPLE_HEAVY)
    for col, justify in (("model", "left"), ("dataset", "left"), ("split", "left"), ("perturbation", "left"),
                         ("subset", "left"), ("expected", "right"), ("actual", "right"), ("diff", "right"),
                         ("status", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        e = r.entry
        table.add_row(str(e.get("model")), str(e.get("dataset")), f"{e.get('split')}/{e.get('fit')}"
                      + ("" if e.get("clip", True) else "/noclip"), str(e.get("perturbation")), str(e.get("subset")),
                      _fmt(r.expected), _fmt(r.actual), _fmt(r.diff, signed=True),
                      f"[{STYLE[r.status]}]{r.status}[/{STYLE[r.status]}]")
    if rows:
        console.print(table)
    counts = report.to_dict()["counts"]
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    verdict = "[green]PASS[/green]" if report.passed else f"[bold red]FAIL[/bold red] ({len(report.failures)} failing)"
    console.print(f"{verdict}: {summary or 'nothing to compare'}")
    return 0 if report.passed else 1


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"
