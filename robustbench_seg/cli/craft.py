"""``rbseg craft {uap,gd-uap}`` and ``rbseg train-surrogate``: crafting universal perturbations."""
from __future__ import annotations

from dataclasses import replace

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import add_command_group, add_data_arg, comma_separated, console, err_console, finish_command, print_json


def _layers(text: str) -> tuple[str, ...]:
    return tuple(comma_separated(text, "expected comma-separated module names"))


def _add_crafting_io(p) -> None:
    """--data, --out, --overwrite, --restart and --preset, the same for `craft uap` and `craft gd-uap`."""
    from ..attacks.recipes import UAP_PRESETS

    add_data_arg(p)
    p.add_argument("--out", required=True, metavar="NAME",
                   help="output path; a bare name writes ./NAME.npy + ./NAME.json in the current folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved state of an unfinished craft of --out and start over (else --resume continues it)")
    p.add_argument("--preset", default="tiny", choices=list(UAP_PRESETS),
                   help="default settings (default: tiny, as `rbseg train`; paper = the published settings, a GPU job; "
                        "micro = the smoke test)")


def register(subparsers) -> None:
    from ..attacks.gduap import PRIORS
    from ..attacks.recipes import UAP_PRESETS
    from ..attacks.surrogate import PRESETS as SURROGATE_PRESETS
    from ..attacks.surrogate import SURROGATE_ARCHS

    sub = add_command_group(subparsers, "craft", "craft_command", help="craft a universal perturbation (UAP or GD-UAP)",
                            description="Craft universal perturbations; both commands resume with --resume.")

    p = sub.add_parser(
        "uap", help="UAP (Moosavi-Dezfooli et al. 2017) with DeepFool on a classifier",
        description="UAP on a classifier: torchvision's ImageNet resnet152 / googlenet (weights via the weights API "
                    "or --weights PATH) or a checkpoint from `rbseg train-surrogate`. Options left out take the "
                    "--preset's value (paper: xi 10, l-inf, delta 0.2, 10 passes, overshoot 0.02, 10 classes, DeepFool at "
                    "most 10 steps). The estimated time is printed before crafting starts.")
    p.add_argument("--surrogate", required=True, metavar="resnet152|googlenet|CKPT", help="the classifier to attack")
    _add_crafting_io(p)
    p.add_argument("--xi", type=float, help="radius in 0-255 units (10)")
    p.add_argument("--norm", choices=["inf", "2"], help="l-inf or l2 ball (inf)")
    p.add_argument("--delta", type=float, help="stop at fooling rate >= 1 - delta (0.2)")
    p.add_argument("--max-passes", type=int, help="passes over the data at most (paper 10, tiny 2)")
    p.add_argument("--overshoot", type=float, help="DeepFool overshoot (0.02)")
    p.add_argument("--num-classes", type=int, help="DeepFool candidate classes (10)")
    p.add_argument("--max-iter-df", type=int, help="DeepFool iterations at most (10, the authors' universal_pert.py)")
    p.add_argument("--images", type=int, metavar="N", help="crafting-set size (paper 10000, tiny 64; all when fewer)")
    p.add_argument("--batch-size", type=int, metavar="B", help="mini-batch of images per DeepFool call (32)")
    p.add_argument("--seed", type=int, help="seed for the subset and the shuffles (0)")
    p.add_argument("--split", default="train", help="split the crafting set comes from (train)")
    p.add_argument("--craft-set", default="auto", choices=["auto", "crops", "images"],
                   help="object crops (auto for a trained surrogate) or resized centre-cropped scenes (auto for ImageNet)")
    p.add_argument("--size", type=int, help="perturbation side (default: the surrogate's input size; 224 for ImageNet)")
    p.add_argument("--weights", default=None, metavar="PATH", help="local ImageNet state dict for resnet152 / googlenet")
    p.add_argument("--no-clip", action="store_true", help="do not clip x + v to [0, 255] while crafting")
    finish_command(p, run_uap, resume="after the last finished pass", device=True)

    p = sub.add_parser(
        "gd-uap", help="GD-UAP (Mopuri et al. 2018) on a segmentation model's encoder",
        description="GD-UAP on a segmentation model (zoo name or checkpoint): maximise the log-norms of the encoder's "
                    "ReLU activations; validate by segmentation fooling rate; keep the best. Options left out take "
                    "the --preset's value (paper: 513x513, 40000 iterations, validation every 400, patience 10). The "
                    "validation images are disjoint from the prior's data (--val-data).")
    p.add_argument("--source", required=True, metavar="MODEL", help="zoo name or checkpoint of the source model")
    p.add_argument("--prior", required=True, choices=list(PRIORS), help="none (R-No), range, partial (R-Part), all (R-All)")
    _add_crafting_io(p)
    p.add_argument("--xi", type=float, help="l-inf radius in 0-255 units (10)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="perturbation size (paper 513 513, tiny 96 96)")
    p.add_argument("--max-iters", type=int, help="iterations at most (paper 40000, tiny 400)")
    p.add_argument("--val-every", type=int, help="validate every N iterations (paper 400, tiny 50)")
    p.add_argument("--val-images", type=int, help="validation images (paper 1000, tiny 32)")
    p.add_argument("--val-data", choices=["auto", "heldout", "range"],
                   help="validation data: heldout = --val-images images of --val-split held out of the prior's images; "
                        "range = range-prior noise images (no data); auto (default) = heldout for all/partial or when "
                        "--val-split is given, range for none/range")
    p.add_argument("--val-split", help="split the held-out validation images come from (default: --prior-split)")
    p.add_argument("--patience", type=int, help="validations without improvement before stopping (paper 10, tiny 4)")
    p.add_argument("--batch-size", type=int, help="prior samples per iteration (8)")
    p.add_argument("--lr", type=float, help="Adam learning rate (0.1)")
    p.add_argument("--layers", type=_layers, help="comma-separated module names inside model.backbone (default: every nn.ReLU)")
    p.add_argument("--partial-fraction", type=float, help="R-Part: fraction of training images with the least background (0.1)")
    p.add_argument("--prior-split", help="split the data priors come from (train)")
    p.add_argument("--sat-threshold", type=float, help="halve when more than this fraction sits at +-xi (0.5) ...")
    p.add_argument("--sat-tol", type=float, help="... and it changed by less than this (1e-5) ...")
    p.add_argument("--sat-interval", type=int, help="... over this many iterations (1)")
    p.add_argument("--fit", choices=["tile", "crop", "resize"], help="fit mode for validation images (tile)")
    p.add_argument("--no-clip", action="store_true", help="do not clip x + v to [0, 255]")
    p.add_argument("--seed", type=int, help="seed (0)")
    finish_command(p, run_gduap, resume="at the last validation", device=True)

    p = sub.add_parser(
        "shipped", help="craft the Table 4 perturbations the suite ships (recipes)",
        description="Craft one or all of uap-resnet, uap-googlenet, gduap-rno, gduap-rall, gduap-rpart with their "
                    "recipe (attacks/recipes.py) into --out-dir; the GD-UAPs are crafted on --source (gduap-source, a model "
                    "that is not evaluated).")
    p.add_argument("names", nargs="+", metavar="NAME", help="recipe names, or 'all'")
    add_data_arg(p, required=False, help_text="VOC tree (default: the embedded SynthVOC bench)")
    p.add_argument("--source", default="gduap-source", metavar="MODEL",
                   help="GD-UAP source model, a zoo name or checkpoint that is not an evaluated row "
                        "(default: gduap-source, trained by `rbseg reproduce`)")
    p.add_argument("--surrogates", default=None, metavar="DIR", help="folder with resnet152.pt / googlenet.pt from train-surrogate")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="output folder (name the shipped perturbations/ folder explicitly to replace what ships)")
    p.add_argument("--overwrite", action="store_true", help="replace existing perturbations in --out-dir")
    p.add_argument("--preset", default="tiny", choices=list(UAP_PRESETS), help="crafting preset (default: tiny)")
    finish_command(p, run_shipped, device=True)

    p = subparsers.add_parser(
        "train-surrogate", help="train a ResNet-152 / GoogLeNet surrogate on a dataset's object crops",
        description="Train torchvision's resnet152 or googlenet (20 classes, random init) on the object crops of the "
                    "train split (Annotations boxes or instance masks), for UAP crafting without ImageNet weights. "
                    + "; ".join(f"{k}: {v.description}" for k, v in SURROGATE_PRESETS.items()))
    p.add_argument("--arch", required=True, choices=list(SURROGATE_ARCHS), help="architecture")
    add_data_arg(p)
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint path (.pt), or a folder for <arch>.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.add_argument("--preset", default="tiny", choices=list(SURROGATE_PRESETS), help="training preset (default: tiny)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    finish_command(p, run_train_surrogate, resume="after the last finished epoch", device=True)


def _progress(json_mode: bool) -> Progress:
    """A progress bar on stderr for interactive runs (never around --json, never into logs)."""
    disabled = json_mode or not err_console.is_terminal
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=err_console, disable=disabled, transient=False)


