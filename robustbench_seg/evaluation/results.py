"""The results store (schema ``rbseg-result/1``) and the regression check against ``expected.json``.

One JSON per (model, perturbation, protocol), written atomically under

    <out>/<model>/<dataset>/<split>-<fit>-<clip|noclip>-<fp32|bf16>/<perturbation>.json

(``<attack key>.json`` for a per-image attack, with its per-image statistics beside it as
``<attack key>.perimage.npy``; ``worst-eps<e>.json`` for the worst case over the attacks at eps e)
so results of one model on several splits, fit modes or dtypes sit side by side. A result is
reused when its cache key matches (:func:`cache_key`: model and perturbation sha256, dataset
fingerprint, split, fit, clip, dtype) and it holds every requested subset with the same ids hash.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RbsegError
from ..io import atomic_save_npy, atomic_write_json, load_npy, read_json, sha256_file

SCHEMA = "rbseg-result/1"
EXPECTED_SCHEMA = "rbseg-expected/1"
KEY_PROTOCOL_FIELDS = ("data_fingerprint", "split", "fit", "clip", "dtype")
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


@dataclass
class ResultRecord:
    """One (model, perturbation) evaluation: metrics for the full split ("all") and each subset."""

    model: dict[str, Any]
    perturbation: dict[str, Any]
    protocol: dict[str, Any]
    subsets: dict[str, dict[str, Any]]
    unavailable_subsets: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema: str = SCHEMA
    # attack results: the per-image statistics file beside the JSON (see write_result); None otherwise
    per_image: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": self.schema, "model": self.model, "perturbation": self.perturbation,
            "protocol": self.protocol, "subsets": self.subsets,
            "unavailable_subsets": self.unavailable_subsets, "created": self.created,
        }
        if self.per_image is not None:
            d["per_image"] = self.per_image
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str | Path | None = None) -> ResultRecord:
        validate_record(d, source)
        return cls(
            model=d["model"], perturbation=d["perturbation"], protocol=d["protocol"], subsets=d["subsets"],
            unavailable_subsets=d.get("unavailable_subsets", {}), created=d.get("created", ""), schema=d["schema"],
            per_image=d.get("per_image") if isinstance(d.get("per_image"), dict) else None,
        )

    def miou(self, subset: str = "all") -> float | None:
        """mIoU (percent) on a subset; None when absent, unavailable or undefined."""
        entry = self.subsets.get(subset)
        return None if entry is None else entry["metrics"].get("miou")

    def key(self) -> dict[str, Any]:
        return cache_key(self.model, self.perturbation, self.protocol)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cache_key(model: dict, perturbation: dict, protocol: dict) -> dict[str, Any]:
    """What makes two results the same measurement (device and batch size are not part of it:
    batching changes no prediction; the device is recorded, not keyed)."""
    return {
        "model_sha256": model.get("sha256"),
        "perturbation_sha256": perturbation.get("sha256"),
        **{k: protocol.get(k) for k in KEY_PROTOCOL_FIELDS},
    }


def validate_record(d: Any, source: str | Path | None = None) -> None:
    if not isinstance(d, dict):
        raise RbsegError("result is not a JSON object", source)
    if d.get("schema") != SCHEMA:
        raise RbsegError(f"not an {SCHEMA} result (schema: {d.get('schema')!r})", source)
    for key in ("model", "perturbation", "protocol", "subsets"):
        if not isinstance(d.get(key), dict):
            raise RbsegError(f"result lacks the '{key}' object", source)
    for key in ("name", "sha256"):
        if key not in d["model"]:
            raise RbsegError(f"result's model lacks '{key}'", source)
    if "name" not in d["perturbation"]:
        raise RbsegError("result's perturbation lacks 'name'", source)
    for name, entry in d["subsets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict) or "miou" not in entry["metrics"]:
            raise RbsegError(f"subset '{name}' lacks metrics.miou", source)


# --- paths ---------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    """A file-system-safe version of a model / perturbation / dataset name."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._")
    return cleaned or "unnamed"


def protocol_dirname(protocol: dict[str, Any]) -> str:
    clip = "clip" if protocol.get("clip", True) else "noclip"
    dtype = SHORT_DTYPE.get(protocol.get("dtype"), str(protocol.get("dtype")))
    return f"{safe_name(protocol['split'])}-{protocol['fit']}-{clip}-{dtype}"


