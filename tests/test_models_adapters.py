"""Output adapters (models/adapters.py): every model kind is called the same way by evaluation and attacks.

The transformers / segmentation_models_pytorch tests build randomly initialised models from tiny
configs (no download) and skip when the ``adapters`` extra is not installed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_seg.data.transforms import normalize
from robustbench_seg.errors import RbsegError
from robustbench_seg.evaluation.engine import forward_logits, forward_outputs
from robustbench_seg.models.adapters import IMAGENET, Adapter, InputNorm, adapter_for, declare, mask_class_scores

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(nn.Module):
    """Returns what ``make(x)`` gives and remembers the input it was called with."""

    def __init__(self, make):
        super().__init__()
        self.make, self.seen = make, None
        self.conv = nn.Conv2d(3, 21, 1)

    def forward(self, x):
        self.seen = x
        return self.make(self, x)


def _x(n=2, h=20, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 255


def test_plain_tensor_and_torchvision_dict_give_the_same_logits():
    x = _x()
    plain = Recorder(lambda m, z: m.conv(z))
    as_dict = Recorder(lambda m, z: {"out": m.conv(z), "aux": m.conv(z)})
    as_dict.conv.load_state_dict(plain.conv.state_dict())
    a, b = forward_logits(plain, x), forward_logits(as_dict, x)
    assert a.shape == (2, 21, 20, 28) and torch.equal(a, b)
    assert torch.equal(plain.seen, normalize(x))  # rbseg's default: ImageNet mean/std on 0-255 pixels


def test_declared_normalisation_replaces_imagenet():
    x = _x()
    m = declare(Recorder(lambda m, z: m.conv(z)), norm=InputNorm(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    forward_logits(m, x)
    torch.testing.assert_close(m.seen, x / 127.5 - 1.0)  # [-1, 1] inputs
    m2 = declare(Recorder(lambda m, z: m.conv(z)), norm=InputNorm(mean=(0, 0, 0), std=(1, 1, 1), range=(0, 255)))
    forward_logits(m2, x)
    torch.testing.assert_close(m2.seen, x)  # raw 0-255 pixels
    assert InputNorm(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) == IMAGENET  # lists are fine
    with pytest.raises(RbsegError, match="positive stds"):
        InputNorm(std=(0.2, 0.0, 0.2))


def test_low_resolution_logits_are_upsampled_bilinearly_to_the_input():
    x = _x(h=32, w=24)
    m = Recorder(lambda m, z: m.conv(z)[..., ::4, ::4])
    out = forward_logits(m, x)
    ref = torch.nn.functional.interpolate(m.conv(normalize(x))[..., ::4, ::4], size=(32, 24), mode="bilinear",
                                          align_corners=False)
    assert out.shape == (2, 21, 32, 24)
    torch.testing.assert_close(out, ref)


def test_padding_to_the_output_stride_is_cropped_back():
    seen = []

    def make(m, z):
        seen.append(tuple(z.shape[-2:]))
        assert z.shape[-2] % 16 == 0 and z.shape[-1] % 16 == 0
        return m.conv(z)

    m = declare(Recorder(make), pad_to=16)
    x = _x(h=20, w=28)
    out = forward_logits(m, x)
    assert seen == [(32, 32)] and out.shape == (2, 21, 20, 28)
    # the top-left region is the unpadded input's (a 1x1 conv: pixel-wise)
    torch.testing.assert_close(out, m.conv(normalize(x)))


def test_mask_classification_scores_are_softmax_class_times_sigmoid_mask():
    g = torch.Generator().manual_seed(1)
    cls, masks = torch.randn(2, 5, 22, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    scores = mask_class_scores(cls, masks, (16, 16))
    up = torch.nn.functional.interpolate(masks, size=(16, 16), mode="bilinear", align_corners=False).sigmoid()
    ref = (cls.softmax(-1)[..., :-1, None, None] * up[:, :, None]).sum(1)
    torch.testing.assert_close(scores, ref)
    assert scores.shape == (2, 21, 16, 16) and float(scores.min()) >= 0

    class Out(dict):  # a transformers-like output: a mapping and attributes
        __getattr__ = dict.get

    m = Recorder(lambda m, z: Out(class_queries_logits=cls, masks_queries_logits=masks))
    outs = forward_outputs(m, _x(h=16, w=16))
    torch.testing.assert_close(outs["probs"], ref)
    torch.testing.assert_close(outs["out"], torch.log(ref + 1e-8))  # what attacks see as logits
    assert torch.equal(outs["out"].argmax(1), ref.argmax(1))


def test_unknown_output_is_one_line_error():
    m = Recorder(lambda m, z: {"logitz": m.conv(z)})
    with pytest.raises(RbsegError, match="must return logits"):
        forward_logits(m, _x())


def test_attack_forward_goes_through_the_adapter():
    """A per-image attack on a model with 1/4-resolution outputs and a declared normalisation runs
    and stays in its budget (the engine's attack Forward is forward_logits)."""
    from robustbench_seg.attacks.perimage import build_attacks, run_attack

    m = declare(Recorder(lambda m, z: m.conv(z)[..., ::4, ::4]), norm=InputNorm(mean=(0.5,) * 3, std=(0.5,) * 3))
    x, y = _x(h=16, w=16), torch.randint(0, 21, (2, 16, 16))
    spec = build_attacks(["pgd"], eps=[4.0], steps=2)[0]
    adv = run_attack(spec, lambda z: forward_logits(m, z, None), x, y)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 4.0 + 1e-4


# --- real libraries (the `adapters` extra), randomly initialised from tiny configs ---------------------


def test_segformer_logits_at_quarter_resolution_are_upsampled():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SegformerConfig(num_labels=21, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                       num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16)
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    assert adapter_for(model).name == "transformers"
    x = _x(h=64, w=48)
    with torch.no_grad():
        out = forward_logits(model, x)
        raw = model(pixel_values=normalize(x)).logits
    assert raw.shape[-2:] == (16, 12) and out.shape == (2, 21, 64, 48)
    torch.testing.assert_close(out, torch.nn.functional.interpolate(raw, size=(64, 48), mode="bilinear",
                                                                    align_corners=False))


def test_mask2former_matches_its_own_semantic_post_processing():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mask2FormerConfig(
        num_labels=21, num_queries=5, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
        decoder_layers=2, num_attention_heads=2, dim_feedforward=32, encoder_feedforward_dim=32,
        backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                         "out_features": ["stage1", "stage2", "stage3", "stage4"]})
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(cfg).eval()
    x = _x(n=1, h=64, w=64)
    with torch.no_grad():
        outs = forward_outputs(model, x)
        raw = model(pixel_values=normalize(x))
    ref = transformers.Mask2FormerImageProcessor().post_process_semantic_segmentation(raw, target_sizes=[(64, 64)])[0]
    assert outs["out"].shape == (1, 21, 64, 64)
    assert torch.equal(outs["out"].argmax(1)[0], ref)


def test_smp_unet_input_is_padded_to_the_encoder_stride_and_cropped():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.Unet("resnet18", encoder_weights=None, classes=21, encoder_depth=3, decoder_channels=(16, 8, 8)).eval()
    ad = adapter_for(model)
    assert ad.name == "segmentation_models_pytorch" and ad.pad_to == 8
    x = _x(n=1, h=36, w=50)  # not a multiple of 8
    with torch.no_grad():
        out = forward_logits(model, x)
        full = model(torch.nn.functional.pad(normalize(x), (0, 6, 0, 4)))
    assert out.shape == (1, 21, 36, 50)
    torch.testing.assert_close(out, full[..., :36, :50])

    class MyUnet(smp.Unet):  # a user's subclass, defined outside smp, still gets smp's adapter
        pass

    assert adapter_for(MyUnet("resnet18", encoder_weights=None, classes=21)).pad_to == 32
