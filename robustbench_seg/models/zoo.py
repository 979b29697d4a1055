"""The model zoo: ``models/zoo.json`` (plain data) + compact checkpoints ``models/<name>.pt``.

Each manifest entry records the checkpoint file, its sha256 (verified on every load by name),
size, parameter count, the training command and full config, the dataset (name, preset, seed,
split, fingerprint) and the recorded val mIoU. ``training.recipes`` trains and exports them.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, RbsegError
from ..io import atomic_write_json, read_json, sha256_file
from ..paths import shipped_models_dir

ZOO_FORMAT = "rbseg-zoo/1"
MANIFEST = "zoo.json"

# name -> what it is (paper table it reproduces)
ZOO_DESCRIPTIONS: dict[str, str] = {
    "baseline": "DeepLabv3, pixel-wise cross-entropy (Table 1)",
    "mixup": "DeepLabv3 + Mixup (Table 1)",
    "cutmix": "DeepLabv3 + CutMix (Table 1)",
    "binding": "feature binding: C_fb blending, FBH, denoising stage (Table 1)",
    "binding-no-fbh": "feature binding without the FBH, predicts S_t (Table 5c)",
    "binding-no-denoise": "feature binding, stage 1 only, no denoising (Table 5b)",
    "binding-rfb": "feature binding with R_fb blending: random partners, 10 per image (Table 5a)",
    "binding-cafb": "feature binding with Ca_fb blending: partner from the same category (Table 5a)",
    "binding-wrfb": "feature binding with WR_fb blending: random pairs, fixed delta 0.6 (Table 5a)",
    "binding-mfb": "feature binding with M_fb blending: half random pairs, half standard images (Table 5a)",
    "segmix": "SegMix (SourceSep-CM): co-occurrence-driven in-batch blending, FBH, denoising stage (IJCV Table 1)",
    "segmix-no-denoise": "SegMix stage 1 only, no denoising (IJCV Table 11: inf + gamma-thres)",
}
ZOO_NAMES: tuple[str, ...] = tuple(ZOO_DESCRIPTIONS)


def manifest_path(models_dir: str | Path | None = None) -> Path:
    return Path(models_dir or shipped_models_dir()) / MANIFEST


def load_zoo(models_dir: str | Path | None = None) -> dict[str, dict]:
    """The shipped models, ``{name: entry}`` in manifest order (empty when none shipped)."""
    return read_manifest(models_dir)["models"]


def read_manifest(models_dir: str | Path | None = None) -> dict:
    """The whole manifest file ``{"format": "rbseg-zoo/1", "models": {name: entry}}``."""
    path = manifest_path(models_dir)
    if not path.is_file():
        return {"format": ZOO_FORMAT, "models": {}}
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != ZOO_FORMAT or not isinstance(data.get("models"), dict):
        raise RbsegError(f"not an rbseg zoo manifest (expected format {ZOO_FORMAT!r})", path)
    return data


def zoo_entry(name: str, models_dir: str | Path | None = None) -> dict:
    models = load_zoo(models_dir)
    if name not in models:
        known = ", ".join(models) or "none shipped yet"
        raise RbsegError(f"'{name}' is not in the model zoo ({known})", manifest_path(models_dir))
    return models[name]


def zoo_checkpoint(name: str, models_dir: str | Path | None = None, verify: bool = True) -> tuple[Path, dict]:
    """Path of a zoo checkpoint, its sha256 verified against the manifest."""
    entry = zoo_entry(name, models_dir)
    path = manifest_path(models_dir).parent / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"zoo checkpoint of '{name}' is missing", path)
    if verify:
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise CheckpointError(
                f"sha256 mismatch for zoo model '{name}' (file {digest[:12]}..., manifest {str(entry.get('sha256'))[:12]}...): "
                "the file is corrupt or was replaced; retrain it with `rbseg zoo train`", path)
    return path, entry


def write_zoo_entry(name: str, entry: dict, models_dir: str | Path | None = None) -> Path:
    """Insert or replace one entry (manifest kept in ZOO_NAMES order), atomically."""
    path = manifest_path(models_dir)
    data = read_manifest(models_dir)
    models = dict(data["models"])
    models[name] = entry
    order = {n: i for i, n in enumerate(ZOO_NAMES)}
    data["models"] = dict(sorted(models.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    atomic_write_json(path, data)
    return path


def zoo_rows(models_dir: str | Path | None = None) -> list[dict]:
    """One flat row per known zoo name (shipped or not), for ``rbseg zoo list``."""
    models = load_zoo(models_dir)
    rows = []
    for name in list(ZOO_NAMES) + [n for n in models if n not in ZOO_NAMES]:
        e = models.get(name)
        rows.append({
            "name": name,
            "shipped": e is not None,
            "description": ZOO_DESCRIPTIONS.get(name, (e or {}).get("description", "")),
            "arch": (e or {}).get("arch"),
            "method": (e or {}).get("method"),
            "val_miou": (e or {}).get("val_miou"),
            "num_params": (e or {}).get("num_params"),
            "size_bytes": (e or {}).get("size_bytes"),
            "dataset": ((e or {}).get("dataset") or {}).get("name"),
            "file": (e or {}).get("file"),
            "sha256": (e or {}).get("sha256"),
        })
    return rows
