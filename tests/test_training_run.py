"""End-to-end training on the SynthVOC micro tree: every method and blend, resume, failures, CLI."""
from __future__ import annotations

import pytest
import torch

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.models import load_model, read_checkpoint
from robustbench_seg.training import TrainConfig, TrainingError, train
from robustbench_seg.training import methods, trainer
from trainhelpers import cfg, killed_at as _killed_at, states_equal

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.mark.parametrize("method", ["baseline", "mixup", "cutmix", "binding"])
def test_two_step_smoke_run_of_every_method(synth_micro_root, tmp_path, method):
    out = train(cfg(synth_micro_root, tmp_path / "m.pt", method=method, stage2_steps=2))
    ck = read_checkpoint(out)
    assert ck["progress"]["finished"] and ck["method"] == method
    assert ck["training"]["method"] == method and ck["dataset"]["fingerprint"] and ck["versions"]["rbseg"]
    assert ck["model"]["binding"] == (method == "binding")
    if method == "binding":
        assert set(ck["progress"]["seconds"]) == {"stage1", "stage2"}
    model, _ = load_model(str(out))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 40, 48))["out"]
    assert logits.shape == (1, 21, 40, 48) and torch.isfinite(logits).all()


@pytest.mark.parametrize("opts", [
    dict(blend="cfb", pairs_per_image=2), dict(blend="rfb", pairs_per_image=2), dict(blend="cafb", pairs_per_image=2),
    dict(blend="wrfb", pairs_per_image=2), dict(blend="mfb", pairs_per_image=2), dict(fbh=False, fbh_hidden=8),
    dict(delta_range=(0.5, 0.6), pairs_resample="once"), dict(amp=True, amp_dtype="fp16", channels_last=False),
])
def test_two_step_smoke_run_of_every_blend(synth_micro_root, tmp_path, opts):
    out = train(cfg(synth_micro_root, tmp_path / "b.pt", method="binding", denoise=False, **opts))
    ck = read_checkpoint(out)
    assert ck["progress"]["finished"] and list(ck["progress"]["seconds"]) == ["stage1"]
    expected = {key: (list(value) if isinstance(value, tuple) else value) for key, value in opts.items()}
    if expected.get("fbh") is False:  # no FBH: its width did not run and is not recorded
        assert "fbh_hidden" not in ck["training"]
        expected.pop("fbh_hidden")
    if "amp_dtype" in expected:  # the resolved dtype is recorded
        expected["amp_dtype"] = {"fp16": "float16", "bf16": "bfloat16"}[expected["amp_dtype"]]
    for key, value in expected.items():
        assert ck["training"][key] == value
    assert ck["model"]["fbh"] == opts.get("fbh", True)


def test_stage2_from_runs_only_denoising_with_the_fbh_frozen(synth_micro_root, tmp_path):
    s1 = train(cfg(synth_micro_root, tmp_path / "s1.pt", method="binding", denoise=False, pairs_per_image=1, fbh_hidden=8))
    s2 = train(cfg(synth_micro_root, tmp_path / "s2.pt", method="binding", stage2_from=str(s1), stage2_steps=3))
    a, b = read_checkpoint(s1), read_checkpoint(s2)
    assert list(b["progress"]["seconds"]) == ["stage2"] and b["source"]["stage2_from"] == str(s1)
    assert b["model"]["fbh_hidden"] == 8  # the model comes from the stage-1 checkpoint
    fbh = [k for k in a["state_dict"] if k.startswith("fbh.")]
    assert fbh and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in fbh)  # frozen: no SGD, no decay
    assert not torch.equal(a["state_dict"]["phantom.4.weight"], b["state_dict"]["phantom.4.weight"])


def test_kill_and_resume_gives_bit_identical_weights(synth_micro_root, tmp_path, monkeypatch):
    opts = dict(method="binding", pairs_per_image=1, steps=7, stage2_steps=5, checkpoint_every=2, fbh_hidden=8)
    straight = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "a.pt", **opts)))["state_dict"]
    out = tmp_path / "b.pt"
    with pytest.raises(_killed_at(monkeypatch, "stage1", 5)):  # killed mid stage 1 (last checkpoint: step 4)
        train(cfg(synth_micro_root, out, **opts))
    assert read_checkpoint(out)["progress"]["global_step"] == 4
    with pytest.raises(_killed_at(monkeypatch, "stage2", 3)):  # resumed, then killed again mid stage 2
        train(cfg(synth_micro_root, out, resume=True, **opts))
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    resumed = read_checkpoint(train(cfg(synth_micro_root, out, resume=True, **opts)))["state_dict"]
    assert states_equal(straight, resumed)


