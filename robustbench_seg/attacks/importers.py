"""Importers for published universal-perturbation files (a registry by format name).

Every importer reads one foreign file, validates it (shape, dtype, finiteness, the stated range)
and returns the suite's array: float32 (3, H, W), RGB, an additive offset in 0-255 pixel units,
plus a description of the conversion it applied. :func:`import_perturbation` then writes
``NAME.npy`` + ``NAME.json`` with :func:`save_perturbation`, recording the original file's
sha256 and that conversion. Nothing is ever unpickled (``.npy`` files are read with
``allow_pickle=False``; MATLAB files with ``scipy.io.loadmat``, which holds no code).

Formats
-------
``lts4-mat``
    LTS4/universal (Moosavi-Dezfooli et al. 2017) ``precomputed/*.mat``: one variable ``r``,
    224 x 224 x 3, values in [-10, 10] in 0-255 units. The authors document the axes as
    W x H x C, so the default ``axes="whc"`` maps ``out[c, y, x] = r[x, y, c']``;
    ``axes="hwc"`` maps ``out[c, y, x] = r[y, x, c']``. Channels (``channels``): ``bgr``
    (default, ``c' = 2 - c``) or ``rgb`` (``c' = c``). Their README says RGB, but their MATLAB
    pipeline (the one that works in W x H x C) crafts ``v`` in Caffe's input space, which is BGR:
    ``preprocess_img.m`` flips RGB to BGR and permutes to W x H x C before ``universal_perturbation.m``
    adds ``v``, and ``demo_caffe.m`` displays ``v`` with ``permute(v, [2, 1, 3])`` and
    ``v(:, :, [3, 2, 1])`` (BGR -> RGB). The code that made the files wins over the README.
``gduap-npy``
    val-iisc/GD-UAP perturbations, channels BGR, 0-255 units, in one of two layouts:
    classification ``(1, 224, 224, 3)`` NHWC, and segmentation ``(1, 3, 513, 513)`` NCHW. The
    layout is detected from the axis of size 3 (``axes="auto"``; ``nhwc`` / ``nchw`` force it;
    a leading batch axis of 1 is optional). Conversion: ``out[c, y, x] = a[0, y, x, 2 - c]``
    (NHWC) or ``a[0, 2 - c, y, x]`` (NCHW). The segmentation files were added to the top-left
    of a 513 x 513 canvas, so their metadata recommends ``fit = crop``.
``torch-chw``
    PyTorch tensors saved as ``.npy``: ``(1, 3, H, W)`` or ``(3, H, W)``, RGB, in [0, 1] pixel
    units by default (pytorch-gd-uap's ``+-10/255``).

Units: ``scale`` is the value a full-range pixel has in the file (1 for [0, 1] units, 255 for
0-255 units); values are multiplied by ``255 / scale``. Defaults: 255 for ``lts4-mat`` and
``gduap-npy``, 1 for ``torch-chw``. After conversion every value must lie within ``+-xi``
(default 10, the l-inf radius all these files were crafted with) up to a tolerance of 1e-3,
and the largest |value| must be at least 0.5 (:data:`~.perturbation.MIN_MAX_ABS`): a smaller one is
a file in other units or a wrong ``--scale`` / ``--format``, not a UAP (``allow_any_magnitude``
overrides both checks). ``channels`` (``rgb`` / ``bgr``) is the file's channel order; the default
is the format's (``bgr`` for ``lts4-mat`` and ``gduap-npy``, ``rgb`` for ``torch-chw``).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import PerturbationError, RbsegError
from ..io import load_npy, sha256_file
from .perturbation import MIN_MAX_ABS, Perturbation, refuse_existing_output, save_perturbation

RANGE_TOL = 1e-3
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class Converted:
    """An importer's result: the suite array and how it was obtained."""

    array: np.ndarray  # float32 (3, H, W), RGB, 0-255 units
    conversion: dict[str, Any]
    method: str
    recommended_fit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Importer:
    name: str
    description: str
    read: Callable[..., Converted]
    default_scale: float
    axes_choices: tuple[str, ...]
    default_axes: str
    suffixes: tuple[str, ...]
    default_channels: str = "rgb"


IMPORTERS: dict[str, Importer] = {}


def register_importer(importer: Importer) -> Importer:
    IMPORTERS[importer.name] = importer
    return importer


def _require_float(a: np.ndarray, src: Path) -> None:
    if a.dtype.kind != "f":
        raise PerturbationError(f"expected a float array, got dtype {a.dtype}", src)


