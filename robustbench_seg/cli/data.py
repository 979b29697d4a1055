"""``rbseg data {check,stats,subsets,synth}``: dataset validation, statistics, subsets, SynthVOC."""
from __future__ import annotations

import sys

from rich import box
from rich.console import Console
from rich.table import Table

from ..constants import VOC_CLASSES
from ..errors import RbsegError
from .common import add_command_group, add_data_arg, comma_separated, console, finish_command, print_json


def show_progress(args) -> bool:
    """Progress bars (on stderr) for interactive runs only; never around --json output."""
    import sys

    return not args.json and sys.stderr.isatty()

SYNTH_PRESETS = ("micro", "tiny", "bench", "small", "large")


def _split_list(text: str) -> list[str]:
    return comma_separated(text, "expected a comma-separated list of split names")


def register(subparsers) -> None:
    sub = add_command_group(subparsers, "data", "data_command", help="check, describe and subset a VOC tree; generate SynthVOC",
                            description="Dataset tools: validation, statistics, the paper's subsets, SynthVOC.")

    p = sub.add_parser("check", help="validate a VOC tree and list every problem",
                       description="Validate a VOC tree: images, masks, labels, sizes, split lists, instance "
                                   "masks and XML. Exit 1 on any problem, 0 on a clean tree.")
    add_data_arg(p)
    p.add_argument("--strict-sizes", action="store_true",
                   help="on a real VOC tree, any split size other than VOC 2012's is an error (by default a "
                        "list with fewer than half the real ids is a partial tree: a warning)")
    finish_command(p, run_check)

    p = sub.add_parser("stats", help="class frequencies and the co-occurrence matrix",
                       description="Per-class image counts and the 21x21 co-occurrence matrix (images containing "
                                   "both classes; diagonal = images containing the class) over one or more splits.")
    add_data_arg(p)
    p.add_argument("--splits", type=_split_list, default=None, metavar="A,B",
                   help="comma-separated splits (default: train_aug,val, those that exist)")
    finish_command(p, run_stats)

    p = sub.add_parser("subsets", help="the paper's evaluation subsets (Tables 2, 3, Figure 4)",
                       description="Compute occ1, occall, obj1-4, uniq2-4, person-<c>, only-<c> and cooc50-10 "
                                   "on a split (definitions: docs and robustbench_seg/data/subsets.py).")
    add_data_arg(p)
    p.add_argument("--split", default="val", help="split to subset (default: val)")
    p.add_argument("--cooccur-splits", type=_split_list, default=["train_aug", "val"], metavar="A,B",
                   help="splits counted for the co-occurrence matrix (default: train_aug,val; one without a split "
                        "list is left out with a warning, and the splits used and missing are reported)")
    p.add_argument("--cooc-scale", choices=("auto", "on", "off"), default="auto",
                   help="scale the co-occurrence thresholds 50/40/30/20/10 to the number of images counted "
                        "(n / 12,031, VOC's train_aug + val); auto (default): when the SynthVOC tree asks for "
                        "it (bench preset), never on real VOC")
    finish_command(p, run_subsets)

    p = sub.add_parser("synth", help="generate a synthetic VOC tree (SynthVOC)",
                       description="Write OUT/VOC2012/ in the VOC layout: JPEG images, palette masks, instance "
                                   "masks, Annotations XML, split lists (train, val, trainval, train_aug, ooc).")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (the tree goes to DIR/VOC2012/)")
    p.add_argument("--preset", default="bench", choices=SYNTH_PRESETS,
                   help="dataset size (default: bench, the embedded benchmark)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0); same seed, same bytes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR/VOC2012/")
    finish_command(p, run_synth)


# --- check -----------------------------------------------------------------------------------------

def run_check(args) -> int:
    from ..data.check import check_tree, plural

    report = check_tree(args.data, strict_sizes=args.strict_sizes, progress=show_progress(args))
    if args.json:
        print_json(report.to_json())
        return 0 if report.ok else 1
    summary = Table(title=f"rbseg data check: {report.root}")
    summary.add_column("split")
    summary.add_column("ids", justify="right")
    for split, n in report.splits.items():
        summary.add_row(split, f"{n:,}")
    for kind, n in report.checked.items():
        summary.add_row(f"[dim]{kind} checked[/dim]", f"{n:,}")
    kind = "real VOC" if report.real_voc else ("SynthVOC" if report.synthetic else "not real VOC (no split-size check)")
    summary.caption = kind
    console.print(summary)
    for title, rows, style in (("problems", report.problems, "red"), ("warnings", report.warnings, "yellow")):
        if rows:
            table = Table(title=title, title_style=style)
            table.add_column("file", overflow="fold")
            table.add_column("problem", overflow="fold")
            for row in rows:
                table.add_row(row.file, row.problem)
            console.print(table)
    if report.ok:
        console.print(f"[green]OK[/green]: no problems ({plural(len(report.warnings), 'warning')})")
        return 0
    console.print(f"[red]{plural(len(report.problems), 'problem')}[/red] ({plural(len(report.warnings), 'warning')})")
    return 1


