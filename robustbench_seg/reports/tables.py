"""The paper's Tables 1-5 (and two extra tables) from a results store, in Markdown, CSV and LaTeX.

Each ``table*`` function is a pure function of a :class:`ResultIndex`; the rows and columns come
from :mod:`.spec`. A number whose input is missing shows ``n/a`` and the table lists what is missing
(model, perturbation or subset) instead of failing. Cells are mIoU/IoU in percent with one decimal.
"""
from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..constants import VOC_CLASSES
from ..data.subsets import subset_class
from ..io import atomic_write_text
from . import spec
from .inputs import Cell, Missing, ResultIndex, group_missing

MISSING = "n/a"
PLUS_MINUS = "\u00b1"


@dataclass(frozen=True)
class Column:
    label: str  # header under its group
    group: str = ""  # spanning header above (LaTeX / HTML); "" for none
    flat: str = ""  # one-line header (Markdown / CSV); defaults to "group label"
    latex: str = ""  # LaTeX header; defaults to the escaped label

    @property
    def flat_label(self) -> str:
        return self.flat or " ".join(p for p in (self.group, self.label) if p)


@dataclass
class Row:
    key: str  # zoo model name, "n_images", or "<split>/<model>"
    stub: list[str]  # text of the leading (label) columns
    cells: list[Cell]
    kind: str = "score"  # "score" (percent, one decimal) or "count" (integer image count)
    block: str = ""  # rows of one block compete for the best value of a column


@dataclass
class Table:
    key: str
    title: str
    stub_header: list[str]
    columns: list[Column]
    rows: list[Row]
    protocol: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    best_by: str = "column"  # "column" or "row": which cells compete for bold

    @property
    def missing(self) -> list[str]:
        """What is missing, one line per model/subset with its items listed (empty when complete)."""
        return group_missing(cell.missing for row in self.rows for cell in row.cells if cell.missing)

    @property
    def complete(self) -> bool:
        return not self.missing

    def best(self) -> set[tuple[int, int]]:
        """(row, column) positions of the highest score (as shown, one decimal) among competing cells.

        ``best_by="column"``: rows of one block compete within each column (most tables);
        ``best_by="row"``: the columns of each row compete (Table 5 a, where methods are columns).
        """
        groups: dict[tuple, list[tuple[float, tuple[int, int]]]] = {}
        for i, row in enumerate(self.rows):
            if row.kind != "score":
                continue
            for j, cell in enumerate(row.cells):
                if cell.ok:
                    group = (row.block, j) if self.best_by == "column" else (i,)
                    groups.setdefault(group, []).append((round(cell.value, 1), (i, j)))
        out: set[tuple[int, int]] = set()
        for values in groups.values():
            top = max((v for v, _ in values), default=None)
            if len(values) >= 2 and any(v < top for v, _ in values):  # no bold when all cells tie
                out.update(pos for v, pos in values if v == top)
        return out

    def caption(self) -> str:
        return " ".join([*self.notes, protocol_text(self.protocol)])


def format_cell(cell: Cell, kind: str, marks: bool = True) -> str:
    if cell.value is None:
        return MISSING
    spread = f" {PLUS_MINUS} {cell.std:.1f}" if cell.std is not None else ""
    return (str(int(cell.value)) if kind == "count" else f"{cell.value:.1f}{spread}") + (cell.mark if marks else "")


def protocol_text(protocol: dict[str, list]) -> str:
    def show(name: str, values: list) -> str:
        if not values:
            return f"{name} unknown"
        if name == "clip":
            values = ["on" if v else "off" for v in values]
        return f"{name} " + " / ".join(str(v) for v in values)

    parts = [show(n, protocol.get(n, [])) for n in ("dataset", "split", "fit", "clip", "dtype")]
    if protocol.get("arch"):
        parts.append(show("arch", protocol["arch"]))
    return "Protocol: " + ", ".join(parts) + "."


def _label(model: str) -> str:
    return spec.METHOD_LABELS.get(model, model)


def main_methods(index: ResultIndex) -> tuple[str, ...]:
    """The rows of Tables 1-4 (and lines of Figure 4): the paper's four methods, then SegMix (IJCV) when
    the results hold it."""
    present = set(index.models)
    return spec.MAIN_METHODS + tuple(m for m in spec.SEGMIX_METHODS if m in present)


def _segmix_note(index: ResultIndex) -> list[str]:
    missing = [m for m in spec.SEGMIX_METHODS if m not in set(index.models)]
    return [f"No results for {', '.join(missing)} (IJCV's +CM): its row is left out."] if missing else []


# --- seed replicates (issue 12) ----------------------------------------------------------------------

def replicates(index: ResultIndex, model: str) -> list[str]:
    """The seed replicates of ``model`` (training.recipes.SEED_REPLICATES) that the results hold, in seed order."""
    from ..training.recipes import SEED_REPLICATES

    present = set(index.models)
    return [name for name, (base, _) in SEED_REPLICATES.items() if base == model and name in present]


def seed_runs(index: ResultIndex, model: str, cell_of: Callable[[str], Cell]) -> list[float]:
    """One number per seed: ``model``'s own run first, then each replicate's (runs without the number left out)."""
    return [c.value for c in (cell_of(m) for m in [model, *replicates(index, model)]) if c.ok]


