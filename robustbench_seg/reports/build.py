"""``build_report``: every table and figure of the paper from a results store, plus index.html.

Layout of ``out_dir``::

    index.html                  every table and figure on one static page
    report.json                 what was written, what was missing, which data and models were used
    tables/<key>.md|.csv|.tex   table1, table2, table3, table4, table5a, table5b, table5c, extra_all, extra_ooc
    figures/<stem>.png|.pdf     figure4_cooccurrence, robustness, figure3_qualitative, figure5_out_of_context,
                                figure6_occluded, figure2_confidence

Tables and the results-only figures need nothing but the results. The qualitative figures run the
evaluated models on a few images: the data is ``data_root``, else the folder the results record
(when it exists here), else the embedded default when the results come from it; the models are
zoo models (a zoo folder's ``zoo.json``, sha256-verified: ``models_dir`` names another one, e.g.
a ``rbseg reproduce`` output, else the shipped zoo) or checkpoint files, each used only when its
sha256 equals the one the result records, or modules handed over by a Python caller (``models``).
Nothing named in a results file is ever imported or called: a result recorded for a
``module:function`` model leaves its figures skipped, with the reason.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..data.synth import DEFAULT_PRESET
from ..errors import RbsegError
from ..io import atomic_write_json, atomic_write_text
from . import figures as figs
from . import spec
from .headline import headline
from .html import render_index
from .inputs import ResultIndex, load_result_index
from .tables import Table, build_tables, write_table

DEFAULT_DATASET = f"SynthVOC-{DEFAULT_PRESET}"  # what data.synth.default_dataset() generates
DEFAULT_OUT = "reports-out"  # never the shipped reports/ (rbseg check's expected.json lives there)


def check_report_out(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse to write a report into a folder that already holds files (a previous report, the
    shipped ``reports/``) unless ``overwrite``; then probe that the folder can be written."""
    from ..io import probe_writable
    from ..paths import shipped_reports_dir

    out = Path(out_dir)
    if out.is_file():
        raise RbsegError("is a file, not a report folder", out)
    if out.is_dir() and not overwrite:
        entries = [p for p in out.iterdir() if not p.name.startswith(".rbseg-probe.")]
        if entries:
            shipped = out.resolve() == shipped_reports_dir().resolve()
            what = "is the shipped reports/ folder" if shipped else f"already holds {len(entries)} file(s) or folder(s)"
            raise RbsegError(f"{what}; pass --overwrite to replace the report files in it, or choose another --out", out)
    probe_writable(out, "report folder")
    return out


@dataclass
class ReportSummary:
    out_dir: Path
    tables: list[tuple[Table, list[Path]]]
    figures: list[figs.FigureResult]
    index_html: Path
    protocol: dict[str, list]
    warnings: list[str] = field(default_factory=list)
    data_root: str | None = None
    models: dict[str, dict] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # evaluated input -> why a table leaves it out
    headline: list[str] = field(default_factory=list)  # reports.headline: what the results show, in sentences

    def to_json(self) -> dict[str, Any]:
        rel = lambda p: _rel(p, self.out_dir)  # noqa: E731
        return {
            "schema": "rbseg-report/1",
            "package_version": __version__,
            "protocol": self.protocol,
            "data_root": self.data_root,
            "models": self.models,
            "tables": {t.key: {"title": t.title, "files": [rel(p) for p in files], "complete": t.complete,
                               "missing": t.missing} for t, files in self.tables},
            "figures": {f.key: {"title": f.title, "files": {k: rel(p) for k, p in f.files.items()},
                                "skipped": f.skipped, "missing": f.missing} for f in self.figures},
            "warnings": list(self.warnings),
            "left_out": dict(self.left_out),
            "headline": list(self.headline),
            "index": rel(self.index_html),
        }


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return str(path)


