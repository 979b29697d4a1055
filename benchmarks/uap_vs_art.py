"""Peer check: rbseg's batched UAP against ART's ``UniversalPerturbation`` (DeepFool attacker).

Both craft an l-inf UAP (xi = 10 in 0-255 units, delta = 0.2, at most 10 passes, DeepFool with
10 candidate classes, overshoot 0.02, 50 iterations) on the same small classifier (a 3-layer CNN
trained here for a few seconds on SynthVOC object crops, 32 px, 20 classes) and the same crafting
images; the fooling rate of each perturbation is then measured the same way (rbseg's
``fooling_rate``) on the crafting set and on held-out val crops. Rows: rbseg batched
(``--batch-size``, default 32), rbseg with batch size 1 (Algorithm 1 exactly) and ART 1.x (sequential,
NumPy in between). Prints one table and writes JSON.

ART is not a dependency of the suite: install it only to run this, e.g.
``pip install --target /tmp/art adversarial-robustness-toolbox`` and ``PYTHONPATH=/tmp/art``.

    python benchmarks/uap_vs_art.py [--data ROOT] [--images 128] [--seeds 0 1 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import common
from robustbench_seg.attacks.surrogate import extract_crops
from robustbench_seg.attacks.uap import UAPConfig, fooling_rate, universal_perturbation
from robustbench_seg.data.transforms import normalize


class SmallCNN(nn.Module):
    """0-255 input, normalised inside (like every classifier in the suite)."""

    def __init__(self, classes: int = 20):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, classes),
        )

    def forward(self, x255):
        return self.f(normalize(x255))


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            if len(idx) < 2:
                continue
            xb = x[idx].float()
            xb = torch.where(torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5, xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def run_rbseg(model, images, cfg: UAPConfig):
    t = time.perf_counter()
    res = universal_perturbation(model, images, cfg)
    return res.v, time.perf_counter() - t, res.passes


def run_art(model, images, cfg: UAPConfig, seed: int):
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    random.seed(seed)
    np.random.seed(seed)
    # ART assumes inputs in [0, 1]: its DeepFool multiplies every step by (clip_max - clip_min), so with
    # clip_values (0, 255) each step would be 255 times DeepFool's. Feed it x / 255 (the model rescales
    # inside), eps = xi / 255, clip (0, 1): then ART runs the real DeepFool; its noise * 255 is 0-255 units.
    unit_model = nn.Sequential(_Scale(255.0), model).eval()
    clf = PyTorchClassifier(model=unit_model, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]), nb_classes=20,
                            clip_values=(0.0, 1.0), device_type="cpu")
    attack = UniversalPerturbation(
        clf, attacker="deepfool",
        attacker_params={"nb_grads": cfg.num_classes, "epsilon": cfg.overshoot, "max_iter": cfg.max_iter_df, "verbose": False},
        delta=cfg.delta, max_iter=cfg.max_passes, eps=cfg.xi / 255.0, norm=np.inf, batch_size=cfg.batch_size, verbose=False)
    x = (images.float() / 255.0).numpy()
    t = time.perf_counter()
    attack.generate(x)
    elapsed = time.perf_counter() - t
    return torch.from_numpy(np.asarray(attack.noise[0], dtype=np.float32) * 255.0), elapsed, None


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="VOC tree (default: the embedded SynthVOC tiny)")
    ap.add_argument("--images", type=int, default=128, help="crafting images (train crops)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-iter-df", type=int, default=10,
                    help="DeepFool steps at most (default 10, the authors'; results made before issue 10 used 50)")
    ap.add_argument("--epochs", type=int, default=8, help="classifier training epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "uap_vs_art.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data is None:
        from robustbench_seg.data.synth import default_dataset

        args.data = str(default_dataset())
    x_train, y_train, _ = extract_crops(args.data, "train", 32)
    x_val, y_val, _ = extract_crops(args.data, "val", 32)
    model = train_classifier(x_train, y_train, args.epochs, seed=0)
    with torch.no_grad():
        acc = float((model(x_val.float()).argmax(1) == y_val).float().mean())
    import art

    rows = []
    for seed in args.seeds:
        pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[: args.images]
        images = x_train[pick].float()
        held = x_val[: args.images].float()
        for name in ("rbseg batched", "rbseg batch 1", "ART"):
            bs = args.batch_size if name == "rbseg batched" else 1
            cfg = UAPConfig(xi=10.0, norm="inf", delta=0.2, max_passes=10, overshoot=0.02, num_classes=10,
                            max_iter_df=args.max_iter_df, batch_size=bs, seed=seed, clip=True)
            if name == "ART":
                v, secs, passes = run_art(model, images, cfg, seed)
            else:
                v, secs, passes = run_rbseg(model, images, cfg)
            rows.append({
                "impl": name, "seed": seed, "batch_size": bs, "time_s": round(secs, 3), "passes": passes,
                "fooling_rate_craft": round(fooling_rate(model, images, v), 4),
                "fooling_rate_heldout": round(fooling_rate(model, held, v), 4),
                "linf": round(float(v.abs().max()), 4), "l2": round(float(v.norm()), 2),
            })
            print(f"{name:14s} seed {seed}: fooling {rows[-1]['fooling_rate_craft']:.3f} (held-out "
                  f"{rows[-1]['fooling_rate_heldout']:.3f}), {secs:7.2f} s, passes {passes}, linf {rows[-1]['linf']:.2f}",
                  flush=True)
    summary = {}
    for name in ("rbseg batched", "rbseg batch 1", "ART"):
        rs = [r for r in rows if r["impl"] == name]
        summary[name] = {k: round(float(np.mean([r[k] for r in rs])), 4)
                         for k in ("time_s", "fooling_rate_craft", "fooling_rate_heldout")}
    print("\n| implementation | fooling rate (crafting set) | fooling rate (held-out) | wall time (s) |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['fooling_rate_craft']:.3f} | {s['fooling_rate_heldout']:.3f} | {s['time_s']:.2f} |")
    import torchvision

    result = {
        "benchmark": "uap_vs_art", "classifier": "SmallCNN (3 conv, 32 px, 20 classes)", "val_accuracy": round(acc, 4),
        "images": args.images, "seeds": args.seeds, "data": args.data, "rows": rows, "summary": summary,
        "settings": {"xi": 10, "norm": "inf", "delta": 0.2, "max_passes": 10, "overshoot": 0.02, "num_classes": 10,
                     "max_iter_df": args.max_iter_df, "clip": [0, 255]},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "threads": args.threads, "python": sys.version.split()[0]},
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "numpy": np.__version__, "art": art.__version__},
    }
    out = common.write_json(args.out, result)
    print(f"\nclassifier val accuracy {acc:.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
