"""The paper's Tables 1-5 (and two extra tables) from a results store, in Markdown, CSV and LaTeX.

Each ``table*`` function is a pure function of a :class:`ResultIndex`; the rows and columns come
from :mod:`.spec`. A number whose input is missing shows ``n/a`` and the table lists what is missing
(model, perturbation or subset) instead of failing. Cells are mIoU/IoU in percent with one decimal.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..constants import VOC_CLASSES
from ..data.subsets import subset_class
from ..io import atomic_write_text
from . import spec
from .inputs import Cell, ResultIndex, group_missing

MISSING = "n/a"


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


def format_cell(cell: Cell, kind: str) -> str:
    if cell.value is None:
        return MISSING
    return str(int(cell.value)) if kind == "count" else f"{cell.value:.1f}"


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
    rows, keys = [], []
    for split in spec.TABLE1_SPLITS:
        models = spec.MAIN_METHODS if split == "val" else [m for m in spec.MAIN_METHODS if index.get(m, "clean", split)]
        for model in models:
            rows.append(Row(f"{split}/{model}", [split.capitalize(), _label(model)], [index.miou(model, "clean", split)], block=split))
            keys.append((model, "clean", split))
    notes = ["Full split, no perturbation."]
    if not index.has_split("test"):
        notes.append("No test-split results: the test block is left out.")
    return _finish(Table("table1", spec.TITLES["table1"], ["Split", "Method"], [Column("mIoU (%)")], rows, notes=notes), index, keys)


def table2(index: ResultIndex, split: str = "val") -> Table:
    subsets = list(spec.TABLE2_COLUMNS)
    columns = [Column(label, group) for group, label in spec.TABLE2_COLUMNS.values()]
    columns = [Column(c.label, c.group, flat=c.label) for c in columns]
    rows = [_count_row(index, subsets, spec.MAIN_METHODS, split)]
    for model in spec.MAIN_METHODS:
        rows.append(Row(model, [_label(model)], [index.miou(model, "clean", split, s) for s in subsets]))
    notes = [
        "Occlusion: at least one (1-Occ) / every (All-Occ) object occluded; Number of Objects: exactly k instances; "
        "Number of Unique Objects: exactly k foreground classes. No perturbation."
    ]
    keys = [(m, "clean", split) for m in spec.MAIN_METHODS]
    return _finish(Table("table2", spec.TITLES["table2"], ["Method"], columns, rows, notes=notes), index, keys)


def table3(index: ResultIndex, split: str = "val") -> Table:
    subsets, columns = [], []
    for prefix, group in spec.TABLE3_GROUPS.items():
        for cls in spec.TABLE3_CLASSES:
            subsets.append(f"{prefix}-{cls}")
            label = spec.TABLE3_CLASS_LABELS[cls]
            columns.append(Column(label, group, flat=f"{'with person' if prefix == 'person' else 'alone'}: {label}"))
    rows = [_count_row(index, subsets, spec.MAIN_METHODS, split)]
    for model in spec.MAIN_METHODS:
        cells = [index.class_iou(model, VOC_CLASSES[subset_class(s)], s, "clean", split) for s in subsets]
        rows.append(Row(model, [_label(model)], cells))
    notes = [
        "Each cell is the IoU of class c on its subset: images whose foreground classes are exactly {c, person} "
        "(co-occur with person) or exactly {c} (exclusive). No perturbation."
    ]
    keys = [(m, "clean", split) for m in spec.MAIN_METHODS]
    return _finish(Table("table3", spec.TITLES["table3"], ["Method"], columns, rows, notes=notes), index, keys)


def _perturbation_columns() -> list[Column]:
    return [Column(label, group, flat=" ".join(p for p in (group, label) if p)) for group, label in spec.TABLE4_COLUMNS.values()]


def table4(index: ResultIndex, split: str = "val", models: tuple[str, ...] = spec.MAIN_METHODS, key: str = "table4") -> Table:
    perts = list(spec.TABLE4_COLUMNS)
    rows = [Row(m, [_label(m)], [index.miou(m, p, split) for p in perts]) for m in models]
    notes = [
        "Columns: the shipped perturbations " + ", ".join(f"{p} = {' '.join(x for x in spec.TABLE4_COLUMNS[p] if x)}" for p in perts[1:])
        + "; UAP is a black-box transfer from ImageNet-style classifiers, GD-UAP a grey-box attack on the baseline."
    ]
    keys = [(m, p, split) for m in models for p in perts]
    title = spec.TITLES["table4"] if key == "table4" else spec.TITLES.get(key, key)
    return _finish(Table(key, title, ["Method"], _perturbation_columns(), rows, notes=notes), index, keys)


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


TABLES: dict[str, Callable[[ResultIndex], Table]] = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5a": table5a,
    "table5b": table5b,
    "table5c": table5c,
    "extra_all": extra_all_models,
    "extra_ooc": extra_ooc,
}


def build_tables(index: ResultIndex) -> list[Table]:
    return [fn(index) for fn in TABLES.values()]


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
        escaped = [latex_escape(c) for c in cells[:n_stub]] + cells[n_stub:]
        lines.append(" & ".join(escaped) + r" \\")
        if row.kind == "count":
            lines.append(r"\hline")
    caption = table.title.split(": ", 1)[-1] + ". " + table.caption()
    if table.missing:
        caption += " Missing inputs: " + "; ".join(table.missing) + "."
    lines += [
        r"\hline",
        r"\end{tabular}",
        r"\caption{" + latex_escape(caption) + "}",
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
            rec[col.flat_label] = "" if cell.value is None else format_cell(cell, row.kind)
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
