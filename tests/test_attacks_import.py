"""Importers: the published files (../shared/perturbations/public, skipped when absent), the
documented conversions element by element, bad inputs, and the perturbation CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from robustbench_seg.attacks.importers import IMPORTERS, convert, import_perturbation
from robustbench_seg.attacks.perturbation import load_perturbation
from robustbench_seg.cli import main
from robustbench_seg.errors import PerturbationError

PUBLISHED_SHA256 = {
    "ResNet-152.mat": "f70bdf43b2a464894344696dc4473b8ee07623a5356b5b16d54c7d099bcd35d4",
    "GoogLeNet.mat": "1fb751674af0ddccfae2e837935ef62bd07c0db8f2038a369cdb4cde7431106b",
    "resnet152_no_data.npy": "d21acc578d0dfe41e0fcb139d360202f860c2fd47eece7c337ac689ae94a0c63",
    "googlenet_with_data.npy": "d1dc0049e6db3086b9d3c9d16c647d9aa80e71807e40704aecca9833d0e8b408",
    "pytorch_gd_uap_resnet152_no_data.npy": "e9b536af902c39ec46ae97f60b2ec260c69412986268f76feab6b8df29deca7a",
}


def test_registry_names():
    assert set(IMPORTERS) == {"lts4-mat", "gduap-npy", "torch-chw"}


# --- the real published files -------------------------------------------------------------------

@pytest.mark.parametrize("fname", ["ResNet-152.mat", "GoogLeNet.mat"])
def test_lts4_mat_whc_default(public_perturbations_dir, tmp_path, fname):
    src = public_perturbations_dir / fname
    r = scipy.io.loadmat(str(src))["r"]
    pert = import_perturbation("lts4-mat", src, tmp_path / "uap")
    a = pert.array
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    # default: Caffe's BGR W x H x C input space -> out[c, y, x] == r[x, y, 2 - c], element-wise
    c, y, x = np.meshgrid(np.arange(3), np.arange(224), np.arange(224), indexing="ij")
    assert np.array_equal(a, r[x, y, 2 - c])
    assert a[1, 5, 200] == r[200, 5, 1] and a[0, 223, 0] == r[0, 223, 2] and a[2, 0, 7] == r[7, 0, 0]
    m = pert.meta
    assert m["channels"] == "bgr" and m["conversion"]["channel_order"] == "bgr"
    assert m["source_sha256"] == PUBLISHED_SHA256[fname]
    assert m["source_format"] == "lts4-mat" and m["method"] == "uap" and m["xi"] == 10.0 and m["norm"] == "inf"
    assert m["conversion"]["axes"] == "whc" and m["conversion"]["formula"] == "out[c, y, x] = r[x, y, 2 - c]"
    assert m["size"] == [224, 224] and m["imported"] is True
    # reload through the suite's loader: same values, json on disk
    again = load_perturbation(tmp_path / "uap.npy")
    assert np.array_equal(again.array, a) and json.loads((tmp_path / "uap.json").read_text())["source_file"] == fname


def test_lts4_mat_hwc_option(public_perturbations_dir, tmp_path):
    src = public_perturbations_dir / "ResNet-152.mat"
    r = scipy.io.loadmat(str(src))["r"]
    a = import_perturbation("lts4-mat", src, tmp_path / "hwc", axes="hwc", channels="rgb").array
    assert np.array_equal(a, np.transpose(r, (2, 0, 1)))  # out[c, y, x] == r[y, x, c]
    assert a[2, 7, 100] == r[7, 100, 2]


@pytest.mark.parametrize("fname", ["resnet152_no_data.npy", "googlenet_with_data.npy"])
def test_gduap_npy_nhwc_bgr(public_perturbations_dir, tmp_path, fname):
    src = public_perturbations_dir / fname
    raw = np.load(src, allow_pickle=False)
    pert = import_perturbation("gduap-npy", src, tmp_path / "gd")
    a = pert.array
    assert a.shape == (3, 224, 224)
    for c in range(3):  # BGR -> RGB: out[c, y, x] == raw[0, y, x, 2 - c]
        assert np.array_equal(a[c], raw[0, :, :, 2 - c])
    m = pert.meta
    assert m["source_sha256"] == PUBLISHED_SHA256[fname] and m["method"] == "gd-uap"
    assert m["conversion"]["layout"] == "NHWC" and m["conversion"]["layout_detected"] is True
    assert m["conversion"]["channels"].startswith("BGR -> RGB") and "recommended_fit" not in m
    assert float(np.abs(a).max()) == 10.0


def test_torch_chw_unit_scale(public_perturbations_dir, tmp_path):
    src = public_perturbations_dir / "pytorch_gd_uap_resnet152_no_data.npy"
    raw = np.load(src, allow_pickle=False)
    pert = import_perturbation("torch-chw", src, tmp_path / "pt")
    a = pert.array
    assert a.shape == (3, 224, 224)
    assert np.array_equal(a, (raw[0].astype(np.float64) * 255.0).astype(np.float32))
    assert abs(float(np.abs(a).max()) - 10.0) < 1e-4
    assert pert.meta["conversion"]["multiplier"] == 255.0 and pert.meta["source_sha256"] == PUBLISHED_SHA256[src.name]
    # the same file declared as 0-255 units: max |v| 0.04 is a wrong --scale, not a UAP: refused ...
    with pytest.raises(PerturbationError, match=r"below 0\.5"):
        import_perturbation("torch-chw", src, tmp_path / "pt255", scale=255)
    assert not (tmp_path / "pt255.npy").exists()
    # ... unless the user insists
    b = import_perturbation("torch-chw", src, tmp_path / "pt255", scale=255, allow_any_magnitude=True).array
    assert np.array_equal(b, raw[0])


def test_wrong_format_for_a_real_file_is_one_line_error(public_perturbations_dir):
    with pytest.raises(PerturbationError, match="resnet152_no_data.npy: not a readable MATLAB"):
        convert("lts4-mat", public_perturbations_dir / "resnet152_no_data.npy")
    with pytest.raises(PerturbationError, match=r"expected \(1, 3, H, W\) or \(3, H, W\)"):
        convert("torch-chw", public_perturbations_dir / "resnet152_no_data.npy")
    with pytest.raises(PerturbationError, match="beyond the stated range"):  # 0-255 file read as [0, 1] units
        convert("gduap-npy", public_perturbations_dir / "resnet152_no_data.npy", scale=1)


# --- the segmentation GD-UAP layout (not obtainable here: built by hand) ---------------------------

def test_gduap_segmentation_nchw_variant(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.uniform(-10, 10, size=(1, 3, 513, 513)).astype(np.float32)
    np.save(tmp_path / "seg.npy", raw)
    pert = import_perturbation("gduap-npy", tmp_path / "seg.npy", tmp_path / "out")
    assert pert.array.shape == (3, 513, 513)
    for c in range(3):
        assert np.array_equal(pert.array[c], raw[0, 2 - c])
    assert pert.meta["conversion"]["layout"] == "NCHW" and pert.meta["recommended_fit"] == "crop"
    # forcing the other layout on it is refused
    with pytest.raises(PerturbationError, match="not NHWC"):
        convert("gduap-npy", tmp_path / "seg.npy", axes="nhwc")


def test_gduap_ambiguous_layout_needs_axes(tmp_path):
    np.save(tmp_path / "amb.npy", np.full((1, 3, 4, 3), 5.0, np.float32))
    with pytest.raises(PerturbationError, match="ambiguous"):
        convert("gduap-npy", tmp_path / "amb.npy")
    a = convert("gduap-npy", tmp_path / "amb.npy", axes="nchw").array
    assert a.shape == (3, 4, 3)  # C, H, W of (1, 3, 4, 3) read as NCHW


# --- bad inputs ---------------------------------------------------------------------------------------

def _mat(path: Path, **variables) -> Path:
    scipy.io.savemat(str(path), variables)
    return path


def test_lts4_bad_inputs(tmp_path):
    good = np.zeros((8, 6, 3), np.float32)
    with pytest.raises(PerturbationError, match=r"w\.mat: no variable 'r' \(variables: v\)"):
        convert("lts4-mat", _mat(tmp_path / "w.mat", v=good))
    with pytest.raises(PerturbationError, match="shape"):
        convert("lts4-mat", _mat(tmp_path / "s.mat", r=np.zeros((8, 6), np.float32)))
    bad = good.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(PerturbationError, match="n.mat: holds NaN"):
        convert("lts4-mat", _mat(tmp_path / "n.mat", r=bad))
    big = good.copy()
    big[0, 0, 0] = 12.0
    with pytest.raises(PerturbationError, match="b.mat: max \\|value\\| after conversion is 12"):
        convert("lts4-mat", _mat(tmp_path / "b.mat", r=big))
    assert convert("lts4-mat", tmp_path / "b.mat", xi=12).array.max() == 12.0  # a larger stated xi accepts it
    with pytest.raises(PerturbationError, match="float"):
        convert("lts4-mat", _mat(tmp_path / "i.mat", r=np.zeros((8, 6, 3), np.int16)))
    with pytest.raises(PerturbationError, match="file not found"):
        convert("lts4-mat", tmp_path / "missing.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(PerturbationError, match="junk.mat: not a readable MATLAB"):
        convert("lts4-mat", tmp_path / "junk.mat")
    with pytest.raises(PerturbationError, match="axes"):
        convert("lts4-mat", tmp_path / "b.mat", axes="chw", xi=12)


def test_npy_bad_inputs(tmp_path):
    np.save(tmp_path / "shape.npy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(PerturbationError, match="batch axis of size 1"):
        convert("gduap-npy", tmp_path / "shape.npy")
    np.save(tmp_path / "four.npy", np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(PerturbationError, match="no channel axis of size 3"):
        convert("gduap-npy", tmp_path / "four.npy")
    a = np.zeros((1, 3, 8, 8), np.float32)
    a[0, 1, 2, 3] = np.inf
    np.save(tmp_path / "inf.npy", a)
    with pytest.raises(PerturbationError, match="inf.npy: holds NaN or infinite"):
        convert("torch-chw", tmp_path / "inf.npy")
    np.save(tmp_path / "range.npy", np.full((3, 8, 8), 0.05, np.float32))  # 0.05 * 255 = 12.75 > 10
    with pytest.raises(PerturbationError, match="beyond the stated range"):
        convert("torch-chw", tmp_path / "range.npy")
    np.save(tmp_path / "int.npy", np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(PerturbationError, match="float"):
        convert("torch-chw", tmp_path / "int.npy")
    with pytest.raises(PerturbationError, match="unknown format"):
        convert("caffe-blob", tmp_path / "int.npy")
    with pytest.raises(PerturbationError, match="--scale must be a positive"):
        convert("torch-chw", tmp_path / "range.npy", scale=0)


class _Trap:
    """Unpickling this would create a file: the importer must never unpickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_object_npy_is_refused_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled.flag"
    arr = np.empty(1, dtype=object)
    arr[0] = _Trap(str(sentinel))
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    for fmt in ("gduap-npy", "torch-chw"):
        with pytest.raises(PerturbationError, match="evil.npy: not a plain numeric .npy"):
            convert(fmt, tmp_path / "evil.npy")
    assert not sentinel.exists()


