"""The suite's one perturbation format: ``NAME.npy`` + ``NAME.json``.

``NAME.npy``: float32, C x H x W (C = 3, RGB), an additive offset in 0-255 pixel units, saved
without pickling. ``NAME.json``: method, norm, xi, size, source model, data prior, seed,
iterations, fooling rate, crafting time, package version (and for imports the original file's
sha256 and the conversion applied).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import PerturbationError
from ..io import atomic_save_npy, atomic_write_json, load_npy, read_json, sha256_file
from ..paths import shipped_perturbations_dir

REQUIRED_META = ("method", "norm", "xi")


@dataclass
class Perturbation:
    name: str
    array: np.ndarray  # float32 (3, H, W), RGB, 0-255 units
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])

    @property
    def max_abs(self) -> float:
        """The measured max |v| in 0-255 units (recorded with every result)."""
        return float(np.abs(self.array).max()) if self.array.size else 0.0

    def tensor(self, device=None, dtype=None):
        import torch

        return torch.as_tensor(self.array, device=device, dtype=dtype or torch.float32)


def validate_array(array: np.ndarray, source: str | Path, xi: float | None = None, tol: float = 1e-3) -> np.ndarray:
    """Shape (3, H, W), float32, finite, and within +-xi (when given)."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise PerturbationError(f"expected a float array, got dtype {getattr(array, 'dtype', type(array))}", source)
    if array.ndim != 3 or array.shape[0] != 3 or array.shape[1] < 1 or array.shape[2] < 1:
        raise PerturbationError(f"expected shape (3, H, W), got {tuple(array.shape)}", source)
    if not np.all(np.isfinite(array)):
        raise PerturbationError("holds NaN or infinite values", source)
    if xi is not None:
        peak = float(np.abs(array).max())
        if peak > xi + tol:
            raise PerturbationError(f"max |value| {peak:.4g} exceeds the stated xi = {xi:g} (0-255 units)", source)
    return array.astype(np.float32, copy=False)


def resolve_perturbation_path(name_or_path: str | Path) -> Path:
    """A path to ``X.npy`` (or ``X`` with a sibling ``X.npy``), or a shipped perturbation's name."""
    p = Path(name_or_path)
    for cand in (p, p.with_suffix(".npy"), shipped_perturbations_dir() / f"{name_or_path}.npy"):
        if cand.suffix == ".npy" and cand.is_file():
            return cand
    shipped = sorted(q.stem for q in shipped_perturbations_dir().glob("*.npy"))
    raise PerturbationError(f"no such perturbation file or shipped name (shipped: {', '.join(shipped) or 'none'})", name_or_path)


# Plausible magnitudes (0-255 units) of a universal perturbation when no metadata states its xi:
# above 32 it is no longer "quasi-imperceptible" (+-100 is a different image), below 0.5 it is
# almost surely a file in [0, 1] units (255 times too weak) or a wrong conversion.
MAX_ABS_WITHOUT_XI = 32.0
MIN_MAX_ABS = 0.5


def check_magnitude(array: np.ndarray, source: str | Path, xi: float | None = None, tol: float = 1e-3) -> float:
    """Refuse an implausible magnitude; returns the measured max |v|.

    With a stated l-inf ``xi``: max |v| must not exceed it. Without one: max |v| must lie in
    [:data:`MIN_MAX_ABS`, :data:`MAX_ABS_WITHOUT_XI`] (0-255 units)."""
    peak = float(np.abs(array).max()) if array.size else 0.0
    hint = "; pass --allow-any-magnitude (allow_any_magnitude=True) to use it anyway"
    if xi is not None:
        if peak > xi + tol:
            raise PerturbationError(f"max |value| {peak:.4g} exceeds the stated xi = {xi:g} (0-255 units){hint}", source)
        return peak
    if peak > MAX_ABS_WITHOUT_XI:
        raise PerturbationError(f"max |value| {peak:.4g} exceeds {MAX_ABS_WITHOUT_XI:g} (0-255 units) and no JSON sidecar "
                                f"states an xi: not a quasi-imperceptible perturbation{hint}", source)
    if peak < MIN_MAX_ABS:
        raise PerturbationError(f"max |value| {peak:.4g} is below {MIN_MAX_ABS:g} (0-255 units) and no JSON sidecar states "
                                f"an xi: a file in [0, 1] units or a wrong conversion?{hint}", source)
    return peak


def load_perturbation(name_or_path: str | Path, allow_any_magnitude: bool = False) -> Perturbation:
    """Load ``NAME.npy`` (+ ``NAME.json`` when present) and check its magnitude (:func:`check_magnitude`)
    unless ``allow_any_magnitude``."""
    path = resolve_perturbation_path(name_or_path)
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise PerturbationError("metadata is not a JSON object", meta_path)
    array = validate_array(load_npy(path), path)
    xi = meta.get("xi")
    norm = str(meta.get("norm", "inf"))
    if not allow_any_magnitude:
        if xi is None:
            check_magnitude(array, path)
        elif norm in ("inf", "linf"):
            check_magnitude(array, path, xi=float(xi))
    return Perturbation(name=path.stem, array=array, meta=meta, sha256=sha256_file(path))


def resolve_output_path(path_or_name: str | Path) -> Path:
    """Where :func:`save_perturbation` writes ``NAME.npy``: the path as given, relative to the current
    folder (a bare name is ``./NAME.npy``, never the installed package's shipped perturbations/)."""
    path = Path(path_or_name).expanduser()
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    return path


def refuse_existing_output(path_or_name: str | Path, overwrite: bool) -> Path:
    """Refuse an existing ``NAME.npy`` or ``NAME.json`` unless ``overwrite`` (one line, names --overwrite)."""
    from ..io import refuse_existing

    path = resolve_output_path(path_or_name)
    refuse_existing(path, overwrite)
    refuse_existing(path.with_suffix(".json"), overwrite)
    return path


def save_perturbation(path_or_name: str | Path, array: np.ndarray, meta: dict[str, Any]) -> Perturbation:
    """Validate, then write NAME.npy and NAME.json atomically (a bare name: the current folder)."""
    path = resolve_output_path(path_or_name)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise PerturbationError(f"metadata lacks {missing}", path)
    array = validate_array(np.asarray(array), path, xi=float(meta["xi"]) if meta.get("norm", "inf") in ("inf", "linf") else None)
    atomic_save_npy(path, array)
    full = dict(meta)
    full.setdefault("package_version", __version__)
    full["size"] = [int(array.shape[1]), int(array.shape[2])]
    full["sha256"] = sha256_file(path)
    atomic_write_json(path.with_suffix(".json"), full)
    return Perturbation(name=path.stem, array=array, meta=full, sha256=full["sha256"])


def list_perturbations(folder: str | Path | None = None) -> list[str]:
    """Names of the ``*.npy`` in ``folder`` (default: the shipped folder); a named folder must exist."""
    if folder is None:
        folder = shipped_perturbations_dir()
        return sorted(p.stem for p in folder.glob("*.npy")) if folder.is_dir() else []
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PerturbationError("no such folder" if not folder.exists() else "not a folder", folder)
    return sorted(p.stem for p in folder.glob("*.npy"))
