"""SegMix (IJCV 2023): the co-occurrence blend ``--blend cm`` on hand-computed values, its training runs
(resume, sharding, CLI on a VOC-layout tree), the ``segmix`` zoo recipe, the ``ijcv`` preset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_seg.cli import main
from robustbench_seg.data import voc
from robustbench_seg.data.transforms import normalize
from robustbench_seg.io import ids_hash
from robustbench_seg.models import read_checkpoint
from robustbench_seg.training import TrainConfig, cooccurrence as co, methods, resolve_config, train, trainer
from robustbench_seg.training.samplers import PlainSampler, epoch_batches
from trainhelpers import cfg, killed_at as _killed_at, states_equal

pytestmark = pytest.mark.usefixtures("one_thread")

PERSON, MBIKE, HORSE = 15, 14, 13




# --- C_ss, scores, partners, delta: hand-computed --------------------------------------------------

def test_cooccurrence_ss_counts_images_holding_both_foreground_classes():
    sets = [[0, 1, 2], [1, 2, 3, 255], [15], [0, 255], [2, 3], [0, 1, 2]]
    c = co.cooccurrence_ss(sets)
    assert c.shape == (20, 20) and c.dtype == np.int64
    assert c[0, 1] == c[1, 0] == 3  # {1, 2}: images 0, 1, 5
    assert c[1, 2] == c[2, 1] == 2  # {2, 3}: images 1, 4
    assert c[0, 2] == c[2, 0] == 1  # {1, 3}: image 1
    assert np.all(np.diag(c) == 0) and c[14].sum() == 0  # diagonal 0; class 15 alone co-occurs with nothing
    assert c.sum() == 2 * (3 + 2 + 1)  # background and void never count


def test_mask_presence_leaves_out_background_and_void():
    masks = torch.zeros(3, 4, 5, dtype=torch.long)
    masks[0, 0, 0], masks[0, 1, 1], masks[0, 2, 2] = 3, 20, 255
    masks[1] = 255
    masks[2, :, :2] = PERSON
    got = co.mask_presence(masks)
    assert got.shape == (3, 20) and got.dtype == bool
    assert np.flatnonzero(got[0]).tolist() == [2, 19] and not got[1].any() and np.flatnonzero(got[2]).tolist() == [PERSON - 1]


def _hand_cooc() -> np.ndarray:
    c = np.zeros((20, 20), dtype=np.int64)
    for a, b, n in ((PERSON, MBIKE, 5), (PERSON, HORSE, 2), (1, 2, 1)):
        c[a - 1, b - 1] = c[b - 1, a - 1] = n
    return c


# batch: 0 {person}, 1 {mbike}, 2 {horse}, 3 {} (no foreground), 4 {mbike} (ties with 1 for image 0)
BATCH_CATS = [[PERSON], [MBIKE], [HORSE], [], [MBIKE]]


def test_similarity_scores_hand_computed():
    s = co.similarity_scores(co.presence(BATCH_CATS), _hand_cooc())
    assert s.tolist() == [
        [-1, 5, 2, 0, 5],
        [5, -1, 0, 0, 0],
        [2, 0, -1, 0, 0],
        [0, 0, 0, -1, 0],
        [5, 0, 0, 0, -1],
    ]
    # a two-class image sums over both classes: {person, horse} vs {mbike} = C[p][m] + C[h][m] = 5 + 0
    two = co.similarity_scores(co.presence([[PERSON, HORSE], [MBIKE], [PERSON]]), _hand_cooc())
    assert two[0].tolist() == [-1, 5, 2] and two[2].tolist() == [2, 5, -1]


def test_argmax_partner_with_a_tie_and_an_image_without_foreground():
    s = co.similarity_scores(co.presence(BATCH_CATS), _hand_cooc())
    rng = np.random.default_rng(0)
    draws = np.stack([co.choose_partners(s, rng) for _ in range(4000)])
    assert np.all(draws[:, 1] == 0) and np.all(draws[:, 2] == 0) and np.all(draws[:, 4] == 0)  # unique argmax
    # tie (images 1 and 4 both score 5 for image 0): uniform among the maxima only
    assert set(draws[:, 0]) == {1, 4} and abs(np.mean(draws[:, 0] == 1) - 0.5) < 0.04
    # no foreground: every score 0, so uniform among all the others, never itself
    assert set(draws[:, 3]) == {0, 1, 2, 4}
    assert all(abs(np.mean(draws[:, 3] == m) - 0.25) < 0.04 for m in (0, 1, 2, 4))
    # a pure function of the generator's seed
    assert np.array_equal(co.choose_partners(s, np.random.default_rng(7)), co.choose_partners(s, np.random.default_rng(7)))
    with pytest.raises(ValueError):
        co.choose_partners(np.array([[-1]]), rng)


def test_delta_from_beta_once_per_batch_or_per_pair_and_folded_by_max():
    ref = np.random.default_rng(3).beta(0.5, 0.5)
    sym = co.draw_delta(0.5, 4, np.random.default_rng(3), mode="sym")
    assert np.all(sym == ref)  # one draw for the whole batch (the pseudo-code)
    assert np.all(co.draw_delta(0.5, 4, np.random.default_rng(3), mode="max") == max(ref, 1 - ref))
    per = co.draw_delta(0.5, 4, np.random.default_rng(3), mode="sym", per="pair")
    assert np.array_equal(per, np.random.default_rng(3).beta(0.5, 0.5, size=4)) and len(set(per)) == 4
    many = co.draw_delta(0.5, 5000, np.random.default_rng(1), mode="max", per="pair")
    assert many.min() >= 0.5 and many.max() <= 1.0
    assert np.all(co.draw_delta(0.0, 3, np.random.default_rng(0)) == 1.0)  # alpha 0: no blending


def test_gamma_rule_delta09_skip_and_none():
    delta = np.array([0.6, 0.6, 0.6, 0.6])
    n_cats = np.array([1, 2, 3, 0])
    partner = np.array([1, 2, 0, 0])  # pair sizes 3, 5, 4, 1
    d, b = co.apply_over_limit(delta, n_cats, partner, gamma=4, rule="delta09")
    assert d.tolist() == [0.6, 0.9, 0.6, 0.6] and b.all()  # only 5 > 4
    d, b = co.apply_over_limit(delta, n_cats, partner, gamma=3, rule="skip")
    assert d.tolist() == [0.6, 1.0, 1.0, 0.6] and b.tolist() == [True, False, False, True]
    d, b = co.apply_over_limit(delta, n_cats, partner, gamma=1, rule="none")
    assert d.tolist() == delta.tolist() and b.all()
    assert delta.tolist() == [0.6] * 4  # input untouched


class _Recorder(nn.Module):
    """A stand-in binding network: records its input, returns the three outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 21, 1)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        y = self.conv(x)
        return {"out": y, "dominant": y, "phantom": y * 0.5, "binding": y * 2}


