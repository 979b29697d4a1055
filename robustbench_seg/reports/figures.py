"""The paper's figures, as PNG and PDF (matplotlib, Agg backend).

- Figure 4: mIoU vs co-occurrence threshold, one line per method (from results alone);
- a robustness bar chart of Table 4 (from results alone);
- Figures 3, 5, 6 (qualitative grids: image, ground truth, each method's prediction, VOC palette)
  and Figure 2 (confidence maps of a binding model's dominant, phantom and binding outputs, jet
  colormap): these run the models on a few images chosen deterministically from the data.

Every function returns a :class:`FigureResult` that says which files it wrote, what inputs were
missing, or why it was skipped; nothing here raises for a missing input.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..constants import NUM_CLASSES, VOC_CLASSES, VOC_PALETTE  # noqa: E402
from ..data import voc  # noqa: E402
from ..errors import RbsegError  # noqa: E402
from ..io import atomic_write_bytes  # noqa: E402
from . import spec  # noqa: E402
from .inputs import ResultIndex, group_missing  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 150
PALETTE = np.array(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)
# Figure 2's blended input: I_fb = d * I1 + (1 - d) * I2 with this d (the middle of U[0.7, 1]).
FIGURE2_DELTA = 0.8


@dataclass
class FigureResult:
    key: str
    title: str
    files: dict[str, Path] = field(default_factory=dict)  # format -> path
    missing: list[str] = field(default_factory=list)
    skipped: str | None = None
    caption: str = ""
    data: dict = field(default_factory=dict)  # the plotted numbers (series name -> values), when from results
    ylim: tuple[float, float] | None = None  # the y range drawn (results-only figures)
    legend: list[str] = field(default_factory=list)  # the legend entries drawn

    @property
    def written(self) -> bool:
        return bool(self.files)


def save_figure(fig, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """``out_dir/stem.png`` and ``.pdf``, atomically, without timestamps (same input, same bytes)."""
    out = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata)
        out[fmt] = atomic_write_bytes(Path(out_dir) / f"{stem}.{fmt}", buf.getvalue())
    plt.close(fig)
    return out


def colorize(mask: np.ndarray) -> np.ndarray:
    """H x W class indices (0-20, 255 void) -> H x W x 3 uint8 in the VOC palette."""
    return PALETTE[np.asarray(mask, dtype=np.uint8)]


def _label(model: str) -> str:
    return spec.METHOD_LABELS.get(model, model)


# --- from results alone ---------------------------------------------------------------------------

def _methods(index: ResultIndex, methods: Sequence[str] | None) -> Sequence[str]:
    from .tables import main_methods  # the paper's four, then SegMix when evaluated

    return main_methods(index) if methods is None else methods


def figure4(index: ResultIndex, out_dir: str | Path, split: str = "val", methods: Sequence[str] | None = None) -> FigureResult:
    """mIoU on the ``cooc<T>`` subsets (T = 50 .. 10), one line per method."""
    methods = _methods(index, methods)
    result = FigureResult("figure4", spec.FIGURE_TITLES["figure4"], caption=(
        "Each point: mIoU on the val images that hold at least two foreground classes, every pair of which "
        "co-occurs in fewer than T images (co-occurrence counted over the co-occurrence splits, default "
        "train_aug + val). n = number of images per threshold. No perturbation."))
    thresholds = list(spec.FIGURE4_SUBSETS)
    subsets = [spec.FIGURE4_SUBSETS[t] for t in thresholds]
    reasons, lines = [], {}
    for model in methods:
        cells = [index.miou(model, "clean", split, s) for s in subsets]
        reasons += [c.missing for c in cells if c.missing]
        if any(c.ok for c in cells):
            lines[model] = [c.value if c.ok else math.nan for c in cells]
    result.missing = group_missing(reasons)
    result.data = lines
    if not lines:
        result.skipped = "no cooc<T> subset results: " + "; ".join(result.missing)
        return result
    counts = [index.n_images(s, split, methods)[0] for s in subsets]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = np.arange(len(thresholds))
    for model, ys in lines.items():
        ax.plot(x, ys, marker="o", linewidth=1.8, label=_label(model))
    ax.set_xticks(x, [f"{t}\n(n={'?' if n is None else n})" for t, n in zip(thresholds, counts)])
    ax.set_xlabel("co-occurrence threshold T")
    ax.set_ylabel("mIoU (%)")
    # the y axis starts at 0: an auto-zoomed axis makes a 0.6-point spread look dramatic
    top = max((v for ys in lines.values() for v in ys if not math.isnan(v)), default=1.0)
    result.ylim = (0.0, float(min(100.0, max(1.0, top * 1.1))))
    ax.set_ylim(*result.ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    result.legend = [_label(m) for m in lines]
    ax.set_title("mIoU vs co-occurrence threshold", fontsize=10)
    result.files = save_figure(fig, out_dir, "figure4_cooccurrence")
    return result


def robustness_chart(index: ResultIndex, out_dir: str | Path, split: str = "val", methods: Sequence[str] | None = None) -> FigureResult:
    """Table 4 as grouped bars: one group per method, one bar per input (clean + 5 perturbations)."""
    methods = _methods(index, methods)
    from .tables import table4_inputs

    result = FigureResult("robustness", spec.FIGURE_TITLES["robustness"], caption="The numbers of Table 4.")
    columns = table4_inputs(index, tuple(methods), split).columns  # Table 4's columns, matched by recorded role
    keys = list(spec.TABLE4_COLUMNS)
    perts = [columns[k] for k in keys]
    values, reasons = {}, []
    for model in methods:
        cells = [index.miou(model, p, split) for p in perts]
        reasons += [c.missing for c in cells if c.missing]
        if any(c.ok for c in cells):
            values[model] = [c.value if c.ok else math.nan for c in cells]  # a missing bar is not drawn as 0
    result.missing = group_missing(reasons)
    result.data = values
    if not values:
        result.skipped = "no results for Table 4: " + "; ".join(result.missing)
        return result
    # only the inputs with at least one bar get a slot and a legend entry
    drawn = [k for k in range(len(perts)) if any(not math.isnan(v[k]) for v in values.values())]
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    width = 0.8 / len(drawn)
    x = np.arange(len(values))
    for slot, k in enumerate(drawn):
        group, label = spec.TABLE4_COLUMNS[keys[k]]
        ax.bar(x + (slot - (len(drawn) - 1) / 2) * width, [0.0 if math.isnan(v[k]) else v[k] for v in values.values()],
               width, label=" ".join(p for p in (group, label) if p))
        result.legend.append(" ".join(p for p in (group, label) if p))
    ax.set_xticks(x, [_label(m).replace(" + ", "\n+ ") for m in values], fontsize=8)  # two lines per label: five or more methods fit
    ax.set_ylabel("mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(drawn), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    result.files = save_figure(fig, out_dir, "robustness")
    return result


def _eps_series(index: ResultIndex, model: str, subset: str, split: str) -> tuple[list[float], list[float], list[str]]:
    """(eps values incl. 0 = clean, mIoU at each, how each point was obtained) for one model: the
    worst case where it was computed, else the lowest single attack at that eps."""
    found = index.attack_inputs(split)
    eps_values = sorted({e for _, _, e in found})
    xs, ys, how = [0.0], [], []
    clean = index.miou(model, "clean", split, subset)
    ys.append(clean.value if clean.ok else math.nan)
    how.append("clean")
    for eps in eps_values:
        worst = [n for n, a, e in found if a == "worst" and e == eps]
        cells = [index.miou(model, n, split, subset) for n in worst]
        cells = [c for c in cells if c.ok]
        if cells:
            ys.append(min(c.value for c in cells))
            how.append("worst case")
        else:
            singles = [index.miou(model, n, split, subset) for n, a, e in found if a != "worst" and e == eps]
            singles = [c for c in singles if c.ok]
            ys.append(min((c.value for c in singles), default=math.nan))
            how.append("strongest single attack" if singles else "missing")
        xs.append(eps)
    return xs, ys, how


def _attacked_models(index: ResultIndex, split: str) -> list[str]:
    from .tables import _model_order

    names = {n for n, _, _ in index.attack_inputs(split)}
    return _model_order({k[0] for k in index.records if k[2] == split and k[1] in names})


def attack_eps(index: ResultIndex, out_dir: str | Path, split: str | None = None) -> FigureResult:
    """mIoU vs eps (0 = clean), one line per method: the per-image worst case over the attacks."""
    result = FigureResult("attack_eps", spec.FIGURE_TITLES["attack_eps"], caption=(
        "x: l-inf budget eps in 0-255 pixel units (0 = clean); y: full-split mIoU under the per-image worst case over "
        "every attack run at that eps (where only one attack ran: that attack)."))
    split = split or index.attack_split() or "val"
    models = _attacked_models(index, split)
    if not models:
        result.skipped = "no per-image attack results"
        return result
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for model in models:
        xs, ys, how = _eps_series(index, model, "all", split)
        result.data[model] = ys
        result.data.setdefault("_eps", xs)
        ax.plot(xs, ys, marker="o", linewidth=1.8, label=_label(model))
    result.legend = [_label(m) for m in models]
    ax.set_xlabel("eps (0-255 pixel units)")
    ax.set_ylabel("mIoU (%)")
    top = max((v for m in models for v in result.data[m] if not math.isnan(v)), default=1.0)
    result.ylim = (0.0, float(min(100.0, max(1.0, top * 1.1))))
    ax.set_ylim(*result.ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mIoU vs attack budget", fontsize=10)
    result.files = save_figure(fig, out_dir, "attack_eps")
    return result


def attack_eps_subsets(index: ResultIndex, out_dir: str | Path, split: str | None = None) -> FigureResult:
    """The same curves on each of Table 2's subsets (one panel per subset, one line per method)."""
    result = FigureResult("attack_eps_subsets", spec.FIGURE_TITLES["attack_eps_subsets"], caption=(
        "One panel per subset (n = images): mIoU vs eps under the per-image worst case restricted to the subset's "
        "images, one line per method; compare a panel with 'full split' to see which scenes are more fragile."))
    split = split or index.attack_split() or "val"
    models = _attacked_models(index, split)
    if not models:
        result.skipped = "no per-image attack results"
        return result
    subsets = []
    for subset in spec.ATTACK_SUBSETS:
        if any(index.miou(m, "clean", split, subset).ok for m in models):
            subsets.append(subset)
    if not subsets:
        result.skipped = "no subset results"
        return result
    cols = min(5, len(subsets))
    rows = math.ceil(len(subsets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.1 * rows + 0.4), squeeze=False, sharey=True)
    for k, subset in enumerate(subsets):
        ax = axes[k // cols][k % cols]
        n = index.n_images(subset, split, models)[0]
        for j, model in enumerate(models):
            xs, ys, _ = _eps_series(index, model, subset, split)
            result.data[f"{model}/{subset}"] = ys
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=f"C{j}", label=_label(model))
        name = "full split" if subset == "all" else spec.TABLE2_COLUMNS.get(subset, ("", subset))[1]
        ax.set_title(f"{name} (n={'?' if n is None else n})", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for k in range(len(subsets), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    axes[0][0].set_ylabel("mIoU (%)", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(models), 5), fontsize=7, frameon=False)
    result.legend = labels
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    result.files = save_figure(fig, out_dir, "attack_eps_subsets")
    return result


def _corruption_summaries(index: ResultIndex, split: str) -> dict:
    from .tables import _corruption_summary, corruption_models

    return {m: _corruption_summary(index, m, split)[0] for m in corruption_models(index, split)}


def corruption_heatmap(index: ResultIndex, out_dir: str | Path, split: str | None = None) -> FigureResult:
    """mIoU per corruption (rows) and severity (columns), one panel per method, the numbers written in."""
    from .tables import corruption_order

    result = FigureResult("corruption_heatmap", spec.FIGURE_TITLES["corruption_heatmap"], caption=(
        "Rows: corruptions; columns: severities; colour and number: full-split mIoU (%) on the corrupted images "
        "(one shared colour scale, 0-100)."))
    split = split or index.corruption_split() or "val"
    summaries = _corruption_summaries(index, split)
    if not summaries:
        result.skipped = "no corruption results"
        return result
    names = corruption_order({c for s in summaries.values() for c in s.grid})
    levels = sorted({lv for s in summaries.values() for g in s.grid.values() for lv in g})
    n = len(summaries)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 0.55 * len(levels) * n + 1.4 * n, 0.9 + 0.28 * len(names)),
                             squeeze=False, sharey=True)
    image = None
    for k, (model, summary) in enumerate(summaries.items()):
        ax = axes[0][k]
        grid = np.array([[np.nan if summary.grid.get(c, {}).get(lv) is None else summary.grid[c][lv] for lv in levels]
                         for c in names], dtype=float)
        result.data[model] = grid.tolist()
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(len(names)):
            for j in range(len(levels)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 50 else "black")
        ax.set_xticks(range(len(levels)), [str(lv) for lv in levels], fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("severity", fontsize=7)
        ax.set_title(_label(model), fontsize=8)
    result.data["_corruptions"] = names
    result.data["_severities"] = levels
    result.legend = [_label(m) for m in summaries]
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mIoU (%)")
    result.files = save_figure(fig, out_dir, "corruption_heatmap")
    return result


def corruption_severity(index: ResultIndex, out_dir: str | Path, split: str | None = None) -> FigureResult:
    """Mean mIoU over the corruptions at each severity (0 = clean), one line per method."""
    result = FigureResult("corruption_severity", spec.FIGURE_TITLES["corruption_severity"], caption=(
        "x: corruption severity (0 = clean); y: full-split mIoU averaged over the corruptions evaluated at that severity."))
    split = split or index.corruption_split() or "val"
    summaries = _corruption_summaries(index, split)
    if not summaries:
        result.skipped = "no corruption results"
        return result
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for model, summary in summaries.items():
        xs = [0, *summary.per_severity]
        ys = [math.nan if summary.clean is None else summary.clean,
              *(math.nan if v is None else v for v in summary.per_severity.values())]
        result.data[model] = {"severity": xs, "miou": ys}
        ax.plot(xs, ys, marker="o", linewidth=1.8, label=_label(model))
    result.legend = [_label(m) for m in summaries]
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("mean mIoU (%)")
    top = max((v for d in result.data.values() for v in d["miou"] if not math.isnan(v)), default=1.0)
    result.ylim = (0.0, float(min(100.0, max(1.0, top * 1.1))))
    ax.set_ylim(*result.ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mIoU vs corruption severity", fontsize=10)
    result.files = save_figure(fig, out_dir, "corruption_severity")
    return result


# --- image selection (deterministic) --------------------------------------------------------------

def complex_scene_ids(root: Path, split: str, k: int) -> list[str]:
    """The k images with the most distinct foreground classes (ties: split order)."""
    from ..data.stats import class_sets, foreground

    sets = class_sets(root, split)
    order = {image_id: n for n, image_id in enumerate(sets)}
    ranked = sorted(sets, key=lambda i: (-len(foreground(sets[i])), order[i]))
    return ranked[:k]


def occluded_ids(root: Path, split: str, k: int) -> list[str]:
    """The k images with at least two objects whose objects are most occluded (fraction of occluded
    objects, then their number; ties: split order). Needs the Annotations XML."""
    scored = []
    for n, image_id in enumerate(voc.read_split(root, split)):
        path = voc.annotation_path(root, image_id)
        if not path.is_file():
            raise RbsegError("no Annotations XML (the occlusion flags Figure 6 selects by)", path)
        objects = voc.read_annotation(path)
        if len(objects) >= 2:
            occ = sum(o.occluded for o in objects)
            scored.append((-occ / len(objects), -occ, n, image_id))
    return [s[-1] for s in sorted(scored)[:k]]


def spread_ids(root: Path, split: str, k: int) -> list[str]:
    """k images spread evenly over the split list (first, ..., evenly spaced)."""
    ids = voc.read_split(root, split)
    if len(ids) <= k:
        return list(ids)
    return [ids[(j * len(ids)) // k] for j in range(k)]


# --- running models ---------------------------------------------------------------------------------

def _input(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def predict(model, image: np.ndarray, device="cpu") -> np.ndarray:
    """H x W predicted labels for an H x W x 3 uint8 image (the evaluation engine's model call)."""
    import torch

    from ..evaluation.engine import predict_labels

    with torch.no_grad():
        return predict_labels(model, _input(image).to(device))[0].cpu().numpy().astype(np.uint8)


def branch_confidences(model, image: np.ndarray, device="cpu") -> dict[str, np.ndarray]:
    """Max softmax probability (H x W, 0-1) of each output of a binding model: ``dominant`` (S_t),
    ``phantom`` (S_p), ``binding`` (S_fb, absent without FBH) and ``out``; plus ``pred`` (argmax of out)."""
    import torch
    import torch.nn.functional as F

    from ..data.transforms import normalize

    x = _input(image).to(device)
    with torch.no_grad():
        out = model(normalize(x))
    if not isinstance(out, dict) or "dominant" not in out or "phantom" not in out:
        raise RbsegError("the model has no dominant/phantom outputs (not a feature-binding network)")
    maps = {}
    for key in ("dominant", "phantom", "binding", "out"):
        if key in out:
            logits = out[key].float()
            if logits.shape[-2:] != x.shape[-2:]:
                logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            maps[key] = F.softmax(logits, dim=1).amax(dim=1)[0].cpu().numpy()
            if key == "out":
                maps["pred"] = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
    return maps


def blend_images(image1: np.ndarray, image2: np.ndarray, delta: float) -> np.ndarray:
    """Eq. 1 of the paper on uint8 images: I_fb = delta * I1 + (1 - delta) * I2 (float, 0-255)."""
    if image1.shape != image2.shape:
        raise ValueError(f"images differ in shape: {image1.shape} vs {image2.shape}")
    return delta * image1.astype(np.float64) + (1.0 - delta) * image2.astype(np.float64)


def _resize_like(image: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = shape
    img = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    msk = np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return img, msk


def _load(root: Path, split: str, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    image = voc.read_image(voc.image_path(root, image_id))
    mask = voc.read_mask(voc.mask_path(root, image_id, split))
    return image, mask


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _legend(fig, masks: Sequence[np.ndarray]) -> None:
    present = sorted({int(v) for m in masks for v in np.unique(m) if int(v) < NUM_CLASSES})
    handles = [Patch(color=PALETTE[c] / 255.0, label=VOC_CLASSES[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))


def qualitative_grid(
    models: Mapping[str, object], root: Path, split: str, ids: Sequence[str], out_dir: str | Path, stem: str,
    device="cpu",
) -> dict[str, Path]:
    """Rows = images; columns = image, ground truth, then each model's prediction (VOC palette)."""
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.7 * cols, 1.7 * len(ids) + 0.5), squeeze=False)
    masks = []
    for r, image_id in enumerate(ids):
        image, gt = _load(root, split, image_id)
        panels = [("Image", image), ("Ground truth", colorize(gt))]
        masks.append(gt)
        for name, model in models.items():
            pred = predict(model, image, device)
            masks.append(pred)
            panels.append((_label(name), colorize(pred)))
        for c, (title, panel) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            _off(ax)
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r][0].set_ylabel(image_id, fontsize=6)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _legend(fig, masks)
    return save_figure(fig, out_dir, stem)


def confidence_figure(
    model, root: Path, split: str, image_ids: Sequence[str], out_dir: str | Path, stem: str = "figure2_confidence",
    device="cpu", delta: float = FIGURE2_DELTA,
) -> dict[str, Path]:
    """Figure 2 style, jet colormap of the max softmax of S_t, S_p and S_fb.

    Row 1: a standard image (what the denoised network sees at test time). Row 2: the blend (Eq. 1) of
    the first image (dominant, weight ``delta``) and the second one (phantom, resized to the first's
    size), as in stage-1 training: S_t should follow the dominant image, S_p the phantom one.
    """
    first, second = image_ids[0], image_ids[1] if len(image_ids) > 1 else None
    image1, gt1 = _load(root, split, first)
    rows = [(f"{first}", image1, gt1, None)]
    if second is not None:
        image2, gt2 = _load(root, split, second)
        image2, gt2 = _resize_like(image2, gt2, image1.shape[:2])
        blended = np.clip(np.rint(blend_images(image1, image2, delta)), 0, 255).astype(np.uint8)
        rows.append((f"{delta:g}*{first} + {1 - delta:g}*{second}", blended, gt1, gt2))
    titles = ["Input", "GT (dominant)", "GT (phantom)", "conf. S_t (dominant)", "conf. S_p (phantom)",
              "conf. S_fb (binding)", "prediction"]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.75 * len(titles), 1.8 * len(rows) + 0.6), squeeze=False)
    im = None
    masks = []
    for r, (label, image, g1, g2) in enumerate(rows):
        maps = branch_confidences(model, image, device)
        masks += [g1, maps["pred"]] + ([g2] if g2 is not None else [])
        panels = [image, colorize(g1), None if g2 is None else colorize(g2)]
        for c in range(len(titles)):
            ax = axes[r][c]
            _off(ax)
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
            if c < 3:
                if panels[c] is not None:
                    ax.imshow(panels[c], interpolation="nearest")
                else:  # a standard input has no phantom: a blank panel of the same size
                    ax.imshow(np.full(image.shape, 255, dtype=np.uint8))
                    ax.text(0.5, 0.5, "none (standard input)", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            elif c < 6:
                key = ("dominant", "phantom", "binding")[c - 3]
                if key in maps:
                    im = ax.imshow(maps[key], cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
                else:
                    ax.text(0.5, 0.5, "no FBH", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.imshow(colorize(maps["pred"]), interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=6)
    fig.tight_layout(rect=(0, 0.06, 0.93, 1))
    if im is not None:
        cax = fig.add_axes((0.94, 0.2, 0.012, 0.65))
        fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)
    _legend(fig, masks)
    return save_figure(fig, out_dir, stem)
