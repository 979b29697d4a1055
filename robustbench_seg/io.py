"""Atomic file writes, hashing and safe loading: nothing half-written, nothing unpickled."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, RbsegError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def clean_stale_tmp(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporary files left by killed atomic writes (``.NAME.*.tmp``) in ``folder``.

    With ``name``, only those of that one target file; returns what was removed. Called by long jobs
    before they write, so a killed run leaves no litter behind the next one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    removed = []
    for tmp in folder.glob(pattern):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def probe_writable(path: str | Path, what: str = "output") -> Path:
    """Check, before long work starts, that ``path`` (a file to be written, or a folder) can be written.

    Creates missing parent folders, writes and removes a small probe file, and turns any ``OSError``
    (read-only, full disk, a file where a folder should be, no permission) into one :class:`RbsegError`
    line naming the path. Returns the folder that was probed.
    """
    path = Path(path)
    folder = path if path.is_dir() or (not path.suffix and not path.exists()) else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rbseg-probe.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise RbsegError(f"cannot write the {what} here ({exc.strerror or exc})", folder) from None
    return folder


def refuse_existing(path: str | Path, overwrite: bool, hint: str = "--overwrite") -> Path:
    """Refuse to replace an existing file unless ``overwrite`` (one line naming the file and the flag)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RbsegError(f"already exists; pass {hint} to replace it", path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RbsegError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RbsegError(f"not valid JSON ({exc})", path) from None


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling (object arrays are refused)."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RbsegError("file not found", path) from None
    except ValueError as exc:
        raise RbsegError(f"not a plain numeric .npy array ({exc})", path) from None
    except (OSError, EOFError) as exc:
        raise RbsegError(f"unreadable .npy file ({exc})", path) from None


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or foreign files."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("file not found", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(f"refused: holds objects that are not plain tensors/containers ({first})", path) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"corrupt or truncated checkpoint ({first})", path) from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids_hash(ids: list[str] | tuple[str, ...]) -> str:
    """Order-independent fingerprint of a list of image ids (recorded with every result)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
