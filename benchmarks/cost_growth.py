"""Cost growth: how evaluation and training time grow with the work asked for, and the fitted
per-unit costs.

Evaluation (the engine's one pass, ``evaluation.engine.run_pass``, on the tiny model, with images
of SynthVOC tiny's sizes: sides uniform in 64-96 px, synthetic random-but-deterministic content):

* the number of perturbations grows 0, 1, 5, 10 (besides clean) at ``--base-images`` images;
* the number of images grows 100, 1,000 (``--small``: 100, 400, for a 2-core CPU) at 5 perturbations.

Fitted by least squares, through the origin (the timed pass has no fixed part: the model is
loaded, the image sizes read and the kernels warmed before the clock starts):
``T = s_image * N + s_pert_image * N * P`` (N images, P perturbations besides clean): ``s_image``
is the cost of one image (decode, clean forward, counts), ``s_pert_image`` the extra cost of one
perturbed input of one image. The marginal costs between neighbouring points are reported too.

Training (``robustbench_seg.training.train``, the tiny preset's binding stage 1 on the embedded
SynthVOC tiny train_aug) as ``--pairs-per-image`` grows 1, 5, 19: a fixed number of optimiser
steps (``--train-steps``) is run and timed step by step (the trainer's ``AFTER_STEP`` hook); the
median step time after ``--warmup-steps`` times the steps of one epoch (``batches_per_epoch`` of
the epoch's blended pairs, as the trainer computes it) is the extrapolated epoch time (per-epoch
checkpoint writing and validation are not included). Fitted through the origin (the
extrapolated epoch is steps x step time): ``T_epoch = s_pair * pairs`` (pairs per epoch).

    python benchmarks/cost_growth.py --small --json cost_growth.json     # 2-core CPU, ~2-3 minutes
    python benchmarks/cost_growth.py --device cuda --json cost_growth.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common
from robustbench_seg.data import voc
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation import engine


def least_squares(rows: list[list[float]], times: list[float], names: list[str]) -> dict:
    """Coefficients of ``times ~ rows @ coef`` by least squares, with the residuals."""
    a, y = np.asarray(rows, dtype=np.float64), np.asarray(times, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    fitted = a @ coef
    ss_res = float(((y - fitted) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"coefficients": dict(zip(names, coef.tolist())), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "residuals_s": (y - fitted).tolist()}


# --- evaluation --------------------------------------------------------------------------------------


def eval_points(base_images: int, perturbation_counts, image_counts, image_axis_perts: int = 5) -> list[tuple[int, int]]:
    points = [(base_images, p) for p in perturbation_counts] + [(n, image_axis_perts) for n in image_counts]
    return list(dict.fromkeys(points))


def measure_eval(model, root: Path, ids: list[str], points, device, dtype, batch_size: int, repeats: int, console) -> list[dict]:
    deltas_all = common.random_perturbations(max(p for _, p in points), seed=0)
    sizes = [engine.image_size(voc.image_path(root, i)) for i in ids]
    channels_last = engine.default_channels_last(device)
    engine.run_pass(model, root, "val", ids[:4], [None, *deltas_all[:2]], torch.ones(1, 4, dtype=torch.bool),
                    batch_size=batch_size, device=device, dtype=dtype, channels_last=channels_last)  # warm-up
    out = []
    for n, p in points:
        sub = ids[:n]
        batches = engine.size_batches(sizes[:n], batch_size)
        deltas = [None, *deltas_all[:p]]
        member = torch.ones(1, n, dtype=torch.bool)
        times = []
        for _ in range(repeats):
            load = common.load_average()
            _, seconds = common.timed(lambda: engine.run_pass(
                model, root, "val", sub, deltas, member, batch_size=batch_size, device=device, dtype=dtype,
                num_workers=engine.default_num_workers(device), channels_last=channels_last, batches=batches), device)
            times.append(seconds)
        best = min(times)
        out.append({"images": n, "perturbations": p, "inputs": p + 1, "best_seconds": best, "runs_seconds": times,
                    "image_evals_per_s": n * (p + 1) / best, "load_average_1_5_15": load})
        console.print(f"[dim]eval {n} images x (clean + {p}): {best:.2f} s, {n * (p + 1) / best:.1f} image-evals/s, "
                      f"load {load}[/dim]")
    return out


def marginal_costs(rows: list[dict]) -> list[dict]:
    """Seconds per added unit between neighbouring points of each axis: at equal N, per added
    perturbation-image; at equal P, per added image (with its clean + P inputs)."""
    out = []
    for axis, same, grow in (("perturbations", "images", "perturbations"), ("images", "perturbations", "images")):
        groups: dict[int, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[same], []).append(r)
        for key, group in groups.items():
            group = sorted(group, key=lambda r: r[grow])
            for a, b in zip(group, group[1:]):
                units = a["images"] * (b["perturbations"] - a["perturbations"]) if axis == "perturbations" else b["images"] - a["images"]
                unit = "perturbation-image" if axis == "perturbations" else f"image (clean + {key})"
                out.append({"step": f"N {a['images']}->{b['images']}, P {a['perturbations']}->{b['perturbations']}",
                            "unit": unit, "ms_per_unit": 1e3 * (b["best_seconds"] - a["best_seconds"]) / units})
    return out


# --- training ----------------------------------------------------------------------------------------


def measure_training(pairs_list, steps: int, warmup: int, device: str, console) -> list[dict]:
    from robustbench_seg.data.synth import default_dataset
    from robustbench_seg.training import METHODS, TrainConfig, resolve_config, train
    from robustbench_seg.training import trainer as trainer_module
    from robustbench_seg.training.data import dataset_info, image_classes
    from robustbench_seg.training.methods import TrainData
    from robustbench_seg.training.samplers import batches_per_epoch

    root = voc.resolve_root(default_dataset())
    out = []
    with tempfile.TemporaryDirectory(prefix="rbseg-costgrowth-") as tmp:
        for pairs in pairs_list:
            cfg = resolve_config(TrainConfig(
                method="binding", data=str(root), out=str(Path(tmp) / f"pairs{pairs}.pt"), preset="tiny",
                pairs_per_image=pairs, steps=steps, denoise=False, val_split=None, progress=False, device=device,
                checkpoint_every=None, checkpoint_minutes=0.0,
            ))
            ids = voc.read_split(root, cfg.split)
            info = dataset_info(root, cfg.split, ids)
            data = TrainData(len(ids), lambda: image_classes(root, cfg.split, ids, info["fingerprint"]))
            stage1 = METHODS["binding"](cfg, data)[0]
            n_pairs = len(stage1.sampler)
            per_epoch = batches_per_epoch(n_pairs, cfg.batch_size)

            stamps: list[float] = []
            previous = trainer_module.AFTER_STEP
            trainer_module.AFTER_STEP = lambda stage, step: stamps.append(time.perf_counter())
            try:
                t0 = time.perf_counter()
                train(cfg)
                total = time.perf_counter() - t0
            finally:
                trainer_module.AFTER_STEP = previous
            step_times = np.diff(stamps)[max(0, warmup - 1):].tolist()
            step = statistics.median(step_times)
            out.append({
                "pairs_per_image": pairs, "pairs_per_epoch": n_pairs, "batch_size": cfg.batch_size, "crop": cfg.crop,
                "steps_per_epoch": per_epoch, "steps_timed": len(step_times), "median_step_s": step,
                "step_times_s": step_times, "epoch_seconds_extrapolated": step * per_epoch,
                "run_seconds_including_setup": total, "train_images_per_s": cfg.batch_size / step,
                "load_average_1_5_15": common.load_average(), "train_images": len(ids), "arch": cfg.arch,
            })
            console.print(f"[dim]train pairs/image {pairs}: {n_pairs} pairs/epoch, {per_epoch} steps/epoch, "
                          f"median step {step:.3f} s -> {step * per_epoch:.1f} s/epoch[/dim]")
    return out


# --- main --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="binding", metavar="NAME|ARCH",
                   help="evaluation model: zoo name or architecture (default: binding, else deeplabv3_tiny binding, random)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--perturbations", type=int, nargs="+", default=[0, 1, 5, 10], metavar="P")
    p.add_argument("--base-images", type=int, default=100, help="images of the perturbation axis (default 100)")
    p.add_argument("--images", type=int, nargs="+", default=None, metavar="N",
                   help="image axis (default 100 1000; with --small 100 400)")
    p.add_argument("--small", action="store_true", help="CPU sizes: images 100 and 400 instead of 100 and 1,000")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per evaluation point, best counts (default 1)")
    p.add_argument("--pairs", type=int, nargs="+", default=[1, 5, 19], metavar="K", help="--pairs-per-image values")
    p.add_argument("--train-steps", type=int, default=12, help="optimiser steps timed per training point (default 12)")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the median (default 2)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None, metavar="OUT")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        device = engine.resolve_device(args.device)
        dtype = engine.resolve_dtype(args.dtype, device)
        if args.train_steps <= args.warmup_steps + 1:
            raise RbsegError("--train-steps must exceed --warmup-steps + 1")
    except RbsegError as exc:
        print(f"cost_growth: error: {exc}", file=sys.stderr)
        return 2
    image_counts = args.images or ([100, 400] if args.small else [100, 1000])
    result: dict = {"benchmark": "cost_growth", "machine": common.machine_info(device),
                    "image_counts_note": "reduced for a 2-core CPU (--small)" if args.small else None}
    try:
        if not args.skip_eval:
            try:
                model, info = common.build_benchmark_model(args.model, device)
            except RbsegError as exc:
                if args.model != "binding":
                    raise
                model, info = common.build_benchmark_model("deeplabv3_tiny", device, binding=True)
                info["note"] = f"zoo model 'binding' unavailable ({exc}); same architecture, random weights"
            points = eval_points(args.base_images, args.perturbations, image_counts)
            n_max = max(n for n, _ in points)
            from robustbench_seg.data.synth import PRESETS

            tiny = PRESETS["tiny"]
            with tempfile.TemporaryDirectory(prefix="rbseg-costgrowth-") as tmp:
                root = common.write_synthetic_tree(Path(tmp), n_max, side_range=(tiny.min_side, tiny.max_side))
                ids = voc.read_split(root, "val")
                rows = measure_eval(model, root, ids, points, device, dtype, args.batch_size, args.repeats, console)
            fit = least_squares([[r["images"], r["images"] * r["perturbations"]] for r in rows],
                                [r["best_seconds"] for r in rows], ["s_per_image", "s_per_perturbation_image"])
            result["evaluation"] = {
                "model": info, "dtype": engine.DTYPE_NAMES[dtype], "batch_size": args.batch_size,
                "image_sides": [tiny.min_side, tiny.max_side], "points": rows, "fit": fit,
                "fit_model": "T = s_image * N + s_pert_image * N * P (least squares, through the origin)",
                "marginal": marginal_costs(rows),
            }
        if not args.skip_train:
            rows = measure_training(args.pairs, args.train_steps, args.warmup_steps, str(device), console)
            fit = least_squares([[r["pairs_per_epoch"]] for r in rows], [r["epoch_seconds_extrapolated"] for r in rows],
                                ["s_per_pair"])
            result["training"] = {"points": rows, "fit": fit, "fit_model": "T_epoch = s_pair * pairs_per_epoch (through the origin)",
                                  "method": "binding stage 1 (cfb), tiny preset, embedded SynthVOC tiny train_aug"}
    except RbsegError as exc:
        print(f"cost_growth: error: {exc}", file=sys.stderr)
        return 2
    print_report(console, Table, result)
    common.write_json(args.json, result)
    if args.json:
        console.print(f"written: {args.json}")
    return 0


def print_report(console, Table, r: dict) -> None:
    m = r["machine"]
    table = Table(title=f"cost growth on {m['device_name']} (load average {m['load_average_1_5_15']})")
    for col in ("what", "N images", "P perturbations / pairs per image", "units", "seconds", "rate"):
        table.add_column(col, justify="left" if col == "what" else "right")
    if "evaluation" in r:
        for row in r["evaluation"]["points"]:
            table.add_row("evaluate (engine)", str(row["images"]), str(row["perturbations"]),
                          f"{row['images'] * row['inputs']} image-evals", f"{row['best_seconds']:.2f}",
                          f"{row['image_evals_per_s']:.1f} evals/s")
    if "training" in r:
        for row in r["training"]["points"]:
            table.add_row("train epoch (extrapolated)", str(row["train_images"]), str(row["pairs_per_image"]),
                          f"{row['pairs_per_epoch']} pairs, {row['steps_per_epoch']} steps", f"{row['epoch_seconds_extrapolated']:.1f}",
                          f"{row['train_images_per_s']:.1f} img/s")
    console.print(table)
    if "evaluation" in r:
        c = r["evaluation"]["fit"]["coefficients"]
        console.print(f"evaluation fit: {1e3 * c['s_per_image']:.2f} ms per image (decode + clean + counts), "
                      f"{1e3 * c['s_per_perturbation_image']:.2f} ms per perturbation-image "
                      f"(R^2 {r['evaluation']['fit']['r2']:.4f})")
        console.print("marginal: " + "; ".join(f"{m['step']}: {m['ms_per_unit']:.2f} ms per {m['unit']}"
                                               for m in r["evaluation"]["marginal"]))
    if "training" in r:
        c = r["training"]["fit"]["coefficients"]
        console.print(f"training fit: {1e3 * c['s_per_pair']:.2f} ms per blended pair "
                      f"(R^2 {r['training']['fit']['r2']:.4f})")
    if r.get("image_counts_note"):
        console.print(f"note: image counts {r['image_counts_note']}")


if __name__ == "__main__":
    sys.exit(main())