def seed_std(index: ResultIndex, model: str, cell_of: Callable[[str], Cell]) -> tuple[float, int] | None:
    """(sample std over the seeds, n) of one cell, or None with fewer than two runs."""
    runs = seed_runs(index, model, cell_of)
    return (statistics.stdev(runs), len(runs)) if len(runs) >= 2 else None


def spread_notes(index: ResultIndex, table: Table, models: list[tuple[str, str]],
                 cell_of: Callable[[str, str, int], Cell]) -> list[str]:
    """The "> 2 std" note of Tables 1-4 (docs/reports.md "Seed replicates"): ``models`` = (block, model) of each
    score row, in row order; ``cell_of(model, block, column)`` looks a cell up for any model (a replicate too).
    For each column and each pair X (earlier row), Y (later row) of one block, d = Y - X (the values as shown);
    s = the largest sample std over seeds of that cell among X and Y (those with at least two runs); the pair
    is listed when |d| > 2 s. Empty when no row of the table has replicates (the table is then as before)."""
    rows = [(k, r) for k, r in enumerate(table.rows) if r.kind == "score"]
    std: dict[tuple[int, int], float] = {}
    for (k, _), (block, model) in zip(rows, models):
        for j in range(len(table.columns)):
            got = seed_std(index, model, lambda m, block=block, j=j: cell_of(m, block, j))
            if got is not None:
                std[(k, j)] = got[0]
    if not std:
        return []
    found = []
    for j, column in enumerate(table.columns):
        where = f"{column.flat_label}: " if len(table.columns) > 1 else ""
        for a, ((ka, ra), (block_a, ma)) in enumerate(zip(rows, models)):
            for (kb, rb), (block_b, mb) in list(zip(rows, models))[a + 1:]:
                x, y = ra.cells[j], rb.cells[j]
                sds = [std[k] for k in ((ka, j), (kb, j)) if k in std]
                if block_a != block_b or not (x.ok and y.ok) or not sds:
                    continue
                d, s = y.value - x.value, max(sds)
                if abs(d) > 2 * s:
                    found.append(f"{where}{_label(mb)} vs {_label(ma)}: {d:+.1f} (> 2 std = {2 * s:.1f})")
    head = ("Beyond seed noise (|difference| > 2 std over the training seeds of the replicated methods, "
            "docs/reports.md): ")
    return [head + ("; ".join(found) + "." if found else "none of the differences between the shown methods.")]


def _count_row(index: ResultIndex, subsets: list[str], models: tuple[str, ...], split: str = "val") -> Row:
    cells = []
    for subset in subsets:
        n, reason = index.n_images(subset, split, models)
        cells.append(Cell(None if n is None else float(n), None, reason))
    return Row("n_images", ["# of images"], cells, kind="count")


def _finish(table: Table, index: ResultIndex, keys: list[tuple[str, str, str]]) -> Table:
    table.protocol = index.protocol(keys)
    return table


# --- the tables ---------------------------------------------------------------------------------

def table1(index: ResultIndex) -> Table:
    """val mIoU of the four methods; a test block for the methods with test-split results."""
    rows, keys, shown = [], [], []
    methods = main_methods(index)
    for split in spec.TABLE1_SPLITS:
        models = methods if split == "val" else [m for m in methods if index.get(m, "clean", split)]
        for model in models:
            cell = index.miou(model, "clean", split)
            runs = seed_std(index, model, lambda m, split=split: index.miou(m, "clean", split))
            if runs is not None:  # mean +- sample std over the seeds (the model's own run included)
                values = seed_runs(index, model, lambda m, split=split: index.miou(m, "clean", split))
                cell = Cell(statistics.fmean(values), cell.n_images, cell.missing, cell.mark, runs[0], runs[1])
            rows.append(Row(f"{split}/{model}", [split.capitalize(), _label(model)], [cell], block=split))
            keys += [(m, "clean", split) for m in [model, *(replicates(index, model) if runs else [])]]
            shown.append((split, model))
    notes = ["Full split, no perturbation."] + _segmix_note(index)
    if not index.has_split("test"):
        notes.append("No test-split results: the test block is left out.")
    table = Table("table1", spec.TITLES["table1"], ["Split", "Method"], [Column("mIoU (%)")], rows, notes=notes)
    if any(r.cells[0].std is not None for r in rows):
        for row in rows:
            c = row.cells[0]
            row.stub[1] += f" (n={c.n_runs} seeds)" if c.std is not None else " (single run)"
        notes.append(f"Rows with n seeds: mean {PLUS_MINUS} sample std (n - 1) of the mIoU over n training seeds (the zoo "
                     "model and its seed replicates, training.recipes.SEED_REPLICATES); single run: one seed.")
        notes += spread_notes(index, table, shown, lambda m, split, j: index.miou(m, "clean", split))
    return _finish(table, index, keys)


def table2(index: ResultIndex, split: str = "val") -> Table:
    subsets = list(spec.TABLE2_COLUMNS)
    columns = [Column(label, group) for group, label in spec.TABLE2_COLUMNS.values()]
    columns = [Column(c.label, c.group, flat=c.label) for c in columns]
    methods = main_methods(index)
    rows = [_count_row(index, subsets, methods, split)]
    for model in methods:
        rows.append(Row(model, [_label(model)], [index.miou(model, "clean", split, s) for s in subsets]))
    notes = [
        "Occlusion: at least one (1-Occ) / every (All-Occ) object occluded; Number of Objects: exactly k instances; "
        "Number of Unique Objects: exactly k foreground classes. No perturbation."
    ]
    keys = [(m, "clean", split) for m in methods]
    table = Table("table2", spec.TITLES["table2"], ["Method"], columns, rows, notes=notes)
    table.notes += spread_notes(index, table, [("", m) for m in methods],
                                lambda m, _, j: index.miou(m, "clean", split, subsets[j]))
    return _finish(table, index, keys)


