"""``reproduce``: the whole pipeline of the paper, from data to report, in one resumable call.

    data -> train the zoo models and the GD-UAP source model (``gduap-source``, never evaluated)
    -> export them (OUT/models) -> train the two surrogates ->
    craft the five perturbations (OUT/perturbations; the GD-UAPs on ``gduap-source``) -> evaluate every model clean and under each
    perturbation on val (every subset), and the baseline/binding on ooc when the data has it
    (OUT/reports/results) -> report (OUT/reports) -> freeze OUT/reports/expected.json

A preset with ``seed_replicates`` = n > 1 (``bench``: 3) also trains the first n - 1 seed replicates of
baseline, binding and segmix (``training.recipes.SEED_REPLICATES``), exports them to OUT/models/replicates/
and evaluates them on val (Table 1's mean +- std, the reports' "> 2 std" notes).

A preset with ``pretrain`` (``bench``) first generates a disjoint pre-training tree
(``data/pretrain/VOC2012``) and trains the shared backbone once (step ``train/pretrain-backbone``,
``work/pretrain/``); every training step then fine-tunes from it and re-runs when it changes.

Layout of OUT: ``data/VOC2012`` (SynthVOC, when no data root is given), ``work/`` (training runs,
surrogates, ``state.json``), ``models/``, ``perturbations/``, ``reports/`` (with the result JSON
files in ``reports/results/``). With
``out="."`` in a checkout, ``models/``, ``perturbations/`` and ``reports/`` are exactly what the
suite ships.

Every step records its outputs and time in ``work/state.json`` once done; ``resume=True`` skips
the steps recorded there whose outputs still exist (the heavy components also resume inside a
step: training from its last epoch checkpoint, evaluation from its results cache). The heavy
components are injected (:class:`Components`), so the planning and skip logic are testable with
fast fakes; :func:`default_components` wires in the real ones.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import RbsegError
from .io import atomic_write_json, read_json

STATE_SCHEMA = "rbseg-reproduce-state/1"
STAGES = ("data", "train", "export", "surrogate", "craft", "evaluate", "report", "expected")


@dataclass(frozen=True)
class Preset:
    name: str
    synth: str | None  # SynthVOC preset generated when no data root is given (None: a data root is required)
    train: str  # training / surrogate / crafting preset passed to the components
    needs_gpu: bool
    description: str
    seed: int = 0
    train_options: dict = field(default_factory=dict)  # overrides of the training preset (keyword arguments)
    surrogate_options: dict = field(default_factory=dict)  # overrides of the surrogate preset
    craft: str | None = None  # crafting preset (attacks.recipes UAP_PRESETS / GDUAP_PRESETS); None: ``train``
    surrogate: str | None = None  # surrogate preset (attacks.surrogate.PRESETS); None: ``train``
    # fine-tune every model from one shared pre-trained backbone (training/pretrain.py): the plan generates the
    # disjoint pre-training tree (SynthVOC ``synth``, seed training.pretrain.PRETRAIN_DATA_SEED), trains it
    # once (step train/pretrain-backbone) and hands its file to every training step (weights_backbone)
    pretrain: bool = False
    pretrain_options: dict = field(default_factory=dict)  # overrides of the pre-training run (tests: a few steps)
    # runs per replicated method (Components.seed_replicates: baseline, binding, segmix): 1 = the zoo model only;
    # n > 1 also trains, exports (OUT/models/replicates/) and evaluates on val its first n - 1 seed replicates
    seed_replicates: int = 1

    @property
    def craft_preset(self) -> str:
        return self.craft or self.train

    @property
    def surrogate_preset(self) -> str:
        return self.surrogate or self.train


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", "tiny", "tiny", False,
               "SynthVOC tiny, small CPU models trained from scratch (what the suite shipped before bench); "
               "under 20 minutes on 2 CPU cores"),
        Preset("paper", None, "paper", True,
               "real PASCAL VOC 2012 (--data ROOT with train_aug), DeepLabv3-ResNet-101, 30 epochs: needs a GPU"),
        Preset("micro", "micro", "tiny", False,
               "SynthVOC micro, minimal budgets (4 training steps, 1-epoch 32-px surrogates with a narrow ResNet-152, "
               "the micro crafting preset): a smoke test of the pipeline, about 2 minutes on 2 CPU cores",
               train_options={"steps": 4, "stage2_steps": 2, "batch_size": 4},
               surrogate_options={"epochs": 1, "input_size": 32, "width_per_group": 8}, craft="micro"),
        # the embedded benchmark (issue 12); docs/training.md "The bench preset" has the measurements and the
        # time estimate. Surrogates and crafting use the tiny attack presets (the surrogates 1 epoch each: the
        # bench train split is 12.5x tiny's, so one epoch is about the images tiny's several epochs saw).
        Preset("bench", "bench", "bench", False,
               "SynthVOC bench (4,000 train_aug / 600 val / 120 ooc, 64-96 px), every model fine-tuned from one "
               "pre-trained backbone: the embedded benchmark; about 80-100 minutes on 2 idle CPU cores (estimated)",
               surrogate="tiny", surrogate_options={"epochs": 1}, craft="tiny", pretrain=True, seed_replicates=3),
    )
}


@dataclass
class Components:
    """The heavy work, injected. Signatures follow docs/ARCHITECTURE.md."""

    generate: Callable[..., Path]  # (out, preset, seed) -> VOC2012 root
    train: Callable[..., Path]  # (name, data_root, out, preset, device, **options) -> checkpoint
    export: Callable[..., Path]  # (name, ckpt, models_dir) -> exported checkpoint
    train_surrogate: Callable[..., Path]  # (arch, data_root, out, preset, device, **options) -> checkpoint
    craft: Callable[..., Any]  # (name, data_root, source_model, surrogate_ckpts, out_dir, device, preset) -> Perturbation
    evaluate: Callable[..., list[Path]]  # (model_spec, data_root, split, perturbations, out, device, model_name) -> result files
    report: Callable[..., Any]  # (results_dir, out_dir, data_root, models_dir, device) -> summary
    write_expected: Callable[..., Path]  # (results_dir, path) -> path
    model_names: Sequence[str]  # the zoo, in training order
    perturbation_names: Sequence[str]  # the shipped perturbations (Table 4)
    surrogate_archs: Sequence[str]  # the black-box UAP surrogates
    gduap_source: str = "gduap-source"  # the model GD-UAP is crafted on (trained and exported, never evaluated,
    # unless it is one of model_names)
    gduap_names: Sequence[str] = ("gduap-rno", "gduap-rall", "gduap-rpart")  # the perturbations crafted on it
    stage2_from: Mapping[str, str] = field(default_factory=dict)  # zoo model -> the zoo model its stage 1 is
    ooc_models: Sequence[str] = ("baseline", "binding")
    # (data_root, out_dir, preset, device, **options) -> the shared backbone file; needed by a preset with pretrain
    pretrain: Callable[..., Path] | None = None
    # zoo model -> its seed replicates (model names, seed order; training.recipes.SEED_REPLICATES): a preset with
    # seed_replicates = n trains the first n - 1 of each (a stage-2 replicate after its own stage-1 replicate, which
    # stage2_from names), exports them to OUT/models/replicates/ and evaluates them on val
    seed_replicates: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass
class Step:
    stage: str
    name: str
    run: Callable[[dict], dict]  # (outputs of earlier steps) -> this step's outputs (JSON-able)
    check: Callable[[dict], bool] = lambda outputs: True  # are a recorded step's outputs still there?
    deps: tuple[str, ...] = ()  # step ids whose re-run makes this step run again

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}" if self.name else self.stage


@dataclass
class StepResult:
    id: str
    stage: str
    status: str  # "ran" | "skipped"
    seconds: float
    outputs: dict = field(default_factory=dict)


@dataclass
class ReproduceSummary:
    out: Path
    preset: str
    data_root: str
    steps: list[StepResult]
    seconds: float

    def stage_rows(self) -> list[dict]:
        rows = []
        for stage in STAGES:
            steps = [s for s in self.steps if s.stage == stage]
            if steps:
                rows.append({"stage": stage, "ran": sum(s.status == "ran" for s in steps),
                             "skipped": sum(s.status == "skipped" for s in steps),
                             "seconds": round(sum(s.seconds for s in steps if s.status == "ran"), 1)})
        return rows

    def to_json(self) -> dict:
        return {
            "out": str(self.out), "preset": self.preset, "data_root": self.data_root,
            "seconds": round(self.seconds, 1), "stages": self.stage_rows(),
            "steps": [{"id": s.id, "status": s.status, "seconds": round(s.seconds, 2), "outputs": s.outputs} for s in self.steps],
        }


# --- the plan ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under OUT."""

    out: Path
    data: Path  # generated SynthVOC (data/VOC2012)
    work: Path  # training runs, surrogates, state.json
    models: Path
    perturbations: Path
    results: Path
    reports: Path

    @classmethod
    def under(cls, out: Path) -> "Layout":
        # the results live inside the report folder, so the shipped reports/ carries the JSON behind every number
        return cls(out, out / "data", out / "work", out / "models", out / "perturbations", out / "reports" / "results",
                   out / "reports")

    @property
    def state(self) -> Path:
        return self.work / "state.json"

    @property
    def replicates(self) -> Path:
        """The exported seed replicates (own zoo.json): models/zoo.json stays the user-facing zoo."""
        return self.models / "replicates"

    @property
    def expected(self) -> Path:
        return self.reports / "expected.json"