def result_path(out: str | Path, model_name: str, perturbation_name: str, protocol: dict[str, Any]) -> Path:
    return (Path(out) / safe_name(model_name) / safe_name(protocol.get("dataset", "dataset"))
            / protocol_dirname(protocol) / f"{safe_name(perturbation_name)}.json")


def record_path(out: str | Path, record: ResultRecord) -> Path:
    return result_path(out, record.model["name"], record.perturbation["name"], record.protocol)


# --- read / write --------------------------------------------------------------------------------

def write_result(record: ResultRecord, out: str | Path, per_image: np.ndarray | None = None,
                 ids: list[str] | None = None) -> Path:
    """Write ``record`` (atomically). ``per_image``: the (N, C, C) per-image confusion matrices of an
    attack result (rows: ground truth, columns: prediction, images in the order of ``ids``), written
    first beside the JSON as ``<name>.perimage.npy``; the JSON records its file name, sha256, shape
    and the sha256 of the ordered ids (:func:`ordered_ids_sha256`)."""
    path = record_path(out, record)
    if per_image is not None:
        array = np.ascontiguousarray(per_image, dtype=np.int32)
        if ids is None or array.ndim != 3 or array.shape[0] != len(ids):
            raise ValueError("per_image must be (N, C, C) with the N ids it belongs to")
        npy = atomic_save_npy(path.with_name(path.stem + PER_IMAGE_SUFFIX), array)
        record.per_image = {"file": npy.name, "sha256": sha256_file(npy), "shape": list(array.shape), "dtype": "int32",
                            "layout": PER_IMAGE_LAYOUT, "ids_sha256": ordered_ids_sha256(ids)}
    validate_record(record.to_dict())
    return atomic_write_json(path, record.to_dict())


PER_IMAGE_SUFFIX = ".perimage.npy"
PER_IMAGE_LAYOUT = "per-image confusion matrices (images in split order, ground truth x prediction)"