# --- CLI ----------------------------------------------------------------------------------------------

def test_cli_import_show_list(public_perturbations_dir, tmp_path, capsys):
    out = tmp_path / "perts" / "uap-rn"
    assert main(["perturbation", "import", "--format", "lts4-mat", str(public_perturbations_dir / "ResNet-152.mat"),
                 "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["conversion"]["formula"] == "out[c, y, x] = r[x, y, 2 - c]" and info["meta"]["channels"] == "bgr"
    png = tmp_path / "preview.png"
    assert main(["perturbation", "show", str(out) + ".npy", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert f"preview: {png}" in text and "lts4-mat" in text and "source_sha256" in text
    from PIL import Image

    img = Image.open(png)
    assert img.mode == "RGB" and img.width > 3 * 224
    assert main(["perturbation", "show", str(out), "--png", str(png), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["preview"] == str(png) and shown["size"] == [224, 224] and shown["stats"]["max"] == 10.0
    assert main(["perturbation", "list", "--dir", str(out.parent), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["perturbations"]
    assert [r["name"] for r in listed] == ["uap-rn"] and listed[0]["method"] == "uap"


def test_cli_import_error_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 8, 8, 4), np.float32))
    assert main(["perturbation", "import", "--format", "gduap-npy", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npy" in err[0] and err[0].startswith("rbseg: error:")
    assert not (tmp_path / "o.npy").exists()
    assert main(["perturbation", "show", str(tmp_path / "nothing")]) == 2


def test_preview_visualisation_centres_on_128():
    from robustbench_seg.attacks.preview import visualise

    a = np.zeros((3, 2, 2), np.float32)
    a[0, 0, 0], a[1, 1, 1] = 10.0, -5.0
    img = visualise(a)
    assert img.shape == (2, 2, 3) and img[0, 0, 0] == 255 and img[1, 1, 1] == 128 - 64 and img[0, 1, 2] == 128
    assert (visualise(np.zeros((3, 2, 2), np.float32)) == 128).all()


# --- issue 10: channel order, magnitude, overwrites, output folder ------------------------------------

def test_lts4_channels_bgr_swaps_channels_0_and_2_and_rgb_keeps_them(tmp_path, capsys):
    """A hand-made W x H x C file whose channels are constant 1, 2, 3: bgr (the default) reads
    channel 0 of the file as blue (out channel 2), rgb keeps the order; the choice is recorded."""
    r = np.zeros((5, 4, 3), np.float32)  # W 5, H 4
    r[..., 0], r[..., 1], r[..., 2] = 1.0, 2.0, 3.0
    r[2, 1, 0] = 7.0  # x 2, y 1, file channel 0
    src = _mat(tmp_path / "hand.mat", r=r)
    bgr = import_perturbation("lts4-mat", src, tmp_path / "bgr")
    rgb = import_perturbation("lts4-mat", src, tmp_path / "rgb", channels="rgb")
    assert bgr.array.shape == rgb.array.shape == (3, 4, 5)
    assert [float(bgr.array[c, 0, 0]) for c in range(3)] == [3.0, 2.0, 1.0]
    assert [float(rgb.array[c, 0, 0]) for c in range(3)] == [1.0, 2.0, 3.0]
    assert bgr.array[2, 1, 2] == 7.0 and rgb.array[0, 1, 2] == 7.0
    assert bgr.meta["channels"] == "bgr" and rgb.meta["channels"] == "rgb"
    assert json.loads((tmp_path / "bgr.json").read_text())["conversion"]["channel_order"] == "bgr"
    assert main(["perturbation", "import", "--format", "lts4-mat", str(src), "--out", str(tmp_path / "cli"),
                 "--channels", "rgb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["channels"] == "rgb"
    with pytest.raises(PerturbationError, match="--channels must be rgb or bgr"):
        convert("lts4-mat", src, channels="gbr")


def test_gduap_npy_import_of_a_tiny_max_is_refused_as_a_wrong_format(tmp_path, capsys):
    a = np.full((1, 8, 8, 3), 0.04, np.float32)  # a [0, 1]-unit file read as 0-255 units
    np.save(tmp_path / "small.npy", a)
    with pytest.raises(PerturbationError, match=r"small\.npy: max \|value\| after conversion is 0\.04.*below 0\.5"):
        import_perturbation("gduap-npy", tmp_path / "small.npy", tmp_path / "out")
    assert main(["perturbation", "import", "--format", "gduap-npy", str(tmp_path / "small.npy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "below 0.5" in err[0]
    assert main(["perturbation", "import", "--format", "gduap-npy", str(tmp_path / "small.npy"), "--out", str(tmp_path / "o"),
                 "--allow-any-magnitude", "--json"]) == 0
    capsys.readouterr()


def test_import_refuses_an_existing_out_unless_overwrite(tmp_path, capsys):
    src = _mat(tmp_path / "a.mat", r=np.full((4, 4, 3), 5.0, np.float32))
    (tmp_path / "keep.npy").write_bytes(b"unrelated data")
    with pytest.raises(Exception, match="already exists; pass --overwrite"):
        import_perturbation("lts4-mat", src, tmp_path / "keep")
    assert (tmp_path / "keep.npy").read_bytes() == b"unrelated data"
    assert main(["perturbation", "import", "--format", "lts4-mat", str(src), "--out", str(tmp_path / "keep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "keep.npy" in err[0]
    assert main(["perturbation", "import", "--format", "lts4-mat", str(src), "--out", str(tmp_path / "keep"), "--overwrite"]) == 0
    assert load_perturbation(tmp_path / "keep.npy").max_abs == 5.0


def test_bare_out_name_writes_to_the_current_folder_never_the_shipped_one(tmp_path, monkeypatch, capsys):
    from robustbench_seg.attacks.perturbation import resolve_output_path
    from robustbench_seg.paths import shipped_perturbations_dir

    monkeypatch.chdir(tmp_path)
    assert resolve_output_path("uap-resnet") == Path("uap-resnet.npy")
    src = _mat(tmp_path / "a.mat", r=np.full((4, 4, 3), 5.0, np.float32))
    shipped = shipped_perturbations_dir() / "uap-resnet.npy"
    before = shipped.read_bytes() if shipped.is_file() else None
    assert main(["perturbation", "import", "--format", "lts4-mat", str(src), "--out", "uap-resnet"]) == 0
    assert (tmp_path / "uap-resnet.npy").is_file() and (tmp_path / "uap-resnet.json").is_file()
    assert (shipped.read_bytes() if shipped.is_file() else None) == before


def test_load_perturbation_magnitude_checks_and_max_abs(tmp_path):
    from robustbench_seg.attacks.perturbation import save_perturbation

    np.save(tmp_path / "huge.npy", np.full((3, 4, 4), 100.0, np.float32))  # no sidecar, +-100
    with pytest.raises(PerturbationError, match=r"huge\.npy: max \|value\| 100 exceeds 32.*--allow-any-magnitude"):
        load_perturbation(tmp_path / "huge.npy")
    np.save(tmp_path / "unit.npy", np.full((3, 4, 4), 10 / 255, np.float32))  # [0, 1] units, no sidecar
    with pytest.raises(PerturbationError, match="below 0.5"):
        load_perturbation(tmp_path / "unit.npy")
    assert load_perturbation(tmp_path / "huge.npy", allow_any_magnitude=True).max_abs == 100.0
    assert load_perturbation(tmp_path / "unit.npy", allow_any_magnitude=True).max_abs == pytest.approx(10 / 255)
    np.save(tmp_path / "ok.npy", np.full((3, 4, 4), -8.0, np.float32))
    assert load_perturbation(tmp_path / "ok.npy").max_abs == 8.0
    # a sidecar that states xi = 4 while the array reaches 8: refused (and without a check when allowed)
    save_perturbation(tmp_path / "lie.npy", np.full((3, 4, 4), 3.0, np.float32), {"method": "uap", "norm": "inf", "xi": 10})
    np.save(tmp_path / "lie.npy", np.full((3, 4, 4), 8.0, np.float32))
    meta = json.loads((tmp_path / "lie.json").read_text())
    meta["xi"] = 4
    (tmp_path / "lie.json").write_text(json.dumps(meta))
    with pytest.raises(PerturbationError, match="exceeds the stated xi = 4"):
        load_perturbation(tmp_path / "lie.npy")
    assert load_perturbation(tmp_path / "lie.npy", allow_any_magnitude=True).max_abs == 8.0


def test_perturbation_list_of_a_missing_folder_fails_with_one_line(tmp_path, capsys):
    assert main(["perturbation", "list", "--dir", str(tmp_path / "nonexistent")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonexistent" in err[0] and "no such folder" in err[0]


def test_imported_files_record_their_source_role_and_fill_table4_by_it(tmp_path, capsys):
    """The README's real-VOC flow imports ResNet-152.mat: the file name names the classifier it was
    crafted on, so the import records source_model.arch and the report places it in the UAP ResNet
    column by role (before, it recorded no source and fell out of Table 4). --source-arch and --prior
    record the role of any other file; an unknown file name records none."""
    from robustbench_seg.reports.tables import table4_role

    r = np.full((6, 6, 3), 4.0, np.float32)
    resnet = import_perturbation("lts4-mat", _mat(tmp_path / "ResNet-152.mat", r=r), tmp_path / "uap-resnet-public")
    assert resnet.meta["source_model"]["arch"] == "resnet152"
    assert "file name" in resnet.meta["source_model"]["recorded_from"]
    assert table4_role(resnet.meta)[0] == "uap-resnet"
    gnet = import_perturbation("lts4-mat", _mat(tmp_path / "GoogLeNet.mat", r=r), tmp_path / "gnet")
    assert table4_role(gnet.meta)[0] == "uap-googlenet"
    other = import_perturbation("lts4-mat", _mat(tmp_path / "mine.mat", r=r), tmp_path / "mine")
    assert "source_model" not in other.meta and table4_role(other.meta)[0] is None
    named = import_perturbation("lts4-mat", _mat(tmp_path / "mine2.mat", r=r), tmp_path / "mine2", source_arch="GoogLeNet")
    assert named.meta["source_model"]["recorded_from"] == "--source-arch"
    assert table4_role(named.meta)[0] == "uap-googlenet"
    a = np.full((1, 8, 8, 3), 5.0, np.float32)
    np.save(tmp_path / "g.npy", a)
    assert main(["perturbation", "import", "--format", "gduap-npy", str(tmp_path / "g.npy"), "--out",
                 str(tmp_path / "g-rpart"), "--prior", "partial", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)["meta"]
    assert meta["prior_label"] == "R-Part" and table4_role(meta)[0] == "gduap-rpart"
    with pytest.raises(PerturbationError, match="--prior must be one of"):
        import_perturbation("gduap-npy", tmp_path / "g.npy", tmp_path / "bad", prior="some")
