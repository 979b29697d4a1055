"""Pre-flight check of the training data: every image and mask decodes and is valid before step 1.

A corrupt file found at step 4,000 costs the work before it; found here it costs nothing. The
checks are ``rbseg data check``'s own per-file ones (``data.check.check_files``: the image decodes completely,
the mask is an index PNG of the image's size holding labels 0-20 and 255). Files that passed are
cached by signature (path, size, mtime) in ``cache_dir()/preflight/``, so a re-run checks only what
changed (a fixed file is checked again, an unchanged tree costs a few stat calls).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..data import voc
from ..data.check import Problem, check_files
from ..errors import DataError
from ..io import atomic_write_json, read_json
from ..paths import cache_dir

CACHE_VERSION = 1
SHOWN = 3  # problems quoted in the one-line error


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def cache_path(root: Path, split: str) -> Path:
    key = hashlib.sha256(f"{Path(root).resolve()}\n{voc.mask_folder(split)}".encode()).hexdigest()[:16]
    return cache_dir() / "preflight" / f"{key}.json"


def _load_cache(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except Exception:  # a damaged cache only costs a re-check
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("ok"), dict):
        return {}
    return data["ok"]


def preflight(root: str | Path, split: str, ids: Sequence[str], progress: bool = False) -> dict:
    """Check every image and mask of ``ids``; raise one :class:`DataError` line naming the bad files.

    Returns ``{"checked": n files decoded now, "cached": n ids skipped as unchanged}``.
    """
    from rich.console import Console
    from rich.progress import track

    root = Path(root)
    folder = voc.mask_folder(split)
    cpath = cache_path(root, split)
    cached = _load_cache(cpath)
    problems: list[Problem] = []
    ok: dict[str, list] = {}
    todo = []
    for image_id in dict.fromkeys(ids):
        sig = (_signature(voc.image_path(root, image_id)), _signature(root / folder / f"{image_id}.png"))
        if sig[0] is not None and sig[1] is not None and cached.get(image_id) == sig[0] + sig[1]:
            ok[image_id] = sig[0] + sig[1]
        else:
            todo.append((image_id, sig))
    n_cached = len(ok)
    for image_id, sig in track(todo, description=f"checking {split} data", disable=not progress or not todo,
                               transient=True, console=Console(stderr=True)):
        found = check_files(root, image_id, folder)
        problems += found
        if not found and sig[0] is not None and sig[1] is not None:
            ok[image_id] = sig[0] + sig[1]
    if todo:
        try:
            atomic_write_json(cpath, {"version": CACHE_VERSION, "root": str(root), "mask_folder": folder, "ok": ok})
        except OSError:
            pass  # an unwritable cache only costs a re-check next time
    if problems:
        shown = "; ".join(f"{p.file}: {p.problem}" for p in problems[:SHOWN])
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataError(f"{len(problems)} problem(s) in the '{split}' training data, nothing was trained: {shown}{more} "
                        f"(fix them, or list all with `rbseg data check --data {root}`)", root)
    return {"checked": len(todo), "cached": n_cached}
