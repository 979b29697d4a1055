"""The report's view of a results store: look up one number, or say exactly why it is missing.

Records follow the ``rbseg-result/1`` schema (docs/ARCHITECTURE.md) and are indexed by
(model name, perturbation name, split). Where a store holds several records for one key (e.g. the
same model evaluated with two fit modes), the record with the default protocol (fit tile, clipped,
float32) wins, then the most recent one; the report lists such choices as warnings.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attacks.apply import DEFAULT_CLIP, DEFAULT_FIT
from ..errors import RbsegError
from ..evaluation.corruption_metrics import number_or_none

SCHEMA = "rbseg-result/1"
PROTOCOL_FIELDS = ("dataset", "split", "fit", "clip", "dtype")


@dataclass(frozen=True)
class Missing:
    """Why a number is missing: ``subject: what item`` (items of one subject/what are listed together)."""

    subject: str  # e.g. "model 'mixup' on val"
    what: str  # e.g. "no result under", "subset not evaluated:"
    item: str = ""  # e.g. "uap-resnet", "obj1"

    def __str__(self) -> str:
        return f"{self.subject}: {self.what}" + (f" {self.item}" if self.item else "")


def group_missing(reasons: Iterable[Missing]) -> list[str]:
    """One line per (subject, what), its items joined, in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in reasons:
        items = groups.setdefault((r.subject, r.what), [])
        if r.item and r.item not in items:
            items.append(r.item)
    return [f"{subject}: {what}" + (f" {', '.join(items)}" if items else "") for (subject, what), items in groups.items()]


