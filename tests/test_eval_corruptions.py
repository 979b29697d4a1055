"""Common corruptions through the one evaluation pass (engine.CorruptionInput), their records, cache
keys, the CLI flags, the metrics of evaluation/corruption_metrics.py (hand-computed) and the report's
corruption tables and figures."""
from __future__ import annotations

import pytest
import torch

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation import corruption_metrics as cm
from robustbench_seg.evaluation import engine
from robustbench_seg.evaluation import results as store
from robustbench_seg.evaluation.engine import BatchContext, CorruptionInput, evaluate
from tinynets import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("gaussian_noise", "brightness")  # one random, one deterministic corruption of the 15


@pytest.fixture
def corruptions():
    """The corruptions module (engineer I1's robustbench_seg/corruptions)."""
    import robustbench_seg.corruptions as mod

    return mod


def tiny_model() -> torch.nn.Module:
    """``module:function`` entry point for the CLI test."""
    return TinyNet(seed=5, record_inputs=True)


def _eval(root, out, model=None, **kw):
    kw.setdefault("subsets", "obj1,obj2")
    return evaluate(model if model is not None else TinyNet(seed=5, record_inputs=True), data_root=root, perturbations="none", out=out,
                    device="cpu", progress=False, model_name="tiny", **kw)


# --- the engine -------------------------------------------------------------------------------------

def test_corruption_results_are_stored_with_name_severity_seed_version_and_impl(corruptions, synth_micro_root, tmp_path):
    records = _eval(synth_micro_root, tmp_path, corruptions=",".join(NAMES), severities="1,3")
    by_name = {r.perturbation["name"]: r for r in records}
    assert list(by_name) == ["clean", "corruption-gaussian_noise-s1", "corruption-gaussian_noise-s3",
                             "corruption-brightness-s1", "corruption-brightness-s3"]
    rec = by_name["corruption-brightness-s3"]
    info = rec.perturbation["corruption"]
    assert rec.perturbation["kind"] == "corruption"
    assert (info["name"], info["severity"], info["seed"]) == ("brightness", 3, 0)
    assert info["version"] == str(corruptions.VERSION) and info["impl"] == corruptions.CORRUPTIONS["brightness"].impl
    assert set(rec.subsets) == {"all", "obj1", "obj2"}
    path = store.record_path(tmp_path, rec)
    assert path.name == "corruption-brightness-s3.json" and path.is_file()
    assert store.read_result(path).perturbation == rec.perturbation
    # distinct inputs, distinct keys; the corrupted mIoU is a real measurement (differs from clean here)
    assert len({r.perturbation["sha256"] for r in records[1:]}) == 4
    assert rec.miou() != by_name["clean"].miou()


def test_corruption_results_are_reused_and_the_key_covers_version_seed_and_severity(corruptions, synth_micro_root,
                                                                                   tmp_path, monkeypatch):
    first = _eval(synth_micro_root, tmp_path, corruptions="brightness", severities="2")
    model = TinyNet(seed=5, record_inputs=True)
    again = _eval(synth_micro_root, tmp_path, model=model, corruptions="brightness", severities="2")
    assert model.inputs == [] and again[1].created == first[1].created  # cached: no forward pass at all
    seeded = _eval(synth_micro_root, tmp_path, corruptions="brightness", severities="2", corruption_seed=7)
    assert seeded[1].perturbation["name"] == "corruption-brightness-s2-seed7"
    assert seeded[1].perturbation["sha256"] != first[1].perturbation["sha256"]
    monkeypatch.setattr(corruptions, "VERSION", "another-version")
    model = TinyNet(seed=5, record_inputs=True)
    bumped = _eval(synth_micro_root, tmp_path, model=model, corruptions="brightness", severities="2")
    assert model.inputs and bumped[1].perturbation["corruption"]["version"] == "another-version"
    assert bumped[1].perturbation["sha256"] != first[1].perturbation["sha256"]


