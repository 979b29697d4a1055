"""DeepFool on hand-computable classifiers, the UAP loop, resume, surrogates and crop extraction."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_seg.attacks.deepfool import STEP_EPS, deepfool
from robustbench_seg.attacks.uap import UAPConfig, fooling_rate, project, universal_perturbation
from robustbench_seg.errors import CheckpointError, RbsegError


# --- DeepFool -----------------------------------------------------------------------------------------

def _linear3():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
        lin.bias[:] = torch.tensor([0.0, 0.0, -5.0])
    return lin.eval()


def test_deepfool_linear_classifier_matches_hand_computation():
    """f = (x1, x2, -x1 - x2 - 5). At x = (2, 1): label 0; the boundary with class 1 is
    w = (-1, 1), f' = -1, distance 1/sqrt(2); with class 2: w = (-2, -1), f' = -10, 10/sqrt(5).
    So r = (1/sqrt(2) + 1e-4) * (-1, 1)/sqrt(2), times 1.02 overshoot; one step suffices."""
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    res = deepfool(_linear3(), x, num_classes=3, overshoot=0.02)
    d1 = 1 / math.sqrt(2)
    r0 = 1.02 * (d1 + STEP_EPS) * torch.tensor([-1.0, 1.0]) / math.sqrt(2)
    # x = (0, 3): label 1; class 0: w = (1, -1), f' = -3, 3/sqrt(2); class 2: w = (-1, -2), f' = -11, 11/sqrt(5)
    r1 = 1.02 * (3 / math.sqrt(2) + STEP_EPS) * torch.tensor([1.0, -1.0]) / math.sqrt(2)
    assert torch.allclose(res.r[0], r0, atol=1e-6) and torch.allclose(res.r[1], r1, atol=1e-6)
    assert res.iterations.tolist() == [1, 1] and res.label.tolist() == [0, 1] and res.final_label.tolist() == [1, 0]
    assert bool(res.fooled.all())
    # minimal: without the overshoot the step lands (almost) on the boundary f_0 = f_1
    on_boundary = x[0] + res.r[0] / 1.02
    f = _linear3()(on_boundary[None])[0].detach()
    assert abs(float(f[0] - f[1])) < 1e-3


def test_deepfool_restricts_to_top_classes():
    """f = (0, -1 + 0.1 x1, -2 + 10 x2). At x = 0 the ranking is 0, 1, 2, but the boundary with the
    third class is nearer (2 / 10 = 0.2) than with the second (1 / 0.1 = 10)."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 10.0]])
        lin.bias[:] = torch.tensor([0.0, -1.0, -2.0])
    x = torch.zeros(1, 2)
    all3 = deepfool(lin.eval(), x, num_classes=3, overshoot=0.02)
    assert torch.allclose(all3.r[0], 1.02 * (0.2 + STEP_EPS) * torch.tensor([0.0, 1.0]), atol=1e-6)
    assert all3.final_label.item() == 2
    top2 = deepfool(lin, x, num_classes=2, overshoot=0.02)  # only class 1 is a candidate
    assert torch.allclose(top2.r[0], 1.02 * (10.0 + STEP_EPS) * torch.tensor([1.0, 0.0]), atol=1e-4)
    assert top2.final_label.item() == 1


def test_deepfool_batched_equals_one_at_a_time():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    x = torch.randn(6, 3, 2, 2) * 2
    batched = deepfool(net, x, num_classes=4, overshoot=0.02, max_iter=50)
    for i in range(6):
        single = deepfool(net, x[i:i + 1], num_classes=4, overshoot=0.02, max_iter=50)
        assert torch.allclose(batched.r[i], single.r[0], atol=1e-5)
        assert batched.iterations[i] == single.iterations[0]
    assert bool(batched.fooled.all())
    assert bool((net(x + batched.r).argmax(1) != batched.label).all())


def test_deepfool_max_iter_bounds_steps():
    net = _linear3()
    res = deepfool(net, torch.tensor([[2.0, 1.0]]), num_classes=3, overshoot=-0.9, max_iter=3)  # undershoot: never crosses
    assert res.iterations.item() == 3 and not bool(res.fooled.any())


# --- projection and the UAP loop ----------------------------------------------------------------------

def test_project_linf_and_l2():
    v = torch.tensor([3.0, -12.0, 0.5])
    assert torch.equal(project(v, 10, "inf"), torch.tensor([3.0, -10.0, 0.5]))
    w = torch.tensor([6.0, 8.0])  # norm 10
    assert torch.allclose(project(w, 5, "2"), torch.tensor([3.0, 4.0]))
    assert torch.equal(project(w, 20, "2"), w)