@pytest.mark.parametrize("rule", ["delta09", "skip"])
def test_cm_step_blends_each_image_with_its_partner_and_keeps_labels_apart(monkeypatch, rule):
    masks = torch.zeros(5, 6, 6, dtype=torch.long)
    for k, cats in enumerate(BATCH_CATS):
        for j, c in enumerate(cats):
            masks[k, :, j] = c
    masks[0, :, 3] = HORSE  # image 0: {person, horse} -> 2 categories, partners of size 1 -> pairs of 3
    images = torch.arange(5 * 3 * 36, dtype=torch.float32).view(5, 3, 6, 6) % 251
    seen = {}
    real_loss = methods.losses.binding_loss

    def spy(out, g1, g2, delta):
        seen.update(g1=g1.clone(), g2=g2.clone(), delta=delta.clone())
        return real_loss(out, g1, g2, delta)

    monkeypatch.setattr(methods.losses, "binding_loss", spy)
    step = methods.make_cm_step(_hand_cooc(), alpha=0.4, gamma=2, mode="max", per="batch", rule=rule)
    model = _Recorder()
    loss, logs = step(methods.StepContext(torch.device("cpu")), model, {"image": images, "mask": masks}, np.random.default_rng(5))
    assert torch.isfinite(loss)
    # the same draws, by hand
    pres = co.presence([[PERSON, HORSE], [MBIKE], [HORSE], [], [MBIKE]])
    want = co.cm_pairs(pres, _hand_cooc(), np.random.default_rng(5), 0.4, 2, "max", "batch", rule)
    assert want.partner[0] in (1, 4) and want.partner[1] == 0 and want.partner[2] == 0
    over = np.array([True, True, True, False, True])  # |cats(k)| + |cats(partner)| > 2
    d = want.delta
    if rule == "delta09":
        assert np.allclose(d[over], 0.9) and want.blended.all() and 0.5 <= d[3] <= 1.0
    else:
        assert np.all(d[over] == 1.0) and want.blended.tolist() == (~over).tolist()
    assert torch.allclose(seen["delta"], torch.tensor(d, dtype=torch.float32))
    p = torch.as_tensor(want.partner)
    dt = torch.tensor(d, dtype=torch.float32).view(-1, 1, 1, 1)
    assert torch.allclose(model.seen, normalize(dt * images + (1 - dt) * images[p]), atol=1e-5)
    assert torch.equal(seen["g1"], masks)  # dominant labels G_k untouched
    for k in range(5):
        expect = masks[p[k]] if want.blended[k] else torch.full_like(masks[k], 255)  # phantom G_top, or void if skipped
        assert torch.equal(seen["g2"][k], expect)
    assert logs["blended"] == float(want.blended.mean())


