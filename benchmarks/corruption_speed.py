"""Common-corruption throughput: rbseg's batched torch corruptions against the reference package.

For each corruption, the same batch of images (VOC-sized by default) at one severity:

* rbseg: :func:`robustbench_seg.corruptions.corrupt` on ``--device`` (the whole batch in one call;
  corruptions whose ``impl`` is ``reference`` run the reference package on CPU inside it);
* reference: ``imagecorruptions`` (the ``imagecorruptions-imaug`` fork) image by image on CPU,
  NumPy seeded per image (:func:`robustbench_seg.corruptions.reference.reference_one`), OpenCV
  limited to ``--ref-threads`` threads (1: one decoding worker's core).

Reports images/s for both and the speed-up; for deterministic corruptions also the largest
difference from the reference and the fraction of differing values (random ones use other random
numbers by design: see docs/corruptions.md). A warm-up call precedes the timed ones (numba JIT,
CUDA kernels); the best of ``--repeats`` counts. Prints one table; ``--json OUT`` writes everything.

    python benchmarks/corruption_speed.py                                  # all 19, CPU, 4 images 375x500
    python benchmarks/corruption_speed.py --corruptions contrast,fog --images 8 --repeats 3
    python benchmarks/corruption_speed.py --device cuda --images 32 --json benchmarks/results/corruption_speed_gpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common
from robustbench_seg import corruptions as C
from robustbench_seg.corruptions import reference


def make_images(n: int, size: tuple[int, int], voc_root: str | None, seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) float 0-255: crops of real VOC images when ``voc_root`` has them (resized up when
    smaller), else smooth random images (low-resolution noise upsampled, plus texture)."""
    h, w = size
    if voc_root:
        from PIL import Image

        files = sorted((Path(voc_root) / "JPEGImages").glob("*.jpg"))
        if files:
            out = []
            for i in range(n):
                with Image.open(files[i % len(files)]) as im:
                    im = im.convert("RGB")
                    if im.height < h or im.width < w:
                        im = im.resize((max(w, im.width), max(h, im.height)), Image.BILINEAR)
                    a = np.asarray(im)[:h, :w]
                out.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
            return torch.stack(out).float()
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, h // 16), max(2, w // 16), generator=g) * 255
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + torch.randn(n, 3, h, w, generator=g) * 12
    return torch.clamp(x, 0, 255).round()


def time_best(fn, device, repeats: int, warmup=None):
    (warmup or fn)()                                         # warm-up (JIT, kernels, caches)
    best, out = float("inf"), None
    for _ in range(repeats):
        out, t = common.timed(fn, device)
        best = min(best, t)
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corruptions", default="all,extra", help="all | extra | names (comma-separated)")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=common.parse_size, default=(375, 500), help="HxW (VOC images are about 375x500)")
    ap.add_argument("--voc", default=None, help="a VOC2012/ folder whose JPEGImages to use (default: synthetic images)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--ref-threads", type=int, default=1, help="OpenCV threads of the reference (1: one worker's core)")
    ap.add_argument("--no-reference", action="store_true", help="time rbseg only")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = C.parse_corruptions(args.corruptions)
    have_ref = reference.available() and not args.no_reference
    if have_ref:
        import cv2

        cv2.setNumThreads(args.ref_threads)
    x_cpu = make_images(args.images, args.size, args.voc)
    x = x_cpu.to(device)
    seeds = [C.corruption_seed(f"bench{i}", "x", args.severity) for i in range(args.images)]
    imgs_u8 = x_cpu.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    load_before = common.load_average()

    rows = []
    for name in names:
        d = C.CORRUPTIONS[name]
        if d.impl == "reference" and not have_ref:
            rows.append({"corruption": name, "impl": d.impl, "skipped": "reference package not installed"})
            continue
        ours, t_ours = time_best(lambda: C.corrupt(x, name, args.severity, seeds), device, args.repeats)
        row = {"corruption": name, "family": d.family, "impl": d.impl, "rbseg_seconds": t_ours,
               "rbseg_images_per_s": args.images / t_ours}
        if have_ref:
            def ref():
                return np.stack([reference.reference_one(im, name, args.severity, s) for im, s in zip(imgs_u8, seeds)])

            ref_out, t_ref = time_best(ref, torch.device("cpu"), args.repeats,   # warm-up on one image (numba JIT)
                                       warmup=lambda: reference.reference_one(imgs_u8[0], name, args.severity, seeds[0]))
            row.update(reference_seconds=t_ref, reference_images_per_s=args.images / t_ref, speedup=t_ref / t_ours)
            if d.impl == "reference" or d.draw is None:              # same numbers expected: compare
                diff = np.abs(ours.cpu().permute(0, 2, 3, 1).numpy().astype(np.int64) - ref_out.astype(np.int64))
                row.update(max_abs_diff=int(diff.max()), frac_diff=float(np.mean(diff > 0)))
        rows.append(row)

    result = {"benchmark": "corruption_speed", "machine": common.machine_info(device),
              "load_average_before": load_before, "load_average_after": common.load_average(),
              "reference": {"package": reference.REFERENCE_DIST, "pin": reference.REFERENCE_PIN, "available": have_ref,
                            "opencv_threads": args.ref_threads if have_ref else None},
              "corruptions_version": C.VERSION, "images": args.images, "size": list(args.size),
              "severity": args.severity, "repeats": args.repeats,
              "source": "voc" if args.voc else "synthetic", "rows": rows,
              "corruptions": {r["corruption"]: r for r in rows}}         # by name (benchmarks/gpu_summary.py)
    print(f"# corruption speed: {args.images} images {args.size[0]}x{args.size[1]}, severity {args.severity}, "
          f"{common.device_name(device)}, load {load_before}")
    print(f"{'corruption':18s} {'impl':9s} {'rbseg img/s':>12s} {'ref img/s':>10s} {'speed-up':>9s} {'max|d|':>7s} {'%diff':>7s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['corruption']:18s} {r['impl']:9s} skipped: {r['skipped']}")
            continue
        ref_s = f"{r['reference_images_per_s']:10.1f}" if "reference_images_per_s" in r else f"{'-':>10s}"
        sp = f"{r['speedup']:8.2f}x" if "speedup" in r else f"{'-':>9s}"
        md = f"{r['max_abs_diff']:7d}" if "max_abs_diff" in r else f"{'-':>7s}"
        fd = f"{100 * r['frac_diff']:6.3f}%" if "frac_diff" in r else f"{'-':>7s}"
        print(f"{r['corruption']:18s} {r['impl']:9s} {r['rbseg_images_per_s']:12.1f} {ref_s} {sp} {md} {fd}")
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
