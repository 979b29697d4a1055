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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..attacks.apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation, fit_perturbation
from ..constants import NUM_CLASSES
from ..data import voc
from ..errors import DataError, RbsegError
from ..models.adapters import DEFAULT as DEFAULT_ADAPTER
from ..models.adapters import adapter_for
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
    """(uint8 3xHxW image, uint8 HxW mask, index, prepared) per image; without mask paths the mask is
    empty (0 x 0). ``prepared`` maps the name of every input in ``worker_inputs`` (inputs whose
    ``in_workers`` is true: CPU-only computations such as the reference package's corruptions) to
    its uint8 3xHxW version of the image, computed here, i.e. in the decoding workers when the pass
    has any. A read (or preparation) error travels as a string, so the main process raises it as one
    line (DataLoader workers would wrap it in a traceback)."""

    def __init__(self, image_paths: Sequence[Path], mask_paths: Sequence[Path] | None = None,
                 worker_inputs: Sequence[EvalInput] = (), ids: Sequence[str] | None = None):
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = None if mask_paths is None else [Path(p) for p in mask_paths]
        self.worker_inputs = list(worker_inputs)
        self.ids = [p.stem for p in self.image_paths] if ids is None else [str(i) for i in ids]

    @classmethod
    def from_split(cls, root: Path, split: str, ids: Sequence[str], with_masks: bool = True,
                   worker_inputs: Sequence[EvalInput] = ()) -> EvalImages:
        return cls([voc.image_path(root, i) for i in ids], [voc.mask_path(root, i, split) for i in ids] if with_masks else None,
                   worker_inputs=worker_inputs, ids=ids)

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
        prepared = {}
        for inp in self.worker_inputs:
            try:
                prepared[inp.name] = torch.from_numpy(np.ascontiguousarray(inp.worker_prepare(image, self.ids[index]))).permute(2, 0, 1)
            except Exception as exc:  # noqa: BLE001 - travels as one line to the main process
                return f"{self.image_paths[index]}: input '{inp.name}' failed: {type(exc).__name__}: {_one_line(exc)}"
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), index, prepared


def collate_same_size(items):
    errors = [item for item in items if isinstance(item, str)]
    if errors:
        return errors[0]
    images, masks, indices, prepared = zip(*items)
    stacked = {name: torch.stack([p[name] for p in prepared]) for name in prepared[0]}
    return torch.stack(images), torch.stack(masks), torch.tensor(indices, dtype=torch.long), stacked


def batch_loader(dataset: EvalImages, batches: list[list[int]], device: torch.device, num_workers: int):
    kwargs = {"prefetch_factor": 4, "persistent_workers": False} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_same_size,
        pin_memory=device.type == "cuda", **kwargs,
    )


# --- the model call ------------------------------------------------------------------------------

