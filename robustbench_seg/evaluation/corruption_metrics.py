"""Common-corruption robustness metrics from stored results (Kamann & Rother, CVPR 2020 / IJCV 2021).

Pure functions of the mIoUs the results store records (each computed by ``metric.metrics_from_confusion``,
the only mIoU in the code base); nothing here counts pixels again. mIoUs are in percent.

- ``miou_grid``: mIoU per corruption and severity (``{corruption: {severity: mIoU}}``), on any subset;
- ``mean_per_severity``: the mean over corruptions at each severity;
- ``relative_robustness``: corrupted mIoU / clean mIoU (a ratio; 1 = no loss);
- ``corruption_degradation``: CD_c = sum_s (1 - mIoU_{c,s}) / sum_s (1 - mIoU^{ref}_{c,s}) with the
  degradation D = 1 - mIoU in place of ImageNet-C's error rate and a reference model (the report's
  default: ``baseline``), and ``mean_cd``: mCD = mean over corruptions of CD_c. A CD is only defined
  when model and reference have the same severities of that corruption; mCD only when every
  corruption's CD is defined (no silent average over different sets).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Grid = dict[str, dict[int, float | None]]


def number_or_none(v: Any) -> float | None:
    """A recorded metric as a float; None for null, NaN or a non-number."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _as_dict(rec: Any) -> dict:
    return rec if isinstance(rec, dict) else rec.to_dict()


def corruption_info(rec: Any) -> dict | None:
    """The ``perturbation.corruption`` object of a corruption result (name, severity, seed, version,
    impl); None for any other result."""
    pert = _as_dict(rec).get("perturbation") or {}
    info = pert.get("corruption")
    if pert.get("kind") != "corruption" or not isinstance(info, dict):
        return None
    return info


def miou_grid(records: Iterable[Any], subset: str = "all") -> Grid:
    """{corruption: {severity: mIoU on ``subset`` (None when the subset has no number)}} over the
    corruption results among ``records`` (of one model and protocol; other results are ignored)."""
    grid: Grid = {}
    for rec in records:
        info = corruption_info(rec)
        if info is None:
            continue
        entry = (_as_dict(rec).get("subsets") or {}).get(subset)
        value = number_or_none((entry or {}).get("metrics", {}).get("miou")) if entry else None
        grid.setdefault(str(info["name"]), {})[int(info["severity"])] = value
    return {name: dict(sorted(levels.items())) for name, levels in grid.items()}


def severities(grid: Mapping[str, Mapping[int, float | None]]) -> list[int]:
    return sorted({s for levels in grid.values() for s in levels})


def mean(values: Iterable[float | None]) -> float | None:
    """Arithmetic mean of the numbers (None when there is none)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def mean_per_severity(grid: Mapping[str, Mapping[int, float | None]]) -> dict[int, float | None]:
    """Severity -> mean mIoU over the corruptions evaluated at that severity."""
    return {s: mean(levels.get(s) for levels in grid.values()) for s in severities(grid)}


def mean_over_severities(grid: Mapping[str, Mapping[int, float | None]]) -> dict[str, float | None]:
    """Corruption -> mean mIoU over its severities."""
    return {name: mean(levels.values()) for name, levels in grid.items()}


def mean_corruption_miou(grid: Mapping[str, Mapping[int, float | None]]) -> float | None:
    """The mean mIoU over every (corruption, severity) evaluated."""
    return mean(v for levels in grid.values() for v in levels.values())


def relative_robustness(corrupted: float | None, clean: float | None) -> float | None:
    """corrupted mIoU / clean mIoU (None when either is missing or clean is 0)."""
    if corrupted is None or clean is None or clean == 0:
        return None
    return corrupted / clean


def corruption_degradation(grid: Mapping[str, Mapping[int, float | None]],
                           ref_grid: Mapping[str, Mapping[int, float | None]]) -> dict[str, float | None]:
    """CD_c = sum_s (100 - mIoU_{c,s}) / sum_s (100 - mIoU^{ref}_{c,s}) (mIoUs in percent, i.e.
    D = 1 - mIoU), per corruption of ``grid``; None when the reference lacks the corruption, either
    lacks a number at a severity the other has, or the reference's degradation sums to 0."""
    out: dict[str, float | None] = {}
    for name, levels in grid.items():
        ref = ref_grid.get(name)
        if not ref or set(ref) != set(levels) or any(v is None for v in (*levels.values(), *ref.values())):
            out[name] = None
            continue
        den = sum(100.0 - ref[s] for s in levels)
        out[name] = None if den <= 0 else sum(100.0 - levels[s] for s in levels) / den
    return out


def mean_cd(cd: Mapping[str, float | None]) -> float | None:
    """mCD = mean of CD_c over the corruptions; None when any CD_c is undefined (or there is none)."""
    if not cd or any(v is None for v in cd.values()):
        return None
    return sum(cd.values()) / len(cd)


@dataclass
class CorruptionSummary:
    """Every corruption metric of one model on one subset (mIoUs in percent, ratios as ratios)."""

    subset: str
    grid: Grid
    clean: float | None
    per_severity: dict[int, float | None]
    per_corruption: dict[str, float | None]
    mean: float | None
    relative: float | None  # mean corrupted mIoU / clean mIoU
    relative_per_corruption: dict[str, float | None]
    cd: dict[str, float | None] = field(default_factory=dict)  # vs the reference (empty without one)
    mcd: float | None = None
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subset": self.subset, "grid": self.grid, "clean": self.clean, "per_severity": self.per_severity,
                "per_corruption": self.per_corruption, "mean": self.mean, "relative": self.relative,
                "relative_per_corruption": self.relative_per_corruption, "cd": self.cd, "mcd": self.mcd,
                "reference": self.reference}


def summarize(records: Iterable[Any], clean: float | None, subset: str = "all",
              reference_records: Iterable[Any] | None = None, reference: str | None = None) -> CorruptionSummary:
    """The metrics of one model (its corruption results ``records`` and clean mIoU on ``subset``),
    with CD / mCD against ``reference_records`` (the reference model's corruption results) when given."""
    grid = miou_grid(records, subset)
    per_corruption = mean_over_severities(grid)
    overall = mean_corruption_miou(grid)
    summary = CorruptionSummary(
        subset=subset, grid=grid, clean=clean, per_severity=mean_per_severity(grid), per_corruption=per_corruption,
        mean=overall, relative=relative_robustness(overall, clean),
        relative_per_corruption={c: relative_robustness(v, clean) for c, v in per_corruption.items()},
        reference=reference)
    if reference_records is not None:
        summary.cd = corruption_degradation(grid, miou_grid(reference_records, subset))
        summary.mcd = mean_cd(summary.cd)
    return summary


def subsets_of(records: Iterable[Any]) -> list[str]:
    """The subsets every corruption result among ``records`` holds ("all" first)."""
    common: set[str] | None = None
    for rec in records:
        if corruption_info(rec) is None:
            continue
        names = set((_as_dict(rec).get("subsets") or {}))
        common = names if common is None else common & names
    return sorted(common or set(), key=lambda s: (s != "all", s))
