"""The evaluation engine: one pass over the data per model, every perturbation and subset at once.

Each batch is decoded once (DataLoader workers), moved to the device as uint8, and evaluated clean
and under every perturbation (``attacks.apply.apply_perturbation``, fitted once per image size).
Predictions become per-image confusion matrices in one counting pass
(``metric.batched_confusion_matrix``); a (subsets x images) membership matrix times them gives one
confusion matrix per (perturbation, subset), accumulated on the device, so subsets cost nothing
extra. Images are evaluated at full resolution, batched only with images of the same size, so
batching changes no prediction. ``metric.metrics_from_confusion`` turns the matrices into mIoU.

``evaluate_clean`` (training's validation score) and ``evaluate`` (the results store's producer)
both run :func:`run_pass`: there is one evaluation loop in the codebase.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..attacks.apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation, fit_perturbation
from ..constants import NUM_CLASSES
from ..data import voc
from ..data.transforms import normalize
from ..errors import DataError, RbsegError
from ..io import atomic_torch_save, atomic_write_json, ids_hash, probe_writable, safe_torch_load, sha256_file
from ..paths import cache_dir
from . import results as store
from .metric import SegMetrics, batched_confusion_matrix, metrics_from_confusion

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
FITTED_CACHE_SIZES = 8  # image sizes whose fitted perturbations stay on the device


# --- devices, dtypes, workers -------------------------------------------------------------------

def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RbsegError(f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RbsegError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 autocast on CUDA, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise RbsegError(f"unsupported dtype {dtype} (use fp32 or bf16)")
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise RbsegError(f"unknown dtype '{dtype}' (use fp32, bf16 or auto)")
    return DTYPES[dtype]


def default_num_workers(device: torch.device) -> int:
    """Decoding workers: several on a GPU machine; on a small CPU machine they would steal the cores."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else 2


def default_channels_last(device: torch.device) -> bool:
    """channels_last (NHWC) model and inputs: on for CUDA (tensor cores) and for CPU too, where
    oneDNN's NHWC convolutions were measured faster for batches of several inputs (the engine's
    P inputs x B images) and no slower at batch 1 (docs/performance.md)."""
    return device.type in ("cuda", "cpu")


# --- data: sizes from JPEG headers, size-grouped batches, a decoding dataset ---------------------

def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (PIL opens lazily, no pixel decoding)."""
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image ({exc})", path) from None
    return int(h), int(w)


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by image size (groups in order of first appearance), cut to ``batch_size``.

    Deterministic for a given id list, so an interrupted pass can skip the batches it finished.
    """
    if batch_size < 1:
        raise RbsegError(f"batch size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [idx[i:i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]


class EvalImages(torch.utils.data.Dataset):
    """(uint8 3xHxW image, uint8 HxW mask, index) per image; without mask paths the mask is empty
    (0 x 0). A read error travels as a string, so the main process raises it as one line
    (DataLoader workers would wrap it in a traceback)."""

    def __init__(self, image_paths: Sequence[Path], mask_paths: Sequence[Path] | None = None):
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = None if mask_paths is None else [Path(p) for p in mask_paths]

    @classmethod
    def from_split(cls, root: Path, split: str, ids: Sequence[str], with_masks: bool = True) -> EvalImages:
        return cls([voc.image_path(root, i) for i in ids], [voc.mask_path(root, i, split) for i in ids] if with_masks else None)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int):
        try:
            image = voc.read_image(self.image_paths[index])
            if self.mask_paths is not None:
                mpath = self.mask_paths[index]
                mask = voc.read_mask(mpath)
                if mask.shape != image.shape[:2]:
                    raise DataError(f"mask size {mask.shape[::-1]} != image size {image.shape[1::-1]}", mpath)
            else:
                mask = np.zeros((0, 0), dtype=np.uint8)
        except RbsegError as exc:
            return str(exc)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), index


def collate_same_size(items):
    errors = [item for item in items if isinstance(item, str)]
    if errors:
        return errors[0]
    images, masks, indices = zip(*items)
    return torch.stack(images), torch.stack(masks), torch.tensor(indices, dtype=torch.long)


