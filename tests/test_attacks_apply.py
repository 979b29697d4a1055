"""apply_perturbation / fit_perturbation on small hand-computed tensors."""
from __future__ import annotations

import pytest
import torch

from robustbench_seg.attacks.apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation, fit_perturbation


def _delta():
    # (1, 2, 3): [[1, 2, 3], [4, 5, 6]]
    return torch.arange(1.0, 7.0).view(1, 2, 3)


def test_defaults_are_tile_and_clip():
    assert DEFAULT_FIT is FitMode.TILE and DEFAULT_CLIP is True


def test_tile_repeats_from_top_left_and_cuts():
    out = fit_perturbation(_delta(), 3, 5, "tile")
    expected = torch.tensor([[1.0, 2, 3, 1, 2], [4, 5, 6, 4, 5], [1, 2, 3, 1, 2]]).view(1, 3, 5)
    assert torch.equal(out, expected)


def test_tile_smaller_target_is_top_left_window():
    assert torch.equal(fit_perturbation(_delta(), 1, 2, "tile"), torch.tensor([[[1.0, 2.0]]]))


def test_crop_pads_with_zeros_when_larger():
    out = fit_perturbation(_delta(), 3, 4, "crop")
    expected = torch.tensor([[1.0, 2, 3, 0], [4, 5, 6, 0], [0, 0, 0, 0]]).view(1, 3, 4)
    assert torch.equal(out, expected)


def test_crop_takes_top_left_window_when_smaller():
    assert torch.equal(fit_perturbation(_delta(), 2, 2, "crop"), torch.tensor([[[1.0, 2.0], [4.0, 5.0]]]))


def test_resize_is_bilinear_half_pixel():
    d = torch.tensor([[[0.0, 10.0]]])  # 1 x 1 x 2 -> 1 x 1 x 4
    out = fit_perturbation(d, 1, 4, "resize")
    # align_corners=False: sample points x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped
    assert torch.allclose(out, torch.tensor([[[0.0, 2.5, 7.5, 10.0]]]))


def test_same_size_is_identity_for_every_mode():
    for mode in FitMode:
        assert torch.equal(fit_perturbation(_delta(), 2, 3, mode), _delta())


def test_apply_clips_to_pixel_range_unless_told():
    x = torch.tensor([[[[250.0, 3.0, 100.0], [0.0, 255.0, 128.0]]]])
    d = torch.tensor([[[10.0, -10.0, 5.0], [-1.0, 1.0, 0.0]]])
    assert torch.equal(apply_perturbation(x, d), torch.tensor([[[[255.0, 0.0, 105.0], [0.0, 255.0, 128.0]]]]))
    assert torch.equal(apply_perturbation(x, d, clip=False), torch.tensor([[[[260.0, -7.0, 105.0], [-1.0, 256.0, 128.0]]]]))


def test_apply_fits_per_input_size_and_batch():
    x = torch.full((2, 1, 3, 4), 100.0)
    out = apply_perturbation(x, _delta(), fit="crop")
    expected = 100 + torch.tensor([[1.0, 2, 3, 0], [4, 5, 6, 0], [0, 0, 0, 0]])
    assert torch.equal(out[0, 0], expected) and torch.equal(out[1, 0], expected)


def test_fit_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError):
        fit_perturbation(torch.zeros(2, 2), 2, 2)
    with pytest.raises(ValueError):
        fit_perturbation(_delta(), 4, 4, "stretch")
