"""Common corruptions (robustbench_seg.corruptions): the torch implementations against the reference
package (imagecorruptions-imaug) on real VOC samples and SynthVOC images, determinism, hand-checked
values, the samplers' distributions, parsing and errors.

The reference-comparison tests feed the torch definitions with the very random numbers NumPy draws
inside the reference (same seed, same calls), so a definition is compared pixel for pixel; the hashed
samplers rbseg uses instead are checked by their distributions.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_seg import corruptions as C
from robustbench_seg.corruptions import blur, noise, rng, weather
from robustbench_seg.errors import RbsegError

pytestmark = pytest.mark.usefixtures("one_thread")

TORCH_NAMES = [n for n, d in C.CORRUPTIONS.items() if d.impl == "torch"]
REFERENCE_NAMES = [n for n, d in C.CORRUPTIONS.items() if d.impl == "reference"]
# max fraction of values allowed to differ (by exactly 1, at the uint8 truncation) from the reference
# given the same random numbers: float rounding of a different but equivalent order of operations
FRACTION = {"zoom_blur": 0.01}
DEFAULT_FRACTION = 0.005


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _samples(root: Path, n: int, crops: list[tuple[int, int]]) -> list[np.ndarray]:
    files = sorted((root / "JPEGImages").glob("*.jpg"))[:n]
    assert files, f"no images in {root}"
    out = []
    for f, (h, w) in zip(files, crops * n):
        img = _read_rgb(f)
        h, w = min(h, img.shape[0]), min(w, img.shape[1])
        y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append(np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w]))
    return out


@pytest.fixture(scope="module")
def voc_crops(voc_samples_root):
    return _samples(voc_samples_root, 3, [(64, 64), (71, 96), (48, 53)])


@pytest.fixture(scope="module")
def synth_images(synth_micro_root):
    return _samples(synth_micro_root, 3, [(56, 56), (64, 72), (40, 61)])


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].to(torch.float64)


def numpy_draws(name: str, severity: int, img: np.ndarray, seed: int):
    """The random numbers the reference draws for (name, severity) with NumPy seeded by ``seed``
    (as ``reference.reference_one`` seeds it), in the layout the torch ``apply_`` functions take."""
    np.random.seed(seed)
    if name in ("gaussian_noise", "speckle_noise"):
        return _chw(np.random.normal(size=img.shape))      # normal(scale=c) == c * normal(): same bits
    if name == "shot_noise":
        return _chw(np.random.poisson(img / 255.0 * noise.SHOT[severity - 1]).astype(np.float64))
    if name == "impulse_noise":                             # skimage random_noise: default_rng(seed), two draws
        g = np.random.default_rng(seed)
        return _chw(g.random(img.shape)), _chw(g.random(img.shape))
    if name == "motion_blur":
        return [np.random.uniform(-45, 45)]
    if name == "fog":                                       # plasma_fractal's uniform(-w, w) = -w + 2w * random_sample
        mapsize = weather.next_power_of_2(max(img.shape[:2]))
        return [torch.from_numpy(np.random.random_sample(shape))[None] for shape in weather.plasma_shapes(mapsize)]
    if name == "frost":                                     # photo index, then the crop's row and column
        k = np.random.randint(6)
        fh, fw = weather.frost_layer(k, *img.shape[:2]).shape[:2]
        return [k], [np.random.randint(0, fh - img.shape[0])], [np.random.randint(0, fw - img.shape[1])]
    if name == "snow":                                      # the normal layer (loc + scale * gauss), then the angle
        return torch.from_numpy(np.random.normal(size=img.shape[:2]))[None], [np.random.uniform(-135, -45)]
    if name == "elastic_transform":                         # dx's field, then dy's; both scaled by shape[0]
        m = img.shape[0] * 0.005
        ux = np.random.uniform(-m, m, size=img.shape[:2])
        uy = np.random.uniform(-m, m, size=img.shape[:2])
        return torch.from_numpy(ux)[None], torch.from_numpy(uy)[None]
    assert C.CORRUPTIONS[name].draw is None, name
    return None


def _compare(name: str, images: list[np.ndarray], severities=(1, 2, 3, 4, 5)) -> None:
    from robustbench_seg.corruptions.reference import reference_one

    d = C.CORRUPTIONS[name]
    for k, img in enumerate(images):
        for sev in severities:
            seed = 1000 + 17 * k + sev
            ref = reference_one(img, name, sev, seed).astype(np.int64)
            y = d.apply(_chw(img), sev, numpy_draws(name, sev, img, seed))
            y = torch.floor(torch.clamp(y.to(torch.float64), 0, 255))[0].permute(1, 2, 0).numpy().astype(np.int64)
            diff = np.abs(y - ref)
            frac = float(np.mean(diff > 0))
            assert diff.max() <= 1 and frac <= FRACTION.get(name, DEFAULT_FRACTION), (
                f"{name} severity {sev} image {k} {img.shape}: max |diff| {diff.max()}, differing {frac:.4%}")


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_corruption_matches_reference_on_voc_samples(name, voc_crops):
    pytest.importorskip("imagecorruptions")
    _compare(name, voc_crops)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_corruption_matches_reference_on_synthvoc(name, synth_images):
    pytest.importorskip("imagecorruptions")
    _compare(name, synth_images)


def test_torch_corruptions_match_reference_on_a_full_size_voc_image(voc_samples_root):
    """One whole VOC image (about 500 x 375), severity 3 and 5: border handling at real sizes."""
    pytest.importorskip("imagecorruptions")
    img = _read_rgb(sorted((voc_samples_root / "JPEGImages").glob("*.jpg"))[0])
    for name in ("defocus_blur", "zoom_blur", "pixelate", "gaussian_blur", "motion_blur", "brightness", "elastic_transform",
                 "fog", "snow", "frost"):
        _compare(name, [img], severities=(3,) if name == "zoom_blur" else (5,))


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_reference_corruptions_are_the_reference_seeded_per_image(name, voc_crops):
    """A CPU-fallback corruption is the reference package with NumPy seeded from each image's seed."""
    pytest.importorskip("imagecorruptions")
    from robustbench_seg.corruptions.reference import reference_one

    imgs = [voc_crops[0], voc_crops[0]]
    x = torch.stack([_chw(i)[0] for i in imgs]).float()
    out = C.corrupt(x, name, 3, [5, 6])
    for i, s in enumerate([5, 6]):
        ref = reference_one(imgs[i], name, 3, s)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy().astype(np.uint8), ref), name
    assert torch.equal(C.corrupt(x, name, 3, [5, 6]), out)


