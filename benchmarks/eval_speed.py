"""Evaluation speed: rbseg's engine against the reference loop most repositories use.

Same model, images and inputs (clean + 5 perturbations: the shipped ones when present, else 5
random +-10 ones at 224 x 224, fitted by the default tile mode) for both:

* reference (torchvision references style): batch 1, fp32, contiguous memory, one image and one
  input at a time, the image decoded again for every input as a naive script does, logits
  upsampled to the image, argmax, a per-image numpy confusion matrix (``np.bincount``), summed;
* engine (``evaluation.engine.run_pass``, what ``rbseg evaluate`` runs, results cache not
  involved): images batched by size and decoded once, every perturbation applied on the device,
  the P inputs x B images of a batch in one forward, channels_last, bf16 autocast when asked
  (default on CUDA), per-image confusion matrices in one counting pass, accumulated on the device.

Reports image-evaluations per second (images x inputs / s) for both, the ratio, peak memory,
achieved TFLOP/s (FLOPs of the forwards counted by ``torch.utils.flop_counter``) and the share of
the device's peak, and the mIoU of both (in fp32 they must agree within 0.1 point; with bf16 the
difference is reported). Each loop runs ``--repeats`` times, interleaved; the best time counts.
Prints one table; ``--json OUT`` writes everything.

    python benchmarks/eval_speed.py                                 # shipped binding model, embedded SynthVOC tiny val
    python benchmarks/eval_speed.py --model deeplabv3_tiny --binding --images 60
    python benchmarks/eval_speed.py --model deeplabv3_resnet101 --images 64 --size 512x512 --device cuda --dtype bf16
    python benchmarks/eval_speed.py --model NAME --data /path/VOC2012 --split val --device cuda --profile
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common
from robustbench_seg.attacks.apply import DEFAULT_CLIP, DEFAULT_FIT, apply_perturbation
from robustbench_seg.constants import IGNORE_INDEX, NUM_CLASSES
from robustbench_seg.data import voc
from robustbench_seg.data.transforms import normalize
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation.metric import metrics_from_confusion

MIOU_TOLERANCE = 0.1  # points, fp32


def reference_loop(model, root: Path, split: str, ids, deltas, device: torch.device, fit=DEFAULT_FIT,
                   clip: bool = DEFAULT_CLIP) -> np.ndarray:
    """(P, C, C) confusion matrices, the way most evaluation scripts compute them."""
    cms = np.zeros((len(deltas), NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    deltas = [None if d is None else d.to(device) for d in deltas]
    with torch.inference_mode():
        for image_id in ids:
            for p, delta in enumerate(deltas):
                image = voc.read_image(voc.image_path(root, image_id))  # decoded again for every input
                target = voc.read_mask(voc.mask_path(root, image_id, split)).astype(np.int64)
                x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
                if delta is not None:
                    x = apply_perturbation(x, delta, fit, clip)
                out = model(normalize(x))
                logits = out["out"] if isinstance(out, dict) else out
                if logits.shape[-2:] != x.shape[-2:]:
                    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
                pred = logits.argmax(1)[0].cpu().numpy()
                keep = target != IGNORE_INDEX
                cms[p] += np.bincount(target[keep] * NUM_CLASSES + pred[keep],
                                      minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)
    return cms


def engine_loop(model, root: Path, split: str, ids, deltas, device: torch.device, dtype: torch.dtype,
                batch_size: int, fit=DEFAULT_FIT, clip: bool = DEFAULT_CLIP, num_workers: int | None = None,
                channels_last: bool | None = None, batches=None) -> np.ndarray:
    """(P, C, C) confusion matrices from the engine's one pass (the full split as its only subset)."""
    state = engine.run_pass(
        model, root, split, ids, deltas, torch.ones(1, len(ids), dtype=torch.bool), fit=fit, clip=clip,
        batch_size=batch_size, device=device, dtype=dtype,
        num_workers=engine.default_num_workers(device) if num_workers is None else num_workers,
        channels_last=engine.default_channels_last(device) if channels_last is None else channels_last,
        batches=batches,
    )
    return state.cms[:, 0].numpy()


