"""What each training step sees: per-epoch work lists, drawn on the fly, and their sharding.

A *work item* is ``(pos, first, second, delta)``: the item's position in the epoch, the dominant
image index, the phantom image index (-1: none, a standard image) and the dominant weight delta
of Eq. 1 (1.0 for a standard image). Every list is a pure function of ``(seed, epoch)`` so a run
can stop anywhere and resume with the same data; nothing is written to disk.

Blend samplers (paper Sec. 3.1 and Table 5a), registered in :data:`BLENDS`:

* ``cfb`` -- categorical clustering C_fb: 20 clusters (one per foreground class; an image is in
  the cluster of every class it contains). For every (cluster c, image i in c): one partner from
  each of ``k`` other non-empty clusters (``k = min(pairs_per_image, clusters - 1)``; 19 = the
  paper's full expansion; with fewer, the ``k`` clusters are drawn uniformly without
  replacement), partner uniform within that cluster. An epoch is the paper's expanded dataset:
  ``sum_c |c| * k`` pairs.
* ``rfb`` -- R_fb: every image paired with ``pairs_per_image`` (10) distinct random partners.
* ``cafb`` -- Ca_fb: like cfb but the partners come from the same cluster as the dominant image.
* ``wrfb`` -- WR_fb: rfb pairs with the fixed delta 0.6 (ignores the delta range).
* ``mfb`` -- M_fb: a fixed random half of the images gets rfb pairs (partners from that half),
  the other half contributes standard images, as many times each, so the stream is half blended.

In every sampler a partner differs from the dominant image unless its candidate set holds only
that image; delta ~ U[lo, hi] per pair (Eq. 1).

In-batch blends (:data:`IN_BATCH_BLENDS`) choose the partner inside each training batch, so their
epoch is the plain one (:class:`PlainSampler`: every image once as the dominant image, sharded by
:func:`epoch_batches` like any other): ``cm`` -- SegMix's co-occurrence blend, the argmax-score
partner of the rank's own batch (``training/cooccurrence.py``, run by ``methods.make_cm_step``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..constants import NUM_CLASSES
from ..errors import RbsegError

# purposes mixed into derived seeds, so streams never collide
ORDER, PAIRS, AUGMENT, STEP, WORKER, HALVES = 1, 2, 3, 4, 5, 6
WRFB_DELTA = 0.6
IN_BATCH_BLENDS = ("cm",)  # partner chosen inside the batch (methods.make_cm_step), not by a PairSampler


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (non-negative ints)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class WorkItem(NamedTuple):
    pos: int
    first: int
    second: int  # -1: a standard (unblended) image
    delta: float


class PairSet(NamedTuple):
    """One epoch's draw before shuffling: parallel arrays, plus the clusters involved (-1 if none)."""

    first: np.ndarray
    second: np.ndarray
    delta: np.ndarray
    first_cluster: np.ndarray
    second_cluster: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def _pairset(first, second, delta, fc=None, sc=None) -> PairSet:
    first = np.asarray(first, dtype=np.int64)
    n = len(first)
    fill = np.full(n, -1, dtype=np.int64)
    return PairSet(first, np.asarray(second, dtype=np.int64), np.asarray(delta, dtype=np.float64),
                   fill if fc is None else np.asarray(fc, dtype=np.int64), fill.copy() if sc is None else np.asarray(sc, dtype=np.int64))


def build_clusters(classes_per_image: Sequence[Sequence[int]], num_classes: int = NUM_CLASSES) -> list[np.ndarray]:
    """Cluster c-1 (c = 1..20) lists the indices of the images that contain class c."""
    clusters: list[list[int]] = [[] for _ in range(num_classes - 1)]
    for i, classes in enumerate(classes_per_image):
        for c in sorted(set(int(c) for c in classes)):
            if 1 <= c < num_classes:
                clusters[c - 1].append(i)
    return [np.asarray(m, dtype=np.int64) for m in clusters]


def _partners(rng: np.random.Generator, candidates: np.ndarray, selves: np.ndarray) -> np.ndarray:
    """For each image in ``selves`` one uniform partner from ``candidates`` other than itself
    (itself only when it is the sole candidate)."""
    m = len(candidates)
    pos = np.full(len(selves), -1, dtype=np.int64)
    where = {int(v): k for k, v in enumerate(candidates)}
    for k, s in enumerate(selves):
        pos[k] = where.get(int(s), -1)
    if m == 1:
        return np.repeat(candidates, len(selves))
    excl = pos >= 0
    u = np.where(excl, rng.integers(0, m - 1, size=len(selves)), rng.integers(0, m, size=len(selves)))
    u = np.where(excl & (u >= pos), u + 1, u)
    return candidates[u]