def test_reference_order_and_names_match_the_package():
    ic = pytest.importorskip("imagecorruptions")
    assert list(C.BENCHMARK_CORRUPTIONS) == ic.get_corruption_names("common")
    assert list(C.EXTRA_CORRUPTIONS) == ic.get_corruption_names("validation")


def test_registry_lists_family_impl_and_tolerance_of_every_corruption():
    assert len(C.BENCHMARK_CORRUPTIONS) == 15 and len(C.EXTRA_CORRUPTIONS) == 4
    assert set(C.CORRUPTIONS) == set(C.BENCHMARK_CORRUPTIONS) | set(C.EXTRA_CORRUPTIONS)
    for name, d in C.CORRUPTIONS.items():
        assert d.family in {"noise", "blur", "weather", "digital"} and d.impl in {"torch", "reference"}
        assert d.tolerance and (d.apply is not None) == (d.impl == "torch"), name
        assert d.to_dict()["impl"] == d.impl


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_corrupt_is_deterministic_quantised_and_independent_of_the_batch(name):
    if C.CORRUPTIONS[name].impl == "reference":
        pytest.importorskip("imagecorruptions")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 40, 48), generator=g).float()
    seeds = [C.corruption_seed(f"img{i}", name, 2) for i in range(3)]
    y = C.corrupt(x, name, 2, seeds)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, y.round()) and float(y.min()) >= 0 and float(y.max()) <= 255
    assert torch.equal(C.corrupt(x, name, 2, seeds), y)
    alone = C.corrupt(x[1:2], name, 2, seeds[1:2])                 # same image, same seed, other batch
    assert torch.equal(alone, y[1:2])
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur",
                                  "glass_blur", "frost", "fog", "snow", "elastic_transform", "spatter"])
