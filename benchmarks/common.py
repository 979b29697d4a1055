"""Shared helpers of the benchmark scripts: machine and versions, timing, peak memory, FLOPs, the
device's peak FLOP/s, synthetic VOC trees, models and perturbations, JSON output.

Import from a script in this folder with ``import common`` (a script's folder is on ``sys.path``).

* Timing: :func:`sync` before and after every timed region (``torch.cuda.synchronize`` on CUDA).
* Peak memory (:class:`PeakMemory`): on CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; on a CPU the process's resident-set high-water mark: Linux
  ``VmHWM`` of ``/proc/self/status``, reset per measured region by writing ``5`` to
  ``/proc/self/clear_refs``; elsewhere ``psutil`` RSS sampled after the region when installed, else
  ``resource.getrusage`` ``ru_maxrss`` (the high-water mark since the process started, not per
  region; the JSON says which one was used).
* FLOPs (:class:`FlopTable`): ``torch.utils.flop_counter.FlopCounterMode`` over one forward of a
  copy of the model on the ``meta`` device (no compute), per input size. It counts convolutions
  and matrix products (2 FLOPs per multiply-add), not element-wise ops, norms or upsampling.
* Peak FLOP/s (:func:`device_peak`): for known GPUs the vendor's dense figure (:data:`GPU_PEAK_TFLOPS`);
  for a CPU (or an unknown GPU) the *measured* best throughput of single ``torch.matmul`` calls
  (square sides 512, 1024, 2048) over a few seconds: a ceiling measured on the same shared
  machine, not the vendor's theoretical figure.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_seg.constants import NUM_CLASSES

# --- machine, device, versions -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def versions() -> dict[str, str]:
    import torchvision

    from robustbench_seg import __version__

    v = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
         "numpy": np.__version__, "robustbench_seg": __version__}
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["cudnn"] = str(torch.backends.cudnn.version())
    return v


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and with what a figure was measured (goes into every benchmark JSON)."""
    return {
        "host": platform.node(), "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device), "device_name": device_name(device),
        "load_average_1_5_15": load_average(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions(), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse_size(text: str) -> tuple[int, int]:
    """``"512x512"`` -> (512, 512) (height x width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise ValueError(f"size must be HxW with sides >= 8, got {text!r}")
    return int(m.group(1)), int(m.group(2))


# --- timing and memory ---------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds), the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory of a region: ``with PeakMemory(device) as pm: ...; pm.peak_bytes``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.start_bytes: int | None = None
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (reset before the region)"
        elif _proc_status_kib("VmHWM") is not None and _reset_rss_peak():
            self.start_bytes = (_proc_status_kib("VmRSS") or 0) * 1024
            self.method = "process RSS high-water (Linux VmHWM, reset before the region)"
        else:
            self.start_bytes = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.method:
            self.peak_bytes = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            self.peak_bytes, self.method = _rss_fallback()

    def to_dict(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak_bytes, "start_bytes": self.start_bytes, "method": self.method}


def _rss_bytes() -> int | None:
    try:
        import psutil  # optional

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return None


def _rss_fallback() -> tuple[int, str]:
    rss = _rss_bytes()
    if rss is not None:
        return rss, "psutil RSS after the region (no peak counter on this OS)"
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "ru_maxrss (high-water since process start)"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# --- FLOPs and the device's peak ------------------------------------------------------------------


def count_forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` counted by ``FlopCounterMode`` (convolutions and matmuls, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


class FlopTable:
    """FLOPs of one forward of one image, memoised per (H, W); counted on a ``meta`` copy of the
    model (shapes only, nothing computed), or on the real model if the copy cannot run on meta."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.meta: torch.nn.Module | None = None
        try:
            self.meta = copy.deepcopy(model).to("meta").eval()
        except Exception:  # noqa: BLE001 - a model that cannot be copied: count on the real one
            self.meta = None
        self.table: dict[tuple[int, int], int] = {}

    def __call__(self, height: int, width: int) -> int:
        key = (int(height), int(width))
        if key not in self.table:
            self.table[key] = self._count(*key)
        return self.table[key]

    def _count(self, h: int, w: int) -> int:
        if self.meta is not None:
            try:
                return count_forward_flops(self.meta, torch.zeros(1, 3, h, w, device="meta"))
            except Exception:  # noqa: BLE001 - data-dependent ops do not run on meta
                self.meta = None
        return count_forward_flops(self.model, torch.zeros(1, 3, h, w, device=self.device))


# Vendor dense peak throughput (TFLOP/s, no sparsity). "tf32" is what fp32 convolutions run at by
# default on these GPUs (torch.backends.cudnn.allow_tf32 is True by default); "fp32" the CUDA cores.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def gpu_peak_entry(name: str) -> tuple[str, dict[str, float]] | None:
    """The table row for a CUDA device name (most specific key first)."""
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if all(part.lower() in name.lower() for part in key.split()):
            return key, GPU_PEAK_TFLOPS[key]
    return None


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 3.0, n: int = 2048) -> float:
    """Best TFLOP/s of ``torch.matmul`` on n x n operands over about ``seconds`` (a measured ceiling)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.matmul(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _, dt = timed(lambda: torch.matmul(a, b), device)
        best = max(best, 2 * n**3 / dt / 1e12)
    return best


# GEMM sides tried for a measured peak: on a shared CPU the small ones (short calls, in cache)
# catch the moments the cores are free; the largest one suits GPUs.
GEMM_SIDES = (512, 1024, 2048)
_MEASURED: dict[tuple[str, torch.dtype], float] = {}


def device_peak(device: torch.device, dtype: torch.dtype, measure_seconds: float = 3.0) -> dict[str, Any]:
    """{"tflops": peak, "source": where it comes from} for the dtype the model runs in."""
    if device.type == "cuda":
        entry = gpu_peak_entry(torch.cuda.get_device_name(device))
        if entry is not None:
            key, row = entry
            if dtype == torch.bfloat16:
                col = "bf16"
            else:
                col = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
            return {"tflops": row[col], "source": f"vendor dense peak, NVIDIA {key} {col} (table in benchmarks/common.py)"}
    key = (str(device), dtype)
    if key not in _MEASURED:
        _MEASURED[key] = max(measure_matmul_tflops(device, dtype, measure_seconds / len(GEMM_SIDES), n) for n in GEMM_SIDES)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    sides = "/".join(str(n) for n in GEMM_SIDES)
    return {"tflops": _MEASURED[key],
            "source": f"measured: best single torch.matmul {name}, square sides {sides}, over {measure_seconds:g} s on this device"}


# --- models, data, perturbations -----------------------------------------------------------------


def build_benchmark_model(spec: str, device: torch.device, binding: bool = False, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A zoo name / checkpoint / module:function (``models.load_model``), or an architecture name
    (``models.build_model(arch)`` with random weights, seeded), in eval mode on ``device``."""
    from robustbench_seg.models import ARCHITECTURES, build_model, load_model

    if spec in ARCHITECTURES:
        torch.manual_seed(seed)
        model = build_model(spec, binding=binding)
        info = {"name": spec + ("+binding" if binding else ""), "arch": spec, "weights": f"random (seed {seed})"}
    else:
        model, loaded = load_model(spec, device="cpu")
        info = {"name": loaded.get("name", spec), "arch": loaded.get("arch"), "weights": loaded.get("source"),
                "sha256": loaded.get("sha256")}
    model = model.to(device).eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return model, info


def synthetic_masks_and_images(n: int, sizes: Sequence[tuple[int, int]], seed: int = 0):
    """Deterministic (image HxWx3 uint8, mask HxW uint8) pairs: smooth random colour fields and
    piecewise-constant label maps (a few of the 21 classes) with a void (255) band between regions."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = sizes[k % len(sizes)]
        gh, gw = max(2, h // 16), max(2, w // 16)
        coarse = rng.uniform(0, 255, (3, gh, gw)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(h, w), mode="bilinear",
                                              align_corners=False)[0]
        img = (img + torch.from_numpy(rng.normal(0, 12, (3, h, w)).astype(np.float32))).clamp(0, 255)
        classes = np.concatenate([[0], rng.choice(np.arange(1, NUM_CLASSES), size=3, replace=False)])
        fields = torch.nn.functional.interpolate(torch.from_numpy(rng.normal(0, 1, (1, 4, gh, gw)).astype(np.float32)),
                                                 size=(h, w), mode="bilinear", align_corners=False)[0]
        top2 = fields.topk(2, dim=0).values
        mask = classes[fields.argmax(0).numpy()].astype(np.uint8)
        mask[(top2[0] - top2[1]).numpy() < 0.05] = 255
        yield img.permute(1, 2, 0).round().to(torch.uint8).numpy(), mask


def write_synthetic_tree(out: Path, n: int, size: tuple[int, int] | None = None,
                         side_range: tuple[int, int] | None = None, split: str = "val", seed: int = 0) -> Path:
    """A VOC2012 tree of ``n`` synthetic images (JPEG, quality 90) and palette-PNG masks under
    ``out/VOC2012``: all of ``size`` (H, W), or sides drawn uniformly in ``side_range`` (like SynthVOC)."""
    from PIL import Image

    from robustbench_seg.data import voc

    root = Path(out) / "VOC2012"
    if size is not None:
        sizes = [tuple(size)]
    else:
        lo, hi = side_range or (64, 96)
        rng = np.random.default_rng(seed + 1)
        sizes = [tuple(int(v) for v in rng.integers(lo, hi + 1, 2)) for _ in range(n)]
    ids = [f"bench_{k:06d}" for k in range(n)]
    for image_id, (image, mask) in zip(ids, synthetic_masks_and_images(n, sizes, seed)):
        path = voc.image_path(root, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(path, quality=90)
        voc.write_index_png(voc.mask_path(root, image_id, split), mask)
    split_file = voc.split_file(root, split)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(ids) + "\n")
    return root


def random_perturbations(count: int, side: int = 224, xi: float = 10.0, seed: int = 0) -> list[torch.Tensor]:
    """``count`` deterministic uniform random perturbations in [-xi, xi] (0-255 units), 3 x side x side."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, side, side, generator=g) * 2 - 1) * xi for _ in range(count)]


def benchmark_perturbations(count: int = 5, seed: int = 0) -> tuple[list[str], list[torch.Tensor], str]:
    """(names, (3, h, w) tensors, source): the shipped perturbations (Table 4 order) when there are
    ``count`` of them, else ``count`` random +-10 ones at 224 x 224."""
    from robustbench_seg.attacks.perturbation import list_perturbations, load_perturbation
    from robustbench_seg.evaluation.engine import shipped_order

    try:
        names = shipped_order(list_perturbations())[:count]
    except Exception:  # noqa: BLE001 - no shipped folder / unreadable: fall back to random ones
        names = []
    if len(names) == count:
        perts = [load_perturbation(n) for n in names]
        return [p.name for p in perts], [p.tensor() for p in perts], "shipped (perturbations/)"
    return ([f"random{k}" for k in range(count)], random_perturbations(count, seed=seed),
            "random uniform +-10 at 224x224 (no shipped perturbations found)")


# --- output ----------------------------------------------------------------------------------------


def write_json(path: str | Path | None, obj: Any) -> Path | None:
    """Write ``obj`` atomically as JSON (numpy / torch scalars converted); None: nothing written."""
    if path is None:
        return None
    from robustbench_seg.io import atomic_write_json

    return atomic_write_json(Path(path), json.loads(json.dumps(obj, default=_plain)))


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.device, torch.dtype, Path)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def profile_top_ops(fn: Callable[[], Any], device: torch.device, top: int = 12) -> dict[str, Any]:
    """Run ``fn`` under ``torch.profiler``: the wall time, the top ops by self time (CPU ops on a
    CPU; GPU kernels on CUDA, with the GPU busy fraction: the union of kernel intervals / wall)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    wall = time.perf_counter() - t
    averages = prof.key_averages()
    if device.type == "cuda":
        rows = [e for e in averages if e.device_type == DeviceType.CUDA]
        key = "self_device_time_total"
    else:
        rows = [e for e in averages if e.device_type == DeviceType.CPU]
        key = "self_cpu_time_total"
    total = sum(getattr(e, key) for e in rows) or 1.0
    rows = sorted(rows, key=lambda e: getattr(e, key), reverse=True)
    out: dict[str, Any] = {
        "wall_s": wall, "sorted_by": key, "profiled_self_time_s": total / 1e6,
        "top_ops": [{"name": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total,
                     "calls": e.count} for e in rows[:top]],
    }
    loader = [e for e in averages if e.key.startswith("enumerate(DataLoader)")]
    if loader:
        out["data_loading_share_of_wall"] = sum(e.cpu_time_total for e in loader) / 1e6 / wall
    if device.type == "cuda":
        spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
        busy, end = 0.0, float("-inf")
        for a, b in spans:  # union of the kernel intervals (microseconds)
            if b > end:
                busy += b - max(a, end)
                end = b
        out["gpu_busy_fraction"] = busy / 1e6 / wall
    return out
