"""The one metric: hand-computed cases, nanmean over classes with a non-zero union, torchmetrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustbench_seg.evaluation import metric
from robustbench_seg.evaluation.metric import confusion_matrix, metrics_from_confusion


def t(x):
    return torch.tensor(x, dtype=torch.int64)


def test_two_class_hand_computed():
    target = t([0, 0, 1, 1, 255])
    pred = t([0, 1, 1, 1, 0])  # the void pixel's prediction is ignored
    cm = confusion_matrix(pred, target)
    assert cm.shape == (21, 21) and cm.dtype == torch.int64
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 2 and cm.sum() == 4
    m = metrics_from_confusion(cm)
    # IoU0 = 1 / (2 + 1 - 1) = 1/2, IoU1 = 2 / (2 + 3 - 2) = 2/3
    assert m.iou[0] == pytest.approx(50.0) and m.iou[1] == pytest.approx(200 / 3)
    assert m.miou == pytest.approx((50 + 200 / 3) / 2)
    assert m.pixel_acc == pytest.approx(75.0)  # 3 of 4
    assert m.mean_acc == pytest.approx(75.0)  # (1/2 + 2/2) / 2
    assert m.classes_counted == 2 and m.pixels == 4
    assert all(math.isnan(v) for v in m.iou[2:])


def test_three_class_hand_computed_2d():
    target = t([[0, 1, 2], [2, 2, 1]])
    pred = t([[0, 2, 2], [2, 1, 1]])
    m = metrics_from_confusion(confusion_matrix(pred, target))
    # IoU0 = 1/1; IoU1 = 1 / (2 + 2 - 1) = 1/3; IoU2 = 2 / (3 + 3 - 2) = 1/2
    assert m.iou[:3] == pytest.approx([100.0, 100 / 3, 50.0])
    assert m.miou == pytest.approx(100 * (1 + 1 / 3 + 1 / 2) / 3)
    assert m.pixel_acc == pytest.approx(100 * 4 / 6)
    assert m.mean_acc == pytest.approx(100 * (1 + 1 / 2 + 2 / 3) / 3)
    assert m.classes_counted == 3


def test_class_only_predicted_counts_with_zero_iou():
    target = t([0, 0, 0, 0])
    pred = t([0, 0, 5, 5])
    m = metrics_from_confusion(confusion_matrix(pred, target))
    assert m.classes_counted == 2 and m.iou[5] == 0.0 and m.iou[0] == pytest.approx(50.0)
    assert m.miou == pytest.approx(25.0)
    assert m.mean_acc == pytest.approx(50.0)  # mean accuracy is over ground-truth classes only


def test_nothing_counted_and_json():
    m = metrics_from_confusion(confusion_matrix(t([3, 4]), t([255, 255])))
    assert math.isnan(m.miou) and m.classes_counted == 0 and m.pixels == 0
    d = m.to_dict()
    assert d["miou"] is None and d["iou"]["background"] is None and len(d["iou"]) == 21


def test_one_confusion_over_the_set_not_a_mean_of_images():
    a_t, a_p = t([1, 1, 1, 1]), t([1, 1, 1, 1])  # image 1: perfect
    b_t, b_p = t([1, 2]), t([2, 2])  # image 2
    cm = confusion_matrix(a_p, a_t) + confusion_matrix(b_p, b_t)
    assert torch.equal(cm, confusion_matrix(torch.cat([a_p, b_p]), torch.cat([a_t, b_t])))
    m = metrics_from_confusion(cm)
    # class 1: inter 4, union 5 -> 80; class 2: inter 1, union 2 -> 50
    assert m.miou == pytest.approx(65.0)
    per_image = (metrics_from_confusion(confusion_matrix(a_p, a_t)).miou
                 + metrics_from_confusion(confusion_matrix(b_p, b_t)).miou) / 2
    assert per_image == pytest.approx((100 + 25) / 2)  # a different number: not what we report


def test_intersect_and_union_numpy_input():
    cm = np.zeros((21, 21), np.int64)
    cm[3, 3], cm[3, 4] = 6, 2
    inter, union, area_pred, area_gt = metric.intersect_and_union(cm)
    assert inter[3] == 6 and union[3] == 8 and union[4] == 2 and area_pred[4] == 2 and area_gt[3] == 8
    assert metric.class_iou(cm, 3) == pytest.approx(75.0) and metric.class_iou(cm, 4) == 0.0
    assert math.isnan(metric.class_iou(cm, 5))


@pytest.mark.parametrize(
    "pred, target, match",
    [
        ([0, 21], [0, 0], "predicted labels outside"),
        ([0, -1], [0, 0], "predicted labels outside"),
        ([0, 0], [0, 22], "ground-truth labels outside"),
        ([0, 0, 0], [0, 0], "shape"),
    ],
)
def test_bad_labels_raise(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(t(pred), t(target))


def test_void_prediction_on_void_pixel_is_fine():
    m = metrics_from_confusion(confusion_matrix(t([255, 1]), t([255, 1])))
    assert m.miou == 100.0 and m.pixels == 1


def _torchmetrics_excludes_absent_classes() -> bool:
    """Does the installed torchmetrics leave classes absent from prediction and target out of 'macro'?"""
    from torchmetrics.classification import MulticlassJaccardIndex

    jac = MulticlassJaccardIndex(num_classes=21, ignore_index=255, average="macro")
    return abs(float(jac(t([0, 1]), t([0, 1]))) - 1.0) < 1e-6  # 1.0 if excluded, 2/21 if absent count as 0


@pytest.mark.parametrize("seed", range(6))
def test_against_torchmetrics_random(seed):
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(seed)
    present = torch.randperm(21, generator=g)[: 3 + seed * 3]  # some classes absent from the whole set
    shape = (4, 23, 31)
    target = present[torch.randint(len(present), shape, generator=g)]
    pred = present[torch.randint(len(present), shape, generator=g)]
    keep_right = torch.rand(shape, generator=g) < 0.6  # correlated with the target, like a model
    pred = torch.where(keep_right, target, pred)
    if seed % 2:  # classes the model predicts that are nowhere in the ground truth
        pred[0, :3, :3] = int(torch.tensor([c for c in range(21) if c not in present][0]))
    target[torch.rand(shape, generator=g) < 0.1] = 255

    ours = metrics_from_confusion(confusion_matrix(pred, target))
    jac_none = MulticlassJaccardIndex(num_classes=21, ignore_index=255, average="none")
    theirs_per_class = jac_none(pred.flatten(), target.flatten()).numpy() * 100
    counted = ~np.isnan(np.array(ours.iou))
    assert counted.sum() == ours.classes_counted >= len(present)
    # per class, on the classes where both definitions agree (union > 0); torchmetrics gives 0 elsewhere
    assert np.allclose(np.array(ours.iou)[counted], theirs_per_class[counted], atol=1e-4)
    assert np.allclose(theirs_per_class[~counted], 0.0)
    jac_macro = MulticlassJaccardIndex(num_classes=21, ignore_index=255, average="macro")
    macro = float(jac_macro(pred.flatten(), target.flatten())) * 100
    if _torchmetrics_excludes_absent_classes():
        assert ours.miou == pytest.approx(macro, abs=1e-4)
    else:  # older torchmetrics averages absent classes as 0 over all 21
        assert macro == pytest.approx(ours.miou * ours.classes_counted / 21, abs=1e-4)


@pytest.mark.skipif(not hasattr(metric, "batched_confusion_matrix"), reason="no batched_confusion_matrix")
def test_batched_equals_per_image():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 21, (3, 9, 7), generator=g)
    target[0, 0] = 255
    pred = torch.randint(0, 21, (3, 9, 7), generator=g)
    out = metric.batched_confusion_matrix(pred, target)
    for b in range(3):
        assert torch.equal(out[b], confusion_matrix(pred[b], target[b]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 21, (2, 64, 64), generator=g)
    pred = torch.randint(0, 21, (2, 64, 64), generator=g)
    assert torch.equal(confusion_matrix(pred.cuda(), target.cuda()).cpu(), confusion_matrix(pred, target))