def _finite_and_scaled(a: np.ndarray, src: Path, scale: float) -> tuple[np.ndarray, float]:
    if not np.isfinite(scale) or scale <= 0:
        raise PerturbationError(f"--scale must be a positive number, got {scale}", src)
    if not np.all(np.isfinite(a)):
        raise PerturbationError("holds NaN or infinite values", src)
    mult = 255.0 / float(scale)
    return (a.astype(np.float64) * mult).astype(np.float32), mult


def _check_range(a: np.ndarray, src: Path, xi: float | None, scale: float, allow_any_magnitude: bool = False) -> None:
    if allow_any_magnitude:
        return
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak < MIN_MAX_ABS:
        raise PerturbationError(
            f"max |value| after conversion is {peak:.4g} (0-255 units), below {MIN_MAX_ABS:g}: not a universal "
            f"perturbation in these units (file units: full pixel = {scale:g}; check --scale / --format)",
            src,
        )
    if xi is None:
        return
    if peak > xi + RANGE_TOL:
        raise PerturbationError(
            f"max |value| after conversion is {peak:.4g} (0-255 units), beyond the stated range +-{xi:g}"
            f" (file units: full pixel = {scale:g}; check --scale / --xi)",
            src,
        )


def _channel_order(channels: str, src: Path) -> str:
    if channels not in CHANNEL_ORDERS:
        raise PerturbationError(f"--channels must be rgb or bgr, got {channels}", src)
    return channels


def _to_rgb(chw: np.ndarray, channels: str) -> tuple[np.ndarray, str, dict[str, str]]:
    """(C, H, W) in the file's channel order -> (contiguous RGB array, the file's channel index in
    the formula, the conversion record's channel fields)."""
    bgr = channels == "bgr"
    return (np.ascontiguousarray(chw[::-1] if bgr else chw), "2 - c" if bgr else "c",
            {"channel_order": channels, "channels": "BGR -> RGB (flipped)" if bgr else "RGB (kept)"})


def _load_npy_plain(src: Path) -> np.ndarray:
    """``np.load(allow_pickle=False)``; an object (pickled) array is refused, never unpickled."""
    if not src.is_file():
        raise PerturbationError("file not found", src)
    try:
        return load_npy(src)
    except RbsegError as exc:
        prefix = f"{src}: "
        msg = str(exc)[len(prefix):] if str(exc).startswith(prefix) else str(exc)
        raise PerturbationError(msg, src) from None


# ---------------------------------------------------------------------------------------------
# lts4-mat
# ---------------------------------------------------------------------------------------------

def read_lts4_mat(src: Path, axes: str = "whc", scale: float = 255.0, xi: float | None = 10.0, variable: str = "r",
                  channels: str = "bgr", allow_any_magnitude: bool = False) -> Converted:
    import scipy.io

    channels = _channel_order(channels, src)
    if not src.is_file():
        raise PerturbationError("file not found", src)
    try:
        mat = scipy.io.loadmat(str(src))
    except NotImplementedError:
        raise PerturbationError("MATLAB v7.3 (HDF5) files are not supported; re-save it with save(..., '-v7')", src) from None
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PerturbationError(f"not a readable MATLAB .mat file ({first})", src) from None
    names = sorted(k for k in mat if not k.startswith("__"))
    if variable not in mat:
        raise PerturbationError(f"no variable '{variable}' (variables: {', '.join(names) or 'none'})", src)
    r = mat[variable]
    if not isinstance(r, np.ndarray) or r.dtype.kind not in "fiu" or r.dtype == object:
        raise PerturbationError(f"variable '{variable}' is not a numeric array", src)
    _require_float(r, src)
    if r.ndim != 3 or r.shape[2] != 3:
        raise PerturbationError(f"variable '{variable}' has shape {tuple(r.shape)}, expected (W, H, 3) / (H, W, 3)", src)
    if axes not in ("whc", "hwc"):
        raise PerturbationError(f"--axes for lts4-mat must be whc or hwc, got {axes}", src)
    scaled, mult = _finite_and_scaled(r, src, scale)
    # whc: r[x, y, c] -> out[c, y, x]; hwc: r[y, x, c] -> out[c, y, x]
    perm = (2, 1, 0) if axes == "whc" else (2, 0, 1)
    out, cc, channel_record = _to_rgb(np.transpose(scaled, perm), channels)
    _check_range(out, src, xi, scale, allow_any_magnitude)
    formula = f"out[c, y, x] = r[x, y, {cc}]" if axes == "whc" else f"out[c, y, x] = r[y, x, {cc}]"
    if mult != 1.0:
        formula += f" * {mult:g}"
    return Converted(
        out,
        {"variable": variable, "source_shape": list(r.shape), "source_dtype": str(r.dtype), "axes": axes,
         "transpose": list(perm), **channel_record, "multiplier": mult, "formula": formula},
        method="uap",
    )


# ---------------------------------------------------------------------------------------------
# gduap-npy
# ---------------------------------------------------------------------------------------------