def _overrides(args, names: dict[str, str]) -> dict:
    return {field: getattr(args, opt) for opt, field in names.items() if getattr(args, opt, None) is not None}


def run_uap(args) -> int:
    from ..attacks.recipes import UAP_PRESETS
    from ..attacks.uap import craft_uap

    preset = UAP_PRESETS[args.preset]
    cfg = replace(preset["cfg"], **_overrides(args, {
        "xi": "xi", "norm": "norm", "delta": "delta", "max_passes": "max_passes", "overshoot": "overshoot",
        "num_classes": "num_classes", "max_iter_df": "max_iter_df", "batch_size": "batch_size", "seed": "seed"}))
    if args.no_clip:
        cfg = replace(cfg, clip=False)
    n_images = args.images if args.images is not None else preset["n_images"]
    with _progress(args.json) as progress:
        task = progress.add_task("UAP", total=None, info="")

        def callback(ev: dict) -> None:
            if ev["event"] == "estimate":
                _print_estimate(ev, f"{ev['passes']} pass(es) at most over {ev['images']} images")
            elif ev["event"] == "batch":
                prev = ev["previous_pass_fooling_rate"]
                info = f"fooled so far this pass {ev['fooled_so_far']:.3f}" + (f" (last pass {prev:.3f})" if prev is not None else "")
                progress.update(task, total=ev["total"], completed=ev["done"],
                                description=f"UAP pass {ev['pass']}/{cfg.max_passes}", info=info)
            elif ev["event"] == "pass":
                progress.console.print(f"pass {ev['pass']}: fooling rate {ev['fooling_rate']:.3f}, "
                                       f"{ev['updates']} updates / {ev['deepfool_calls']} DeepFool calls, {ev['elapsed_s']:.1f} s")

        pert = craft_uap(args.surrogate, args.data, args.out, cfg=cfg, split=args.split, craft_set=args.craft_set,
                         size=args.size, n_images=n_images, device=args.device, weights=args.weights,
                         resume=args.resume, callback=callback, restart=args.restart, overwrite=args.overwrite)
    return _report(args, pert)