def test_corrupted_batch_comes_from_the_clean_image_with_per_image_seeds(corruptions, synth_micro_root):
    """The pass gives every input the clean decoded batch: the corrupted images the model sees equal
    corrupt(clean image, seed of that image id), whatever the other inputs (a perturbation here) do."""
    from robustbench_seg.data import voc

    ids = voc.read_split(synth_micro_root, "val")[:3]
    model = TinyNet(seed=5, record_inputs=True)
    delta = torch.full((3, 8, 8), 10.0)
    inp = CorruptionInput("gaussian_noise", 2, seed=0)
    engine.run_pass(model, synth_micro_root, "val", ids, [None, delta, inp], torch.ones(1, len(ids), dtype=torch.bool),
                    batch_size=1, forward_batch=3, device=torch.device("cpu"))
    batches = engine.size_batches([engine.image_size(voc.image_path(synth_micro_root, i)) for i in ids], 1)
    assert len(model.inputs) == len(batches) == len(ids)
    for k, (position,) in enumerate(batches):
        image_id = ids[position]
        seen = model.inputs[k]  # batch k: clean, perturbed, corrupted (one forward chunk of 3)
        clean = torch.from_numpy(voc.read_image(voc.image_path(synth_micro_root, image_id))).permute(2, 0, 1)[None].float()
        seed = corruptions.corruption_seed(image_id, "gaussian_noise", 2, 0)
        want = corruptions.corrupt(clean, "gaussian_noise", 2, [seed]).clamp(0, 255)
        from robustbench_seg.data.transforms import normalize
        assert torch.allclose(seen[2:3], normalize(want), atol=1e-4)


def test_corruption_of_an_image_does_not_depend_on_its_batch(corruptions):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 40, 40) * 255
    inp = CorruptionInput("gaussian_noise", 3, seed=1)
    ids = ["a", "b", "c"]
    whole = inp.produce(x, None, BatchContext(None, torch.tensor([0, 1, 2]), 1, ids))
    alone = inp.produce(x[1:2], None, BatchContext(None, torch.tensor([1]), 1, ids))
    assert torch.equal(whole[1:2], alone)
    assert whole.shape == x.shape and float(whole.min()) >= 0 and float(whole.max()) <= 255
    other_seed = CorruptionInput("gaussian_noise", 3, seed=2).produce(x[1:2], None, BatchContext(None, torch.tensor([1]), 1, ids))
    assert not torch.equal(alone, other_seed)


def test_a_corruption_returning_a_wrong_shape_is_one_line(corruptions, monkeypatch):
    monkeypatch.setattr(corruptions, "corrupt", lambda x, name, severity, seeds: x[:, :, :-1])
    inp = CorruptionInput("brightness", 1)
    with pytest.raises(RbsegError, match="corruption 'corruption-brightness-s1' returned"):
        inp.produce(torch.zeros(1, 3, 4, 4), None, BatchContext(None, torch.tensor([0]), 1, ["x"]))


def test_a_corruption_returning_non_finite_pixels_is_refused_and_worker_images_pass(corruptions, monkeypatch):
    monkeypatch.setattr(corruptions, "corrupt", lambda x, name, severity, seeds: torch.full_like(x, float("nan")))
    inp = CorruptionInput("brightness", 1)
    with pytest.raises(RbsegError, match="corruption 'corruption-brightness-s1' returned non-finite pixels"):
        inp.produce(torch.zeros(1, 3, 4, 4), None, BatchContext(None, torch.tensor([0]), 1, ["x"]))
    # an image the decoding workers made (uint8) is used as it is, clamped to [0, 255]
    made = torch.full((1, 3, 4, 4), 200, dtype=torch.uint8)
    ctx = BatchContext(None, torch.tensor([0]), 1, ["x"], {inp.name: made})
    assert torch.equal(inp.produce(torch.zeros(1, 3, 4, 4), None, ctx), made.float())


def test_corruption_names_and_severities_are_validated(corruptions):
    assert engine.resolve_corruptions(None) == []
    assert engine.resolve_corruptions("brightness", "1-2") == [("brightness", 1), ("brightness", 2)]
    assert len(engine.resolve_corruptions("all", "1-5")) == 75
    with pytest.raises(RbsegError, match="--corruptions"):
        engine.resolve_corruptions("no_such_corruption", "1")
    with pytest.raises(RbsegError, match="--severities"):
        engine.resolve_corruptions(None, "1-5")
    assert "corruption" in engine.INPUT_KINDS and engine.INPUT_KINDS["corruption"] is CorruptionInput