def build_report(
    results_dir: str | Path = "results",
    out_dir: str | Path = DEFAULT_OUT,
    data_root: str | Path | None = None,
    models_dir: str | Path | None = None,
    dataset: str | None = None,
    qualitative: bool = True,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    index: ResultIndex | None = None,
    models: dict[str, Any] | None = None,
) -> ReportSummary:
    """Write every table and figure of the paper (and index.html, report.json) into ``out_dir``.

    ``models``: {result model name: nn.Module} the caller vouches for (e.g. ``module:function``
    models it built itself), used by the qualitative figures when their weights' sha256 matches the
    record. The CLI refuses an ``out_dir`` that holds files (:func:`check_report_out`)."""
    say = log or (lambda msg: None)
    out = Path(out_dir)
    if index is None:
        index = load_result_index(results_dir, dataset=dataset)
    if not index.records:
        raise RbsegError("no rbseg results here (run `rbseg evaluate` first)", results_dir)
    from ..io import probe_writable
    from .tables import table4_inputs

    probe_writable(out, "report folder")
    left_out = table4_inputs(index).left_out
    for name, why in left_out.items():
        msg = f"input '{name}': {why} (it is in the all-inputs table, all_inputs)"
        if msg not in index.warnings:
            index.warnings.append(msg)

    tables = []
    for table in build_tables(index):
        files = write_table(table, out / "tables")
        tables.append((table, files))
        say(f"{table.key}: " + ("complete" if table.complete else f"{len(table.missing)} missing input(s)"))

    fig_dir = out / "figures"
    figures = [figs.figure4(index, fig_dir), figs.robustness_chart(index, fig_dir)]
    if index.has_attacks():  # per-image attack results: the mIoU-vs-eps curves (full split, subsets)
        figures += [figs.attack_eps(index, fig_dir), figs.attack_eps_subsets(index, fig_dir)]
    if index.has_corruptions():  # corruption results: the heatmap and the mean-per-severity curve
        figures += [figs.corruption_heatmap(index, fig_dir), figs.corruption_severity(index, fig_dir)]
    summary_models: dict[str, dict] = {}
    root = None
    if qualitative:
        root, why = resolve_figure_data(index, data_root)
        if root is None:
            figures += [figs.FigureResult(k, spec.FIGURE_TITLES[k], skipped=why) for k in ("figure3", "figure5", "figure6", "figure2")]
        else:
            say(f"qualitative figures on {root}")
            figures += qualitative_figures(index, root, fig_dir, models_dir, device, summary_models, models)
    for f in figures:
        say(f"{f.key}: " + (f"skipped ({f.skipped})" if f.skipped else ", ".join(p.name for p in f.files.values())))

    protocol = index.protocol(index.records)
    lines = headline(index)
    index_html = atomic_write_text(out / "index.html", render_index(tables, figures, out, protocol, index.warnings,
                                                                    str(results_dir), lines))
    summary = ReportSummary(out, tables, figures, index_html, protocol, list(index.warnings),
                            None if root is None else str(root), summary_models, dict(left_out), lines)
    atomic_write_json(out / "report.json", summary.to_json())
    return summary


# --- the qualitative figures: data and models ------------------------------------------------------

def resolve_figure_data(index: ResultIndex, data_root: str | Path | None) -> tuple[Path | None, str | None]:
    """(VOC root for the qualitative figures, or None and why)."""
    from ..data import voc

    if data_root is not None:
        return voc.resolve_root(data_root), None
    recorded = [rec.get("protocol", {}).get("data_root") for rec in index.records.values()]
    for path in dict.fromkeys(p for p in recorded if p):
        if (Path(path) / "JPEGImages").is_dir():
            return Path(path), None
    datasets = index.protocol(index.records).get("dataset", [])
    if datasets == [DEFAULT_DATASET]:
        from ..data.synth import default_dataset

        return default_dataset(), None
    where = ", ".join(dict.fromkeys(p for p in recorded if p)) or "unknown"
    return None, (f"the results' data ({', '.join(map(str, datasets)) or 'unknown'} at {where}) is not on this machine; "
                  "pass --data ROOT")


def _zoo_checkpoint(models_dir: Path, name: str) -> Path | None:
    """The checkpoint of zoo entry ``name`` in a zoo folder (``zoo.json``), sha256-verified; None if absent."""
    from ..models.zoo import zoo_checkpoint

    try:
        return zoo_checkpoint(name, models_dir)[0]
    except RbsegError:
        return None


def _shipped_zoo_checkpoint(name: str) -> Path | None:
    """The shipped zoo's checkpoint of ``name`` (sha256-verified against zoo.json); None if not a zoo name."""
    from ..models.zoo import load_zoo, zoo_checkpoint

    try:
        if name not in load_zoo():
            return None
        return zoo_checkpoint(name)[0]
    except RbsegError:
        return None


def figure_model_candidates(name: str, recorded: dict, models_dir: str | Path | None) -> tuple[list[Path], list[str]]:
    """(checkpoint files to try, why others are not tried) for a result's model. Only files: a zoo
    entry (sha256-verified by the zoo) or the recorded checkpoint path when it exists here. A
    ``module:function`` recorded in the file is never imported."""
    files: list[Path] = []
    notes: list[str] = []
    if models_dir is not None:
        ckpt = _zoo_checkpoint(Path(models_dir), name)
        if ckpt is not None:
            files.append(ckpt)
    shipped = _shipped_zoo_checkpoint(name)
    if shipped is not None:
        files.append(shipped)
    spec_text = recorded.get("spec")
    if isinstance(spec_text, str) and spec_text:
        if recorded.get("source") == "zoo" or spec_text == name:
            shipped = _shipped_zoo_checkpoint(spec_text)
            if shipped is not None:
                files.append(shipped)
        elif Path(spec_text).expanduser().is_file():
            files.append(Path(spec_text).expanduser())
        elif recorded.get("source") == "module" or ":" in spec_text:
            notes.append(f"recorded as '{spec_text}' (module:function): rbseg never imports code named in a results "
                         "file; pass the model to build_report(models=...) from Python")
        else:
            notes.append(f"checkpoint '{spec_text}' not found here")
    return list(dict.fromkeys(files)), notes