def run_gduap(args) -> int:
    from ..attacks.gduap import craft_gduap
    from ..attacks.recipes import GDUAP_PRESETS

    over = _overrides(args, {
        "xi": "xi", "max_iters": "max_iters", "val_every": "val_every", "val_images": "val_images",
        "val_split": "val_split", "val_data": "val_data", "patience": "patience", "batch_size": "batch_size", "lr": "lr", "layers": "layers",
        "partial_fraction": "partial_fraction", "prior_split": "prior_split", "sat_threshold": "sat_threshold",
        "sat_tol": "sat_tol", "sat_interval": "sat_interval", "fit": "fit", "seed": "seed"})
    if args.size:
        over["size"] = tuple(args.size)
    if args.no_clip:
        over["clip"] = False
    cfg = replace(GDUAP_PRESETS[args.preset], prior=args.prior, **over)
    with _progress(args.json) as progress:
        task = progress.add_task("GD-UAP", total=cfg.max_iters, info="")

        def callback(ev: dict) -> None:
            if ev["event"] == "estimate":
                _print_estimate(ev, f"{ev['iterations']} iterations at most")
            elif ev["event"] == "iter":
                best = f"{ev['best']:.3f}" if ev["best"] >= 0 else "-"
                progress.update(task, completed=ev["iteration"], description=f"GD-UAP {args.prior}",
                                info=f"objective {ev['objective']:.2f}, saturation {ev['saturation']:.2f}, best fooling {best}")
            elif ev["event"] == "val":
                progress.console.print(f"iteration {ev['iteration']}: fooling rate {ev['fooling_rate']:.3f} "
                                       f"(best {ev['best']:.3f}), {ev['elapsed_s']:.1f} s")
            elif ev["event"] == "halve":
                progress.console.print(f"iteration {ev['iteration']}: saturation {ev['saturation']:.3f}, perturbation halved")

        pert = craft_gduap(args.source, args.data, args.out, cfg=cfg, device=args.device, resume=args.resume,
                           callback=callback, restart=args.restart, overwrite=args.overwrite)
    return _report(args, pert)


