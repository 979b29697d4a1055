"""rbseg leaderboard: one row per model from hand-made result files, protocol marks, the written files and
index.html section, the CLI, and one end-to-end run on SynthVOC micro with one corruption."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.reports.inputs import ResultIndex
from robustbench_seg.reports.leaderboard import DIFFERS_MARK, SECTION_BEGIN, build_leaderboard, write_leaderboard

from test_report import make_record, write_store


def _attack(model, name, eps, miou, steps=10, preset="quick", **kw):
    key = f"{name}-eps{eps:g}-s{steps}"
    rec = make_record(model, key, miou=miou, **kw)
    rec["perturbation"].update({"kind": "attack", "attack": {"name": name, "key": key, "eps": eps, "steps": steps,
                                                             "params": {"preset": preset}}})
    return rec


def _worst(model, eps, miou, members, **kw):
    rec = make_record(model, f"worst-eps{eps:g}", miou=miou, **kw)
    rec["perturbation"].update({"kind": "worst", "worst": {"eps": eps, "attacks": [{"name": m} for m in members]}})
    return rec


def _corruption(model, name, severity, miou, **kw):
    rec = make_record(model, f"corruption-{name}-s{severity}", miou=miou, **kw)
    rec["perturbation"].update({"kind": "corruption", "corruption": {"name": name, "severity": severity, "seed": 0,
                                                                     "version": "1", "impl": "torch"}})
    return rec


def _records(binding_steps=10):
    recs = []
    for model, base in (("baseline", 60.0), ("binding", 70.0)):
        recs.append(make_record(model, miou=base))
        recs.append(make_record(model, "uap-resnet", miou=base - 10))
        recs.append(make_record(model, "gduap-rno", miou=base - 20))
        steps = binding_steps if model == "binding" else 10
        for eps in (4.0, 8.0):
            recs.append(_attack(model, "pgd", eps, base - 2 * eps - 1, steps=steps))
            recs.append(_attack(model, "cospgd", eps, base - 2 * eps - 2, steps=steps))
            recs.append(_worst(model, eps, base - 3 * eps, [f"pgd-eps{eps:g}-s{steps}", f"cospgd-eps{eps:g}-s{steps}"]))
        for name in ("fog", "snow"):
            for sev in (1, 2):
                recs.append(_corruption(model, name, sev, base - 10 * sev - (4 if name == "snow" else 0)))
    return recs


def _row(table, model):
    row = next(r for r in table.rows if r.key == model)
    return {c.label: cell for c, cell in zip(table.columns, row.cells)}


def test_one_row_per_model_with_clean_universal_worst_and_corruption():
    table, protocols = build_leaderboard(ResultIndex.from_records(_records()))
    assert [c.label for c in table.columns] == ["Clean", "Universal (mean)", "Worst eps 4", "Worst eps 8", "Mean corruption"]
    assert [r.key for r in table.rows] == ["baseline", "binding"]
    b = _row(table, "binding")
    assert b["Clean"].value == 70.0
    assert b["Universal (mean)"].value == pytest.approx((60.0 + 50.0) / 2)
    assert b["Worst eps 4"].value == 58.0 and b["Worst eps 8"].value == 46.0
    # fog 60, 50; snow 56, 46 -> mean 53
    assert b["Mean corruption"].value == pytest.approx(53.0)
    assert not any(c.mark for r in table.rows for c in r.cells)  # one protocol everywhere: no mark
    proto = protocols["binding"]
    assert proto["Universal (mean)"]["perturbations"] == ["gduap-rno", "uap-resnet"]
    assert proto["Worst eps 4"]["attacks"] == ["pgd (steps 10, preset quick)", "cospgd (steps 10, preset quick)"]
    assert proto["Mean corruption"]["severities"] == [1, 2] and proto["Clean"]["dtype"] == "float32"
    assert any("Mean corruption" in n and "severities 1,2" in n for n in table.notes)


def test_cells_whose_protocol_differs_are_marked_and_explained():
    recs = _records(binding_steps=50)
    recs += [make_record("mixup", miou=65.0, dtype="bfloat16")]  # another dtype: its clean cell differs
    table, _ = build_leaderboard(ResultIndex.from_records(recs))
    assert _row(table, "mixup")["Clean"].mark == DIFFERS_MARK
    assert _row(table, "baseline")["Clean"].mark == ""
    assert _row(table, "mixup")["Worst eps 4"].value is None  # not evaluated: n/a, listed as missing
    # the worst case of binding came from 50-step attacks, baseline's from 10: one of them is marked
    marks = {m: _row(table, m)["Worst eps 4"].mark for m in ("baseline", "binding")}
    assert sorted(marks.values()) == ["", DIFFERS_MARK]
    note = next(n for n in table.notes if n.startswith(f"{DIFFERS_MARK} Worst eps 4"))
    assert "steps 50" in note and "steps 10" in note
    assert "mixup" in " ".join(table.missing)


def test_files_and_index_html_section(tmp_path):
    table, protocols = build_leaderboard(ResultIndex.from_records(_records()))
    out = tmp_path / "lb"
    out.mkdir()
    (out / "index.html").write_text("<html><body><h1>report</h1></body></html>\n")
    files = write_leaderboard(table, protocols, out)
    assert {p.name for p in files} == {"leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json",
                                       "index.html"}
    html = (out / "index.html").read_text()
    assert html.startswith("<html><body><h1>report</h1>") and SECTION_BEGIN in html and html.rstrip().endswith("</html>")
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert rows[1]["key"] == "binding" and rows[1]["Mean corruption"] == "53.0"
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["rows"][1]["protocol"]["Clean"]["dataset"] == "SynthVOC-tiny"
    assert "\\begin{tabular}" in (out / "leaderboard.tex").read_text()
    with pytest.raises(RbsegError, match="--overwrite"):
        write_leaderboard(table, protocols, out)
    write_leaderboard(table, protocols, out, overwrite=True)
    assert (out / "index.html").read_text().count(SECTION_BEGIN) == 1  # replaced, not added twice


def test_cli_leaderboard_prints_and_writes(tmp_path, capsys):
    results = write_store(tmp_path / "results", _records())
    assert main(["leaderboard", "--results", str(results), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "binding" in printed and "Mean corruption" in printed
    assert (tmp_path / "out" / "leaderboard.md").is_file() and (tmp_path / "out" / "index.html").is_file()
    assert main(["leaderboard", "--results", str(results), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data["rows"]] == ["baseline", "binding"]
    assert main(["leaderboard", "--results", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "results folder not found" in err and len(err.strip().splitlines()) == 1


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 21, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return {"out": self.conv(F.relu(x))}


@pytest.mark.usefixtures("one_thread")
def test_end_to_end_tiny_model_one_corruption(synth_micro_root, tmp_path, capsys):
    from robustbench_seg.evaluation.engine import evaluate

    results = tmp_path / "results"
    records = evaluate(_Tiny(), data_root=synth_micro_root, perturbations="none", subsets="none", out=results,
                       device="cpu", progress=False, model_name="tiny", corruptions="brightness", severities="2")
    assert [r.perturbation["name"] for r in records] == ["clean", "corruption-brightness-s2"]
    assert main(["leaderboard", "--results", str(results), "--out", str(tmp_path / "lb")]) == 0
    data = json.loads((Path(tmp_path) / "lb" / "leaderboard.json").read_text())
    row = data["rows"][0]
    assert row["model"] == "tiny" and row["Clean"] == pytest.approx(records[0].miou())
    assert row["Mean corruption"] == pytest.approx(records[1].miou())
    assert row["protocol"]["Mean corruption"]["corruptions"] == ["brightness"]
    assert row["protocol"]["Mean corruption"]["severities"] == [2]
