"""Issue 10 (report part): nothing named in a results file runs, nothing shipped is overwritten,
every evaluated input appears, Table 4 columns come from recorded roles, white-box cells are marked."""
from __future__ import annotations

import io
import json
import sys

import pandas as pd

from robustbench_seg.cli import main
from robustbench_seg.paths import shipped_reports_dir
from robustbench_seg.reports import build_report, figures, spec, tables
from robustbench_seg.reports.inputs import ResultIndex
from test_report import full_records, make_record, write_store

UAP_RESNET_PUBLIC = {"method": "uap", "imported": True, "source_model": {"arch": "ResNet-152", "kind": "classifier"}}


def _with_meta(rec: dict, meta: dict, sha: str = "c" * 64) -> dict:
    rec["perturbation"]["meta"] = meta
    rec["perturbation"]["sha256"] = sha
    return rec


# --- 12: no code named in a results file is imported or called ---------------------------------------

def test_report_never_imports_a_module_function_named_in_results(synth_micro_root, tmp_path, monkeypatch):
    sentinel = tmp_path / "ran.txt"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "evil_models.py").write_text(
        "from pathlib import Path\n"
        f"def boom():\n    Path({str(sentinel)!r}).write_text('ran')\n    raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    recs = []
    for m in spec.MAIN_METHODS:
        rec = make_record(m, data_root=str(synth_micro_root), dataset="SynthVOC-micro")
        rec["model"].update(spec="evil_models:boom", source="module", sha256="e" * 64)
        recs.append(rec)
    # a zoo name whose recorded sha256 is not the shipped model's: not used either
    recs[-1]["model"].update(spec="binding", source="zoo", sha256="0" * 64)
    store = write_store(tmp_path / "results", recs)
    summary = build_report(store, tmp_path / "out")
    assert not sentinel.exists() and "evil_models" not in sys.modules
    skipped = {f.key: f.skipped for f in summary.figures if f.skipped}
    assert {"figure2", "figure3", "figure5", "figure6"} <= set(skipped)
    assert "never imports code named in a results file" in skipped["figure3"]
    assert "sha256 differs" in skipped["figure2"]
    manifest = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "never imports" in manifest["figures"]["figure3"]["skipped"]


# --- 13 / 14: where the report goes ------------------------------------------------------------------

def test_report_output_folder_is_never_silently_overwritten(tmp_path, capsys):
    from robustbench_seg.cli import build_parser

    assert build_parser().parse_args(["report"]).out == "reports-out"  # not the shipped reports/
    store = write_store(tmp_path / "results", full_records(models=spec.MAIN_METHODS, perts=["clean"]))
    argv = ["report", "--results", str(store), "--no-qualitative", "--out"]
    assert main([*argv, str(tmp_path / "r")]) == 0
    index = tmp_path / "r" / "index.html"
    before = index.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "r")]) != 0  # a previous report: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(tmp_path / "r") in err
    assert index.stat().st_mtime_ns == before
    assert main([*argv, str(tmp_path / "r"), "--overwrite"]) == 0
    # the shipped reports/ folder: refused, nothing touched
    shipped = shipped_reports_dir()
    stamp = {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*argv, str(shipped)]) != 0
    assert "shipped reports/" in capsys.readouterr().err
    assert stamp == {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}