def run_shipped(args) -> int:
    from pathlib import Path

    from ..attacks.recipes import SHIPPED, craft_shipped
    from ..errors import RbsegError

    names = list(SHIPPED) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        raise RbsegError(f"unknown recipe(s) {', '.join(unknown)} (choose from {', '.join(SHIPPED)} or all)")
    if args.data is None:
        from ..data.synth import default_dataset

        args.data = default_dataset()
    surrogates = {}
    if args.surrogates:
        surrogates = {p.stem: p for p in Path(args.surrogates).glob("*.pt")}
    out_dir = Path(args.out_dir).expanduser()
    if not args.overwrite:  # all refusals before any work
        from ..attacks.perturbation import refuse_existing_output

        for name in names:
            refuse_existing_output(out_dir / name, False)
    done = []
    for name in names:
        pert = craft_shipped(name, args.data, args.source, surrogates, out_dir, args.device, preset=args.preset,
                             overwrite=args.overwrite)
        m = pert.meta
        done.append({"name": name, "path": str(out_dir / f"{name}.npy"), "fooling_rate": m["fooling_rate"],
                     "crafting_time_s": m["crafting_time_s"]})
        if not args.json:
            console.print(f"wrote {name}: fooling rate {m['fooling_rate']:.3f} on {escape(m['fooling_rate_on'])}, "
                          f"{m['crafting_time_s']:.1f} s")
    if args.json:
        print_json({"perturbations": done})
    return 0


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_estimate(ev: dict, budget: str) -> None:
    """The time a craft is expected to take, printed (stderr) before its long loop starts."""
    upper = f", up to {format_seconds(ev['upper_s'])}" if ev.get("upper_s") else ""
    err_console.print(f"estimated time: about {format_seconds(ev['estimate_s'])}{upper} for {budget} "
                      f"(rough estimate from {escape(str(ev.get('basis', 'a timing')))})")


def _report(args, pert) -> int:
    from ..attacks.perturbation import resolve_output_path

    path = resolve_output_path(args.out)
    m = pert.meta
    if args.json:
        print_json({"name": pert.name, "path": str(path), "sha256": pert.sha256, "meta": m})
    else:
        console.print(f"wrote [bold]{escape(pert.name)}[/bold] -> {escape(str(path))}: {m['method']}, "
                      f"{pert.size[0]}x{pert.size[1]}, fooling rate {m['fooling_rate']:.3f} on {escape(m['fooling_rate_on'])}, "
                      f"{m['crafting_time_s']:.1f} s")
    return 0


def run_train_surrogate(args) -> int:
    from ..attacks.surrogate import load_surrogate_checkpoint, train_surrogate

    with _progress(args.json) as progress:
        task = progress.add_task(f"train {args.arch}", total=None, info="")

        def callback(ev: dict) -> None:
            if ev["event"] == "step":
                progress.update(task, total=ev["steps"] * ev["epochs"], completed=(ev["epoch"] - 1) * ev["steps"] + ev["step"],
                                info=f"epoch {ev['epoch']}/{ev['epochs']}, loss {ev['loss']:.3f}")
            elif ev["event"] == "epoch":
                progress.console.print(f"epoch {ev['epoch']}/{ev['epochs']}: loss {ev['loss']:.3f}, "
                                       f"train accuracy {ev['train_acc']:.3f}, {ev['time_s']:.1f} s")

        path = train_surrogate(args.arch, args.data, args.out, preset=args.preset, device=args.device, seed=args.seed,
                               epochs=args.epochs, resume=args.resume, callback=callback, overwrite=args.overwrite)
    _, info = load_surrogate_checkpoint(path)
    if args.json:
        print_json({"checkpoint": str(path), "sha256": info["sha256"], "arch": info["arch"], "metrics": info["metrics"]})
    else:
        mt = info["metrics"]
        val = f", val accuracy {mt['val_acc']:.3f} ({mt['val_crops']} crops)" if "val_acc" in mt else ""
        console.print(f"wrote {escape(str(path))}: {info['arch']}, train accuracy {mt['train_acc']:.3f}{val}")
    return 0
