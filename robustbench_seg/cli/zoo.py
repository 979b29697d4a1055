"""``rbseg zoo``: the shipped models (list, verify), and training / exporting a zoo entry."""
from __future__ import annotations

import argparse

from .common import add_command_group, add_data_arg, console, finish_command, print_json


def register(subparsers) -> None:
    sub = add_command_group(subparsers, "zoo", "zoo_command", help="the model zoo: list, verify, train and export entries",
                            description="Named models shipped in models/ (zoo.json manifest, sha256-verified).")

    ls = sub.add_parser("list", help="table of the zoo models", description="List the zoo models and their recorded val mIoU.")
    ls.add_argument("--models-dir", default=None, metavar="DIR", help="zoo folder (default: the shipped models/)")
    finish_command(ls, run_list)

    ve = sub.add_parser("verify", help="check every shipped checkpoint against its sha256 and load it",
                        description="Verify the sha256 of every shipped checkpoint and that it loads.")
    ve.add_argument("--models-dir", default=None, metavar="DIR")
    finish_command(ve, run_verify)

    ar = sub.add_parser("archs", help="the architectures build_model knows", description="List the registered architectures.")
    finish_command(ar, run_archs)

    tr = sub.add_parser("train", help="train a zoo entry with its recipe (and export it)",
                        description="Train zoo entry NAME with its recipe (resumes an interrupted run) and, with "
                                    "--export, write models/NAME.pt and its zoo.json entry.")
    tr.add_argument("name", help="zoo name (rbseg zoo list)")
    add_data_arg(tr, required=False, help_text="VOC2012/ folder (default: the embedded SynthVOC bench)")
    tr.add_argument("--out", default="runs", metavar="DIR|CKPT", help="run folder (gets NAME.pt) or checkpoint path")
    tr.add_argument("--preset", default="tiny", help="training preset (tiny, bench, paper)")
    tr.add_argument("--weights-backbone", default=None, metavar="PATH",
                    help="backbone to fine-tune from (the bench preset needs its shared pre-trained backbone: "
                         "WORK/pretrain/backbone.pt of rbseg reproduce --preset bench)")
    tr.add_argument("--export", action="store_true", help="export into the zoo folder when done")
    tr.add_argument("--models-dir", default=None, metavar="DIR", help="zoo folder to export into (default: models/)")
    finish_command(tr, run_train, device=True)

    ex = sub.add_parser("export", help="export a finished training checkpoint as a zoo entry",
                        description="Write MODELS_DIR/NAME.pt (fp16 weights, no optimiser state) and its zoo.json entry.")
    ex.add_argument("name")
    ex.add_argument("checkpoint", metavar="CKPT")
    ex.add_argument("--models-dir", default=None, metavar="DIR")
    ex.add_argument("--val-miou", type=float, default=None, help="figure to record (default: re-scored on the val split)")
    finish_command(ex, run_export)


def _models_dir(value: str | None):
    """An explicit ``--models-dir`` must be an existing folder (one-line error otherwise)."""
    from pathlib import Path

    from ..errors import RbsegError

    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise RbsegError("zoo folder not found" if not path.exists() else "not a folder", path)
    return path


def run_list(args: argparse.Namespace) -> int:
    from ..models.zoo import zoo_rows

    rows = zoo_rows(_models_dir(args.models_dir))
    if args.json:
        print_json(rows)
        return 0
    from rich.table import Table

    import re

    datasets = sorted({r["dataset"] for r in rows if r["dataset"]})
    table = Table(title="rbseg model zoo", caption=f"val mIoU on {', '.join(datasets)} val" if datasets else None)
    for col in ("name", "table", "arch", "val mIoU", "params", "size"):
        table.add_column(col, justify="right" if col in ("val mIoU", "params", "size") else "left", no_wrap=col == "name")
    for r in rows:
        miou = "-" if r["val_miou"] is None else f"{r['val_miou']:.2f}"
        params = "-" if r["num_params"] is None else f"{r['num_params'] / 1e6:.2f}M"
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 2**20:.1f} MiB"
        name = r["name"] if r["shipped"] else f"{r['name']} *"
        ref = re.search(r"\((Table [^)]*)\)$", r["description"] or "")
        table.add_row(name, ref.group(1).replace("Table ", "") if ref else "-", r["arch"] or "-", miou, params, size)
    if not all(r["shipped"] for r in rows):
        table.caption = ((table.caption + "; ") if table.caption else "") + "* not shipped: `rbseg zoo train NAME --export`"
    console.print(table)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..models.checkpoint import model_from_checkpoint, read_checkpoint
    from ..models.zoo import load_zoo, zoo_checkpoint

    report = []
    models_dir = _models_dir(args.models_dir)
    for name in load_zoo(models_dir):
        path, entry = zoo_checkpoint(name, models_dir)  # raises on a sha256 mismatch
        model_from_checkpoint(read_checkpoint(path), path)
        report.append({"name": name, "file": str(path), "sha256": entry["sha256"], "ok": True})
    if args.json:
        print_json(report)
    else:
        for r in report:
            console.print(f"ok  {r['name']:<20} {r['sha256'][:16]}  {r['file']}")
        console.print(f"{len(report)} zoo checkpoint(s) verified")
    return 0


def run_archs(args: argparse.Namespace) -> int:
    from ..models import list_archs

    if args.json:
        print_json(list_archs())
    else:
        for a in list_archs():
            console.print(a)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..training import export_to_zoo, train_recipe

    data = args.data
    if data is None:
        from ..data.synth import default_dataset

        data = default_dataset(progress=not args.json)
    extra = {} if args.weights_backbone is None else {"weights_backbone": args.weights_backbone}
    ckpt = train_recipe(args.name, data, args.out, preset=args.preset, device=args.device, progress=not args.json,
                        **extra)
    result = {"name": args.name, "checkpoint": str(ckpt)}
    if args.export:
        result["exported"] = str(export_to_zoo(args.name, ckpt, args.models_dir))
    if args.json:
        print_json(result)
    else:
        console.print(" ".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..models.zoo import zoo_entry
    from ..training import export_to_zoo

    path = export_to_zoo(args.name, args.checkpoint, args.models_dir, val_miou=args.val_miou)
    entry = zoo_entry(args.name, path.parent)
    if args.json:
        print_json(entry)
    else:
        console.print(f"exported {args.name} -> {path} (sha256 {entry['sha256'][:16]}..., val mIoU {entry['val_miou']})")
    return 0
