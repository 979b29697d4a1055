"""The leaderboard: one row per evaluated model, its headline numbers and the protocol of each.

Columns (full split of ``split``, mIoU %):

- ``Clean``;
- ``Universal (mean)``: the mean over the universal perturbations evaluated for that model (every
  ``kind = perturbation`` result; the names are part of the cell's protocol, so rows averaged over
  different sets are marked);
- ``Worst eps e``: the per-image worst case over the attacks at eps e (the ``worst-eps<e>.json``
  results; protocol: the member attacks with their steps and preset);
- ``Mean corruption``: the mean mIoU over every corruption and severity evaluated
  (``evaluation.corruption_metrics.mean_corruption_miou``; protocol: corruptions, severities, seed, version).

Every number's protocol (dataset, split, dtype, fit / clip, plus the column's own) is recorded; where
the protocols of one column differ between rows, the cells that differ from the column's most common
protocol carry :data:`DIFFERS_MARK` and the table's notes name each one.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from ..errors import RbsegError
from ..io import atomic_write_json, atomic_write_text
from . import spec
from .inputs import Cell, Missing, ResultIndex, input_kind, load_result_index
from .tables import Column, Row, Table, _model_order, write_table

DIFFERS_MARK = "*"
SECTION_BEGIN = "<!-- rbseg-leaderboard:begin -->"
SECTION_END = "<!-- rbseg-leaderboard:end -->"
FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json")


def _base_protocol(rec: dict) -> dict[str, Any]:
    p = rec.get("protocol") or {}
    return {k: p.get(k) for k in ("dataset", "split", "dtype", "fit", "clip")}


def _base_text(proto: dict[str, Any]) -> str:
    clip = "clip" if proto.get("clip") else "noclip"
    return f"{proto.get('dataset')} {proto.get('split')} {proto.get('dtype')} {proto.get('fit')}/{clip}"


def _attack_text(rec: dict | None, name: str) -> str:
    attack = ((rec or {}).get("perturbation") or {}).get("attack") or {}
    params = attack.get("params") or {}
    if not attack:
        return name
    return f"{attack.get('name', name)} (steps {attack.get('steps')}, preset {params.get('preset', '?')})"


def leaderboard_cells(index: ResultIndex, model: str, split: str = "val") -> dict[str, tuple[Cell, dict]]:
    """{column name: (cell, protocol dict)} for one model (only the columns it has numbers for)."""
    from ..evaluation.corruption_metrics import corruption_info, mean, mean_corruption_miou, miou_grid, severities

    out: dict[str, tuple[Cell, dict]] = {}
    clean = index.get(model, "clean", split)
    if clean is not None:
        out["Clean"] = (index.miou(model, "clean", split), _base_protocol(clean))
    recs = {k[1]: r for k, r in index.records.items() if k[0] == model and k[2] == split}
    universal = sorted(n for n, r in recs.items() if input_kind(r) == "perturbation")
    if universal:
        value = mean(index.miou(model, n, split).value for n in universal)
        proto = {**_base_protocol(recs[universal[0]]), "perturbations": universal}
        cell = Cell(value, None,
                    None if value is not None else Missing(f"model '{model}' on {split}", "no mIoU under", ", ".join(universal)))
        out["Universal (mean)"] = (cell, proto)
    for name, rec in recs.items():
        if input_kind(rec) != "worst":
            continue
        worst = (rec.get("perturbation") or {}).get("worst") or {}
        eps = float(worst.get("eps", rec["perturbation"].get("max_abs") or 0))
        members = [a.get("name") for a in worst.get("attacks") or []]
        proto = {**_base_protocol(rec), "eps": eps, "attacks": [_attack_text(recs.get(n), n) for n in members]}
        out[f"Worst eps {eps:g}"] = (index.miou(model, name, split), proto)
    corr = [r for r in recs.values() if input_kind(r) == "corruption"]
    if corr:
        grid = miou_grid(corr)
        infos = [corruption_info(r) for r in corr]
        proto = {**_base_protocol(corr[0]),
                 "corruptions": sorted(grid), "severities": severities(grid),
                 "seed": sorted({int(i.get("seed", 0)) for i in infos if i}),
                 "version": sorted({str(i.get("version")) for i in infos if i})}
        value = mean_corruption_miou(grid)
        out["Mean corruption"] = (Cell(value, None, None if value is not None else Missing(
            f"model '{model}' on {split}", "no corruption mIoU")), proto)
    return out


def _eps_of(column: str) -> float:
    return float(column.removeprefix("Worst eps "))


def _protocol_key(proto: dict) -> str:
    return json.dumps(proto, sort_keys=True, default=str)


def _protocol_summary(column: str, proto: dict) -> str:
    text = _base_text(proto)
    if column.startswith("Universal"):
        text += f"; {len(proto['perturbations'])} perturbation(s): {', '.join(proto['perturbations'])}"
    elif column.startswith("Worst"):
        text += f"; attacks {', '.join(proto['attacks'])}"
    elif column == "Mean corruption":
        text += (f"; {len(proto['corruptions'])} corruption(s) x severities {','.join(map(str, proto['severities']))}, "
                 f"seed {','.join(map(str, proto['seed']))}, version {','.join(proto['version'])}")
    return text


def build_leaderboard(index: ResultIndex, split: str = "val") -> tuple[Table, dict[str, dict[str, dict]]]:
    """(the leaderboard table, {model: {column: protocol}}). Rows: every model with a result on
    ``split``; a cell whose protocol differs from its column's most common one carries DIFFERS_MARK."""
    models = _model_order({k[0] for k in index.records if k[2] == split})
    if not models:
        raise RbsegError(f"no results on split '{split}' (splits here: {', '.join(index.splits) or 'none'})", index.source or None)
    per_model = {m: leaderboard_cells(index, m, split) for m in models}
    names = {c for cells in per_model.values() for c in cells}
    columns = [c for c in ("Clean", "Universal (mean)") if c in names]
    columns += sorted((c for c in names if c.startswith("Worst eps ")), key=_eps_of)
    columns += [c for c in ("Mean corruption",) if c in names]
    notes, differs = [], {}
    for col in columns:
        protos = {m: _protocol_key(cells[col][1]) for m, cells in per_model.items() if col in cells}
        counts: dict[str, int] = {}
        for key in protos.values():
            counts[key] = counts.get(key, 0) + 1
        common = max(counts, key=lambda k: (counts[k], -list(protos.values()).index(k))) if counts else None
        differs[col] = {m for m, key in protos.items() if key != common}
        if len(counts) > 1:
            notes.append(f"{DIFFERS_MARK} {col}: protocols differ between rows: " + "; ".join(
                f"{m}: {_protocol_summary(col, per_model[m][col][1])}" for m in protos))
        elif counts:
            notes.append(f"{col}: {_protocol_summary(col, json.loads(common))}.")
    rows = []
    for m in models:
        cells = []
        for col in columns:
            if col not in per_model[m]:
                cells.append(Cell(None, None, Missing(f"model '{m}' on {split}", "not evaluated:", col)))
                continue
            cell = per_model[m][col][0]
            if m in differs[col] and cell.value is not None:
                cell = Cell(cell.value, cell.n_images, cell.missing, DIFFERS_MARK)
            cells.append(cell)
        base = next(iter(per_model[m].values()))[1] if per_model[m] else {}
        rows.append(Row(m, [m, _base_text(base) if base else "?"], cells))
    notes.insert(0, f"Full {split} split, mIoU (%). Universal (mean): mean over the universal perturbations evaluated "
                    "for that model; Worst eps e: per-image worst case over the attacks run at eps e (0-255 units); "
                    "Mean corruption: mean over every corruption and severity evaluated. n/a: not evaluated.")
    table = Table("leaderboard", spec.TITLES["leaderboard"], ["Model", "Protocol"],
                  [Column(c) for c in columns], rows, notes=notes)
    table.protocol = index.protocol([k for k in index.records if k[2] == split])
    protocols = {m: {c: v[1] for c, v in cells.items()} for m, cells in per_model.items()}
    return table, protocols