def test_random_corruptions_change_with_the_seed(name):
    if C.CORRUPTIONS[name].impl == "reference":
        pytest.importorskip("imagecorruptions")
    x = torch.randint(0, 256, (1, 3, 48, 48), generator=torch.Generator().manual_seed(1)).float()
    a = C.corrupt(x, name, 4, [C.corruption_seed("a", name, 4)])
    b = C.corrupt(x, name, 4, [C.corruption_seed("a", name, 4, seed=1)])
    assert not torch.equal(a, b)


def test_frost_draws_cover_every_photo_and_stay_inside_it():
    pytest.importorskip("imagecorruptions")
    x = torch.zeros(60, 3, 48, 40)
    idx, rows, cols = weather.draw_frost(x, 2, list(range(60)))
    assert set(idx.tolist()) == set(range(6))
    for k, r, c in zip(idx.tolist(), rows.tolist(), cols.tolist()):
        fh, fw = weather.frost_layer(k, 48, 40).shape[:2]
        assert 0 <= r < fh - 48 and 0 <= c < fw - 40


def test_corruption_seed_is_a_stable_hash_of_every_part():
    s = C.corruption_seed("2007_000129", "fog", 3, 0)
    assert s == C.corruption_seed("2007_000129", "fog", 3, 0)
    assert 0 <= s < 2 ** 32
    others = {C.corruption_seed("2007_000130", "fog", 3, 0), C.corruption_seed("2007_000129", "frost", 3, 0),
              C.corruption_seed("2007_000129", "fog", 4, 0), C.corruption_seed("2007_000129", "fog", 3, 1)}
    assert s not in others and len(others) == 4
    # a sha256 of the parts, not Python's per-process hash(): the same number in every process and
    # on every machine (a change of this value invalidates cached corrupted results: bump VERSION)
    assert s == 3859142017


def test_brightness_of_a_constant_grey_image_by_hand():
    # grey 100: V = 100/255, S = 0; V + 0.1 = 0.4921..., * 255 = 125.5 -> uint8 truncation 125
    x = torch.full((1, 3, 32, 32), 100.0)
    assert torch.all(C.corrupt(x, "brightness", 1, [0]) == 125)
    # severity 5: V + 0.5 = 0.892..., * 255 = 227.5 -> 227; a white image stays white
    assert torch.all(C.corrupt(x, "brightness", 5, [0]) == 227)
    assert torch.all(C.corrupt(torch.full((1, 3, 32, 32), 255.0), "brightness", 3, [0]) == 255)
    # black: S = 0, V = 0 -> grey V + c: 0.3 * 255 = 76.5 -> 76
    assert torch.all(C.corrupt(torch.zeros(1, 3, 32, 32), "brightness", 3, [0]) == 76)


def test_contrast_by_hand():
    # half black, half white: mean 0.5; severity 1 (c = 0.4): 0 -> 0.3 * 255 = 76.5 -> 76, 255 -> 178.5 -> 178
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:] = 255
    y = C.corrupt(x, "contrast", 1, [0])
    assert torch.all(y[..., :16] == 76) and torch.all(y[..., 16:] == 178)
    # severity 5 (c = 0.05): 0.475 * 255 = 121.125 -> 121, 0.525 * 255 = 133.875 -> 133
    y = C.corrupt(x, "contrast", 5, [0])
    assert torch.all(y[..., :16] == 121) and torch.all(y[..., 16:] == 133)
    # a constant image has nothing to contrast: the mean is the image
    c = torch.full((1, 3, 32, 32), 77.0)
    assert torch.all(C.corrupt(c, "contrast", 3, [0]) == C.corrupt(c, "contrast", 1, [0]))


