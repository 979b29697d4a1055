"""Seed replicates (issue 12 target 3): recipes, the reproduce plan, Table 1 mean +- std and the "> 2 std" notes."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from robustbench_seg import reproduce as rp
from robustbench_seg.models.zoo import ZOO_NAMES
from robustbench_seg.reports import tables
from robustbench_seg.reports.inputs import ResultIndex
from robustbench_seg.training import recipes

from test_report import full_records, make_record
from test_reproduce import PERTS, FakePipeline


# --- recipes ---------------------------------------------------------------------------------------

def test_replicate_recipes_differ_from_their_base_only_by_the_seed():
    assert recipes.SEED_REPLICATES and not set(recipes.SEED_REPLICATES) & set(ZOO_NAMES)
    source_seed = recipes.SOURCE_RECIPES["gduap-source"]["seed"]
    for name, (base, seed) in recipes.SEED_REPLICATES.items():
        rep, ref = recipes.zoo_train_config(name), recipes.zoo_train_config(base)
        assert {k for k in rep if rep[k] != ref[k]} == {"seed"}, name
        assert rep["seed"] == seed and seed not in (ref["seed"], source_seed)  # never the zoo model nor the GD-UAP source
    for base in recipes.REPLICATED_METHODS:
        names = recipes.replicates_of(base)
        seeds = [recipes.SEED_REPLICATES[n][1] for n in names]
        assert len(names) >= 2 and len(set(seeds)) == len(seeds)
    # a stage-2 replicate chains to the stage-1 replicate of the same seed
    assert recipes.STAGE2_FROM["binding-seed2"] == "binding-no-denoise-seed2"
    assert recipes.STAGE2_FROM["segmix-seed3"] == "segmix-no-denoise-seed3"
    assert recipes.STAGE2_FROM["binding"] == "binding-no-denoise"


def test_presets_ask_for_replicates_only_on_bench():
    assert rp.PRESETS["bench"].seed_replicates == 3
    assert rp.PRESETS["tiny"].seed_replicates == rp.PRESETS["micro"].seed_replicates == 1
    wired = rp.default_components().seed_replicates
    assert set(wired) == set(recipes.REPLICATED_METHODS) and wired["binding"] == ("binding-seed2", "binding-seed3")


# --- the plan --------------------------------------------------------------------------------------

class OptionsFake(FakePipeline):
    """Also records the stage2_from checkpoint each training gets."""

    def __init__(self):
        super().__init__()
        self.stage2: dict[str, str] = {}

    def train(self, name, data_root, out, preset, device, **options):
        if "stage2_from" in options:
            self.stage2[name] = options["stage2_from"]
        return super().train(name, data_root, out, preset, device, **options)

    def components(self):
        return replace(super().components(), stage2_from=dict(recipes.STAGE2_FROM),
                       seed_replicates={b: tuple(recipes.replicates_of(b)) for b in recipes.REPLICATED_METHODS})


def test_reproduce_plan_trains_exports_and_evaluates_the_seed_replicates(tmp_path, monkeypatch):
    monkeypatch.setitem(rp.PRESETS, "micro", replace(rp.PRESETS["micro"], seed_replicates=3))
    fake = OptionsFake()
    rp.reproduce("micro", out=tmp_path, components=fake.components())
    reps = [n for b in recipes.REPLICATED_METHODS for n in recipes.replicates_of(b, 2)]
    assert len(reps) == 6
    trained = [c[1] for c in fake.calls if c[0] == "train"]
    stage1 = {"binding-no-denoise-seed2", "binding-no-denoise-seed3", "segmix-no-denoise-seed2", "segmix-no-denoise-seed3"}
    assert set(reps) | stage1 <= set(trained) and len(trained) == len(set(trained))
    for name in ("binding-seed2", "binding-seed3", "segmix-seed2", "segmix-seed3"):
        source = recipes.STAGE2_FROM[name]
        assert trained.index(source) < trained.index(name)
        assert Path(fake.stage2[name]) == tmp_path / "work" / "train" / source / "last.pt"  # its own stage 1
    assert Path(fake.stage2["binding"]).parent.name == "binding-no-denoise"  # the zoo chain is unchanged
    exported = [c[1] for c in fake.calls if c[0] == "export"]
    assert set(reps) <= set(exported) and not stage1 & set(exported)
    for name in reps:
        assert (tmp_path / "models" / "replicates" / f"{name}.pt").is_file()
        assert not (tmp_path / "models" / f"{name}.pt").exists()
    evals = {(c[1], c[2]): c[3] for c in fake.calls if c[0] == "evaluate"}
    for name in reps:
        assert evals[(name, "val")] == PERTS and (name, "ooc") not in evals
    # the report got the replicates: Table 1 shows mean +- std for the replicated rows
    md = (tmp_path / "reports" / "tables" / "table1.md").read_text(encoding="utf-8")
    assert "(n=3 seeds)" in md and "(single run)" in md and tables.PLUS_MINUS in md


def test_reproduce_plan_without_replicates_is_unchanged(tmp_path):
    fake = OptionsFake()
    rp.reproduce("micro", out=tmp_path, components=fake.components())
    names = {c[1] for c in fake.calls if c[0] in ("train", "export", "evaluate")}
    assert not names & set(recipes.SEED_REPLICATES)
    assert not (tmp_path / "models" / "replicates").exists()


def test_a_preset_asking_for_more_replicates_than_registered_is_a_clear_error(tmp_path, monkeypatch):
    import pytest
    from robustbench_seg.errors import RbsegError

    monkeypatch.setitem(rp.PRESETS, "micro", replace(rp.PRESETS["micro"], seed_replicates=9))
    with pytest.raises(RbsegError, match="asks for 9 runs of 'baseline'"):
        rp.reproduce("micro", out=tmp_path, components=OptionsFake().components())


# --- the report ------------------------------------------------------------------------------------

def _clean(model: str, miou: float, occ1: float | None = None) -> dict:
    return make_record(model, "clean", "val", miou, {"occ1": (20, occ1, None)} if occ1 is not None else None)


def _replicated_index() -> ResultIndex:
    return ResultIndex.from_records([
        _clean("baseline", 50.0, 40.0), _clean("baseline-seed2", 52.0, 41.0), _clean("baseline-seed3", 57.0, 42.0),
        _clean("mixup", 55.0, 45.0), _clean("cutmix", 54.0, 40.5),
        _clean("binding", 60.0, 41.5), _clean("binding-seed2", 61.0),
    ])


def test_table1_shows_mean_and_sample_std_over_seeds(tmp_path):
    t = tables.table1(_replicated_index())
    rows = {r.key: r for r in t.rows}
    base = rows["val/baseline"].cells[0]
    # baseline 50, 52, 57: mean 53, sample std sqrt((9 + 1 + 16) / 2) = sqrt(13) = 3.6056
    assert base.value == 53.0 and abs(base.std - 13 ** 0.5) < 1e-9 and base.n_runs == 3
    bind = rows["val/binding"].cells[0]
    assert bind.value == 60.5 and abs(bind.std - 0.5 ** 0.5) < 1e-9 and bind.n_runs == 2
    assert rows["val/mixup"].cells[0].std is None and rows["val/mixup"].cells[0].value == 55.0
    assert rows["val/baseline"].stub[1] == "DeepLabv3 (n=3 seeds)"
    assert rows["val/mixup"].stub[1] == "DeepLabv3 + Mixup (single run)"
    md = tables.to_markdown(t)
    assert "53.0 \u00b1 3.6" in md and "60.5 \u00b1 0.7" in md
    assert r"53.0 $\pm$ 3.6" in tables.to_latex(t)
    assert "53.0 \u00b1 3.6" in tables.to_csv(t)
    # no replicate becomes a row of its own
    assert not [r for r in t.rows if "seed" in r.key]


def test_table1_note_lists_the_differences_beyond_two_std():
    note = [n for n in tables.table1(_replicated_index()).notes if n.startswith("Beyond seed noise")]
    assert len(note) == 1
    # binding 60.5 vs baseline 53.0: d = 7.5, s = max(3.606, 0.707): 2 s = 7.2 -> listed; vs mixup 55 (single):
    # d = 5.5, 2 s = 1.4 -> listed; mixup vs baseline: d = 2.0 < 7.2 -> not; mixup vs cutmix: no std -> not
    assert "DeepLabv3 + Binding (CC) vs DeepLabv3: +7.5 (> 2 std = 7.2)" in note[0]
    assert "DeepLabv3 + Binding (CC) vs DeepLabv3 + Mixup: +5.5 (> 2 std = 1.4)" in note[0]
    assert "DeepLabv3 + Binding (CC) vs DeepLabv3 + CutMix: +6.5 (> 2 std = 1.4)" in note[0]
    assert "DeepLabv3 + Mixup vs DeepLabv3:" not in note[0] and "CutMix vs DeepLabv3 + Mixup" not in note[0]


def test_table2_note_uses_the_seed_std_of_each_cell():
    t = tables.table2(_replicated_index())
    assert t.rows[1].key == "baseline" and t.rows[1].cells[0].value == 40.0  # shown: the zoo model's own run
    note = [n for n in t.notes if n.startswith("Beyond seed noise")]
    # occ1: baseline 40, 41, 42 -> std 1.0; mixup 45: +5.0 > 2.0; cutmix 40.5 / binding 41.5 vs baseline: < 2.0
    assert note and "1-Occ: DeepLabv3 + Mixup vs DeepLabv3: +5.0 (> 2 std = 2.0)" in note[0]
    assert "CutMix vs DeepLabv3:" not in note[0] and "Binding (CC) vs DeepLabv3:" not in note[0]


def test_without_replicates_tables_1_to_4_are_unchanged():
    index = ResultIndex.from_records(full_records())
    for fn in (tables.table1, tables.table2, tables.table3, tables.table4):
        t = fn(index)
        assert not [n for n in t.notes if "seed" in n.lower()]
        assert all(c.std is None for r in t.rows for c in r.cells)
        assert not [r for r in t.rows if "single run" in " ".join(r.stub)]
    assert json.dumps(tables.to_csv(tables.table1(index))).count("\\u00b1") == 0


# --- the report's headline (reports/headline.py) ----------------------------------------------------

def test_headline_sentences_are_computed_from_the_results():
    from robustbench_seg.reports.headline import headline

    records = [
        _clean("baseline", 50.0, 40.0), _clean("baseline-seed2", 52.0, 41.0), _clean("baseline-seed3", 57.0, 42.0),
        _clean("mixup", 55.0, 45.0), _clean("cutmix", 54.0, 40.5), _clean("binding", 60.0, 41.5),
        make_record("baseline", "gduap-rall", "val", 30.0), make_record("mixup", "gduap-rall", "val", 45.0),
        make_record("baseline-seed2", "gduap-rall", "val", 1.0),  # a replicate: not one of Table 4's rows
    ]
    clean, seed, attack, subsets = headline(ResultIndex.from_records(records))
    # baseline 50, 52, 57: mean 53.0, sample std sqrt(13) = 3.61; the range over the 4 non-replicate models
    assert clean == ("Clean val mIoU (Table 1): baseline 53.0 \u00b1 3.6 (n=3 seeds), mixup 55.0 (one seed), "
                     "cutmix 54.0 (one seed), binding 60.0 (one seed); over all 4 evaluated models 50.0 (baseline) "
                     "to 60.0 (binding).")
    assert seed.startswith("Seed-to-seed sample std of the clean val mIoU: baseline 3.61 points;")
    # drops: baseline 50 - 30 = 20, mixup 55 - 45 = 10 -> mean 15; the replicate's 51 is not counted
    assert attack == ("Mean mIoU drop under each universal perturbation over 4 models (Table 4): "
                      "gduap-rall 15.0 (range 10.0 to 20.0).")
    # every clean record holds occ1 (20 images) only
    assert subsets == "Subsets (Tables 2-3, Figure 4): 1 subsets of the val split, the smallest 'occ1' with 20 images."
    assert headline(ResultIndex.from_records([make_record("x", "uap-resnet", "val", 3.0)])) == []