def batch_loader(dataset: EvalImages, batches: list[list[int]], device: torch.device, num_workers: int):
    kwargs = {"prefetch_factor": 4, "persistent_workers": False} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_same_size,
        pin_memory=device.type == "cuda", **kwargs,
    )


# --- the model call ------------------------------------------------------------------------------

def forward_outputs(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's raw outputs for float 0-255 pixels (N, 3, H, W): ``model(normalize(x255))`` under
    autocast when ``dtype`` is bf16; a plain tensor output becomes ``{"out": tensor}``."""
    x = normalize(x255)
    with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
    out = out if isinstance(out, dict) else {"out": out}
    logits = out.get("out")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        raise RbsegError("the model must return logits (N, C, H, W) or a dict with 'out' holding them")
    return out


def at_input_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits smaller than the input are bilinearly upsampled to it (torchvision's convention)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def forward_logits(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Model logits (``"out"``) at the input resolution."""
    return at_input_size(forward_outputs(model, x255, dtype)["out"], x255.shape[-2:])


def predict_labels(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    logits = forward_logits(model, x255, dtype)
    if logits.shape[1] != NUM_CLASSES:
        raise RbsegError(f"the model returns {logits.shape[1]} channels, expected {NUM_CLASSES} (VOC classes)")
    return logits.argmax(1)


# --- the one evaluation loop ---------------------------------------------------------------------

class ModelFailure(RbsegError):
    """The model's own code raised during a forward pass (the cause is chained: ``rbseg --debug``)."""


class NonFiniteLogits(RbsegError):
    """The model returned NaN or inf logits: they would be scored as class 0 without a word."""


class EvaluationWarning(UserWarning):
    """Something the evaluation records but does not refuse (duplicate ids, an unfinished checkpoint)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ids_text(ids: Sequence[str], index: torch.Tensor, limit: int = 4) -> str:
    names = [ids[k] for k in index.tolist()]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _non_finite_message(model_label: str, finite: torch.Tensor, ids: Sequence[str], index: torch.Tensor,
                        input_names: Sequence[str] | None, batch_no: int, n_batches: int) -> str:
    """Which inputs (perturbation x image) of a batch gave NaN/inf logits (only built on failure)."""
    n_img = len(index)
    bad = (~finite.cpu()).nonzero().flatten().tolist()
    per_input: dict[str, list[str]] = {}
    for k in bad:
        p, b = divmod(k, n_img)
        name = input_names[p] if input_names is not None and p < len(input_names) else ("clean" if p == 0 else f"input {p}")
        per_input.setdefault(name, []).append(ids[int(index[b])])
    where = "; ".join(f"under '{name}': {', '.join(imgs[:4])}" + (f" and {len(imgs) - 4} more" if len(imgs) > 4 else "")
                      for name, imgs in per_input.items())
    return (f"model '{model_label}' returned non-finite logits (NaN or inf) on batch {batch_no} of {n_batches} "
            f"({where}); refusing to score them")


@dataclass
class PassState:
    """Confusion matrices (P perturbations x S subsets x C x C, int64) after ``batches_done`` batches."""

    cms: torch.Tensor
    batches_done: int = 0


def run_pass(
    model: torch.nn.Module,
    root: Path,
    split: str,
    ids: Sequence[str],
    deltas: Sequence[torch.Tensor | None],
    membership: torch.Tensor,
    *,
    fit: FitMode | str = DEFAULT_FIT,
    clip: bool = DEFAULT_CLIP,
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    channels_last: bool = False,
    forward_batch: int | None = None,
    batches: list[list[int]] | None = None,
    state: PassState | None = None,
    checkpoint: Callable[[PassState], None] | None = None,
    checkpoint_every_s: float = 60.0,
    progress: bool = False,
    description: str = "evaluating",
    model_label: str = "model",
    input_names: Sequence[str] | None = None,
) -> PassState:
    """One pass over ``ids``: confusion matrices for every (delta, subset) pair.

    ``deltas``: None for clean, else (3, h, w) perturbations in 0-255 units. ``membership``:
    (S, len(ids)) bool, row s marks the images of subset s. ``state`` resumes a pass that stopped
    after ``state.batches_done`` batches of the same plan; ``checkpoint(state)`` is called every
    ``checkpoint_every_s`` seconds and when the pass is interrupted by an exception. The inputs of a
    batch (P deltas x B images of one size) are stacked and sent to the model in chunks of at most
    ``forward_batch`` images (default ``batch_size``), so a batch of one image still runs its P
    inputs together. ``channels_last`` converts the model (in place) and every input to NHWC.

    A model that raises, or returns a NaN/inf logit, stops the pass with one :class:`RbsegError`
    line naming ``model_label``, the batch, the image ids and (for non-finite logits) the input of
    ``input_names`` (default: ``clean`` / ``perturbation k``); the finished batches are checkpointed.
    """
    fit = FitMode(fit)
    forward_batch = forward_batch or batch_size
    n_p, n_s = len(deltas), membership.shape[0]
    if membership.shape[1] != len(ids):
        raise ValueError(f"membership has {membership.shape[1]} columns for {len(ids)} ids")
    if batches is None:
        batches = size_batches([image_size(voc.image_path(root, i)) for i in ids], batch_size)
    if state is None:
        state = PassState(torch.zeros(n_p, n_s, NUM_CLASSES, NUM_CLASSES, dtype=torch.long))
    state = PassState(state.cms.to(device), state.batches_done)
    member = membership.to(device=device, dtype=torch.float64)
    # the perturbations live on the device once; fitting them to a new image size copies nothing
    dev_deltas = [None if d is None else torch.as_tensor(d, dtype=torch.float32).to(device) for d in deltas]
    fitted: dict[tuple[int, int], list[torch.Tensor | None]] = {}
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def snapshot() -> PassState:
        return PassState(state.cms.cpu(), state.batches_done)

    todo = batches[state.batches_done:]
    loader = batch_loader(EvalImages.from_split(root, split, ids), todo, device, num_workers)
    bar = progress_bar(progress, description, len(batches), state.batches_done)
    last_save = time.monotonic()
    try:
        with torch.inference_mode():
            for batch in loader:
                if isinstance(batch, str):
                    raise RbsegError(batch)
                images, masks, index = batch
                x = images.to(device, non_blocking=True).float()
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                target = masks.to(device, non_blocking=True)
                size = tuple(x.shape[-2:])
                if size not in fitted:
                    if len(fitted) >= FITTED_CACHE_SIZES:  # batches come grouped by size: keep the recent few
                        fitted.pop(next(iter(fitted)))
                    fitted[size] = [None if d is None else fit_perturbation(d, *size, fit) for d in dev_deltas]
                # every input of this batch (clean and perturbed) as one stack of P x B images,
                # run in forward chunks of at most `forward_batch` images (all of the same size)
                stack = torch.cat([x if d is None else apply_perturbation(x, d, fit, clip) for d in fitted[size]])
                batch_no = state.batches_done + 1
                try:
                    logits = [forward_logits(model, chunk, dtype) for chunk in stack.split(forward_batch)]
                except RbsegError:
                    raise
                except Exception as exc:  # a user model's own error: one line naming the model and the batch
                    raise ModelFailure(
                        f"model '{model_label}' raised {type(exc).__name__} on batch {batch_no} of {len(batches)} "
                        f"(images {_ids_text(ids, index)}): {_one_line(exc)} (full traceback: rbseg --debug)"
                    ) from exc
                if logits[0].shape[1] != NUM_CLASSES:
                    raise RbsegError(f"the model returns {logits[0].shape[1]} channels, expected {NUM_CLASSES} (VOC classes)")
                # non-finite logits would be scored silently (argmax of NaN is 0): one reduction per
                # image on the device and one host synchronisation per batch
                finite = torch.cat([torch.isfinite(t).flatten(1).all(1) for t in logits])
                if not bool(finite.all()):
                    raise NonFiniteLogits(_non_finite_message(model_label, finite, ids, index, input_names,
                                                              batch_no, len(batches)))
                pred = torch.cat([t.argmax(1) for t in logits])
                per_image = batched_confusion_matrix(pred, target.repeat(n_p, 1, 1), validate=False)
                # (index came pinned with the batch: no host synchronisation for it on CUDA)
                counts = torch.einsum("sb,pbk->psk", member[:, index.to(device, non_blocking=True)],
                                      per_image.view(n_p, len(index), -1).double())
                # one assignment: an interruption leaves either the old or the new state, never half
                state = PassState(state.cms + counts.round().long().view_as(state.cms), state.batches_done + 1)
                if bar is not None:
                    bar.advance(bar.task_ids[0])
                if checkpoint is not None and time.monotonic() - last_save > checkpoint_every_s:
                    checkpoint(snapshot())
                    last_save = time.monotonic()
    except BaseException:
        if checkpoint is not None and state.batches_done:
            checkpoint(snapshot())
        raise
    finally:
        if bar is not None:
            bar.stop()
    return snapshot()


def progress_bar(enabled: bool, description: str, total: int, done: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a transient bar shows nothing there but leaves an empty line behind
        return None
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
    bar.add_task(description, total=total, completed=done)
    bar.start()
    return bar


# --- clean evaluation (training's validation score) ----------------------------------------------

def evaluate_clean(
    model: torch.nn.Module,
    data_root: str | Path,
    split: str = "val",
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    ids: Sequence[str] | None = None,
    dtype: str | torch.dtype = "auto",
    num_workers: int | None = None,
    progress: bool = False,
) -> SegMetrics:
    """Clean mIoU of ``model`` on ``split`` (or the given ``ids``) at full resolution.

    The model is put in eval mode for the pass and given back in the mode it came in.
    """
    dev = resolve_device(device)
    root = voc.resolve_root(data_root)
    ids = list(ids) if ids is not None else voc.read_split(root, split)
    if not ids:
        raise DataError(f"split '{split}' lists no ids", voc.split_file(root, split))
    was_training = model.training
    model.to(dev).eval()
    try:
        state = run_pass(
            model, root, split, ids, [None], torch.ones(1, len(ids), dtype=torch.bool),
            batch_size=batch_size, device=dev, dtype=resolve_dtype(dtype, dev),
            num_workers=default_num_workers(dev) if num_workers is None else num_workers,
            progress=progress, description=f"val {split}",
        )
    finally:
        model.train(was_training)
    return metrics_from_confusion(state.cms[0, 0])


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of a model's weights (the models area's content hash of its state dict)."""
    from ..models.checkpoint import state_sha256

    return state_sha256(model.state_dict())


# --- the full evaluation: models x perturbations x subsets, cached in the results store ----------

SEED = 0


def dataset_name(root: Path) -> str:
    """``SynthVOC-<preset>`` for a SynthVOC tree (its ``synthvoc.json``), else the folder's name."""
    meta = root / "synthvoc.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text(encoding="utf-8")).get("dataset")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return root.name or "dataset"


def data_fingerprint(root: Path, split: str, ids: Sequence[str]) -> str:
    """Content hash of the split list, images and masks (independent of where the tree lives).

    Memoised in ``cache_dir()`` under the files' (size, mtime) signature, so a re-run stats the files
    but reads none of them.
    """
    files = [voc.split_file(root, split)]
    for image_id in ids:
        files += [voc.image_path(root, image_id), voc.mask_path(root, image_id, split)]
    signature = []
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            hint = " (a split without ground truth cannot be scored; use rbseg predict)" if f.suffix == ".png" else ""
            raise DataError(f"file not found{hint}", f) from None
        signature.append((str(f.relative_to(root)), st.st_size, st.st_mtime_ns))
    sig = hashlib.sha256(json.dumps([str(root.resolve()), signature]).encode()).hexdigest()[:32]
    memo = cache_dir() / "data-fingerprints" / f"{sig}.json"
    try:
        return str(json.loads(memo.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    for f, (rel, _, _) in zip(files, signature):
        h.update(f"{rel}\0{sha256_file(f)}\n".encode())
    fingerprint = h.hexdigest()[:32]
    atomic_write_json(memo, {"fingerprint": fingerprint, "root": str(root), "split": split})
    return fingerprint


def _versions() -> dict[str, str]:
    import torchvision

    from .. import __version__

    return {"package_version": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def resolve_model(
    model_spec, device: torch.device, weights: str | Path | None = None, model_name: str | None = None
) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, the record's ``model`` object) for a zoo name, checkpoint,
    ``module:function`` spec, or an ``nn.Module`` given directly (Python API)."""
    if isinstance(model_spec, torch.nn.Module):
        if weights is not None:
            raise RbsegError("weights are only read for a model given by name, checkpoint or module:function")
        model, info = model_spec, {"name": model_name or type(model_spec).__name__, "arch": type(model_spec).__name__}
    else:
        from ..models import load_model

        model, info = load_model(str(model_spec), device=str(device), weights=weights)
        info = dict(info)
        if model_name:
            info["name"] = model_name
    model = model.to(device).eval()
    record = {
        "name": str(info.get("name") or "model"),
        "sha256": info.get("sha256") or state_dict_sha256(model),
        "arch": info.get("arch"),
        "method": info.get("method"),
        "config": info.get("config") or {},
        "arch_config": info.get("model") or {},
        "source": info.get("source", "module" if isinstance(model_spec, torch.nn.Module) else None),
        "spec": str(model_spec) if not isinstance(model_spec, torch.nn.Module) else None,
        # False for the checkpoint of a stopped (or still running) training job
        "finished": bool(info.get("finished", True)),
    }
    if weights is not None:
        record["weights_sha256"] = sha256_file(weights)
    return model, record


def shipped_order(names: Sequence[str]) -> list[str]:
    """The paper's Table 4 order (``attacks.recipes.SHIPPED``) first, then the others by name."""
    try:
        from ..attacks.recipes import SHIPPED
    except ImportError:
        SHIPPED = {}
    rank = {name: k for k, name in enumerate(SHIPPED)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def load_checked_perturbation(name_or_path, allow_any_magnitude: bool = False):
    """``attacks.perturbation.load_perturbation`` with its magnitude check (``allow_any_magnitude``
    turns it off; a loader without that option is called without it)."""
    import inspect

    from ..attacks.perturbation import load_perturbation

    if "allow_any_magnitude" in inspect.signature(load_perturbation).parameters:
        return load_perturbation(name_or_path, allow_any_magnitude=allow_any_magnitude)
    return load_perturbation(name_or_path)


def perturbation_max_abs(p) -> float:
    """The measured max |v| of a perturbation, in 0-255 units (``Perturbation.max_abs`` when it has one)."""
    value = getattr(p, "max_abs", None)
    if value is None:
        value = float(np.abs(np.asarray(p.array, dtype=np.float32)).max()) if np.asarray(p.array).size else 0.0
    return float(value)


def resolve_perturbations(perturbations, allow_any_magnitude: bool = False) -> list:
    """``"all"`` (every shipped perturbation), ``"none"``, or names / paths (list or comma string);
    ``all`` may be mixed with names and paths (``all,x.npy``: the shipped ones, then x)."""
    from ..attacks.perturbation import list_perturbations

    if perturbations is None:
        items = ["all"]
    elif isinstance(perturbations, str):
        items = [p.strip() for p in perturbations.split(",") if p.strip()]
    else:
        items = [str(p) for p in perturbations]
    names: list[str] = []
    for item in items:
        if item == "all":
            names += shipped_order(list_perturbations())
        elif item != "none":
            names.append(item)
    if "none" in items and len(set(items)) > 1:
        raise RbsegError("--perturbations 'none' cannot be combined with other perturbations")
    loaded = [load_checked_perturbation(name, allow_any_magnitude) for name in dict.fromkeys(names)]
    seen: dict[str, str] = {}
    for p in loaded:
        if p.name == "clean":
            raise RbsegError("a perturbation may not be named 'clean' (the unperturbed result's name)", p.name)
        if p.name in seen and seen[p.name] != p.sha256:
            raise RbsegError(f"two different perturbations share the name '{p.name}'")
        seen[p.name] = p.sha256
    return list({p.name: p for p in loaded}.values())


def subset_names(subsets) -> list[str]:
    """The paper subsets asked for: ``"all"``, ``"none"`` (or None / empty), or names (list or comma
    string; ``all`` / ``ooc`` there are the full split and are always recorded anyway)."""
    from ..data.subsets import SUBSET_NAMES

    if subsets in ("none", "", None) or (isinstance(subsets, (list, tuple)) and not subsets):
        return []
    if subsets == "all":
        return list(SUBSET_NAMES)
    wanted = [s.strip() for s in subsets.split(",")] if isinstance(subsets, str) else [str(s) for s in subsets]
    wanted = [s for s in dict.fromkeys(wanted) if s and s not in ("all", "ooc")]
    unknown = [s for s in wanted if s not in SUBSET_NAMES]
    if unknown:
        raise RbsegError(f"unknown subset(s) {', '.join(unknown)} (known: all, none, {', '.join(SUBSET_NAMES)})")
    return wanted


def resolve_subsets(root: Path, split: str, subsets, ids: Sequence[str], with_cooccurrence: bool = False):
    """(subset name -> ids, in the split's order; unavailable name -> reason). ``"all"`` is the full
    split; on the ``ooc`` split the full split is also recorded as the ``ooc`` subset.

    ``with_cooccurrence``: a third item, (co-occurrence splits used, requested but missing), both
    None when no subset was computed (``data.subsets`` warns about a missing one)."""
    chosen: dict[str, list[str]] = {"all": list(ids)}
    if split == "ooc":
        chosen["ooc"] = list(ids)
    unavailable: dict[str, str] = {}
    wanted = subset_names(subsets)
    if not wanted:
        return (chosen, unavailable, (None, None)) if with_cooccurrence else (chosen, unavailable)
    from ..data.subsets import compute_subsets

    report = compute_subsets(root, split)
    for name in wanted:
        if name in report.subsets:
            chosen[name] = list(report.subsets[name])
        else:
            unavailable[name] = report.unavailable.get(name, "not computed for this split")
    if not with_cooccurrence:
        return chosen, unavailable
    return chosen, unavailable, (list(report.cooccur_splits_used), list(report.cooccur_splits_missing))


def duplicate_ids(listed: Sequence[str]) -> dict[str, int]:
    """id -> how many extra times a split list names it (empty when every id is listed once)."""
    seen: dict[str, int] = {}
    for image_id in listed:
        seen[image_id] = seen.get(image_id, 0) + 1
    return {i: n - 1 for i, n in seen.items() if n > 1}


def _dup_text(duplicates: dict[str, int], limit: int = 5) -> str:
    items = [f"{i} x{n + 1}" for i, n in list(duplicates.items())[:limit]]
    return ", ".join(items) + (f" and {len(duplicates) - limit} more" if len(duplicates) > limit else "")


def evaluate(
    model_spec,
    data_root: str | Path | None = None,
    split: str = "val",
    perturbations="all",
    subsets="all",
    fit: FitMode | str = DEFAULT_FIT,
    clip: bool = DEFAULT_CLIP,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    out: str | Path = "results",
    weights: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    model_name: str | None = None,
    checkpoint_every_s: float = 60.0,
    channels_last: bool | None = None,
    allow_any_magnitude: bool = False,
) -> list[store.ResultRecord]:
    """Evaluate one model clean and under each perturbation, on the full split and every subset.

    Returns one :class:`~robustbench_seg.evaluation.results.ResultRecord` per input (clean first),
    each also written to ``out`` (see ``results.py`` for the layout). Work whose result is already
    stored under the same cache key is skipped; an interrupted pass resumes from its partial file.
    ``channels_last`` (None: :func:`default_channels_last`) converts the model in place.
    ``allow_any_magnitude`` evaluates perturbations whose max |v| the loader would refuse as
    implausible; the measured max |v| is recorded with every result either way. Duplicate ids in the
    split list and an unfinished checkpoint are evaluated with an :class:`EvaluationWarning` and
    recorded (``protocol.duplicate_ids``, ``model.finished``).
    """
    try:
        fit = FitMode(fit)
    except ValueError:
        raise RbsegError(f"unknown fit mode '{fit}' (use {', '.join(m.value for m in FitMode)})") from None
    if batch_size < 1:
        raise RbsegError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    channels_last = default_channels_last(dev) if channels_last is None else bool(channels_last)
    perts = resolve_perturbations(perturbations, allow_any_magnitude)
    subset_names(subsets)  # validate the names early
    probe_writable(out, "results folder")  # a read-only or full disk fails before any work
    model, model_rec = resolve_model(model_spec, dev, weights, model_name)  # bad input fails before any data work
    if not model_rec.get("finished", True):
        warnings.warn(f"model '{model_rec['name']}' comes from an unfinished training run (the checkpoint of a "
                      "stopped or running job); its results are recorded with model.finished = false",
                      EvaluationWarning, stacklevel=2)
    if data_root is None:
        from ..data.synth import default_dataset

        data_root = default_dataset(progress=progress)
    root = voc.resolve_root(data_root)
    listed = voc.read_split(root, split)
    ids = list(dict.fromkeys(listed))
    if not ids:
        raise DataError(f"split '{split}' lists no ids", voc.split_file(root, split))
    duplicates = duplicate_ids(listed)
    if duplicates:
        warnings.warn(f"{voc.split_file(root, split)}: {sum(duplicates.values())} duplicate id(s) evaluated once "
                      f"({_dup_text(duplicates)}); recorded as protocol.duplicate_ids", EvaluationWarning, stacklevel=2)
    fingerprint = data_fingerprint(root, split, ids)
    subset_ids, unavailable, cooc = resolve_subsets(root, split, subsets, ids, with_cooccurrence=True)
    subset_hashes = {name: ids_hash(s) for name, s in subset_ids.items()}

    protocol = {
        "dataset": dataset_name(root), "data_root": str(root), "data_fingerprint": fingerprint, "split": split,
        "n_images": len(ids), "fit": fit.value, "clip": bool(clip), "dtype": DTYPE_NAMES[torch_dtype],
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "batch_size": int(batch_size), "channels_last": bool(channels_last), **_versions(), "seed": SEED,
        # the splits the cooc<T> subsets counted co-occurrences over (null: no subset computed)
        "cooccur_splits_used": cooc[0], "cooccur_splits_missing": cooc[1],
        "duplicate_ids": {"count": sum(duplicates.values()), "ids": dict(sorted(duplicates.items()))},
    }
    inputs = [(None, {"name": "clean", "sha256": None, "meta": {}, "max_abs": 0.0})] + [
        (p, {"name": p.name, "sha256": p.sha256, "meta": p.meta, "max_abs": perturbation_max_abs(p),
             **({"allow_any_magnitude": True} if allow_any_magnitude else {})}) for p in perts
    ]
    done: dict[str, store.ResultRecord] = {}
    todo = []
    for pert, pert_rec in inputs:
        path = store.result_path(out, model_rec["name"], pert_rec["name"], protocol)
        cached = None if force else store.cached_record(path, store.cache_key(model_rec, pert_rec, protocol), subset_hashes)
        if cached is not None:
            done[pert_rec["name"]] = cached
        else:
            todo.append((pert, pert_rec))
    if todo:
        job = _Job(model, model_rec, root, split, ids, subset_ids, unavailable, protocol, Path(out))
        for rec in job.run(todo, batch_size=batch_size, device=dev, dtype=torch_dtype, num_workers=num_workers,
                           progress=progress, force=force, checkpoint_every_s=checkpoint_every_s):
            done[rec.perturbation["name"]] = rec
    return [done[pert_rec["name"]] for _, pert_rec in inputs]


@dataclass
class _Job:
    """One model on one split: the inputs not yet stored are evaluated in one (resumable) pass."""

    model: torch.nn.Module
    model_rec: dict
    root: Path
    split: str
    ids: list[str]
    subset_ids: dict[str, list[str]]
    unavailable: dict[str, str]
    protocol: dict
    out: Path

    def membership(self) -> torch.Tensor:
        index_of = {image_id: k for k, image_id in enumerate(self.ids)}
        member = torch.zeros(len(self.subset_ids), len(self.ids), dtype=torch.bool)
        for s, subset in enumerate(self.subset_ids.values()):
            member[s, [index_of[i] for i in subset]] = True
        return member

    def plan_hash(self, todo, batches) -> str:
        """Identifies a pass: what it computes and in which batch order (a partial file is only
        resumed by the same plan)."""
        plan = {
            "keys": [store.cache_key(self.model_rec, rec, self.protocol) for _, rec in todo],
            "subsets": {name: ids_hash(s) for name, s in self.subset_ids.items()},
            "ids": ids_hash(self.ids), "batches": batches,
        }
        return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:24]

    def run(self, todo, *, batch_size, device, dtype, num_workers, progress, force,
            checkpoint_every_s) -> list[store.ResultRecord]:
        names = list(self.subset_ids)
        batches = size_batches([image_size(voc.image_path(self.root, i)) for i in self.ids], batch_size)
        plan = self.plan_hash(todo, batches)
        folder = store.result_path(self.out, self.model_rec["name"], "clean", self.protocol).parent
        partial = folder / f".partial-{plan}.pt"
        shape = (len(todo), len(names), NUM_CLASSES, NUM_CLASSES)
        state = None if force else _load_partial(partial, plan, shape)

        def save_partial(s: PassState) -> None:
            atomic_torch_save(partial, {"plan": plan, "cms": s.cms, "batches_done": s.batches_done})

        torch.manual_seed(SEED)
        state = run_pass(
            self.model, self.root, self.split, self.ids, [None if p is None else p.tensor() for p, _ in todo],
            self.membership(), fit=self.protocol["fit"], clip=self.protocol["clip"], batch_size=batch_size,
            device=device, dtype=dtype, num_workers=default_num_workers(device) if num_workers is None else num_workers,
            channels_last=self.protocol["channels_last"], batches=batches, state=state, checkpoint=save_partial,
            checkpoint_every_s=checkpoint_every_s, progress=progress,
            description=f"{self.model_rec['name']}: {len(todo)} input(s) x {len(self.ids)} images",
            model_label=str(self.model_rec.get("spec") or self.model_rec["name"]),
            input_names=[rec["name"] for _, rec in todo],
        )
        records, created = [], store.now_utc()
        for p, (_, pert_rec) in enumerate(todo):
            subsets = {
                name: {"n_images": len(self.subset_ids[name]), "ids_hash": ids_hash(self.subset_ids[name]),
                       "metrics": metrics_from_confusion(state.cms[p, s]).to_dict()}
                for s, name in enumerate(names)
            }
            rec = store.ResultRecord(model=self.model_rec, perturbation=pert_rec, protocol=self.protocol,
                                     subsets=subsets, unavailable_subsets=dict(self.unavailable), created=created)
            store.write_result(rec, self.out)
            records.append(rec)
        partial.unlink(missing_ok=True)
        return records


def _load_partial(path: Path, plan: str, shape: tuple[int, ...]) -> PassState | None:
    if not path.is_file():
        return None
    try:
        saved = safe_torch_load(path)
        if saved.get("plan") == plan and tuple(saved["cms"].shape) == shape:
            return PassState(saved["cms"].long(), int(saved["batches_done"]))
    except (RbsegError, AttributeError, KeyError, TypeError, ValueError):
        pass
    return None  # absent, foreign or damaged: start the pass over
