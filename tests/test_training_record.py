"""Issue 10: what a training checkpoint records (what ran, finished, world size, data changes) and how
training fails (pre-flight of the data, unwritable output, write failures mid-run)."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustbench_seg.cli import main
from robustbench_seg.data import voc
from robustbench_seg.errors import DataError, RbsegError
from robustbench_seg.models import load_model, read_checkpoint
from robustbench_seg.models import checkpoint as ckpt_mod
from robustbench_seg.models.checkpoint import checkpoint_finished
from robustbench_seg.training import TrainingError, resolve_config, train
from robustbench_seg.training import preflight as preflight_mod
from robustbench_seg.training import trainer
from robustbench_seg.training.record import RECORD_FORMAT, recorded_config, resolve_runtime
from trainhelpers import cfg, killed_at

pytestmark = pytest.mark.usefixtures("one_thread")

BINDING_ONLY = {"blend", "delta_range", "delta", "pairs_per_image", "pairs_resample", "fbh", "fbh_hidden", "denoise",
                "stage2_from", "stage2_lr", "stage2_steps", "stage2_epochs", "ppa_eps", "stage1"}


@pytest.fixture
def own_tree(synth_micro_root, tmp_path) -> Path:
    """A private copy of the micro tree (the tests below damage and fix its files)."""
    return Path(shutil.copytree(synth_micro_root, tmp_path / "VOC2012"))


# -- item 4: the recorded config describes what ran -------------------------------------------


@pytest.mark.parametrize("method", ["baseline", "mixup", "cutmix"])
def test_record_of_single_stage_methods_has_no_binding_fields(synth_micro_root, tmp_path, method):
    ck = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "m.pt", method=method)))
    rec = ck["training"]
    assert rec["format"] == RECORD_FORMAT and rec["method"] == method and rec["steps"] == 2
    assert not BINDING_ONLY & set(rec), BINDING_ONLY & set(rec)
    assert ("alpha" in rec) == (method in ("mixup", "cutmix"))
    # resolved, never "auto"; paths and resume-only options are not part of the record
    assert rec["device"] == "cpu" and rec["amp"] is False and "amp_dtype" not in rec and rec["world_size"] == 1
    assert "auto" not in rec.values() and not {"data", "out", "resume", "progress", "num_workers"} & set(rec)
    assert "epochs" not in rec  # steps set the length


def test_record_is_the_one_function_of_the_resolved_config(synth_micro_root, tmp_path):
    c = cfg(synth_micro_root, tmp_path / "r.pt", method="binding", blend="rfb", pairs_per_image=1, fbh_hidden=8,
            stage2_steps=1, delta_range=(0.6, 0.8))
    rec = read_checkpoint(train(c))["training"]
    resolved = resolve_config(c)
    assert rec == recorded_config(resolved, resolve_runtime(resolved, torch.device("cpu")), 1)
    assert rec["blend"] == "rfb" and rec["delta_range"] == [0.6, 0.8] and rec["steps"] == 2 and rec["stage2_steps"] == 1
    assert rec["denoise"] is True and rec["fbh_hidden"] == 8


def test_wrfb_records_its_fixed_delta_not_the_range(synth_micro_root, tmp_path):
    rec = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "w.pt", method="binding", blend="wrfb",
                                    pairs_per_image=1, fbh_hidden=8, denoise=False)))["training"]
    assert rec["delta"] == 0.6 and "delta_range" not in rec
    assert rec["denoise"] is False and not {"stage2_lr", "stage2_steps", "ppa_eps"} & set(rec)


def test_stage2_from_records_stage1_as_recorded_in_its_checkpoint(synth_micro_root, tmp_path):
    s1 = train(cfg(synth_micro_root, tmp_path / "s1.pt", method="binding", blend="rfb", denoise=False, steps=3,
                   pairs_per_image=1, fbh_hidden=8, delta_range=(0.6, 0.9)))
    # stage 2 is run with CLI-like defaults for the stage-1 options (blend cfb, steps 2, default delta range)
    s2 = train(cfg(synth_micro_root, tmp_path / "s2.pt", method="binding", stage2_from=str(s1), stage2_steps=2))
    rec, src = read_checkpoint(s2)["training"], read_checkpoint(s1)["training"]
    for key in ("blend", "delta_range", "pairs_per_image", "pairs_resample", "steps", "lr"):
        assert key not in rec, key  # stage 1 did not run here
    assert rec["stage1"]["config"] == src and rec["stage1"]["checkpoint"] == str(s1) and rec["stage1"]["sha256"]
    assert src["steps"] == 3 and src["blend"] == "rfb" and src["delta_range"] == [0.6, 0.9]
    assert rec["stage2_from"] == str(s1) and rec["stage2_steps"] == 2 and rec["stage2_frozen"] == ["fbh"]


def test_val_miou_records_its_dtype(synth_micro_root, tmp_path):
    ck = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "v.pt", method="baseline", val_split="val")))
    assert ck["training"]["val_dtype"] == "float32" and ck["metrics"]["val_dtype"] == "float32"


def test_old_style_checkpoint_still_loads_and_resumes(synth_micro_root, tmp_path, monkeypatch):
    """Checkpoints written before the record (full TrainConfig in ``training``, no ``finished`` key,
    no ``resume.options``, no world size) load with the right ``finished`` and resume."""
    c = cfg(synth_micro_root, tmp_path / "old.pt", method="baseline", steps=4, checkpoint_every=2)
    with pytest.raises(killed_at(monkeypatch, None, 3)):
        train(c)
    ck = read_checkpoint(c.out)
    ck["training"] = resolve_config(c).to_dict()
    for key in ("finished",):
        ck.pop(key)
    ck["resume"].pop("options")
    ck["progress"].pop("world_size")
    torch.save(ck, c.out)
    _, info = load_model(c.out)
    assert info["finished"] is False and info["config"]["blend"] == "cfb"  # the old record is shown as it is
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    with pytest.raises(RbsegError, match="different configuration.*lr"):
        train(cfg(synth_micro_root, c.out, method="baseline", steps=4, checkpoint_every=2, lr=0.5, resume=True))
    out = train(cfg(synth_micro_root, c.out, method="baseline", steps=4, checkpoint_every=2, resume=True))
    _, info = load_model(out)
    assert info["finished"] is True and info["config"]["format"] == RECORD_FORMAT


def test_shipped_zoo_keeps_its_old_records():
    from robustbench_seg.models.zoo import load_zoo

    zoo = load_zoo()
    if "baseline" not in zoo:
        pytest.skip("no shipped zoo")
    model, info = load_model("baseline")
    assert info["finished"] is True and info["kind"] == "inference" and info["config"] == zoo["baseline"]["config"]
    assert main(["zoo", "list", "--json"]) == 0


# -- item 5: resume under another world size ----------------------------------------------------


def test_resume_under_another_world_size_is_refused(synth_micro_root, tmp_path, monkeypatch, capsys):
    c = cfg(synth_micro_root, tmp_path / "w.pt", method="baseline", steps=6, checkpoint_every=2)
    with pytest.raises(killed_at(monkeypatch, None, 3)):
        train(c)
    ck = read_checkpoint(c.out)
    assert ck["progress"]["world_size"] == 1 and ck["training"]["world_size"] == 1
    # pure check
    with pytest.raises(RbsegError, match="with 2 process.*trained with 1"):
        trainer.check_resume(ck, resolve_config(c), ck["dataset"]["fingerprint"], 2, Path(c.out))
    assert trainer.check_resume(ck, resolve_config(c), ck["dataset"]["fingerprint"], 1, Path(c.out)) is None
    # the trainer under torchrun's environment (no process group needed: it refuses before any collective)
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    monkeypatch.setattr(trainer.DistEnv, "init", lambda self, device: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    before = Path(c.out).read_bytes()
    rc = main(["train", "--method", "baseline", "--data", str(synth_micro_root), "--out", str(c.out), "--steps", "6",
               "--crop", "32", "--batch-size", "4", "--val-split", "none", "--checkpoint-every", "2", "--resume",
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "WORLD_SIZE" in err and str(c.out) in err
    assert Path(c.out).read_bytes() == before


# -- item 14: output probed before training; a failed write keeps the previous checkpoint ------------


def test_unwritable_output_fails_before_any_training(synth_micro_root, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    ran = []
    monkeypatch.setattr(trainer, "_run_stage", lambda *a, **k: ran.append(1))
    with pytest.raises(RbsegError, match="cannot write the checkpoint") as exc:
        train(cfg(synth_micro_root, blocker / "m.pt", method="baseline"))
    assert str(blocker) in str(exc.value) and not ran
    rc = main(["train", "--method", "baseline", "--data", str(synth_micro_root), "--out", str(blocker / "m.pt"),
               "--steps", "2", "--crop", "32", "--batch-size", "4", "--val-split", "none", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and str(blocker) in err and not ran


def test_write_failure_mid_run_keeps_the_previous_checkpoint(synth_micro_root, tmp_path, monkeypatch):
    real = ckpt_mod.atomic_torch_save
    calls = {"n": 0}

    def flaky(path, obj):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(ckpt_mod, "atomic_torch_save", flaky)
    out = tmp_path / "full.pt"
    with pytest.raises(TrainingError) as exc:
        train(cfg(synth_micro_root, out, method="baseline", steps=6, checkpoint_every=2))
    msg = str(exc.value)
    assert "\n" not in msg and str(out) in msg and "No space left" in msg and "previous checkpoint is kept" in msg
    ck = read_checkpoint(out)
    assert ck["progress"]["global_step"] == 2 and ck["finished"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt"]  # no temporary litter


# -- item 16: finished is recorded; load_model exposes it; zoo export refuses unfinished runs ---------


def test_finished_is_false_until_the_last_step(synth_micro_root, tmp_path, monkeypatch, capsys):
    c = cfg(synth_micro_root, tmp_path / "f.pt", method="binding", pairs_per_image=1, fbh_hidden=8, steps=3,
            stage2_steps=2, checkpoint_every=1)
    seen = []
    real = ckpt_mod.atomic_torch_save
    monkeypatch.setattr(ckpt_mod, "atomic_torch_save", lambda path, obj: (seen.append(obj["finished"]), real(path, obj))[1])
    with pytest.raises(killed_at(monkeypatch, "stage2", 1)):
        train(c)
    assert seen and not any(seen)  # every checkpoint so far says unfinished
    _, info = load_model(c.out)
    assert info["finished"] is False
    # zoo export refuses it, in one line, and writes nothing
    models = tmp_path / "zoo"
    rc = main(["zoo", "export", "binding", str(c.out), "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "has not finished" in err and not models.exists()
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    train(cfg(synth_micro_root, c.out, method="binding", pairs_per_image=1, fbh_hidden=8, steps=3, stage2_steps=2,
              checkpoint_every=1, resume=True))
    assert seen[-1] is True and not any(seen[:-1])
    _, info = load_model(c.out)
    assert info["finished"] is True and read_checkpoint(c.out)["finished"] is True


def test_checkpoint_finished_rules_for_older_files():
    assert checkpoint_finished({"kind": "inference"}) is True  # exports and zoo files
    assert checkpoint_finished({"kind": "training", "finished": False, "progress": {"finished": True}}) is False
    assert checkpoint_finished({"kind": "training", "progress": {"finished": False}}) is False
    assert checkpoint_finished({"kind": "training", "progress": {"global_step": 3}, "training": {"steps": 10}}) is False
    assert checkpoint_finished({"kind": "training", "progress": {"global_step": 10}, "training": {"steps": 10}}) is True


# -- item 17: pre-flight of the training data; resume after a data fix -------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_corrupt_training_file_is_named_before_step_1(own_tree, tmp_path, monkeypatch, capsys):
    ids = voc.read_split(own_tree, "train_aug")
    bad = voc.image_path(own_tree, ids[len(ids) // 2])
    _truncate(bad)
    ran = []
    monkeypatch.setattr(trainer, "_run_stage", lambda *a, **k: ran.append(1))
    out = tmp_path / "c.pt"
    with pytest.raises(DataError) as exc:
        train(cfg(own_tree, out, method="baseline"))
    assert f"JPEGImages/{bad.name}" in str(exc.value) and "nothing was trained" in str(exc.value)
    assert not ran and not out.exists()
    rc = main(["train", "--method", "baseline", "--data", str(own_tree), "--out", str(out), "--steps", "2",
               "--crop", "32", "--batch-size", "4", "--val-split", "none", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and bad.name in err


def test_preflight_is_cached_by_file_signature(own_tree):
    ids = voc.read_split(own_tree, "train_aug")
    first = preflight_mod.preflight(own_tree, "train_aug", ids)
    assert first == {"checked": len(ids), "cached": 0}
    assert preflight_mod.preflight(own_tree, "train_aug", ids) == {"checked": 0, "cached": len(ids)}
    mask = voc.mask_path(own_tree, ids[0], "train_aug")
    _truncate(mask)
    with pytest.raises(DataError, match=mask.name):
        preflight_mod.preflight(own_tree, "train_aug", ids)
    with pytest.raises(DataError, match=mask.name):  # a bad file is never cached as good
        preflight_mod.preflight(own_tree, "train_aug", ids)


def test_resume_after_a_data_fix_needs_accept_data_change_and_is_recorded(own_tree, tmp_path, monkeypatch, capsys):
    opts = dict(method="baseline", steps=6, checkpoint_every=2)
    out = tmp_path / "d.pt"
    with pytest.raises(killed_at(monkeypatch, None, 3)):
        train(cfg(own_tree, out, **opts))
    old_fp = read_checkpoint(out)["dataset"]["fingerprint"]
    # "fix" a training image: same picture, re-encoded (another size, so another fingerprint)
    ids = voc.read_split(own_tree, "train_aug")
    img = voc.image_path(own_tree, ids[0])
    Image.open(img).convert("RGB").save(img, quality=60)
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    with pytest.raises(RbsegError, match="--accept-data-change"):
        train(cfg(own_tree, out, resume=True, **opts))
    rc = main(["train", "--method", "baseline", "--data", str(own_tree), "--out", str(out), "--steps", "6", "--crop", "32",
               "--batch-size", "4", "--val-split", "none", "--checkpoint-every", "2", "--resume", "--accept-data-change",
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    ck = read_checkpoint(out)
    change, = ck["dataset"]["data_changes"]
    assert change["from"] == old_fp and change["to"] == ck["dataset"]["fingerprint"] != old_fp
    assert change["at"]["global_step"] == 2 and ck["finished"] is True
    with pytest.raises(RbsegError, match="only applies to --resume"):
        train(cfg(own_tree, tmp_path / "e.pt", accept_data_change=True, **opts))


def test_out_without_suffix_is_a_file_and_a_resume_on_other_hardware_is_recorded(synth_micro_root, tmp_path):
    from robustbench_seg.training.record import merge_resumed

    out = train(cfg(synth_micro_root, tmp_path / "runs" / "model", method="baseline"))
    assert out.is_file() and read_checkpoint(out)["finished"] is True
    saved = read_checkpoint(out)["training"]
    now = {**saved, "device": "cuda", "amp": True, "amp_dtype": "bfloat16"}
    merged = merge_resumed(saved, now, {"stage": 0, "global_step": 2})
    assert merged["device"] == "cuda" and merged["earlier_runtime"] == [
        {"device": "cpu", "amp": False, "channels_last": True, "until": {"stage": 0, "global_step": 2}}]
    assert "earlier_runtime" not in merge_resumed(saved, dict(saved), {"stage": 0, "global_step": 2})