def ordered_ids_sha256(ids) -> str:
    """sha256 of the id list in its order (the row order of a per-image statistics file)."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def load_per_image(record: ResultRecord | dict[str, Any], path: str | Path | None = None) -> np.ndarray:
    """The per-image confusion matrices (N, C, C) of an attack result, loaded without pickle and
    checked against the sha256 and shape its JSON records. ``path``: the result JSON (default: the
    record's ``_path``)."""
    d = record.to_dict() if isinstance(record, ResultRecord) else record
    info = d.get("per_image")
    if path is None and not d.get("_path"):
        raise RbsegError("the result's JSON path is needed to find its per-image statistics file")
    where = Path(path or d["_path"])
    if not isinstance(info, dict) or not info.get("file"):
        raise RbsegError("result has no per-image statistics (per_image.file)", where)
    npy = where.with_name(Path(str(info["file"])).name)  # beside the JSON, never elsewhere
    if not npy.is_file():
        raise RbsegError("per-image statistics file not found", npy)
    if info.get("sha256") and sha256_file(npy) != info["sha256"]:
        raise RbsegError("per-image statistics file differs from the sha256 its result records", npy)
    array = load_npy(npy)
    if list(array.shape) != list(info.get("shape", array.shape)) or array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise RbsegError(f"per-image statistics of shape {array.shape} / {array.dtype}, expected {info.get('shape')} integers", npy)
    return array.astype(np.int64)


def read_result(path: str | Path) -> ResultRecord:
    return ResultRecord.from_dict(read_json(path), path)


def cached_record(path: Path, key: dict[str, Any], subsets: dict[str, str]) -> ResultRecord | None:
    """The stored record at ``path`` if its key matches and it has every wanted subset
    (name -> ids hash) with the same ids; None otherwise (or when the file is unreadable)."""
    if not path.is_file():
        return None
    try:
        record = read_result(path)
    except RbsegError:
        return None
    if record.key() != key:
        return None
    for name, ids_hash in subsets.items():
        entry = record.subsets.get(name)
        if entry is None or entry.get("ids_hash") != ids_hash:
            return None
    return record


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``rbseg-result/1`` JSON under ``results_dir`` (recursively), each with ``_path`` added.

    Files that are not results (other JSON) are skipped; a file that claims the schema but is
    malformed raises RbsegError. Sorted by (model, dataset, split, perturbation, created).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise RbsegError("results folder not found", root)
    records = []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            data = read_json(path)
        except RbsegError:
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        validate_record(data, path)
        data["_path"] = str(path)
        records.append(data)
    records.sort(key=lambda r: (r["model"]["name"], str(r["protocol"].get("dataset")), str(r["protocol"].get("split")),
                                r["perturbation"]["name"], r.get("created", "")))
    return records


def find_result(
    results: list[dict[str, Any]] | str | Path,
    model: str,
    perturbation: str = "clean",
    split: str = "val",
    dataset: str | None = None,
    fit: str | None = None,
    clip: bool | None = None,
    dtype: str | None = None,
) -> dict[str, Any] | None:
    """The newest record for (model, perturbation, split) matching the given protocol fields."""
    records = load_results(results) if isinstance(results, (str, Path)) else results
    want = {"split": split, "dataset": dataset, "fit": fit, "clip": clip, "dtype": dtype}
    matches = [
        r for r in records
        if r["model"]["name"] == model and r["perturbation"]["name"] == perturbation
        and all(v is None or r["protocol"].get(k) == v for k, v in want.items())
    ]
    return max(matches, key=lambda r: r.get("created", "")) if matches else None


# --- expected values and the regression check -----------------------------------------------------

ENTRY_KEY = ("model", "dataset", "split", "fit", "clip", "perturbation", "subset")


def subset_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per (record, subset): the ENTRY_KEY fields, dtype, n_images, miou, created."""
    rows = []
    for r in records:
        proto = r["protocol"]
        for subset, entry in r["subsets"].items():
            rows.append({
                "model": r["model"]["name"], "dataset": proto.get("dataset"), "split": proto.get("split"),
                "fit": proto.get("fit"), "clip": proto.get("clip"), "perturbation": r["perturbation"]["name"],
                "subset": subset, "dtype": proto.get("dtype"), "n_images": entry.get("n_images"),
                "miou": entry["metrics"].get("miou"), "created": r.get("created", ""),
                "model_sha256": r["model"].get("sha256"), "perturbation_sha256": r["perturbation"].get("sha256"),
            })
    return rows


def _entry_key(row: dict[str, Any]) -> tuple:
    return tuple(row[f] for f in ENTRY_KEY)


def expected_entries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, dataset, split, fit, clip, perturbation, subset); newest record wins."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in subset_rows(records):
        k = _entry_key(row)
        if k not in best or row["created"] >= best[k]["created"]:
            best[k] = row
    entries = [{k: v for k, v in row.items() if k != "created"} for row in best.values()]
    return sorted(entries, key=lambda e: tuple(str(v) for v in _entry_key(e)))


def write_expected(results_dir: str | Path, path: str | Path) -> Path:
    """Freeze the recorded mIoUs of ``results_dir`` as the expected values ``rbseg check`` enforces."""
    entries = expected_entries(load_results(results_dir))
    if not entries:
        raise RbsegError("no rbseg results to freeze", results_dir)
    return atomic_write_json(path, {"schema": EXPECTED_SCHEMA, "created": now_utc(), "entries": entries})


def read_expected(path: str | Path) -> list[dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") != EXPECTED_SCHEMA or not isinstance(data.get("entries"), list):
        raise RbsegError(f"not an {EXPECTED_SCHEMA} file", path)
    for i, entry in enumerate(data["entries"]):
        if not isinstance(entry, dict) or any(k not in entry for k in ENTRY_KEY) or "miou" not in entry:
            raise RbsegError(f"entry {i} lacks one of {', '.join(ENTRY_KEY)}, miou", path)
    return data["entries"]


def per_image_problems(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check rows (entry dicts, subset ``all``) for attack results whose per-image statistics are
    missing, damaged, or do not add up to the recorded full-split mIoU (0.01 points)."""
    import torch

    from .metric import metrics_from_confusion

    bad = []
    for r in records:
        if not isinstance(r.get("per_image"), dict):
            continue
        row = next((x for x in subset_rows([r]) if x["subset"] == "all"), None)
        if row is None:
            continue
        try:
            cms = load_per_image(r)
            miou = metrics_from_confusion(torch.from_numpy(cms.sum(0))).miou
            recorded = _finite(r["subsets"]["all"]["metrics"].get("miou"))
            ok = (miou is None or math.isnan(miou)) if recorded is None else (
                miou is not None and abs(miou - recorded) <= 0.01)
        except RbsegError:
            ok = False
        if not ok:
            bad.append({k: v for k, v in row.items() if k != "created"})
    return bad


# what each status of the check means; FAILING ones make ``rbseg check`` exit 1
STATUSES = {
    "ok": "within the tolerance",
    "improved": "more than the tolerance above the expected value (reported, not a failure)",
    "regressed": "more than the tolerance below the expected value",
    "missing": "the result was evaluated but lacks this value (or, with require_all, was not evaluated)",
    "different model": "recorded for a model whose sha256 differs from the expected entry's",
    "different perturbation": "recorded under a perturbation whose sha256 differs from the expected entry's",
    "not evaluated": "no result for this model, dataset, split, fit, clip and perturbation (not a failure "
                     "unless require_all)",
    "new": "recorded but not expected (not a failure)",
    "per-image mismatch": "an attack result whose per-image statistics file is missing, damaged (sha256) or does "
                          "not sum to the recorded full-split mIoU",
}
FAILING = ("regressed", "missing", "different model", "different perturbation", "per-image mismatch")
RECORD_KEY = ENTRY_KEY[:-1]  # an expected entry without its subset: one result file


@dataclass
class CheckRow:
    entry: dict[str, Any]  # the expected entry (or the recorded one, for status "new")
    expected: float | None
    actual: float | None
    status: str  # a key of STATUSES

    @property
    def diff(self) -> float | None:
        if self.expected is None or self.actual is None:
            return None
        return self.actual - self.expected

    def to_dict(self) -> dict[str, Any]:
        return {**{k: self.entry.get(k) for k in (*ENTRY_KEY, "dtype")}, "expected": self.expected,
                "actual": self.actual, "diff": self.diff, "status": self.status}


@dataclass
class CheckReport:
    rows: list[CheckRow]
    tolerance: float

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if r.status in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {"passed": self.passed, "tolerance": self.tolerance, "counts": counts, "rows": [r.to_dict() for r in self.rows]}


def _finite(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def check_results(results_dir: str | Path, expected: str | Path, tolerance: float = 0.5,
                  require_all: bool = False) -> CheckReport:
    """Compare every expected mIoU with the recorded one.

    Only what was evaluated is checked: an expected entry whose result (model, dataset, split, fit,
    clip, perturbation) is absent is ``not evaluated`` (a failure, ``missing``, with
    ``require_all``). ``regressed``: more than ``tolerance`` points below; ``missing``: the result
    lacks the subset's value (or holds an undefined one where a number was expected);
    ``different model`` / ``different perturbation``: the recorded sha256 differs from the one the
    expected entry records (entries written before sha256s were recorded are compared by value
    only); ``improved``: more than ``tolerance`` above (reported, not a failure); ``new``: recorded
    but not expected. Where several dtypes were recorded for one entry, the one matching the
    expected dtype is used, else the newest.
    """
    if tolerance < 0:
        raise RbsegError(f"tolerance must be >= 0, got {tolerance}")
    wanted = read_expected(expected)
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    evaluated: set[tuple] = set()
    records = load_results(results_dir)
    for row in subset_rows(records):
        by_key.setdefault(_entry_key(row), []).append(row)
        evaluated.add(tuple(row[f] for f in RECORD_KEY))
    rows: list[CheckRow] = [CheckRow(entry, None, None, "per-image mismatch") for entry in per_image_problems(records)]
    seen = set()
    for e in wanted:
        k = _entry_key(e)
        seen.add(k)
        cands = by_key.get(k, [])
        same_dtype = [c for c in cands if c["dtype"] == e.get("dtype")]
        pick = max(same_dtype or cands, key=lambda c: c["created"]) if cands else None
        exp, act = _finite(e["miou"]), _finite(pick["miou"]) if pick else None
        if pick is None and k[:-1] not in evaluated:
            status = "missing" if require_all else "not evaluated"
        elif pick is not None and e.get("model_sha256") and pick.get("model_sha256") != e["model_sha256"]:
            status = "different model"
        elif pick is not None and e.get("perturbation_sha256") and pick.get("perturbation_sha256") != e["perturbation_sha256"]:
            status = "different perturbation"
        elif pick is None or (act is None and exp is not None):
            status = "missing"
        elif exp is None:
            status = "ok" if act is None else "improved"
        elif act < exp - tolerance:
            status = "regressed"
        elif act > exp + tolerance:
            status = "improved"
        else:
            status = "ok"
        rows.append(CheckRow(e, exp, act, status))
    for k, cands in by_key.items():
        if k not in seen:
            pick = max(cands, key=lambda c: c["created"])
            rows.append(CheckRow(pick, None, _finite(pick["miou"]), "new"))
    return CheckReport(rows, tolerance)
