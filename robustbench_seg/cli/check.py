"""``rbseg check``: recorded mIoUs against frozen expected values (the regression gate CI runs)."""
from __future__ import annotations

import argparse

from rich import box
from rich.table import Table

from .common import console, finish_command, print_json

STYLE = {"ok": "green", "improved": "cyan", "new": "dim", "not evaluated": "dim", "regressed": "bold red",
         "missing": "bold red", "different model": "bold red", "different perturbation": "bold red",
         "per-image mismatch": "bold red"}
WIDTH = 80  # the table fits a classic terminal


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="compare recorded mIoUs with expected values; exit 1 on a regression",
        description="Compare every expected mIoU (per model, dataset, split, fit, clip, perturbation and subset) "
                    "with the one recorded under --results. Only what was evaluated is checked (the other "
                    "expected entries are counted as 'not evaluated'; --require-all makes them fail as missing). "
                    "Exit 1 when a value falls more than --tolerance points below its expected value, is missing "
                    "from an evaluated result, or was recorded for a different model or perturbation (sha256); "
                    "improvements beyond --tolerance and results without an expected value are reported.",
    )
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results/)")
    p.add_argument("--expected", default=None, metavar="FILE",
                   help="expected values (default: the shipped reports/expected.json)")
    p.add_argument("--tolerance", type=float, default=0.5, metavar="POINTS",
                   help="allowed drop in mIoU points (default: 0.5)")
    p.add_argument("--require-all", action="store_true",
                   help="every expected entry must have been evaluated (what CI runs): the others fail as missing")
    p.add_argument("--all", action="store_true", help="list every entry, not only the differences")
    finish_command(p, run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.results import check_results
    from ..paths import shipped_reports_dir

    expected = args.expected or shipped_reports_dir() / "expected.json"
    report = check_results(args.results, expected, tolerance=args.tolerance, require_all=args.require_all)
    if args.json:
        print_json(report.to_dict())
        return 0 if report.passed else 1
    console.print(f"rbseg check: {args.results} vs {expected}, tolerance {args.tolerance:g} points", width=WIDTH,
                  overflow="fold", soft_wrap=False, highlight=False)
    hidden = ("ok", "not evaluated") if not args.all else ()
    rows = [r for r in report.rows if r.status not in hidden]
    for table in check_tables(rows):
        console.print(table, width=WIDTH)
    not_evaluated: dict[str, int] = {}
    for r in report.rows:
        if r.status == "not evaluated":
            not_evaluated[str(r.entry.get("model"))] = not_evaluated.get(str(r.entry.get("model")), 0) + 1
    if not_evaluated and not args.all:
        console.print("[dim]not evaluated here (not checked; --require-all fails them): "
                      + ", ".join(f"{m} ({n})" for m, n in not_evaluated.items()) + "[/dim]", width=WIDTH)
    counts = report.to_dict()["counts"]
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    compared = sum(n for status, n in counts.items() if status not in ("not evaluated", "new"))
    verdict = "[green]PASS[/green]" if report.passed else f"[bold red]FAIL[/bold red] ({len(report.failures)} failing)"
    console.print(f"{verdict}: {summary or 'nothing to compare'}" + ("" if compared else " (no expected entry compared)"),
                  width=WIDTH)
    return 0 if report.passed else 1


def check_tables(rows) -> list[Table]:
    """One table per protocol (dataset, split, fit, clip: its title), one line per entry within 80
    columns: numbers and statuses are never cut, long names are cut with an ellipsis, never wrapped."""
    groups: dict[tuple, list] = {}
    for r in rows:
        e = r.entry
        groups.setdefault((str(e.get("dataset")), str(e.get("split")), str(e.get("fit")), e.get("clip", True)), []).append(r)
    tables = []
    for (dataset, split, fit, clip), group in groups.items():
        table = Table(title=f"{dataset} {split}, fit {fit}, clip {'on' if clip else 'off'}", title_justify="left",
                      box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
        texts = [(_fmt(r.expected), _fmt(r.actual), _fmt(r.diff, signed=True), r.status) for r in group]
        fixed = [max(4, *(len(t[k]) for t in texts)) for k in range(3)] + [max(6, *(len(t[3]) for t in texts))]
        names = [[str(r.entry.get(k)) for r in group] for k in ("model", "perturbation", "subset")]
        widths = _fit([max(6, *map(len, col)) for col in names], WIDTH - sum(fixed) - 14)  # 6 gaps of 2, the last padding
        for title, width in zip(("model", "input", "subset"), widths):
            table.add_column(title, no_wrap=True, overflow="ellipsis", width=width)
        for k, col in enumerate(("expected", "actual", "diff")):
            table.add_column(col if fixed[k] >= len(col) else col[:3] + ".", justify="right", no_wrap=True, width=fixed[k])
        table.add_column("status", no_wrap=True, width=fixed[3])
        for r, (exp, act, diff, status) in zip(group, texts):
            style = STYLE.get(status, "")
            table.add_row(str(r.entry.get("model")), str(r.entry.get("perturbation")), str(r.entry.get("subset")),
                          exp, act, diff, f"[{style}]{status}[/{style}]")
        tables.append(table)
    return tables


def _fit(widths: list[int], budget: int) -> list[int]:
    """Shrink the widest columns first until the widths sum to at most ``budget`` (each at least 6)."""
    widths = list(widths)
    while sum(widths) > budget and max(widths) > 6:
        widths[widths.index(max(widths))] -= 1
    return widths


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"