def _distinct_partners(rng: np.random.Generator, pool: np.ndarray, selves: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` partners per image from ``pool`` minus itself: distinct where the pool is large enough,
    with replacement otherwise. Returns (repeated selves, partners)."""
    firsts, seconds = [], []
    for s in selves:
        cand = pool[pool != s]
        if len(cand) == 0:
            cand = np.asarray([s])
        pick = rng.choice(cand, size=k, replace=len(cand) < k)
        firsts.append(np.full(k, s))
        seconds.append(pick)
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


# ---------------------------------------------------------------------------------------------
# Blend draws: (context, rng) -> PairSet
# ---------------------------------------------------------------------------------------------


class BlendContext(NamedTuple):
    n_images: int
    clusters: list[np.ndarray]  # from build_clusters (may be empty for rfb/wrfb/mfb)
    pairs_per_image: int
    delta_range: tuple[float, float]
    seed: int


BLENDS: dict[str, Callable[[BlendContext, np.random.Generator], PairSet]] = {}


def register_blend(name: str):
    def deco(fn):
        BLENDS[name] = fn
        return fn

    return deco


def _deltas(ctx: BlendContext, rng: np.random.Generator, n: int) -> np.ndarray:
    lo, hi = ctx.delta_range
    return rng.uniform(lo, hi, size=n)


@register_blend("cfb")
def draw_cfb(ctx: BlendContext, rng: np.random.Generator) -> PairSet:
    nonempty = [c for c, m in enumerate(ctx.clusters) if len(m)]
    if len(nonempty) < 2:
        raise RbsegError("C_fb blending needs images of at least two foreground classes in the training split")
    k = min(ctx.pairs_per_image, len(nonempty) - 1)
    parts = {key: [] for key in ("f", "s", "fc", "sc")}
    for c in nonempty:
        members = ctx.clusters[c]
        others = np.asarray([o for o in nonempty if o != c], dtype=np.int64)
        if k == len(others):
            chosen = np.broadcast_to(others, (len(members), k))
        else:  # k distinct other clusters per image, uniformly
            chosen = others[np.argsort(rng.random((len(members), len(others))), axis=1)[:, :k]]
        selves = np.repeat(members, k)
        target = chosen.reshape(-1)
        partner = np.empty_like(selves)
        for o in np.unique(target):
            sel = target == o
            partner[sel] = _partners(rng, ctx.clusters[o], selves[sel])
        parts["f"].append(selves)
        parts["s"].append(partner)
        parts["fc"].append(np.full(len(selves), c + 1))
        parts["sc"].append(target + 1)
    f = np.concatenate(parts["f"])
    return _pairset(f, np.concatenate(parts["s"]), _deltas(ctx, rng, len(f)), np.concatenate(parts["fc"]), np.concatenate(parts["sc"]))


@register_blend("cafb")
def draw_cafb(ctx: BlendContext, rng: np.random.Generator) -> PairSet:
    parts = {key: [] for key in ("f", "s", "c")}
    for c, members in enumerate(ctx.clusters):
        if not len(members):
            continue
        f, s = _distinct_partners(rng, members, members, ctx.pairs_per_image)
        parts["f"].append(f)
        parts["s"].append(s)
        parts["c"].append(np.full(len(f), c + 1))
    if not parts["f"]:
        raise RbsegError("Ca_fb blending needs images with a foreground class in the training split")
    f, cl = np.concatenate(parts["f"]), np.concatenate(parts["c"])
    return _pairset(f, np.concatenate(parts["s"]), _deltas(ctx, rng, len(f)), cl, cl.copy())


@register_blend("rfb")
def draw_rfb(ctx: BlendContext, rng: np.random.Generator) -> PairSet:
    pool = np.arange(ctx.n_images)
    f, s = _distinct_partners(rng, pool, pool, ctx.pairs_per_image)
    return _pairset(f, s, _deltas(ctx, rng, len(f)))


@register_blend("wrfb")
def draw_wrfb(ctx: BlendContext, rng: np.random.Generator) -> PairSet:
    pool = np.arange(ctx.n_images)
    f, s = _distinct_partners(rng, pool, pool, ctx.pairs_per_image)
    return _pairset(f, s, np.full(len(f), WRFB_DELTA))


def mfb_halves(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (per seed) split of the images into the blended half and the standard half."""
    perm = np.random.default_rng(derive_seed(seed, HALVES)).permutation(n_images)
    cut = (n_images + 1) // 2
    return np.sort(perm[:cut]), np.sort(perm[cut:])


@register_blend("mfb")
def draw_mfb(ctx: BlendContext, rng: np.random.Generator) -> PairSet:
    blended, standard = mfb_halves(ctx.n_images, ctx.seed)
    k = ctx.pairs_per_image
    f, s = _distinct_partners(rng, blended, blended, k)
    plain = np.repeat(standard, k)
    first = np.concatenate([f, plain])
    second = np.concatenate([s, np.full(len(plain), -1)])
    delta = np.concatenate([_deltas(ctx, rng, len(f)), np.ones(len(plain))])
    return _pairset(first, second, delta)


# ---------------------------------------------------------------------------------------------
# Epoch samplers: epoch -> shuffled work list
# ---------------------------------------------------------------------------------------------


class PlainSampler:
    """Standard images: each epoch a permutation of the training split."""

    paired = False

    def __init__(self, n_images: int, seed: int, stage: int = 0):
        if n_images < 1:
            raise RbsegError("the training split is empty")
        self.n, self.seed, self.stage = n_images, seed, stage

    def __len__(self) -> int:
        return self.n

    def epoch_items(self, epoch: int) -> list[WorkItem]:
        order = np.random.default_rng(derive_seed(self.seed, ORDER, self.stage, epoch)).permutation(self.n)
        return [WorkItem(p, int(i), -1, 1.0) for p, i in enumerate(order)]


class PairSampler:
    """Blended pairs from a registered blend, redrawn each epoch (``resample="epoch"``) or drawn
    once (``"once"``, the paper's fixed expanded set), shuffled each epoch."""

    paired = True

    def __init__(self, blend: str, ctx: BlendContext, stage: int = 0, resample: str = "epoch"):
        if blend not in BLENDS:
            raise RbsegError(f"unknown blend '{blend}' (choose from {', '.join(BLENDS)})")
        self.blend, self.ctx, self.stage, self.resample = blend, ctx, stage, resample
        self._len = len(self.draw(0))

    def draw(self, epoch: int) -> PairSet:
        key = epoch if self.resample == "epoch" else 0
        return BLENDS[self.blend](self.ctx, np.random.default_rng(derive_seed(self.ctx.seed, PAIRS, self.stage, key)))

    def __len__(self) -> int:
        return self._len

    def epoch_items(self, epoch: int) -> list[WorkItem]:
        ps = self.draw(epoch)
        order = np.random.default_rng(derive_seed(self.ctx.seed, ORDER, self.stage, epoch)).permutation(len(ps))
        return [WorkItem(p, int(ps.first[j]), int(ps.second[j]), float(ps.delta[j])) for p, j in enumerate(order)]


# ---------------------------------------------------------------------------------------------
# Batching and sharding (DDP): no sample dropped, none duplicated, equal step counts per rank
# ---------------------------------------------------------------------------------------------


def epoch_batches(items: Sequence, batch_size: int, world_size: int = 1, rank: int = 0) -> list[list]:
    """Split an epoch's items into this rank's batches.

    Global batches of ``batch_size * world_size`` consecutive items; rank r takes every
    ``world_size``-th item of each, starting at r. A last global batch too small to give every
    rank two items (BatchNorm needs two) is merged into the previous one. So the ranks' batches
    partition the epoch exactly and every rank runs the same number of steps.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if len(items) < 2 * world_size:
        raise RbsegError(f"an epoch of {len(items)} samples cannot feed {world_size} process(es) at >= 2 samples each")
    g = batch_size * world_size
    chunks = [list(items[s:s + g]) for s in range(0, len(items), g)]
    if len(chunks) > 1 and len(chunks[-1]) < 2 * world_size:
        chunks[-2].extend(chunks.pop())
    return [chunk[rank::world_size] for chunk in chunks]


def batches_per_epoch(n_items: int, batch_size: int, world_size: int = 1) -> int:
    g = batch_size * world_size
    n = -(-n_items // g)
    if n > 1 and n_items - (n - 1) * g < 2 * world_size:
        n -= 1
    return n