def load_figure_models(
    index: ResultIndex, names: list[str], models_dir: str | Path | None, device: str, split: str = "val",
    given: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
    """({name: model in eval mode}, {name: provenance}, problems) for the models the results record.

    Every model used has the sha256 the result records: zoo and checkpoint files by file hash,
    ``given`` modules by the hash of their weights."""
    from ..evaluation.engine import resolve_device, resolve_model

    dev = resolve_device(device)
    models, info, problems = {}, {}, []
    for name in names:
        rec = index.get(name, "clean", split) or next((r for k, r in index.records.items() if k[0] == name), None)
        if rec is None:
            problems.append(f"model '{name}': no result")
            continue
        recorded = rec.get("model", {})
        want = recorded.get("sha256")
        errors = []
        if given and name in given:
            model, mrec = resolve_model(given[name], dev, model_name=name)
            if want and mrec.get("sha256") != want:
                errors.append("the model given for it: sha256 of its weights differs from the evaluated model's")
            else:
                models[name], info[name] = model, {"spec": "given by the caller", "sha256": mrec.get("sha256")}
                continue
        files, notes = figure_model_candidates(name, recorded, models_dir)
        errors += notes
        for path in files:
            try:
                model, mrec = resolve_model(str(path), dev, model_name=name)
            except RbsegError as exc:
                errors.append(_short(str(exc)))
                continue
            if want and mrec.get("sha256") != want:
                errors.append(f"{path}: sha256 differs from the evaluated model's")
                continue
            models[name] = model
            info[name] = {"spec": str(path), "sha256": mrec.get("sha256")}
            break
        else:
            if name not in models:
                problems.append(f"model '{name}': cannot load the evaluated model ({'; '.join(errors) or 'no zoo entry or checkpoint file'})")
    return models, info, problems


def _short(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def qualitative_figures(
    index: ResultIndex, root: Path, fig_dir: Path, models_dir: str | Path | None, device: str,
    provenance: dict[str, dict] | None = None, given: dict[str, Any] | None = None,
) -> list[figs.FigureResult]:
    """Figures 3, 5, 6 (prediction grids) and Figure 2 (binding confidence maps)."""
    from ..data import voc

    wanted = list(dict.fromkeys([*spec.MAIN_METHODS, spec.CONFIDENCE_MODEL]))
    models, info, problems = load_figure_models(index, wanted, models_dir, device, given=given)
    if provenance is not None:
        provenance.update(info)
    grid_models = {m: models[m] for m in spec.MAIN_METHODS if m in models}
    results = []

    def grid(key: str, stem: str, split: str, select: Callable[[], list[str]], caption: str) -> figs.FigureResult:
        res = figs.FigureResult(key, spec.FIGURE_TITLES[key], caption=caption, missing=list(problems))
        if not grid_models:
            res.skipped = "no model could be loaded: " + "; ".join(problems)
            return res
        try:
            ids = select()
            if not ids:
                res.skipped = f"no image of the {split} split qualifies"
                return res
            res.files = figs.qualitative_grid(grid_models, root, split, ids, fig_dir, stem, device)
            res.caption += f" Images: {', '.join(ids)}."
        except (RbsegError, RuntimeError, ValueError) as exc:
            res.skipped = str(exc)
        return res

    results.append(grid("figure3", "figure3_qualitative", "val",
                        lambda: figs.complex_scene_ids(root, "val", spec.FIGURE3_IMAGES),
                        "The val images with the most distinct classes; columns: image, ground truth, each method's "
                        "prediction (VOC palette)."))
    if voc.split_file(root, "ooc").is_file():
        results.append(grid("figure5", "figure5_out_of_context", "ooc",
                            lambda: figs.spread_ids(root, "ooc", spec.FIGURE5_IMAGES),
                            "Out-of-context scenes (class pairs that never co-occur in training), spread over the "
                            "ooc split."))
    else:
        results.append(figs.FigureResult("figure5", spec.FIGURE_TITLES["figure5"],
                                         skipped="the dataset has no ooc split (real VOC has none; the paper used the "
                                                 "Out-of-Context and UnRel datasets, without ground truth)"))
    results.append(grid("figure6", "figure6_occluded", "val",
                        lambda: figs.occluded_ids(root, "val", spec.FIGURE6_IMAGES),
                        "The val images (with at least two objects) whose objects are most occluded (Annotations "
                        "XML flags)."))

    conf = figs.FigureResult("figure2", spec.FIGURE_TITLES["figure2"], caption=(
        f"Model '{spec.CONFIDENCE_MODEL}'. Max softmax probability of each output, jet colormap (red high, blue "
        f"low). Row 1: a val image; row 2: its blend (Eq. 1, delta = {figs.FIGURE2_DELTA:g}) with a second val image "
        "as the phantom."))
    model = models.get(spec.CONFIDENCE_MODEL)
    if model is None:
        conf.skipped = f"model '{spec.CONFIDENCE_MODEL}' could not be loaded: " + "; ".join(problems)
    else:
        try:
            ids = figs.complex_scene_ids(root, "val", spec.FIGURE2_IMAGES)
            conf.files = figs.confidence_figure(model, root, "val", ids, fig_dir, device=device)
            conf.caption += f" Images: {', '.join(ids)}."
        except (RbsegError, RuntimeError, ValueError) as exc:
            conf.skipped = str(exc)
    results.append(conf)
    return results