@dataclass(frozen=True)
class Cell:
    """One looked-up number: ``value`` (None when missing), the subset's image count, and why not."""

    value: float | None
    n_images: int | None = None
    missing: Missing | None = None
    mark: str = ""  # a footnote mark shown after the number (e.g. the white-box mark of Table 4)
    std: float | None = None  # sample std over seed replicates (value is then their mean; Table 1)
    n_runs: int | None = None  # how many seeds ``value`` and ``std`` are over

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass
class ResultIndex:
    records: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source: str = ""

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[dict], source: str = "") -> "ResultIndex":
        index = cls(source=source)
        for rec in records:
            index.add(rec)
        return index

    def add(self, rec: dict) -> None:
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            raise RbsegError(f"not an {SCHEMA} result record", self.source or None)
        try:
            key = (rec["model"]["name"], rec["perturbation"]["name"], rec["protocol"]["split"])
        except (KeyError, TypeError):
            raise RbsegError("result record lacks model.name, perturbation.name or protocol.split", self.source or None) from None
        old = self.records.get(key)
        if old is None:
            self.records[key] = rec
            return
        keep, drop = (rec, old) if _preference(rec) > _preference(old) else (old, rec)
        self.records[key] = keep
        self.warnings.append(
            f"{key[0]}/{key[1]} on {key[2]}: several results; using fit={_p(keep, 'fit')} clip={_p(keep, 'clip')} "
            f"dtype={_p(keep, 'dtype')} (created {keep.get('created', '?')}), not fit={_p(drop, 'fit')} "
            f"clip={_p(drop, 'clip')} dtype={_p(drop, 'dtype')} (created {drop.get('created', '?')})"
        )

    # --- queries ------------------------------------------------------------------------------
    def get(self, model: str, perturbation: str = "clean", split: str = "val") -> dict | None:
        return self.records.get((model, perturbation, split))

    @property
    def models(self) -> list[str]:
        return sorted({k[0] for k in self.records})

    @property
    def splits(self) -> list[str]:
        return sorted({k[2] for k in self.records})

    @property
    def perturbations(self) -> list[str]:
        """Every evaluated universal perturbation (not ``clean``, no per-image attack or worst case), by name."""
        return sorted({k[1] for k, r in self.records.items() if k[1] != "clean" and input_kind(r) == "perturbation"})

    def attack_inputs(self, split: str = "val") -> list[tuple[str, str, float]]:
        """(result name, attack name, eps) of every per-image attack result on ``split``, and
        (name, "worst", eps) of every worst case: attacks by name then eps, the worst cases last."""
        found: dict[str, tuple[str, str, float]] = {}
        for (model, name, s), rec in self.records.items():
            if s != split:
                continue
            kind = input_kind(rec)
            pert = rec.get("perturbation") or {}
            if kind == "attack":
                attack = pert.get("attack") or {}
                found[name] = (name, str(attack.get("name", name)), float(attack.get("eps", pert.get("max_abs") or 0)))
            elif kind == "worst":
                found[name] = (name, "worst", float((pert.get("worst") or {}).get("eps", pert.get("max_abs") or 0)))
        try:  # the attacks' registry order (pgd, segpgd, cospgd, sea-*), then others by name
            from ..attacks.perimage import ATTACKS
            rank = {name: k for k, name in enumerate(ATTACKS)}
        except ImportError:
            rank = {}
        return sorted(found.values(), key=lambda t: (t[1] == "worst", rank.get(t[1], len(rank)), t[1], t[2], t[0]))

    def has_attacks(self) -> bool:
        return self.attack_split() is not None

    def corruption_split(self) -> str | None:
        """The split the corruption tables and figures show: val when it has corruption results, else
        the first split that has them; None without any."""
        splits = sorted({k[2] for k, r in self.records.items() if input_kind(r) == "corruption"},
                        key=lambda s: (s != "val", s))
        return splits[0] if splits else None

    def has_corruptions(self) -> bool:
        return self.corruption_split() is not None

    def corruption_records(self, model: str, split: str = "val") -> list[dict]:
        """Every corruption result (``perturbation.kind == "corruption"``) of ``model`` on ``split``."""
        return [r for k, r in self.records.items() if k[0] == model and k[2] == split and input_kind(r) == "corruption"]

    def attack_split(self) -> str | None:
        """The split the attack tables and curves show: val when it has per-image attack results,
        else the first split that has them; None without any."""
        splits = sorted({k[2] for k, r in self.records.items() if input_kind(r) in ("attack", "worst")},
                        key=lambda s: (s != "val", s))
        return splits[0] if splits else None

    def perturbation_meta(self, name: str) -> dict:
        """The recorded ``perturbation.meta`` of ``name`` (from its newest record; {} if none)."""
        recs = [r for k, r in self.records.items() if k[1] == name]
        if not recs:
            return {}
        meta = (max(recs, key=lambda r: str(r.get("created") or "")).get("perturbation") or {}).get("meta")
        return meta if isinstance(meta, dict) else {}

    def model_sha256(self, model: str, split: str = "val") -> str | None:
        rec = self.get(model, "clean", split) or next((r for k, r in self.records.items() if k[0] == model), None)
        return None if rec is None else (rec.get("model") or {}).get("sha256")

    def has_split(self, split: str) -> bool:
        return any(k[2] == split for k in self.records)

    def miou(self, model: str, perturbation: str = "clean", split: str = "val", subset: str = "all") -> Cell:
        entry, reason = self._subset(model, perturbation, split, subset)
        if entry is None:
            return Cell(None, None, reason)
        n = entry.get("n_images")
        value = number_or_none((entry.get("metrics") or {}).get("miou"))
        if value is None:
            return Cell(None, n, Missing(_what(model, perturbation, split), "no mIoU (no class counted) on subset", subset))
        return Cell(value, n)

    def class_iou(self, model: str, class_name: str, subset: str, perturbation: str = "clean", split: str = "val") -> Cell:
        entry, reason = self._subset(model, perturbation, split, subset)
        if entry is None:
            return Cell(None, None, reason)
        n = entry.get("n_images")
        iou = (entry.get("metrics") or {}).get("iou")
        value = number_or_none(iou.get(class_name)) if isinstance(iou, dict) else None
        if value is None:
            return Cell(None, n, Missing(_what(model, perturbation, split),
                                         f"no IoU of '{class_name}' (absent from prediction and ground truth) on subset", subset))
        return Cell(value, n)

    def n_images(self, subset: str, split: str = "val", models: Iterable[str] = ()) -> tuple[int | None, Missing | None]:
        """The image count of a subset, read from the first listed model that has it; why not otherwise.

        Counts that differ between models (results from different data) are reported as a warning.
        """
        counts, reasons = {}, []
        for model in models:
            entry, reason = self._subset(model, "clean", split, subset)
            if entry is None:
                reasons.append(reason)
            elif entry.get("n_images") is not None:
                counts[model] = int(entry["n_images"])
        if not counts:
            return None, reasons[0] if reasons else Missing(f"subset '{subset}' on {split}", "no result")
        if len(set(counts.values())) > 1:
            msg = f"subset '{subset}' on {split}: image counts differ between models {counts} (results from different data?)"
            if msg not in self.warnings:
                self.warnings.append(msg)
        return next(iter(counts.values())), None

    def protocol(self, keys: Iterable[tuple[str, str, str]]) -> dict[str, list]:
        """The distinct protocol values (dataset, split, fit, clip, dtype, arch) over the given records."""
        out: dict[str, list] = {name: [] for name in (*PROTOCOL_FIELDS, "arch")}
        for key in keys:
            rec = self.records.get(key)
            if rec is None:
                continue
            for name in PROTOCOL_FIELDS:
                value = (rec.get("protocol") or {}).get(name)
                if value is not None and value not in out[name]:
                    out[name].append(value)
            arch = (rec.get("model") or {}).get("arch")
            if arch and arch not in out["arch"]:
                out["arch"].append(arch)
        return out

    def _subset(self, model: str, perturbation: str, split: str, subset: str) -> tuple[dict | None, Missing | None]:
        rec = self.get(model, perturbation, split)
        if rec is None:
            if perturbation == "clean":
                return None, Missing(f"model '{model}' on {split}", "no clean result")
            return None, Missing(f"model '{model}' on {split}", "no result under", perturbation)
        entry = (rec.get("subsets") or {}).get(subset)
        if entry:
            return entry, None
        why = (rec.get("unavailable_subsets") or {}).get(subset)
        if why:
            return None, Missing(f"subset '{subset}' on {split}", f"unavailable ({why})")
        return None, Missing(_what(model, perturbation, split), "subsets not evaluated:", subset)


