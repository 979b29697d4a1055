"""``reports/index.html``: one static page with every table and figure (no external assets).

Tables are embedded as HTML; figures are referenced by relative path (``figures/*.png``), with
links to the PDF and to each table's Markdown, CSV and LaTeX files.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from .. import __version__
from .figures import FigureResult
from .tables import Table, format_cell, protocol_text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e3e3e3; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.count td { color: #555; font-style: italic; }
.note { background: #fff7e0; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
.headline { background: #eef6ff; border-left: 4px solid #3b82f6; padding: 0.6em 1em 0.6em 2.2em; margin: 0.5em 0; }
.caption { font-size: 0.85em; color: #444; max-width: 60em; }
.missing { font-size: 0.85em; color: #a33; }
.files { font-size: 0.8em; } img { max-width: 100%; border: 1px solid #eee; }
nav a { margin-right: 0.8em; font-size: 0.9em; }
"""


def table_html(table: Table) -> str:
    n_stub = len(table.stub_header)
    parts = ["<table>", "<thead>"]
    if any(c.group for c in table.columns):
        cells = [f'<th colspan="{n_stub}"></th>'] if n_stub else []
        k = 0
        while k < len(table.columns):
            group, span = table.columns[k].group, 1
            while k + span < len(table.columns) and table.columns[k + span].group == group:
                span += 1
            cells.append(f'<th colspan="{span}">{escape(group)}</th>')
            k += span
        parts.append("<tr>" + "".join(cells) + "</tr>")
    header = [escape(h) for h in table.stub_header] + [escape(c.label) for c in table.columns]
    parts += ["<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>", "</thead>", "<tbody>"]
    best = table.best()
    for i, row in enumerate(table.rows):
        cells = [f"<td>{escape(s)}</td>" for s in row.stub]
        for j, cell in enumerate(row.cells):
            text = escape(format_cell(cell, row.kind))
            if (i, j) in best:
                text = f"<b>{text}</b>"
            title = f' title="{escape(str(cell.missing))}"' if cell.missing else ""
            cells.append(f'<td class="num"{title}>{text}</td>')
        cls = ' class="count"' if row.kind == "count" else ""
        parts.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    parts += ["</tbody>", "</table>"]
    return "\n".join(parts)


def _section_table(table: Table, files: Sequence[Path], base: Path) -> str:
    links = " · ".join(f'<a href="{escape(_rel(p, base))}">{escape(p.suffix[1:])}</a>' for p in files)
    out = [f'<h2 id="{table.key}">{escape(table.title)}</h2>', table_html(table),
           f'<p class="caption">{escape(table.caption())}</p>']
    if table.missing:
        out.append('<div class="missing">Missing inputs:<ul>' + "".join(f"<li>{escape(m)}</li>" for m in table.missing) + "</ul></div>")
    out.append(f'<p class="files">Files: {links}</p>')
    return "\n".join(out)


def _section_figure(fig: FigureResult, base: Path) -> str:
    out = [f'<h2 id="{fig.key}">{escape(fig.title)}</h2>']
    if fig.skipped:
        out.append(f'<p class="missing">Not drawn: {escape(fig.skipped)}</p>')
        return "\n".join(out)
    png = fig.files.get("png")
    if png is not None:
        out.append(f'<img src="{escape(_rel(png, base))}" alt="{escape(fig.title)}">')
    if fig.caption:
        out.append(f'<p class="caption">{escape(fig.caption)}</p>')
    if fig.missing:
        out.append('<div class="missing">Missing inputs:<ul>' + "".join(f"<li>{escape(m)}</li>" for m in fig.missing) + "</ul></div>")
    links = " · ".join(f'<a href="{escape(_rel(p, base))}">{escape(fmt)}</a>' for fmt, p in fig.files.items())
    out.append(f'<p class="files">Files: {links}</p>')
    return "\n".join(out)


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def dataset_note(datasets: Sequence[str]) -> str:
    synthetic = [d for d in datasets if str(d).startswith("SynthVOC")]
    if datasets and len(synthetic) == len(datasets):
        return (f"These numbers come from the synthetic benchmark ({', '.join(synthetic)}): SynthVOC, the suite's "
                "generated VOC-format dataset, with small CPU-trained models. They test the pipeline and show the "
                "methods' relative behaviour on synthetic data; they are not PASCAL VOC 2012 numbers and are not "
                "comparable with the paper's. To reproduce the paper on real VOC: "
                "rbseg reproduce --preset paper --data /path/to/VOC2012 (a GPU is needed).")
    if synthetic:
        return (f"Mixed datasets: {', '.join(map(str, datasets))}. Numbers from SynthVOC (the suite's synthetic "
                "benchmark) are not comparable with PASCAL VOC numbers or with the paper's.")
    return (f"Dataset: {', '.join(map(str, datasets)) or 'unknown'}. The numbers the suite ships come from the "
            "synthetic benchmark (SynthVOC); these come from the dataset named here.")


def render_index(
    tables: Sequence[tuple[Table, Sequence[Path]]],
    figures: Sequence[FigureResult],
    out_dir: Path,
    protocol: dict[str, list],
    warnings: Sequence[str] = (),
    results_dir: str = "",
    headline: Sequence[str] = (),
) -> str:
    nav = " ".join(f'<a href="#{t.key}">{escape(t.key)}</a>' for t, _ in tables)
    nav += " " + " ".join(f'<a href="#{f.key}">{escape(f.key)}</a>' for f in figures)
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>rbseg report: feature binding (BMVC 2020) reproduction</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>rbseg report: Feature Binding with Category-Dependant MixUp (Islam et al., BMVC 2020)</h1>",
        f'<p class="note">{escape(dataset_note(protocol.get("dataset", [])))}</p>',
        *([f'<ul class="headline">{"".join(f"<li>{escape(line)}</li>" for line in headline)}</ul>'] if headline else []),
        f"<p>{escape(protocol_text(protocol))} Cells are mIoU (or class IoU) in percent with one decimal; bold marks "
        "the best value of a column (of the row in Table 5 a); n/a marks a missing input, listed under its table. "
        f"Generated by rbseg {escape(__version__)} from <code>{escape(results_dir)}</code>.</p>",
        f"<nav>{nav}</nav>",
    ]
    if warnings:
        body.append('<div class="missing">Warnings:<ul>' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul></div>")
    body += [_section_table(t, files, out_dir) for t, files in tables]
    body += [_section_figure(f, out_dir) for f in figures]
    body.append("</body></html>")
    return "\n".join(body) + "\n"
