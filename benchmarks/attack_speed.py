"""Per-image attack throughput: rbseg's batched attacks against the ``cospgd`` package's own loop.

Same model, images, labels, eps, step size and steps (no random start) for both, l-inf, 0-255 units:

* reference: the attack loop of the ``cospgd`` repository (``unet_backbones/.../trainer.py``,
  ``adv_attack``) with the package's functions (``functions.segpgd_scale`` / ``cospgd_scale`` /
  ``step_inf``), the loss ``CrossEntropyLoss(ignore_index=255, reduction="none")`` reduced by
  ``.mean()``, ``loss.backward()`` (the model's weights keep requiring grad, as in that script),
  and the final predictions from the loop's last forward;
* rbseg: :func:`robustbench_seg.attacks.perimage.run_attack` (input-only gradients via
  ``torch.autograd.grad``), then one forward under ``inference_mode`` for the predictions.

Reports image-iterations per second (images x steps / s) for both and the ratio, the largest
difference between the two adversarial batches and the fraction of differing values (0 expected
in fp32 when the batch size is a power of two: the two objectives then differ by an exact factor
of 2^k, see docs/attacks.md), and the mIoU of both. Each loop runs ``--repeats`` times,
interleaved; the best time counts. Prints one table; ``--json OUT`` writes everything.

    python benchmarks/attack_speed.py                                  # shipped baseline model, CPU
    python benchmarks/attack_speed.py --model deeplabv3_tiny --images 8 --size 96x96 --steps 5
    python benchmarks/attack_speed.py --model deeplabv3_resnet101 --size 512x512 --images 16 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
from robustbench_seg.attacks.perimage import build_attacks, run_attack
from robustbench_seg.constants import IGNORE_INDEX, NUM_CLASSES
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation.metric import confusion_matrix, metrics_from_confusion

REFERENCE_ATTACKS = ("pgd", "segpgd", "cospgd")


def reference_loop(forward, images: torch.Tensor, labels: torch.Tensor, attack: str, epsilon: float, alpha: float,
                   iterations: int, random_start: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``cospgd`` repository's attack loop (``adv_attack``), in 0-255 units; returns
    (adversarial images, final logits). ``random_start`` calls the package's ``init_linf``."""
    from cospgd import functions

    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")
    images = images.clone()
    orig_image = images.clone()
    with torch.no_grad():
        forward(images)  # orig_preds in the original loop
    if random_start:
        images = functions.init_linf(images, epsilon=epsilon, clamp_min=0, clamp_max=255)
    images.requires_grad = True
    preds = forward(images)
    loss = criterion(preds.float(), labels.long())
    for t in range(iterations):
        if attack == "cospgd":
            loss = functions.cospgd_scale(predictions=preds, labels=labels.long(), loss=loss,
                                          num_classes=NUM_CLASSES, targeted=False)
        elif attack == "segpgd":
            loss = functions.segpgd_scale(predictions=preds, labels=labels, loss=loss, iteration=t,
                                          iterations=iterations, targeted=False)
        loss = loss.mean()
        loss.backward()
        images = functions.step_inf(perturbed_image=images, epsilon=epsilon, data_grad=images.grad,
                                    orig_image=orig_image, alpha=alpha, targeted=False, clamp_min=0,
                                    clamp_max=255, grad_scale=None)
        images.requires_grad = True
        preds = forward(images)
        loss = criterion(preds.float(), labels.long())
    return images.detach(), preds.detach()


def rbseg_loop(forward, images, labels, spec):
    x_adv = run_attack(spec, forward, images, labels)
    with torch.inference_mode():
        logits = forward(x_adv)
    return x_adv, logits


def miou(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return metrics_from_confusion(confusion_matrix(logits.argmax(1), labels)).miou


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="baseline", help="zoo name, checkpoint or architecture (random weights)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=common.parse_size, default=(128, 128))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=4.0, help="0-255 units")
    ap.add_argument("--step-size", type=float, default=1.0, help="0-255 units")
    ap.add_argument("--attacks", default=",".join(REFERENCE_ATTACKS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        import cospgd  # noqa: F401
    except ImportError:
        print("attack_speed: the cospgd package is not installed (pip install -e '.[peers]')", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, info = common.build_benchmark_model(args.model, device)
    forward = lambda x: engine.forward_logits(model, x)  # noqa: E731
    pairs = list(common.synthetic_masks_and_images(args.images, [args.size], seed=0))
    images = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() for im, _ in pairs]).to(device)
    labels = torch.stack([torch.from_numpy(m.astype(np.int64)) for _, m in pairs]).to(device)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    rows = []
    for name in names:
        spec = build_attacks([name], [args.eps], steps=args.steps, step_size=args.step_size, random_start=False)[0]
        best = {"reference": float("inf"), "rbseg": float("inf")}
        out = {}
        for _ in range(args.repeats):
            for which in ("reference", "rbseg"):
                common.sync(device)
                t0 = time.perf_counter()
                if which == "reference":
                    res = reference_loop(forward, images, labels, name, args.eps, args.step_size, args.steps)
                else:
                    res = rbseg_loop(forward, images, labels, spec)
                common.sync(device)
                best[which] = min(best[which], time.perf_counter() - t0)
                out[which] = res
        model.zero_grad(set_to_none=True)
        diff = (out["reference"][0] - out["rbseg"][0]).abs()
        work = args.images * args.steps
        row = {"attack": name, "spec": spec.to_dict(), "key": spec.key(),
               "reference_s": best["reference"], "rbseg_s": best["rbseg"],
               "reference_img_it_per_s": work / best["reference"], "rbseg_img_it_per_s": work / best["rbseg"],
               "speedup": best["reference"] / best["rbseg"], "max_abs_diff": float(diff.max()),
               "fraction_differing": float((diff > 0).float().mean()),
               "miou_reference": miou(out["reference"][1], labels), "miou_rbseg": miou(out["rbseg"][1], labels),
               "miou_clean": miou(forward(images).detach(), labels)}
        rows.append(row)
    print(f"model {info['name']}, {args.images} images {args.size[0]}x{args.size[1]}, {args.steps} steps, eps {args.eps}, "
          f"step {args.step_size}, {device}, {torch.get_num_threads()} threads, load {common.load_average()}")
    print(f"{'attack':8} {'ref img-it/s':>12} {'rbseg img-it/s':>14} {'speedup':>8} {'max|diff|':>10} {'mIoU ref':>9} {'mIoU rbseg':>10}")
    for r in rows:
        print(f"{r['attack']:8} {r['reference_img_it_per_s']:12.2f} {r['rbseg_img_it_per_s']:14.2f} {r['speedup']:8.2f} "
              f"{r['max_abs_diff']:10.3g} {r['miou_reference']:9.2f} {r['miou_rbseg']:10.2f}")
    common.write_json(args.json, {"benchmark": "attack_speed", "machine": common.machine_info(device), "model": info,
                                  "images": args.images, "size": list(args.size), "steps": args.steps, "eps": args.eps,
                                  "step_size": args.step_size, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