def leaderboard_html(table: Table) -> str:
    from .html import table_html

    return "\n".join([SECTION_BEGIN, f'<h2 id="leaderboard">{escape(table.title)}</h2>', table_html(table),
                      f'<p class="caption">{escape(table.caption())}</p>', SECTION_END])


def _index_with_section(existing: str | None, section: str) -> str:
    if existing is None:
        from .html import STYLE

        return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                          "<title>rbseg leaderboard</title>", f"<style>{STYLE}</style></head><body>",
                          "<h1>rbseg leaderboard</h1>", section, "</body></html>"]) + "\n"
    if SECTION_BEGIN in existing and SECTION_END in existing:
        head, _, rest = existing.partition(SECTION_BEGIN)
        return head + section + rest.partition(SECTION_END)[2]
    if "</body>" in existing:
        head, _, tail = existing.rpartition("</body>")
        return head + section + "\n</body>" + tail
    return existing + section + "\n"


def write_leaderboard(table: Table, protocols: dict, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """``out_dir/leaderboard.md|csv|tex|json`` and the leaderboard section of ``out_dir/index.html``
    (added to a report's index.html, or a page of its own). Refuses to replace an earlier leaderboard
    unless ``overwrite``."""
    from ..io import probe_writable

    out = Path(out_dir)
    index_html = out / "index.html"
    existing = index_html.read_text(encoding="utf-8") if index_html.is_file() else None
    if not overwrite:
        for name in FILES:
            if (out / name).exists():
                raise RbsegError("a leaderboard is already written here; pass --overwrite to replace it", out / name)
        if existing is not None and SECTION_BEGIN in existing:
            raise RbsegError("index.html already holds a leaderboard section; pass --overwrite to replace it", index_html)
    probe_writable(out, "leaderboard folder")
    files = write_table(table, out)  # leaderboard.md / .csv / .tex (the table's key)
    files.append(atomic_write_json(out / "leaderboard.json", {
        "schema": "rbseg-leaderboard/1", "title": table.title, "columns": [c.label for c in table.columns],
        "rows": [{"model": r.key, "protocol": protocols.get(r.key, {}),
                  **{c.label: cell.value for c, cell in zip(table.columns, r.cells)}} for r in table.rows],
        "notes": table.notes}))
    files.append(atomic_write_text(index_html, _index_with_section(existing, leaderboard_html(table))))
    return files


def leaderboard(results_dir: str | Path, split: str = "val", dataset: str | None = None) -> tuple[Table, dict, ResultIndex]:
    index = load_result_index(results_dir, dataset=dataset)
    if not index.records:
        raise RbsegError("no rbseg results here (run `rbseg evaluate` first)", results_dir)
    table, protocols = build_leaderboard(index, split)
    return table, protocols, index


__all__ = ["build_leaderboard", "leaderboard", "leaderboard_cells", "write_leaderboard", "DIFFERS_MARK"]
