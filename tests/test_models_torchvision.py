"""``--model torchvision:NAME[:WEIGHTS]``: loaded from the torch hub cache or --weights, offline-safe.

A randomly initialised network saved under the weights URL's file name in a fake hub cache stands
in for torchvision's published file (no download)."""
from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch

from robustbench_seg.errors import CheckpointError, RbsegError
from robustbench_seg.models import load_model, torchvision_zoo
from robustbench_seg.models.torchvision_zoo import cache_path, parse_spec

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "lraspp_mobilenet_v3_large"  # the smallest of torchvision's segmentation models (3 M parameters)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path; any download attempt fails like a machine without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RBSEG_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    import torchvision.models._api as tv_api

    # the builder must not fetch an ImageNet backbone (torchvision's weights API)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _published_like(name: str, aux: bool) -> dict:
    import torchvision.models as tvm

    torch.manual_seed(0)
    return tvm.get_model_builder(name)(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux).state_dict()


def test_weights_file_name_is_the_url_basename_in_the_hub_cache(hub):
    _, weights = parse_spec(f"{NAME}:COCO_WITH_VOC_LABELS_V1")
    assert cache_path(weights) == hub / os.path.basename(weights.url)
    assert cache_path(weights).name == "lraspp_mobilenet_v3_large-d234d4ea.pth"


def test_load_from_the_hub_cache_records_the_published_miou(hub):
    _, weights = parse_spec(NAME)  # default: DEFAULT = COCO_WITH_VOC_LABELS_V1
    hub.mkdir(parents=True)
    state = _published_like(NAME, aux=False)
    torch.save(state, cache_path(weights))
    model, info = load_model(f"torchvision:{NAME}")
    assert not model.training and info["source"] == "torchvision"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    pub = info["published"]
    assert pub["dataset"] == "COCO-val2017-VOC-labels" and pub["miou"] == 57.9
    assert info["spec"] == f"torchvision:{NAME}:COCO_WITH_VOC_LABELS_V1" and info["sha256"]
    with torch.no_grad():
        from robustbench_seg.evaluation.engine import forward_logits

        assert forward_logits(model, torch.rand(1, 3, 40, 56) * 255).shape == (1, 21, 40, 56)


def test_local_weights_file_with_aux_classifier_is_read_without_network(hub, tmp_path):
    name = "deeplabv3_mobilenet_v3_large"  # its published file has the aux classifier: dropped
    path = tmp_path / "copy.pth"
    state = _published_like(name, aux=True)
    assert any(k.startswith("aux_classifier.") for k in state)
    torch.save(state, path)
    model, info = load_model(f"torchvision:{name}:COCO_WITH_VOC_LABELS_V1", weights=path)
    assert not any(k.startswith("aux_classifier.") for k in model.state_dict())
    assert info["path"] == str(path) and info["published"]["miou"] == 60.3


def test_offline_without_a_file_is_one_line_naming_the_expected_path(hub):
    _, weights = parse_spec(NAME)
    with pytest.raises(RbsegError) as err:
        load_model(f"torchvision:{NAME}:COCO_WITH_VOC_LABELS_V1")
    msg = str(err.value)
    assert "\n" not in msg and str(cache_path(weights)) in msg and "lraspp_mobilenet_v3_large-d234d4ea.pth" in msg
    assert "URLError" in msg and "--weights" in msg and weights.url in msg


def test_offline_env_skips_the_download(hub, monkeypatch):
    monkeypatch.setenv("RBSEG_OFFLINE", "1")
    monkeypatch.setattr(torchvision_zoo, "_download", lambda *a: pytest.fail("download attempted"))
    with pytest.raises(RbsegError, match="RBSEG_OFFLINE"):
        load_model(f"torchvision:{NAME}")


def test_offline_cli_error_is_one_line(hub, capsys, synth_micro_root):
    from robustbench_seg.cli import main

    rc = main(["evaluate", "--model", f"torchvision:{NAME}", "--data", str(synth_micro_root), "--out",
               str(hub.parent / "res"), "--perturbations", "none", "--subsets", "none"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "d234d4ea.pth" in err and "Traceback" not in err


def test_unknown_name_or_weights_and_wrong_file_are_one_line(hub, tmp_path):
    with pytest.raises(RbsegError, match="unknown segmentation model 'deeplabv9'.*lraspp_mobilenet_v3_large"):
        load_model("torchvision:deeplabv9")
    with pytest.raises(RbsegError, match="unknown weights 'IMAGENET'.*COCO_WITH_VOC_LABELS_V1"):
        load_model(f"torchvision:{NAME}:IMAGENET")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(f"torchvision:{NAME}", weights=bad)


def test_random_weights_spec_builds_offline(hub):
    model, info = load_model(f"torchvision:{NAME}:none")
    assert info["published"] is None and info["name"] == f"torchvision-{NAME}-none"
    assert model.classifier.high_classifier.out_channels == 21


def test_evaluate_records_the_published_miou_beside_ours(hub, tmp_path, capsys, synth_micro_root):
    from robustbench_seg.cli import main

    _, weights = parse_spec(NAME)
    hub.mkdir(parents=True)
    torch.save(_published_like(NAME, aux=False), cache_path(weights))
    out = tmp_path / "res"
    rc = main(["evaluate", "--model", f"torchvision:{NAME}", "--data", str(synth_micro_root), "--out", str(out),
               "--perturbations", "none", "--subsets", "none", "--batch-size", "4", "--workers", "0"])
    assert rc == 0
    assert "published mIoU 57.9 on COCO-val2017-VOC-labels" in capsys.readouterr().out
    (path,) = out.rglob("clean.json")
    rec = __import__("json").loads(path.read_text())
    assert rec["model"]["published"]["miou"] == 57.9 and rec["model"]["spec"] == f"torchvision:{NAME}"
    assert rec["model"]["name"] == f"torchvision-{NAME}-COCO_WITH_VOC_LABELS_V1"