# --- sharding: each rank blends inside its own batch -------------------------------------------------

@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (33, 5, 3), (9, 4, 2)])
def test_cm_batches_are_sharded_without_drop_or_repeat_and_partners_stay_in_the_rank_batch(n, batch, world):
    rng = np.random.default_rng(n)
    cats = [sorted(set(rng.integers(1, 21, size=rng.integers(0, 4)).tolist())) for _ in range(n)]
    c_ss = co.cooccurrence_ss(cats)
    items = PlainSampler(n, seed=4, stage=0).epoch_items(1)
    dominants = []
    for rank in range(world):
        for b, chunk in enumerate(epoch_batches(items, batch, world, rank)):
            members = [it.first for it in chunk]
            pairs = co.cm_pairs(co.presence([cats[i] for i in members]), c_ss, np.random.default_rng([rank, b]), 0.2, 4)
            assert all(0 <= j < len(members) and j != k for k, j in enumerate(pairs.partner))
            dominants += members
    assert sorted(dominants) == list(range(n))  # every image once as the dominant image per epoch


def test_torchrun_ddp_cm_two_processes(synth_micro_root, tmp_path):
    """DDP on CPU (gloo) with --blend cm: each rank picks partners inside its own shard of the batch."""
    from subprocs import run_rbseg

    out = tmp_path / "ddp.pt"
    run_rbseg(["train", "--method", "binding", "--blend", "cm", "--no-denoise", "--gamma", "3",
               "--data", str(synth_micro_root), "--out", str(out), "--steps", "3", "--crop", "32", "--fbh-hidden", "8",
               "--batch-size", "3", "--device", "cpu", "--val-split", "none", "--quiet"], nproc=2)
    ck = read_checkpoint(out)
    assert ck["progress"]["finished"] and ck["progress"]["global_step"] == 3 and ck["training"]["gamma"] == 3
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


# --- training runs ------------------------------------------------------------------------------------

def test_cm_run_records_its_options_and_resumes_bit_identically(synth_micro_root, tmp_path, monkeypatch):
    opts = dict(method="binding", blend="cm", steps=6, stage2_steps=2, checkpoint_every=2, fbh_hidden=8, alpha=0.4)
    straight_ck = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "a.pt", **opts)))
    t = straight_ck["training"]
    assert (t["blend"], t["alpha"], t["gamma"], t["cm_delta"], t["cm_delta_draw"], t["cm_over_limit"], t["cm_split"]) == \
        ("cm", 0.4, 4, "max", "batch", "delta09", "train_aug")
    rec = straight_ck["dataset"]["cooccurrence"]
    ids = voc.read_split(synth_micro_root, "train_aug")
    assert rec["split"] == "train_aug" and rec["n_images"] == len(ids) and rec["ids_hash"] == ids_hash(ids)
    out = tmp_path / "b.pt"
    with pytest.raises(_killed_at(monkeypatch, "stage1", 5)):  # last checkpoint: step 4
        train(cfg(synth_micro_root, out, **opts))
    assert read_checkpoint(out)["progress"]["global_step"] == 4
    monkeypatch.setattr(trainer, "AFTER_STEP", None)
    resumed = read_checkpoint(train(cfg(synth_micro_root, out, resume=True, **opts)))["state_dict"]
    assert states_equal(straight_ck["state_dict"], resumed)
    # the partner choice matters: sym deltas give other weights
    other = read_checkpoint(train(cfg(synth_micro_root, tmp_path / "c.pt", **{**opts, "cm_delta": "sym"})))["state_dict"]
    assert not states_equal(straight_ck["state_dict"], other)