def input_kind(rec: dict) -> str:
    """``clean``, ``perturbation`` (universal; results written before attacks existed have no kind),
    ``attack`` (per-image), ``worst`` (the worst case over attacks) or ``corruption`` (a common
    corruption at one severity)."""
    pert = rec.get("perturbation") or {}
    if pert.get("name") == "clean":
        return "clean"
    return str(pert.get("kind") or "perturbation")


def _what(model: str, perturbation: str, split: str) -> str:
    return f"model '{model}'" + ("" if perturbation == "clean" else f" under '{perturbation}'") + f" on {split}"


def _p(rec: dict, name: str) -> Any:
    return (rec.get("protocol") or {}).get(name)


def _preference(rec: dict) -> tuple:
    """Default protocol first (fit tile, clipped, float32), then the most recent."""
    fit = str(DEFAULT_FIT.value)
    return (
        _p(rec, "fit") == fit and _p(rec, "clip") == DEFAULT_CLIP and _p(rec, "dtype") == "float32",
        str(rec.get("created") or ""),
    )


def load_result_index(results_dir: str | Path, dataset: str | None = None) -> ResultIndex:
    """Every ``rbseg-result/1`` record under ``results_dir`` (read with evaluation.results.load_results).

    A report covers one dataset: ``dataset`` picks it; by default the store's only dataset, or, when
    it holds several, the one with the most records (the others are named in a warning).
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise RbsegError("results folder not found (run `rbseg evaluate` first, or pass --results DIR)", path)
    from ..evaluation.results import load_results

    records = [_as_dict(r) for r in load_results(path)]
    return select_dataset(records, dataset, source=str(path))


def select_dataset(records: list[dict], dataset: str | None = None, source: str = "") -> ResultIndex:
    counts: dict[str, int] = {}
    for rec in records:
        name = str((rec.get("protocol") or {}).get("dataset"))
        counts[name] = counts.get(name, 0) + 1
    if dataset is not None:
        if dataset not in counts:
            raise RbsegError(f"no results for dataset '{dataset}' (datasets here: {', '.join(sorted(counts)) or 'none'})", source or None)
        chosen = dataset
    elif counts:
        chosen = max(sorted(counts), key=lambda name: counts[name])
    else:
        chosen = None
    index = ResultIndex.from_records([r for r in records if str((r.get("protocol") or {}).get("dataset")) == chosen], source)
    others = sorted(set(counts) - {chosen})
    if others:
        index.warnings.append(f"results for other datasets left out of this report: {', '.join(others)} "
                              "(choose with --dataset NAME)")
    return index


def _as_dict(rec: Any) -> dict:
    if isinstance(rec, dict):
        return rec
    for attr in ("to_dict", "to_json"):
        fn = getattr(rec, attr, None)
        if callable(fn):
            out = fn()
            if isinstance(out, dict):
                return out
    raise RbsegError(f"unexpected result record type {type(rec).__name__}")