def table3(index: ResultIndex, split: str = "val") -> Table:
    subsets, columns = [], []
    for prefix, group in spec.TABLE3_GROUPS.items():
        for cls in spec.TABLE3_CLASSES:
            subsets.append(f"{prefix}-{cls}")
            label = spec.TABLE3_CLASS_LABELS[cls]
            columns.append(Column(label, group, flat=f"{'with person' if prefix == 'person' else 'alone'}: {label}"))
    methods = main_methods(index)
    rows = [_count_row(index, subsets, methods, split)]
    for model in methods:
        cells = [index.class_iou(model, VOC_CLASSES[subset_class(s)], s, "clean", split) for s in subsets]
        rows.append(Row(model, [_label(model)], cells))
    notes = [
        "Each cell is the IoU of class c on its subset: images whose foreground classes are exactly {c, person} "
        "(co-occur with person) or exactly {c} (exclusive). No perturbation."
    ]
    keys = [(m, "clean", split) for m in methods]
    table = Table("table3", spec.TITLES["table3"], ["Method"], columns, rows, notes=notes)
    table.notes += spread_notes(index, table, [("", m) for m in methods],
                                lambda m, _, j: index.class_iou(m, VOC_CLASSES[subset_class(subsets[j])], subsets[j], "clean", split))
    return _finish(table, index, keys)


def _perturbation_columns() -> list[Column]:
    return [Column(label, group, flat=" ".join(p for p in (group, label) if p)) for group, label in spec.TABLE4_COLUMNS.values()]


def _column_text(key: str) -> str:
    return " ".join(x for x in spec.TABLE4_COLUMNS[key] if x)


def table4_role(meta: dict) -> tuple[str | None, str]:
    """(the Table 4 column key that a perturbation's recorded role fills, or None; why / why not).

    The role is read from the perturbation's JSON meta: ``table4_column`` when present, else
    ``method`` with ``source_model.arch`` / ``kind`` (UAP) or ``prior_label`` / ``prior`` (GD-UAP).
    """
    meta = meta if isinstance(meta, dict) else {}
    by_text = {_column_text(k): k for k in spec.TABLE4_COLUMNS if k != "clean"}
    column = meta.get("table4_column")
    if isinstance(column, str) and column:
        if column in by_text:
            return by_text[column], f"recorded table4_column '{column}'"
        return None, f"its recorded table4_column '{column}' is none of Table 4's columns"
    method = str(meta.get("method") or "").lower().replace("_", "-")
    source = meta.get("source_model") if isinstance(meta.get("source_model"), dict) else {}
    if method == "uap":
        arch = str(source.get("arch") or "").lower().replace("-", "").replace("_", "")
        if not arch:
            return None, "a UAP without a recorded source model (meta source_model.arch)"
        if str(source.get("kind") or "surrogate") not in ("surrogate", "classifier"):
            return None, f"a UAP crafted on a {source.get('kind')} model, not on a classifier"
        for key, archs in spec.TABLE4_UAP_SOURCE_ARCHS.items():
            if any(arch.startswith(a) for a in archs):
                return key, f"UAP on a {source.get('arch')} classifier"
        return None, f"a UAP on a {source.get('arch')} classifier (Table 4 has ResNet-152 and GoogLeNet columns)"
    if method in ("gd-uap", "gduap"):
        priors = [str(meta.get(k)) for k in ("prior_label", "prior") if meta.get(k) is not None]
        for key, names in spec.TABLE4_GDUAP_PRIORS.items():
            if any(p.lower() in (n.lower() for n in names) for p in priors):
                return key, f"GD-UAP with prior {priors[0]}"
        return None, f"a GD-UAP with an unknown prior ({', '.join(priors) or 'none recorded'})"
    if not method:
        return None, "no recorded method (no JSON sidecar?)"
    return None, f"method '{meta.get('method')}' has no Table 4 column"


@dataclass
class Table4Inputs:
    """Which evaluated perturbation fills each Table 4 column, and why the others do not."""

    columns: dict[str, str]  # column key (spec.TABLE4_COLUMNS) -> perturbation name ("clean" for Clean)
    roles: dict[str, str]  # perturbation -> how its column was found
    left_out: dict[str, str]  # perturbation -> why it is not in Table 4 (it is in the all-inputs table)


def table4_inputs(index: ResultIndex, models: tuple[str, ...] | None = None, split: str = "val") -> Table4Inputs:
    """Match every evaluated perturbation to a Table 4 column by its recorded role. Where several
    fill one column, the one with results for most of ``models`` wins (then the shipped file name,
    then the name); a column nobody fills keeps its shipped name (its cells say "no result under")."""
    models = main_methods(index) if models is None else models
    candidates: dict[str, list[str]] = {}
    roles, left_out = {}, {}
    for name in index.perturbations:
        key, why = table4_role(index.perturbation_meta(name))
        if key is None:
            left_out[name] = f"not in Table 4: {why}"
        else:
            candidates.setdefault(key, []).append(name)
            roles[name] = why
    columns = {"clean": "clean"}
    for key in spec.TABLE4_COLUMNS:
        if key == "clean":
            continue
        names = candidates.get(key, [])
        if not names:
            columns[key] = key
            continue
        ranked = sorted(names, key=lambda n: (-sum(index.get(m, n, split) is not None for m in models), n != key, n))
        columns[key] = ranked[0]
        for other in ranked[1:]:
            left_out[other] = f"not in Table 4: its column {_column_text(key)} shows '{ranked[0]}' ({roles[other]})"
    return Table4Inputs(columns, roles, left_out)