def test_hashed_uniform_and_normal_samplers_have_the_right_distribution():
    u = rng.uniform([1, 2], (200_000,), 0, "cpu")
    assert u.shape == (2, 200_000) and float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.003 and abs(float(u.var()) - 1 / 12) < 0.001
    hist = torch.histc(u[0], bins=20, min=0, max=1)
    assert float(((hist - 10_000) ** 2 / 10_000).sum()) < 45          # chi-square, 19 dof: p ~ 0.001
    assert float(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1]) < 0.01  # images independent
    z = rng.normal([3], (200_000,), 0, "cpu")[0]
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 0.003
    other = rng.uniform([1], (1000,), 1, "cpu")
    assert not torch.equal(other[0], u[0, :1000])                        # streams differ


@pytest.mark.parametrize("lam", [0.0, 0.3, 3.0, 12.0, 60.0])
def test_hashed_poisson_sampler_has_the_right_mean_and_variance(lam):
    k = rng.poisson(torch.full((1, 60_000), lam), [9], 2)[0]
    assert torch.equal(k, k.round()) and float(k.min()) >= 0
    if lam == 0:
        assert float(k.max()) == 0
        return
    se = (lam / 60_000) ** 0.5
    assert abs(float(k.mean()) - lam) < 5 * se
    assert abs(float(k.var()) / lam - 1) < 0.05
    p0 = float((k == 0).double().mean())
    assert abs(p0 - np.exp(-lam)) < 0.01


def test_tabulated_poisson_equals_the_general_inversion():
    """Shot noise's fast path (tabulated CDFs of the 256 possible rates) gives the counts of the
    step-by-step inversion of the same uniforms."""
    x = torch.randint(0, 256, (2, 3, 40, 50), generator=torch.Generator().manual_seed(3)).double()
    for sev in (1, 5):
        fast = noise.draw_shot_noise(x, sev, [4, 5])
        slow = rng.poisson(x / 255.0 * noise.SHOT[sev - 1], [4, 5], 2)
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_statistics_match_the_reference(name, voc_samples_root):
    """With rbseg's own random numbers on a whole VOC image: the mean absolute change and the
    fraction of changed values per severity agree with the reference's (different draws, same
    distribution) within 5% (impulse noise at severity 1 flips ~17,000 of 560,000 values: a
    standard error of ~1% each, so 5% is ~4 sigma of the difference)."""
    pytest.importorskip("imagecorruptions")
    img = _read_rgb(sorted((voc_samples_root / "JPEGImages").glob("*.jpg"))[0])
    x = _chw(img).float()
    for sev in (1, 3, 5):
        ours = C.corrupt(x, name, sev, [11]) - x
        refs = C.reference_corrupt(x, name, sev, [11]) - x
        for stat in (lambda d: d.abs().mean().item(), lambda d: (d != 0).double().mean().item()):
            a, b = stat(ours), stat(refs)
            assert abs(a - b) <= 0.05 * b + 0.01, (name, sev, a, b)


def test_motion_blur_angles_are_uniform_in_plus_minus_45_degrees():
    a = blur.draw_motion_blur(None, 1, list(range(4000)))
    assert float(a.min()) >= -45 and float(a.max()) <= 45 and abs(float(a.mean())) < 1.5


def test_elastic_fields_are_uniform_in_the_reference_range_and_differ():
    x = torch.zeros(2, 3, 200, 64)
    ux, uy = blur.draw_elastic_transform(x, 3, [4, 5])
    m = 200 * 0.005
    assert ux.shape == (2, 200, 64) and float(ux.abs().max()) <= m and float(uy.abs().max()) <= m
    assert abs(float(ux.mean())) < 0.02 and abs(float(ux.var()) - (2 * m) ** 2 / 12) < 0.02
    assert not torch.equal(ux, uy) and not torch.equal(ux[0], ux[1])


def test_parse_corruptions_expands_groups_and_rejects_unknown_names():
    assert C.parse_corruptions("all") == list(C.BENCHMARK_CORRUPTIONS)
    assert C.parse_corruptions("extra") == list(C.EXTRA_CORRUPTIONS)
    assert C.parse_corruptions("all,extra") == list(C.BENCHMARK_CORRUPTIONS + C.EXTRA_CORRUPTIONS)
    assert C.parse_corruptions("fog, snow,fog") == ["fog", "snow"]
    with pytest.raises(RbsegError) as e:
        C.parse_corruptions("fog,rain")
    msg = str(e.value)
    assert "'rain'" in msg and "gaussian_noise" in msg and "saturate" in msg and "\n" not in msg
    with pytest.raises(RbsegError):
        C.parse_corruptions(" , ")