# --- stats -----------------------------------------------------------------------------------------

def _abbrev(name: str) -> str:
    return {"background": "bg", "aeroplane": "plane", "bicycle": "bike", "bottle": "bottl", "diningtable": "table",
            "motorbike": "mbike", "person": "pers", "pottedplant": "plant", "tvmonitor": "tv"}.get(name, name)


def run_stats(args) -> int:
    from ..data.check import plural
    from ..data.stats import dataset_stats, existing_splits

    splits = args.splits or existing_splits(args.data, ("train_aug", "val"))
    if not splits:
        raise RbsegError("none of the default splits (train_aug, val) exists here; pass --splits", args.data)
    stats = dataset_stats(args.data, splits, progress=show_progress(args))
    if args.json:
        print_json(stats.to_json())
        return 0
    freq = Table(title=f"class frequencies over {', '.join(stats.splits)} ({plural(stats.n_images, 'image')})")
    freq.add_column("class")
    freq.add_column("images", justify="right")
    freq.add_column("%", justify="right")
    for name, n in zip(VOC_CLASSES, stats.frequencies):
        freq.add_row(name, f"{int(n):,}", f"{100 * n / max(stats.n_images, 1):.1f}")
    console.print(freq)
    cooc = Table(title="co-occurrence (images containing both classes; diagonal = images containing the class)",
                 box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
    cooc.add_column("", no_wrap=True, min_width=5)
    for name in VOC_CLASSES:
        cooc.add_column(_abbrev(name), justify="right", no_wrap=True)
    for name, row in zip(VOC_CLASSES, stats.cooccurrence):
        cooc.add_row(_abbrev(name), *(str(int(v)) for v in row))
    digits = len(str(int(stats.cooccurrence.max())))
    needed = 16 + sum(max(len(_abbrev(n)), digits) + 3 for n in VOC_CLASSES)
    # The matrix needs ~150 columns: render it at that width even on a narrower console.
    (console if console.width >= needed else Console(width=needed)).print(cooc)
    return 0


# --- subsets ---------------------------------------------------------------------------------------

def run_subsets(args) -> int:
    import warnings

    from ..data.subsets import SUBSET_NAMES, CooccurSplitMissing, compute_subsets

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CooccurSplitMissing)
        report = compute_subsets(args.data, split=args.split, cooccur_splits=args.cooccur_splits,
                                 progress=show_progress(args), cooc_scale=args.cooc_scale)
    for w in caught:  # one line each on stderr (also with --json, whose stdout stays pure JSON)
        if issubclass(w.category, CooccurSplitMissing):
            print(f"rbseg: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if args.json:
        print_json(report.to_json())
        return 0
    table = Table(title=f"subsets of {args.split} (co-occurrence over {', '.join(report.cooccur_splits) or 'none'})")
    table.add_column("subset")
    table.add_column("images", justify="right")
    table.add_column("note", overflow="fold")
    for name in SUBSET_NAMES:
        if name in report.subsets:
            table.add_row(name, str(len(report.subsets[name])), "")
        else:
            table.add_row(name, "-", f"unavailable: {report.unavailable[name]}")
    used = "/".join(str(v) for v in report.cooc_thresholds.values())
    table.caption = (f"cooc thresholds {used} (scaled to {report.cooc_scaling['cooccur_images']} images)"
                     if report.cooc_scaling.get("scaled") else f"cooc thresholds {used}")
    if report.cooccur_splits_missing:
        table.caption += f"; co-occurrence splits without a split list, left out: {', '.join(report.cooccur_splits_missing)}"
    console.print(table)
    return 0


# --- synth -----------------------------------------------------------------------------------------

def run_synth(args) -> int:
    from ..data import synth

    root = synth.generate(args.out, preset=args.preset, seed=args.seed, progress=not args.json,
                          overwrite=args.overwrite)
    if args.json:
        print_json({"root": str(root), "preset": args.preset, "seed": args.seed})
    else:
        console.print(f"SynthVOC '{args.preset}' (seed {args.seed}) written to {root}")
    return 0
