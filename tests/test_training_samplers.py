"""Blend samplers (C_fb and the Table 5a ablations) and DDP-style sharding."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from robustbench_seg.errors import RbsegError
from robustbench_seg.training.samplers import (
    WRFB_DELTA, BlendContext, PairSampler, PlainSampler, batches_per_epoch, build_clusters, epoch_batches, mfb_halves,
)


def random_class_sets(n: int, seed: int = 0, classes: int = 20) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sets = [sorted(set(rng.integers(1, classes + 1, size=rng.integers(1, 4)).tolist())) for _ in range(n)]
    for c in range(1, classes + 1):  # every class present at least twice
        sets[(2 * c) % n].append(c)
        sets[(2 * c + 1) % n].append(c)
    return [sorted(set(s)) for s in sets]


def ctx_for(sets, ppi, delta=(0.7, 1.0), seed=0):
    return BlendContext(len(sets), build_clusters(sets), ppi, delta, seed)


def test_build_clusters_membership():
    clusters = build_clusters([[15], [15, 13], [], [1]])
    assert clusters[15 - 1].tolist() == [0, 1]
    assert clusters[13 - 1].tolist() == [1]
    assert clusters[0].tolist() == [3]
    assert sum(len(c) for c in clusters) == 4


def test_cfb_full_expansion_covers_every_ordered_cluster_pair():
    sets = random_class_sets(60)
    ctx = ctx_for(sets, 19)
    clusters = ctx.clusters
    ps = PairSampler("cfb", ctx).draw(0)
    assert len(ps) == sum(len(c) for c in clusters) * 19
    pairs = Counter(zip(ps.first_cluster.tolist(), ps.second_cluster.tolist()))
    assert set(pairs) == {(a, b) for a in range(1, 21) for b in range(1, 21) if a != b}
    # each (cluster, image) is blended with exactly one image of each of the 19 other clusters
    per = Counter(zip(ps.first_cluster.tolist(), ps.first.tolist()))
    for c in range(1, 21):
        for i in clusters[c - 1]:
            assert per[(c, int(i))] == 19
            got = sorted(ps.second_cluster[(ps.first_cluster == c) & (ps.first == i)].tolist())
            assert got == [o for o in range(1, 21) if o != c]
    # dominant from its cluster, partner from the partner cluster, not itself
    for f, s, fc, sc in zip(ps.first, ps.second, ps.first_cluster, ps.second_cluster):
        assert fc in sets[f] and sc in sets[s]
        assert f != s
    assert ((ps.delta >= 0.7) & (ps.delta <= 1.0)).all()
    assert ps.delta.std() > 0.05  # drawn per pair


def test_cfb_subsampled_partner_clusters():
    sets = random_class_sets(60, seed=1)
    ctx = ctx_for(sets, 5, delta=(0.8, 0.9))
    ps = PairSampler("cfb", ctx).draw(3)
    assert len(ps) == sum(len(c) for c in ctx.clusters) * 5
    keys = Counter(zip(ps.first_cluster.tolist(), ps.first.tolist()))
    assert set(keys.values()) == {5}
    for (c, i), _ in keys.items():
        chosen = ps.second_cluster[(ps.first_cluster == c) & (ps.first == i)]
        assert len(set(chosen.tolist())) == 5 and c not in chosen  # 5 distinct other clusters
    assert ((ps.delta >= 0.8) & (ps.delta <= 0.9)).all()


def test_cfb_partner_uniform_within_cluster():
    # cluster "horse" (13) holds images 0, 1, 2; every other image only has person (15)
    sets = [[13], [13], [13]] + [[15]] * 5
    ctx = ctx_for(sets, 19)
    sampler = PairSampler("cfb", ctx)
    counts = Counter()
    for epoch in range(300):
        ps = sampler.draw(epoch)
        sel = ps.second_cluster == 13
        counts.update(ps.second[sel].tolist())
    total = sum(counts.values())
    assert set(counts) == {0, 1, 2}
    for v in counts.values():
        assert abs(v / total - 1 / 3) < 0.04


def test_cfb_skips_empty_clusters_and_needs_two():
    sets = [[1], [1, 2], [2], [3]]
    ps = PairSampler("cfb", ctx_for(sets, 19)).draw(0)
    # 3 non-empty clusters: each (cluster, image) pairs with the 2 others
    assert len(ps) == (2 + 2 + 1) * 2
    with pytest.raises(RbsegError):
        PairSampler("cfb", ctx_for([[4], [4]], 19))


def test_rfb_ten_distinct_random_partners_per_image():
    n = 30
    ctx = BlendContext(n, [], 10, (0.7, 1.0), 0)
    ps = PairSampler("rfb", ctx).draw(0)
    assert len(ps) == n * 10
    assert Counter(ps.first.tolist()) == {i: 10 for i in range(n)}
    for i in range(n):
        partners = ps.second[ps.first == i]
        assert len(set(partners.tolist())) == 10 and i not in partners
    assert ((ps.delta >= 0.7) & (ps.delta <= 1.0)).all()


def test_cafb_partner_from_the_same_category():
    sets = random_class_sets(40, seed=2)
    ctx = ctx_for(sets, 4)
    ps = PairSampler("cafb", ctx).draw(0)
    assert len(ps) == sum(len(c) for c in ctx.clusters) * 4
    assert np.array_equal(ps.first_cluster, ps.second_cluster)
    for f, s, c in zip(ps.first, ps.second, ps.first_cluster):
        assert c in sets[f] and c in sets[s] and f != s


def test_wrfb_fixed_delta():
    ctx = BlendContext(20, [], 10, (0.7, 1.0), 0)
    ps = PairSampler("wrfb", ctx).draw(0)
    assert len(ps) == 200
    assert np.all(ps.delta == WRFB_DELTA)
    assert np.all(ps.first != ps.second)


def test_mfb_half_blended_half_standard():
    n = 21
    ctx = BlendContext(n, [], 10, (0.7, 1.0), 5)
    blended, standard = mfb_halves(n, 5)
    assert len(blended) == 11 and len(standard) == 10
    assert sorted(blended.tolist() + standard.tolist()) == list(range(n))
    ps = PairSampler("mfb", ctx).draw(0)
    plain = ps.second == -1
    assert np.all(ps.delta[plain] == 1.0)
    assert set(ps.first[plain].tolist()) == set(standard.tolist())
    assert set(ps.first[~plain].tolist()) == set(blended.tolist())
    assert set(ps.second[~plain].tolist()) <= set(blended.tolist())
    assert plain.sum() == 10 * 10 and (~plain).sum() == 11 * 10
    # the halves are fixed for a run (seed), the partners are redrawn per epoch
    ps1 = PairSampler("mfb", ctx).draw(1)
    assert set(ps1.first[ps1.second == -1].tolist()) == set(standard.tolist())
    assert not np.array_equal(ps.second[~plain], ps1.second[ps1.second != -1])


def test_pairs_resample_once_keeps_the_pair_set():
    sets = random_class_sets(40, seed=4)
    once = PairSampler("cfb", ctx_for(sets, 3), resample="once")
    each = PairSampler("cfb", ctx_for(sets, 3), resample="epoch")
    key = lambda items: sorted((it.first, it.second, round(it.delta, 12)) for it in items)  # noqa: E731
    assert key(once.epoch_items(0)) == key(once.epoch_items(1))
    assert [it.first for it in once.epoch_items(0)] != [it.first for it in once.epoch_items(1)]  # reshuffled
    assert key(each.epoch_items(0)) != key(each.epoch_items(1))
    assert key(each.epoch_items(1)) == key(each.epoch_items(1))  # deterministic


def test_plain_sampler_is_a_permutation_per_epoch():
    s = PlainSampler(17, seed=3)
    e0, e1 = s.epoch_items(0), s.epoch_items(1)
    assert sorted(it.first for it in e0) == list(range(17))
    assert [it.pos for it in e0] == list(range(17))
    assert all(it.second == -1 and it.delta == 1.0 for it in e0)
    assert [it.first for it in e0] != [it.first for it in e1]
    assert [it.first for it in e0] == [it.first for it in PlainSampler(17, seed=3).epoch_items(0)]


@pytest.mark.parametrize("n,batch,world", [(37, 4, 2), (40, 4, 2), (41, 4, 2), (9, 4, 2), (4, 3, 2), (33, 5, 3), (21, 4, 1), (13, 3, 1)])
def test_sharding_partitions_the_epoch(n, batch, world):
    items = list(range(n))
    per_rank = [epoch_batches(items, batch, world, r) for r in range(world)]
    flat = [x for batches in per_rank for b in batches for x in b]
    assert sorted(flat) == items  # union = all, no duplicates
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts.pop() == batches_per_epoch(n, batch, world)  # same number of steps
    assert all(len(b) >= 2 for batches in per_rank for b in batches)  # BatchNorm needs 2


def test_sharding_pair_sampler_world_two():
    sets = random_class_sets(30, seed=6)
    items = PairSampler("cfb", ctx_for(sets, 3)).epoch_items(0)
    r0, r1 = (epoch_batches(items, 4, 2, r) for r in (0, 1))
    got = sorted(it.pos for b in r0 + r1 for it in b)
    assert got == list(range(len(items)))


def test_sharding_refuses_too_small_epochs():
    with pytest.raises(RbsegError):
        epoch_batches([0, 1, 2], 4, 2, 0)


def test_collate_gives_a_void_phantom_to_standard_items():
    import torch

    from robustbench_seg.training.data import collate

    def sample(pos, paired):
        s = {"image": torch.full((3, 4, 4), pos, dtype=torch.uint8), "mask": torch.zeros(4, 4, dtype=torch.long),
             "delta": 0.8 if paired else 1.0, "pos": pos}
        if paired:
            s["image2"], s["mask2"] = torch.full((3, 4, 4), 9, dtype=torch.uint8), torch.ones(4, 4, dtype=torch.long)
        return s

    mixed = collate([sample(0, True), sample(1, False)])
    assert torch.equal(mixed["image2"][1], torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert torch.equal(mixed["mask2"][1], torch.full((4, 4), 255)) and torch.equal(mixed["mask2"][0], torch.ones(4, 4, dtype=torch.long))
    assert mixed["delta"].tolist() == pytest.approx([0.8, 1.0])
    # an M_fb batch of standard items only still has a (void) phantom in a paired stage
    plain = collate([sample(0, False), sample(1, False)], paired=True)
    assert torch.equal(plain["mask2"], torch.full((2, 4, 4), 255))
    assert "image2" not in collate([sample(0, False), sample(1, False)], paired=False)