def white_box(index: ResultIndex, model: str, perturbation: str, split: str = "val") -> bool:
    """True when the perturbation was crafted on this very model: its recorded source sha256 equals the
    evaluated model's (a white-box attack, not the transfer Table 4 reports)."""
    source = index.perturbation_meta(perturbation).get("source_model")
    sha = source.get("sha256") if isinstance(source, dict) else None
    return bool(sha) and sha == index.model_sha256(model, split)


def fooling_rate(meta: dict) -> tuple[float, str] | None:
    """(fooling rate, on what) a perturbation recorded when it was crafted, on its own validation data:
    ``val_fooling_rate`` (a UAP's held-out crops) when recorded, else ``fooling_rate`` (a GD-UAP's is measured on
    its held-out validation images); None when the file records neither."""
    for key in ("val_fooling_rate", "fooling_rate"):
        value = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(value, (int, float)):
            return float(value), str(meta.get(f"{key}_on") or "data not recorded")
    return None


def attack_strength_notes(index: ResultIndex, models: Sequence[str], columns: dict[str, str], split: str = "val") -> list[str]:
    """Table 4's two notes on what each perturbation does: its recorded fooling rate on its own validation
    data, and the mIoU drop (clean - perturbed, points) it causes on every row. ``columns``: perturbation
    name -> its column label, in column order."""
    rates = []
    for p in columns:
        got = fooling_rate(index.perturbation_meta(p))
        if got is not None:
            rates.append(f"{p} {got[0]:.3f} ({got[1]})")
    notes = ["Fooling rate of each perturbation on its own validation data, as recorded when it was crafted: "
             + "; ".join(rates) + "."] if rates else []
    drops = []
    for m in models:
        clean = index.miou(m, "clean", split)
        cells = [(label, index.miou(m, p, split)) for p, label in columns.items()]
        parts = [f"{label} {clean.value - c.value:.1f}" for label, c in cells if clean.ok and c.ok]
        if parts:
            drops.append(f"{_label(m)}: " + ", ".join(parts))
    if drops:
        notes.append("mIoU drop (clean - perturbed, points) per row: " + "; ".join(drops) + ".")
    return notes


def table4(index: ResultIndex, split: str = "val", models: tuple[str, ...] | None = None, key: str = "table4") -> Table:
    models = main_methods(index) if models is None else models
    inputs = table4_inputs(index, models, split)
    perts = [inputs.columns[k] for k in spec.TABLE4_COLUMNS]
    rows = []
    for m in models:
        cells = []
        for p in perts:
            cell = index.miou(m, p, split)
            if p != "clean" and cell.ok and white_box(index, m, p, split):
                cell = Cell(cell.value, cell.n_images, cell.missing, spec.WHITE_BOX_MARK)
            cells.append(cell)
        rows.append(Row(m, [_label(m)], cells))
    notes = [
        "Columns: " + ", ".join(f"{_column_text(k)} = {inputs.columns[k]}" for k in list(spec.TABLE4_COLUMNS)[1:])
        + " (each perturbation matched to its column by its recorded method and source model or prior); UAP is a "
        "black-box transfer from ImageNet-style classifiers, GD-UAP is crafted on the segmentation source model its "
        "JSON records."
    ]
    if any(c.mark for r in rows for c in r.cells):
        notes.append(f"{spec.WHITE_BOX_MARK} white-box: the perturbation was crafted on this very model (its recorded "
                     "source sha256 equals the model's), not a transfer.")
    notes += attack_strength_notes(index, models, {inputs.columns[k]: _column_text(k) for k in list(spec.TABLE4_COLUMNS)[1:]},
                                   split)
    if inputs.left_out:
        notes.append("Evaluated but not in this table (see the all-inputs table): "
                     + "; ".join(f"{n} ({why.removeprefix('not in Table 4: ')})" for n, why in inputs.left_out.items()) + ".")
    keys = [(m, p, split) for m in models for p in perts]
    title = spec.TITLES["table4"] if key == "table4" else spec.TITLES.get(key, key)
    table = Table(key, title, ["Method"], _perturbation_columns(), rows, notes=notes)
    if key == "table4":
        table.notes += spread_notes(index, table, [("", m) for m in models], lambda m, _, j: index.miou(m, perts[j], split))
    return _finish(table, index, keys)


