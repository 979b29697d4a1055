"""Zoo export casts weights to fp16: a tensor that would overflow (|v| > 65504) or vanish stays float32,
named in a warning and recorded; a NaN/inf tensor is refused with one line naming it."""
from __future__ import annotations

import json

import pytest
import torch

from robustbench_seg.errors import CheckpointError
from robustbench_seg.models import build_model, model_config
from robustbench_seg.models.checkpoint import (
    cast_state_dict,
    inference_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


def test_cast_keeps_overflowing_and_vanishing_tensors_in_fp32():
    state = {
        "big": torch.tensor([1.0, 1e6, -3.0]),
        "fine": torch.tensor([0.5, -2.0, 65504.0]),
        "tiny": torch.tensor([1e-9, -2e-9, 0.0]),
        "some_tiny": torch.tensor([1e-9, 0.25]),  # one value survives: ordinary fp16 rounding
        "count": torch.tensor(7),
    }
    cast, kept = cast_state_dict(state)
    assert set(kept) == {"big", "tiny"}
    assert "1e+06" in kept["big"] and "overflows float16" in kept["big"]
    assert "becomes 0" in kept["tiny"]
    assert cast["big"].dtype == torch.float32 and torch.equal(cast["big"], state["big"])
    assert cast["tiny"].dtype == torch.float32 and torch.equal(cast["tiny"], state["tiny"])
    assert cast["fine"].dtype == torch.float16 and cast["some_tiny"].dtype == torch.float16
    assert torch.isfinite(cast["fine"]).all()
    assert cast["count"].dtype == torch.int64


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_cast_refuses_non_finite_tensor_naming_it(bad):
    with pytest.raises(CheckpointError) as info:
        cast_state_dict({"ok": torch.ones(2), "head.weight": torch.tensor([1.0, bad])}, path="run.pt")
    msg = str(info.value)
    assert "\n" not in msg and "'head.weight'" in msg and msg.startswith("run.pt:")


def test_inference_checkpoint_with_1e6_value_warns_and_records():
    ckpt = {"format": "x", "kind": "training", "model": {}, "resume": {"optimizer": 1},
            "state_dict": {"a.weight": torch.tensor([1e6, 1.0]), "b.weight": torch.tensor([0.5])}}
    with pytest.warns(UserWarning, match=r"a\.weight") as caught:
        inf = inference_checkpoint(ckpt)
    assert "\n" not in str(caught[0].message)
    assert inf["kind"] == "inference" and "resume" not in inf
    assert inf["state_dict"]["a.weight"].dtype == torch.float32 and inf["state_dict"]["a.weight"][0] == 1e6
    assert inf["state_dict"]["b.weight"].dtype == torch.float16
    assert list(inf["full_precision_tensors"]) == ["a.weight"]


def test_inference_checkpoint_of_ordinary_weights_is_all_fp16(recwarn):
    m = build_model("deeplabv3_tiny")
    inf = inference_checkpoint(make_checkpoint(m, model_config("deeplabv3_tiny")))
    assert "full_precision_tensors" not in inf and not [w for w in recwarn if "float32" in str(w.message)]
    assert all(v.dtype == torch.float16 for v in inf["state_dict"].values() if v.is_floating_point())


def test_export_to_zoo_keeps_a_1e6_weight_exact(tmp_path):
    from robustbench_seg.training import export_to_zoo

    torch.manual_seed(0)
    cfg = model_config("deeplabv3_tiny")
    m = build_model("deeplabv3_tiny").eval()
    key = next(k for k in m.state_dict() if k.endswith("running_var"))
    with torch.no_grad():
        m.state_dict()[key][0] = 1e6  # in place: a BN variance fp16 cannot hold
    ck = make_checkpoint(m, cfg, "training", method="baseline", training={"method": "baseline", "preset": "tiny"},
                         dataset={"name": "SynthVOC-test"}, progress={"finished": True},
                         metrics={"val_miou": 1.0}, resume={})
    run = save_checkpoint(tmp_path / "run.pt", ck)
    with pytest.warns(UserWarning, match=key.replace(".", r"\.")):
        path = export_to_zoo("baseline", run, tmp_path / "models", evaluate=False)
    stored = read_checkpoint(path)
    assert stored["state_dict"][key].dtype == torch.float32 and stored["state_dict"][key][0] == 1e6
    assert list(stored["full_precision_tensors"]) == [key]
    entry = json.loads((tmp_path / "models" / "zoo.json").read_text())
    entry = entry["models"]["baseline"]
    assert list(entry["full_precision_tensors"]) == [key]
    model = model_from_checkpoint(stored, path).eval()
    assert model.state_dict()[key][0] == 1e6
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 33, 33))["out"]
    assert torch.isfinite(out).all()


def test_export_to_zoo_refuses_nan_weights_naming_tensor_and_file(tmp_path):
    from robustbench_seg.training import export_to_zoo

    cfg = model_config("deeplabv3_tiny")
    m = build_model("deeplabv3_tiny")
    key = next(k for k in m.state_dict() if k.endswith("weight"))
    with torch.no_grad():
        m.state_dict()[key].view(-1)[0] = float("nan")
    ck = make_checkpoint(m, cfg, "training", progress={"finished": True}, resume={})
    run = save_checkpoint(tmp_path / "run.pt", ck)
    with pytest.raises(CheckpointError) as info:
        export_to_zoo("baseline", run, tmp_path / "models", evaluate=False)
    assert f"'{key}'" in str(info.value) and str(run) in str(info.value)
    assert not (tmp_path / "models" / "baseline.pt").exists()