def test_parse_severities_accepts_ranges_and_lists():
    assert C.parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert C.parse_severities("1,3,5") == [1, 3, 5]
    assert C.parse_severities("3") == [3]
    assert C.parse_severities("4,1-2") == [1, 2, 4]
    for bad in ("0", "6", "1-6", "5-1", "x", "", "2.5"):
        with pytest.raises(RbsegError) as e:
            C.parse_severities(bad)
        assert "\n" not in str(e.value)


def test_corrupt_rejects_bad_input_with_one_line():
    x = torch.zeros(2, 3, 40, 40)
    for args in [(x, "rain", 1, [0, 1]), (x, "fog", 0, [0, 1]), (x, "fog", 1, [0]),
                 (torch.zeros(1, 1, 40, 40), "fog", 1, [0]), (torch.zeros(1, 3, 20, 40), "contrast", 1, [0])]:
        with pytest.raises(RbsegError) as e:
            C.corrupt(*args)
        assert "\n" not in str(e.value)


def test_reference_missing_is_a_one_line_error(monkeypatch):
    import robustbench_seg.corruptions.reference as ref

    monkeypatch.setitem(sys.modules, "imagecorruptions", None)         # import fails as if absent
    assert not ref.available()
    with pytest.raises(RbsegError) as e:
        C.corrupt(torch.zeros(1, 3, 40, 40), "glass_blur", 1, [0])
    assert "corruptions-ref" in str(e.value) and "\n" not in str(e.value)
    weather._FROST_CACHE.clear()
    with pytest.raises(RbsegError) as e:                                # frost needs the package's photographs
        C.corrupt(torch.zeros(1, 3, 40, 40), "frost", 1, [0])
    assert "corruptions-ref" in str(e.value) and "\n" not in str(e.value)
    assert torch.equal(C.corrupt(torch.zeros(1, 3, 40, 40), "contrast", 1, [0]), torch.zeros(1, 3, 40, 40))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_corruptions_give_the_same_images_on_cuda_and_cpu():
    x = torch.randint(0, 256, (2, 3, 64, 80), generator=torch.Generator().manual_seed(2)).float()
    for name in TORCH_NAMES:
        cpu = C.corrupt(x, name, 3, [1, 2])
        gpu = C.corrupt(x.cuda(), name, 3, [1, 2])
        assert gpu.device.type == "cuda"
        diff = (gpu.cpu() - cpu).abs()
        assert float(diff.max()) <= 1 and float((diff > 0).double().mean()) <= 0.01, name


def test_corruption_speed_benchmark_writes_both_sides_and_agreement(tmp_path):
    """benchmarks/corruption_speed.py on a tiny batch: a row per corruption with rbseg's and the
    reference's images/s, and for a deterministic corruption no difference from the reference."""
    pytest.importorskip("imagecorruptions")
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import corruption_speed

    out = tmp_path / "cs.json"
    assert corruption_speed.main(["--corruptions", "contrast,jpeg_compression,gaussian_noise", "--images", "2",
                                  "--size", "32x40", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["corruption"]: r for r in data["rows"]}
    assert list(rows) == ["contrast", "jpeg_compression", "gaussian_noise"] and set(data["corruptions"]) == set(rows)
    for r in rows.values():
        assert r["rbseg_images_per_s"] > 0 and r["reference_images_per_s"] > 0 and r["speedup"] > 0
    assert rows["contrast"]["max_abs_diff"] == 0 and rows["jpeg_compression"]["max_abs_diff"] == 0
    assert "max_abs_diff" not in rows["gaussian_noise"]            # other random numbers by design
    assert data["reference"]["pin"] == "1.1.5" and data["load_average_before"] is not None