def table5a(index: ResultIndex, split: str = "val") -> Table:
    columns = [Column(name, latex=spec.TABLE5A_LATEX.get(name, "")) for name in spec.TABLE5A_COLUMNS]
    cells = [index.miou(model, "clean", split) for model in spec.TABLE5A_COLUMNS.values()]
    rows = [Row("blending", [_label("baseline")], cells, block="row")]
    notes = [
        "No = no blending (the baseline); C_fb = clustering-based blending (the binding model); R_fb = each image "
        "paired with 10 random images; Ca_fb = partner from the same category; WR_fb = random pairs with fixed "
        "delta = 0.6; M_fb = random pairs for half of the training set, standard images for the other half. "
        "The paper ran this ablation on DIGNet; here every column uses the same DeepLabv3 architecture."
    ]
    keys = [(m, "clean", split) for m in spec.TABLE5A_COLUMNS.values()]
    table = Table("table5a", spec.TITLES["table5a"], ["Method"], columns, rows, notes=notes, best_by="row")
    return _finish(table, index, keys)


def _ablation(index: ResultIndex, key: str, rows_spec: dict[str, str], note: str, split: str = "val") -> Table:
    rows = [Row(m, [label], [index.miou(m, "clean", split)]) for m, label in rows_spec.items()]
    keys = [(m, "clean", split) for m in rows_spec]
    return _finish(Table(key, spec.TITLES[key], ["Method"], [Column("mIoU (%)")], rows, notes=[note]), index, keys)


def table5b(index: ResultIndex, split: str = "val") -> Table:
    return _ablation(index, "table5b", spec.TABLE5B_ROWS, "w/o DN = binding after stage 1 only; w/ DN = after stage 2 (denoising, Eq. 4).", split)


def table5c(index: ResultIndex, split: str = "val") -> Table:
    return _ablation(index, "table5c", spec.TABLE5C_ROWS, "w/o FBH = predictions from the dominant branch S_t; w/ FBH = from S_fb.", split)


def table11(index: ResultIndex, split: str = "val") -> Table:
    """IJCV Table 11: SegMix stage 1 with the pairs over the max unique categories not blended (max = 2, 3,
    4, inf) or blended with delta 0.9 (inf + gamma-thres); rows whose model has no result show n/a."""
    rows = [Row(m, [label], [index.miou(m, "clean", split)]) for m, label in spec.TABLE11_ROWS.items()]
    keys = [(m, "clean", split) for m in spec.TABLE11_ROWS]
    paper = ", ".join(f"{spec.TABLE11_ROWS[m]} {v:.1f}" for m, v in spec.TABLE11_PAPER.items())
    notes = [
        "max = G: pairs whose two images hold more than G unique foreground categories in all are not blended "
        "(`--cm-over-limit skip --gamma G`; inf: `--cm-over-limit none`); inf + gamma-thres: they are blended with "
        "delta = 0.9 (the default, the zoo's segmix-no-denoise). Stage 1 only. "
        f"The paper (VOC 2012 val, ResNet-101): {paper}."
    ]
    absent = [m for m in spec.TABLE11_ROWS if m not in set(index.models)]
    if absent:
        notes.append(f"Not evaluated: {', '.join(absent)}.")
    return _finish(Table("table11", spec.TITLES["table11"], ["Max unique categories"], [Column("mIoU (%)")], rows, notes=notes),
                   index, keys)


def extra_all_models(index: ResultIndex, split: str = "val") -> Table:
    """Table 4's columns for every evaluated model (the ablations too)."""
    known = [m for m in spec.METHOD_LABELS if any(k[0] == m for k in index.records)]
    others = [m for m in index.models if m not in spec.METHOD_LABELS]
    return table4(index, split, tuple(known + others) or spec.MAIN_METHODS, key="extra_all")


def extra_ooc(index: ResultIndex) -> Table:
    """mIoU on the out-of-context split (SynthVOC's ``ooc``, which has ground truth) beside val."""
    with_ooc = [m for m in index.models if index.get(m, "clean", "ooc")]
    models = [m for m in spec.METHOD_LABELS if m in spec.OOC_METHODS or m in with_ooc]
    models += [m for m in with_ooc if m not in models]
    rows = [Row(m, [_label(m)], [index.miou(m, "clean", "val"), index.miou(m, "clean", "ooc")]) for m in models]
    keys = [(m, "clean", s) for m in models for s in ("val", "ooc")]
    notes = [
        "ooc = scenes whose class pairs never co-occur in the training split (SynthVOC has ground truth for them, "
        "so this is the quantitative counterpart of the paper's Figure 5; real VOC has no such split). No perturbation."
    ]
    return _finish(Table("extra_ooc", spec.TITLES["extra_ooc"], ["Method"], [Column("val"), Column("ooc")], rows, notes=notes), index, keys)


def _model_order(models) -> list[str]:
    known = [m for m in spec.METHOD_LABELS if m in models]
    return known + sorted(m for m in models if m not in spec.METHOD_LABELS)


def all_inputs(index: ResultIndex) -> Table:
    """Every evaluated model (rows, per split) under clean and every evaluated perturbation (columns),
    whatever its name or role: nothing evaluated is left out of the report."""
    from ..evaluation.engine import shipped_order

    perts = ["clean", *shipped_order(index.perturbations)]
    splits = sorted(index.splits, key=lambda s: (s != "val", s))
    rows, keys = [], []
    for split in splits:
        for m in _model_order({k[0] for k in index.records if k[2] == split}):
            cells = [index.miou(m, p, split) if index.get(m, p, split) else Cell(None) for p in perts]
            rows.append(Row(f"{split}/{m}", [split, _label(m)], cells, block=split))
            keys += [(m, p, split) for p in perts if index.get(m, p, split)]
    notes = ["Full split. Columns are the evaluated inputs by name (n/a: not evaluated for that model); Table 4 "
             "shows those whose recorded role matches one of its columns."]
    columns = [Column(p) for p in perts]
    return _finish(Table("all_inputs", spec.TITLES["all_inputs"], ["Split", "Method"], columns, rows, notes=notes), index, keys)


