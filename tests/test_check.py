"""``rbseg check`` and the expected-values file, on hand-made results."""
from __future__ import annotations

import json

import pytest

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation.results import (
    ResultRecord, check_results, find_result, load_results, read_expected, write_expected, write_result,
)


def _record(model: str, pert: str, miou_all: float | None, miou_occ1: float | None = 50.0, dtype="float32",
            created="2026-01-01T00:00:00Z") -> ResultRecord:
    def entry(v):
        return {"n_images": 4, "ids_hash": "abcd", "metrics": {"miou": v, "iou": {}, "pixel_acc": None,
                                                                "mean_acc": None, "classes_counted": 3, "pixels": 10}}

    return ResultRecord(
        model={"name": model, "sha256": "m" * 64, "arch": "x", "method": None, "config": {}},
        perturbation={"name": pert, "sha256": None if pert == "clean" else "p" * 64, "meta": {}},
        protocol={"dataset": "SynthVOC-tiny", "data_fingerprint": "f", "split": "val", "fit": "tile", "clip": True,
                  "dtype": dtype, "device": "cpu", "batch_size": 8},
        subsets={"all": entry(miou_all), "occ1": entry(miou_occ1)},
        created=created,
    )


@pytest.fixture()
def results(tmp_path):
    out = tmp_path / "results"
    write_result(_record("binding", "clean", 60.0), out)
    write_result(_record("binding", "uap_resnet", 40.0), out)
    write_result(_record("baseline", "clean", 55.0, None), out)
    return out


def test_layout_load_and_find(results):
    recs = load_results(results)
    assert len(recs) == 3
    assert (results / "binding" / "SynthVOC-tiny" / "val-tile-clip-fp32" / "uap_resnet.json").is_file()
    assert find_result(recs, "binding", "uap_resnet")["subsets"]["all"]["metrics"]["miou"] == 40.0
    assert find_result(recs, "binding", "uap_resnet", split="ooc") is None
    (results / "notes.json").write_text("{\"other\": 1}")  # foreign JSON is ignored
    assert len(load_results(results)) == 3
    (results / "broken.json").write_text(json.dumps({"schema": "rbseg-result/1", "model": {}}))
    with pytest.raises(RbsegError, match="broken.json"):
        load_results(results)


