"""Helper of benchmarks/gpu_check.sh: the VOC-sized test tree, and the one JSON + markdown table.

    python benchmarks/gpu_summary.py voc-tree OUT [--images N] [--scale S]
        a synthetic VOC2012 tree under OUT whose images cycle through PASCAL VOC's common sizes
        (500x375, 375x500, 500x333, 333x500, 500x500, 500x366, 500x400, 281x500; H x W as (H, W)),
        scaled by S (the --tiny check)
    python benchmarks/gpu_summary.py summarize DIR [--voc-desc TEXT] [--wall SECONDS]
        reads DIR/{environment,eval_512,eval_voc,train,attack,corruption}.json, DIR/steps.tsv and
        DIR/gpu_util.log (nvidia-smi samples: epoch seconds, utilisation %, memory MiB) and writes
        DIR/gpu_check.json and DIR/gpu_check.md (one row per measurement, with the step's GPU busy
        fraction: the mean nvidia-smi utilisation over the step's samples)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# PASCAL VOC 2012's most frequent image sizes (W x H 500x375 dominates), as (H, W)
VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (366, 500), (400, 500), (500, 281)]


def voc_tree(out: Path, images: int, scale: float) -> Path:
    import common
    from PIL import Image

    from robustbench_seg.data import voc

    sizes = [(max(16, round(h * scale)), max(16, round(w * scale))) for h, w in VOC_SIZES]
    root = Path(out) / "VOC2012"
    ids = [f"vocsize_{k:05d}" for k in range(images)]
    per_image = [sizes[k % len(sizes)] for k in range(images)]
    for image_id, (image, mask) in zip(ids, common.synthetic_masks_and_images(images, per_image, seed=0)):
        path = voc.image_path(root, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(path, quality=90)
        voc.write_index_png(voc.mask_path(root, image_id, "val"), mask)
    split = voc.split_file(root, "val")
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(ids) + "\n")
    print(f"voc-tree: {images} images in {len(set(per_image))} sizes under {root}")
    return root


# --- summary -------------------------------------------------------------------------------------------


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def read_steps(folder: Path) -> dict[str, dict]:
    steps = {}
    path = folder / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                name, t0, t1, rc = parts
                rec = {"rc": rc}
                try:
                    rec.update(start=float(t0), end=float(t1), seconds=round(float(t1) - float(t0), 1))
                except ValueError:
                    pass
                steps[name] = rec
    return steps


def read_util(folder: Path) -> list[tuple[float, float, float]]:
    """(epoch seconds, utilisation %, memory MiB) samples; unreadable lines are skipped."""
    out = []
    path = folder / "gpu_util.log"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                t, rest = line.split(" ", 1)
                util, mem = rest.split(",")[:2]
                out.append((float(t), float(util), float(mem)))
            except ValueError:
                continue
    return out


def busy(samples, start: float | None, end: float | None) -> dict | None:
    if start is None or end is None:
        return None
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    return {"gpu_busy_fraction": round(sum(s[1] for s in inside) / len(inside) / 100, 3),
            "max_memory_mib": max(s[2] for s in inside), "samples": len(inside)}


def rows_from(folder: Path, voc_desc: str) -> tuple[list[dict], dict]:
    raw = {name: _read(folder / f"{name}.json") for name in ("environment", "eval_512", "eval_voc", "train", "attack", "corruption")}
    rows: list[dict] = []

    for name, what in (("eval_512", "evaluation 512x512"), ("eval_voc", f"evaluation, {voc_desc}")):
        r = raw[name]
        if r:
            ref, eng = _get(r, "loops", "reference", default={}), _get(r, "loops", "engine", default={})
            prof = r.get("engine_profile") or {}
            inputs = r.get("inputs")
            rows.append({"step": name, "measurement": f"{what}: engine vs reference ({_get(r, 'model', 'name')}, "
                                                      f"{r.get('images')} images x {len(inputs or [])} inputs, "
                                                      f"{r.get('distinct_sizes')} sizes, engine {eng.get('dtype')})",
                         "rbseg": _fmt(eng.get("image_evals_per_s"), "image-evals/s"),
                         "reference": _fmt(ref.get("image_evals_per_s"), "image-evals/s"),
                         "ratio": _fmt(r.get("speedup"), "x"),
                         "extra": "; ".join(x for x in (
                             _fmt(eng.get("achieved_tflops"), "TFLOP/s"),
                             _fmt(eng.get("percent_of_peak"), "% of peak"),
                             _fmt(_pct(prof.get("gpu_busy_fraction")), "% busy (profiler)"),
                             _fmt(_get(r, "miou_agreement", "max_abs_miou_difference"), "mIoU diff")) if x)})
    r = raw["train"]
    if r:
        res = {c.get("config"): c for c in (r.get("results") or []) if isinstance(c, dict)}
        for config in ("baseline", "binding", "segmix"):
            c = res.get(config)
            if c:
                rows.append({"step": "train", "measurement": f"training step, {config} ({r.get('arch', '')})",
                             "rbseg": _fmt(c.get("images_per_s"), "images/s"), "reference": "", "ratio": "",
                             "extra": "; ".join(x for x in (_fmt(c.get("step_ms"), "ms/step"),
                                                           _fmt(c.get("time_vs_baseline"), "x baseline time"),
                                                           _fmt(c.get("peak_memory_mb"), "MB peak")) if x)})
    r = raw["attack"]
    if r:
        for a in r.get("rows") or []:
            rows.append({"step": "attack", "measurement": f"attack {a.get('attack')} vs the cospgd loop "
                                                          f"({r.get('images')} images {r.get('size')}, {r.get('steps')} steps)",
                         "rbseg": _fmt(a.get("rbseg_img_it_per_s"), "image-iters/s"),
                         "reference": _fmt(a.get("reference_img_it_per_s"), "image-iters/s"),
                         "ratio": _fmt(a.get("speedup"), "x"),
                         "extra": _fmt(a.get("max_abs_diff"), "max |adv diff|")})
    r = raw["corruption"]
    if r:
        per = r.get("corruptions") or r.get("results") or {}
        if isinstance(per, dict):
            for name, c in per.items():
                if isinstance(c, dict):
                    rows.append({"step": "corruption", "measurement": f"corruption {name}",
                                 "rbseg": _fmt(c.get("rbseg_images_per_s", _get(c, "rbseg", "images_per_s")), "images/s"),
                                 "reference": _fmt(c.get("reference_images_per_s", _get(c, "reference", "images_per_s")), "images/s"),
                                 "ratio": _fmt(c.get("speedup"), "x"),
                                 "extra": "; ".join(x for x in (str(c.get("impl") or ""),
                                                                _fmt(c.get("max_abs_diff"), "max |diff|")) if x)})
    return rows, raw


def _pct(v):
    return None if v is None else 100 * float(v)


def _fmt(v, unit: str) -> str:
    if v is None or isinstance(v, (dict, list)):
        return ""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{v:.3g} {unit}" if abs(v) < 100 else f"{v:.0f} {unit}"


def summarize(folder: Path, voc_desc: str = "VOC sizes", wall: float | None = None) -> dict:
    steps = read_steps(folder)
    samples = read_util(folder)
    rows, raw = rows_from(folder, voc_desc)
    for name, rec in steps.items():
        b = busy(samples, rec.get("start"), rec.get("end"))
        if b:
            rec.update(b)
    for row in rows:
        frac = steps.get(row["step"], {}).get("gpu_busy_fraction")
        row["gpu_busy"] = "" if frac is None else f"{100 * frac:.0f}%"
    report = {"schema": "rbseg-gpu-check/1", "environment": raw.get("environment"), "wall_s": wall,
              "steps": steps, "rows": rows, "gpu_util_samples": len(samples),
              "benchmarks": {k: v for k, v in raw.items() if k != "environment"}}
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    env = raw.get("environment") or {}
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')} (torch {env.get('torch')}, device {env.get('device_arg')}"
             f"{', tiny sizes' if env.get('tiny') else ''}), {wall or '?'} s", "",
             "| measurement | rbseg | reference | ratio | GPU busy (nvidia-smi) | other |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {r['rbseg']} | {r['reference']} | {r['ratio']} | {r['gpu_busy']} | {r['extra']} |")
    lines += ["", "| step | seconds | exit | GPU busy | max memory MiB |", "|---|---|---|---|---|"]
    for name, rec in steps.items():
        frac = rec.get("gpu_busy_fraction")
        lines.append(f"| {name} | {rec.get('seconds', '-')} | {rec['rc']} | {'' if frac is None else f'{100 * frac:.0f}%'} "
                     f"| {rec.get('max_memory_mib', '')} |")
    (folder / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [n for n, r in steps.items() if r["rc"] not in ("0", "absent")]
    if failed:
        print(f"gpu_summary: failed steps: {', '.join(failed)} (logs in {folder})", file=sys.stderr)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("voc-tree")
    t.add_argument("out")
    t.add_argument("--images", type=int, default=64)
    t.add_argument("--scale", type=float, default=1.0)
    s = sub.add_parser("summarize")
    s.add_argument("folder")
    s.add_argument("--voc-desc", default="VOC sizes")
    s.add_argument("--wall", type=float, default=None)
    args = p.parse_args(argv)
    if args.cmd == "voc-tree":
        voc_tree(Path(args.out), args.images, args.scale)
        return 0
    report = summarize(Path(args.folder), args.voc_desc, args.wall)
    return 1 if any(r["rc"] not in ("0", "absent") for r in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
