"""Surrogate classifiers for UAP: torchvision's ImageNet ResNet-152 / GoogLeNet, or the same
architectures trained on a VOC-layout dataset's object crops (SynthVOC: an offline stand-in for
the ImageNet classifiers of Table 4, so the black-box transfer runs end to end without weights).

Object crops (:func:`extract_crops`): one per object of a split, from the Annotations XML boxes
(or, without XML, from the instance masks: the box of each instance id's pixels, labelled with
the majority class of those pixels), resized (bilinear, antialiased) to ``input_size`` x
``input_size`` without keeping the aspect ratio (R-CNN's "warp"; on SynthVOC tiny a small CNN
reaches 51% val accuracy on warped crops against 37% on square crops with context, the
``square`` mode). Labels are the 20 foreground classes, 0 = aeroplane ... 19 = tvmonitor.

Training (:func:`train_surrogate`): the real torchvision architecture (``resnet152`` or
``googlenet`` with ``aux_logits=False`` and PyTorch's default init), random init,
``num_classes=20``, cross-entropy,
AdamW with a cosine schedule, random flips and 2-px shifts. Every model sees inputs in 0-255
through :class:`Classifier255` (``model(normalize(x255))``), like the segmentation models.
The ``tiny`` preset (:data:`PRESETS`) is sized so each surrogate trains in about a minute on two
CPU cores; ``paper`` is for a GPU and a real VOC tree.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..constants import MEAN_255, VOC_CLASSES
from ..data import voc
from ..data.transforms import normalize
from ..errors import CheckpointError, DataError, RbsegError
from ..io import atomic_torch_save, ids_hash, safe_torch_load, sha256_file

FORMAT = "rbseg-surrogate/1"
SURROGATE_ARCHS = ("resnet152", "googlenet")
FOREGROUND = VOC_CLASSES[1:]


@dataclass(frozen=True)
class SurrogatePreset:
    input_size: int
    epochs: dict[str, int]  # per architecture
    batch_size: int
    lr: float
    weight_decay: float
    description: str
    state_every: int = 1  # epochs between resume states (a ResNet-152 state with AdamW moments is ~0.7 GB)


PRESETS: dict[str, SurrogatePreset] = {
    "tiny": SurrogatePreset(48, {"resnet152": 4, "googlenet": 12}, 32, 1e-3, 1e-4,
                            "48-px crops, batch 32; ResNet-152 4 epochs, GoogLeNet 12: about a minute each on 2 CPU cores",
                            state_every=2),
    "paper": SurrogatePreset(224, {"resnet152": 30, "googlenet": 30}, 64, 1e-3, 1e-4,
                             "224-px crops, 30 epochs, batch 64: a GPU job on real VOC"),
}


# ---------------------------------------------------------------------------------------------
# Architectures and the 0-255 wrapper
# ---------------------------------------------------------------------------------------------

def build_classifier(arch: str, num_classes: int = len(FOREGROUND), width_per_group: int = 64) -> nn.Module:
    """torchvision's own architecture, random init (GoogLeNet without auxiliary heads). ``width_per_group``
    (ResNet-152 only; torchvision's option, 64 = the standard network): narrower bottlenecks with the
    same 152 layers, for the ``micro`` smoke test (8: 6.6 M parameters, 26 MB, instead of 58 M, 234 MB)."""
    import torchvision

    if arch != "resnet152" and width_per_group != 64:
        raise RbsegError(f"width_per_group applies to resnet152 only, not {arch}")
    if arch == "resnet152":  # last BN of each block zero-initialised: torchvision's option for fast early training
        return torchvision.models.resnet152(weights=None, num_classes=num_classes, zero_init_residual=True,
                                            width_per_group=int(width_per_group))
    if arch == "googlenet":
        # PyTorch's default (Kaiming-uniform) init: with torchvision's truncated-normal init (init_weights=True)
        # GoogLeNet stays at the class prior for a dozen epochs on SynthVOC tiny; with this one it learns
        return torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                                            transform_input=False, init_weights=False)
    raise RbsegError(f"unknown surrogate architecture '{arch}' (choose from {', '.join(SURROGATE_ARCHS)})")


class Classifier255(nn.Module):
    """``net(normalize(x255))``: a classifier fed with 0-255 pixels, like every model of the suite."""

    def __init__(self, net: nn.Module, classes: list[str], input_size: int | None = None):
        super().__init__()
        self.net = net
        self.classes = list(classes)
        self.input_size = input_size

    def forward(self, x255: torch.Tensor) -> torch.Tensor:
        out = self.net(normalize(x255))
        return out.logits if hasattr(out, "logits") else out


_IMAGENET_WEIGHTS = {"resnet152": "ResNet152_Weights", "googlenet": "GoogLeNet_Weights"}


def imagenet_classifier(arch: str, weights: str | Path | None = None) -> tuple[Classifier255, dict]:
    """torchvision's ImageNet ``arch`` with its weights: through the weights API (the torch hub
    cache, or a download), or from a local state-dict file ``weights`` (loaded safely)."""
    import torchvision

    if arch not in _IMAGENET_WEIGHTS:
        raise RbsegError(f"unknown ImageNet surrogate '{arch}' (choose from {', '.join(SURROGATE_ARCHS)} or a checkpoint path)")
    enum = getattr(torchvision.models, _IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1
    if weights is None:
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as exc:  # URLError, OSError, HTTPError: offline or blocked
            raise RbsegError(
                f"cannot get torchvision's ImageNet weights for {arch} ({type(exc).__name__}: {exc}); offline? "
                f"download {enum.url} on a connected machine and pass it with --weights PATH "
                f"(or put it in the torch hub cache, ~/.cache/torch/hub/checkpoints/)"
            ) from None
        source = enum.url
        sha = None
    else:
        state = safe_torch_load(weights)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        source = str(weights)
        sha = sha256_file(weights)
    if arch == "googlenet":
        net = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    else:
        net = torchvision.models.resnet152(weights=None)
    if not isinstance(state, dict):
        raise CheckpointError(f"not a state dict for torchvision {arch}", weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"weights do not fit torchvision {arch} ({first})", weights or enum.url) from None
    if arch == "googlenet":
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    classes = list(enum.meta["categories"])
    info = {"name": arch, "kind": "imagenet", "arch": arch, "weights": source, "sha256": sha, "num_classes": len(classes)}
    return Classifier255(net, classes, input_size=224).eval(), info


def load_surrogate_checkpoint(path: str | Path) -> tuple[Classifier255, dict]:
    """A checkpoint written by :func:`train_surrogate` (format ``rbseg-surrogate/1``)."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"not an rbseg surrogate checkpoint (expected format {FORMAT})", path)
    for key in ("arch", "num_classes", "state_dict", "classes", "input_size"):
        if key not in ckpt:
            raise CheckpointError(f"surrogate checkpoint lacks '{key}'", path)
    if ckpt.get("complete") is False:
        raise CheckpointError("unfinished surrogate training state (resume it with train-surrogate --resume)", path)
    net = build_classifier(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt.get("width_per_group", 64)))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit {ckpt['arch']} ({str(exc).strip().splitlines()[0]})", path) from None
    info = {"name": path.stem, "kind": "surrogate", "arch": ckpt["arch"], "path": str(path), "sha256": sha256_file(path),
            "width_per_group": int(ckpt.get("width_per_group", 64)),
            "num_classes": int(ckpt["num_classes"]), "input_size": int(ckpt["input_size"]),
            "metrics": ckpt.get("metrics", {}), "data": ckpt.get("data", {}), "config": ckpt.get("config", {})}
    return Classifier255(net, list(ckpt["classes"]), input_size=int(ckpt["input_size"])).eval(), info


