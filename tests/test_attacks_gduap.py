"""GD-UAP: the objective on hand-computed activations, hooks with in-place ReLUs, the
saturation-halving rule, the segmentation fooling rate, the crafting loop, resume, priors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_seg.attacks.gduap import (
    GDUAPConfig, PriorSampler, ValidationSet, background_fraction, capture_norms, craft_gduap, generalizable_uap,
    gduap_loss, gduap_loss_from_norms, partial_ids, saturation, select_layers, should_halve,
)
from robustbench_seg.errors import CheckpointError, RbsegError


def test_loss_on_hand_computed_activations():
    acts = [torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([[[0.5]]])]
    # norms 5, 1, 0.5 -> -(log 5 + log 1 + log 0.5) = -log 2.5
    assert float(gduap_loss(acts)) == pytest.approx(-math.log(2.5))
    assert float(gduap_loss_from_norms([torch.tensor(5.0), torch.tensor(2.0)])) == pytest.approx(-math.log(10.0))
    assert math.isfinite(float(gduap_loss([torch.zeros(3)])))  # floored, not -log 0
    with pytest.raises(RbsegError):
        gduap_loss([])


class ReusedInplaceRelu(nn.Module):
    """One inplace ReLU called twice (as torchvision's Bottleneck does), then an in-place op on its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.relu(self.conv(x))  # first call
        g = self.relu(h - 2.0)  # second call
        g.mul_(10.0)  # in-place on a captured activation
        return {"out": g}


def test_hooks_capture_every_call_before_in_place_changes_and_restore_flags():
    net = ReusedInplaceRelu()
    x = torch.tensor([[[[-1.0, 3.0], [4.0, 0.0]]]])
    mods = select_layers(net)
    assert [n for n, _ in mods] == ["relu"]
    with capture_norms(net, mods) as norms:
        assert net.relu.inplace is False
        net(x)
        # call 1: relu(x) = [0, 3, 4, 0] -> 5; call 2: relu(h - 2) = [0, 1, 2, 0] -> sqrt(5) (before the *10)
        assert [float(n.detach()) for n in norms] == pytest.approx([5.0, math.sqrt(5.0)])
    assert net.relu.inplace is True
    net(x)  # hooks removed: nothing more is collected
    assert len(norms) == 2


def test_select_layers_by_name_and_errors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    assert [n for n, _ in select_layers(net)] == ["1", "3"]
    assert [n for n, _ in select_layers(net, ("2",))] == ["2"]
    with pytest.raises(RbsegError, match="no module named"):
        select_layers(net, ("nope",))
    with pytest.raises(RbsegError, match="no nn.ReLU"):
        select_layers(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Tanh()))


def test_saturation_and_halving_rule():
    v = torch.tensor([10.0, -10.0, 10.0, 3.0, -10.0])  # 4 of 5 at +-xi
    assert saturation(v, 10.0) == pytest.approx(0.8)
    assert should_halve(0.8, 0.8, threshold=0.5, tol=1e-5)
    assert not should_halve(0.8, 0.7, threshold=0.5, tol=1e-5)  # still changing
    assert not should_halve(0.4, 0.4, threshold=0.5, tol=1e-5)  # not saturated
    assert not should_halve(0.5, 0.5, threshold=0.5, tol=1e-5)  # "more than half"


def test_background_fraction_and_partial_prior(synth_micro_root):
    m = np.array([[0, 0, 255], [1, 2, 0]], np.uint8)
    assert background_fraction(m) == pytest.approx(3 / 5)
    assert background_fraction(np.full((2, 2), 255, np.uint8)) == 1.0
    from robustbench_seg.data import voc

    ids = voc.read_split(synth_micro_root, "train")
    chosen = partial_ids(synth_micro_root, "train", 0.1)
    assert len(chosen) == max(1, round(0.1 * len(ids)))
    fr = {i: background_fraction(voc.read_mask(voc.mask_path(synth_micro_root, i, "train"))) for i in ids}
    worst_chosen = max(fr[i] for i in chosen)
    assert all(fr[i] >= worst_chosen for i in ids if i not in chosen)