def test_report_unwritable_output_is_one_line(tmp_path, capsys):
    store = write_store(tmp_path / "results", [make_record("baseline")])
    (tmp_path / "file").write_text("x")
    assert main(["report", "--results", str(store), "--no-qualitative", "--out", str(tmp_path / "file" / "r")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err


# --- 23: every evaluated input appears; Table 4 by recorded role ---------------------------------------

def test_user_named_perturbations_appear_and_table4_matches_by_role(tmp_path):
    recs = [make_record(m, miou=50.0) for m in spec.MAIN_METHODS]
    recs += [_with_meta(make_record(m, "uap-resnet-public", miou=30.0 + k), UAP_RESNET_PUBLIC)
             for k, m in enumerate(spec.MAIN_METHODS)]
    recs += [_with_meta(make_record("binding", "my-noise", miou=44.0), {"method": "gaussian"}, "d" * 64)]
    # a file named like a shipped UAP whose recorded role is GD-UAP R-All goes to R-All, not to UAP ResNet
    recs += [_with_meta(make_record("baseline", "uap-resnet", miou=12.0),
                        {"method": "gd-uap", "prior": "all", "prior_label": "R-All"}, "e" * 64)]
    index = ResultIndex.from_records(recs)
    t4 = tables.table4(index)
    col = {c.flat_label: j for j, c in enumerate(t4.columns)}
    row = {r.key: r for r in t4.rows}
    assert row["mixup"].cells[col["UAP ResNet"]].value == 31.0
    assert row["baseline"].cells[col["GD-UAP R-All"]].value == 12.0
    assert "UAP ResNet = uap-resnet-public" in t4.caption() and "GD-UAP R-All = uap-resnet" in t4.caption()
    assert "my-noise (method 'gaussian' has no Table 4 column)" in t4.caption()
    table = tables.all_inputs(index)
    assert [c.label for c in table.columns] == ["clean", "uap-resnet", "my-noise", "uap-resnet-public"]
    assert tables.to_markdown(table).count("44.0") == 1

    summary = build_report(write_store(tmp_path / "results", recs), tmp_path / "out", qualitative=False)
    manifest = json.loads((tmp_path / "out" / "report.json").read_text())
    assert manifest["left_out"] == {"my-noise": "not in Table 4: method 'gaussian' has no Table 4 column"}
    assert "all_inputs" in manifest["tables"]
    html = (tmp_path / "out" / "index.html").read_text()
    assert "input &#x27;my-noise&#x27;: not in Table 4" in html or "input 'my-noise': not in Table 4" in html
    assert summary.left_out == manifest["left_out"]
    assert (tmp_path / "out" / "tables" / "all_inputs.csv").is_file()


def test_two_candidates_for_one_column_keep_the_one_with_most_results(tmp_path):
    recs = [make_record(m) for m in spec.MAIN_METHODS]
    recs += [_with_meta(make_record(m, "uap-resnet-public", miou=30.0), UAP_RESNET_PUBLIC) for m in spec.MAIN_METHODS]
    recs += [make_record("baseline", "uap-resnet", miou=20.0)]  # shipped role, one model only
    inputs = tables.table4_inputs(ResultIndex.from_records(recs))
    assert inputs.columns["uap-resnet"] == "uap-resnet-public"
    assert "shows 'uap-resnet-public'" in inputs.left_out["uap-resnet"]


# --- 2: white-box cells ---------------------------------------------------------------------------------

def test_white_box_cells_are_marked_and_explained(tmp_path):
    recs = [make_record(m) for m in spec.MAIN_METHODS]
    meta = {"method": "gd-uap", "prior": "none", "prior_label": "R-No",
            "source_model": {"name": "baseline", "sha256": "s" * 64, "kind": "inference"}}
    for m in spec.MAIN_METHODS:
        recs.append(_with_meta(make_record(m, "gduap-rno", miou=25.0), meta))
    recs[0]["model"]["sha256"] = "s" * 64  # the baseline is the GD-UAP's source
    for r in recs:
        if r["model"]["name"] == "baseline":
            r["model"]["sha256"] = "s" * 64
    t4 = tables.table4(ResultIndex.from_records(recs))
    j = [c.flat_label for c in t4.columns].index("GD-UAP R-No")
    marks = {r.key: r.cells[j].mark for r in t4.rows}
    assert marks == {"baseline": spec.WHITE_BOX_MARK, "mixup": "", "cutmix": "", "binding": ""}
    md = tables.to_markdown(t4)
    assert f"25.0{spec.WHITE_BOX_MARK}" in md and "white-box" in md
    assert r"25.0$^\dagger$" in tables.to_latex(t4)
    frame = pd.read_csv(io.StringIO(tables.to_csv(t4)))
    assert frame["GD-UAP R-No"].tolist() == [25.0] * 4  # CSV stays numeric
    # no shared sha256: no mark, no note
    for r in recs:
        r["model"]["sha256"] = "a" * 64
    assert "white-box" not in tables.to_markdown(tables.table4(ResultIndex.from_records(recs)))


# --- 24: figures say what they show ------------------------------------------------------------------------

def test_figure4_with_one_model_starts_the_axis_at_zero(tmp_path):
    subsets = {s: (5, 50.0 + 0.15 * k, None) for k, s in enumerate(spec.FIGURE4_SUBSETS.values())}
    index = ResultIndex.from_records([make_record("binding", subsets=subsets)])
    fig = figures.figure4(index, tmp_path, methods=["binding"])
    assert fig.written and fig.ylim[0] == 0.0 and fig.ylim[1] >= 50.6


def test_robustness_chart_has_legend_entries_only_for_drawn_inputs(tmp_path):
    recs = [make_record(m) for m in spec.MAIN_METHODS] + [make_record("binding", "uap-resnet", miou=20.0)]
    fig = figures.robustness_chart(ResultIndex.from_records(recs), tmp_path)
    assert fig.written and fig.legend == ["Clean", "UAP ResNet"]