def mious(cms: np.ndarray) -> list[float]:
    return [metrics_from_confusion(cm).miou for cm in cms]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="binding", metavar="NAME|ARCH",
                   help="zoo name / checkpoint / module:function, or an architecture (random weights); default: binding")
    p.add_argument("--binding", action="store_true", help="with an architecture: build the feature-binding network")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="number of images (synthetic with --size; else the first N of the split; default: all, or 32 synthetic)")
    p.add_argument("--size", default=None, metavar="HxW", help="synthetic random-but-deterministic images of this size")
    p.add_argument("--data", default=None, metavar="ROOT", help="a VOC2012 tree (default: the embedded SynthVOC tiny)")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="the engine's dtype (auto: bf16 on CUDA, fp32 on CPU); the reference is always fp32")
    p.add_argument("--batch-size", type=int, default=8, help="engine: images per batch, same size only (default 8)")
    p.add_argument("--perturbations", type=int, default=5, metavar="P", help="perturbations besides clean (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each loop, interleaved; best counts (default 2)")
    p.add_argument("--no-channels-last", action="store_true", help="engine: contiguous memory format")
    p.add_argument("--profile", action="store_true", help="also profile one engine pass (top ops, GPU busy fraction)")
    p.add_argument("--peak-seconds", type=float, default=3.0, help="matmul measuring time for a CPU's peak (default 3)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the figures as JSON to OUT")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        device = engine.resolve_device(args.device)
        dtype = engine.resolve_dtype(args.dtype, device)
        size = common.parse_size(args.size) if args.size else None
    except (RbsegError, ValueError) as exc:
        print(f"eval_speed: error: {exc}", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="rbseg-evalspeed-") if size else None
    try:
        if size:
            n = args.images or 32
            root = common.write_synthetic_tree(Path(tmp.name), n, size=size, split=args.split)
            data_desc = f"synthetic {n} images {size[0]}x{size[1]} (benchmarks/common.py)"
        else:
            if args.data is None:
                from robustbench_seg.data.synth import default_dataset

                root = voc.resolve_root(default_dataset())
                data_desc = "embedded default (SynthVOC tiny)"
            else:
                root = voc.resolve_root(args.data)
                data_desc = str(root)
        ids = voc.read_split(root, args.split)
        ids = ids[: args.images] if args.images else ids
        if not ids:
            raise RbsegError(f"split '{args.split}' lists no images", voc.split_file(root, args.split))
        model, model_info = common.build_benchmark_model(args.model, device, binding=args.binding)
        names, perts, pert_source = common.benchmark_perturbations(args.perturbations)
        result = run_benchmark(args, console, model, model_info, root, ids, names, perts, device, dtype)
        result.update(data=data_desc, perturbation_source=pert_source)
        print_report(console, Table, result)
        common.write_json(args.json, result)
        if args.json:
            console.print(f"written: {args.json}")
    except RbsegError as exc:
        print(f"eval_speed: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def run_benchmark(args, console, model, model_info, root, ids, names, perts, device, dtype) -> dict:
    deltas = [None, *perts]
    inputs = ["clean", *names]
    channels_last = not args.no_channels_last and engine.default_channels_last(device)
    ref_model = model
    eng_model = copy.deepcopy(model)  # the engine converts its copy to channels_last
    sizes = [engine.image_size(voc.image_path(root, i)) for i in ids]
    batches = engine.size_batches(sizes, args.batch_size)

    flops = common.FlopTable(model, device)
    forward_flops = sum(flops(*s) for s in sizes) * len(deltas)
    evals = len(ids) * len(deltas)

    def ref():
        return reference_loop(ref_model, root, args.split, ids, deltas, device)

    def eng():
        return engine_loop(eng_model, root, args.split, ids, deltas, device, dtype, args.batch_size,
                           channels_last=channels_last, batches=batches)

    # warm-up (allocator, oneDNN / cuDNN primitives) on a couple of images
    warm = ids[: min(2, len(ids))]
    reference_loop(ref_model, root, args.split, warm, deltas, device)
    engine_loop(eng_model, root, args.split, warm, deltas, device, dtype, args.batch_size, channels_last=channels_last)

    runs: dict[str, list[dict]] = {"reference": [], "engine": []}
    cms: dict[str, np.ndarray] = {}
    loops = {"reference": ref, "engine": eng}
    for r in range(max(1, args.repeats)):
        order = ["reference", "engine"] if r % 2 == 0 else ["engine", "reference"]
        for name in order:
            load = common.load_average()
            with common.PeakMemory(device) as pm:
                out, seconds = common.timed(loops[name], device)
            cms[name] = out
            runs[name].append({"seconds": seconds, "load_average_1_5_15": load, **pm.to_dict()})
            console.print(f"[dim]{name} run {r + 1}: {seconds:.2f} s ({evals / seconds:.1f} image-evals/s), load {load}[/dim]")

    peaks = {"reference": common.device_peak(device, torch.float32, args.peak_seconds),
             "engine": common.device_peak(device, dtype, args.peak_seconds)}
    loops_out = {}
    for name in ("reference", "engine"):
        best = min(x["seconds"] for x in runs[name])
        tflops = forward_flops / best / 1e12
        loops_out[name] = {
            "batch": 1 if name == "reference" else args.batch_size,
            "dtype": "float32" if name == "reference" else engine.DTYPE_NAMES[dtype],
            "channels_last": False if name == "reference" else channels_last,
            "best_seconds": best, "median_seconds": statistics.median(x["seconds"] for x in runs[name]),
            "image_evals_per_s": evals / best, "peak_memory_bytes": max(x["peak_bytes"] or 0 for x in runs[name]),
            "peak_memory_over_start_bytes": max((x["peak_bytes"] or 0) - (x["start_bytes"] or 0) for x in runs[name]),
            "memory_method": runs[name][0]["method"], "achieved_tflops": tflops,
            "device_peak_tflops": peaks[name]["tflops"], "device_peak_source": peaks[name]["source"],
            "percent_of_peak": 100 * tflops / peaks[name]["tflops"] if peaks[name]["tflops"] else None,
            "miou": dict(zip(inputs, mious(cms[name]))), "runs": runs[name],
        }
    ref_m, eng_m = loops_out["reference"]["miou"], loops_out["engine"]["miou"]
    diffs = {k: abs(ref_m[k] - eng_m[k]) for k in inputs}
    agreement = {
        "max_abs_miou_difference": max(diffs.values()), "per_input": diffs,
        "identical_confusion_matrices": bool(np.array_equal(cms["reference"], cms["engine"])),
        "tolerance_fp32": MIOU_TOLERANCE,
        "within_tolerance": max(diffs.values()) <= MIOU_TOLERANCE if dtype == torch.float32 else None,
    }
    result = {
        "benchmark": "eval_speed", "machine": common.machine_info(device),
        "model": model_info, "split": args.split, "images": len(ids), "inputs": inputs,
        "image_evaluations": evals, "distinct_sizes": len(set(sizes)), "engine_batches": len(batches),
        "forward_flops_total": forward_flops, "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode (conv/matmul)",
        "loops": loops_out,
        "speedup": loops_out["reference"]["best_seconds"] / loops_out["engine"]["best_seconds"],
        "speedup_median": loops_out["reference"]["median_seconds"] / loops_out["engine"]["median_seconds"],
        "miou_agreement": agreement,
    }
    if args.profile:
        result["engine_profile"] = common.profile_top_ops(eng, device)
    return result


def print_report(console, Table, r: dict) -> None:
    m = r["machine"]
    table = Table(title=f"evaluation speed: {r['model']['name']} on {m['device_name']}, {r['images']} images x "
                        f"{len(r['inputs'])} inputs ({r['data']})")
    for col in ("loop", "batch", "dtype", "best s", "image-evals/s", "vs reference", "peak memory (+over start)",
                "TFLOP/s", "% of peak", "mIoU clean", "mIoU perturbed"):
        table.add_column(col, justify="left" if col == "loop" else "right")
    for name, x in r["loops"].items():
        pert = [v for k, v in x["miou"].items() if k != "clean"]
        table.add_row(
            name, str(x["batch"]), x["dtype"] + (" cl" if x["channels_last"] else ""), f"{x['best_seconds']:.2f}",
            f"{x['image_evals_per_s']:.1f}", f"{r['loops']['reference']['best_seconds'] / x['best_seconds']:.2f}x",
            f"{common.fmt_bytes(x['peak_memory_bytes'])} (+{common.fmt_bytes(x['peak_memory_over_start_bytes'])})",
            f"{x['achieved_tflops']:.4f}",
            f"{x['percent_of_peak']:.1f}%" if x["percent_of_peak"] is not None else "n/a",
            f"{x['miou']['clean']:.2f}", f"{np.mean(pert):.2f}" if pert else "-",
        )
    console.print(table)
    a = r["miou_agreement"]
    verdict = ("OK" if a["within_tolerance"] else "FAIL") if a["within_tolerance"] is not None else "bf16: reported"
    console.print(f"mIoU agreement: max |difference| {a['max_abs_miou_difference']:.4f} points over {len(r['inputs'])} inputs "
                  f"({verdict}; identical confusion matrices: {a['identical_confusion_matrices']})")
    for name, x in r["loops"].items():
        console.print(f"peak FLOP/s ({name}): {x['device_peak_tflops']:.3f} TFLOP/s, {x['device_peak_source']}")
    console.print(f"FLOPs: {r['forward_flops_total'] / 1e9:.2f} GFLOP of forwards ({r['flops_counted_by']}); "
                  f"memory: {r['loops']['engine']['memory_method']}; load average {m['load_average_1_5_15']}")
    if "engine_profile" in r:
        pr = r["engine_profile"]
        extra = f", GPU busy {100 * pr['gpu_busy_fraction']:.0f}%" if "gpu_busy_fraction" in pr else ""
        extra += (f", data loading {100 * pr['data_loading_share_of_wall']:.0f}% of wall"
                  if "data_loading_share_of_wall" in pr else "")
        console.print(f"engine profile ({pr['wall_s']:.2f} s{extra}): " + "; ".join(
            f"{op['name']} {100 * op['share']:.0f}%" for op in pr["top_ops"][:6]))


if __name__ == "__main__":
    sys.exit(main())