def _attack_columns(index: ResultIndex, split: str = "val", worst_only: bool = False) -> list[tuple[str, Column]]:
    """(result name, column) for every attack result (group: attack name, label: eps) and worst case
    (group "Worst case"); ``worst_only``: the worst cases when there are any, else every attack."""
    found = index.attack_inputs(split)
    if worst_only and any(a == "worst" for _, a, _ in found):
        found = [f for f in found if f[1] == "worst"]
    seen: dict[tuple[str, float], int] = {}
    for _, attack, eps in found:
        seen[(attack, eps)] = seen.get((attack, eps), 0) + 1
    out = []
    for name, attack, eps in found:
        group = "Worst case" if attack == "worst" else attack
        label = f"eps {eps:g}" + (f" ({name})" if seen[(attack, eps)] > 1 else "")
        out.append((name, Column(label, group, flat=f"{group} {label}")))
    return out


def beyond(index: ResultIndex, split: str | None = None) -> Table:
    """Per method: clean, each universal perturbation, each per-image attack at each eps and the
    per-image worst case over the attacks at each eps (full split of ``split``, default: the split
    with attack results, val first)."""
    split = split or index.attack_split() or "val"
    attack_cols = _attack_columns(index, split)
    perts = [("clean", Column("Clean"))] + [(p, Column(p, "Universal")) for p in _shipped(index.perturbations)] + attack_cols
    attacked = {k[0] for k in index.records if k[2] == split and k[1] in {n for n, _ in attack_cols}}
    models = _model_order(attacked)
    rows = [Row(m, [_label(m)], [index.miou(m, p, split) for p, _ in perts]) for m in models]
    notes = [f"Full {split} split. Universal: the perturbations of Table 4 and any other evaluated one (one perturbation for "
             "every image); per-image attacks: white-box l-inf attacks on each model itself, eps in 0-255 pixel units "
             "(steps and every parameter in the result files); Worst case: per image, the attack that hurts most "
             "(mIoU: SEA's greedy selection over per-image intersections and unions; a lower bound on robustness "
             "only as good as the attacks run)."]
    keys = [(m, p, split) for m in models for p, _ in perts]
    return _finish(Table("beyond", spec.TITLES["beyond"], ["Method"], [c for _, c in perts], rows, notes=notes), index, keys)


def beyond_subsets(index: ResultIndex, split: str | None = None) -> Table:
    """The same on the paper's subsets (Table 2's): rows = method x subset; columns = clean and the
    worst case at each eps (each attack at each eps when no worst case was computed)."""
    split = split or index.attack_split() or "val"
    attack_cols = _attack_columns(index, split, worst_only=True)
    perts = [("clean", Column("Clean"))] + attack_cols
    attacked = {k[0] for k in index.records if k[2] == split and k[1] in {n for n, _ in attack_cols}}
    models = _model_order(attacked)
    rows = []
    for m in models:
        rec = index.get(m, attack_cols[0][0], split) if attack_cols else None
        recorded = set((rec or {}).get("subsets") or {})
        for subset in spec.ATTACK_SUBSETS:
            if subset not in recorded:
                continue
            cells = [index.miou(m, p, split, subset) for p, _ in perts]
            label = "full split" if subset == "all" else spec.TABLE2_COLUMNS.get(subset, ("", subset))[1]
            n = cells[0].n_images if cells[0].n_images is not None else next((c.n_images for c in cells if c.n_images), None)
            rows.append(Row(f"{m}/{subset}", [_label(m), f"{label} (n={'?' if n is None else n})"], cells, block=m))
    notes = ["Are occluded or multi-object scenes more fragile? mIoU on each of Table 2's subsets (1-Occ / All-Occ: "
             "at least one / every object occluded; k-Obj: exactly k instances; k-Uniq: exactly k foreground classes), "
             "clean and under the per-image worst case (the greedy restricted to the subset's images). Bold: the "
             "subset with the highest mIoU of a column within a method's block."]
    keys = [(m, p, split) for m in models for p, _ in perts]
    table = Table("beyond_subsets", spec.TITLES["beyond_subsets"], ["Method", "Subset"], [c for _, c in perts], rows,
                  notes=notes)
    return _finish(table, index, keys)


def _shipped(names) -> list[str]:
    from ..evaluation.engine import shipped_order

    return shipped_order(names)


def attack_tables(index: ResultIndex) -> list[Table]:
    """The attack tables, only when the results hold per-image attack results."""
    return [beyond(index), beyond_subsets(index)] if index.has_attacks() else []


# --- common corruptions ---------------------------------------------------------------------------

