"""The report's headline: what the results show, in a few sentences computed from them.

Shown under the dataset note of ``index.html`` and stored in ``report.json`` (``headline``), so
the numbers a reader sees first are the ones the tables hold, never text typed by hand. Every line
is computed from the :class:`~.inputs.ResultIndex`; a line whose inputs are missing is left out.
"""
from __future__ import annotations

import statistics

from . import spec
from .inputs import ResultIndex
from .tables import PLUS_MINUS, main_methods, replicates, seed_runs


def _zoo_models(index: ResultIndex, split: str) -> list[str]:
    """The evaluated models of ``split`` that are not seed replicates, by name."""
    from ..training.recipes import SEED_REPLICATES

    return [m for m in index.models if m not in SEED_REPLICATES and index.miou(m, "clean", split).ok]


def _clean_runs(index: ResultIndex, split: str) -> dict[str, list[float]]:
    """Each main method's clean mIoU per training seed (its own run first, then its replicates'), where it has one."""
    runs = {m: seed_runs(index, m, lambda name: index.miou(name, "clean", split)) for m in main_methods(index)}
    return {m: r for m, r in runs.items() if r}


def clean_line(index: ResultIndex, split: str = "val") -> str | None:
    """Table 1 in one sentence: each main method's clean mIoU (mean +- std over its seeds when replicated)
    and the range over every evaluated model."""
    parts = []
    for model, runs in _clean_runs(index, split).items():
        if len(runs) >= 2:
            parts.append(f"{model} {statistics.fmean(runs):.1f} {PLUS_MINUS} {statistics.stdev(runs):.1f} "
                         f"(n={len(runs)} seeds)")
        else:
            parts.append(f"{model} {runs[0]:.1f} (one seed)")
    models = _zoo_models(index, split)
    if not parts or not models:
        return None
    values = {m: index.miou(m, "clean", split).value for m in models}
    lo, hi = min(values, key=values.get), max(values, key=values.get)
    return (f"Clean {split} mIoU (Table 1): {', '.join(parts)}; over all {len(models)} evaluated models "
            f"{values[lo]:.1f} ({lo}) to {values[hi]:.1f} ({hi}).")


def seed_line(index: ResultIndex, split: str = "val") -> str | None:
    """The measured seed-to-seed spread: the yardstick of every "> 2 std" note."""
    stds = [f"{model} {statistics.stdev(runs):.2f}" for model, runs in _clean_runs(index, split).items()
            if replicates(index, model) and len(runs) >= 2]
    if not stds:
        return None
    return (f"Seed-to-seed sample std of the clean {split} mIoU: {', '.join(stds)} points; a difference between "
            "two rows counts as beyond seed noise when it exceeds 2 std (the notes under Tables 1-4).")


def attack_line(index: ResultIndex, split: str = "val") -> str | None:
    """Table 4 in one sentence: each universal perturbation's mean mIoU drop over the evaluated models."""
    models = _zoo_models(index, split)
    parts = []
    rank = {name: k for k, name in enumerate(spec.TABLE4_COLUMNS)}  # Table 4's column order, then by name
    for name in sorted(index.perturbations, key=lambda n: (rank.get(n, len(rank)), n)):
        cells = {m: index.miou(m, name, split) for m in models}
        drops = [index.miou(m, "clean", split).value - c.value for m, c in cells.items() if c.ok]
        if drops:
            parts.append(f"{name} {statistics.fmean(drops):.1f} (range {min(drops):.1f} to {max(drops):.1f})")
    if not parts:
        return None
    return f"Mean mIoU drop under each universal perturbation over {len(models)} models (Table 4): {'; '.join(parts)}."


def subset_line(index: ResultIndex, split: str = "val") -> str | None:
    """The smallest Table 2 / Table 3 / Figure 4 subset: how much each of their cells rests on."""
    models = tuple(_zoo_models(index, split))
    counts = {}
    table3 = [f"{group}-{cls}" for group in spec.TABLE3_GROUPS for cls in spec.TABLE3_CLASSES]
    for subset in [*spec.TABLE2_COLUMNS, *table3, *spec.FIGURE4_SUBSETS.values()]:
        n, _ = index.n_images(subset, split, models)
        if n is not None:
            counts[subset] = n
    if not counts:
        return None
    small = min(counts, key=counts.get)
    return (f"Subsets (Tables 2-3, Figure 4): {len(counts)} subsets of the {split} split, the smallest '{small}' with "
            f"{counts[small]} images.")


def headline(index: ResultIndex, split: str = "val") -> list[str]:
    """The headline sentences, in reading order (empty when the results hold none of their inputs)."""
    return [line for line in (clean_line(index, split), seed_line(index, split), attack_line(index, split),
                              subset_line(index, split)) if line]
