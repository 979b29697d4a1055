"""Training throughput per method: images/s and peak memory on the same model, batch and crop.

Each configuration runs in its own subprocess (a clean peak-memory figure) through the real trainer
(``robustbench_seg.training.train``: data loading, augmentation, blending on the device, loss,
optimiser step); steps are timed from ``trainer.AFTER_STEP`` after a warm-up. ``reference`` is a
plain loop for comparison: feature binding stage 1 with fp32, no channels_last, and the pairs
blended on the CPU inside the data loader.

    python benchmarks/train_speed.py                       # tiny model, SynthVOC tiny, CPU
    python benchmarks/train_speed.py --arch deeplabv3_resnet101 --crop 321 --batch-size 8 --device cuda
    python benchmarks/train_speed.py --configs binding,segmix  # SegMix's in-batch blend vs C_fb pairs

``binding`` is feature binding stage 1 with the default ``cfb`` pairs; ``segmix`` the same with
``--blend cm`` (SegMix: partner chosen in the batch on the device); ``cm_over_cfb_step_time`` compares them.

Prints one table and writes JSON (default ``benchmarks/results/train_speed.json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("baseline", "mixup", "cutmix", "binding", "reference")
# configs that are a method plus options (the others are a method's name)
CONFIG_OPTIONS = {"segmix": {"method": "binding", "blend": "cm"}}


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(args) -> dict:
    """One configuration, in this process: returns step times and peak memory."""
    import torch

    from robustbench_seg.training import TrainConfig, train, trainer

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = args.warmup + args.steps
    if args.config == "reference":
        times = reference_loop(args, device, total)
    else:
        times: list[float] = []
        trainer.AFTER_STEP = lambda stage, step: (torch.cuda.synchronize() if device.type == "cuda" else None, times.append(time.perf_counter()))
        opts = dict(CONFIG_OPTIONS.get(args.config, {"method": args.config}))
        opts.update(preset=args.preset, arch=args.arch, batch_size=args.batch_size, crop=args.crop,
                    steps=total, denoise=False, val_split=None, progress=False, device=str(device),
                    checkpoint_every=None, checkpoint_minutes=0, num_workers=args.num_workers, weights_backbone="none")
        with tempfile.TemporaryDirectory() as tmp:
            train(TrainConfig(data=str(args.data), out=str(Path(tmp) / "bench.pt"), **opts))
    intervals = sorted(b - a for a, b in zip(times[args.warmup - 1:-1], times[args.warmup:]))
    step_s = intervals[len(intervals) // 2]  # median: robust to other jobs' bursts on a shared machine
    mean_s = (times[-1] - times[args.warmup - 1]) / len(intervals)
    return {"config": args.config, "step_ms": 1000 * step_s, "mean_step_ms": 1000 * mean_s, "images_per_s": args.batch_size / step_s,
            "peak_memory_mb": _peak_memory_mb(device), "device": str(device), "steps_timed": len(intervals)}


def reference_loop(args, device, total: int) -> list[float]:
    """Plain stage-1 feature-binding loop: fp32, NCHW, pairs blended on the CPU in the loader."""
    import numpy as np
    import torch

    from robustbench_seg.data import voc
    from robustbench_seg.data.transforms import normalize, train_transforms
    from robustbench_seg.models import build_model
    from robustbench_seg.training import losses
    from robustbench_seg.training.config import TrainConfig, resolve_config

    cfg = resolve_config(TrainConfig(method="binding", data=str(args.data), out="-", preset=args.preset, arch=args.arch,
                                     batch_size=args.batch_size, crop=args.crop, steps=total))
    ds = voc.VOCSegmentation(args.data, cfg.split, transforms=train_transforms(cfg.crop, cfg.scale))
    rng = np.random.default_rng(0)

    def collate(batch):
        x1 = torch.stack([b[0] for b in batch]).float()
        y1 = torch.stack([b[1] for b in batch])
        partners = [ds[int(j)] for j in rng.integers(0, len(ds), size=len(batch))]
        x2 = torch.stack([b[0] for b in partners]).float()
        y2 = torch.stack([b[1] for b in partners])
        delta = torch.as_tensor(rng.uniform(0.7, 1.0, size=len(batch)), dtype=torch.float32)
        x = delta.view(-1, 1, 1, 1) * x1 + (1 - delta.view(-1, 1, 1, 1)) * x2  # blended on the CPU
        return normalize(x), y1, y2, delta

    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate, num_workers=args.num_workers or 0)
    model = build_model(cfg.arch, binding=True).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    times: list[float] = []
    while len(times) < total:
        for x, y1, y2, delta in loader:
            x, y1, y2, delta = x.to(device), y1.to(device), y2.to(device), delta.to(device)
            loss, _ = losses.binding_loss(model(x), y1, y2, delta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if len(times) >= total:
                break
    return times


def machine_info(device: str) -> dict:
    import os

    import torch
    import torchvision

    import robustbench_seg

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "rbseg": robustbench_seg.__version__,
            "torch_default_threads": torch.get_num_threads()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available() and device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="VOC2012 root (default: the embedded SynthVOC tiny)")
    p.add_argument("--arch", default="deeplabv3_tiny")
    p.add_argument("--preset", default="tiny", help="training preset for the other options (optimiser, lr, ...)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="rounds over all configs (median reported)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = p.parse_args(argv)
    if args.data is None:
        from robustbench_seg.data.synth import default_dataset

        args.data = str(default_dataset())
    if args.config:
        print(json.dumps(run_one(args)))
        return 0

    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for config in args.configs.split(","):
            cmd = [sys.executable, __file__, "--config", config, "--data", args.data, "--arch", args.arch, "--preset", args.preset,
                   "--batch-size", str(args.batch_size), "--crop", str(args.crop), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device, "--num-workers", str(args.num_workers),
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                return res.returncode
            runs.setdefault(config, []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    rows = []
    for config, reps in runs.items():  # the median repeat (by step time), interleaved rounds
        reps = sorted(reps, key=lambda r: r["step_ms"])
        row = dict(reps[len(reps) // 2])
        row["step_ms_repeats"] = [r["step_ms"] for r in reps]
        rows.append(row)
    base = next((r for r in rows if r["config"] == "baseline"), None)
    for r in rows:
        r["time_vs_baseline"] = None if base is None else r["step_ms"] / base["step_ms"]
    report = {"benchmark": "train_speed", "arch": args.arch, "batch_size": args.batch_size, "crop": args.crop,
              "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "preset": args.preset, "data": args.data,
              "threads": args.threads or "torch default", "machine": machine_info(args.device), "results": rows}
    binding = next((r for r in rows if r["config"] == "binding"), None)
    if base and binding:
        report["binding_over_baseline_step_time"] = binding["step_ms"] / base["step_ms"]
    cm = next((r for r in rows if r["config"] == "segmix"), None)
    if cm and binding:
        report["cm_over_cfb_step_time"] = cm["step_ms"] / binding["step_ms"]
    import common  # benchmarks/common.py; imported here, like torch, to keep --help light

    load = common.load_average()  # a shared machine: other jobs' load at the end of the run
    if load is not None:
        report["load_average"] = load

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training speed: {args.arch}, batch {args.batch_size}, crop {args.crop}, {rows[0]['device']}")
    peak = "peak GPU MB" if rows[0]["device"].startswith("cuda") else "peak RSS MB"
    for col in ("config", "images/s", "step ms", peak, "step time / baseline"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        ratio = "-" if r["time_vs_baseline"] is None else f"{r['time_vs_baseline']:.2f}"
        table.add_row(r["config"], f"{r['images_per_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['peak_memory_mb']:.0f}", ratio)
    Console().print(table)
    out = common.write_json(args.out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