def test_prior_samples():
    gen = torch.Generator().manual_seed(0)
    none = PriorSampler("none", (4, 5)).sample(gen, torch.device("cpu"))
    assert none.shape == (1, 3, 4, 5) and torch.allclose(none[0, :, 0, 0], torch.tensor([0.485, 0.456, 0.406]) * 255)
    rng = PriorSampler("range", (64, 64), batch_size=16).sample(gen, torch.device("cpu"))
    assert rng.shape == (16, 3, 64, 64) and float(rng.min()) >= 0 and float(rng.max()) <= 255
    assert float(rng[:, 0].std()) == pytest.approx(62.0, rel=0.08) and float(rng[:, 2].mean()) == pytest.approx(103.5, abs=2)
    with pytest.raises(RbsegError):
        PriorSampler("all", (8, 8))


class ThresholdSeg(nn.Module):
    """Predicts class 1 where the red channel exceeds 128, else 0; encoder = a conv + ReLU."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        from robustbench_seg.constants import MEAN_255, STD_255

        red = x[:, 0] * STD_255[0] + MEAN_255[0]  # undo normalize
        logits = torch.zeros(x.shape[0], 21, *x.shape[-2:])
        logits[:, 1] = red - 128.0
        return {"out": logits}


def test_segmentation_fooling_rate_is_one_minus_miou(tmp_path):
    from PIL import Image

    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[100, 120], [130, 200]]
    Image.fromarray(img).save(root / "JPEGImages" / "a.png")  # lossless stand-in, renamed below
    (root / "JPEGImages" / "a.png").rename(root / "JPEGImages" / "a.jpg")
    model = ThresholdSeg().eval()
    val = ValidationSet(model, root, ["a"], torch.device("cpu"))
    v = torch.zeros(3, 1, 1)
    v[0] = 20.0  # tiled: +20 red everywhere -> red 120, 140, 150, 220
    # clean [0, 0, 1, 1], perturbed [0, 1, 1, 1]: IoU0 = 1/2, IoU1 = 2/3 -> fooling = 1 - 7/12
    assert val.fooling_rate(model, v, "tile", True) == pytest.approx(1 - 7 / 12)
    assert val.fooling_rate(model, torch.zeros(3, 1, 1), "tile", True) == pytest.approx(0.0)


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(8, 21, 1)

    def forward(self, x):
        return {"out": self.head(self.backbone(x))}


class _Val:
    """A stand-in validation set: fooling rate = mean |v| / xi (monotone in the perturbation's size)."""

    def fooling_rate(self, model, v, fit, clip):
        return float(v.abs().mean()) / 10.0


def test_loop_increases_objective_and_respects_xi():
    model = TinySeg().eval()
    cfg = GDUAPConfig(prior="none", size=(12, 12), max_iters=30, val_every=10, patience=10, sat_threshold=1.1)
    events = []
    res = generalizable_uap(model, cfg, PriorSampler("none", (12, 12)), _Val(), callback=events.append)
    objective = [e["objective"] for e in events if e["event"] == "iter"]
    assert len(objective) == 30 and objective[-1] > objective[0]
    assert float(res.v.abs().max()) <= 10.0 + 1e-6 and res.v.shape == (3, 12, 12)
    assert [h["iteration"] for h in res.history] == [10, 20, 30] and res.iterations == 30
    assert res.fooling_rate == max(h["fooling_rate"] for h in res.history)
    # the model's flags and grads are untouched for later use
    assert model.backbone[2].inplace is True


def test_loop_halves_a_saturated_perturbation():
    model = TinySeg().eval()
    cfg = GDUAPConfig(prior="none", size=(6, 6), lr=50.0, max_iters=12, val_every=100, patience=10)
    events = []
    res = generalizable_uap(model, cfg, PriorSampler("none", (6, 6)), _Val(), callback=events.append)
    halves = [e for e in events if e["event"] == "halve"]
    assert res.halvings == len(halves) >= 1 and all(e["saturation"] > 0.5 for e in halves)
    first = halves[0]["iteration"]
    sat_before = [e["saturation"] for e in events if e["event"] == "iter" and e["iteration"] in (first - 1, first)]
    assert sat_before[0] == pytest.approx(sat_before[1])  # unchanged over the interval, then halved


def test_early_stop_on_patience():
    class Worse:
        def __init__(self):
            self.calls = 0

        def fooling_rate(self, *a):
            self.calls += 1
            return 1.0 / self.calls

    cfg = GDUAPConfig(prior="none", size=(6, 6), max_iters=100, val_every=2, patience=3, sat_threshold=1.1)
    res = generalizable_uap(TinySeg().eval(), cfg, PriorSampler("none", (6, 6)), Worse())
    assert res.stop_reason == "patience" and res.iterations == 8 and res.best_iteration == 2


def test_resume_equals_uninterrupted(tmp_path):
    cfg = GDUAPConfig(prior="range", size=(10, 10), batch_size=2, max_iters=14, val_every=4, patience=50, seed=3)
    full = generalizable_uap(TinySeg().eval(), cfg, PriorSampler("range", (10, 10), 2), _Val())
    state = tmp_path / "s.pt"

    def stop_at_10(ev):
        if ev["event"] == "iter" and ev["iteration"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generalizable_uap(TinySeg().eval(), cfg, PriorSampler("range", (10, 10), 2), _Val(), state_path=state,
                          callback=stop_at_10)
    resumed = generalizable_uap(TinySeg().eval(), cfg, PriorSampler("range", (10, 10), 2), _Val(), state_path=state, resume=True)
    assert torch.equal(resumed.v, full.v) and resumed.iterations == full.iterations == 14
    assert [h["fooling_rate"] for h in resumed.history] == [h["fooling_rate"] for h in full.history]
    other = GDUAPConfig(prior="range", size=(10, 10), batch_size=2, max_iters=14, val_every=4, patience=50, seed=4)
    with pytest.raises(CheckpointError, match="different GD-UAP run"):
        generalizable_uap(TinySeg().eval(), other, PriorSampler("range", (10, 10), 2), _Val(), state_path=state, resume=True)


def test_craft_gduap_on_torchvision_segmentation_model(synth_micro_root, tmp_path):
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from robustbench_seg.attacks.perturbation import load_perturbation

    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    cfg = GDUAPConfig(prior="partial", size=(32, 32), max_iters=4, val_every=2, val_images=3, batch_size=2)
    pert = craft_gduap(model, synth_micro_root, tmp_path / "gd", cfg=cfg, device="cpu",
                       source_info={"name": "mbv3", "kind": "module"})
    m = load_perturbation(tmp_path / "gd.npy").meta
    assert pert.array.shape == (3, 32, 32) and float(np.abs(pert.array).max()) <= 10.0 + 1e-5
    assert m["method"] == "gd-uap" and m["prior"] == "partial" and m["prior_label"] == "R-Part"
    assert m["prior_data"]["partial_fraction"] == 0.1 and m["prior_data"]["n_images"] >= 1
    assert m["layers"] > 10 and m["iterations"] == 4 and len(m["history"]) == 2 and 0 <= m["fooling_rate"] <= 1
    assert not list(tmp_path.glob(".*state*"))


def test_craft_gd_uap_cli_with_a_checkpoint(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.cli import main
    from robustbench_seg.models import build_model
    from robustbench_seg.models.checkpoint import make_checkpoint, model_config, save_checkpoint

    torch.manual_seed(0)
    model = build_model("deeplabv3_tiny")
    ckpt = save_checkpoint(tmp_path / "tiny.pt", make_checkpoint(model, model_config("deeplabv3_tiny")))
    out = tmp_path / "gd-cli"
    assert main(["craft", "gd-uap", "--source", str(ckpt), "--prior", "none", "--data", str(synth_micro_root),
                 "--out", str(out), "--preset", "tiny", "--size", "24", "24", "--max-iters", "3", "--val-every", "2",
                 "--val-images", "2", "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["config"]["size"] == [24, 24]
    # the sha256 of the exact file crafted on (what the report compares with each evaluated model's)
    from robustbench_seg.io import sha256_file

    assert info["meta"]["source_model"]["sha256"] == sha256_file(ckpt)
    assert main(["craft", "gd-uap", "--source", str(ckpt), "--prior", "none", "--data", str(synth_micro_root),
                 "--out", str(out), "--layers", "nope.relu", "--max-iters", "1", "--overwrite"]) == 2
    assert "no module named" in capsys.readouterr().err