def corruption_order(names) -> list[str]:
    """The 15 benchmark corruptions in ImageNet-C's order, then the 4 extra ones, then any other by name."""
    try:
        from ..corruptions import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
        known = [*BENCHMARK_CORRUPTIONS, *EXTRA_CORRUPTIONS]
    except ImportError:
        known = []
    rank = {n: k for k, n in enumerate(known)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def corruption_models(index: ResultIndex, split: str) -> list[str]:
    return _model_order({k[0] for k in index.records if k[2] == split and index.corruption_records(k[0], split)})


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _corruption_summary(index: ResultIndex, model: str, split: str, subset: str = "all",
                        reference: str = spec.CORRUPTION_REFERENCE):
    from ..evaluation import corruption_metrics as cm

    clean = index.miou(model, "clean", split, subset)
    ref = index.corruption_records(reference, split)
    return cm.summarize(index.corruption_records(model, split), clean.value, subset,
                        reference_records=ref if ref else None, reference=reference), clean


def _corruption_protocol_note(index: ResultIndex, model: str, split: str) -> str:
    from ..evaluation.corruption_metrics import corruption_info

    infos = [corruption_info(r) for r in index.corruption_records(model, split)]
    seeds = sorted({int(i.get("seed", 0)) for i in infos if i})
    versions = sorted({str(i.get("version")) for i in infos if i})
    impls: dict[str, list[str]] = {}
    for i in infos:
        if i:
            impls.setdefault(str(i.get("impl")), [])
            if i["name"] not in impls[str(i.get("impl"))]:
                impls[str(i.get("impl"))].append(str(i["name"]))
    impl_text = "; ".join(f"{impl}: {', '.join(corruption_order(n))}" for impl, n in sorted(impls.items()))
    return (f"Corruptions version {', '.join(versions)}, seed {', '.join(map(str, seeds))}; implementation {impl_text}.")


def corruption_table(index: ResultIndex, model: str, split: str | None = None,
                     reference: str = spec.CORRUPTION_REFERENCE) -> Table:
    """One method: mIoU per corruption (rows) and severity (columns), the mean over severities, the
    relative robustness (mean corrupted / clean mIoU) and the corruption degradation CD against
    ``reference`` (Kamann & Rother: sum_s (1 - mIoU) / sum_s (1 - mIoU_ref), in %); a last row holds
    the mean over corruptions per severity, the overall mean, its relative robustness and the mCD."""
    from ..evaluation.corruption_metrics import severities

    split = split or index.corruption_split() or "val"
    summary, clean = _corruption_summary(index, model, split, "all", reference)
    levels = severities(summary.grid)
    columns = [Column(f"s{s}", "Severity", flat=f"severity {s}") for s in levels]
    columns += [Column("Mean"), Column("Rel. rob. (%)"), Column(f"CD vs {reference} (%)")]
    what = f"model '{model}' on {split}"
    no_ref = None if summary.cd else Missing(what, f"no corruption results for the CD reference model '{reference}'")
    rows = []
    for name in corruption_order(summary.grid):
        lv = summary.grid[name]
        cells = [Cell(lv.get(s)) if lv.get(s) is not None else
                 Cell(None, None, Missing(what, "no corruption result (or no mIoU) for", f"{name} severity {s}"))
                 for s in levels]
        cd = summary.cd.get(name) if summary.cd else None
        cd_cell = Cell(_pct(cd)) if cd is not None else Cell(None, None, no_ref or Missing(
            what, "CD undefined (the reference lacks a severity or a number) for", name))
        rows.append(Row(name, [name], [*cells, Cell(summary.per_corruption.get(name)),
                                        Cell(_pct(summary.relative_per_corruption.get(name))), cd_cell], block=name))
    mcd_cell = Cell(_pct(summary.mcd)) if summary.mcd is not None else Cell(None, None, no_ref or Missing(
        what, "mCD undefined: a corruption's CD is undefined", ""))
    rows.append(Row("mean", ["Mean"], [*(Cell(summary.per_severity.get(s)) for s in levels), Cell(summary.mean),
                                       Cell(_pct(summary.relative)), mcd_cell], block="mean"))
    notes = [f"Clean mIoU {'n/a' if clean.value is None else f'{clean.value:.1f}'}. Each corruption computed from the "
             "clean image, deterministic per (image id, corruption, severity, seed). Rel. rob. = mean corrupted mIoU / "
             f"clean mIoU. CD_c = sum_s (1 - mIoU_c,s) / sum_s (1 - mIoU_c,s of '{reference}') (Kamann & Rother; "
             "100 = as robust as the reference, lower is better); last row: mean over corruptions per severity, "
             "the overall mean and mCD (mean of CD_c).", _corruption_protocol_note(index, model, split)]
    keys = [(model, r["perturbation"]["name"], split) for r in index.corruption_records(model, split)]
    title = spec.TITLES["corruption"].format(label=_label(model))
    return _finish(Table(f"corruption_{model}", title, ["Corruption"], columns, rows, notes=notes), index, keys)


def corruption_subsets(index: ResultIndex, split: str | None = None, reference: str = spec.CORRUPTION_REFERENCE) -> Table:
    """Every method with corruption results x every subset its results hold: clean mIoU, mean corrupted
    mIoU, relative robustness and mCD against ``reference`` on that subset."""
    from ..evaluation.corruption_metrics import subsets_of

    split = split or index.corruption_split() or "val"
    models = corruption_models(index, split)
    rows, keys = [], []
    for m in models:
        recs = index.corruption_records(m, split)
        have = subsets_of(recs)
        for subset in [s for s in spec.ATTACK_SUBSETS if s in have] + [s for s in have if s not in spec.ATTACK_SUBSETS]:
            summary, clean = _corruption_summary(index, m, split, subset, reference)
            label = "full split" if subset == "all" else spec.TABLE2_COLUMNS.get(subset, ("", subset))[1]
            mcd = Cell(_pct(summary.mcd)) if summary.mcd is not None else Cell(None, None, Missing(
                f"model '{m}' on {split}", f"mCD vs '{reference}' undefined on subset", subset))
            rows.append(Row(f"{m}/{subset}", [_label(m), f"{label} (n={clean.n_images if clean.n_images is not None else '?'})"],
                            [clean, Cell(summary.mean), Cell(_pct(summary.relative)), mcd], block=f"{m}/{subset}"))
        keys += [(m, r["perturbation"]["name"], split) for r in recs]
    notes = ["Mean corrupted mIoU: over every corruption and severity evaluated; Rel. rob. = mean corrupted / clean mIoU; "
             f"mCD: mean over corruptions of CD_c against '{reference}' on the same subset (lower is better)."]
    columns = [Column("Clean"), Column("Mean corrupted"), Column("Rel. rob. (%)"), Column(f"mCD vs {reference} (%)")]
    return _finish(Table("corruption_subsets", spec.TITLES["corruption_subsets"], ["Method", "Subset"], columns, rows,
                         notes=notes), index, keys)


def corruption_tables(index: ResultIndex) -> list[Table]:
    """One corruption table per method and the subsets table, only when the results hold corruption results."""
    if not index.has_corruptions():
        return []
    split = index.corruption_split()
    return [corruption_table(index, m, split) for m in corruption_models(index, split)] + [corruption_subsets(index, split)]


TABLES: dict[str, Callable[[ResultIndex], Table]] = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5a": table5a,
    "table5b": table5b,
    "table5c": table5c,
    "table11": table11,
    "extra_all": extra_all_models,
    "extra_ooc": extra_ooc,
    "all_inputs": all_inputs,
}