def test_cli_corruptions_and_severities(corruptions, synth_micro_root, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    out = tmp_path / "res"
    rc = main(["evaluate", "--model", "test_eval_corruptions:tiny_model", "--data", str(synth_micro_root),
               "--perturbations", "none", "--subsets", "none", "--corruptions", "brightness", "--severities", "1",
               "--corruption-seed", "3", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "corruption-brightness-s1-seed3" in printed
    assert list(out.rglob("corruption-brightness-s1-seed3.json"))
    rc = main(["evaluate", "--model", "test_eval_corruptions:tiny_model", "--data", str(synth_micro_root),
               "--severities", "1-5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and "--corruptions" in err and len(err.strip().splitlines()) == 1


# --- the metrics (hand-computed) ----------------------------------------------------------------

def _rec(name, severity, miou, subsets=None):
    subs = {"all": {"n_images": 4, "ids_hash": "0", "metrics": {"miou": miou}}}
    for s, v in (subsets or {}).items():
        subs[s] = {"n_images": 2, "ids_hash": "0", "metrics": {"miou": v}}
    return {"perturbation": {"name": engine.corruption_result_name(name, severity), "kind": "corruption",
                             "corruption": {"name": name, "severity": severity, "seed": 0}}, "subsets": subs}


def test_metrics_by_hand():
    model = [_rec("fog", 1, 60.0, {"obj1": 50.0}), _rec("fog", 2, 40.0, {"obj1": 30.0}),
             _rec("snow", 1, 50.0, {"obj1": 20.0}), _rec("snow", 2, 30.0, {"obj1": 10.0}),
             {"perturbation": {"name": "clean", "kind": "clean"}, "subsets": {"all": {"metrics": {"miou": 80.0}}}}]
    ref = [_rec("fog", 1, 50.0, {"obj1": 50.0}), _rec("fog", 2, 30.0, {"obj1": 50.0}),
           _rec("snow", 1, 40.0, {"obj1": 50.0}), _rec("snow", 2, 20.0, {"obj1": 50.0})]
    grid = cm.miou_grid(model)
    assert grid == {"fog": {1: 60.0, 2: 40.0}, "snow": {1: 50.0, 2: 30.0}}
    assert cm.mean_per_severity(grid) == {1: 55.0, 2: 35.0}
    assert cm.mean_corruption_miou(grid) == 45.0
    assert cm.relative_robustness(45.0, 80.0) == pytest.approx(0.5625)
    # CD_fog = (40 + 60) / (50 + 70) ; CD_snow = (50 + 70) / (60 + 80)
    cd = cm.corruption_degradation(grid, cm.miou_grid(ref))
    assert cd["fog"] == pytest.approx(100 / 120) and cd["snow"] == pytest.approx(120 / 140)
    assert cm.mean_cd(cd) == pytest.approx((100 / 120 + 120 / 140) / 2)
    s = cm.summarize(model, 80.0, "all", reference_records=ref, reference="baseline")
    assert s.per_corruption == {"fog": 50.0, "snow": 40.0} and s.relative == pytest.approx(45 / 80)
    assert s.relative_per_corruption["fog"] == pytest.approx(50 / 80)
    # a paper subset: the same formulas on its numbers
    sub = cm.summarize(model, 40.0, "obj1", reference_records=ref)
    assert sub.per_severity == {1: 35.0, 2: 20.0} and sub.mean == 27.5 and sub.relative == pytest.approx(27.5 / 40)
    assert sub.cd["fog"] == pytest.approx((50 + 70) / (50 + 50)) and sub.cd["snow"] == pytest.approx((80 + 90) / 100)
    assert cm.subsets_of(model) == ["all", "obj1"]
    # the reference itself: CD 1 everywhere
    assert cm.mean_cd(cm.corruption_degradation(cm.miou_grid(ref), cm.miou_grid(ref))) == pytest.approx(1.0)


def test_cd_is_undefined_when_severities_differ_and_mcd_then_too():
    grid = {"fog": {1: 60.0, 2: 40.0}, "snow": {1: 50.0}}
    ref = {"fog": {1: 50.0, 2: 30.0}, "snow": {1: 40.0, 2: 20.0}}
    cd = cm.corruption_degradation(grid, ref)
    assert cd["fog"] == pytest.approx(100 / 120) and cd["snow"] is None
    assert cm.mean_cd(cd) is None
    assert cm.corruption_degradation({"fog": {1: 50.0}}, {})["fog"] is None
    assert cm.corruption_degradation({"fog": {1: 50.0}}, {"fog": {1: 100.0}})["fog"] is None  # reference never degrades
    assert cm.relative_robustness(None, 50.0) is None and cm.relative_robustness(10.0, 0.0) is None


# --- the report -----------------------------------------------------------------------------------

def _report_records():
    from test_report import make_record

    out = []
    for model, base in (("baseline", 50.0), ("binding", 60.0)):
        out.append(make_record(model, miou=base + 10, subsets={"obj1": (3, base + 5, None)}))
        for name in ("fog", "snow"):
            for sev in (1, 2):
                rec = make_record(model, engine.corruption_result_name(name, sev), miou=base - 10 * sev - (5 if name == "snow" else 0),
                                  subsets={"obj1": (3, base - 10 * sev, None)})
                rec["perturbation"].update({"kind": "corruption", "corruption": {
                    "name": name, "severity": sev, "seed": 0, "version": "v1", "impl": "torch"}})
                out.append(rec)
    return out


def test_report_corruption_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    from robustbench_seg.reports import build_report, tables
    from robustbench_seg.reports.inputs import ResultIndex

    index = ResultIndex.from_records(_report_records())
    t = tables.corruption_table(index, "binding")
    rows = {r.key: r for r in t.rows}
    assert [c.flat_label for c in t.columns] == ["severity 1", "severity 2", "Mean", "Rel. rob. (%)", "CD vs baseline (%)"]
    assert [c.value for c in rows["fog"].cells[:3]] == [50.0, 40.0, 45.0]
    assert rows["fog"].cells[3].value == pytest.approx(100 * 45 / 70)
    # CD_fog(binding) = (50 + 60) / (60 + 70)
    assert rows["fog"].cells[4].value == pytest.approx(100 * 110 / 130)
    assert [c.value for c in rows["mean"].cells[:3]] == [47.5, 37.5, 42.5]
    sub = {r.key: r for r in tables.corruption_subsets(index).rows}
    assert sub["binding/obj1"].cells[1].value == 45.0 and sub["baseline/obj1"].cells[3].value == pytest.approx(100.0)
    summary = build_report(index=index, results_dir="x", out_dir=tmp_path / "rep", qualitative=False)
    keys = [tb.key for tb, _ in summary.tables]
    assert {"corruption_baseline", "corruption_binding", "corruption_subsets"} <= set(keys)
    figs = {f.key: f for f in summary.figures}
    assert figs["corruption_heatmap"].written and figs["corruption_severity"].written
    assert figs["corruption_severity"].data["binding"]["miou"] == [70.0, 47.5, 37.5]
    assert (tmp_path / "rep" / "tables" / "corruption_binding.csv").is_file()
    assert "corruption_heatmap" in (tmp_path / "rep" / "index.html").read_text()


def test_report_without_corruption_results_has_no_corruption_sections(tmp_path):
    from test_report import make_record

    from robustbench_seg.reports import build_report
    from robustbench_seg.reports.inputs import ResultIndex

    index = ResultIndex.from_records([make_record("baseline")])
    summary = build_report(index=index, results_dir="x", out_dir=tmp_path / "rep", qualitative=False)
    assert not any(t.key.startswith("corruption") for t, _ in summary.tables)
    assert not any(f.key.startswith("corruption") for f in summary.figures)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_cpu_only_corruptions_are_made_in_the_decoding_workers(corruptions, synth_micro_root, monkeypatch, num_workers):
    """A corruption the reference package computes (JPEG here; glass blur, spatter) is made beside the
    decoding (``EvalInput.worker_prepare`` in the DataLoader workers), never in the main process's
    loop, and equals corrupt() of the clean image with that image's seed; a torch corruption of the
    same pass stays on the device."""
    pytest.importorskip("imagecorruptions")
    from robustbench_seg.corruptions import reference
    from robustbench_seg.data import voc
    from robustbench_seg.data.transforms import normalize

    assert corruptions.CORRUPTIONS["jpeg_compression"].impl == "reference"
    ids = voc.read_split(synth_micro_root, "val")[:3]
    model = TinyNet(seed=5, record_inputs=True)
    jpeg, noise = CorruptionInput("jpeg_compression", 3, seed=0), CorruptionInput("gaussian_noise", 1, seed=0)
    assert jpeg.in_workers and not noise.in_workers
    main_loop = []
    real_produce = CorruptionInput.produce

    def produce(self, x, target, ctx):
        if self.name == jpeg.name:
            assert self.name in ctx.prepared, "the JPEG corruption was not prepared by the decoding workers"
            main_loop.append(ctx.prepared[self.name].dtype)
        return real_produce(self, x, target, ctx)

    monkeypatch.setattr(CorruptionInput, "produce", produce)
    engine.run_pass(model, synth_micro_root, "val", ids, [None, jpeg, noise], torch.ones(1, len(ids), dtype=torch.bool),
                    batch_size=1, forward_batch=3, device=torch.device("cpu"), num_workers=num_workers)
    assert main_loop == [torch.uint8] * len(ids)
    batches = engine.size_batches([engine.image_size(voc.image_path(synth_micro_root, i)) for i in ids], 1)
    for k, (position,) in enumerate(batches):
        image_id = ids[position]
        clean = voc.read_image(voc.image_path(synth_micro_root, image_id))
        seed = corruptions.corruption_seed(image_id, "jpeg_compression", 3, 0)
        want = torch.from_numpy(reference.reference_one(clean, "jpeg_compression", 3, seed).copy()).permute(2, 0, 1)[None].float()
        assert torch.allclose(model.inputs[k][1:2], normalize(want), atol=1e-4)
