"""Per-image attacks (attacks/perimage.py, losses.py, apgd.py): hand-computed losses, the eps-ball and
clip invariants, void masking, determinism, the interface (eps parsing, specs, registry)."""
from __future__ import annotations

import math

import pytest
import torch

from robustbench_seg.attacks import losses as L
from robustbench_seg.attacks.apgd import checkpoint_schedule, checkpoint_spans, stage_iterations
from robustbench_seg.attacks.perimage import (
    ATTACKS, GROUPS, PRESETS, AttackSpec, build_attacks, expand_names, parse_eps, run_attack,
)
from robustbench_seg.errors import RbsegError

pytestmark = pytest.mark.usefixtures("one_thread")

EPS_TOL = 1e-4  # float32 rounding of x + delta at values up to 255 (1 ulp = 1.5e-5)


# --- hand-computed losses (2x2 image, 3 classes) ---------------------------------------------------

def _logits_2x2():
    """Every pixel has logits (0, ln 2, 0): softmax (1/4, 1/2, 1/4), prediction class 1."""
    z = torch.tensor([0.0, math.log(2.0), 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    # labels: correct (1), wrong (0), wrong (2), void
    y = torch.tensor([[[1, 0], [2, 255]]])
    return z, y


def test_ce_pixels_hand_computed_and_void_zero():
    z, y = _logits_2x2()
    ce = L.ce_pixels(z, y)
    expected = torch.tensor([[[math.log(2), math.log(4)], [math.log(4), 0.0]]])
    assert torch.allclose(ce, expected, atol=1e-6)


def test_segpgd_pixels_weights_correct_and_wrong_pixels():
    z, y = _logits_2x2()
    # t = 1 of T = 2: lambda = 1/4; correct pixel (3/4) ln 2, wrong pixels (1/4) ln 4, void 0
    out = L.segpgd_pixels(z, y, 1, 2)
    expected = torch.tensor([[[0.75 * math.log(2), 0.25 * math.log(4)], [0.25 * math.log(4), 0.0]]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert L.segpgd_lambda(0, 10) == 0.0 and L.segpgd_lambda(9, 10) == pytest.approx(9 / 20)


def test_cospgd_pixels_softmax_and_sigmoid_hand_computed():
    z, y = _logits_2x2()
    norm = math.sqrt(1 / 16 + 1 / 4 + 1 / 16)  # ||(1/4, 1/2, 1/4)||
    expected = torch.tensor([[[0.5 / norm * math.log(2), 0.25 / norm * math.log(4)],
                              [0.25 / norm * math.log(4), 0.0]]])
    assert torch.allclose(L.cospgd_pixels(z, y, "softmax"), expected, atol=1e-6)
    s = (0.5, 2 / 3, 0.5)  # sigmoid(0), sigmoid(ln 2)
    snorm = math.sqrt(sum(v * v for v in s))
    expected_sig = torch.tensor([[[s[1] / snorm * math.log(2), s[0] / snorm * math.log(4)],
                                  [s[2] / snorm * math.log(4), 0.0]]])
    assert torch.allclose(L.cospgd_pixels(z, y, "sigmoid"), expected_sig, atol=1e-6)
    with pytest.raises(ValueError):
        L.cospgd_weight(z, y, "tanh")


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_cospgd_weight_closed_form_equals_cosine_similarity_bit_for_bit(activation):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 21, 5, 7, generator=g) * 4
    y = torch.randint(0, 21, (2, 5, 7), generator=g)
    probs = torch.softmax(z, 1) if activation == "softmax" else torch.sigmoid(z)
    onehot = torch.nn.functional.one_hot(y, 21).permute(0, 3, 1, 2)
    assert torch.equal(L.cospgd_weight(z, y, activation), torch.nn.functional.cosine_similarity(probs, onehot, dim=1))


def test_cospgd_weight_is_detached():
    z, y = _logits_2x2()
    z = z.requires_grad_(True)
    L.cospgd_pixels(z, y).sum().backward()
    g_weighted = z.grad.clone()
    z.grad = None
    w = L.cospgd_weight(z, y)
    (w * L.ce_pixels(z, y)).sum().backward()
    assert torch.allclose(z.grad, g_weighted)
    assert not L.cospgd_weight(z, y).requires_grad


def test_masked_ce_only_correct_pixels_and_balanced_weights():
    z, y = _logits_2x2()
    out = L.masked_ce_pixels(z, y)
    assert torch.allclose(out, torch.tensor([[[math.log(2), 0.0], [0.0, 0.0]]]), atol=1e-6)
    w = torch.zeros(3)
    w[:] = torch.tensor([1.0, 3.0, 5.0])
    out_b = L.masked_ce_pixels(z, y, w)
    assert torch.allclose(out_b, torch.tensor([[[3 * math.log(2), 0.0], [0.0, 0.0]]]), atol=1e-6)


def _js_direct(p: list[float], label: int) -> float:
    q = [1.0 if c == label else 0.0 for c in range(len(p))]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda a, b: sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)  # noqa: E731
    return 0.5 * (kl(p, m) + kl(q, m))


def test_js_pixels_closed_form_equals_definition():
    z, y = _logits_2x2()
    p = [0.25, 0.5, 0.25]
    expected = torch.tensor([[[_js_direct(p, 1), _js_direct(p, 0)], [_js_direct(p, 2), 0.0]]])
    assert torch.allclose(L.js_pixels(z, y), expected, atol=1e-6)
    # bounds: 0 for a confident correct pixel, ln 2 for a confident wrong one
    big = torch.tensor([50.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert L.js_pixels(big, torch.tensor([[[0]]])).item() == pytest.approx(0.0, abs=1e-6)
    assert L.js_pixels(big, torch.tensor([[[1]]])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_image_mean_divides_by_all_pixels_and_pixel_accuracy_skips_void():
    z, y = _logits_2x2()
    ce = L.ce_pixels(z, y)
    assert L.image_mean(ce).item() == pytest.approx((math.log(2) + 2 * math.log(4)) / 4, abs=1e-6)
    assert L.pixel_accuracy(z, y).item() == pytest.approx(1 / 3)
    assert L.pixel_accuracy(z, torch.full_like(y, 255)).item() == 1.0


def test_balanced_class_weights_inverse_frequency():
    w = L.balanced_class_weights([2, 1, 1, 0])
    assert torch.allclose(w, torch.tensor([2 / 3, 4 / 3, 4 / 3, 4 / 3]))
    freq = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert float((freq * w).sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        L.balanced_class_weights([0, 0])


# --- attacks on a tiny conv net --------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    """0-255 input, normalised inside; per-pixel logits vary, so attacks have something to flip."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(12)
        self.c2 = torch.nn.Conv2d(12, 21, 1)
        self.eval()

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1((x - 128.0) / 64.0))))


@pytest.fixture(scope="module")
def toy():
    net = TinyNet()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=g) * 255
    x[0, :, :4] = 0.0  # saturated regions: clipping must hold
    x[1, :, :4] = 255.0
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:, -2:] = 255  # a void band
    return net, x, y


ALL = list(GROUPS["all"])
W21 = torch.ones(21)


@pytest.mark.parametrize("name", ALL)
def test_attack_stays_in_eps_ball_and_pixel_range(toy, name):
    net, x, y = toy
    for spec in build_attacks([name], [3.0], steps=6, random_start=True):
        xa = run_attack(spec, net, x, y, class_weights=W21)
        assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
        assert float((xa - x).abs().max()) <= 3.0 + EPS_TOL
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 255.0


@pytest.mark.parametrize("name", ALL)
def test_attack_lowers_pixel_accuracy(toy, name):
    net, x, y = toy
    spec = build_attacks([name], [8.0], steps=8)[0]
    xa = run_attack(spec, net, x, y, class_weights=W21)
    with torch.no_grad():
        clean, adv = L.pixel_accuracy(net(x), y), L.pixel_accuracy(net(xa), y)
    assert bool((adv < clean).all()), (clean, adv)


@pytest.mark.parametrize("name", ALL)
def test_all_void_ground_truth_leaves_the_image_unchanged(toy, name):
    """Void pixels never enter a loss: with every pixel void the gradient is 0 and nothing moves."""
    net, x, y = toy
    spec = build_attacks([name], [4.0], steps=4, random_start=False)[0]
    xa = run_attack(spec, net, x, torch.full_like(y, 255), class_weights=W21)
    assert torch.equal(xa, x)


@pytest.mark.parametrize("name", ALL)
def test_batched_attack_equals_image_by_image(toy, name):
    """Per-image decisions (APGD's best points, step halving, restarts from the best point) never
    leak between the images of a batch. (Bit-identical here; the bound leaves room for a conv
    algorithm whose rounding depends on the batch size on other hardware.)"""
    net, x, y = toy
    spec = build_attacks([name], [8.0], steps=12, random_start=False)[0]
    batched = run_attack(spec, net, x, y, class_weights=W21)
    alone = torch.cat([run_attack(spec, net, x[i:i + 1], y[i:i + 1], class_weights=W21) for i in range(len(x))])
    assert float(((batched - alone).abs() > 0).float().mean()) <= 0.01


@pytest.mark.parametrize("name", ["pgd", "sea-js"])
def test_random_start_deterministic_with_seeded_generator(toy, name):
    net, x, y = toy
    spec = build_attacks([name], [4.0], steps=4, random_start=True)[0]
    a = run_attack(spec, net, x, y, generator=torch.Generator().manual_seed(5))
    b = run_attack(spec, net, x, y, generator=torch.Generator().manual_seed(5))
    c = run_attack(spec, net, x, y, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # default generator: seeded from params["seed"]
    assert torch.equal(run_attack(spec, net, x, y), run_attack(spec, net, x, y))


def test_per_image_seeds_make_random_start_independent_of_the_batch(toy):
    net, x, y = toy
    spec = build_attacks(["pgd"], [4.0], steps=3, random_start=True)[0]
    both = run_attack(spec, net, x[:2], y[:2], seeds=[11, 12])
    alone = run_attack(spec, net, x[1:2], y[1:2], seeds=[12])
    diff = (both[1:2] - alone).abs()
    # same noise; the same steps unless a conv algorithm's batch-size-dependent rounding flips the
    # sign of a near-zero gradient component (then a value differs by at most 2 * step)
    assert float((diff > 0).float().mean()) < 0.01


def test_restarts_keep_the_lowest_pixel_accuracy(toy):
    net, x, y = toy
    one = build_attacks(["pgd"], [4.0], steps=3, random_start=True)[0]
    three = build_attacks(["pgd"], [4.0], steps=3, random_start=True, restarts=3)[0]
    xa1 = run_attack(one, net, x, y, generator=torch.Generator().manual_seed(0))
    xa3 = run_attack(three, net, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc1, acc3 = L.pixel_accuracy(net(xa1), y), L.pixel_accuracy(net(xa3), y)
    assert bool((acc3 <= acc1).all())


def test_run_attack_works_under_inference_mode(toy):
    net, x, y = toy
    spec = build_attacks(["segpgd"], [4.0], steps=2)[0]
    expected = run_attack(spec, net, x, y)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()  # inference tensors, as the engine's loop has
        got = run_attack(spec, net, xi, yi)
    assert torch.equal(got, expected)


def test_bf16_option_runs_and_is_recorded(toy):
    net, x, y = toy
    spec = build_attacks(["cospgd"], [4.0], steps=2, dtype="bfloat16")[0]
    assert spec.params["dtype"] == "bfloat16"
    xa = run_attack(spec, net, x, y)
    assert xa.dtype == torch.float32 and float((xa - x).abs().max()) <= 4.0 + EPS_TOL


def test_balanced_masked_ce_needs_class_weights(toy):
    net, x, y = toy
    spec = build_attacks(["sea-bmce"], [4.0], steps=2)[0]
    with pytest.raises(RbsegError, match="class weights"):
        run_attack(spec, net, x, y)
    with pytest.raises(RbsegError, match="class weights"):
        run_attack(spec, net, x, y, class_weights=torch.ones(5))


def test_bad_inputs_are_one_line_errors(toy):
    net, x, y = toy
    spec = build_attacks(["pgd"], [4.0], steps=1)[0]
    with pytest.raises(RbsegError, match="ground truth"):
        run_attack(spec, net, x, y[:, :5])
    with pytest.raises(RbsegError, match="int64"):
        run_attack(spec, net, x, y.int())


# --- APGD schedule -------------------------------------------------------------------------------

def test_apgd_checkpoints_follow_autoattack_schedule():
    # AutoAttack: p = 0, .22, .41, .57, .70, .80, .87, .93, .99 of 100 iterations (0-based: minus 1)
    assert checkpoint_schedule(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert [k for _, k in checkpoint_spans(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def test_reduced_eps_stages_split_3_3_4():
    assert stage_iterations(300) == [90, 90, 120]
    assert stage_iterations(30) == [9, 9, 12]
    assert stage_iterations(5) == [1, 1, 3]


# --- interface: eps, specs, registry -------------------------------------------------------------

def test_parse_eps_units_and_fractions():
    assert parse_eps("1,2,4,8") == [1.0, 2.0, 4.0, 8.0]
    assert parse_eps("4/255") == [4.0]
    assert parse_eps("4/255, 8/255,4") == [4.0, 8.0]
    assert parse_eps("0.5/1") == [127.5]


@pytest.mark.parametrize("bad", ["0.0157", "0", "-1", "300", "abc", "1,,2", "4/0"])
def test_parse_eps_refuses_bad_values(bad):
    with pytest.raises(RbsegError, match="--eps"):
        parse_eps(bad)


def test_build_attacks_expands_groups_and_records_parameters():
    specs = build_attacks(["all"], [2.0, 8.0], preset="quick")
    assert [s.name for s in specs[::2]] == ["pgd", "segpgd", "cospgd", "sea-mce", "sea-bmce", "sea-js"]
    assert expand_names("sea") == ["sea-mce", "sea-bmce", "sea-js"]
    pgd = specs[0]
    assert pgd.steps == PRESETS["quick"]["steps"]["pgd"]
    assert pgd.params["step_size"] == pytest.approx(2.5 * 2.0 / pgd.steps)
    assert specs[4].name == "cospgd" and specs[4].params["activation"] == "softmax"
    full = build_attacks(["sea"], None, preset="full")
    assert {s.steps for s in full} == {300} and [s.eps for s in full[:4]] == [1.0, 2.0, 4.0, 8.0]
    assert full[0].params["eps_factors"] == [2.0, 1.5, 1.0]
    assert build_attacks(["pgd"], [4.0], steps=7)[0].steps == 7


def test_build_attacks_refuses_unknown_names_options_and_presets():
    with pytest.raises(RbsegError, match="unknown attack"):
        build_attacks(["fgsm"], [4.0])
    with pytest.raises(RbsegError, match="apply to none"):
        build_attacks(["pgd"], [4.0], activation="sigmoid")
    with pytest.raises(RbsegError, match="preset"):
        build_attacks(["pgd"], [4.0], preset="medium")


def test_spec_key_is_stable_and_covers_every_parameter():
    a = build_attacks(["cospgd"], [4.0], steps=10)[0]
    b = build_attacks(["cospgd"], [4.0], steps=10)[0]
    c = build_attacks(["cospgd"], [4.0], steps=10, activation="sigmoid")[0]
    assert a.key() == b.key() and a.key().startswith("cospgd-eps4-s10-")
    assert a.key() != c.key()
    assert AttackSpec.from_dict(a.to_dict()) == a
    assert set(ATTACKS) == set(GROUPS["all"])


def _apgd_single_image_reference(forward, x, y, eps, n_iter, loss_fn, x_init):
    """APGD for ONE image written with plain Python control flow (if / else), from the algorithm's
    description (AutoAttack / SEA), to check the batched ``torch.where`` version."""
    lower, upper = (x - eps).clamp(0, 255), (x + eps).clamp(0, 255)

    def evaluate(z, need_grad=True):
        zr = z.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = forward(zr).float()
            loss = loss_fn(logits, y)
        grad = torch.autograd.grad(loss.sum(), zr)[0] if need_grad else None
        tracked = L.image_mean(L.ce_pixels(logits.detach(), y))
        return float(tracked), grad, float(L.pixel_accuracy(logits.detach(), y))

    x_adv = torch.minimum(torch.maximum(x_init, lower), upper)
    tracked, grad, acc = evaluate(x_adv)
    best_adv, best_acc = x_adv.clone(), acc
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), tracked
    step, history = 2.0 * eps, [0.0] * n_iter
    loss_best_last, reduced_last = loss_best, True
    k, n_min, decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    counter, x_old = 0, x_adv
    for i in range(n_iter):
        grad2, x_old = x_adv - x_old, x_adv
        a = 0.75 if i > 0 else 1.0
        z = torch.minimum(torch.maximum(x_adv + step * torch.sign(grad), lower), upper)
        x_adv = torch.minimum(torch.maximum(x_adv + (z - x_adv) * a + grad2 * (1 - a), lower), upper)
        tracked, g, acc = evaluate(x_adv, need_grad=i < n_iter - 1)
        if g is not None:
            grad = g
        if acc <= best_acc:
            best_adv, best_acc = x_adv, acc
        history[i] = tracked
        if tracked > loss_best:
            x_best, grad_best, loss_best = x_adv, grad, tracked
        counter += 1
        if counter == k:
            rises = sum(history[i - c] > history[i - c - 1] for c in range(k))  # index -1: the unfilled last slot
            reduce = rises <= k * 0.75 or (not reduced_last and loss_best_last >= loss_best)
            reduced_last, loss_best_last = reduce, loss_best
            if reduce:
                step /= 2.0
                x_adv, grad = x_best, grad_best
            counter, k = 0, max(k - decr, n_min)
    return best_adv, best_acc


@pytest.mark.parametrize("loss", ["mce", "js"])
def test_batched_apgd_equals_a_plain_single_image_implementation(toy, loss):
    from robustbench_seg.attacks.apgd import apgd_linf

    net, x, y = toy
    loss_fn = {"mce": lambda lg, t: L.image_mean(L.masked_ce_pixels(lg, t)),
               "js": lambda lg, t: L.image_mean(L.js_pixels(lg, t))}[loss]
    g = torch.Generator().manual_seed(3)
    start = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 6.0).clamp(0, 255)
    got, acc = apgd_linf(net, x, y, 6.0, 20, loss_fn, start)
    for i in range(len(x)):
        ref, ref_acc = _apgd_single_image_reference(net, x[i:i + 1], y[i:i + 1], 6.0, 20, loss_fn, start[i:i + 1])
        assert float(acc[i]) == pytest.approx(ref_acc)
        assert float(((got[i:i + 1] - ref).abs() > 0).float().mean()) <= 0.01