def test_check_pass_fail_missing(results, tmp_path, capsys):
    expected = tmp_path / "expected.json"
    write_expected(results, expected)
    entries = read_expected(expected)
    assert len(entries) == 6  # 3 records x 2 subsets
    report = check_results(results, expected)
    assert report.passed and {r.status for r in report.rows} == {"ok"}
    assert main(["check", "--results", str(results), "--expected", str(expected)]) == 0

    # within tolerance: still passes; beyond it: regressed, exit 1
    write_result(_record("binding", "uap_resnet", 39.6, created="2026-01-02T00:00:00Z"), results)
    assert main(["check", "--results", str(results), "--expected", str(expected)]) == 0
    write_result(_record("binding", "uap_resnet", 39.4, created="2026-01-03T00:00:00Z"), results)
    report = check_results(results, expected, tolerance=0.5)
    bad = [r for r in report.rows if r.status == "regressed"]
    assert len(bad) == 1 and bad[0].diff == pytest.approx(-0.6)
    capsys.readouterr()
    assert main(["check", "--results", str(results), "--expected", str(expected)]) == 1
    assert "regressed" in capsys.readouterr().out
    assert main(["check", "--results", str(results), "--expected", str(expected), "--tolerance", "1"]) == 0

    # an improvement passes; a result never evaluated is "not evaluated" (a failure only with --require-all)
    write_result(_record("binding", "uap_resnet", 45.0, created="2026-01-04T00:00:00Z"), results)
    assert check_results(results, expected).passed
    next(results.rglob("baseline/**/clean.json")).unlink()
    report = check_results(results, expected)
    assert report.passed and [r.status for r in report.rows].count("not evaluated") == 2
    report = check_results(results, expected, require_all=True)
    assert [r.status for r in report.rows if r.status == "missing"] == ["missing", "missing"]
    capsys.readouterr()
    assert main(["check", "--results", str(results), "--expected", str(expected), "--json", "--require-all"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False and out["counts"]["missing"] == 2
    # a subset missing from a result that was evaluated fails without --require-all too
    rec = _record("binding", "clean", 60.0, created="2026-01-05T00:00:00Z")
    del rec.subsets["occ1"]
    write_result(rec, results)
    report = check_results(results, expected)
    assert not report.passed and [(r.entry["subset"], r.status) for r in report.failures] == [("occ1", "missing")]


def test_check_undefined_value_and_new_entries(results, tmp_path):
    expected = tmp_path / "expected.json"
    write_expected(results, expected)
    # an expected number that became undefined (nan -> null) is missing
    write_result(_record("binding", "clean", None, created="2026-02-01T00:00:00Z"), results)
    rows = {(r.entry["model"], r.entry["perturbation"], r.entry["subset"]): r for r in check_results(results, expected).rows}
    assert rows[("binding", "clean", "all")].status == "missing"
    # a result nobody expected is reported as new, not a failure
    write_result(_record("binding", "clean", 60.0, created="2026-02-02T00:00:00Z"), results)
    write_result(_record("mixup", "clean", 10.0), results)
    report = check_results(results, expected)
    assert report.passed
    assert {r.entry["model"] for r in report.rows if r.status == "new"} == {"mixup"}


def test_check_prefers_the_expected_dtype(results, tmp_path):
    expected = tmp_path / "expected.json"
    write_expected(results, expected)
    # a newer bf16 result that is lower does not hide the fp32 one the expected file was made from
    write_result(_record("binding", "clean", 50.0, dtype="bfloat16", created="2026-03-01T00:00:00Z"), results)
    assert check_results(results, expected).passed


def test_check_bad_inputs(results, tmp_path, capsys):
    assert main(["check", "--results", str(results), "--expected", str(tmp_path / "none.json")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    assert main(["check", "--results", str(results), "--expected", str(bad)]) != 0
    assert main(["check", "--results", str(tmp_path / "nores"), "--expected", str(bad)]) != 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(RbsegError, match="no rbseg results"):
        write_expected(tmp_path / "empty", tmp_path / "e.json")


# --- issue 10, item 11 ---------------------------------------------------------------------------------

def test_check_after_the_quick_start_checks_only_what_was_evaluated(tmp_path, capsys):
    """The shipped expected.json against results of `rbseg evaluate --model binding` alone (the same
    model and perturbation files, as their recorded sha256 say): binding's entries are compared, the
    other models' are "not evaluated", and the check passes (fails with --require-all)."""
    from robustbench_seg.evaluation.results import subset_rows
    from robustbench_seg.paths import shipped_reports_dir

    shipped = shipped_reports_dir() / "expected.json"
    entries = [e for e in read_expected(shipped) if e["model"] == "binding" and e["split"] == "val"]
    assert entries
    by_pert: dict[str, dict] = {}
    for e in entries:
        by_pert.setdefault(e["perturbation"], {})[e["subset"]] = e
    out = tmp_path / "results"
    for pert, subsets in by_pert.items():
        first = next(iter(subsets.values()))
        rec = ResultRecord(
            model={"name": "binding", "sha256": first.get("model_sha256") or "m" * 64, "finished": True, "spec": "binding"},
            perturbation={"name": pert, "sha256": None if pert == "clean" else first.get("perturbation_sha256") or "p" * 64,
                          "meta": {}, "max_abs": 10.0},
            protocol={"dataset": first["dataset"], "split": "val", "fit": first["fit"], "clip": first["clip"],
                      "dtype": first["dtype"], "cooccur_splits_used": ["train_aug", "val"], "cooccur_splits_missing": [],
                      "duplicate_ids": {"count": 0, "ids": {}}},
            subsets={s: {"n_images": e["n_images"], "ids_hash": "x",
                         "metrics": {"miou": e["miou"], "iou": {}, "pixel_acc": None, "mean_acc": None,
                                     "classes_counted": 21, "pixels": 1}} for s, e in subsets.items()},
            created="2026-12-01T00:00:00Z")
        write_result(rec, out)
    assert len(subset_rows(load_results(out))) == len(entries)
    report = check_results(out, shipped)
    counts = report.to_dict()["counts"]
    assert report.passed and counts["ok"] == len(entries)
    assert counts["not evaluated"] == len(read_expected(shipped)) - len(entries)
    assert main(["check", "--results", str(out), "--expected", str(shipped)]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "not evaluated" in text and "missing" not in text
    assert main(["check", "--results", str(out), "--expected", str(shipped), "--require-all"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_different_model_or_perturbation_fails(results, tmp_path):
    expected = tmp_path / "expected.json"
    write_expected(results, expected)
    assert read_expected(expected)[0]["model_sha256"] == "m" * 64  # entries now record what was evaluated
    rec = _record("binding", "uap_resnet", 40.0, created="2026-05-01T00:00:00Z")
    rec.model["sha256"] = "x" * 64  # the same numbers from another model are no pass
    write_result(rec, results)
    rec = _record("baseline", "clean", 55.0, None, created="2026-05-01T00:00:00Z")
    write_result(rec, results)
    report = check_results(results, expected)
    statuses = {(r.entry["model"], r.entry["perturbation"], r.entry["subset"]): r.status for r in report.rows}
    assert statuses[("binding", "uap_resnet", "all")] == "different model"
    assert statuses[("baseline", "clean", "all")] == "ok"
    assert not report.passed
    rec = _record("binding", "uap_resnet", 40.0, created="2026-05-02T00:00:00Z")
    rec.perturbation["sha256"] = "q" * 64
    write_result(rec, results)
    report = check_results(results, expected)
    assert {r.status for r in report.failures} == {"different perturbation"}


def test_check_reports_improvements_and_fits_80_columns(results, tmp_path, capsys):
    expected = tmp_path / "expected.json"
    write_expected(results, expected)
    write_result(_record("binding-no-denoise", "clean", 1.0), results)  # new, with a long name
    rec = _record("binding", "uap_resnet", 47.5, created="2026-06-01T00:00:00Z")  # +7.5: improved
    rec.subsets["occ1"]["metrics"]["miou"] = 10.0  # -40: regressed
    write_result(rec, results)
    assert main(["check", "--results", str(results), "--expected", str(expected), "--all"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    assert any("uap_resnet" in ln and "all" in ln and "+7.50" in ln and "improved" in ln for ln in lines)
    assert any("occ1" in ln and "-40.00" in ln and "regressed" in ln for ln in lines)
    assert any("binding-no-denoise" in ln and "new" in ln for ln in lines)  # one line per entry, not wrapped
    assert "1 improved" in lines[-1] and "1 regressed" in lines[-1]
