"""The benchmark helpers and loops (benchmarks/*.py): correctness only, never timings."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustbench_seg.data import voc
from robustbench_seg.data.transforms import normalize
from robustbench_seg.evaluation.metric import confusion_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402
import cost_growth  # noqa: E402
import eval_speed  # noqa: E402


class SmallNet(torch.nn.Module):
    """Random conv net with BatchNorm, logits at half resolution (so the loops must upsample)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 21, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return {"out": self.conv2(F.relu(self.bn(self.conv1(x))))}


def test_conv_flops_hand_computed():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    # 2 FLOPs per multiply-add: 2 * (3 * 3 * 3) * 8 outputs channels * 10 * 12 positions
    assert common.count_forward_flops(conv, torch.zeros(1, 3, 10, 12)) == 2 * 27 * 8 * 120
    net = SmallNet().eval()
    table = common.FlopTable(net, torch.device("cpu"))
    assert table.meta is not None  # counted on a meta copy: nothing computed
    expected = 2 * 27 * 8 * 20 * 24 + 2 * 72 * 21 * 10 * 12  # conv1 at 20x24, conv2 (stride 2) at 10x12
    assert table(20, 24) == expected == common.count_forward_flops(net, torch.zeros(1, 3, 20, 24))


def test_least_squares_recovers_unit_costs():
    rows = [[1, n, n * p] for n, p in [(100, 0), (100, 1), (100, 5), (100, 10), (400, 5)]]
    times = [0.5 + 0.01 * r[1] + 0.002 * r[2] for r in rows]
    fit = cost_growth.least_squares(rows, times, ["fixed", "image", "pert"])
    assert fit["coefficients"] == pytest.approx({"fixed": 0.5, "image": 0.01, "pert": 0.002})
    assert fit["r2"] == pytest.approx(1.0)
    assert cost_growth.eval_points(100, [0, 1, 5], [100, 400]) == [(100, 0), (100, 1), (100, 5), (400, 5)]
    points = [{"images": n, "perturbations": p, "best_seconds": t} for n, p, t in [(100, 0, 1.0), (100, 1, 1.5), (100, 5, 3.5), (400, 5, 11.0)]]
    marginal = {m["step"]: m["ms_per_unit"] for m in cost_growth.marginal_costs(points)}
    # 0.5 s for 100 perturbation-images = 5 ms; 2 s for 400 = 5 ms; 7.5 s for 300 more images = 25 ms
    assert marginal == pytest.approx({"N 100->100, P 0->1": 5.0, "N 100->100, P 1->5": 5.0, "N 100->400, P 5->5": 25.0})


def test_gpu_peak_table_lookup():
    assert common.gpu_peak_entry("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert common.gpu_peak_entry("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert common.gpu_peak_entry("NVIDIA H200")[1]["bf16"] == pytest.approx(989.4)
    assert common.gpu_peak_entry("NVIDIA A100-SXM4-80GB")[1]["bf16"] == pytest.approx(312.0)
    assert common.gpu_peak_entry("Tesla T4") is None
    assert common.parse_size("512x384") == (512, 384)
    with pytest.raises(ValueError):
        common.parse_size("512")


def test_synthetic_tree_is_valid_and_deterministic(tmp_path):
    a = common.write_synthetic_tree(tmp_path / "a", 4, side_range=(30, 40), seed=3)
    b = common.write_synthetic_tree(tmp_path / "b", 4, side_range=(30, 40), seed=3)
    ids = voc.read_split(a, "val")
    assert len(ids) == 4
    for i in ids:
        mask = voc.read_mask(voc.mask_path(a, i, "val"))  # validated: labels 0-20 and 255
        assert mask.shape == voc.read_image(voc.image_path(a, i)).shape[:2]
        assert 30 <= mask.shape[0] <= 40 and (mask == 255).any() and len(np.unique(mask)) > 2
        assert np.array_equal(mask, voc.read_mask(voc.mask_path(b, i, "val")))
    fixed = common.write_synthetic_tree(tmp_path / "c", 2, size=(24, 32))
    assert voc.read_image(voc.image_path(fixed, voc.read_split(fixed, "val")[1])).shape == (24, 32, 3)


def test_reference_loop_equals_engine(tmp_path):
    root = common.write_synthetic_tree(tmp_path, 6, side_range=(28, 34), seed=1)
    ids = voc.read_split(root, "val")
    deltas = [None, *common.random_perturbations(2, side=20)]
    net = SmallNet().eval()
    cpu = torch.device("cpu")
    ref = eval_speed.reference_loop(net, root, "val", ids, deltas, cpu)
    # hand-rolled per-image check of the reference's first input
    first = sum(
        confusion_matrix(
            F.interpolate(net(normalize(torch.from_numpy(voc.read_image(voc.image_path(root, i))).permute(2, 0, 1)[None].float()))["out"],
                          size=voc.read_image(voc.image_path(root, i)).shape[:2], mode="bilinear", align_corners=False).argmax(1)[0],
            torch.from_numpy(voc.read_mask(voc.mask_path(root, i, "val")).astype(np.int64)))
        for i in ids)
    assert np.array_equal(ref[0], first.detach().numpy())
    eng = eval_speed.engine_loop(net, root, "val", ids, deltas, cpu, torch.float32, batch_size=4)
    assert np.array_equal(ref, eng)
    assert not np.array_equal(ref[0], ref[1])  # the perturbations change predictions


def test_normalize_constants_cached_and_differentiable():
    with torch.inference_mode():
        y = normalize(torch.full((1, 3, 2, 2), 255.0))
    x = torch.full((1, 3, 2, 2), 255.0, requires_grad=True)
    z = normalize(x)  # the cached constants were made outside inference mode: autograd may save them
    z.sum().backward()
    assert torch.allclose(y, z.detach())
    assert torch.allclose(x.grad[0, :, 0, 0], 1 / torch.tensor([58.395, 57.12, 57.375]), rtol=1e-4)
    assert normalize(torch.zeros(1, 3, 1, 1, dtype=torch.float64)).dtype == torch.float64


def test_peak_memory_sees_an_allocation():
    with common.PeakMemory(torch.device("cpu")) as pm:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert pm.peak_bytes is not None and pm.peak_bytes > 0 and pm.method


def test_eval_speed_end_to_end(synth_micro_root, tmp_path, capsys):
    out = tmp_path / "es.json"
    rc = eval_speed.main(["--model", "deeplabv3_tiny", "--binding", "--data", str(synth_micro_root), "--images", "3",
                          "--repeats", "1", "--peak-seconds", "0.1", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["images"] == 3 and len(r["inputs"]) == 6 and r["image_evaluations"] == 18
    assert r["miou_agreement"]["within_tolerance"] is True
    for loop in r["loops"].values():
        assert loop["image_evals_per_s"] > 0 and loop["achieved_tflops"] > 0 and loop["peak_memory_bytes"] > 0
    assert r["loops"]["reference"]["batch"] == 1 and r["loops"]["reference"]["dtype"] == "float32"
    assert "evaluation speed" in capsys.readouterr().out
    assert eval_speed.main(["--size", "12"]) == 2  # bad input: one line, non-zero exit
