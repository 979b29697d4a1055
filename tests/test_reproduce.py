"""rbseg reproduce: stage planning, resume/skip logic and outputs, with the heavy stages as fast fakes.

The fakes (injected through ``Components``) write small files and hand-made result records; the
planning, state, skipping, report and expected.json code under test is the real one.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from robustbench_seg.cli import main
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation.results import read_expected, write_expected
from robustbench_seg.io import atomic_write_json
from robustbench_seg.reports import build_report, spec
from robustbench_seg.reproduce import STAGES, Components, reproduce

from test_report import make_record

ZOO = tuple(spec.METHOD_LABELS)
PERTS = ("uap-resnet", "uap-googlenet", "gduap-rno", "gduap-rall", "gduap-rpart")
ARCHS = ("resnet152", "googlenet")


class FakePipeline:
    """Records every call; ``fail`` = (kind, name) raises there once, like an interrupted run."""

    def __init__(self, fail: tuple[str, str] | None = None, with_ooc: bool = True):
        self.calls: list[tuple] = []
        self.fail = fail
        self.with_ooc = with_ooc

    def _call(self, kind: str, name: str, *extra):
        self.calls.append((kind, name, *extra))
        if self.fail == (kind, name):
            self.fail = None
            raise KeyboardInterrupt(f"killed during {kind} {name}")

    def generate(self, out: Path, preset: str, seed: int) -> Path:
        self._call("generate", preset, seed)
        root = Path(out) / "VOC2012"
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / "val.txt").write_text("val_0\n")
        if self.with_ooc:
            (sets / "ooc.txt").write_text("ooc_0\n")
        return root

    def train(self, name, data_root, out, preset, device, **options) -> Path:
        self._call("train", name, preset, tuple(sorted(options)))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "last.pt").write_bytes(name.encode())
        return Path(out) / "last.pt"

    def export(self, name, ckpt, models_dir) -> Path:
        self._call("export", name, Path(ckpt).name)
        Path(models_dir).mkdir(parents=True, exist_ok=True)
        path = Path(models_dir) / f"{name}.pt"
        path.write_bytes(Path(ckpt).read_bytes())
        return path

    def train_surrogate(self, arch, data_root, out, preset, device, **options) -> Path:
        self._call("surrogate", arch)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "surrogate.pt").write_bytes(arch.encode())
        return Path(out) / "surrogate.pt"

    def craft(self, name, data_root, source_model, surrogate_ckpts, out_dir, device, preset):
        self._call("craft", name, Path(source_model).name, tuple(sorted(surrogate_ckpts)), preset)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{name}.npy").write_bytes(b"npy")
        (Path(out_dir) / f"{name}.json").write_text("{}")

    def evaluate(self, model_spec, data_root, split, perturbations, out, device, model_name) -> list[Path]:
        self._call("evaluate", model_name, split, tuple(Path(p).stem for p in perturbations), Path(model_spec).name)
        paths = []
        for k, pert in enumerate(["clean", *(Path(p).stem for p in perturbations)]):
            rec = make_record(model_name, pert, split, miou=50.0 - k, subsets={"cooc50": (4, 40.0, None)})
            path = Path(out) / model_name / split / f"{pert}.json"
            atomic_write_json(path, rec)
            paths.append(path)
        return paths

    def report(self, results_dir, out_dir, data_root, models_dir, device):
        self._call("report", str(out_dir))
        return build_report(results_dir, out_dir, data_root=data_root, models_dir=models_dir, qualitative=False)

    def write_expected(self, results_dir, path) -> Path:
        self._call("expected", str(path))
        return write_expected(results_dir, path)

    def components(self) -> Components:
        return Components(
            generate=self.generate, train=self.train, export=self.export, train_surrogate=self.train_surrogate,
            craft=self.craft, evaluate=self.evaluate, report=self.report, write_expected=self.write_expected,
            model_names=ZOO, perturbation_names=PERTS, surrogate_archs=ARCHS,
        )

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_full_run_plans_every_stage_in_order_and_writes_the_shipped_layout(tmp_path):
    fake = FakePipeline()
    summary = reproduce("micro", out=tmp_path, components=fake.components())
    kinds = fake.kinds()
    n = len(ZOO)
    expected_order = (["generate"] + ["train"] * (n + 1) + ["export"] * (n + 1) + ["surrogate"] * 2 + ["craft"] * 5
                      + ["evaluate"] * (n + 2) + ["report", "expected"])
    assert kinds == expected_order
    assert fake.calls[0] == ("generate", "micro", 0)
    # the GD-UAP source model is trained and exported after the zoo, and never evaluated
    assert [c[1] for c in fake.calls if c[0] == "train"] == [*ZOO, "gduap-source"]
    assert [c[1] for c in fake.calls if c[0] == "export"] == [*ZOO, "gduap-source"]
    assert "gduap-source" not in {c[1] for c in fake.calls if c[0] == "evaluate"}
    assert all(c[2:] == ("tiny", ("batch_size", "stage2_steps", "steps")) for c in fake.calls if c[0] == "train")
    # the GD-UAPs are crafted on the exported gduap-source (not an evaluated row), with the micro crafting preset;
    # every craft sees both surrogates
    crafts = {c[1]: c[2:] for c in fake.calls if c[0] == "craft"}
    assert {crafts[p][0] for p in PERTS if p.startswith("gduap")} == {"gduap-source.pt"}
    assert all(c[1] == tuple(sorted(ARCHS)) and c[2] == "micro" for c in crafts.values())
    evals = [c for c in fake.calls if c[0] == "evaluate"]
    assert [(c[1], c[2]) for c in evals if c[2] == "ooc"] == [("baseline", "ooc"), ("binding", "ooc")]
    assert all(c[3] == PERTS for c in evals if c[2] == "val") and all(c[3] == () for c in evals if c[2] == "ooc")
    assert all(c[4] == f"{c[1]}.pt" for c in evals)  # each model is evaluated from its exported checkpoint

    for sub in ("models/binding.pt", "perturbations/gduap-rall.npy", "reports/index.html", "reports/expected.json",
                "reports/tables/table4.md", "reports/figures/figure4_cooccurrence.png", "reports/results", "data/VOC2012",
                "work/state.json"):
        assert (tmp_path / sub).exists(), sub
    entries = read_expected(tmp_path / "reports" / "expected.json")
    assert {(e["model"], e["split"]) for e in entries} >= {("binding", "val"), ("binding", "ooc"), ("binding-mfb", "val")}
    assert summary.data_root == str(tmp_path / "data" / "VOC2012")
    rows = {r["stage"]: r for r in summary.stage_rows()}
    assert list(rows) == list(STAGES)
    assert rows["train"]["ran"] == n + 1 and rows["evaluate"]["ran"] == n + 2 and all(r["skipped"] == 0 for r in rows.values())
    js = summary.to_json()
    assert js["preset"] == "micro" and len(js["steps"]) == len(expected_order)


def test_second_run_needs_resume_and_then_skips_everything(tmp_path):
    reproduce("micro", out=tmp_path, components=FakePipeline().components())
    with pytest.raises(RbsegError, match="pass --resume"):
        reproduce("micro", out=tmp_path, components=FakePipeline().components())
    fake = FakePipeline()
    lines: list[str] = []
    summary = reproduce("micro", out=tmp_path, resume=True, components=fake.components(), log=lines.append)
    assert fake.calls == []
    assert all(s.status == "skipped" for s in summary.steps)
    assert f"train: {len(ZOO) + 1} step(s) done already (skipped)" in lines and len(lines) == len(STAGES)
    with pytest.raises(RbsegError, match="choose another --out"):
        reproduce("tiny", out=tmp_path, resume=True, components=FakePipeline().components())


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    fake = FakePipeline(fail=("craft", "gduap-rno"))
    with pytest.raises(KeyboardInterrupt):
        reproduce("micro", out=tmp_path, components=fake.components())
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert "craft/uap-googlenet" in state["steps"] and "craft/gduap-rno" not in state["steps"]
    again = FakePipeline()
    reproduce("micro", out=tmp_path, resume=True, components=again.components())
    kinds = again.kinds()
    assert "train" not in kinds and "export" not in kinds and "surrogate" not in kinds and "generate" not in kinds
    assert [c[1] for c in again.calls if c[0] == "craft"] == ["gduap-rno", "gduap-rall", "gduap-rpart"]
    assert kinds.count("evaluate") == len(ZOO) + 2 and kinds[-2:] == ["report", "expected"]


def test_a_lost_output_reruns_its_step_and_the_steps_that_depend_on_it(tmp_path):
    reproduce("micro", out=tmp_path, components=FakePipeline().components())
    (tmp_path / "models" / "mixup.pt").unlink()
    fake = FakePipeline()
    reproduce("micro", out=tmp_path, resume=True, components=fake.components())
    assert [c[:2] for c in fake.calls] == [("export", "mixup"), ("evaluate", "mixup"), ("report", str(tmp_path / "reports")),
                                           ("expected", str(tmp_path / "reports" / "expected.json"))]


def test_given_data_root_and_no_ooc_split(tmp_path):
    data = FakePipeline(with_ooc=False).generate(tmp_path / "mydata", "x", 0)
    fake = FakePipeline()
    summary = reproduce("micro", data_root=data, out=tmp_path / "out", components=fake.components())
    assert "generate" not in fake.kinds()
    assert all(c[2] == "val" for c in fake.calls if c[0] == "evaluate")
    ooc = [s for s in summary.steps if s.id == "evaluate/binding/ooc"][0]
    assert ooc.outputs == {"skipped": "the dataset has no ooc split"}
    assert all(Path(c[1]) != tmp_path / "out" / "data" for c in fake.calls)


def test_paper_preset_needs_data_and_says_so(tmp_path, capsys):
    with pytest.raises(RbsegError, match="needs --data ROOT"):
        reproduce("paper", out=tmp_path, components=FakePipeline().components())
    assert main(["reproduce", "--preset", "paper", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbseg: error:") and "--data ROOT" in err and len(err.splitlines()) == 1
    with pytest.raises(RbsegError, match="unknown preset"):
        reproduce("huge", out=tmp_path, components=FakePipeline().components())


def test_cli_help_lists_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "tiny" in out and "paper" in out


def test_a_stage2_model_trains_after_its_stage1_model_and_follows_it(tmp_path):
    """Components.stage2_from: the plan orders the stage-1 model first, hands its checkpoint over, and a
    re-run of stage 1 re-runs stage 2 (binding = stage 2 of binding-no-denoise in the real zoo)."""
    def components(fake: FakePipeline) -> Components:
        return replace(fake.components(), stage2_from={"binding": "binding-no-denoise"})

    fake = FakePipeline()
    reproduce("micro", out=tmp_path, components=components(fake))
    order = [c[1] for c in fake.calls if c[0] == "train"]
    assert order == [n for n in ZOO if n != "binding"] + ["gduap-source", "binding"]
    assert [c[3] for c in fake.calls if c[:2] == ("train", "binding")] == [("batch_size", "stage2_from", "stage2_steps", "steps")]
    (tmp_path / "work" / "train" / "binding-no-denoise" / "last.pt").unlink()
    again = FakePipeline()
    reproduce("micro", out=tmp_path, resume=True, components=components(again))
    assert [c[1] for c in again.calls if c[0] == "train"] == ["binding-no-denoise", "binding"]
    assert {c[1] for c in again.calls if c[0] == "export"} == {"binding-no-denoise", "binding"}


def test_a_lost_gduap_source_recrafts_only_the_gduaps(tmp_path):
    """issue 10: the GD-UAPs depend on the gduap-source model (its own train and export steps), the UAPs do not."""
    reproduce("micro", out=tmp_path, components=FakePipeline().components())
    (tmp_path / "work" / "train" / "gduap-source" / "last.pt").unlink()
    fake = FakePipeline()
    reproduce("micro", out=tmp_path, resume=True, components=fake.components())
    assert [c[:2] for c in fake.calls if c[0] in ("train", "export")] == [("train", "gduap-source"), ("export", "gduap-source")]
    assert [c[1] for c in fake.calls if c[0] == "craft"] == ["gduap-rno", "gduap-rall", "gduap-rpart"]
    assert "gduap-source" not in {c[1] for c in fake.calls if c[0] == "evaluate"}
