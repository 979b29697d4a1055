"""Issue 10 (evaluation part): every recorded number describes what ran, every failure is one line.

Non-finite logits and a raising forward are refused with one line; duplicate ids, an unfinished
checkpoint and the co-occurrence splits are recorded; max |v| of every perturbation is recorded;
``--perturbations all,x.npy`` and several ``--model`` values work; outputs are probed first.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from robustbench_seg.attacks.perturbation import list_perturbations, save_perturbation
from robustbench_seg.cli import main
from robustbench_seg.data import voc
from robustbench_seg.data.subsets import SUBSET_NAMES
from robustbench_seg.errors import PerturbationError, RbsegError
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation.engine import EvaluationWarning, evaluate, resolve_perturbations
from robustbench_seg.evaluation.predict import predict_images
from robustbench_seg.evaluation.results import load_results
from test_eval_engine import TinyNet
from vocfactory import VOCTree, write_split


class NaNOnCall(TinyNet):
    """Returns NaN logits on its ``bad_call``-th forward call (1-based), finite ones otherwise."""

    def __init__(self, bad_call: int, value: float = float("nan")):
        super().__init__()
        self.bad_call, self.value = bad_call, value

    def forward(self, x):
        out = super().forward(x)
        if self.calls == self.bad_call:
            out["out"] = out["out"].clone()
            out["out"][-1, 0, 0, 0] = self.value  # one pixel of the chunk's last image
        return out


class Raising(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 21, 1)

    def forward(self, x):
        return self._inner(x)

    def _inner(self, x):
        raise ValueError("shapes do not match: 7 vs 9")


def raising_net() -> torch.nn.Module:
    return Raising()


def nan_net() -> torch.nn.Module:
    return NaNOnCall(bad_call=1)


def other_net() -> torch.nn.Module:
    return TinyNet(seed=5)


@pytest.fixture()
def tree(tmp_path):
    tree = VOCTree(tmp_path / "data")
    rng = np.random.default_rng(2)
    for k in range(6):
        tree.add(f"im{k:02d}", rng.integers(0, 21, (24, 32)).astype(np.uint8), splits=("val",))
    return tree.root


@pytest.fixture()
def wave(tmp_path):
    save_perturbation(tmp_path / "p" / "wave.npy", np.full((3, 16, 16), 8.0, dtype=np.float32),
                      {"method": "test", "norm": "inf", "xi": 10})
    return tmp_path / "p" / "wave.npy"


KW = dict(subsets="none", device="cpu", progress=False)


# --- 9: non-finite logits --------------------------------------------------------------------------

def test_non_finite_logits_are_refused_naming_input_and_batch(tree, wave, tmp_path):
    # batch 1 = 2 images x (clean, wave): forward chunks of 2 -> call 2 is wave on im00, im01
    model = NaNOnCall(bad_call=2)
    with pytest.raises(RbsegError) as info:
        evaluate(model, tree, perturbations=[str(wave)], batch_size=2, out=tmp_path / "r", model_name="m", **KW)
    msg = str(info.value)
    assert "\n" not in msg and "non-finite" in msg and "batch 1 of 3" in msg
    assert "under 'wave': im01" in msg and "im00" not in msg and "'m'" in msg
    assert load_results(tmp_path / "r") == []  # nothing scored
    # inf is refused too, on a later batch, under clean
    with pytest.raises(RbsegError, match=r"batch 2 of 3 \(under 'clean': im03\)"):
        evaluate(NaNOnCall(bad_call=3, value=float("inf")), tree, perturbations=[str(wave)], batch_size=2,
                 out=tmp_path / "r2", model_name="m", **KW)


def test_non_finite_logits_cli_one_line_and_predict(tree, tmp_path, capsys):
    code = main(["evaluate", "--model", "test_eval_trust:nan_net", "--data", str(tree), "--perturbations", "none",
                 "--subsets", "none", "--out", str(tmp_path / "r"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "non-finite logits" in err and "im0" in err
    with pytest.raises(RbsegError, match="non-finite logits.*im00"):
        predict_images(NaNOnCall(bad_call=1), [voc.image_path(tree, "im00")], tmp_path / "o", device="cpu", progress=False)


# --- 21: a model whose forward raises ---------------------------------------------------------------

def test_raising_forward_is_one_line_with_type_spec_and_batch(tree, tmp_path, capsys):
    argv = ["evaluate", "--model", "test_eval_trust:raising_net", "--data", str(tree), "--perturbations", "none",
            "--subsets", "none", "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "test_eval_trust:raising_net" in err and "ValueError" in err and "shapes do not match" in err
    assert "batch 1 of" in err and "Traceback" not in err
    # rbseg --debug: the full traceback (down to the model's own frame), then the line
    assert main(["--debug", *argv]) != 0
    err = capsys.readouterr().err
    assert "Traceback" in err and "_inner" in err and err.strip().splitlines()[-1].startswith("rbseg: error:")
    # predict: the same one line
    assert main(["predict", "--model", "test_eval_trust:raising_net", "--data", str(tree), "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ValueError" in err and "raising_net" in err


# --- 18: duplicate ids ------------------------------------------------------------------------------

def test_duplicate_ids_warn_and_are_recorded(tree, tmp_path, capsys):
    write_split(tree, "val", ["im00", "im01", "im01", "im02", "im03", "im04", "im05", "im04", "im01"])
    with pytest.warns(EvaluationWarning, match=r"3 duplicate id\(s\).*im01 x3, im04 x2"):
        rec = evaluate(TinyNet(), tree, perturbations="none", out=tmp_path / "r", model_name="m", **KW)[0]
    assert rec.protocol["n_images"] == 6
    assert rec.protocol["duplicate_ids"] == {"count": 3, "ids": {"im01": 2, "im04": 1}}
    assert main(["evaluate", "--model", "test_eval_engine:tiny_net", "--data", str(tree), "--perturbations", "none",
                 "--subsets", "none", "--out", str(tmp_path / "c"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("rbseg: warning:") == 1 and "duplicate" in err


def test_no_duplicates_record_zero(tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        rec = evaluate(TinyNet(), tree, perturbations="none", out=tmp_path, model_name="m", **KW)[0]
    assert rec.protocol["duplicate_ids"] == {"count": 0, "ids": {}}


# --- 6: co-occurrence splits --------------------------------------------------------------------------

def test_cooccurrence_splits_are_recorded(tree, synth_micro_root, tmp_path):
    rec = evaluate(TinyNet(), synth_micro_root, perturbations="none", subsets="cooc50", out=tmp_path / "a",
                   model_name="m", device="cpu", progress=False)[0]
    assert rec.protocol["cooccur_splits_used"] == ["train_aug", "val"]
    assert rec.protocol["cooccur_splits_missing"] == []
    # a tree without train_aug: counted over val only, the missing split named and warned about
    with pytest.warns(UserWarning, match="train_aug"):
        rec = evaluate(TinyNet(), tree, perturbations="none", subsets="cooc50", out=tmp_path / "b", model_name="m",
                       device="cpu", progress=False)[0]
    assert rec.protocol["cooccur_splits_used"] == ["val"]
    assert rec.protocol["cooccur_splits_missing"] == ["train_aug"]
    stored = json.loads(next((tmp_path / "b").rglob("clean.json")).read_text())
    assert stored["protocol"]["cooccur_splits_missing"] == ["train_aug"]
    # no subset computed: nothing counted (null, not a guess)
    rec = evaluate(TinyNet(), tree, perturbations="none", out=tmp_path / "c", model_name="m", **KW)[0]
    assert rec.protocol["cooccur_splits_used"] is None


# --- 7: magnitude: max |v| recorded, --allow-any-magnitude, all + named files ---------------------------

def test_max_abs_is_recorded_and_allow_any_magnitude_passes_through(tree, wave, tmp_path, capsys):
    recs = evaluate(TinyNet(), tree, perturbations=[str(wave)], out=tmp_path / "r", model_name="m", **KW)
    assert recs[0].perturbation["max_abs"] == 0.0 and recs[1].perturbation["max_abs"] == pytest.approx(8.0)
    loud = tmp_path / "loud.npy"  # no sidecar, +-100: not a quasi-imperceptible perturbation
    np.save(loud, np.full((3, 8, 8), -100.0, dtype=np.float32))
    with pytest.raises(PerturbationError, match="loud.npy"):
        evaluate(TinyNet(), tree, perturbations=[str(loud)], out=tmp_path / "r", model_name="m", **KW)
    recs = evaluate(TinyNet(), tree, perturbations=[str(loud)], out=tmp_path / "r", model_name="m",
                    allow_any_magnitude=True, **KW)
    assert recs[1].perturbation["max_abs"] == pytest.approx(100.0)
    assert recs[1].perturbation["allow_any_magnitude"] is True
    base = ["evaluate", "--model", "test_eval_engine:tiny_net", "--data", str(tree), "--subsets", "none",
            "--out", str(tmp_path / "c"), "--device", "cpu", "--perturbations", str(loud)]
    assert main(base) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loud.npy" in err and "--allow-any-magnitude" in err
    assert main(base + ["--allow-any-magnitude", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[1]["perturbation"]["max_abs"] == pytest.approx(100.0)


def test_all_can_be_mixed_with_named_files(wave):
    shipped = list_perturbations()
    names = [p.name for p in resolve_perturbations(f"all,{wave}")]
    assert names == [*engine.shipped_order(shipped), "wave"]
    assert [p.name for p in resolve_perturbations([str(wave), "all"])][0] == "wave"
    with pytest.raises(RbsegError, match="none"):
        resolve_perturbations(f"none,{wave}")


# --- 16: unfinished checkpoints ----------------------------------------------------------------------

def test_unfinished_checkpoint_warns_and_is_recorded(tree, tmp_path, monkeypatch):
    import robustbench_seg.models as models

    def fake_load(spec, device="cpu", weights=None):
        return TinyNet(), {"name": "half", "sha256": "h" * 64, "arch": "tiny", "finished": spec != "half"}

    monkeypatch.setattr(models, "load_model", fake_load)
    with pytest.warns(EvaluationWarning, match="unfinished"):
        rec = evaluate("half", tree, perturbations="none", out=tmp_path / "r", **KW)[0]
    assert rec.model["finished"] is False
    stored = json.loads(next((tmp_path / "r").rglob("clean.json")).read_text())
    assert stored["model"]["finished"] is False
    with pytest.warns(EvaluationWarning, match="unfinished"):
        predict_images("half", [voc.image_path(tree, "im00")], tmp_path / "o", device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        rec = evaluate("done", tree, perturbations="none", out=tmp_path / "r2", **KW)[0]
    assert rec.model["finished"] is True


def test_unfinished_training_checkpoint_warns_in_evaluate_and_predict(tree, tmp_path, capsys):
    """A real checkpoint whose training did not reach its last step (models.load_model's info)."""
    from robustbench_seg.io import safe_torch_load
    from robustbench_seg.models.zoo import zoo_checkpoint

    ckpt = safe_torch_load(zoo_checkpoint("baseline")[0])
    ckpt["finished"] = False
    path = tmp_path / "killed.pt"
    torch.save(ckpt, path)
    assert main(["evaluate", "--model", str(path), "--data", str(tree), "--perturbations", "none", "--subsets", "none",
                 "--out", str(tmp_path / "r"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("rbseg: warning:") == 1 and "unfinished training run" in err and "killed" in err
    stored = json.loads(next((tmp_path / "r").rglob("clean.json")).read_text())
    assert stored["model"]["finished"] is False
    assert main(["predict", "--model", str(path), "--data", str(tree), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert "unfinished" in captured.err and json.loads(captured.out)["model"]["finished"] is False


# --- 14: the output location is probed first ----------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["evaluate", "--model", "test_eval_trust:raising_net", "--perturbations", "none", "--subsets", "none"],
    ["predict", "--model", "test_eval_trust:raising_net"],
])
def test_unwritable_output_is_one_line_before_any_work(command, tree, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*command, "--data", str(tree), "--out", str(blocker / "out"), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    # the probe fails before the (raising) model ever runs
    assert err.count("\n") == 1 and "cannot write" in err and str(blocker) in err and "ValueError" not in err


# --- 24: several models, --show-subsets prints the chosen ones ----------------------------------------

def test_several_models_in_one_command(tree, tmp_path, capsys):
    argv = ["evaluate", "--model", "test_eval_engine:tiny_net,test_eval_trust:other_net", "--model",
            "test_eval_trust:nan_net", "--data", str(tree), "--perturbations", "none", "--subsets", "none",
            "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert main(argv) != 0  # the third model fails, after the first two were evaluated and stored
    assert "nan_net" in capsys.readouterr().err
    assert sorted(r["model"]["name"] for r in load_results(tmp_path / "r")) == [
        "test_eval_engine:tiny_net", "test_eval_trust:other_net"]
    assert main([*argv[:3], "--data", str(tree), "--perturbations", "none", "--subsets", "none",
                 "--out", str(tmp_path / "r"), "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["model"]["name"] for r in out] == ["test_eval_engine:tiny_net", "test_eval_trust:other_net"]
    assert main(["evaluate", "--model", "a,,b", "--data", str(tree)]) != 0


def test_show_subsets_prints_only_the_chosen_ones(synth_micro_root, tmp_path, capsys):
    evaluate("test_eval_engine:tiny_net", synth_micro_root, perturbations="none", subsets="all", out=tmp_path,
             device="cpu", progress=False)  # a stored result with every subset, reused below
    assert main(["evaluate", "--model", "test_eval_engine:tiny_net", "--data", str(synth_micro_root),
                 "--perturbations", "none", "--subsets", "occ1,obj1", "--out", str(tmp_path), "--device", "cpu",
                 "--show-subsets"]) == 0
    out = capsys.readouterr().out
    shown = {name for name in SUBSET_NAMES if f" {name} " in out}
    assert shown == {"occ1", "obj1"}
