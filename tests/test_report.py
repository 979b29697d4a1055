"""rbseg report: tables, figures and index.html from hand-made result files (no engine, no models)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from robustbench_seg.cli import main
from robustbench_seg.constants import VOC_CLASSES
from robustbench_seg.data.subsets import SUBSET_NAMES
from robustbench_seg.errors import RbsegError
from robustbench_seg.io import atomic_write_json
from robustbench_seg.reports import build_report, figures, spec, tables
from robustbench_seg.reports.inputs import ResultIndex, load_result_index, select_dataset

ZOO = list(spec.METHOD_LABELS)
PERTS = list(spec.TABLE4_COLUMNS)
# the role each shipped perturbation records (Table 4 matches columns by it, not by file name)
ROLE_META = {p: {"table4_column": " ".join(x for x in spec.TABLE4_COLUMNS[p] if x)} for p in PERTS[1:]}


# --- a small factory of rbseg-result/1 records ---------------------------------------------------

def make_record(model: str, perturbation: str = "clean", split: str = "val", miou: float = 50.0,
                subsets: dict | None = None, unavailable: dict | None = None, dataset: str = "SynthVOC-tiny",
                fit: str = "tile", clip: bool = True, dtype: str = "float32", created: str = "2026-01-01T00:00:00Z",
                data_root: str = "/nonexistent/VOC2012") -> dict:
    """A result record; ``subsets`` maps name -> (n_images, miou, {class: iou} or None)."""
    def entry(n, m, iou):
        return {"n_images": n, "ids_hash": "0" * 16,
                "metrics": {"miou": m, "iou": iou if iou is not None else {c: m for c in VOC_CLASSES},
                            "pixel_acc": 90.0, "mean_acc": 70.0, "classes_counted": 21, "pixels": 1000}}
    subs = {"all": entry(100, miou, None)}
    for name, (n, m, iou) in (subsets or {}).items():
        subs[name] = entry(n, m, iou)
    return {
        "schema": "rbseg-result/1",
        "model": {"name": model, "sha256": "a" * 64, "arch": "deeplabv3_tiny", "method": model, "config": {}},
        "perturbation": {"name": perturbation, "sha256": None if perturbation == "clean" else "b" * 64,
                         "meta": dict(ROLE_META.get(perturbation, {}))},
        "protocol": {"dataset": dataset, "data_root": data_root, "data_fingerprint": "f" * 32, "split": split,
                     "fit": fit, "clip": clip, "dtype": dtype, "device": "cpu", "batch_size": 8,
                     "package_version": "0.1.0", "torch": "2", "torchvision": "0", "seed": 0},
        "subsets": subs, "unavailable_subsets": unavailable or {}, "created": created,
    }


def value(model: str, perturbation: str = "clean", subset: str = "all") -> float:
    """A distinct, recognisable number for every (model, perturbation, subset)."""
    return round(10 + ZOO.index(model) * 5 + PERTS.index(perturbation) * 0.7 + (SUBSET_NAMES.index(subset) + 1) * 0.01
                 if subset != "all" else 10 + ZOO.index(model) * 5 + PERTS.index(perturbation) * 0.7, 3)


def subset_count(subset: str) -> int:
    return 3 + SUBSET_NAMES.index(subset)


def full_records(models=ZOO, perts=PERTS, split="val", **kw) -> list[dict]:
    out = []
    for m in models:
        for p in perts:
            subs = {}
            for s in SUBSET_NAMES:
                iou = None
                cls = s.partition("-")[2]
                if cls:  # person-<c> / only-<c>: give class c an IoU different from the subset's mIoU
                    iou = {c: 1.0 for c in VOC_CLASSES}
                    iou[cls] = 40 + ZOO.index(m) + SUBSET_NAMES.index(s) * 0.1
                subs[s] = (subset_count(s), value(m, p, s), iou)
            out.append(make_record(m, p, split, value(m, p), subs, **kw))
    return out


def write_store(root: Path, records: list[dict]) -> Path:
    for i, rec in enumerate(records):
        p = root / rec["model"]["name"] / rec["protocol"]["dataset"] / rec["protocol"]["split"] / f"{rec['perturbation']['name']}-{i}.json"
        atomic_write_json(p, rec)
    return root


def cell(table: tables.Table, row_key: str, column_flat: str):
    row = next(r for r in table.rows if r.key == row_key)
    j = [c.flat_label for c in table.columns].index(column_flat)
    return row.cells[j].value


# --- tables ---------------------------------------------------------------------------------------

def test_values_land_in_the_right_cells():
    index = ResultIndex.from_records(full_records())
    t1 = tables.table1(index)
    assert [r.key for r in t1.rows] == [f"val/{m}" for m in spec.MAIN_METHODS + spec.SEGMIX_METHODS]
    for m in spec.MAIN_METHODS:
        assert cell(t1, f"val/{m}", "mIoU (%)") == value(m)
    assert t1.complete

    t2 = tables.table2(index)
    for s, (_, label) in spec.TABLE2_COLUMNS.items():
        assert cell(t2, "n_images", label) == subset_count(s)
        for m in spec.MAIN_METHODS:
            assert cell(t2, m, label) == value(m, "clean", s)

    t3 = tables.table3(index)
    assert cell(t3, "binding", "with person: horse") == 40 + ZOO.index("binding") + SUBSET_NAMES.index("person-horse") * 0.1
    assert cell(t3, "mixup", "alone: mbike") == 40 + ZOO.index("mixup") + SUBSET_NAMES.index("only-motorbike") * 0.1
    assert cell(t3, "n_images", "alone: car") == subset_count("only-car")

    t4 = tables.table4(index)
    for m in spec.MAIN_METHODS:
        for p, (group, label) in spec.TABLE4_COLUMNS.items():
            assert cell(t4, m, " ".join(x for x in (group, label) if x)) == value(m, p)

    t5a = tables.table5a(index)
    for col, m in spec.TABLE5A_COLUMNS.items():
        assert cell(t5a, "blending", col) == value(m)
    t5b, t5c = tables.table5b(index), tables.table5c(index)
    assert [r.key for r in t5b.rows] == ["baseline", "binding-no-denoise", "binding"]
    assert [r.key for r in t5c.rows] == ["baseline", "binding-no-fbh", "binding"]
    assert cell(t5b, "binding-no-denoise", "mIoU (%)") == value("binding-no-denoise")
    assert cell(t5c, "binding-no-fbh", "mIoU (%)") == value("binding-no-fbh")

    extra = tables.extra_all_models(index)
    assert [r.key for r in extra.rows] == ZOO
    for t in (t1, t2, t3, t4, t5a, t5b, t5c, extra):
        assert t.complete, t.missing
        assert t.protocol["dataset"] == ["SynthVOC-tiny"] and t.protocol["fit"] == ["tile"]
        assert "Protocol: dataset SynthVOC-tiny, split val, fit tile, clip on, dtype float32" in t.caption()


def test_best_value_is_bold_within_column_and_within_row_for_table5a():
    index = ResultIndex.from_records(full_records())
    md = tables.to_markdown(tables.table4(index))
    best_clean = max(value(m) for m in spec.MAIN_METHODS + spec.SEGMIX_METHODS)
    assert f"**{best_clean:.1f}**" in md
    assert md.count("**") == 2 * len(spec.TABLE4_COLUMNS)  # one best per column (values are distinct)
    md5a = tables.to_markdown(tables.table5a(index))
    best = max(value(m) for m in spec.TABLE5A_COLUMNS.values())
    assert md5a.count("**") == 2 and f"**{best:.1f}**" in md5a


def test_missing_inputs_are_listed_and_the_rest_renders():
    records = [r for r in full_records() if r["model"]["name"] != "mixup"
               and not (r["model"]["name"] == "cutmix" and r["perturbation"]["name"] == "gduap-rall")]
    for r in records:
        if r["perturbation"]["name"] == "clean":
            del r["subsets"]["occall"]
            r["unavailable_subsets"]["occall"] = "no Annotations/ XML"
            del r["subsets"]["uniq4"]
    index = ResultIndex.from_records(records)
    t1 = tables.table1(index)
    assert t1.missing == ["model 'mixup' on val: no clean result"]
    assert cell(t1, "val/mixup", "mIoU (%)") is None and cell(t1, "val/binding", "mIoU (%)") == value("binding")
    assert "| n/a" in tables.to_markdown(t1).replace("  ", " ") or "n/a |" in tables.to_markdown(t1)

    t2 = tables.table2(index)
    assert "subset 'occall' on val: unavailable (no Annotations/ XML)" in t2.missing
    assert "model 'baseline' on val: subsets not evaluated: uniq4" in t2.missing
    assert cell(t2, "n_images", "All-Occ") is None and cell(t2, "binding", "1-Occ") == value("binding", "clean", "occ1")

    t4 = tables.table4(index)
    assert "model 'cutmix' on val: no result under gduap-rall" in t4.missing
    assert "model 'mixup' on val: no clean result" in t4.missing
    assert cell(t4, "cutmix", "GD-UAP R-All") is None and cell(t4, "cutmix", "GD-UAP R-No") == value("cutmix", "gduap-rno")
    md = tables.to_markdown(t4)
    assert "Missing inputs:" in md and "no result under gduap-rall" in md

    t5a = tables.table5a(ResultIndex.from_records([r for r in records if r["model"]["name"] != "binding-wrfb"]))
    assert t5a.missing == ["model 'binding-wrfb' on val: no clean result"]


def test_table1_test_block_only_when_test_results_exist():
    index = ResultIndex.from_records(full_records(perts=["clean"]))
    assert all(r.block == "val" for r in tables.table1(index).rows)
    test = [make_record(m, split="test", miou=70 + i) for i, m in enumerate(["baseline", "binding"])]
    t1 = tables.table1(ResultIndex.from_records(full_records(perts=["clean"]) + test))
    assert [r.key for r in t1.rows][-2:] == ["test/baseline", "test/binding"]
    assert cell(t1, "test/binding", "mIoU (%)") == 71
    assert t1.rows[-1].stub == ["Test", spec.METHOD_LABELS["binding"]]


def test_duplicate_records_prefer_the_default_protocol_and_warn():
    a = make_record("baseline", miou=11.0, fit="resize", created="2026-02-01T00:00:00Z")
    b = make_record("baseline", miou=22.0, fit="tile", created="2026-01-01T00:00:00Z")
    c = make_record("baseline", miou=33.0, fit="tile", created="2026-03-01T00:00:00Z")
    index = ResultIndex.from_records([a, b, c])
    assert index.miou("baseline").value == 33.0
    assert len(index.warnings) == 2 and "fit=tile" in index.warnings[0]


def test_dataset_selection():
    recs = full_records(perts=["clean"]) + [make_record("baseline", dataset="VOC2012", miou=1.0)]
    index = select_dataset(recs)
    assert index.miou("baseline").value == value("baseline")
    assert any("VOC2012" in w for w in index.warnings)
    assert select_dataset(recs, "VOC2012").miou("baseline").value == 1.0
    with pytest.raises(RbsegError, match="no results for dataset 'nope'"):
        select_dataset(recs, "nope")


def test_files_are_written_and_parse(tmp_path):
    index = ResultIndex.from_records(full_records())
    for table in tables.build_tables(index):
        paths = tables.write_table(table, tmp_path)
        assert sorted(p.suffix for p in paths) == [".csv", ".md", ".tex"]
        frame = pd.read_csv(tmp_path / f"{table.key}.csv")
        assert list(frame.columns) == ["key", *table.stub_header, *(c.flat_label for c in table.columns)]
        assert len(frame) == len(table.rows)
        for i, row in enumerate(table.rows):
            for col, c in zip(table.columns, row.cells):
                got = frame.iloc[i][col.flat_label]
                assert (pd.isna(got) and c.value is None) or got == pytest.approx(round(c.value, 1) if row.kind == "score" else c.value)
        md = (tmp_path / f"{table.key}.md").read_text()
        table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
        assert len(table_lines) == 2 + len(table.rows)
        n_cols = len(table.stub_header) + len(table.columns)
        assert all(ln.count("|") == n_cols + 1 for ln in table_lines)
        assert "Protocol:" in md
        tex = (tmp_path / f"{table.key}.tex").read_text()
        assert tex.count(r"\begin{") == tex.count(r"\end{") == 2
        assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
        rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
        assert all(len(re.findall(r"(?<!\\)&", ln)) == n_cols - 1 for ln in rows if "multicolumn" not in ln)
        assert len(rows) == 1 + len(table.rows) + any(c.group for c in table.columns)
        assert r"\caption{" in tex and "Protocol:" in tex


def test_latex_escapes_special_characters():
    assert tables.latex_escape("a_b & 50% #1 {x} ~^\\") == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"


# --- figures ----------------------------------------------------------------------------------------

def test_figure4_from_results(tmp_path):
    index = ResultIndex.from_records(full_records(perts=["clean"]))
    fig = figures.figure4(index, tmp_path)
    assert fig.skipped is None and not fig.missing
    assert set(fig.files) == {"png", "pdf"}
    assert Image.open(fig.files["png"]).size[0] > 100
    assert fig.files["pdf"].read_bytes().startswith(b"%PDF")
    methods = spec.MAIN_METHODS + spec.SEGMIX_METHODS  # SegMix has results here, so it gets a line
    assert fig.data == {m: [value(m, "clean", s) for s in spec.FIGURE4_SUBSETS.values()] for m in methods}
    # same input, same bytes (no timestamps in the files)
    again = figures.figure4(index, tmp_path / "again")
    assert again.files["png"].read_bytes() == fig.files["png"].read_bytes()
    assert again.files["pdf"].read_bytes() == fig.files["pdf"].read_bytes()


def test_figure4_with_missing_inputs(tmp_path):
    recs = full_records(models=["baseline", "binding"], perts=["clean"])
    del recs[0]["subsets"]["cooc10"]
    fig = figures.figure4(ResultIndex.from_records(recs), tmp_path)
    assert fig.written and np.isnan(fig.data["baseline"][-1])
    assert "model 'mixup' on val: no clean result" in fig.missing
    assert "model 'baseline' on val: subsets not evaluated: cooc10" in fig.missing
    empty = figures.figure4(ResultIndex.from_records([make_record("baseline")]), tmp_path / "none")
    assert empty.skipped and not empty.files


def test_blend_images_is_eq1():
    a = np.array([[[200, 100, 0]]], dtype=np.uint8)
    b = np.array([[[0, 100, 250]]], dtype=np.uint8)
    out = figures.blend_images(a, b, 0.8)
    np.testing.assert_allclose(out, [[[160.0, 100.0, 50.0]]])
    with pytest.raises(ValueError):
        figures.blend_images(a, np.zeros((2, 1, 3), np.uint8), 0.8)


class _FakeSeg(torch.nn.Module):
    """A fixed random conv: enough to draw prediction and confidence panels."""

    def __init__(self, seed: int, binding: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 21, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))
        self.binding = binding

    def forward(self, x):
        s = self.conv(x)
        return {"out": 2 * s, "dominant": s, "phantom": -s, "binding": 2 * s} if self.binding else {"out": s}


def test_qualitative_figures_on_synthvoc(synth_micro_root, tmp_path):
    from robustbench_seg.data.stats import class_sets, foreground

    root = synth_micro_root
    ids = figures.complex_scene_ids(root, "val", 3)
    sets = class_sets(root, "val")
    counts = sorted((len(foreground(s)) for s in sets.values()), reverse=True)
    assert [len(foreground(sets[i])) for i in ids] == counts[:3]
    assert figures.complex_scene_ids(root, "val", 3) == ids  # deterministic
    occluded = figures.occluded_ids(root, "val", 2)
    assert len(occluded) == 2
    models = {m: _FakeSeg(i) for i, m in enumerate(spec.MAIN_METHODS)}
    grid = figures.qualitative_grid(models, root, "val", ids, tmp_path, "grid")
    assert Image.open(grid["png"]).size[0] > Image.open(grid["png"]).size[1]
    conf = figures.confidence_figure(_FakeSeg(7, binding=True), root, "val", ids[:2], tmp_path)
    assert conf["png"].is_file() and conf["pdf"].is_file()
    maps = figures.branch_confidences(_FakeSeg(7, binding=True), figures._load(root, "val", ids[0])[0])
    assert {"dominant", "phantom", "binding", "pred"} <= set(maps)
    assert all(0.0 <= float(maps[k].min()) and float(maps[k].max()) <= 1.0 for k in ("dominant", "phantom", "binding"))
    with pytest.raises(RbsegError, match="dominant/phantom"):
        figures.branch_confidences(_FakeSeg(1), figures._load(root, "val", ids[0])[0])


# --- the whole report --------------------------------------------------------------------------------

def test_build_report_writes_every_table_and_figure_and_index(tmp_path):
    store = write_store(tmp_path / "results", full_records())
    summary = build_report(store, tmp_path / "reports", qualitative=False)
    out = tmp_path / "reports"
    html = (out / "index.html").read_text()
    for key in tables.TABLES:
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{key}.{ext}").is_file()
            assert f'href="tables/{key}.{ext}"' in html
        assert f'id="{key}"' in html
    for f in summary.figures:
        if f.written:
            assert f'src="figures/{f.files["png"].name}"' in html and f.files["pdf"].is_file()
    assert {f.key for f in summary.figures if f.written} == {"figure4", "robustness"}
    for src in re.findall(r'(?:src|href)="([^"#]+)"', html):
        assert (out / src).is_file(), src
    assert "synthetic benchmark" in html and "Protocol: dataset SynthVOC-tiny" in html
    assert "http" not in html  # no external assets
    manifest = (out / "report.json").read_text()
    assert '"table4"' in manifest and '"complete": true' in manifest


def test_build_report_without_data_skips_qualitative_figures_with_a_reason(tmp_path):
    store = write_store(tmp_path / "results", full_records(perts=["clean"], dataset="VOC2012"))
    summary = build_report(store, tmp_path / "reports")
    skipped = {f.key: f.skipped for f in summary.figures if f.skipped}
    assert set(skipped) == {"figure2", "figure3", "figure5", "figure6"}
    assert all("pass --data ROOT" in why for why in skipped.values())
    assert "Not drawn:" in (tmp_path / "reports" / "index.html").read_text()
    t4 = next(t for t, _ in summary.tables if t.key == "table4")
    assert not t4.complete and "no result under uap-resnet" in t4.missing[0]


def test_cli_report(tmp_path, capsys):
    store = write_store(tmp_path / "results", full_records(models=spec.MAIN_METHODS))
    assert main(["report", "--results", str(store), "--out", str(tmp_path / "r"), "--no-qualitative"]) == 0
    assert "tables with missing inputs" in capsys.readouterr().out  # the ablations are missing
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("rbseg: error:") and "results folder not found" in err and len(err.strip().splitlines()) == 1
    assert load_result_index(tmp_path / "r").records == {}  # a report folder holds no results
    with pytest.raises(RbsegError, match="no rbseg results"):
        build_report(tmp_path / "r", tmp_path / "r2")


def test_no_bold_when_every_value_ties():
    recs = [make_record(m, miou=5.5) for m in spec.MAIN_METHODS]
    assert "**" not in tables.to_markdown(tables.table1(ResultIndex.from_records(recs)))


# module:function models for the end-to-end test below (loaded by the engine and by the report)
def fake_baseline():
    return _FakeSeg(0)


def fake_mixup():
    return _FakeSeg(1)


def fake_cutmix():
    return _FakeSeg(2)


def fake_binding():
    return _FakeSeg(3, binding=True)


def test_report_end_to_end_with_the_engine_and_module_models(synth_micro_root, tmp_path):
    """Real engine results on SynthVOC micro -> every table from them, every figure drawn with the
    evaluated models (reloaded from the recorded spec, sha256-checked) and the recorded data."""
    from robustbench_seg.evaluation.engine import evaluate

    results = tmp_path / "results"
    for m in spec.MAIN_METHODS:
        evaluate(f"test_report:fake_{m}", data_root=synth_micro_root, perturbations="none", device="cpu", out=results,
                 model_name=m, progress=False)
    evaluate("test_report:fake_binding", data_root=synth_micro_root, split="ooc", perturbations="none", device="cpu",
             out=results, model_name="binding", progress=False)
    # module:function models are never imported from the results: the caller hands them over
    given = {m: globals()[f"fake_{m}"]() for m in spec.MAIN_METHODS}
    summary = build_report(results, tmp_path / "reports", models=given)
    assert summary.data_root == str(synth_micro_root)
    assert all(f.written for f in summary.figures), [(f.key, f.skipped) for f in summary.figures]
    assert set(summary.models) == set(spec.MAIN_METHODS)
    by_key = {t.key: t for t, _ in summary.tables}
    assert by_key["table1"].complete and by_key["table3"].rows[0].kind == "count"
    assert "model 'baseline' on val: no result under uap-resnet, uap-googlenet, gduap-rno, gduap-rall, gduap-rpart" in by_key["table4"].missing
    assert by_key["extra_ooc"].missing == ["model 'baseline' on ooc: no clean result"]
    assert by_key["table1"].protocol["dataset"] == ["SynthVOC-micro"]


def test_table4_reports_each_perturbations_fooling_rate_and_the_drop_on_every_row():
    recs = [make_record("baseline", "clean", miou=50.0), make_record("binding", "clean", miou=45.0)]
    for model, miou in (("baseline", 30.0), ("binding", 40.5)):
        rec = make_record(model, "gduap-rall", miou=miou)
        rec["perturbation"]["meta"].update(fooling_rate=0.61, fooling_rate_on="32 held-out train images")
        recs.append(rec)
    rec = make_record("baseline", "uap-resnet", miou=48.0)  # binding has no result under it: no drop shown
    rec["perturbation"]["meta"].update(fooling_rate=0.59, fooling_rate_on="crafting set",
                                       val_fooling_rate=0.4375, val_fooling_rate_on="64 crops of val")
    recs.append(rec)
    notes = tables.table4(ResultIndex.from_records(recs)).notes
    # the UAP's held-out (val) figure, not its crafting-set one; the GD-UAP's own validation figure
    assert ("Fooling rate of each perturbation on its own validation data, as recorded when it was crafted: "
            "uap-resnet 0.438 (64 crops of val); gduap-rall 0.610 (32 held-out train images).") in notes
    # drops: baseline 50 - 48 = 2.0 and 50 - 30 = 20.0; binding 45 - 40.5 = 4.5
    assert ("mIoU drop (clean - perturbed, points) per row: DeepLabv3: UAP ResNet 2.0, GD-UAP R-All 20.0; "
            "DeepLabv3 + Binding (CC): GD-UAP R-All 4.5.") in notes
    assert tables.fooling_rate({"method": "uap"}) is None