def test_kill_and_resume_across_an_epoch_boundary(synth_micro_root, tmp_path, monkeypatch):
    # micro train_aug has 40 images: 10 batches of 4 per epoch; mixup draws lambdas per step
    opts = dict(method="mixup", steps=13)
    straight = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "a.pt", **opts)))["state_dict"]
    out = tmp_path / "b.pt"
    with pytest.raises(_killed_at(monkeypatch, "train", 12)):
        train(cfg(synth_micro_root, out, **opts))
    assert read_checkpoint(out)["progress"]["epoch"] == 1  # the epoch-end checkpoint
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    resumed = read_checkpoint(train(cfg(synth_micro_root, out, resume=True, **opts)))["state_dict"]
    assert states_equal(straight, resumed)
    # a different seed gives different weights (the comparison above can fail)
    other = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "c.pt", seed=1, **opts)))["state_dict"]
    assert not states_equal(straight, other)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synth_micro_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = methods.baseline_step

    def poisoned(ctx, model, batch, rng):
        calls["n"] += 1
        loss, logs = original(ctx, model, batch, rng)
        return (loss * float("nan") if calls["n"] >= 3 else loss), logs

    monkeypatch.setattr(methods, "baseline_step", poisoned)
    out = tmp_path / "nan.pt"
    with pytest.raises(TrainingError, match="non-finite loss") as exc:
        train(cfg(synth_micro_root, out, method="baseline", steps=6, checkpoint_every=2))
    assert "last good checkpoint is kept" in str(exc.value)
    ck = read_checkpoint(out)
    assert ck["progress"]["global_step"] == 2 and not ck["progress"]["finished"]
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_existing_output_and_mismatched_resume_are_refused(synth_micro_root, tmp_path):
    out = train(cfg(synth_micro_root, tmp_path / "r.pt", method="baseline"))
    with pytest.raises(RbsegError, match="--resume"):
        train(cfg(synth_micro_root, out, method="baseline"))
    with pytest.raises(RbsegError, match="different configuration.*lr"):
        train(cfg(synth_micro_root, out, method="baseline", lr=0.5, resume=True))
    # resuming a finished run is a no-op
    before = out.read_bytes()
    assert train(cfg(synth_micro_root, out, method="baseline", resume=True)) == out
    assert out.read_bytes() == before


def test_validation_miou_is_recorded(synth_micro_root, tmp_path):
    out = train(cfg(synth_micro_root, tmp_path / "v.pt", method="baseline", val_split="val"))
    metrics = read_checkpoint(out)["metrics"]
    assert metrics["val_split"] == "val" and 0.0 <= metrics["val_miou"] <= 100.0
    assert len(metrics["val"]["iou"]) == 21


def test_cli_train_and_bad_input(synth_micro_root, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = main(["train", "--method", "cutmix", "--data", str(synth_micro_root), "--out", str(out), "--steps", "2",
               "--crop", "32", "--batch-size", "4", "--val-split", "none", "--alpha", "0.5", "--json"])
    assert rc == 0 and read_checkpoint(out)["training"]["alpha"] == 0.5
    assert '"checkpoint"' in capsys.readouterr().out
    rc = main(["train", "--method", "baseline", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("rbseg: error:") and err.count("\n") == 1
    rc = main(["train", "--method", "binding", "--data", str(synth_micro_root), "--out", str(tmp_path / "y.pt"),
               "--delta-range", "0.9", "0.2"])
    assert rc != 0 and "--delta-range" in capsys.readouterr().err


def test_torchrun_ddp_two_processes(synth_micro_root, tmp_path):
    """DDP on CPU (gloo): both ranks train on their shards; rank 0 alone writes the checkpoint."""
    from subprocs import run_rbseg

    out = tmp_path / "ddp.pt"
    run_rbseg(["train", "--method", "binding", "--blend", "mfb", "--pairs-per-image", "2",
               "--data", str(synth_micro_root), "--out", str(out), "--steps", "3", "--stage2-steps", "2", "--crop", "32",
               "--batch-size", "3", "--device", "cpu", "--val-split", "none", "--quiet"], nproc=2)
    ck = read_checkpoint(out)
    assert ck["progress"]["finished"] and ck["progress"]["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ddp.pt"]  # no stray temporary files from a second writer
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    # the world size is recorded, and a resume with another one (here: 1 process) is refused
    assert ck["progress"]["world_size"] == 2 and ck["training"]["world_size"] == 2
    assert ck["training"]["global_batch_size"] == 6
    with pytest.raises(RbsegError, match="with 1 process.*trained with 2"):
        train(TrainConfig(method="binding", blend="mfb", pairs_per_image=2, data=str(synth_micro_root), out=str(out),
                          steps=3, stage2_steps=2, crop=32, batch_size=3, device="cpu", val_split=None, progress=False,
                          resume=True))


def test_binding_recipe_is_stage2_of_the_no_denoise_recipe(synth_micro_root, tmp_path):
    """The zoo's ``binding`` reuses the ``binding-no-denoise`` run as its stage 1 (STAGE2_FROM)."""
    from robustbench_seg.training import train_recipe
    from robustbench_seg.training.recipes import STAGE2_FROM, recipe_command

    assert STAGE2_FROM["binding"] == "binding-no-denoise"
    opts = dict(crop=32, batch_size=4, steps=2, stage2_steps=2, val_split=None, num_workers=0, checkpoint_every=None,
                pairs_per_image=1, fbh_hidden=8)
    out = train_recipe("binding", synth_micro_root, tmp_path / "train" / "binding", device="cpu", progress=False, **opts)
    stage1 = tmp_path / "train" / "binding-no-denoise" / "binding-no-denoise.pt"
    assert out == tmp_path / "train" / "binding" / "binding.pt" and stage1.is_file()
    ck, src = read_checkpoint(out), read_checkpoint(stage1)
    assert ck["training"]["stage2_from"] == str(stage1) and list(ck["progress"]["seconds"]) == ["stage2"]
    assert src["training"]["denoise"] is False and list(src["progress"]["seconds"]) == ["stage1"]
    # the stage-1 run is found, not retrained; a .pt target puts it beside the file
    mtime = stage1.stat().st_mtime_ns
    assert train_recipe("binding-no-denoise", synth_micro_root, tmp_path / "train" / "binding-no-denoise",
                        device="cpu", progress=False, **opts) == stage1
    assert stage1.stat().st_mtime_ns == mtime
    flat = train_recipe("binding", synth_micro_root, tmp_path / "flat" / "b.pt", device="cpu", progress=False, **opts)
    assert (tmp_path / "flat" / "binding-no-denoise.pt").is_file() and flat.name == "b.pt"
    assert "--stage2-from CKPT_OF_binding-no-denoise" in recipe_command("binding")
