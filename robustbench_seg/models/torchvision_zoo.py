"""``--model torchvision:NAME[:WEIGHTS]``: torchvision's segmentation models with their published weights.

``NAME`` is any builder of ``torchvision.models.segmentation`` (torchvision's own registry:
``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``,
``fcn_resnet101``, ``lraspp_mobilenet_v3_large``); ``WEIGHTS`` a member of its weights enum
(``COCO_WITH_VOC_LABELS_V1``; default ``DEFAULT``), or ``none`` (random initialisation, 21 classes:
benchmarks). The network is built WITHOUT any download (``weights=None, weights_backbone=None``: the
ImageNet backbone is never fetched, the full weights replace it) and the weights are read with
``weights_only=True`` from, in order:

1. ``--weights PATH`` (a local copy of the file, e.g. on a machine without network);
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<basename of the weights URL>`` (where
   torchvision itself puts it; ``$TORCH_HOME/hub/checkpoints``);
3. a download into that cache (skipped when ``RBSEG_OFFLINE=1``); when it fails: one line naming the
   URL, the expected path and file name.

The auxiliary classifier of the published files (``aux_classifier.*``, training only) is dropped.
``info["published"]`` records the weights' metadata metrics (``weights.meta["_metrics"]``, torchvision's
figures: ``COCO-val2017-VOC-labels`` mIoU / pixel accuracy, i.e. COCO val2017 restricted to the 20 VOC
categories -- NOT Pascal VOC val), so results show them beside ours.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..constants import NUM_CLASSES
from ..errors import CheckpointError, RbsegError
from ..io import safe_torch_load, sha256_file
from .checkpoint import load_state, num_parameters, state_sha256

AUX_PREFIX = "aux_classifier."
OFFLINE_ENV = "RBSEG_OFFLINE"


def segmentation_names() -> list[str]:
    """torchvision's segmentation builders (its model registry)."""
    import torchvision.models as tvm
    import torchvision.models.segmentation as seg

    return sorted(tvm.list_models(module=seg))


def parse_spec(rest: str) -> tuple[str, object | None]:
    """``NAME[:WEIGHTS]`` -> (builder name, weights enum member or None for ``none``)."""
    import torchvision.models as tvm

    name, _, wname = rest.partition(":")
    names = segmentation_names()
    if name not in names:
        raise RbsegError(f"torchvision:{rest}: unknown segmentation model '{name}' (choose from {', '.join(names)})")
    if wname.lower() in ("none", "random"):
        return name, None
    enum = tvm.get_model_weights(name)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    try:
        return name, enum[wname or "DEFAULT"]
    except KeyError:
        raise RbsegError(f"torchvision:{rest}: unknown weights '{wname}' for {name} "
                         f"(choose from {', '.join(members + ['DEFAULT', 'none'])})") from None


def cache_path(weights) -> Path:
    """Where torchvision keeps (and rbseg looks for) the weights file: hub cache / checkpoints / URL basename."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _download(url: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=False)  # writes a temp file, then renames


def weights_file(name: str, weights, local: str | Path | None) -> Path:
    """The file to read: ``--weights``, else the hub cache, else a download into it (one-line error)."""
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise CheckpointError("weights file not found", path)
        return path
    path = cache_path(weights)
    if path.is_file():
        return path
    where = (f"download {weights.url} and put it at {path} (file name {path.name}), "
             f"or pass --weights PATH to a copy of {path.name}")
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise RbsegError(f"torchvision:{name}:{weights.name}: weights not in the torch hub cache and {OFFLINE_ENV} "
                         f"is set: {where}")
    try:
        _download(weights.url, path)
    except Exception as exc:  # URLError, HTTPError, socket errors, OSError: no network or no space
        text = " ".join(str(exc).split())[:160]
        raise RbsegError(f"torchvision:{name}:{weights.name}: cannot download the weights "
                         f"({type(exc).__name__}: {text}); {where}") from None
    return path


def build(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The network, randomly initialised, without touching the network (no backbone download)."""
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def load_torchvision(rest: str, local: str | Path | None = None) -> tuple[nn.Module, dict]:
    """``rest`` = ``NAME[:WEIGHTS]``; returns (model, info) like ``load_model``."""
    name, weights = parse_spec(rest)
    num_classes = NUM_CLASSES if weights is None else len(weights.meta.get("categories") or []) or NUM_CLASSES
    model = build(name, num_classes)
    path = None
    if weights is not None:
        path = weights_file(name, weights, local)
        obj = safe_torch_load(path)
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CheckpointError("not a state dict of tensors (expected torchvision's weights file)", path)
        load_state(model, {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX)}, path)
    elif local is not None:
        raise RbsegError(f"torchvision:{rest}: --weights does not apply to randomly initialised weights ('none')")
    wname = "none" if weights is None else weights.name
    metrics = {} if weights is None else dict(weights.meta.get("_metrics") or {})
    published = None
    if metrics:
        dataset, values = next(iter(metrics.items()))
        published = {"source": f"torchvision {name} {wname} weights metadata (meta['_metrics'])",
                     "dataset": dataset, "miou": values.get("miou"), "pixel_acc": values.get("pixel_acc"),
                     "metrics": metrics, "url": weights.url}
    info = {
        "path": None if path is None else str(path),
        "sha256": sha256_file(path) if path is not None else state_sha256(model.state_dict()),
        "arch": name,
        "method": None,
        "model": {"builder": f"torchvision.models.segmentation.{name}", "weights": wname,
                  "num_classes": num_classes, "aux_loss": False},
        "config": {},
        "dataset": None,
        "val_miou": None,
        "published": published,
        "kind": "torchvision",
        "finished": True,
        "name": f"torchvision-{name}-{wname}",
        "spec": f"torchvision:{name}:{wname}",
        "source": "torchvision",
        "num_params": num_parameters(model),
    }
    return model, info
