"""benchmarks/gpu_check.sh and its helper gpu_summary.py (the full --tiny run takes ~2 min: run by hand)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_summary  # noqa: E402


def test_summary_merges_benchmark_jsons_and_gpu_busy_per_step(tmp_path):
    (tmp_path / "environment.json").write_text(json.dumps({"gpu": "FakeGPU", "torch": "2.x", "device_arg": "cuda"}))
    (tmp_path / "eval_512.json").write_text(json.dumps({
        "model": {"name": "deeplabv3_resnet101"}, "images": 4, "inputs": ["clean", "a"], "distinct_sizes": 1,
        "speedup": 5.0, "loops": {"engine": {"image_evals_per_s": 50.0, "dtype": "bfloat16"},
                                  "reference": {"image_evals_per_s": 10.0}}}))
    (tmp_path / "train.json").write_text(json.dumps({"arch": "a", "results": [
        {"config": "baseline", "images_per_s": 8.0}, {"config": "segmix", "images_per_s": 7.0}]}))
    (tmp_path / "attack.json").write_text(json.dumps({"rows": [
        {"attack": "pgd", "rbseg_img_it_per_s": 30.0, "reference_img_it_per_s": 3.0, "speedup": 10.0}]}))
    (tmp_path / "steps.tsv").write_text("eval_512\t100.0\t110.0\t0\ntrain\t110.0\t120.0\t0\n"
                                        "attack\t120.0\t130.0\t124\ncorruption\t-\t-\tabsent\n")
    (tmp_path / "gpu_util.log").write_text("101.0 80,1000\n105.0 100,2000\nbad line\n115.0 50,3000\n")
    report = gpu_summary.summarize(tmp_path, wall=30)
    md = (tmp_path / "gpu_check.md").read_text()
    assert json.loads((tmp_path / "gpu_check.json").read_text())["schema"] == "rbseg-gpu-check/1"
    assert report["steps"]["eval_512"]["gpu_busy_fraction"] == 0.9 and report["steps"]["train"]["max_memory_mib"] == 3000
    assert "| 50 image-evals/s | 10 image-evals/s | 5 x | 90% |" in md
    assert "training step, segmix" in md and "attack pgd vs the cospgd loop" in md
    assert "| attack | 10.0 | 124 |" in md  # the failed (timed-out) step is visible
    assert gpu_summary.main(["summarize", str(tmp_path)]) == 1  # a failed step: non-zero exit


def test_voc_tree_cycles_voc_sizes(tmp_path):
    from PIL import Image

    root = gpu_summary.voc_tree(tmp_path, images=3, scale=0.1)
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    sizes = [Image.open(root / "JPEGImages" / f"{i}.jpg").size for i in ids]  # (W, H)
    assert len(ids) == 3 and sizes == [(50, 38), (38, 50), (50, 33)]


def test_script_rejects_unknown_option_and_has_help():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
    ok = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--tiny" in ok.stdout
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