def _exists(*keys: str) -> Callable[[dict], bool]:
    """A check that the paths recorded under ``keys`` in a step's outputs still exist."""
    return lambda outputs: all(k in outputs and Path(outputs[k]).exists() for k in keys)


def plan(preset: Preset, layout: Layout, comp: Components, data_root: Path | None, device: str) -> list[Step]:
    """The ordered steps of the pipeline. Each step reads earlier outputs from the dict it is given."""
    steps: list[Step] = []
    if data_root is None:
        def make_data(_: dict) -> dict:
            return {"root": str(comp.generate(layout.data, preset.synth, preset.seed))}
        steps.append(Step("data", f"synthvoc-{preset.synth}-seed{preset.seed}", make_data, _exists("root")))
    else:
        steps.append(Step("data", "given", lambda _: {"root": str(data_root)}, _exists("root")))
    data_id = steps[0].id
    d = (data_id,)

    def root_of(done: dict) -> Path:
        return Path(done[data_id]["root"])

    backbone_id = None
    if preset.pretrain:
        from .training.pretrain import PRETRAIN_DATA_SEED

        if comp.pretrain is None:
            raise RbsegError(f"the '{preset.name}' preset pre-trains a backbone, but no pretrain component was given")
        synth = preset.synth or "bench"

        def make_pretrain_data(_: dict) -> dict:
            return {"root": str(comp.generate(layout.data / "pretrain", synth, PRETRAIN_DATA_SEED))}
        pre_data = Step("data", f"synthvoc-{synth}-seed{PRETRAIN_DATA_SEED}-pretrain", make_pretrain_data, _exists("root"))
        steps.append(pre_data)

        def pretrain(done: dict) -> dict:
            backbone = comp.pretrain(Path(done[pre_data.id]["root"]), layout.work / "pretrain", preset.train, device,
                                     **preset.pretrain_options)
            return {"backbone": str(backbone)}
        steps.append(Step("train", "pretrain-backbone", pretrain, _exists("backbone"), (pre_data.id,)))
        backbone_id = steps[-1].id

    # the GD-UAP source model is trained and exported like a zoo model but never evaluated
    exported = list(comp.model_names) + ([comp.gduap_source] if comp.gduap_source not in comp.model_names else [])
    replicates = planned_replicates(preset, comp)
    exported += [r for r in replicates if r not in exported]
    trained = list(exported)
    for name in replicates:  # a stage-2 replicate's own stage-1 replicate: trained, not exported
        source = comp.stage2_from.get(name)
        while source is not None and source not in trained:
            trained.append(source)
            source = comp.stage2_from.get(source)
    # a model trained as stage 2 of another (stage2_from) comes after it, gets its checkpoint and re-runs with it
    for name in sorted(trained, key=lambda n: n in comp.stage2_from):
        source = comp.stage2_from.get(name)

        def train(done: dict, name=name, source=source) -> dict:
            out = layout.work / "train" / name
            options = dict(preset.train_options)
            if backbone_id is not None:
                options["weights_backbone"] = done[backbone_id]["backbone"]
            if source is not None:
                options["stage2_from"] = done[f"train/{source}"]["checkpoint"]
            return {"checkpoint": str(comp.train(name, root_of(done), out, preset.train, device, **options))}
        train_deps = (*d, *((backbone_id,) if backbone_id else ()))
        steps.append(Step("train", name, train, _exists("checkpoint"),
                          train_deps if source is None else (*train_deps, f"train/{source}")))
    for name in exported:
        def export(done: dict, name=name) -> dict:
            models_dir = layout.replicates if name in replicates else layout.models
            return {"checkpoint": str(comp.export(name, Path(done[f"train/{name}"]["checkpoint"]), models_dir))}
        steps.append(Step("export", name, export, _exists("checkpoint"), (f"train/{name}",)))
    for arch in comp.surrogate_archs:
        def surrogate(done: dict, arch=arch) -> dict:
            out = layout.work / "surrogates" / arch
            ckpt = comp.train_surrogate(arch, root_of(done), out, preset.surrogate_preset, device, **preset.surrogate_options)
            return {"checkpoint": str(ckpt)}
        steps.append(Step("surrogate", arch, surrogate, _exists("checkpoint"), d))
    for name in comp.perturbation_names:
        def craft(done: dict, name=name) -> dict:
            surrogates = {a: Path(done[f"surrogate/{a}"]["checkpoint"]) for a in comp.surrogate_archs}
            source = Path(done[f"export/{comp.gduap_source}"]["checkpoint"])
            comp.craft(name, root_of(done), source, surrogates, layout.perturbations, device, preset.craft_preset)
            path = layout.perturbations / f"{name}.npy"
            if not path.is_file():
                raise RbsegError(f"crafting '{name}' wrote no perturbation file", path)
            return {"perturbation": str(path)}
        # a GD-UAP follows its source model, a UAP its surrogates
        deps = (*d, f"export/{comp.gduap_source}") if name in comp.gduap_names else (*d, *(f"surrogate/{a}" for a in comp.surrogate_archs))
        steps.append(Step("craft", name, craft, _exists("perturbation"), deps))

    def perturbation_files(done: dict) -> list[str]:
        return [done[f"craft/{p}"]["perturbation"] for p in comp.perturbation_names]

    for name in [*comp.model_names, *replicates]:  # a seed replicate on val (clean + the perturbations) only
        for split in ("val", "ooc"):
            if split == "ooc" and (name not in comp.ooc_models or name in replicates):
                continue

            def evaluate(done: dict, name=name, split=split) -> dict:
                root = root_of(done)
                if split == "ooc" and not (root / "ImageSets" / "Segmentation" / "ooc.txt").is_file():
                    return {"skipped": "the dataset has no ooc split"}
                files = comp.evaluate(
                    Path(done[f"export/{name}"]["checkpoint"]), root, split,
                    perturbation_files(done) if split == "val" else [], layout.results, device, name,
                )
                return {"results": [str(f) for f in files], "miou": {Path(f).stem: _miou(f) for f in files}}
            deps = (*d, f"export/{name}", *(f"craft/{p}" for p in comp.perturbation_names if split == "val"))
            steps.append(Step("evaluate", f"{name}/{split}", evaluate,
                              lambda o: "skipped" in o or all(Path(f).is_file() for f in o.get("results", [])), deps))

    def report(done: dict) -> dict:
        comp.report(layout.results, layout.reports, root_of(done), layout.models, device)
        return {"index": str(layout.reports / "index.html"), "results_fingerprint": results_fingerprint(layout.results)}
    steps.append(Step("report", "", report,
                      lambda o: _exists("index")(o) and o.get("results_fingerprint") == results_fingerprint(layout.results)))

    def expected(done: dict) -> dict:
        return {"expected": str(comp.write_expected(layout.results, layout.expected)),
                "results_fingerprint": results_fingerprint(layout.results)}
    steps.append(Step("expected", "", expected,
                      lambda o: _exists("expected")(o) and o.get("results_fingerprint") == results_fingerprint(layout.results)))
    return steps