class MeanThreshold(nn.Module):
    """Two classes on 0-255 images: class 1 iff the mean pixel exceeds 140 (linear)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(m), 0.5 * (m - 140.0)], 1)


def _toy_images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(n).uniform_(132, 139, generator=g)  # label 0, within reach of xi = 10
    means[: n // 8] = 160.0  # 12.5% label 1, pushed further away by a uniform shift up
    noise = torch.randn(n, 3, 4, 4, generator=g)
    noise = noise - noise.flatten(1).mean(1).view(-1, 1, 1, 1)
    return means.view(-1, 1, 1, 1) + noise


@pytest.mark.parametrize("norm,xi", [("inf", 10.0), ("2", 10.0 * math.sqrt(48))])
def test_uap_reaches_fooling_target_within_the_ball(norm, xi):
    clf, images = MeanThreshold(), _toy_images()
    cfg = UAPConfig(xi=xi, norm=norm, delta=0.2, max_passes=10, batch_size=8, seed=1, clip=False)
    res = universal_perturbation(clf, images, cfg)
    assert res.reached_target and res.fooling_rate >= 0.8
    assert res.fooling_rate == pytest.approx(fooling_rate(clf, images, res.v, clip=False))
    if norm == "inf":
        assert float(res.v.abs().max()) <= xi + 1e-6
    else:
        assert float(res.v.norm()) <= xi + 1e-4
    assert res.passes == len(res.history) and res.passes <= 10
    # the label-1 images (mean 160) cannot be fooled by an upward shift, so the rate is below 1
    assert res.fooling_rate <= 1 - 1 / 8 + 1e-9


def test_uap_batch_size_one_is_the_sequential_algorithm():
    """batch_size=1 re-checks and updates v after every image, exactly Algorithm 1."""
    clf, images = MeanThreshold(), _toy_images(16)
    cfg = UAPConfig(xi=10, norm="inf", batch_size=1, max_passes=1, delta=0.0, seed=3, clip=False)
    res = universal_perturbation(clf, images, cfg)
    # hand-run Algorithm 1 with the same shuffle
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    v = torch.zeros(3, 4, 4)
    clean = clf(images).argmax(1)
    for i in order.tolist():
        x = images[i:i + 1]
        if clf(x + v).argmax(1) == clean[i]:
            r = deepfool(clf, x + v, num_classes=10, overshoot=0.02, max_iter=10)
            if r.iterations[0] < 9:  # the authors' convergence test with max_iter_df = 10
                v = (v + r.r[0]).clamp(-10, 10)
    assert torch.allclose(res.v, v, atol=1e-5)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 6)).eval()


def test_uap_resume_equals_uninterrupted(tmp_path):
    clf = _mlp()
    images = torch.rand(24, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 255
    cfg = UAPConfig(xi=3.0, max_passes=3, delta=0.0, batch_size=5, seed=2)
    full = universal_perturbation(clf, images, cfg)
    assert full.passes == 3

    state = tmp_path / "state.pt"

    def interrupt(ev):
        if ev["event"] == "batch" and ev["pass"] == 2 and ev["done"] >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        universal_perturbation(clf, images, cfg, state_path=state, callback=interrupt)
    assert state.is_file()
    resumed = universal_perturbation(clf, images, cfg, state_path=state, resume=True)
    assert torch.equal(resumed.v, full.v) and resumed.passes == 3
    assert [h["fooling_rate"] for h in resumed.history] == [h["fooling_rate"] for h in full.history]
    # a state from other options is refused
    with pytest.raises(CheckpointError, match="different UAP run"):
        universal_perturbation(clf, images, UAPConfig(xi=4.0, max_passes=3, delta=0.0, batch_size=5, seed=2),
                               state_path=state, resume=True)


def test_uap_config_validation():
    with pytest.raises(RbsegError):
        UAPConfig(norm="1")
    assert UAPConfig(norm="linf").norm == "inf"


# --- surrogates and crops ------------------------------------------------------------------------------

def test_square_crop_by_hand():
    from robustbench_seg.attacks.surrogate import square_crop

    img = np.arange(10 * 8 * 3, dtype=np.uint8).reshape(10, 8, 3)  # H 10, W 8
    # VOC box x 2..4, y 3..8 (1-based inclusive): 3 wide, 6 tall -> square of side 6 centred at
    # x = (1 + 4) / 2 = 2.5 -> start round(2.5 - 3) = 0 (round half to even: -0.5 -> -0 -> 0); y start 2
    out = square_crop(img, (2, 3, 4, 8), size=6)
    assert out.shape == (3, 6, 6)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), img[2:8, 0:6])
    # a box wider than the image: mean-padded where the image ends
    wide = square_crop(img, (1, 1, 8, 2), size=8)
    assert np.array_equal(wide.permute(1, 2, 0).numpy(), img[0:8, 0:8])


def test_warp_crop_by_hand():
    from robustbench_seg.attacks.surrogate import warp_crop

    img = np.arange(10 * 8 * 3, dtype=np.uint8).reshape(10, 8, 3)
    out = warp_crop(img, (2, 3, 4, 8), size=4)  # the 3 x 6 box, resized to 4 x 4
    assert out.shape == (3, 4, 4)
    same = warp_crop(img, (2, 3, 5, 6), size=4)  # a 4 x 4 box: the pixels themselves
    assert np.array_equal(same.permute(1, 2, 0).numpy(), img[2:6, 1:5])


def test_extract_crops_on_synth_micro(synth_micro_root):
    from robustbench_seg.attacks.surrogate import extract_crops
    from robustbench_seg.data import voc

    x, y, owners = extract_crops(synth_micro_root, "train", size=32)
    objects = [(i, o) for i in voc.read_split(synth_micro_root, "train")
               for o in voc.read_annotation(voc.annotation_path(synth_micro_root, i))
               if min(o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) + 1 >= 4]
    assert x.shape == (len(objects), 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [o.label - 1 for _, o in objects] and owners == [i for i, _ in objects]
    assert int(y.min()) >= 0 and int(y.max()) <= 19
    # from the instance masks instead of the XML: the same objects and labels (boxes can differ by the
    # 1-px void boundary, so compare without the minimum-side filter)
    _, ya, oa = extract_crops(synth_micro_root, "train", size=32, min_side=1, source="annotations")
    _, yi, oi = extract_crops(synth_micro_root, "train", size=32, min_side=1, source="instances")
    assert yi.tolist() == ya.tolist() and oi == oa


def test_train_surrogate_smoke_and_loading(synth_micro_root, tmp_path, monkeypatch):
    from robustbench_seg.attacks.surrogate import load_classifier, train_surrogate

    path = train_surrogate("googlenet", synth_micro_root, tmp_path / "sur", epochs=1, input_size=32, device="cpu")
    assert path == tmp_path / "sur" / "googlenet.pt" and not (path.parent / "googlenet.pt.state").exists()
    clf, info = load_classifier(path)
    assert info["kind"] == "surrogate" and info["arch"] == "googlenet" and info["input_size"] == 32
    assert 0.0 <= info["metrics"]["train_acc"] <= 1.0 and "val_acc" in info["metrics"]
    assert clf(torch.rand(2, 3, 32, 32) * 255).shape == (2, 20)
    from robustbench_seg.io import atomic_torch_save

    atomic_torch_save(tmp_path / "foreign.pt", {"state_dict": {}, "format": "something-else"})
    with pytest.raises(CheckpointError, match="not an rbseg surrogate checkpoint"):
        load_classifier(tmp_path / "foreign.pt")
    with pytest.raises(RbsegError, match="neither"):
        load_classifier(tmp_path / "missing.pt")


def test_imagenet_surrogate_offline_error_and_local_weights(tmp_path, monkeypatch):
    import torchvision

    from robustbench_seg.attacks.surrogate import load_classifier

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        lambda self, *a, **k: (_ for _ in ()).throw(OSError("no network")), raising=False)
    with pytest.raises(RbsegError, match="--weights PATH"):
        load_classifier("googlenet")
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "googlenet.pth")
    clf, info = load_classifier("googlenet", weights=tmp_path / "googlenet.pth")
    assert info["kind"] == "imagenet" and len(clf.classes) == 1000 and clf.input_size == 224
    assert clf.net.aux1 is None and clf(torch.rand(1, 3, 64, 64) * 255).shape == (1, 1000)


def test_craft_uap_cli_end_to_end(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.attacks.perturbation import load_perturbation
    from robustbench_seg.attacks.surrogate import train_surrogate
    from robustbench_seg.cli import main

    ckpt = train_surrogate("googlenet", synth_micro_root, tmp_path / "g.pt", epochs=1, input_size=32, device="cpu")
    out = tmp_path / "perts" / "uap-test"
    assert main(["craft", "uap", "--surrogate", str(ckpt), "--data", str(synth_micro_root), "--out", str(out),
                 "--preset", "tiny", "--images", "12", "--max-passes", "1", "--batch-size", "6", "--max-iter-df", "3",
                 "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert "estimated time: about" in captured.err and "rough estimate" in captured.err
    pert = load_perturbation(out)
    m = pert.meta
    assert pert.array.shape == (3, 32, 32) and float(np.abs(pert.array).max()) <= 10.0 + 1e-4
    assert m["method"] == "uap" and m["norm"] == "inf" and m["xi"] == 10.0 and m["passes"] == 1
    assert m["config"]["max_iter_df"] == 3
    assert m["data"]["crafting_set"] == "crops" and m["data"]["n_images"] == 12 and m["source_model"]["arch"] == "googlenet"
    assert 0.0 <= m["fooling_rate"] <= 1.0 and "val_fooling_rate" in m and m["crafting_time_s"] > 0
    assert info["sha256"] == pert.sha256
    assert not list((tmp_path / "perts").glob(".*state*"))
    # a bad surrogate is a one-line error
    assert main(["craft", "uap", "--surrogate", str(tmp_path / "nope.pt"), "--data", str(synth_micro_root),
                 "--out", str(out), "--overwrite"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