def _voc_tree(base):
    from vocfactory import VOCTree, stripes

    tree = VOCTree(base)
    layouts = [[0, PERSON, MBIKE], [0, PERSON], [0, MBIKE], [HORSE, 0], [0, PERSON, HORSE], [0, 1, 2], [2, 0], [0]]
    for k, labels in enumerate(layouts):
        tree.add(f"2008_{k:06d}", stripes(labels, h=36, w=40), splits=("train_aug", "train"))
    for k, labels in enumerate([[0, PERSON], [0, 1, 2, 3]]):
        tree.add(f"2009_{k:06d}", stripes(labels, h=36, w=40), splits=("val",))
    return tree.root


def test_cli_cm_on_a_voc_layout_tree_with_options_and_bad_input(tmp_path, capsys):
    root = _voc_tree(tmp_path / "voc")
    out = tmp_path / "cm.pt"
    rc = main(["train", "--method", "binding", "--blend", "cm", "--alpha", "0.3", "--gamma", "2", "--cm-delta", "sym",
               "--cm-delta-draw", "pair", "--cm-over-limit", "skip", "--cm-split", "val", "--no-denoise",
               "--data", str(root), "--out", str(out), "--steps", "2", "--crop", "32", "--batch-size", "4",
               "--fbh-hidden", "8", "--val-split", "none", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    ck = read_checkpoint(out)
    t = ck["training"]
    assert (t["alpha"], t["gamma"], t["cm_delta"], t["cm_delta_draw"], t["cm_over_limit"], t["cm_split"]) == \
        (0.3, 2, "sym", "pair", "skip", "val")
    assert ck["dataset"]["cooccurrence"]["split"] == "val"
    assert ck["dataset"]["cooccurrence"]["ids_hash"] == ids_hash(["2009_000000", "2009_000001"])
    base = ["train", "--method", "binding", "--data", str(root), "--out", str(tmp_path / "bad.pt"), "--steps", "1"]
    for extra, needle in ((["--blend", "cm", "--gamma", "0"], "--gamma"), (["--blend", "cm", "--alpha", "-1"], "--alpha"),
                          (["--blend", "cfb", "--gamma", "3"], "--blend cm")):
        rc = main(base + extra)
        err = capsys.readouterr().err
        assert rc != 0 and needle in err and err.startswith("rbseg: error:") and err.count("\n") == 1
    assert not (tmp_path / "bad.pt").exists()


def test_segmix_recipe_is_stage2_of_the_segmix_no_denoise_recipe(synth_micro_root, tmp_path):
    from robustbench_seg.models.zoo import ZOO_NAMES
    from robustbench_seg.reproduce import default_components
    from robustbench_seg.training import train_recipe
    from robustbench_seg.training.recipes import STAGE2_FROM, ZOO_RECIPES, recipe_command

    assert STAGE2_FROM["segmix"] == "segmix-no-denoise" and {"segmix", "segmix-no-denoise"} <= set(ZOO_NAMES)
    assert ZOO_RECIPES["segmix"] == {"method": "binding", "blend": "cm"}
    assert "--blend cm" in recipe_command("segmix") and "--stage2-from CKPT_OF_segmix-no-denoise" in recipe_command("segmix")
    comp = default_components()  # what `rbseg reproduce` trains
    assert {"segmix", "segmix-no-denoise"} <= set(comp.model_names) and comp.stage2_from["segmix"] == "segmix-no-denoise"
    opts = dict(crop=32, batch_size=4, steps=2, stage2_steps=2, val_split=None, num_workers=0, checkpoint_every=None, fbh_hidden=8)
    out = train_recipe("segmix", synth_micro_root, tmp_path / "train" / "segmix", device="cpu", progress=False, **opts)
    stage1 = tmp_path / "train" / "segmix-no-denoise" / "segmix-no-denoise.pt"
    ck, src = read_checkpoint(out), read_checkpoint(stage1)
    assert ck["training"]["stage2_from"] == str(stage1) and list(ck["progress"]["seconds"]) == ["stage2"]
    assert src["training"]["blend"] == "cm" and src["training"]["denoise"] is False and "cooccurrence" in src["dataset"]


def test_table11_caps_are_recipes_trained_on_request_not_zoo_entries():
    from robustbench_seg.models.zoo import ZOO_NAMES
    from robustbench_seg.reports import spec
    from robustbench_seg.training.recipes import RECIPES, TABLE11_RECIPES, recipe_command, recipe_config

    assert set(TABLE11_RECIPES) | {"segmix-no-denoise"} == set(spec.TABLE11_ROWS)
    assert not set(TABLE11_RECIPES) & set(ZOO_NAMES) and set(TABLE11_RECIPES) <= set(RECIPES)
    c = resolve_config(recipe_config("segmix-max3", "ROOT", "CKPT"))
    assert (c.blend, c.denoise, c.cm_over_limit, c.gamma) == ("cm", False, "skip", 3)
    assert resolve_config(recipe_config("segmix-maxinf", "ROOT", "CKPT")).cm_over_limit == "none"
    assert "--cm-over-limit skip --gamma 2" in recipe_command("segmix-max2")


def test_ijcv_preset_sets_the_segmix_paper_schedule():
    c = resolve_config(TrainConfig(method="binding", blend="cm", preset="ijcv", data="ROOT", out="CKPT"))
    assert (c.epochs, c.crop, c.arch, c.stage2_epochs, c.steps) == (50, 513, "deeplabv3_resnet101", 30, None)
    assert (c.optimizer, c.lr, c.batch_size, c.weights_backbone) == ("sgd", 2.5e-4, 10, "imagenet")
    assert (c.alpha, c.gamma, c.cm_delta, c.cm_over_limit, c.cm_split) == (0.4, 4, "max", "delta09", "train_aug")
    assert c.pairs_per_image is None  # cm has no pair expansion
    assert resolve_config(TrainConfig(method="binding", preset="ijcv", crop=321, data="R", out="C")).crop == 321
    plain = resolve_config(TrainConfig(method="binding", data="R", out="C"))
    assert (plain.gamma, plain.cm_delta, plain.cm_split) == (None, None, None)  # other blends record none of it


# --- reports: SegMix rows / lines and IJCV Table 11 --------------------------------------------------

def test_report_builds_with_and_without_segmix_results(tmp_path):
    from test_report import full_records, make_record, value, write_store

    from robustbench_seg.reports import build_report, figures, spec, tables
    from robustbench_seg.reports.inputs import ResultIndex

    four = spec.MAIN_METHODS
    without = ResultIndex.from_records(full_records(models=four, perts=["clean"]))
    t1 = tables.table1(without)
    assert [r.key for r in t1.rows] == [f"val/{m}" for m in four] and t1.complete
    assert "No results for segmix" in t1.caption()
    assert all("segmix" not in [r.key for r in t.rows] for t in (tables.table2(without), tables.table3(without), tables.table4(without)))
    assert set(figures.figure4(without, tmp_path / "f0").data) == set(four)
    t11 = tables.table11(without)
    assert [r.key for r in t11.rows] == list(spec.TABLE11_ROWS) and all(c.value is None for r in t11.rows for c in r.cells)
    assert "Not evaluated: segmix-max2, segmix-max3, segmix-max4, segmix-maxinf, segmix-no-denoise." in t11.caption()
    assert not t11.complete and "78.3" in t11.caption()  # the paper's figure is quoted

    recs = full_records(models=four + ("segmix",)) + [make_record("segmix-max2", miou=41.0),
                                                      make_record("segmix-no-denoise", miou=43.5)]
    index = ResultIndex.from_records(recs)
    t1 = tables.table1(index)
    assert [r.key for r in t1.rows] == [f"val/{m}" for m in four + ("segmix",)]
    assert t1.rows[-1].stub == ["Val", "DeepLabv3 + SegMix (CM)"] and t1.rows[-1].cells[0].value == value("segmix")
    assert spec.METHOD_LABELS["binding"] == "DeepLabv3 + Binding (CC)"
    for t in (tables.table2(index), tables.table3(index), tables.table4(index)):
        assert [r.key for r in t.rows if r.key != "n_images"][-1] == "segmix" and t.complete, t.key
    assert list(figures.figure4(index, tmp_path / "f1").data)[-1] == "segmix"
    assert "segmix" in figures.robustness_chart(index, tmp_path / "f1").data
    t11 = tables.table11(index)
    got = {r.key: r.cells[0].value for r in t11.rows}
    assert got == {"segmix-max2": 41.0, "segmix-max3": None, "segmix-max4": None, "segmix-maxinf": None, "segmix-no-denoise": 43.5}
    assert "Not evaluated: segmix-max3, segmix-max4, segmix-maxinf." in t11.caption()
    assert "**43.5**" in tables.to_markdown(t11)

    for name, records in (("without", full_records(models=four)), ("with", recs)):
        out = tmp_path / name / "reports"
        build_report(write_store(tmp_path / name / "results", records), out, qualitative=False)
        md = (out / "tables" / "table11.md").read_text()
        assert md.startswith("## IJCV Table 11") and (out / "tables" / "table11.tex").is_file()
        assert ("SegMix (CM)" in (out / "tables" / "table1.md").read_text()) == (name == "with")