def planned_replicates(preset: Preset, comp: Components) -> list[str]:
    """The seed replicates a preset asks for: the first ``seed_replicates - 1`` of each replicated model."""
    if preset.seed_replicates < 1:
        raise RbsegError(f"preset '{preset.name}': seed_replicates must be at least 1, not {preset.seed_replicates}")
    need = preset.seed_replicates - 1
    out = []
    for base, names in comp.seed_replicates.items():
        if need > len(names):
            raise RbsegError(f"preset '{preset.name}' asks for {preset.seed_replicates} runs of '{base}', but only "
                             f"{len(names) + 1} are registered (training.recipes.REPLICATE_SEEDS)")
        out += list(names)[:need]
    return out


def _miou(result_file: str | Path) -> float | None:
    """The full-split mIoU of a stored result (for the step's record and the summary)."""
    try:
        return read_json(result_file)["subsets"]["all"]["metrics"].get("miou")
    except (RbsegError, KeyError, TypeError):
        return None


def results_fingerprint(results_dir: Path) -> str:
    """Changes whenever a result file is added, removed or rewritten."""
    h = hashlib.sha256()
    if results_dir.is_dir():
        for p in sorted(results_dir.rglob("*.json")):
            st = p.stat()
            h.update(f"{p.relative_to(results_dir)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --- running ---------------------------------------------------------------------------------------

def _read_state(layout: Layout) -> dict | None:
    if not layout.state.is_file():
        return None
    state = read_json(layout.state)
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
        raise RbsegError(f"not an {STATE_SCHEMA} file (remove it to start over)", layout.state)
    return state


def reproduce(
    preset: str = "bench",
    data_root: str | Path | None = None,
    out: str | Path = "reproduce",
    device: str = "auto",
    resume: bool = False,
    components: Components | None = None,
    log: Callable[[str], None] | None = None,
) -> ReproduceSummary:
    """Run (or resume) the whole pipeline into ``out``; see the module docstring for the stages."""
    say = log or (lambda msg: None)
    if preset not in PRESETS:
        raise RbsegError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    if p.synth is None and data_root is None:
        raise RbsegError(f"the '{preset}' preset needs --data ROOT: a PASCAL VOC 2012 tree (VOC2012/ with "
                         "SegmentationClassAug and ImageSets/Segmentation/train_aug.txt)")
    if p.needs_gpu:
        _require_gpu(preset, device)
    root = None
    if data_root is not None:
        from .data.voc import resolve_root

        root = resolve_root(data_root)
    layout = Layout.under(Path(out).expanduser())
    state = _read_state(layout)
    config = {"preset": preset, "data_root": None if root is None else str(root.resolve())}
    if state is not None:
        if not resume:
            raise RbsegError("holds a previous reproduce run; pass --resume to continue it, or choose another --out",
                             layout.state)
        if state.get("config") != config:
            raise RbsegError(f"holds a run with {state.get('config')}, not {config}; choose another --out", layout.state)
    else:
        state = {"schema": STATE_SCHEMA, "config": config, "package_version": __version__, "steps": {}}
    comp = components or default_components(log)
    steps = plan(p, layout, comp, root, device)

    t0 = time.perf_counter()
    done: dict[str, dict] = {}
    results: list[StepResult] = []
    ran: set[str] = set()
    skipped: list[str] = []  # consecutive skipped steps, reported as one line per stage

    def flush() -> None:
        for stage in dict.fromkeys(s.split("/")[0] for s in skipped):
            n = sum(s.split("/")[0] == stage for s in skipped)
            say(f"{stage}: {n} step(s) done already (skipped)")
        skipped.clear()

    for k, step in enumerate(steps, 1):
        prefix = f"[{k}/{len(steps)}] {step.id}"
        recorded = state["steps"].get(step.id)
        stale = any(dep in ran for dep in step.deps)
        if recorded is not None and not stale and step.check(recorded["outputs"]):
            done[step.id] = recorded["outputs"]
            results.append(StepResult(step.id, step.stage, "skipped", recorded.get("seconds", 0.0), recorded["outputs"]))
            skipped.append(step.id)
            continue
        flush()
        say(f"{prefix} ...")
        start = time.perf_counter()
        outputs = step.run(done)
        seconds = time.perf_counter() - start
        done[step.id] = outputs
        state["steps"][step.id] = {"outputs": outputs, "seconds": round(seconds, 2)}
        atomic_write_json(layout.state, state)
        ran.add(step.id)
        results.append(StepResult(step.id, step.stage, "ran", seconds, outputs))
        say(f"{prefix}: done in {seconds:.1f} s")
    flush()
    return ReproduceSummary(layout.out, preset, done[steps[0].id]["root"], results, time.perf_counter() - t0)


def _require_gpu(preset: str, device: str) -> None:
    if device not in (None, "auto"):
        return  # an explicit device is the user's choice
    import torch

    if not torch.cuda.is_available():
        raise RbsegError(f"the '{preset}' preset trains DeepLabv3-ResNet-101 on VOC and needs a GPU (none found); "
                         "pass --device cpu to run it on the CPU anyway (weeks)")


# --- the real components -----------------------------------------------------------------------------

_EVENT_FIELDS = ("epoch", "pass", "iteration", "step", "done", "total", "loss", "train_acc", "fooling_rate",
                 "fooled_so_far", "best", "saturation", "elapsed_s")
PROGRESS_EVERY_S = 10.0  # inside a pass / epoch: a progress line at most this often


def _events(label: str, log: Callable[[str], None] | None, every_s: float = PROGRESS_EVERY_S) -> Callable[[dict], None] | None:
    """A crafting / surrogate-training callback that logs the coarse events (epochs, passes,
    validations, the time estimate) and, inside a pass or epoch, a progress line every ``every_s``
    seconds (steps, batches, iterations)."""
    if log is None:
        return None
    last = [time.perf_counter()]

    def callback(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "estimate":
            log(f"  {label}: estimated {ev['estimate_s']:.0f} s (rough estimate: {ev.get('basis', '')})")
            return
        if kind in ("batch", "iter", "step"):
            now = time.perf_counter()
            if now - last[0] < every_s:
                return
            last[0] = now
        elif kind not in ("epoch", "pass", "val", "halve"):
            return
        parts = [f"{k} {ev[k]:.3f}" if isinstance(ev[k], float) else f"{k} {ev[k]}" for k in _EVENT_FIELDS if k in ev]
        log(f"  {label} {ev['event']}: " + ", ".join(parts))
    return callback


def default_components(log: Callable[[str], None] | None = None) -> Components:
    """The suite's own data generator, trainer, zoo export, attacks, evaluation engine and report."""
    from .attacks import recipes, surrogate
    from .data import synth
    from .evaluation import engine, results
    from .models import zoo
    from .reports import build_report
    from . import training

    def generate(out: Path, preset: str, seed: int) -> Path:
        return synth.generate(out, preset=preset, seed=seed, progress=log is not None, overwrite=True)  # its bar is on stdout

    def train(name: str, data_root: Path, out: Path, preset: str, device: str, **options) -> Path:
        return training.train_recipe(name, data_root, out, preset=preset, device=device, **options)

    def export(name: str, ckpt: Path, models_dir: Path) -> Path:
        # records the exported (fp16-stored) weights' val mIoU in zoo.json
        return training.export_to_zoo(name, ckpt, models_dir)

    def train_surrogate(arch: str, data_root: Path, out: Path, preset: str, device: str, **options) -> Path:
        return surrogate.train_surrogate(arch, data_root, out, preset=preset, device=device, resume=True,
                                         callback=_events(arch, log), overwrite=True, **options)

    def craft(name, data_root, source_model, surrogate_ckpts, out_dir, device, preset):
        return recipes.craft_shipped(name, data_root, source_model, surrogate_ckpts, out_dir, device, preset=preset,
                                     callback=_events(name, log))

    def evaluate(model_spec, data_root, split, perturbations, out, device, model_name):
        records = engine.evaluate(model_spec, data_root=data_root, split=split, perturbations=perturbations or "none",
                                  subsets="all", device=device, out=out, model_name=model_name)
        return [results.record_path(out, r) for r in records]

    def pretrain(data_root: Path, out: Path, preset: str, device: str, **options) -> Path:
        from .training.pretrain import pretrain_backbone

        return pretrain_backbone(data_root, out, preset=preset, device=device, **options)

    def report(results_dir, out_dir, data_root, models_dir, device):
        return build_report(results_dir, out_dir, data_root=data_root, models_dir=models_dir,
                            device="cpu" if device == "auto" else device)

    return Components(
        generate=generate, train=train, export=export, train_surrogate=train_surrogate, craft=craft,
        evaluate=evaluate, report=report, write_expected=results.write_expected,
        model_names=tuple(zoo.ZOO_NAMES), perturbation_names=tuple(recipes.SHIPPED),
        gduap_source=recipes.GDUAP_SOURCE, gduap_names=tuple(n for n, r in recipes.SHIPPED.items() if r.kind == "gd-uap"),
        surrogate_archs=tuple(surrogate.SURROGATE_ARCHS), stage2_from=dict(training.recipes.STAGE2_FROM),
        pretrain=pretrain,
        seed_replicates={b: tuple(training.recipes.replicates_of(b)) for b in training.recipes.REPLICATED_METHODS},
    )