def read_gduap_npy(src: Path, axes: str = "auto", scale: float = 255.0, xi: float | None = 10.0, channels: str = "bgr",
                   allow_any_magnitude: bool = False) -> Converted:
    channels = _channel_order(channels, src)
    a = _load_npy_plain(src)
    _require_float(a, src)
    shape = tuple(a.shape)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise PerturbationError(f"expected one perturbation (batch axis of size 1), got shape {shape}", src)
        a3 = a[0]
        batch = True
    elif a.ndim == 3:
        a3 = a
        batch = False
    else:
        raise PerturbationError(f"expected (1, H, W, 3) NHWC or (1, 3, H, W) NCHW, got shape {shape}", src)
    if axes == "auto":
        last3, first3 = a3.shape[2] == 3, a3.shape[0] == 3
        if last3 and not first3:
            layout = "nhwc"
        elif first3 and not last3:
            layout = "nchw"
        elif last3 and first3:
            raise PerturbationError(f"layout of shape {shape} is ambiguous (two axes of size 3): pass --axes nhwc or nchw", src)
        else:
            raise PerturbationError(f"no channel axis of size 3 in shape {shape}", src)
    elif axes in ("nhwc", "nchw"):
        layout = axes
        if (layout == "nhwc" and a3.shape[2] != 3) or (layout == "nchw" and a3.shape[0] != 3):
            raise PerturbationError(f"shape {shape} is not {layout.upper()} with 3 channels", src)
    else:
        raise PerturbationError(f"--axes for gduap-npy must be auto, nhwc or nchw, got {axes}", src)
    scaled, mult = _finite_and_scaled(a3, src, scale)
    chw = np.transpose(scaled, (2, 0, 1)) if layout == "nhwc" else scaled
    out, cc, channel_record = _to_rgb(chw, channels)
    _check_range(out, src, xi, scale, allow_any_magnitude)
    idx = f"a[0, y, x, {cc}]" if layout == "nhwc" else f"a[0, {cc}, y, x]"
    if not batch:
        idx = idx.replace("a[0, ", "a[")
    formula = f"out[c, y, x] = {idx}" + (f" * {mult:g}" if mult != 1.0 else "")
    segmentation = layout == "nchw"
    return Converted(
        out,
        {"source_shape": list(shape), "source_dtype": str(a.dtype), "layout": layout.upper(),
         "layout_detected": axes == "auto", **channel_record, "multiplier": mult,
         "formula": formula, "variant": "segmentation (513 canvas)" if segmentation else "classification"},
        method="gd-uap",
        recommended_fit="crop" if segmentation else None,
    )


# ---------------------------------------------------------------------------------------------
# torch-chw
# ---------------------------------------------------------------------------------------------

def read_torch_chw(src: Path, axes: str = "auto", scale: float = 1.0, xi: float | None = 10.0, channels: str = "rgb",
                   allow_any_magnitude: bool = False) -> Converted:
    channels = _channel_order(channels, src)
    a = _load_npy_plain(src)
    _require_float(a, src)
    shape = tuple(a.shape)
    if a.ndim == 4 and a.shape[0] == 1 and a.shape[1] == 3:
        a3, batch = a[0], True
    elif a.ndim == 3 and a.shape[0] == 3:
        a3, batch = a, False
    else:
        raise PerturbationError(f"expected (1, 3, H, W) or (3, H, W), got shape {shape}", src)
    if axes not in ("auto", "nchw", "chw"):
        raise PerturbationError(f"--axes for torch-chw must be auto (NCHW or CHW), got {axes}", src)
    out, mult = _finite_and_scaled(a3, src, scale)
    out, cc, channel_record = _to_rgb(out, channels)
    _check_range(out, src, xi, scale, allow_any_magnitude)
    formula = (f"out[c, y, x] = a[0, {cc}, y, x]" if batch else f"out[c, y, x] = a[{cc}, y, x]") + (f" * {mult:g}" if mult != 1.0 else "")
    return Converted(
        out,
        {"source_shape": list(shape), "source_dtype": str(a.dtype), "layout": "NCHW" if batch else "CHW",
         **channel_record, "multiplier": mult, "formula": formula},
        method="imported",
    )


register_importer(Importer("lts4-mat", "LTS4/universal MATLAB file, variable r, W x H x C (or H x W x C), Caffe BGR by default, 0-255 units",
                           read_lts4_mat, 255.0, ("whc", "hwc"), "whc", (".mat",), default_channels="bgr"))
register_importer(Importer("gduap-npy", "GD-UAP .npy, BGR, 0-255 units: (1, H, W, 3) NHWC (classification) or (1, 3, H, W) NCHW (segmentation)",
                           read_gduap_npy, 255.0, ("auto", "nhwc", "nchw"), "auto", (".npy",), default_channels="bgr"))
