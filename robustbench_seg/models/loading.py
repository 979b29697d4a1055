"""``load_model(spec)``: a zoo name, an rbseg checkpoint path, a user's ``module:function``, or a
prefixed spec from :data:`SPEC_PREFIXES` (``torchvision:NAME[:WEIGHTS]``: ``models.torchvision_zoo``)."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, RbsegError
from ..io import safe_torch_load, sha256_file
from .checkpoint import checkpoint_finished, load_state, model_from_checkpoint, num_parameters, read_checkpoint, state_sha256
from .zoo import load_zoo, zoo_checkpoint

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_model(spec: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Resolve ``spec`` and return ``(model in eval mode on device, info)``.

    ``spec``: a zoo name (its sha256 is verified against ``models/zoo.json``), the path of an
    rbseg checkpoint, or ``module:function`` (a builder returning an ``nn.Module``; ``weights``
    then names a state dict file, or a dict holding one under ``state_dict``/``model``, loaded with
    ``weights_only=True``). ``info`` holds name, source, arch, method, sha256, model/config/dataset
    sections, the recorded val mIoU where known, and ``finished`` (bool: False for the checkpoint of
    a training run that has not reached its last step; True for exports, zoo files and modules).

    A ``module:function`` spec is imported as Python would; when its top-level module is not found
    there, the current folder is tried too (like ``python -m``), so ``mymodel.py`` beside the user
    is found without PYTHONPATH. A builder (or the module's import) that raises gives one
    :class:`ModelBuildError` line ``type: message`` naming the spec; the original exception is
    chained (``rbseg --debug`` shows its traceback).
    """
    spec_s = str(spec)
    prefix = spec_s.split(":", 1)[0]
    if ":" in spec_s and prefix in SPEC_PREFIXES:  # e.g. torchvision:NAME[:WEIGHTS]
        model, info = SPEC_PREFIXES[prefix](spec_s.split(":", 1)[1], weights)
        model.eval()
        return model.to(device), info
    if weights is not None and not _MODULE_SPEC.match(spec_s):
        raise RbsegError(f"--weights only applies to a module:function or torchvision: model, not '{spec_s}'")
    if spec_s in load_zoo():
        path, entry = zoo_checkpoint(spec_s)
        model, info = _from_checkpoint(path, sha256=entry["sha256"])
        info.update(name=spec_s, source="zoo", val_miou=entry.get("val_miou", info.get("val_miou")))
    elif Path(spec_s).expanduser().is_file():
        path = Path(spec_s).expanduser()
        model, info = _from_checkpoint(path, sha256=sha256_file(path))
        info.update(name=path.stem, source="checkpoint")
    elif _MODULE_SPEC.match(spec_s):
        model, info = _from_module(spec_s, weights)
    elif "/" in spec_s or "\\" in spec_s or Path(spec_s).suffix in (".pt", ".pth", ".ckpt"):
        raise CheckpointError("checkpoint file not found", spec_s)
    else:
        from .zoo import ZOO_NAMES

        raise RbsegError(
            f"model '{spec_s}' is not a zoo name ({', '.join(ZOO_NAMES)}), an existing checkpoint file, or module:function"
        )
    model.eval()
    return model.to(device), info


def _from_checkpoint(path: Path, sha256: str) -> tuple[nn.Module, dict]:
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    metrics = ckpt.get("metrics") or {}
    training = ckpt.get("training") or {}
    info = {
        "path": str(path),
        "sha256": sha256,
        "arch": ckpt["model"].get("arch"),
        "method": ckpt.get("method", training.get("method")),
        "model": ckpt["model"],
        "config": training,
        "dataset": ckpt.get("dataset"),
        "val_miou": metrics.get("val_miou"),
        "kind": ckpt.get("kind"),
        "finished": checkpoint_finished(ckpt),
        "versions": ckpt.get("versions"),
        "num_params": num_parameters(model),
    }
    return model, info


class ModelBuildError(RbsegError):
    """A user's ``module:function`` failed to import or build (the cause is chained: ``rbseg --debug``)."""


def _exc_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _import_user_module(module_name: str, spec: str):
    """Import ``module_name``; when its top-level package is not importable, retry with the current
    folder on ``sys.path`` (only for that import: it is removed again, so it never shadows later imports)."""
    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise ModelBuildError(f"cannot import module '{module_name}' for model '{spec}' ({_exc_line(exc)})") from exc
    except Exception as exc:
        raise ModelBuildError(f"importing module '{module_name}' for model '{spec}' failed ({_exc_line(exc)})") from exc
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelBuildError(f"cannot import module '{module_name}' for model '{spec}' ({_exc_line(exc)}; "
                              f"searched the Python path and the current folder {cwd})") from exc
    except Exception as exc:
        raise ModelBuildError(f"importing module '{module_name}' for model '{spec}' failed ({_exc_line(exc)})") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _from_module(spec: str, weights: str | Path | None) -> tuple[nn.Module, dict]:
    module_name, func_name = spec.split(":")
    module = _import_user_module(module_name, spec)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise RbsegError(f"module '{module_name}' has no callable '{func_name}'")
    try:
        model = fn()
    except Exception as exc:
        raise ModelBuildError(f"model builder '{spec}' raised {_exc_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise RbsegError(f"'{spec}' returned {type(model).__name__}, expected a torch.nn.Module")
    sha = None
    if weights is not None:
        wpath = Path(weights).expanduser()
        obj = safe_torch_load(wpath)
        state = obj
        if isinstance(obj, dict) and not _is_state_dict(obj):
            state = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if not isinstance(state, dict) or not _is_state_dict(state):
            raise CheckpointError("no state dict of tensors found (expected a state_dict, or a dict with 'state_dict'/'model')", wpath)
        load_state(model, state, wpath)
        sha = sha256_file(wpath)
    info = {
        "path": None if weights is None else str(weights),
        "sha256": sha or state_sha256(model.state_dict()),
        "arch": spec,
        "method": None,
        "model": {"builder": spec},
        "config": {},
        "dataset": None,
        "val_miou": None,
        "kind": "module",
        "finished": True,
        "name": spec,
        "source": "module",
        "num_params": num_parameters(model),
    }
    return model, info


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _torchvision_spec(rest: str, weights: str | Path | None) -> tuple[nn.Module, dict]:
    from .torchvision_zoo import load_torchvision

    return load_torchvision(rest, weights)


# spec prefix -> loader(rest of the spec, --weights) -> (model, info); checked before zoo names and paths
SPEC_PREFIXES = {"torchvision": _torchvision_spec}
