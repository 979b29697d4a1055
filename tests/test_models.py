"""Architectures, the feature-binding network (Eq. 2), checkpoints, load_model and the zoo."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch.nn import functional as F
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.segmentation import DeepLabV3

from robustbench_seg.errors import CheckpointError, RbsegError
from robustbench_seg.io import atomic_torch_save
from robustbench_seg.models import build_model, list_archs, load_model, model_config
from robustbench_seg.models.binding import FeatureBindingNet
from robustbench_seg.models.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint, state_sha256
from robustbench_seg.models.zoo import load_zoo, zoo_checkpoint
from usermodels import USER_MODULE


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_the_architectures():
    assert {"deeplabv3_resnet101", "deeplabv3_resnet50", "deeplabv3_tiny"} <= set(list_archs())
    with pytest.raises(RbsegError, match="unknown architecture"):
        build_model("deeplabv3_nope")


def test_tiny_is_a_torchvision_deeplabv3_of_a_few_megabytes():
    m = build_model("deeplabv3_tiny").eval()
    assert isinstance(m, DeepLabV3) and m.aux_classifier is None
    n = sum(p.numel() for p in m.parameters())
    assert 0.5e6 < n < 1.5e6  # ~1-3 MB in fp16
    out = m(torch.randn(2, 3, 70, 90))
    assert list(out) == ["out"] and out["out"].shape == (2, 21, 70, 90)
    assert m.backbone(torch.randn(1, 3, 64, 64))["out"].shape[-1] == 8  # output stride 8


def test_resnet50_uses_torchvision_builder_without_aux():
    m = build_model("deeplabv3_resnet50").eval()
    assert isinstance(m, DeepLabV3) and m.aux_classifier is None
    assert m.classifier[-1].out_channels == 21
    with torch.no_grad():
        assert m(torch.randn(1, 3, 33, 33))["out"].shape == (1, 21, 33, 33)


def test_binding_network_outputs_and_eq2_wiring():
    torch.manual_seed(0)
    m = build_model("deeplabv3_tiny", binding=True, fbh_hidden=16).eval()
    assert isinstance(m, FeatureBindingNet) and hasattr(m, "backbone")
    x = torch.randn(2, 3, 48, 56)
    with torch.no_grad():
        out = m(x)
        f = m.backbone(x)["out"]
        s_t, s_p = m.dominant(f), m.phantom(f)
        conv1, _, conv2 = m.fbh
        s_fb = conv2(F.relu(conv1(torch.cat([s_t, s_p], 1))))  # concat -> 1x1 -> ReLU -> 1x1
    up = lambda t: F.interpolate(t, size=(48, 56), mode="bilinear", align_corners=False)  # noqa: E731
    assert set(out) == {"out", "dominant", "phantom", "binding"}
    assert torch.allclose(out["binding"], up(s_fb), atol=1e-5)
    assert torch.allclose(out["dominant"], up(s_t), atol=1e-5)
    assert torch.allclose(out["phantom"], up(s_p), atol=1e-5)
    assert out["out"] is out["binding"]
    assert conv1.in_channels == 42 and conv1.out_channels == 16 and conv2.out_channels == 21
    # the two heads are separate modules with their own weights
    assert m.dominant is not m.phantom


def test_binding_without_fbh_predicts_dominant():
    m = build_model("deeplabv3_tiny", binding=True, fbh=False).eval()
    assert m.fbh is None
    with torch.no_grad():
        out = m(torch.randn(2, 3, 40, 40))
    assert set(out) == {"out", "dominant", "phantom"} and torch.equal(out["out"], out["dominant"])


def test_weights_backbone_from_a_local_file(tmp_path):
    ref = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    m = build_model("deeplabv3_tiny", weights_backbone=str(path))
    own = m.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, ref.state_dict()[k]), k
    foreign = tmp_path / "foreign.pth"
    torch.save({"something.else": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="backbone weights lack"):
        build_model("deeplabv3_tiny", weights_backbone=str(foreign))


def test_weights_backbone_imagenet_offline_gives_a_clear_error(monkeypatch):
    def offline(self, *a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RbsegError, match="--weights-backbone PATH"):
        build_model("deeplabv3_tiny", weights_backbone="imagenet")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _finished_checkpoint(path, binding=False):
    torch.manual_seed(1)
    cfg = model_config("deeplabv3_tiny", binding=binding)
    m = build_model("deeplabv3_tiny", binding=binding)
    ck = make_checkpoint(m, cfg, "training", method="binding" if binding else "baseline",
                         training={"method": "baseline", "preset": "tiny", "val_split": "val"},
                         dataset={"name": "SynthVOC-test", "fingerprint": "abc"},
                         progress={"finished": True}, metrics={"val_miou": 12.5}, resume={})
    save_checkpoint(path, ck)
    return m


def test_checkpoint_round_trip_and_load_model(tmp_path):
    path = tmp_path / "run.pt"
    m = _finished_checkpoint(path, binding=True)
    ck = read_checkpoint(path)
    assert ck["format"] == "rbseg-checkpoint/1" and ck["versions"]["rbseg"]
    model, info = load_model(str(path))
    assert not model.training and info["arch"] == "deeplabv3_tiny" and info["val_miou"] == 12.5
    assert info["model"]["binding"] is True and len(info["sha256"]) == 64
    for k, v in m.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_corrupt_truncated_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    _finished_checkpoint(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "rbseg-checkpoint/1", "obj": CheckpointError("x")}, pickled)
    for path in (truncated, corrupt, foreign, pickled, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError) as exc:
            load_model(str(path))
        msg = str(exc.value)
        assert str(path) in msg and "\n" not in msg
    # an rbseg checkpoint whose weights do not fit its recorded architecture
    ck = read_checkpoint(good)
    ck["model"]["binding"] = True
    mismatched = tmp_path / "mismatched.pt"
    atomic_torch_save(mismatched, ck)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(str(mismatched))


def test_unknown_spec_is_a_one_line_error():
    with pytest.raises(RbsegError, match="not a zoo name"):
        load_model("no-such-model")


# ---------------------------------------------------------------------------------------------
# module:function
# ---------------------------------------------------------------------------------------------


def test_load_model_module_function(tmp_path, monkeypatch):
    (tmp_path / "rbseg_user_seg.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, info = load_model("rbseg_user_seg:build")
    assert info["source"] == "module" and not model.training and len(info["sha256"]) == 64
    torch.manual_seed(5)
    ref = __import__("rbseg_user_seg").build()
    for name, wrapped in (("plain.pt", ref.state_dict()), ("wrapped.pt", {"state_dict": ref.state_dict()})):
        torch.save(wrapped, tmp_path / name)
        loaded, info = load_model("rbseg_user_seg:build", weights=str(tmp_path / name))
        assert torch.equal(loaded.head.weight, ref.head.weight)
        assert info["sha256"] != state_sha256({})
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model("rbseg_user_seg:build", weights=str(tmp_path / "bad.pt"))
    with pytest.raises(RbsegError, match="expected a torch.nn.Module"):
        load_model("rbseg_user_seg:not_a_model")
    with pytest.raises(RbsegError, match="cannot import"):
        load_model("rbseg_no_such_module:build")
    with pytest.raises(RbsegError, match="no callable"):
        load_model("rbseg_user_seg:missing")


# ---------------------------------------------------------------------------------------------
# Zoo
# ---------------------------------------------------------------------------------------------


def test_zoo_by_name_and_sha256_mismatch(tmp_path, monkeypatch):
    from robustbench_seg.training import export_to_zoo

    run = tmp_path / "run.pt"
    m = _finished_checkpoint(run)
    home = tmp_path / "home"
    path = export_to_zoo("baseline", run, home / "models", evaluate=False)
    monkeypatch.setenv("RBSEG_HOME", str(home))
    entry = load_zoo()["baseline"]
    assert entry["file"] == "baseline.pt" and entry["val_miou"] == 12.5 and entry["dtype"] == "float16"
    assert entry["dataset"]["name"] == "SynthVOC-test" and entry["num_params"] == sum(p.numel() for p in m.parameters())
    assert "rbseg train --method baseline" in entry["command"]
    stored = torch.load(path, weights_only=True)
    assert "resume" not in stored and stored["kind"] == "inference"
    assert all(v.dtype == torch.float16 for v in stored["state_dict"].values() if v.is_floating_point())
    model, info = load_model("baseline")
    assert info["source"] == "zoo" and info["sha256"] == entry["sha256"]
    for k, v in m.state_dict().items():
        expect = v.half().float() if v.is_floating_point() else v
        assert torch.equal(model.state_dict()[k], expect), k
    # a changed file no longer matches its manifest sha256
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model("baseline")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        zoo_checkpoint("baseline")


def test_export_refuses_an_unfinished_run(tmp_path):
    from robustbench_seg.training import export_to_zoo

    m = build_model("deeplabv3_tiny")
    ck = make_checkpoint(m, model_config("deeplabv3_tiny"), "training", progress={"finished": False}, resume={})
    save_checkpoint(tmp_path / "run.pt", ck)
    with pytest.raises(RbsegError, match="has not finished"):
        export_to_zoo("baseline", tmp_path / "run.pt", tmp_path / "models", evaluate=False)