def forward_outputs(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """The model's outputs for float 0-255 pixels (N, 3, H, W), through its adapter
    (``models.adapters.adapter_for``: the normalisation the model declares -- ImageNet for rbseg's and
    torchvision's -- padding, and any output kind turned into a dict whose ``"out"`` is at the input
    size), under autocast when ``dtype`` is bf16 (None: no autocast context of its own, the caller's applies)."""
    adapter = adapter_for(model)
    x = adapter.prepare(x255)
    if dtype is None:
        out = model(x)
    else:
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
    return adapter.outputs(out, x255.shape[-2:])


def at_input_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits smaller than the input are bilinearly upsampled to it (torchvision's convention)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def forward_logits(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Model logits (``"out"``) at the input resolution."""
    return at_input_size(forward_outputs(model, x255, dtype)["out"], x255.shape[-2:])


def predict_labels(model: torch.nn.Module, x255: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    logits = forward_logits(model, x255, dtype)
    if logits.shape[1] != NUM_CLASSES:
        raise RbsegError(f"the model returns {logits.shape[1]} channels, expected {NUM_CLASSES} (VOC classes)")
    return logits.argmax(1)


# --- inputs: what the one pass evaluates on every image --------------------------------------------

@dataclass
class BatchContext:
    """What an input's producer may need besides the images: the model and how it is called."""

    model: torch.nn.Module
    index: torch.Tensor  # positions of the batch's images in the pass's id list (CPU, int64)
    batch_no: int
    ids: Sequence[str] | None = None  # the pass's id list (``ids[index[k]]`` is image k's id)
    prepared: dict[str, torch.Tensor] = field(default_factory=dict)  # input name -> (B, 3, H, W) uint8 made by the decoding workers

    def image_ids(self) -> list[str]:
        """The ids of the batch's images (their positions when the pass gave no id list)."""
        if self.ids is None:
            return [str(int(k)) for k in self.index.tolist()]
        return [str(self.ids[int(k)]) for k in self.index.tolist()]


class EvalInput:
    """One kind of input the pass evaluates on every image (clean, a universal perturbation, a
    per-image attack; issue 14 adds corruptions): ``produce(x, target, ctx)`` returns the float 0-255
    batch (B, 3, H, W) the model is scored on. The pass runs under ``torch.inference_mode``; an input
    that needs autograd (an attack) leaves it inside its own producer, the scoring forward stays in
    it. ``keep_per_image``: the pass also keeps this input's per-image confusion matrices (the
    statistics a worst case over attacks is computed from). A new kind of input is one subclass
    registered in :data:`INPUT_KINDS`."""

    kind = "input"
    keep_per_image = False
    in_workers = False  # True: worker_prepare runs in the decoding workers (CPU-only work, e.g. NumPy/OpenCV)

    def __init__(self, name: str):
        self.name = name

    def to(self, device: torch.device) -> EvalInput:
        return self

    def worker_prepare(self, image: np.ndarray, image_id: str) -> np.ndarray:
        """For an input whose ``in_workers`` is true: the HxWx3 uint8 image -> its HxWx3 uint8 input,
        computed beside the decoding (in the DataLoader workers when the pass has any); ``produce``
        then finds it in ``ctx.prepared[self.name]``."""
        raise NotImplementedError

    def produce(self, x: torch.Tensor, target: torch.Tensor, ctx: BatchContext) -> torch.Tensor:
        raise NotImplementedError


class CleanInput(EvalInput):
    kind = "clean"

    def __init__(self, name: str = "clean"):
        super().__init__(name)

    def produce(self, x, target, ctx):
        return x


class PerturbationInput(EvalInput):
    """A fixed delta (3, h, w) in 0-255 units, fitted to each image size once (``fit``) and added by
    ``attacks.apply.apply_perturbation``."""

    kind = "perturbation"

    def __init__(self, delta, fit: FitMode | str = DEFAULT_FIT, clip: bool = DEFAULT_CLIP, name: str = "perturbation"):
        super().__init__(name)
        self.delta = torch.as_tensor(delta, dtype=torch.float32)
        self.fit, self.clip = FitMode(fit), bool(clip)
        self._fitted: dict[tuple[int, int], torch.Tensor] = {}

    def to(self, device):
        self.delta = self.delta.to(device)  # the perturbation lives on the device once
        self._fitted = {}
        return self

    def produce(self, x, target, ctx):
        size = tuple(x.shape[-2:])
        if size not in self._fitted:
            if len(self._fitted) >= FITTED_CACHE_SIZES:  # batches come grouped by size: keep the recent few
                self._fitted.pop(next(iter(self._fitted)))
            self._fitted[size] = fit_perturbation(self.delta, *size, self.fit)
        return apply_perturbation(x, self._fitted[size], self.fit, self.clip)


class AttackInput(EvalInput):
    """A per-image white-box attack (``attacks.perimage``): the adversarial batch is a function of the
    model, the images and their labels. Runs with autograd inside its producer, in the precision its
    spec records (``params["dtype"]``: the attack applies the autocast, the model call here adds
    none); each image's random start draws from its own seed (spec seed, attack, image position), so
    an image's result does not depend on its batch neighbours, the process or a resumed run."""

    kind = "attack"
    keep_per_image = True

    def __init__(self, spec, name: str, class_weights=None):
        super().__init__(name)
        self.spec = spec
        self.seed = int((getattr(spec, "params", None) or {}).get("seed", 0))
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def to(self, device):
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        return self

    def seeds(self, index: Sequence[int]) -> list[int]:
        """One seed per image, from (spec seed, attack name, the image's position in the id list)."""
        return [int(hashlib.sha256(f"{self.seed}:{self.name}:{int(k)}".encode()).hexdigest()[:15], 16) for k in index]

    def produce(self, x, target, ctx):
        from ..attacks.perimage import run_attack

        model = ctx.model

        def forward(z: torch.Tensor) -> torch.Tensor:
            return forward_logits(model, z, None)

        with torch.inference_mode(False), torch.enable_grad():
            x0 = x.clone()  # a normal tensor: the loader's batch was made in inference mode
            labels = target.long().clone()
            adv = run_attack(self.spec, forward, x0, labels, class_weights=self.class_weights,
                             seeds=self.seeds(ctx.index.tolist()))
        adv = adv.detach()
        if adv.shape != x.shape:
            raise RbsegError(f"attack '{self.name}' returned shape {tuple(adv.shape)} for inputs {tuple(x.shape)}")
        # the budget is the attack's contract: an input outside it would be scored as a stronger attack
        excess = float((adv - x).abs().amax()) if adv.numel() else 0.0
        if excess > float(self.spec.eps) + 1e-3 or float(adv.amin()) < -1e-3 or float(adv.amax()) > 255.001:
            raise RbsegError(f"attack '{self.name}' left its l-inf budget eps={self.spec.eps:g} or [0, 255] "
                             f"(max |delta| {excess:.4f})")
        return adv


class CorruptionInput(EvalInput):
    """A common corruption (``robustbench_seg.corruptions``: ImageNet-C style, one name at one
    severity) applied to the clean decoded batch (never on top of another input). Each image's
    random draws come from ``corruptions.corruption_seed(image id, name, severity, seed)``, so an
    image's corrupted version does not depend on its batch neighbours, the process or a resumed run.
    The output is checked (same shape, finite) and clamped to [0, 255]."""

    kind = "corruption"

    def __init__(self, corruption: str, severity: int, seed: int = 0, name: str | None = None):
        super().__init__(name or corruption_result_name(corruption, severity, seed))
        self.corruption, self.severity, self.seed = str(corruption), int(severity), int(seed)

    def seeds(self, image_ids: Sequence[str]) -> list[int]:
        from ..corruptions import corruption_seed

        return [int(corruption_seed(i, self.corruption, self.severity, self.seed)) for i in image_ids]

    @property
    def in_workers(self) -> bool:
        """A corruption the reference package computes (CPU only: glass blur, JPEG, spatter) is made
        in the decoding workers, beside the image's decoding, not in the main process."""
        from ..corruptions import CORRUPTIONS

        d = CORRUPTIONS.get(self.corruption)
        return d is not None and d.impl == "reference"

    def worker_prepare(self, image, image_id):
        from ..corruptions import corrupt

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        out = corrupt(x, self.corruption, self.severity, self.seeds([image_id]))
        return out[0].clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def produce(self, x, target, ctx):
        from ..corruptions import corrupt

        if self.name in ctx.prepared:  # made by the decoding workers (worker_prepare)
            out = ctx.prepared[self.name].to(x.device, non_blocking=True)
        else:
            out = corrupt(x, self.corruption, self.severity, self.seeds(ctx.image_ids()))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RbsegError(f"corruption '{self.name}' returned {shape} for inputs {tuple(x.shape)}")
        finite = not (out.dtype.is_floating_point or out.dtype.is_complex)  # the workers' uint8 images need no check (and no host sync)
        out = out.to(device=x.device, dtype=x.dtype)
        if not finite and not bool(torch.isfinite(out).all()):
            raise RbsegError(f"corruption '{self.name}' returned non-finite pixels (images {', '.join(ctx.image_ids()[:4])})")
        return out.clamp(0.0, 255.0)


INPUT_KINDS: dict[str, type[EvalInput]] = {"clean": CleanInput, "perturbation": PerturbationInput, "attack": AttackInput,
                                           "corruption": CorruptionInput}


def as_input(item, fit: FitMode | str = DEFAULT_FIT, clip: bool = DEFAULT_CLIP, position: int = 0) -> EvalInput:
    """None -> clean; a (3, h, w) tensor or array -> a universal perturbation; an EvalInput as is."""
    if isinstance(item, EvalInput):
        return item
    if item is None:
        return CleanInput()
    return PerturbationInput(item, fit, clip, name=f"perturbation {position}")


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


def model_failure(model_label: str, exc: BaseException, batch_no: int, n_batches: int, ids: Sequence[str],
                  index: torch.Tensor, producing: str | None = None) -> ModelFailure:
    """A user model's own error as one line naming the model, the batch, its images and (when not
    ``clean``) the input being made; the full traceback stays behind ``rbseg --debug``."""
    return ModelFailure(
        f"model '{model_label}' raised {type(exc).__name__} on batch {batch_no} of {n_batches} "
        f"(images {_ids_text(ids, index)}"
        + (f", while making input '{producing}'" if producing and producing != "clean" else "")
        + f"): {_one_line(exc)} (full traceback: rbseg --debug)"
    )


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
    """Confusion matrices (P inputs x S subsets x C x C, int64) after ``batches_done`` batches;
    ``per_image``: (K, N, C, C) int32 per-image confusion matrices of the K inputs that keep them
    (``EvalInput.keep_per_image``, in input order; zeros for images not evaluated yet), else None."""

    cms: torch.Tensor
    batches_done: int = 0
    per_image: torch.Tensor | None = None


def run_pass(
    model: torch.nn.Module,
    root: Path,
    split: str,
    ids: Sequence[str],
    deltas: Sequence[EvalInput | torch.Tensor | None],
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
    """One pass over ``ids``: confusion matrices for every (input, subset) pair.

    ``deltas``: the inputs, each an :class:`EvalInput` (clean, perturbation, attack, ...) or, as
    before, None for clean and a (3, h, w) perturbation in 0-255 units (fitted with ``fit`` /
    ``clip``). Inputs with ``keep_per_image`` also get per-image confusion matrices
    (``PassState.per_image``). ``batches`` (default: every image, grouped by size) may be a
    process's share of the plan (``torchrun`` sharding). ``membership``:
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
    inputs = [as_input(d, fit, clip, k) for k, d in enumerate(deltas)]
    keep = [k for k, inp in enumerate(inputs) if inp.keep_per_image]
    n_p, n_s = len(inputs), membership.shape[0]
    if membership.shape[1] != len(ids):
        raise ValueError(f"membership has {membership.shape[1]} columns for {len(ids)} ids")
    if batches is None:
        batches = size_batches([image_size(voc.image_path(root, i)) for i in ids], batch_size)
    if state is None:
        state = PassState(torch.zeros(n_p, n_s, NUM_CLASSES, NUM_CLASSES, dtype=torch.long))
    if keep and state.per_image is None:
        state = PassState(state.cms, state.batches_done,
                          torch.zeros(len(keep), len(ids), NUM_CLASSES, NUM_CLASSES, dtype=torch.int32))
    state = PassState(state.cms.to(device), state.batches_done,
                      None if state.per_image is None or not keep else state.per_image.to(device))
    member = membership.to(device=device, dtype=torch.float64)
    # the perturbations live on the device once; fitting them to a new image size copies nothing
    inputs = [inp.to(device) for inp in inputs]
    names = list(input_names) if input_names is not None else [
        inp.name if not isinstance(inp, PerturbationInput) else f"perturbation {k}" for k, inp in enumerate(inputs)]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def snapshot() -> PassState:
        return PassState(state.cms.cpu(), state.batches_done, None if state.per_image is None else state.per_image.cpu())

    todo = batches[state.batches_done:]
    loader = batch_loader(EvalImages.from_split(root, split, ids, worker_inputs=[i for i in inputs if i.in_workers]),
                          todo, device, num_workers)
    bar = progress_bar(progress, description, len(batches), state.batches_done)
    last_save = time.monotonic()
    try:
        with torch.inference_mode():
            for batch in loader:
                if isinstance(batch, str):
                    raise RbsegError(batch)
                images, masks, index, prepared = batch
                x = images.to(device, non_blocking=True).float()
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                target = masks.to(device, non_blocking=True)
                batch_no = state.batches_done + 1
                ctx = BatchContext(model, index, batch_no, ids, prepared)
                producing = None
                try:
                    # every input of this batch (clean, perturbed, attacked) as one stack of P x B
                    # images, run in forward chunks of at most `forward_batch` images (one size)
                    produced = []
                    for inp, name in zip(inputs, names):
                        producing = name
                        produced.append(inp.produce(x, target, ctx))
                    producing = None
                    stack = torch.cat(produced)
                    if channels_last:
                        stack = stack.contiguous(memory_format=torch.channels_last)
                    # each chunk's logits are reduced at once (finite flags, argmax): with many inputs
                    # (75 corruption x severity pairs) the P x B logits never exist together
                    finites, preds = [], []
                    for chunk in stack.split(forward_batch):
                        t = forward_logits(model, chunk, dtype)
                        if t.shape[1] != NUM_CLASSES:
                            raise RbsegError(f"the model returns {t.shape[1]} channels, expected {NUM_CLASSES} (VOC classes)")
                        finites.append(torch.isfinite(t).flatten(1).all(1))
                        preds.append(t.argmax(1))
                        del t
                    del stack, produced
                except RbsegError:
                    raise
                except Exception as exc:  # a user model's own error: one line naming the model and the batch
                    raise model_failure(model_label, exc, batch_no, len(batches), ids, index, producing) from exc
                # non-finite logits would be scored silently (argmax of NaN is 0): one reduction per
                # image on the device and one host synchronisation per batch
                finite = torch.cat(finites)
                if not bool(finite.all()):
                    raise NonFiniteLogits(_non_finite_message(model_label, finite, ids, index, names,
                                                              batch_no, len(batches)))
                pred = torch.cat(preds)
                per_image = batched_confusion_matrix(pred, target.repeat(n_p, 1, 1), validate=False)
                # (index came pinned with the batch: no host synchronisation for it on CUDA)
                index_dev = index.to(device, non_blocking=True)
                counts = torch.einsum("sb,pbk->psk", member[:, index_dev],
                                      per_image.view(n_p, len(index), -1).double())
                if keep:  # each image is written once (a re-run batch after a resume writes the same values)
                    state.per_image[:, index_dev] = per_image.view(n_p, len(index), NUM_CLASSES, NUM_CLASSES)[keep].int()
                # one assignment: an interruption leaves either the old or the new state, never half
                state = PassState(state.cms + counts.round().long().view_as(state.cms), state.batches_done + 1,
                                  state.per_image)
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
    name = (voc.synth_meta(root) or {}).get("dataset")
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
    if info.get("published"):  # e.g. torchvision's own figures for its weights, shown beside ours
        record["published"] = info["published"]
    adapter = adapter_for(model)
    if adapter != DEFAULT_ADAPTER:  # a declared normalisation / padding (models.adapters)
        record["adapter"] = adapter.to_dict()
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

    ``with_cooccurrence``: a third item, (co-occurrence splits used, requested but missing, the cooc
    thresholds used: name -> T, scaled on a bench-like SynthVOC tree), all None when no subset was
    computed (``data.subsets`` warns about a missing one)."""
    chosen: dict[str, list[str]] = {"all": list(ids)}
    if split == "ooc":
        chosen["ooc"] = list(ids)
    unavailable: dict[str, str] = {}
    wanted = subset_names(subsets)
    if not wanted:
        return (chosen, unavailable, (None, None, None)) if with_cooccurrence else (chosen, unavailable)
    from ..data.subsets import compute_subsets

    report = compute_subsets(root, split)
    for name in wanted:
        if name in report.subsets:
            chosen[name] = list(report.subsets[name])
        else:
            unavailable[name] = report.unavailable.get(name, "not computed for this split")
    if not with_cooccurrence:
        return chosen, unavailable
    return chosen, unavailable, (list(report.cooccur_splits_used), list(report.cooccur_splits_missing),
                                 dict(report.cooc_thresholds))


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
    attacks=None,
    eps=None,
    steps: int | None = None,
    attack_preset: str = "quick",
    attack_dtype: str | torch.dtype = "fp32",
    attack_options: dict | None = None,
    worst_max_rounds: int | None = None,
    corruptions=None,
    severities=None,
    corruption_seed: int = 0,
) -> list[store.ResultRecord]:
    """Evaluate one model clean, under each perturbation and each per-image attack, on the full
    split and every subset, in one pass.

    ``attacks`` (names, a comma string, ``all``; None: none), ``eps`` (0-255 units or ``4/255``
    strings; None: the preset's), ``steps`` and ``attack_preset`` (``quick`` / ``full``) go to
    ``attacks.perimage.build_attacks`` (``attack_options``: its other keyword options); attacks run
    in ``attack_dtype`` (fp32 by default, bf16 recorded). Each attack result also stores per-image
    confusion matrices; whenever two or more attack results exist at one eps, ``worst-eps<e>`` (the
    per-image worst case, :func:`worst_cases`) is written and returned after them. ``corruptions``
    (``all`` = the 15 benchmark corruptions, ``extra``, names; None: none) at ``severities`` (``1-5``,
    ``1,3,5``; None: 1-5) with ``corruption_seed`` add one :class:`CorruptionInput` per (corruption,
    severity) to the same pass (results ``corruption-<name>-s<severity>``, kind ``corruption``). Under
    ``torchrun`` the images are sharded over the processes (:class:`Shard`); rank 0 writes.

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
    dev = distributed_device(resolve_device(device))
    torch_dtype = resolve_dtype(dtype, dev)
    attack_torch_dtype = resolve_dtype(attack_dtype, dev) if attack_dtype not in (None, "auto") else torch.float32
    channels_last = default_channels_last(dev) if channels_last is None else bool(channels_last)
    perts = resolve_perturbations(perturbations, allow_any_magnitude)
    if attacks is not None and attack_torch_dtype not in DTYPE_NAMES:
        raise RbsegError(f"unsupported attack dtype {attack_dtype}")
    specs = resolve_attacks(attacks, eps, steps, attack_preset,
                            {"dtype": DTYPE_NAMES[attack_torch_dtype], **(attack_options or {})})
    corruption_pairs = resolve_corruptions(corruptions, severities)
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
    shard = Shard.from_env(dev)

    protocol = {
        "dataset": dataset_name(root), "data_root": str(root), "data_fingerprint": fingerprint, "split": split,
        "n_images": len(ids), "fit": fit.value, "clip": bool(clip), "dtype": DTYPE_NAMES[torch_dtype],
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "batch_size": int(batch_size), "channels_last": bool(channels_last), **_versions(), "seed": SEED,
        # the splits the cooc<T> subsets counted co-occurrences over (null: no subset computed)
        "cooccur_splits_used": cooc[0], "cooccur_splits_missing": cooc[1],
        "cooc_thresholds": cooc[2],  # name -> the threshold used (data.subsets scales them on SynthVOC bench)
        "duplicate_ids": {"count": sum(duplicates.values()), "ids": dict(sorted(duplicates.items()))},
        "world_size": shard.world,
    }
    inputs: list[tuple[EvalInput, dict]] = [
        (CleanInput(), {"name": "clean", "kind": "clean", "sha256": None, "meta": {}, "max_abs": 0.0})] + [
        (PerturbationInput(p.tensor(), fit, clip, name=p.name),
         {"name": p.name, "kind": "perturbation", "sha256": p.sha256, "meta": p.meta, "max_abs": perturbation_max_abs(p),
          **({"allow_any_magnitude": True} if allow_any_magnitude else {})}) for p in perts
    ]
    inputs += attack_inputs(specs, root, progress=progress and shard.is_writer)
    inputs += corruption_inputs(corruption_pairs, int(corruption_seed))
    done: dict[str, store.ResultRecord] = {}
    todo = []
    for inp, pert_rec in inputs:
        path = store.result_path(out, model_rec["name"], pert_rec["name"], protocol)
        cached = None if force else store.cached_record(path, store.cache_key(model_rec, pert_rec, protocol), subset_hashes)
        if cached is not None and inp.keep_per_image and _stored_per_image(cached, path, ids) is None:
            cached = None  # an attack result whose statistics file is gone or damaged is recomputed
        if cached is not None:
            done[pert_rec["name"]] = cached
        else:
            todo.append((inp, pert_rec))
    if todo:
        job = _Job(model, model_rec, root, split, ids, subset_ids, unavailable, protocol, Path(out), shard)
        for rec in job.run(todo, batch_size=batch_size, device=dev, dtype=torch_dtype, num_workers=num_workers,
                           progress=progress and shard.is_writer, force=force, checkpoint_every_s=checkpoint_every_s):
            done[rec.perturbation["name"]] = rec
    records = [done[pert_rec["name"]] for _, pert_rec in inputs]
    if shard.is_writer:
        records += worst_cases(out, model_rec, protocol, ids, subset_ids, unavailable, force=force,
                               max_rounds=worst_max_rounds)
    shard.barrier()  # no process starts the next model while rank 0 still writes
    return records


# --- per-image attacks: specs, class weights, worst case -------------------------------------------

WORST_PREFIX = "worst-eps"


def resolve_attacks(attacks, eps=None, steps: int | None = None, preset: str = "quick", options: dict | None = None) -> list:
    """``attacks.perimage.build_attacks`` for ``--attacks`` (names or a comma string; ``all``; None /
    ``none``: no attack) and ``--eps`` (0-255 units, ``4/255`` accepted; None: the preset's)."""
    if attacks is None or (isinstance(attacks, str) and attacks.strip() in ("", "none")) or (
            isinstance(attacks, (list, tuple)) and not attacks):
        return []
    from ..attacks.perimage import build_attacks, parse_eps

    names = [a.strip() for a in attacks.split(",") if a.strip()] if isinstance(attacks, str) else [str(a) for a in attacks]
    if isinstance(eps, str):
        eps_values = parse_eps(eps)
    elif eps is None:
        eps_values = None
    else:
        eps_values = [v for e in eps for v in (parse_eps(e) if isinstance(e, str) else [float(e)])]
    try:
        specs = build_attacks(names, eps_values, steps=steps, preset=preset, **(options or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise RbsegError(f"--attacks {','.join(names)}: {_one_line(exc)}") from None
    keys = [s.key() for s in specs]
    if len(set(keys)) != len(keys):
        raise RbsegError(f"two attacks share a key ({', '.join(k for k in keys if keys.count(k) > 1)})")
    for key in keys:
        if key == "clean" or key.startswith(WORST_PREFIX):
            raise RbsegError(f"an attack may not be named '{key}' (a reserved result name)")
    return specs


def needs_class_weights(spec) -> bool:
    """SEA's balanced masked cross-entropy weights pixels by inverse class frequency."""
    loss = str((getattr(spec, "params", None) or {}).get("loss", "")).lower().replace("_", "-")
    return "bmce" in spec.name.lower() or loss in ("bmce", "balanced-masked-ce", "balanced-mce")


CLASS_WEIGHT_SPLITS = ("train", "train_aug")


def class_weights(root: Path, splits: Sequence[str] = CLASS_WEIGHT_SPLITS, progress: bool = False) -> tuple[np.ndarray, dict]:
    """(21 weights, record): ``attacks.losses.balanced_class_weights`` (inverse per-class pixel
    frequency) of the first of ``splits`` the tree has (the training split; recorded). The pixel counts
    are counted once per split content (its data fingerprint) and cached in ``cache_dir()``."""
    split = next((s for s in splits if voc.split_file(root, s).is_file()), None)
    if split is None:
        raise DataError(f"balanced masked CE (sea-bmce) needs a training split ({' or '.join(splits)}) for the class "
                        "frequencies; none is listed", voc.split_file(root, splits[0]))
    ids = list(dict.fromkeys(voc.read_split(root, split)))
    fingerprint = data_fingerprint(root, split, ids)
    memo = cache_dir() / "class-pixels" / f"{fingerprint}.json"
    counts = None
    try:
        counts = np.asarray(json.loads(memo.read_text())["counts"], dtype=np.int64)
        if counts.shape != (NUM_CLASSES,):
            counts = None
    except (OSError, ValueError, KeyError, TypeError):
        counts = None
    if counts is None:
        counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        for image_id in ids:
            mask = voc.read_mask(voc.mask_path(root, image_id, split)).astype(np.int64).ravel()
            counts += np.bincount(mask[mask != 255], minlength=NUM_CLASSES)[:NUM_CLASSES]
        atomic_write_json(memo, {"counts": counts.tolist(), "split": split, "root": str(root)})
    if not (counts > 0).any():
        raise DataError(f"split '{split}' has no labelled pixel", voc.split_file(root, split))
    from ..attacks.losses import balanced_class_weights

    weights = balanced_class_weights(counts, NUM_CLASSES).numpy().astype(np.float32)
    record = {"split": split, "n_images": len(ids), "data_fingerprint": fingerprint,
              "rule": "attacks.losses.balanced_class_weights of the split's per-class pixel counts",
              "pixel_counts_sha256": hashlib.sha256(counts.astype("<i8").tobytes()).hexdigest(),
              "sha256": hashlib.sha256(weights.astype("<f4").tobytes()).hexdigest()}
    return weights, record


def attack_record(spec, weights_record: dict | None = None) -> dict:
    """The result's ``perturbation`` object for an attack: name (its key), kind, every parameter
    (``params``: step size, loss, restarts, seed, schedule, ...), the implementation version, the
    attack's dtype and seed; its sha256 (of all that) is the cache key."""
    params = dict(spec.params)
    attack = {"name": spec.name, "key": spec.key(), "eps": float(spec.eps), "steps": int(spec.steps),
              "params": params, "version": str(spec.version), "dtype": str(params.get("dtype", "float32")),
              "seed": int(params.get("seed", 0))}
    if weights_record is not None:
        attack["class_weights"] = weights_record
    attack = json.loads(json.dumps(attack, sort_keys=True, default=str))
    sha = hashlib.sha256(json.dumps(attack, sort_keys=True).encode()).hexdigest()
    return {"name": spec.key(), "kind": "attack", "sha256": sha, "meta": {}, "max_abs": float(spec.eps), "attack": attack}


def attack_inputs(specs, root: Path, progress: bool = False) -> list[tuple[EvalInput, dict]]:
    weights = None
    out = []
    for spec in specs:
        cw, cw_rec = None, None
        if needs_class_weights(spec):
            weights = weights or class_weights(root, progress=progress)
            cw, cw_rec = weights
        rec = attack_record(spec, cw_rec)
        out.append((AttackInput(spec, rec["name"], cw), rec))
    return out


# --- common corruptions (robustbench_seg.corruptions) ----------------------------------------------

CORRUPTION_PREFIX = "corruption-"
CORRUPTION_SEEDING = "corruptions.corruption_seed(image id, corruption, severity, seed), one seed per image"


def corruption_result_name(corruption: str, severity: int, seed: int = 0) -> str:
    """The result name of a corruption at a severity: ``corruption-<name>-s<severity>`` (and
    ``-seed<N>`` for a seed other than 0, so results of two seeds sit side by side)."""
    return f"{CORRUPTION_PREFIX}{corruption}-s{int(severity)}" + (f"-seed{int(seed)}" if int(seed) else "")


def resolve_corruptions(corruptions, severities=None) -> list[tuple[str, int]]:
    """(corruption, severity) pairs for ``--corruptions`` (``all``: the 15 benchmark corruptions,
    ``extra``: the 4 validation ones, names; a comma string or a list; None / ``none``: none) and
    ``--severities`` (``1-5``, ``1,3,5`` or ints; None: 1-5), parsed by ``corruptions.parse_*``."""
    if corruptions is None or (isinstance(corruptions, str) and corruptions.strip() in ("", "none")) or (
            isinstance(corruptions, (list, tuple)) and not corruptions):
        if severities is not None:
            raise RbsegError("--severities applies to corruptions: add --corruptions all|extra|NAME,...")
        return []
    from ..corruptions import parse_corruptions, parse_severities

    text = corruptions if isinstance(corruptions, str) else ",".join(str(c) for c in corruptions)
    try:
        names = list(dict.fromkeys(parse_corruptions(text)))
        if severities is None:
            levels = parse_severities("1-5")
        elif isinstance(severities, str):
            levels = parse_severities(severities)
        elif isinstance(severities, int):
            levels = parse_severities(str(severities))
        else:
            levels = parse_severities(",".join(str(int(v)) for v in severities))
    except (ValueError, KeyError, TypeError, RbsegError) as exc:
        raise RbsegError(f"--corruptions {text} / --severities {severities}: {_one_line(exc)}") from None
    levels = sorted(dict.fromkeys(int(v) for v in levels))
    if not names or not levels:
        raise RbsegError(f"--corruptions {text} / --severities {severities}: nothing to evaluate")
    return [(n, s) for n in names for s in levels]


def corruption_record(corruption: str, severity: int, seed: int = 0) -> dict:
    """The result's ``perturbation`` object for a corruption: name, kind ``corruption`` and
    ``corruption`` = {name, severity, seed, version (``corruptions.VERSION``), impl (torch /
    reference), seeding rule, source (the clean image)}; its sha256 (of all that) is the cache key."""
    from ..corruptions import CORRUPTIONS, VERSION

    definition = CORRUPTIONS.get(corruption) if isinstance(CORRUPTIONS, dict) else None
    if definition is None:
        raise RbsegError(f"unknown corruption '{corruption}'")
    info = {"name": str(corruption), "severity": int(severity), "seed": int(seed), "version": str(VERSION),
            "impl": str(getattr(definition, "impl", "torch")), "seeding": CORRUPTION_SEEDING,
            "source": "the clean decoded image (never stacked on another input)"}
    sha = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return {"name": corruption_result_name(corruption, severity, seed), "kind": "corruption", "sha256": sha,
            "meta": {}, "max_abs": None, "corruption": info}


def corruption_inputs(pairs: Sequence[tuple[str, int]], seed: int = 0) -> list[tuple[EvalInput, dict]]:
    out = []
    for name, severity in pairs:
        rec = corruption_record(name, severity, seed)
        out.append((CorruptionInput(name, severity, seed, name=rec["name"]), rec))
    return out


def _stored_per_image(record: store.ResultRecord, path: Path, ids: Sequence[str]) -> np.ndarray | None:
    """The record's per-image statistics when they belong to ``ids`` (loaded once), else None."""
    try:
        array = store.load_per_image(record, path)
    except RbsegError:
        return None
    ok = array.shape == (len(ids), NUM_CLASSES, NUM_CLASSES) and record.per_image.get("ids_sha256") == store.ordered_ids_sha256(ids)
    return array if ok else None


def eps_text(eps: float) -> str:
    return f"{float(eps):g}"


def worst_case(cms: np.ndarray, max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray, int, float | None]:
    """Worst case over A attacks from per-image confusion matrices (A, N, C, C).

    Returns (chosen attack per image for mIoU: ``evaluation.worstcase.greedy_worst_case``, SEA's
    greedy; chosen attack per image for pixel accuracy: the fewest correct pixels, exact; the greedy's
    rounds; the greedy's own mIoU)."""
    from .worstcase import greedy_worst_case, stats_from_confusion, worst_case_pixel_acc

    stats = stats_from_confusion(torch.from_numpy(cms))  # (A, N, C, 3): intersection, union, gt area
    kwargs = {} if max_rounds is None else {"max_rounds": int(max_rounds)}
    wc = greedy_worst_case(stats, **kwargs)
    pix = np.asarray(worst_case_pixel_acc(stats).choice, dtype=np.int64)
    return np.asarray(wc.choice, dtype=np.int64), pix, int(wc.rounds), float(wc.miou)


def worst_cases(out, model_rec: dict, protocol: dict, ids: Sequence[str], subset_ids: dict[str, list[str]],
                unavailable: dict[str, str], force: bool = False, max_rounds: int | None = None) -> list[store.ResultRecord]:
    """``worst-eps<e>`` for every eps at which two or more attack results of this model and protocol
    are stored (this run's and earlier ones: adding an attack later recomputes the worst case from the
    stored per-image statistics, without re-running the others), on the full split and every subset
    (the greedy restricted to the subset's images). Reused when its members are unchanged."""
    folder = store.result_path(out, model_rec["name"], "clean", protocol).parent
    if not folder.is_dir():
        return []
    subset_hashes = {name: ids_hash(s) for name, s in subset_ids.items()}
    members: dict[float, list[tuple[store.ResultRecord, np.ndarray]]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            rec = store.read_result(path)
        except RbsegError:
            continue
        pert = rec.perturbation
        if pert.get("kind") != "attack" or rec.model.get("sha256") != model_rec.get("sha256"):
            continue
        if {k: rec.protocol.get(k) for k in store.KEY_PROTOCOL_FIELDS} != {k: protocol.get(k) for k in store.KEY_PROTOCOL_FIELDS}:
            continue
        stats = _stored_per_image(rec, path, ids)
        if stats is None:
            continue
        members.setdefault(float(pert["attack"]["eps"]), []).append((rec, stats))
    index_of = {image_id: k for k, image_id in enumerate(ids)}
    records = []
    for eps, group in sorted(members.items()):
        if len(group) < 2:
            continue
        group.sort(key=lambda g: g[0].perturbation["name"])
        names = [g[0].perturbation["name"] for g in group]
        shas = [g[0].perturbation["sha256"] for g in group]
        pert_rec = {"name": f"{WORST_PREFIX}{eps_text(eps)}", "kind": "worst",
                    "sha256": hashlib.sha256(json.dumps({"members": sorted(shas), "max_rounds": max_rounds}).encode()).hexdigest(),
                    "meta": {}, "max_abs": eps,
                    "worst": {"eps": eps, "attacks": [{"name": n, "sha256": s} for n, s in zip(names, shas)],
                              "max_rounds": max_rounds,
                              "rule": "mIoU: SEA's greedy per-image selection (evaluation.worstcase); pixel accuracy: per image, "
                                      "the attack with the fewest correct pixels"}}
        path = store.result_path(out, model_rec["name"], pert_rec["name"], protocol)
        cached = None if force else store.cached_record(path, store.cache_key(model_rec, pert_rec, protocol), subset_hashes)
        if cached is not None:
            records.append(cached)
            continue
        cms = np.stack([stats for _, stats in group])  # (A, N, C, C), loaded and checked above
        subsets = {}
        for name, sub in subset_ids.items():
            cols = np.array([index_of[i] for i in sub], dtype=np.int64)
            part = cms[:, cols]
            chosen, pix, rounds, greedy_miou = worst_case(part, max_rounds)
            rows = np.arange(len(cols))
            metrics = metrics_from_confusion(torch.from_numpy(part[chosen, rows].sum(0))).to_dict()
            metrics["pixel_acc"] = metrics_from_confusion(torch.from_numpy(part[pix, rows].sum(0))).to_dict()["pixel_acc"]
            subsets[name] = {"n_images": len(sub), "ids_hash": ids_hash(sub), "metrics": metrics,
                             "worst": {"rounds": rounds, "greedy_miou": greedy_miou,
                                       "chosen": {n: int((chosen == a).sum()) for a, n in enumerate(names)}}}
        rec = store.ResultRecord(model=model_rec, perturbation=pert_rec, protocol=protocol, subsets=subsets,
                                 unavailable_subsets=dict(unavailable), created=store.now_utc())
        store.write_result(rec, out)
        records.append(rec)
    return records


# --- torchrun: exact sharding of the batches -----------------------------------------------------

@dataclass
class Shard:
    """This process's place in a ``torchrun`` job (WORLD_SIZE / RANK); one process: rank 0 of 1.

    The plan's batches are dealt round robin (``batches[rank::world]``): every image is evaluated by
    exactly one process, in the same batch as with one process (so the same predictions and random
    starts); confusion matrices and per-image statistics are summed with ``all_reduce``; rank 0 writes."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> Shard:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        dist = torch.distributed
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            import atexit

            atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def batches(self, batches: list[list[int]]) -> list[list[int]]:
        return batches[self.rank::self.world]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def distributed_device(dev: torch.device) -> torch.device:
    """Under torchrun with CUDA: this process's GPU (LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dev


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
    shard: Shard = field(default_factory=Shard)

    def membership(self) -> torch.Tensor:
        index_of = {image_id: k for k, image_id in enumerate(self.ids)}
        member = torch.zeros(len(self.subset_ids), len(self.ids), dtype=torch.bool)
        for s, subset in enumerate(self.subset_ids.values()):
            member[s, [index_of[i] for i in subset]] = True
        return member

    def plan_hash(self, todo, batches) -> str:
        """Identifies a pass: what it computes, in which batch order, and this process's share (a
        partial file is only resumed by the same plan, rank and world size)."""
        plan = {
            "keys": [store.cache_key(self.model_rec, rec, self.protocol) for _, rec in todo],
            "subsets": {name: ids_hash(s) for name, s in self.subset_ids.items()},
            "ids": ids_hash(self.ids), "batches": batches,
            **({"rank": self.shard.rank, "world": self.shard.world} if self.shard.world > 1 else {}),
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
        keep = [k for k, (inp, _) in enumerate(todo) if inp.keep_per_image]
        state = None if force else _load_partial(partial, plan, shape, (len(keep), len(self.ids)) if keep else None)

        def save_partial(s: PassState) -> None:
            atomic_torch_save(partial, {"plan": plan, "cms": s.cms, "batches_done": s.batches_done,
                                        "per_image": s.per_image})

        torch.manual_seed(SEED)
        mine = self.shard.batches(batches)
        state = run_pass(
            self.model, self.root, self.split, self.ids, [inp for inp, _ in todo],
            self.membership(), fit=self.protocol["fit"], clip=self.protocol["clip"], batch_size=batch_size,
            device=device, dtype=dtype, num_workers=default_num_workers(device) if num_workers is None else num_workers,
            channels_last=self.protocol["channels_last"], batches=mine, state=state, checkpoint=save_partial,
            checkpoint_every_s=checkpoint_every_s, progress=progress,
            description=f"{self.model_rec['name']}: {len(todo)} input(s) x {len(self.ids)} images"
                        + (f" (rank {self.shard.rank} of {self.shard.world})" if self.shard.world > 1 else ""),
            model_label=str(self.model_rec.get("spec") or self.model_rec["name"]),
            input_names=[rec["name"] for _, rec in todo],
        )
        cms, per_image = state.cms, state.per_image
        if self.shard.world > 1:  # every image was evaluated by exactly one process: the sums are exact
            comm = device if device.type == "cuda" else torch.device("cpu")
            cms = self.shard.sum_(cms.to(comm)).cpu()
            if per_image is not None:
                per_image = self.shard.sum_(per_image.to(comm)).cpu()
        records, created = [], store.now_utc()
        for p, (_, pert_rec) in enumerate(todo):
            subsets = {
                name: {"n_images": len(self.subset_ids[name]), "ids_hash": ids_hash(self.subset_ids[name]),
                       "metrics": metrics_from_confusion(cms[p, s]).to_dict()}
                for s, name in enumerate(names)
            }
            rec = store.ResultRecord(model=self.model_rec, perturbation=pert_rec, protocol=self.protocol,
                                     subsets=subsets, unavailable_subsets=dict(self.unavailable), created=created)
            if self.shard.is_writer:
                stats = per_image[keep.index(p)].numpy() if p in keep else None
                store.write_result(rec, self.out, per_image=stats, ids=self.ids if stats is not None else None)
            records.append(rec)
        partial.unlink(missing_ok=True)
        return records


def _load_partial(path: Path, plan: str, shape: tuple[int, ...], per_image_shape: tuple[int, int] | None = None) -> PassState | None:
    if not path.is_file():
        return None
    try:
        saved = safe_torch_load(path)
        if saved.get("plan") != plan or tuple(saved["cms"].shape) != shape:
            return None
        per_image = saved.get("per_image")
        if per_image_shape is not None:
            if not isinstance(per_image, torch.Tensor) or tuple(per_image.shape) != (*per_image_shape, NUM_CLASSES, NUM_CLASSES):
                return None
            per_image = per_image.int()
        else:
            per_image = None
        return PassState(saved["cms"].long(), int(saved["batches_done"]), per_image)
    except (RbsegError, AttributeError, KeyError, TypeError, ValueError):
        pass
    return None  # absent, foreign or damaged: start the pass over
