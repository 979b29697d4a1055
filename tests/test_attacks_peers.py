"""Peer checks: rbseg's PGD, SegPGD and CosPGD against the ``cospgd`` package (PyPI) run the way its
repository's attack loop runs it (benchmarks/attack_speed.py ``reference_loop``). Skipped when the
package is not installed (``pip install -e '.[test]'`` installs it).

Tolerance: with a batch size that is a power of two the adversarial images are bit-identical (atol
0). The only difference between the two computations is the objective's constant factor: the
package's loop takes ``.mean()`` over N x H x W pixels for PGD and CosPGD, rbseg sums per-image
means (sum / (H x W), so that an image's gradient does not depend on its batch size); the factor N
is exact in floating point when N = 2^k, so every gradient sign agrees. For other N the factor
rounds, and a near-zero gradient component may flip sign (a value moves by 2 x step): checked as
at most 1% of values differing and mIoU within 0.5 points.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from robustbench_seg.attacks.perimage import build_attacks, run_attack
from robustbench_seg.evaluation.metric import confusion_matrix, metrics_from_confusion

pytest.importorskip("cospgd")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from attack_speed import reference_loop  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallSegNet(torch.nn.Module):
    """0-255 input; BatchNorm (eval) and a stride-2 layer, logits upsampled to the input size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(12)
        self.c2 = torch.nn.Conv2d(12, 21, 3, stride=2, padding=1)
        self.eval()

    def forward(self, x):
        out = self.c2(torch.relu(self.bn(self.c1((x - 128.0) / 64.0))))
        return torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _data(n: int):
    net = SmallSegNet()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, 16, 16, generator=g) * 255
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:, :, -3:] = 255  # void band
    return net, x, y


def _miou(net, x, y):
    with torch.no_grad():
        return metrics_from_confusion(confusion_matrix(net(x).argmax(1), y)).miou


@pytest.mark.parametrize("attack", ["pgd", "segpgd", "cospgd"])
def test_matches_cospgd_package_bit_for_bit(attack):
    net, x, y = _data(4)
    spec = build_attacks([attack], [4.0], steps=5, step_size=1.0, random_start=False)[0]
    ref, _ = reference_loop(net, x, y, attack, 4.0, 1.0, 5)
    ours = run_attack(spec, net, x, y)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, x)  # the attack moved


def test_random_start_matches_the_package_init_linf():
    net, x, y = _data(2)
    spec = build_attacks(["segpgd"], [4.0], steps=3, step_size=1.0, random_start=True)[0]
    torch.manual_seed(7)  # the package draws its start from the global generator
    ref, _ = reference_loop(net, x, y, "segpgd", 4.0, 1.0, 3, random_start=True)
    ours = run_attack(spec, net, x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("attack", ["pgd", "cospgd"])
def test_batch_of_three_within_tolerance(attack):
    net, x, y = _data(3)
    spec = build_attacks([attack], [4.0], steps=5, step_size=1.0, random_start=False)[0]
    ref, _ = reference_loop(net, x, y, attack, 4.0, 1.0, 5)
    ours = run_attack(spec, net, x, y)
    assert float(((ours - ref).abs() > 0).float().mean()) <= 0.01
    assert abs(_miou(net, ours, y) - _miou(net, ref, y)) <= 0.5


def test_attack_speed_benchmark_runs_and_reports_identical_results(tmp_path):
    import json

    import attack_speed

    out = tmp_path / "speed.json"
    rc = attack_speed.main(["--model", "deeplabv3_tiny", "--images", "2", "--size", "32x32", "--steps", "2",
                            "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["attack"] for r in rows] == ["pgd", "segpgd", "cospgd"]
    for r in rows:
        assert r["max_abs_diff"] == 0.0 and r["miou_reference"] == r["miou_rbseg"]
        assert r["reference_img_it_per_s"] > 0 and r["rbseg_img_it_per_s"] > 0