def load_classifier(spec: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None) -> tuple[Classifier255, dict]:
    """``resnet152`` / ``googlenet`` (ImageNet weights) or a surrogate checkpoint path."""
    spec_s = str(spec)
    if spec_s in SURROGATE_ARCHS:
        model, info = imagenet_classifier(spec_s, weights)
    elif Path(spec_s).expanduser().is_file():
        if weights is not None:
            raise RbsegError("--weights only applies to the ImageNet surrogates resnet152 / googlenet")
        model, info = load_surrogate_checkpoint(Path(spec_s).expanduser())
    else:
        raise RbsegError(f"surrogate '{spec_s}' is neither {' / '.join(SURROGATE_ARCHS)} nor an existing checkpoint file")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device), info


# ---------------------------------------------------------------------------------------------
# Object crops
# ---------------------------------------------------------------------------------------------

def _boxes_from_instances(root: Path, image_id: str, split: str) -> list[tuple[int, tuple[int, int, int, int]]]:
    inst = voc.read_label_png(voc.instance_path(root, image_id))[0]
    cls = voc.read_mask(voc.mask_path(root, image_id, split))
    out = []
    for k in np.unique(inst):
        if k in (0, 255):
            continue
        ys, xs = np.nonzero(inst == k)
        labels = cls[ys, xs]
        labels = labels[(labels > 0) & (labels < 255)]
        if labels.size == 0:
            continue
        label = int(np.bincount(labels).argmax())
        out.append((label, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
    return out


def square_crop(image: np.ndarray, bbox: tuple[int, int, int, int], size: int) -> np.ndarray:
    """(H, W, 3) uint8 image, VOC box (1-based inclusive) -> (3, size, size) uint8 square crop."""
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[:2]
    x0, y0, x1, y1 = bbox[0] - 1, bbox[1] - 1, bbox[2], bbox[3]  # 0-based, exclusive end
    side = max(x1 - x0, y1 - y0, 1)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    sx = int(round(cx - side / 2.0))
    sy = int(round(cy - side / 2.0))
    sx = min(max(sx, 0), max(w - side, 0))
    sy = min(max(sy, 0), max(h - side, 0))
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.array([round(m) for m in MEAN_255], dtype=np.uint8)
    patch = image[sy:sy + side, sx:sx + side]
    canvas[: patch.shape[0], : patch.shape[1]] = patch
    t = torch.from_numpy(canvas).permute(2, 0, 1).contiguous()
    if side != size:
        t = TF.resize(t, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return t


def warp_crop(image: np.ndarray, bbox: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """(H, W, 3) uint8 image, VOC box (1-based inclusive) -> (3, size, size) uint8: the box itself,
    resized to a square (aspect not kept: R-CNN's "warp")."""
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[:2]
    x0, y0 = max(bbox[0] - 1, 0), max(bbox[1] - 1, 0)
    x1, y1 = min(max(bbox[2], x0 + 1), w), min(max(bbox[3], y0 + 1), h)
    t = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).contiguous()
    if t.shape[-2:] != (size, size):
        t = TF.resize(t, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return t


CROP_MODES = {"warp": warp_crop, "square": square_crop}


def extract_crops(
    root: str | Path, split: str = "train", size: int = 32, min_side: int = 4, source: str = "auto",
    ids: list[str] | None = None, mode: str = "warp",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Object crops of a split: (N, 3, size, size) uint8, labels (N,) int64 in 0..19, and the id of
    each crop's image. ``source``: ``annotations`` (XML boxes), ``instances`` (SegmentationObject +
    class masks) or ``auto`` (XML where present, else instances). Boxes with a side below
    ``min_side`` pixels are skipped. ``mode``: ``warp`` (the box resized to a square, default) or
    ``square`` (a square of side max(w, h) around the box, with image context)."""
    if mode not in CROP_MODES:
        raise RbsegError(f"crop mode must be one of {', '.join(CROP_MODES)}, got '{mode}'")
    crop = CROP_MODES[mode]
    root = voc.resolve_root(root)
    ids = list(ids) if ids is not None else voc.read_split(root, split)
    if source not in ("auto", "annotations", "instances"):
        raise RbsegError(f"crop source must be auto, annotations or instances, got '{source}'")
    crops, labels, owners = [], [], []
    for image_id in ids:
        xml = voc.annotation_path(root, image_id)
        if source == "annotations" or (source == "auto" and xml.is_file()):
            objects = [(o.label, o.bbox) for o in voc.read_annotation(xml)]
        else:
            objects = _boxes_from_instances(root, image_id, split)
        if not objects:
            continue
        image = voc.read_image(voc.image_path(root, image_id))
        for label, bbox in objects:
            if bbox[2] - bbox[0] + 1 < min_side or bbox[3] - bbox[1] + 1 < min_side or label < 1:
                continue
            crops.append(crop(image, bbox, size))
            labels.append(label - 1)
            owners.append(image_id)
    if not crops:
        raise DataError(f"no object crops in split '{split}' (need Annotations/*.xml or SegmentationObject/ masks)", root)
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long), owners


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def _resolve_device(device: str | torch.device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``shift`` px (mean-pixel padding), per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    if shift > 0:
        mean = torch.tensor(MEAN_255, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        padded = F.pad(x - mean, (shift, shift, shift, shift)) + mean
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        h, w = x.shape[-2:]
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device).float()
        correct += int((model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(images.shape[0], 1)


def _save_or_keep(path: Path, obj: dict, state_path: Path | None = None) -> None:
    """Atomic save; an OSError (read-only, disk full) is one line and the last good state stays as it was."""
    try:
        atomic_torch_save(path, obj)
    except OSError as exc:
        kept = state_path if state_path is not None else path
        hint = f"; the last good state is kept in {kept}" if kept.exists() else ""
        raise RbsegError(f"cannot write ({exc.strerror or exc}){hint}", path) from None


def _out_path(arch: str, out: str | Path) -> Path:
    out = Path(out)
    return out if out.suffix in (".pt", ".pth") else out / f"{arch}.pt"


def train_surrogate(
    arch: str,
    data_root: str | Path,
    out: str | Path,
    preset: str = "tiny",
    device: str | torch.device = "auto",
    seed: int = 0,
    epochs: int | None = None,
    input_size: int | None = None,
    resume: bool = False,
    width_per_group: int | None = None,
    callback: Callable[[dict], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train ``arch`` on the object crops of ``data_root``'s train split; returns the checkpoint path
    (``out`` itself when it ends in .pt/.pth, else ``out/<arch>.pt``). A ``<ckpt>.state`` resume file
    is written atomically every ``state_every`` epochs (preset) and removed at the end.
    ``width_per_group`` narrows a ResNet-152 (see :func:`build_classifier`; GoogLeNet ignores it). An existing
    checkpoint is refused unless ``overwrite``; the output folder is probed before training starts."""
    from ..io import clean_stale_tmp, probe_writable, refuse_existing

    if preset not in PRESETS:
        raise RbsegError(f"unknown surrogate preset '{preset}' (choose from {', '.join(PRESETS)})")
    if arch not in SURROGATE_ARCHS:
        raise RbsegError(f"unknown surrogate architecture '{arch}' (choose from {', '.join(SURROGATE_ARCHS)})")
    cfg = PRESETS[preset]
    n_epochs = int(epochs if epochs is not None else cfg.epochs[arch])
    cfg = replace(cfg, epochs={arch: n_epochs}, input_size=input_size if input_size is not None else cfg.input_size)
    path = _out_path(arch, out)
    state_path = path.with_name(path.name + ".state")
    refuse_existing(path, overwrite)
    probe_writable(path.parent, "surrogate checkpoint")
    for name in (path.name, state_path.name):
        clean_stale_tmp(path.parent, name)
    dev = _resolve_device(device)
    root = voc.resolve_root(data_root)
    t0 = time.time()
    x_train, y_train, train_ids = extract_crops(root, "train", cfg.input_size)
    val_split = "val" if voc.split_file(root, "val").is_file() else None
    x_val, y_val = (extract_crops(root, "val", cfg.input_size)[:2] if val_split else (None, None))

    torch.manual_seed(seed)
    width = int(width_per_group) if width_per_group is not None and arch == "resnet152" else 64
    net = build_classifier(arch, width_per_group=width).to(dev)
    model = Classifier255(net, list(FOREGROUND), cfg.input_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-x_train.shape[0] // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=n_epochs * steps_per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    config = {"arch": arch, "preset": preset, "seed": seed, **asdict(cfg), "width_per_group": width, "optimizer": "AdamW+OneCycle",
              "augment": "flip + 2px shift", "crop_source": "auto", "crop_mode": "warp", "train_split": "train"}
    start_epoch, history = 0, []
    if resume and state_path.is_file():
        st = safe_torch_load(state_path)
        if not isinstance(st, dict) or st.get("format") != FORMAT or st.get("config") != config:
            raise CheckpointError("resume state does not match this run's configuration (delete it to start over)", state_path)
        net.load_state_dict(st["state_dict"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        start_epoch, history = int(st["epoch"]), list(st["history"])

    for epoch in range(start_epoch, n_epochs):
        net.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        total, seen, correct = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            x = _augment(x_train[idx].float(), gen).to(dev)
            y = y_train[idx].to(dev)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise RbsegError(f"surrogate training diverged (loss {float(loss)}) at epoch {epoch + 1}; the last state is kept", state_path)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
            correct += int((logits.argmax(1) == y).sum())
            if callback:
                callback({"event": "step", "epoch": epoch + 1, "epochs": n_epochs, "step": b + 1,
                          "steps": steps_per_epoch, "loss": float(loss.detach())})
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "train_acc": correct / max(seen, 1),
                        "time_s": time.time() - t0})
        if callback:
            callback({"event": "epoch", **history[-1], "epochs": n_epochs})
        if epoch + 1 < n_epochs and (epoch + 1) % cfg.state_every == 0:
            _save_or_keep(state_path, {
                "format": FORMAT, "complete": False, "config": config, "epoch": epoch + 1, "history": history,
                "state_dict": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            })

    metrics: dict[str, Any] = {"train_acc": accuracy(model, x_train, y_train), "train_crops": int(x_train.shape[0])}
    if x_val is not None:
        metrics.update(val_acc=accuracy(model, x_val, y_val), val_crops=int(x_val.shape[0]))
    import torchvision

    ckpt = {
        "format": FORMAT, "complete": True, "arch": arch, "num_classes": len(FOREGROUND), "classes": list(FOREGROUND),
        "input_size": cfg.input_size, "width_per_group": width,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": config, "metrics": metrics, "history": history,
        "data": {"root": str(root), "split": "train", "ids_hash": ids_hash(sorted(set(train_ids))),
                 "crops": int(x_train.shape[0])},
        "versions": {"package": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
        "device": str(dev), "train_time_s": time.time() - t0,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _save_or_keep(path, ckpt, state_path)
    if state_path.exists():
        state_path.unlink()
    if callback:
        callback({"event": "done", "path": str(path), **metrics, "time_s": time.time() - t0})
    return path
