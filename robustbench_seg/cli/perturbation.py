"""``rbseg perturbation {import,show,list}``: bring published files into the suite's format, inspect them."""
from __future__ import annotations

from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from .common import add_command_group, add_data_arg, console, finish_command, print_json


def register(subparsers) -> None:
    from ..attacks.apply import DEFAULT_FIT, FitMode
    from ..attacks.importers import IMPORTERS

    sub = add_command_group(
        subparsers, "perturbation", "perturbation_command", help="import, show and list universal perturbations",
        description="Universal perturbations in the suite's format (NAME.npy: float32 3xHxW RGB offsets in "
                    "0-255 units; NAME.json: metadata).")

    formats = "; ".join(f"{k}: {v.description}" for k, v in IMPORTERS.items())
    p = sub.add_parser(
        "import", help="convert a published perturbation file into the suite's format",
        description=f"Convert a published file. Formats: {formats}. The original file's sha256 and the "
                    "conversion applied are recorded in NAME.json.")
    p.add_argument("src", metavar="SRC", help="the published file (.mat or .npy)")
    p.add_argument("--format", required=True, choices=sorted(IMPORTERS), help="the file's format")
    p.add_argument("--out", required=True, metavar="NAME",
                   help="output path; a bare name writes ./NAME.npy + ./NAME.json in the current folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--channels", default=None, choices=["rgb", "bgr"],
                   help="the file's channel order (default: bgr for lts4-mat, as the authors' Caffe pipeline crafts "
                        "in BGR, see docs/attacks.md; bgr for gduap-npy; rgb for torch-chw); recorded in NAME.json")
    p.add_argument("--axes", default=None,
                   help="axis order: lts4-mat whc (default, as its authors document) or hwc; "
                        "gduap-npy auto (default: from the axis of size 3), nhwc or nchw; torch-chw auto")
    p.add_argument("--scale", type=float, default=None, metavar="S",
                   help="value of a full-range pixel in the file (1 = [0, 1] units, 255 = 0-255 units); "
                        "values are multiplied by 255/S (default: 255 for lts4-mat and gduap-npy, 1 for torch-chw)")
    p.add_argument("--xi", type=float, default=10.0, help="stated l-inf radius in 0-255 units (default 10); larger values are refused")
    p.add_argument("--method", default=None, help="method recorded in the metadata (default: from the format)")
    p.add_argument("--source-arch", default=None, metavar="ARCH",
                   help="the classifier the file was crafted on, recorded as source_model.arch (default for lts4-mat: "
                        "from the published file name, e.g. ResNet-152.mat -> resnet152); the report places a UAP in "
                        "Table 4 by it")
    p.add_argument("--prior", default=None, choices=["none", "all", "partial"],
                   help="a GD-UAP's data prior (R-No, R-All, R-Part), recorded so the report can place it in Table 4")
    p.add_argument("--allow-any-magnitude", action="store_true",
                   help="accept a max |value| below 0.5 (0-255 units), which otherwise means a wrong --scale or format")
    finish_command(p, run_import)

    p = sub.add_parser(
        "show", help="print a perturbation's metadata and write a PNG preview",
        description="Print the metadata and write a PNG: the perturbation scaled to 0-255 around 128, "
                    "an example image clean and perturbed.")
    p.add_argument("name", metavar="NAME", help="a shipped perturbation's name or a path to NAME.npy")
    p.add_argument("--png", default=None, metavar="PATH", help="where to write the preview (default: the cache folder)")
    p.add_argument("--image", default=None, metavar="PATH", help="example image (default: a val image of --data, "
                   "else of the embedded default dataset when generated, else a built-in test card)")
    add_data_arg(p, required=False, help_text="take the example image from this VOC tree's val split")
    p.add_argument("--fit", default=DEFAULT_FIT.value, choices=[m.value for m in FitMode], help="fit mode for the example")
    p.add_argument("--no-clip", action="store_true", help="do not clip the perturbed example to [0, 255]")
    p.add_argument("--allow-any-magnitude", action="store_true",
                   help="show a file whose max |value| is implausible (beyond its xi, or outside 0.5-32 without a JSON sidecar)")
    finish_command(p, run_show)

    p = sub.add_parser("list", help="list perturbations (the shipped folder or --dir)",
                       description="List the perturbations in the shipped perturbations/ folder (or --dir).")
    p.add_argument("--dir", default=None, metavar="DIR", help="folder to list (default: the shipped perturbations/)")
    finish_command(p, run_list)


