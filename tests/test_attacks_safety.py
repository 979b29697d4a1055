"""Issue 10 (attacks): DeepFool cap, GD-UAP validation data and source, crafting outputs (overwrite,
saved state, write failures, stale .tmp files), default presets and time estimates, the micro preset."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_seg.attacks.gduap import GDUAPConfig, craft_gduap, split_prior_and_validation
from robustbench_seg.attacks.uap import UAPConfig, prepare_output, state_path_for, universal_perturbation
from robustbench_seg.cli import build_parser, main
from robustbench_seg.errors import RbsegError
from robustbench_seg.io import ids_hash

pytestmark = pytest.mark.usefixtures("one_thread")


# --- item 1: DeepFool's iteration cap --------------------------------------------------------------

def test_uap_deepfool_cap_defaults_to_the_authors_10_in_every_preset():
    from robustbench_seg.attacks.recipes import UAP_PRESETS

    assert UAPConfig().max_iter_df == 10
    assert all(p["cfg"].max_iter_df == 10 for p in UAP_PRESETS.values())
    args = build_parser().parse_args(["craft", "uap", "--surrogate", "x", "--data", "d", "--out", "o", "--max-iter-df", "4"])
    assert args.max_iter_df == 4
    with pytest.raises(RbsegError, match="max_iter_df >= 1"):
        UAPConfig(max_iter_df=0)


def test_uap_deepfool_cap_is_used_by_the_loop(monkeypatch):
    """The loop hands cfg.max_iter_df to DeepFool and applies the authors' convergence test with it."""
    import robustbench_seg.attacks.uap as uap_mod

    seen = []
    real = uap_mod.deepfool

    def spy(*a, **k):
        seen.append(k["max_iter"])
        return real(*a, **k)

    monkeypatch.setattr(uap_mod, "deepfool", spy)

    class Lin(nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([torch.zeros_like(m), m - 140.0], 1)

    images = torch.full((4, 3, 2, 2), 135.0)
    universal_perturbation(Lin(), images, UAPConfig(max_passes=1, batch_size=2, clip=False))
    assert seen and set(seen) == {10}


# --- item 24: the progress reports the current pass ---------------------------------------------------

def test_uap_progress_events_report_the_current_pass_not_the_previous_one():
    class MeanThreshold(nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([torch.zeros_like(m), 0.5 * (m - 140.0)], 1)

    g = torch.Generator().manual_seed(0)
    means = torch.empty(8).uniform_(132, 139, generator=g)
    means[:2] = 200.0  # out of reach of xi = 10: the fooling rate stays below 1, so both passes run
    images = means.view(-1, 1, 1, 1) + torch.zeros(8, 3, 2, 2)
    events = []
    res = universal_perturbation(MeanThreshold(), images, UAPConfig(max_passes=2, delta=0.0, batch_size=8, clip=False),
                                 callback=events.append)
    batches = [e for e in events if e["event"] == "batch"]
    assert [e["pass"] for e in batches] == [1, 2]
    # pass 1 starts from v = 0: nothing fooled yet, and there is no previous pass
    assert batches[0]["fooled_so_far"] == 0.0 and batches[0]["previous_pass_fooling_rate"] is None
    # pass 2 (one batch = every image) reports what v fools now, labelled apart from pass 1's rate
    assert batches[1]["fooled_so_far"] == pytest.approx(res.history[0]["fooling_rate"])
    assert batches[1]["previous_pass_fooling_rate"] == res.history[0]["fooling_rate"]
    assert "fooling_rate" not in batches[0]  # the old key showed the previous pass's rate as if current
    assert any(e["event"] == "estimate" and e["estimate_s"] >= 0 and e["upper_s"] >= e["estimate_s"] for e in events)


# --- items 13, 14, 15: outputs, saved state, write failures --------------------------------------------

def test_craft_refuses_a_saved_state_without_resume_or_restart(tmp_path, capsys):
    out = tmp_path / "p"
    state = state_path_for(out)
    state.write_bytes(b"state of an unfinished craft")
    base = ["craft", "uap", "--surrogate", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--out", str(out)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--restart" in err[0] and state.name in err[0]
    assert state.read_bytes() == b"state of an unfinished craft"  # nothing discarded
    assert main(base + ["--resume", "--restart"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # --restart discards it explicitly (then the empty data folder is the next one-line error)
    assert main(base + ["--restart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a VOC tree" in err[0] and not state.exists()


def test_craft_cleans_stale_tmp_files_of_killed_writes(tmp_path):
    out = tmp_path / "p"
    litter = [tmp_path / ".p.npy.abc123.tmp", tmp_path / ".p.json.x.tmp", tmp_path / "..p.craft-state.pt.q.tmp"]  # as atomic_write_bytes names them
    for f in litter:
        f.write_bytes(b"half")
    other = tmp_path / ".other.npy.z.tmp"
    other.write_bytes(b"someone else's")
    path, state = prepare_output(out)
    assert path == tmp_path / "p.npy" and state == tmp_path / ".p.craft-state.pt"
    assert not any(f.exists() for f in litter) and other.exists()


def test_craft_and_train_surrogate_refuse_an_existing_output_unless_overwrite(tmp_path, capsys):
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"22 MB of something else")
    assert main(["craft", "uap", "--surrogate", "x.pt", "--data", str(tmp_path), "--out", str(tmp_path / "victim")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "victim.npy" in err[0] and "--overwrite" in err[0]
    assert main(["craft", "gd-uap", "--source", "x", "--prior", "none", "--data", str(tmp_path),
                 "--out", str(victim)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert victim.read_bytes() == b"22 MB of something else"
    ckpt = tmp_path / "g.pt"
    ckpt.write_bytes(b"unrelated")
    assert main(["train-surrogate", "--arch", "googlenet", "--data", str(tmp_path), "--out", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "g.pt" in err[0] and "--overwrite" in err[0]
    assert ckpt.read_bytes() == b"unrelated"


def test_craft_shipped_needs_an_explicit_out_dir_and_refuses_existing_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["craft", "shipped", "all"])  # no default into the installed package
    assert "--out-dir" in capsys.readouterr().err
    (tmp_path / "gduap-rno.npy").write_bytes(b"keep")
    assert main(["craft", "shipped", "gduap-rno", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert (tmp_path / "gduap-rno.npy").read_bytes() == b"keep"


def test_unwritable_output_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["craft", "gd-uap", "--source", "nonexistent-model", "--prior", "none", "--data", str(tmp_path),
                 "--out", str(blocker / "sub" / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the perturbation here" in err[0] and "a-file" in err[0]


def _tiny_seg():
    from robustbench_seg.models import build_model

    torch.manual_seed(0)
    return build_model("deeplabv3_tiny").eval()


def test_gduap_write_failure_keeps_the_state_and_resume_finishes_it(synth_micro_root, tmp_path, monkeypatch):
    import robustbench_seg.attacks.uap as uap_mod

    cfg = GDUAPConfig(prior="none", size=(24, 24), max_iters=4, val_every=2, val_images=2)
    info = {"name": "tiny", "kind": "module"}
    ref = craft_gduap(_tiny_seg(), synth_micro_root, tmp_path / "ref", cfg=cfg, device="cpu", source_info=info)

    real = uap_mod.save_perturbation

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uap_mod, "save_perturbation", full_disk)
    out = tmp_path / "p"
    with pytest.raises(RbsegError, match=r"cannot write the perturbation \(No space left on device\).*--resume"):
        craft_gduap(_tiny_seg(), synth_micro_root, out, cfg=cfg, device="cpu", source_info=info)
    assert state_path_for(out).is_file() and not (tmp_path / "p.npy").exists()
    monkeypatch.setattr(uap_mod, "save_perturbation", real)
    pert = craft_gduap(_tiny_seg(), synth_micro_root, out, cfg=cfg, device="cpu", source_info=info, resume=True)
    assert np.array_equal(pert.array, ref.array) and not state_path_for(out).exists()
    assert pert.meta["iterations"] == ref.meta["iterations"] == 4


# --- item 3: GD-UAP validation data ------------------------------------------------------------------

@pytest.mark.parametrize("prior", ["all", "partial"])
def test_gduap_validation_is_held_out_of_the_prior_data(synth_micro_root, prior):
    from robustbench_seg.data import voc

    cfg = GDUAPConfig(prior=prior, val_images=6, partial_fraction=0.5)
    prior_ids, val_ids, record = split_prior_and_validation(synth_micro_root, cfg)
    assert len(val_ids) == 6 and prior_ids and not set(prior_ids) & set(val_ids)
    assert record["source"] == "heldout" and record["split"] == "train" and record["disjoint_from_prior"] is True
    assert record["ids_hash"] == ids_hash(val_ids) and set(val_ids) <= set(voc.read_split(synth_micro_root, "train"))
    if prior == "all":
        assert sorted(prior_ids + val_ids) == sorted(voc.read_split(synth_micro_root, "train"))


def test_gduap_data_free_priors_are_not_selected_on_dataset_images(synth_micro_root):
    for prior in ("none", "range"):
        prior_ids, val_ids, record = split_prior_and_validation(synth_micro_root, GDUAPConfig(prior=prior, val_images=4))
        assert prior_ids == [] and val_ids == [] and record["source"] == "range"
    assert GDUAPConfig().val_data == "auto" and GDUAPConfig().val_split is None
    # explicitly held out of another split (naming --val-split is enough): still recorded
    for cfg in (GDUAPConfig(prior="none", val_data="heldout", val_split="val", val_images=3),
                GDUAPConfig(prior="none", val_split="val", val_images=3)):
        _, val_ids, record = split_prior_and_validation(synth_micro_root, cfg)
        assert record["source"] == "heldout" and record["split"] == "val" and len(val_ids) == 3
    with pytest.raises(RbsegError, match="leaves no prior images"):
        split_prior_and_validation(synth_micro_root, GDUAPConfig(prior="all", val_images=10_000))


def test_gduap_records_prior_and_validation_ids_disjoint(synth_micro_root, tmp_path):
    cfg = GDUAPConfig(prior="all", size=(24, 24), max_iters=2, val_every=2, val_images=3, batch_size=2)
    m = craft_gduap(_tiny_seg(), synth_micro_root, tmp_path / "gd", cfg=cfg, device="cpu",
                    source_info={"name": "tiny", "kind": "module"}).meta
    prior_ids, val_ids, _ = split_prior_and_validation(synth_micro_root, cfg)
    assert m["validation"]["ids_hash"] == ids_hash(val_ids) and m["prior_data"]["ids_hash"] == ids_hash(prior_ids)
    assert m["validation"]["disjoint_from_prior"] is True and m["prior_data"]["n_images"] == len(prior_ids)
    assert "held-out" in m["fooling_rate_on"]
    m2 = craft_gduap(_tiny_seg(), synth_micro_root, tmp_path / "rno", cfg=replace(cfg, prior="none"), device="cpu",
                     source_info={"name": "tiny", "kind": "module"}).meta
    assert m2["validation"]["source"] == "range" and "noise" in m2["fooling_rate_on"]


# --- item 2: the GD-UAP source model --------------------------------------------------------------------

def test_gduap_source_recipe_is_a_separate_model_that_is_not_evaluated():
    from robustbench_seg.attacks.recipes import GDUAP_SOURCE
    from robustbench_seg.models.zoo import ZOO_NAMES
    from robustbench_seg.reproduce import Components
    from robustbench_seg.training.recipes import RECIPES, ZOO_RECIPES, recipe_command, recipe_config

    assert GDUAP_SOURCE == "gduap-source" and GDUAP_SOURCE not in ZOO_NAMES and GDUAP_SOURCE not in ZOO_RECIPES
    cfg = recipe_config(GDUAP_SOURCE, "ROOT", "CKPT")
    base = recipe_config("baseline", "ROOT", "CKPT")
    assert cfg.method == base.method == "baseline" and cfg.seed != base.seed
    assert "--seed 1" in recipe_command(GDUAP_SOURCE) and RECIPES[GDUAP_SOURCE]["seed"] == 1
    assert Components.__dataclass_fields__["gduap_source"].default == GDUAP_SOURCE


# --- item 19: default preset and time estimates ----------------------------------------------------------

def test_craft_default_preset_is_trains_default_tiny():
    parser = build_parser()
    train = parser.parse_args(["train", "--method", "baseline", "--data", "d", "--out", "o"])
    uap = parser.parse_args(["craft", "uap", "--surrogate", "x", "--data", "d", "--out", "o"])
    gd = parser.parse_args(["craft", "gd-uap", "--source", "x", "--prior", "none", "--data", "d", "--out", "o"])
    assert train.preset == uap.preset == gd.preset == "tiny"


def test_gduap_cli_prints_an_estimate_before_the_loop(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.models.checkpoint import make_checkpoint, model_config, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "tiny.pt", make_checkpoint(_tiny_seg(), model_config("deeplabv3_tiny")))
    assert main(["craft", "gd-uap", "--source", str(ckpt), "--prior", "none", "--data", str(synth_micro_root),
                 "--out", str(tmp_path / "g"), "--size", "24", "24", "--max-iters", "3", "--val-every", "2",
                 "--val-images", "2", "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert "estimated time: about" in captured.err and "3 iterations at most" in captured.err
    assert json.loads(captured.out)["meta"]["validation"]["source"] == "range"


# --- item 20: the micro preset is bounded -----------------------------------------------------------------

def test_micro_reproduce_preset_bounds_crafting_and_surrogates():
    from robustbench_seg.attacks.recipes import GDUAP_PRESETS, UAP_PRESETS
    from robustbench_seg.reproduce import PRESETS

    micro, tiny = PRESETS["micro"], PRESETS["tiny"]
    assert micro.craft_preset == "micro" and tiny.craft_preset == "tiny" and PRESETS["paper"].craft_preset == "paper"
    assert micro.surrogate_options == {"epochs": 1, "input_size": 32, "width_per_group": 8}
    assert not tiny.surrogate_options and tiny.craft is None
    u = UAP_PRESETS["micro"]
    assert u["n_images"] <= 16 and u["cfg"].max_passes == 1
    g = GDUAP_PRESETS["micro"]
    assert g.max_iters <= 30 and g.val_images <= 6
    # tiny and paper are unchanged
    assert UAP_PRESETS["tiny"]["n_images"] == 64 and UAP_PRESETS["tiny"]["cfg"].max_passes == 2
    assert GDUAP_PRESETS["tiny"].max_iters == 400 and GDUAP_PRESETS["paper"].max_iters == 40000


def test_reproduce_logs_progress_inside_a_pass(monkeypatch):
    import robustbench_seg.reproduce as rp

    lines: list[str] = []
    cb = rp._events("uap-resnet", lines.append, every_s=0.0)
    cb({"event": "estimate", "estimate_s": 12.0, "basis": "x"})
    cb({"event": "batch", "pass": 1, "done": 8, "total": 16, "fooled_so_far": 0.25})
    cb({"event": "pass", "pass": 1, "fooling_rate": 0.5})
    assert len(lines) == 3 and "estimated 12 s" in lines[0] and "done 8" in lines[1] and "fooling_rate 0.500" in lines[2]
    quiet: list[str] = []
    cb = rp._events("x", quiet.append, every_s=3600.0)
    cb({"event": "batch", "pass": 1, "done": 8, "total": 16})
    assert quiet == []


def test_narrow_resnet152_surrogate_for_micro_is_small_and_loads(synth_micro_root, tmp_path):
    from robustbench_seg.attacks.surrogate import build_classifier, load_classifier, train_surrogate

    assert sum(p.numel() for p in build_classifier("resnet152", width_per_group=8).parameters()) < 7_000_000
    with pytest.raises(RbsegError, match="resnet152 only"):
        build_classifier("googlenet", width_per_group=8)
    path = train_surrogate("resnet152", synth_micro_root, tmp_path / "r.pt", epochs=1, input_size=16, device="cpu",
                           width_per_group=8)
    assert path.stat().st_size < 30e6
    clf, info = load_classifier(path)
    assert info["arch"] == "resnet152" and info["width_per_group"] == 8 and clf(torch.rand(2, 3, 16, 16) * 255).shape == (2, 20)