def build_tables(index: ResultIndex) -> list[Table]:
    return [fn(index) for fn in TABLES.values()] + attack_tables(index) + corruption_tables(index)


# --- formats ------------------------------------------------------------------------------------

def _text_cells(table: Table, bold: Callable[[str], str] | None = None) -> list[list[str]]:
    best = table.best() if bold else set()
    out = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, cell in enumerate(row.cells):
            text = format_cell(cell, row.kind)
            cells.append(bold(text) if (i, j) in best else text)
        out.append(row.stub + cells)
    return out


def to_markdown(table: Table) -> str:
    header = table.stub_header + [c.flat_label for c in table.columns]
    body = _text_cells(table, bold=lambda s: f"**{s}**")
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    n_stub = len(table.stub_header)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if k < n_stub else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if k < n_stub else ("-" * (w + 1) + ":") for k, w in enumerate(widths)) + "|"
    lines = [f"## {table.title}", "", line(header), rule, *(line(r) for r in body), "", table.caption()]
    if table.missing:
        lines += ["", "Missing inputs:", *(f"- {m}" for m in table.missing)]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    n_stub, n_col = len(table.stub_header), len(table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * n_stub + "r" * n_col + "}",
        r"\hline",
    ]
    if any(c.group for c in table.columns):
        spans, start = [], 0
        while start < n_col:
            group = table.columns[start].group
            end = start
            while end + 1 < n_col and table.columns[end + 1].group == group:
                end += 1
            width = end - start + 1
            spans.append(latex_escape(group) if width == 1 else rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
            start = end + 1
        lines.append(" & ".join([""] * n_stub + spans) + r" \\")
    header = [latex_escape(h) for h in table.stub_header] + [c.latex or latex_escape(c.label) for c in table.columns]
    lines += [" & ".join(header) + r" \\", r"\hline"]
    for k, cells in enumerate(_text_cells(table, bold=lambda s: rf"\textbf{{{s}}}")):
        row = table.rows[k]
        if k > 0 and row.block != table.rows[k - 1].block:
            lines.append(r"\hline")
        escaped = [latex_escape(c) for c in cells[:n_stub]] + [
            c.replace(spec.WHITE_BOX_MARK, r"$^\dagger$").replace(PLUS_MINUS, r"$\pm$") for c in cells[n_stub:]]
        lines.append(" & ".join(escaped) + r" \\")
        if row.kind == "count":
            lines.append(r"\hline")
    caption = table.title.split(": ", 1)[-1] + ". " + table.caption()
    if table.missing:
        caption += " Missing inputs: " + "; ".join(table.missing) + "."
    lines += [
        r"\hline",
        r"\end{tabular}",
        r"\caption{" + latex_escape(caption).replace(PLUS_MINUS, r"$\pm$") + "}",
        r"\label{tab:" + table.key + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_frame(table: Table) -> pd.DataFrame:
    """One row per table row: the row key, the label columns, then the numbers as shown (one decimal
    for scores, integers for counts, empty when missing)."""
    records = []
    for row in table.rows:
        rec = {"key": row.key}
        rec.update(dict(zip(table.stub_header, row.stub)))
        for col, cell in zip(table.columns, row.cells):
            rec[col.flat_label] = "" if cell.value is None else format_cell(cell, row.kind, marks=False)
        records.append(rec)
    columns = ["key", *table.stub_header, *(c.flat_label for c in table.columns)]
    return pd.DataFrame.from_records(records, columns=columns)


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    to_frame(table).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


FORMATS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """``out_dir/<key>.md``, ``.csv`` and ``.tex``, written atomically."""
    out_dir = Path(out_dir)
    return [atomic_write_text(out_dir / f"{table.key}.{ext}", fmt(table)) for ext, fmt in FORMATS.items()]
