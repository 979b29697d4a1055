"""``rbseg score``: score prediction PNGs from any framework against a VOC split."""
from __future__ import annotations

import math

from rich.table import Table

from ..constants import VOC_CLASSES
from .common import add_data_arg, console, finish_command, print_json
from .data import show_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score a folder of prediction PNGs (mIoU, per-class IoU)",
        description="Score prediction PNGs (palette or 8-bit index images of classes 0-20, one <id>.png per id "
                    "of the split, at the ground truth's size) against the ground truth: mIoU over the classes "
                    "present in prediction or ground truth, pixel accuracy, mean accuracy, per-class IoU.",
    )
    p.add_argument("--pred-dir", required=True, metavar="DIR", help="folder holding <id>.png for every id")
    add_data_arg(p)
    p.add_argument("--split", default="val", help="split whose ids and masks are scored (default: val)")
    finish_command(p, run_score)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def run_score(args) -> int:
    from ..data.check import plural
    from ..evaluation.score import score_predictions

    result = score_predictions(args.pred_dir, args.data, split=args.split, progress=show_progress(args))
    if args.json:
        print_json(result.to_json())
        return 0
    m = result.metrics
    summary = Table(title=f"{result.pred_dir} on {result.split} ({plural(result.n_images, 'image')})")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("mIoU", _pct(m.miou))
    summary.add_row("pixel acc", _pct(m.pixel_acc))
    summary.add_row("mean acc", _pct(m.mean_acc))
    summary.add_row("classes counted", f"{m.classes_counted} / {len(VOC_CLASSES)}")
    console.print(summary)
    per_class = Table(title="per-class IoU ('-': absent from prediction and ground truth, not counted)")
    per_class.add_column("class")
    per_class.add_column("IoU", justify="right")
    for name, v in zip(VOC_CLASSES, m.iou):
        per_class.add_row(name, _pct(v))
    console.print(per_class)
    return 0
