"""Per-image attacks through the one evaluation pass: results, per-image statistics, worst case,
caching, resume, class weights, the CLI, the report's attack tables and ``rbseg check``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustbench_seg.data import voc
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation import results as store
from robustbench_seg.evaluation.engine import evaluate, size_batches
from robustbench_seg.evaluation.metric import batched_confusion_matrix, metrics_from_confusion
from tinynets import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    """``module:function`` entry point for the CLI and torchrun tests."""
    return TinyNet(seed=5)


def _eval(root, out, attacks="pgd,segpgd", eps=(4,), steps=2, model=None, **kw):
    model = model if model is not None else TinyNet(seed=5)
    kw.setdefault("subsets", "obj1,obj2")
    return evaluate(model, data_root=root, perturbations="none", attacks=attacks, eps=list(eps), steps=steps,
                    out=out, device="cpu", progress=False, model_name="tiny", **kw)


def _by_name(records):
    return {r.perturbation["name"]: r for r in records}


def test_attacks_run_in_the_one_pass_and_record_every_parameter(synth_micro_root, tmp_path):
    records = _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,))
    assert [r.perturbation.get("kind") for r in records] == ["clean", "attack"]
    clean, pgd = records
    attack = pgd.perturbation["attack"]
    assert attack["name"] == "pgd" and attack["eps"] == 4.0 and attack["steps"] == 2
    assert attack["dtype"] == "float32" and attack["seed"] == engine.SEED and attack["version"]
    assert isinstance(attack["params"], dict) and attack["params"]  # step size, restarts, ... as the attack defines
    assert pgd.perturbation["sha256"] and pgd.protocol["world_size"] == 1
    # a white-box attack lowers the mIoU of the model it attacks
    assert pgd.miou() < clean.miou()
    # the result file and its per-image statistics beside it
    path = store.record_path(tmp_path, pgd)
    assert path.name == f"{store.safe_name(pgd.perturbation['name'])}.json"
    stats = store.load_per_image(store.read_result(path), path)
    ids = voc.read_split(synth_micro_root, "val")
    assert stats.shape == (len(ids), 21, 21)
    assert pgd.per_image["ids_sha256"] == store.ordered_ids_sha256(ids)
    # the per-image matrices sum to the recorded full-split numbers
    assert metrics_from_confusion(torch.from_numpy(stats.sum(0))).miou == pytest.approx(pgd.miou())
    # no per-image file for clean
    assert clean.per_image is None and not list(tmp_path.rglob("clean.perimage.npy"))


def test_engine_attack_equals_a_direct_loop_over_the_same_batches(synth_micro_root, tmp_path):
    """The pass runs the attack on its same-size batches with its seeded generator: a plain loop
    calling ``run_attack`` on the same batches gives the same per-image confusion matrices."""
    from robustbench_seg.attacks.perimage import build_attacks, run_attack

    model = TinyNet(seed=5)
    records = _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,), model=model, channels_last=False, batch_size=3)
    path = store.record_path(tmp_path, records[1])
    got = store.load_per_image(store.read_result(path), path)
    spec = build_attacks(["pgd"], [4.0], steps=2, preset="quick")[0]
    ids = voc.read_split(synth_micro_root, "val")
    sizes = [engine.image_size(voc.image_path(synth_micro_root, i)) for i in ids]
    inp = engine.AttackInput(spec, spec.key())
    want = np.zeros_like(got)
    model.eval()
    for batch in size_batches(sizes, 3):
        x = torch.stack([torch.from_numpy(voc.read_image(voc.image_path(synth_micro_root, ids[k]))).permute(2, 0, 1)
                         for k in batch]).float()
        y = torch.stack([torch.from_numpy(voc.read_mask(voc.mask_path(synth_micro_root, ids[k], "val"))) for k in batch]).long()
        adv = run_attack(spec, lambda z: engine.forward_logits(model, z), x, y, seeds=inp.seeds(batch))
        assert (adv - x).abs().max() <= 4.0 + 1e-4
        with torch.no_grad():
            pred = engine.forward_logits(model, adv).argmax(1)
        want[batch] = batched_confusion_matrix(pred, y).numpy()
    np.testing.assert_array_equal(got, want)


def test_worst_case_over_two_attacks_on_the_split_and_each_subset(synth_micro_root, tmp_path):
    records = _by_name(_eval(synth_micro_root, tmp_path, attacks="pgd,segpgd", eps=(4,)))
    worst = records["worst-eps4"]
    members = [r for r in records.values() if r.perturbation.get("kind") == "attack"]
    assert len(members) == 2
    assert {a["name"] for a in worst.perturbation["worst"]["attacks"]} == {r.perturbation["name"] for r in members}
    for subset in worst.subsets:
        entry = worst.subsets[subset]
        assert entry["worst"]["rounds"] >= 0 and sum(entry["worst"]["chosen"].values()) == entry["n_images"]
        mious = [r.miou(subset) for r in members if r.miou(subset) is not None]
        accs = [r.subsets[subset]["metrics"]["pixel_acc"] for r in members]
        if mious:
            assert entry["metrics"]["miou"] <= min(mious) + 1e-9
        assert entry["metrics"]["pixel_acc"] <= min(accs) + 1e-9
    # the subset's worst case is the greedy restricted to the subset's images
    folder = store.record_path(tmp_path, worst).parent
    paths = [folder / f"{store.safe_name(r.perturbation['name'])}.json"
             for r in sorted(members, key=lambda r: r.perturbation["name"])]
    cms = np.stack([store.load_per_image(store.read_result(p), p) for p in paths])
    from robustbench_seg.data.subsets import compute_subsets

    ids = voc.read_split(synth_micro_root, "val")
    sub = compute_subsets(synth_micro_root, "val").subsets["obj1"]
    cols = [ids.index(i) for i in sub]
    chosen, pix, _, _ = engine.worst_case(cms[:, cols])
    want = metrics_from_confusion(torch.from_numpy(cms[:, cols][chosen, np.arange(len(cols))].sum(0)))
    assert worst.subsets["obj1"]["metrics"]["miou"] == pytest.approx(want.miou, nan_ok=True)


def test_pixel_accuracy_worst_case_is_exact_per_image():
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 20, size=(3, 5, 21, 21))
    _, pix, _, _ = engine.worst_case(cms)
    correct = np.trace(cms, axis1=-2, axis2=-1)
    assert (correct[pix, np.arange(5)] == correct.min(0)).all()


def test_adding_an_attack_later_recomputes_the_worst_case_without_rerunning_the_others(synth_micro_root, tmp_path,
                                                                                       monkeypatch):
    first = _by_name(_eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,)))
    assert not any(n.startswith("worst") for n in first)  # one attack: no worst case
    ran = []
    real = engine.AttackInput.produce

    def spy(self, x, target, ctx):
        ran.append(self.spec.name)
        return real(self, x, target, ctx)

    monkeypatch.setattr(engine.AttackInput, "produce", spy)
    second = _by_name(_eval(synth_micro_root, tmp_path, attacks="segpgd", eps=(4,)))
    assert set(ran) == {"segpgd"}  # pgd's stored statistics were reused, not re-run
    worst = second["worst-eps4"]
    assert len(worst.perturbation["worst"]["attacks"]) == 2
    # everything cached now: no attack runs, the worst case is reused as is
    ran.clear()
    third = _by_name(_eval(synth_micro_root, tmp_path, attacks="pgd,segpgd", eps=(4,)))
    assert ran == [] and third["worst-eps4"].created == worst.created


def test_attack_cache_is_keyed_by_its_parameters(synth_micro_root, tmp_path):
    model = TinyNet(seed=5)
    _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,), model=model)
    calls = model.calls
    _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,), model=model)
    assert model.calls == calls  # cached: the model is not called
    recs = _by_name(_eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,), steps=3, model=model))
    assert model.calls > calls
    pgd = [r for r in recs.values() if r.perturbation.get("kind") == "attack"][0]
    assert pgd.perturbation["attack"]["steps"] == 3


def test_damaged_per_image_statistics_are_refused_and_recomputed(synth_micro_root, tmp_path):
    records = _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,))
    path = store.record_path(tmp_path, records[1])
    npy = path.with_name(records[1].per_image["file"])
    arr = np.load(npy)
    arr[0, 0, 0] += 1
    np.save(npy, arr)
    with pytest.raises(RbsegError, match="sha256"):
        store.load_per_image(store.read_result(path), path)
    model = TinyNet(seed=5)
    again = _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,), model=model)
    assert model.calls > 0  # recomputed
    store.load_per_image(store.read_result(path), path)  # and valid again
    assert again[1].miou() == pytest.approx(records[1].miou())


def test_interrupted_attack_pass_resumes_with_its_per_image_statistics(synth_micro_root, tmp_path):
    reference = _eval(synth_micro_root, tmp_path / "ref", attacks="pgd,cospgd", eps=(4,), batch_size=2)
    model = TinyNet(seed=5)
    model.fail_after = 12
    with pytest.raises(RbsegError, match="simulated interruption"):
        _eval(synth_micro_root, tmp_path / "run", attacks="pgd,cospgd", eps=(4,), model=model, batch_size=2)
    partial = list((tmp_path / "run").rglob(".partial-*.pt"))
    assert len(partial) == 1
    model.fail_after = None
    resumed = _eval(synth_micro_root, tmp_path / "run", attacks="pgd,cospgd", eps=(4,), model=model, batch_size=2)
    assert [r.to_dict()["subsets"] for r in resumed] == [r.to_dict()["subsets"] for r in reference]
    for a, b in zip(reference, resumed):
        if a.per_image:
            assert a.per_image["sha256"] == b.per_image["sha256"]
    assert not list((tmp_path / "run").rglob(".partial-*.pt"))


def test_attack_outside_its_budget_is_refused(synth_micro_root, tmp_path, monkeypatch):
    import robustbench_seg.attacks.perimage as perimage

    monkeypatch.setattr(perimage, "run_attack", lambda spec, forward, x, y, **kw: (x + spec.eps + 1).clamp(0, 255))
    with pytest.raises(RbsegError, match="budget"):
        _eval(synth_micro_root, tmp_path, attacks="pgd", eps=(4,))


def test_class_weights_come_from_the_training_split_once(synth_micro_root, monkeypatch):
    weights, record = engine.class_weights(synth_micro_root)
    assert weights.shape == (21,) and (weights > 0).all() and record["split"] == "train"
    monkeypatch.setattr(voc, "read_mask", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recounted")))
    again, record2 = engine.class_weights(synth_micro_root)  # from the cache
    np.testing.assert_array_equal(weights, again)
    assert record == record2


def test_balanced_masked_ce_records_its_class_weights(synth_micro_root, tmp_path):
    from robustbench_seg.attacks.perimage import build_attacks

    specs = build_attacks(["sea"], [4.0], steps=2, preset="quick")
    bmce = [s for s in specs if engine.needs_class_weights(s)]
    assert len(bmce) == 1 and sum(engine.needs_class_weights(s) for s in specs) == 1
    rec = engine.attack_record(bmce[0], engine.class_weights(synth_micro_root)[1])
    assert rec["attack"]["class_weights"]["split"] == "train" and rec["attack"]["dtype"] == "float32"
    bf16 = build_attacks(["sea-bmce"], [4.0], steps=2, preset="quick", dtype="bfloat16")[0]
    other = engine.attack_record(bf16, engine.class_weights(synth_micro_root)[1])
    assert other["attack"]["dtype"] == "bfloat16" and other["sha256"] != rec["sha256"]


def test_old_results_without_attack_fields_still_load(tmp_path):
    rec = store.ResultRecord(model={"name": "m", "sha256": "x"}, perturbation={"name": "clean", "sha256": None},
                             protocol={"split": "val", "fit": "tile", "dataset": "d"},
                             subsets={"all": {"n_images": 1, "ids_hash": "h", "metrics": {"miou": 1.0}}})
    d = rec.to_dict()
    assert "per_image" not in d
    back = store.ResultRecord.from_dict(json.loads(json.dumps(d)))
    assert back.per_image is None


def test_cli_evaluate_with_attacks(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.cli import main

    argv = ["evaluate", "--model", "test_eval_attacks:tiny_model", "--data", str(synth_micro_root),
            "--perturbations", "none", "--subsets", "none", "--attacks", "pgd,cospgd", "--eps", "4/255,2",
            "--steps", "1", "--device", "cpu", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    names = [r["perturbation"]["name"] for r in out]
    kinds = [r["perturbation"].get("kind") for r in out]
    assert kinds.count("attack") == 4 and kinds.count("worst") == 2 and names[0] == "clean"
    eps = sorted({r["perturbation"]["attack"]["eps"] for r in out if r["perturbation"].get("kind") == "attack"})
    assert eps == [2.0, 4.0]  # "4/255" is 4 in 0-255 pixel units
    assert main(["evaluate", "--model", "test_eval_attacks:tiny_model", "--data", str(synth_micro_root),
                 "--eps", "4", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "--attacks" in err and err.count("\n") == 1
    assert main(["evaluate", "--model", "test_eval_attacks:tiny_model", "--data", str(synth_micro_root),
                 "--attacks", "nosuchattack", "--out", str(tmp_path)]) != 0
    assert capsys.readouterr().err.startswith("rbseg: error:")


# --- the report and the regression check ------------------------------------------------------------

@pytest.fixture(scope="module")
def attack_store(synth_micro_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack-store")
    for name, seed in (("baseline", 5), ("binding", 6)):
        evaluate(TinyNet(seed=seed), data_root=synth_micro_root, perturbations="none", attacks="pgd,segpgd",
                 eps=[2, 4], steps=1, out=out, device="cpu", progress=False, model_name=name, subsets="all")
    return out


def test_report_has_the_attack_table_and_curves_only_with_attack_results(attack_store, tmp_path, synth_micro_root):
    from robustbench_seg.reports.build import build_report

    summary = build_report(attack_store, tmp_path / "rep", qualitative=False)
    tables = {t.key: t for t, _ in summary.tables}
    beyond = tables["beyond"]
    labels = [c.flat_label for c in beyond.columns]
    assert labels[0] == "Clean" and any("worst" in lab.lower() for lab in labels)
    assert [r.key for r in beyond.rows] == ["baseline", "binding"]
    assert all(c.ok for r in beyond.rows for c in r.cells)
    assert "beyond_subsets" in tables and tables["beyond_subsets"].rows
    figures = {f.key: f for f in summary.figures}
    curves = figures["attack_eps"]
    assert curves.written and set(curves.data) == {"_eps", "baseline", "binding"}
    assert curves.data["_eps"] == [0.0, 2.0, 4.0]
    assert all(ys[1] <= ys[0] and ys[2] <= ys[0] for k, ys in curves.data.items() if k != "_eps")
    assert figures["attack_eps_subsets"].written
    # attack inputs are not Table 4 candidates (no "left out of Table 4" warning for them)
    assert not any("pgd" in w for w in summary.warnings)
    # without attack results: no attack table, no curve
    clean_only = tmp_path / "clean"
    evaluate(TinyNet(seed=5), data_root=synth_micro_root, perturbations="none", out=clean_only, device="cpu",
             progress=False, model_name="baseline", subsets="none")
    summary = build_report(clean_only, tmp_path / "rep2", qualitative=False)
    assert "beyond" not in {t.key for t, _ in summary.tables}
    assert "attack_eps" not in {f.key for f in summary.figures}


def test_check_covers_attack_and_worst_results(attack_store, tmp_path):
    import shutil

    expected = store.write_expected(attack_store, tmp_path / "expected.json")
    entries = store.read_expected(expected)
    kinds = {e["perturbation"] for e in entries}
    assert any(k.startswith("worst-eps") for k in kinds) and any("pgd" in k for k in kinds)
    assert store.check_results(attack_store, expected).passed
    # an attack result whose number regressed fails the check
    copy = tmp_path / "copy"
    shutil.copytree(attack_store, copy)
    path = next(p for p in copy.rglob("*.json") if "segpgd" in p.name and "binding" in str(p) and "eps4" not in p.name
                or ("segpgd" in p.name and "binding" in str(p)))
    data = json.loads(path.read_text())
    data["subsets"]["all"]["metrics"]["miou"] -= 5
    path.write_text(json.dumps(data))
    report = store.check_results(copy, expected)
    assert not report.passed
    assert any(r.status == "regressed" and "segpgd" in r.entry["perturbation"] for r in report.rows)
    # an attack result whose per-image statistics no longer match it fails as well
    path.with_name(data["per_image"]["file"]).unlink()
    data["subsets"]["all"]["metrics"]["miou"] += 5
    path.write_text(json.dumps(data))
    report = store.check_results(copy, expected)
    assert any(r.status == "per-image mismatch" for r in report.rows) and not report.passed


def test_every_attack_and_the_worst_case_on_a_real_voc_layout_tree(voc_samples_root, tmp_path):
    """Real VOC samples (no train split: SEA's class weights come from train_aug, and say so)."""
    records = _by_name(evaluate(TinyNet(seed=5), data_root=voc_samples_root, perturbations="none", attacks="all",
                                eps=[8], steps=2, out=tmp_path, device="cpu", progress=False, model_name="tiny",
                                subsets="none"))
    attacks = [r for r in records.values() if r.perturbation.get("kind") == "attack"]
    assert sorted(r.perturbation["attack"]["name"] for r in attacks) == sorted(
        ["pgd", "segpgd", "cospgd", "sea-mce", "sea-bmce", "sea-js"])
    bmce = next(r for r in attacks if r.perturbation["attack"]["name"] == "sea-bmce")
    assert bmce.perturbation["attack"]["class_weights"]["split"] == "train_aug"
    worst = records["worst-eps8"]
    assert len(worst.perturbation["worst"]["attacks"]) == 6
    assert worst.miou() <= min(r.miou() for r in attacks) + 1e-9