def run_import(args) -> int:
    from ..attacks.importers import import_perturbation

    pert = import_perturbation(args.format, args.src, args.out, axes=args.axes, scale=args.scale, xi=args.xi, method=args.method,
                               channels=args.channels, overwrite=args.overwrite, allow_any_magnitude=args.allow_any_magnitude,
                               source_arch=args.source_arch, prior=args.prior)
    path = _npy_path(args.out)
    if args.json:
        print_json({"name": pert.name, "path": str(path), "meta": pert.meta})
    else:
        conv = pert.meta["conversion"]
        console.print(f"imported [bold]{pert.name}[/bold] -> {path}  size {pert.size[0]}x{pert.size[1]}, "
                      f"max |v| {pert.max_abs:.4g}, channels {conv.get('channel_order')}; {escape(conv['formula'])}")
    return 0


def _npy_path(out: str) -> Path:
    from ..attacks.perturbation import resolve_output_path

    return resolve_output_path(out)


def _example_image(args):
    from ..attacks.preview import example_card
    from ..data import voc

    if args.image:
        return voc.read_image(args.image), str(args.image)
    roots = []
    if args.data:
        roots.append(voc.resolve_root(args.data))
    else:
        from ..data.synth import default_dataset_root

        cached = default_dataset_root()
        if (cached / "JPEGImages").is_dir() and voc.split_file(cached, "val").is_file():
            roots.append(cached)
    for root in roots:
        ids = voc.read_split(root, "val")
        if ids:
            path = voc.image_path(root, ids[0])
            return voc.read_image(path), str(path)
    return example_card(), "built-in test card"


def run_show(args) -> int:
    from ..attacks.perturbation import load_perturbation, resolve_perturbation_path
    from ..attacks.preview import render_preview
    from ..paths import cache_dir

    pert = load_perturbation(args.name, allow_any_magnitude=args.allow_any_magnitude)
    path = resolve_perturbation_path(args.name)
    image, image_src = _example_image(args)
    png = Path(args.png) if args.png else cache_dir() / "previews" / f"{pert.name}.png"
    render_preview(pert, image, png, fit=args.fit, clip=not args.no_clip)
    stats = {"min": float(pert.array.min()), "max": float(pert.array.max()),
             "mean_abs": float(abs(pert.array).mean()), "l2": float((pert.array.astype("float64") ** 2).sum() ** 0.5)}
    if args.json:
        print_json({"name": pert.name, "path": str(path), "sha256": pert.sha256, "size": list(pert.size),
                    "stats": stats, "meta": pert.meta, "preview": str(png), "example_image": image_src})
        return 0
    table = Table(title=f"perturbation {pert.name}", box=box.SIMPLE, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("file", escape(str(path)))
    table.add_row("size", f"{pert.size[0]} x {pert.size[1]}")
    table.add_row("range", f"[{stats['min']:.4g}, {stats['max']:.4g}], mean |v| {stats['mean_abs']:.4g}, l2 {stats['l2']:.4g}")
    for key in sorted(pert.meta):
        value = pert.meta[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, escape(str(value)))
    console.print(table)
    console.print(f"example image: {escape(image_src)}")
    print(f"preview: {png}")
    return 0


def run_list(args) -> int:
    from ..attacks.perturbation import list_perturbations, load_perturbation
    from ..errors import RbsegError
    from ..paths import shipped_perturbations_dir

    folder = Path(args.dir) if args.dir else shipped_perturbations_dir()
    rows = []
    for name in list_perturbations(folder):
        try:
            pert = load_perturbation(folder / f"{name}.npy")
        except RbsegError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        m = pert.meta
        source = m.get("source_model") or m.get("source_file")
        if isinstance(source, dict):
            source = source.get("name") or source.get("arch")
        rows.append({"name": name, "method": m.get("method"), "norm": m.get("norm"), "xi": m.get("xi"),
                     "size": list(pert.size), "source": source,
                     "prior": m.get("prior"), "fooling_rate": m.get("fooling_rate"), "sha256": pert.sha256})
    if args.json:
        print_json({"folder": str(folder), "perturbations": rows})
        return 0
    table = Table(title=f"perturbations in {folder}", box=box.SIMPLE_HEAVY)
    for col in ("name", "method", "norm", "xi", "size", "source", "prior", "fooling rate"):
        table.add_column(col, no_wrap=col in ("name", "size"))
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], f"[red]{escape(r['error'])}[/red]", "", "", "", "", "", "")
            continue
        fr = r["fooling_rate"]
        table.add_row(r["name"], str(r["method"]), str(r["norm"]), f"{r['xi']:g}" if r["xi"] is not None else "",
                      f"{r['size'][0]}x{r['size'][1]}", escape(str(r["source"] or "")), str(r["prior"] or ""),
                      f"{fr:.3f}" if isinstance(fr, (int, float)) else "")
    console.print(table if rows else f"no perturbations in {folder}")
    return 0