register_importer(Importer("torch-chw", "PyTorch .npy, (1, 3, H, W) or (3, H, W), RGB, [0, 1] units by default",
                           read_torch_chw, 1.0, ("auto", "nchw", "chw"), "auto", (".npy",)))


def convert(fmt: str, src: str | Path, axes: str | None = None, scale: float | None = None, xi: float | None = 10.0,
            channels: str | None = None, allow_any_magnitude: bool = False) -> Converted:
    """Read and convert ``src`` with the importer registered as ``fmt`` (no file is written)."""
    if fmt not in IMPORTERS:
        raise PerturbationError(f"unknown format '{fmt}' (formats: {', '.join(IMPORTERS)})")
    imp = IMPORTERS[fmt]
    src = Path(src)
    return imp.read(src, axes=axes or imp.default_axes, scale=imp.default_scale if scale is None else float(scale), xi=xi,
                    channels=channels or imp.default_channels, allow_any_magnitude=allow_any_magnitude)


# The LTS4/universal precomputed files are named after the ImageNet classifier they were crafted on.
LTS4_FILE_ARCHS: dict[str, str] = {
    "ResNet-152": "resnet152", "GoogLeNet": "googlenet", "VGG-16": "vgg16", "VGG-19": "vgg19",
    "VGG-F": "vgg_f", "CaffeNet": "caffenet",
}
GDUAP_PRIORS = ("none", "all", "partial")


def source_model_record(fmt: str, src: Path, source_arch: str | None) -> dict[str, Any] | None:
    """What an imported file records as its source model: ``--source-arch`` when given, else (for
    ``lts4-mat`` only) the classifier its published file name stands for; None when unknown. The
    report matches Table 4 columns by this role (a UAP on a ResNet-152 / GoogLeNet classifier)."""
    if source_arch:
        return {"arch": source_arch, "kind": "classifier", "name": source_arch,
                "recorded_from": "--source-arch", "sha256": None}
    if fmt == "lts4-mat" and src.stem in LTS4_FILE_ARCHS:
        arch = LTS4_FILE_ARCHS[src.stem]
        return {"arch": arch, "kind": "classifier", "name": src.stem,
                "recorded_from": f"the published file name {src.name} (LTS4/universal precomputed/)", "sha256": None}
    return None


def import_perturbation(
    fmt: str,
    src: str | Path,
    out: str | Path,
    axes: str | None = None,
    scale: float | None = None,
    xi: float = 10.0,
    method: str | None = None,
    norm: str = "inf",
    channels: str | None = None,
    overwrite: bool = False,
    allow_any_magnitude: bool = False,
    source_arch: str | None = None,
    prior: str | None = None,
) -> Perturbation:
    """Convert a published file into ``out`` (``NAME.npy`` + ``NAME.json``; a bare name: the current
    folder), recording its sha256, the conversion applied and the channel order chosen. An existing
    ``out`` is refused unless ``overwrite``. ``source_arch`` (the classifier it was crafted on; for
    ``lts4-mat`` inferred from the published file name when not given) and ``prior`` (a GD-UAP's data
    prior: none, all or partial) are recorded so the report can place the file in Table 4 by role."""
    src = Path(src)
    if prior is not None and prior not in GDUAP_PRIORS:
        raise PerturbationError(f"--prior must be one of {', '.join(GDUAP_PRIORS)}, got {prior}", src)
    path = refuse_existing_output(out, overwrite)
    conv = convert(fmt, src, axes=axes, scale=scale, xi=xi if norm in ("inf", "linf") else None, channels=channels,
                   allow_any_magnitude=allow_any_magnitude)
    imp = IMPORTERS[fmt]
    meta: dict[str, Any] = {
        "method": method or conv.method,
        "norm": norm,
        "xi": float(xi),
        "imported": True,
        "source_file": src.name,
        "source_sha256": sha256_file(src),
        "source_format": fmt,
        "source_format_description": imp.description,
        "conversion": conv.conversion,
        "channels": conv.conversion.get("channel_order"),
        "units": "0-255 pixel offsets, RGB, C x H x W",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **conv.extra,
    }
    if conv.recommended_fit:
        meta["recommended_fit"] = conv.recommended_fit
    source = source_model_record(fmt, src, source_arch)
    if source is not None:
        meta["source_model"] = source
    if prior is not None:
        meta["prior"] = prior
        meta["prior_label"] = {"none": "R-No", "all": "R-All", "partial": "R-Part"}[prior]
    if allow_any_magnitude:
        meta["magnitude_check"] = "skipped (allow_any_magnitude)"
    return save_perturbation(path, conv.array, meta)
