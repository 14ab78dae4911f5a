"""Every pattern at every allowed sparsity and at ragged shapes, against the validators."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvwjax as tw

SHAPES = [(64, 48), (96, 130), (36, 18)]  # ragged: N % tile != 0, K % 16 != 0
SPARSITIES = [0.0, 0.5, 0.75, 0.9]


def patterns():
    return [
        tw.EW(), tw.BW(8, 8), tw.BW(4, 16), tw.VW(16), tw.NM(), tw.NM(1, 4),
        tw.TW(16), tw.TW(16), tw.TW(16, row_block=4), tw.TEW(16, delta=0.05),
        tw.TVW(16), tw.TVW(16, column_share=0.0), tw.TVW(8, row_block=8),
    ]


def allowed(p, s, shape):
    try:
        p.validate_sparsity(s)
        p.validate_shape(shape)
    except (tw.ConfigError, tw.ShapeError):
        return False
    return True


def kept_count(s: float, total: int) -> int:
    """The README's counting rule, written out: float32 ``1 - s`` times ``total`` (one
    rounding), half up, at least 1 when anything is kept."""
    x = float(np.float32(np.float32(1) - np.float32(s)) * np.float32(total))
    return min(total, max(1, int(np.floor(x + 0.5)))) if s < 1 else 0


def scores_for(shape, seed=0):
    return jnp.abs(jax.random.normal(jax.random.key(seed), shape))


CASES = [(p, s, shape) for p, s, shape in itertools.product(patterns(), SPARSITIES, SHAPES)
         if allowed(p, s, shape)]


@pytest.mark.parametrize("p,s,shape", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_mask_follows_pattern_and_corruption_is_caught(p, s, shape):
    m = np.asarray(p.mask(scores_for(shape), s))
    assert m.dtype == np.bool_ and m.shape == shape
    tw.check(m, p, s)
    if s == 0:
        assert m.all()
        return
    # Flipping any single element must break the pattern (or its implied count).
    rng = np.random.default_rng(0)
    kept, pruned = np.argwhere(m), np.argwhere(~m)
    for idx in [*kept[rng.integers(len(kept), size=4)], *pruned[rng.integers(len(pruned), size=4)]]:
        bad = m.copy()
        bad[tuple(idx)] = ~bad[tuple(idx)]
        with pytest.raises(tw.PatternViolationError):
            tw.check(bad, p, s)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", [0.5, 0.75, 0.9])
def test_exact_counts(shape, s):
    k, n = shape
    sc = scores_for(shape, 1)
    want = kept_count(s, k * n)
    assert int(tw.EW().mask(sc, s).sum()) == want
    assert int(tw.TEW(16, delta=0.05).mask(sc, s).sum()) == want
    assert int(tw.TW(16).mask(sc, s).sum()) <= want
    assert int(tw.TW(16).mask(sc, s).sum()) > want - 16
    vw = np.asarray(tw.VW(16).mask(sc, s))
    lens = [min(16, k - i) for i in range(0, k, 16)]
    assert vw.sum() == n * sum(kept_count(s, ln) for ln in lens)


def test_nm_keeps_n_of_m_along_contraction_axis():
    sc = scores_for((32, 8))
    m = np.asarray(tw.NM().mask(sc, 0.5))
    assert (m.reshape(8, 4, 8).sum(axis=1) == 2).all()
    # The groups run along K (axis 0), not along N.
    assert not (m.reshape(32, 2, 4).sum(axis=2) == 2).all()
    ref = np.asarray(sc).reshape(8, 4, 8)
    top2 = np.argsort(-ref, axis=1, kind="stable")[:, :2, :]
    want = np.zeros_like(ref, bool)
    np.put_along_axis(want, top2, True, axis=1)
    np.testing.assert_array_equal(m, want.reshape(32, 8))


def test_ew_keeps_largest():
    sc = scores_for((20, 30))
    m = np.asarray(tw.EW().mask(sc, 0.75))
    s = np.asarray(sc)
    assert s[m].min() >= s[~m].max()


def test_tw2d_column_then_segments():
    sc = scores_for((64, 64), 3)
    p = tw.TW(16, column_share=0.5)  # TW-2D: 75% -> 50% columns x 50% segments
    m = np.asarray(p.mask(sc, 0.75))
    cols = m.any(axis=0)
    assert cols.sum() == 32
    # The kept columns are the 32 with the largest L2 norm.
    norms = np.sqrt((np.asarray(sc) ** 2).sum(axis=0))
    assert set(np.flatnonzero(cols)) == set(np.argsort(-norms, kind="stable")[:32])
    # Tiles keep different numbers of rows (the ranking is global, not per tile).
    kept_cols = np.flatnonzero(cols)
    rows_per_tile = [m[:, kept_cols[i:i + 16]].all(axis=1).sum() for i in range(0, 32, 16)]
    assert sum(rows_per_tile) * 16 == m.sum()


def test_tw_column_share_split():
    sc = scores_for((64, 100), 4)
    m_eq = np.asarray(tw.TW(10, column_share=0.5).mask(sc, 0.75))
    m_col = np.asarray(tw.TW(10, column_share=1.0).mask(sc, 0.75))
    assert m_eq.any(axis=0).sum() == 50
    assert m_col.any(axis=0).sum() == 25  # all sparsity from columns
    assert m_col[:, m_col.any(axis=0)].all()


def test_tvw_is_tw_then_two_four():
    sc = scores_for((64, 64), 5)
    p = tw.TVW(16)
    m = np.asarray(p.mask(sc, 0.75))
    assert abs(m.mean() - 0.25) < 0.03
    tw.check(m, p, 0.75)
    # Its TW part: the same TW mask at twice the density, with rows rounded to 4.
    base = np.asarray(tw.TW(16, row_block=4).mask(sc, 0.5))
    assert not (m & ~base).any()


def test_tvw_allows_only_its_floor():
    with pytest.raises(tw.ConfigError, match="at least 0.5"):
        tw.TVW().mask(scores_for((32, 8)), 0.3)
    with pytest.raises(tw.ConfigError, match="fixed at 0.5"):
        tw.NM().mask(scores_for((32, 8)), 0.75)


def test_traced_sparsity_matches_static():
    sc = scores_for((48, 40))
    for p in [tw.EW(), tw.TW(8), tw.TVW(8), tw.VW(16), tw.BW(8, 8), tw.TEW(8)]:
        static = p.mask(sc, 0.75)
        traced = jax.jit(lambda x, s, p=p: p.mask(x, s))(sc, jnp.float32(0.75))
        np.testing.assert_array_equal(np.asarray(static), np.asarray(traced), err_msg=str(p))


def test_traced_sparsity_below_floor_rounds_up():
    sc = scores_for((32, 16))
    m = jax.jit(lambda x, s: tw.NM().mask(x, s))(sc, jnp.float32(0.2))
    assert float(m.mean()) == 0.5
    m0 = jax.jit(lambda x, s: tw.TVW(8).mask(x, s))(sc, jnp.float32(0.0))
    assert bool(m0.all())


def test_ties_are_deterministic():
    sc = jnp.ones((32, 32))
    for p in [tw.EW(), tw.TW(8), tw.TVW(8), tw.BW(8, 8)]:
        a = np.asarray(p.mask(sc, 0.75))
        b = np.asarray(jax.jit(lambda x, p=p: p.mask(x, 0.75))(sc))
        np.testing.assert_array_equal(a, b)
    # Documented rule: equal scores -> lower flat index kept first.
    m = np.asarray(tw.EW().mask(jnp.ones((4, 4)), 0.75))
    assert m.ravel()[:4].all() and not m.ravel()[4:].any()


@pytest.mark.parametrize("bad,match", [
    (lambda: tw.TW(0), "tile must be a positive integer"),
    (lambda: tw.TW(-3), "tile"),
    (lambda: tw.BW(0, 4), "rows"),
    (lambda: tw.VW(0), "length"),
    (lambda: tw.NM(4, 4), "n must be smaller than m"),
    (lambda: tw.TVW(16, row_block=6), "row_block must be a multiple of m=4"),
    (lambda: tw.TW(16, column_share=1.5), "column_share"),
    (lambda: tw.TEW(16, delta=0.0), "delta"),
])
def test_bad_pattern_parameters(bad, match):
    with pytest.raises(tw.ConfigError, match=match):
        bad()


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity(s):
    with pytest.raises(tw.ConfigError, match=r"sparsity must be in \[0, 1\)"):
        tw.EW().mask(scores_for((8, 8)), s)


def test_row_block_larger_than_k_is_rejected():
    with pytest.raises(tw.ShapeError, match="row_block=4.*at least 4"):
        tw.TVW(8).mask(scores_for((3, 16)), 0.75)
    with pytest.raises(tw.ShapeError, match="row_block=2"):
        tw.TW(2, row_block=2).mask(scores_for((1, 4)), 0.3)


def test_nm_needs_divisible_k():
    with pytest.raises(tw.ShapeError, match="divisible by m=4"):
        tw.NM().mask(scores_for((30, 8)), 0.5)


def test_patterns_are_hashable_static_args():
    p = tw.TVW(32)
    assert hash(p) == hash(tw.TVW(32)) and p == tw.TVW(32)
    f = jax.jit(lambda x, p: p.mask(x, 0.75), static_argnums=1)
    np.testing.assert_array_equal(np.asarray(f(scores_for((64, 64)), p)),
                                  np.asarray(p.mask(scores_for((64, 64)), 0.75)))


def _barriers(fn, *args) -> int:
    """Optimisation barriers in ``fn``'s jaxpr, nested calls included."""
    from tests.test_masking import _count_primitive

    return _count_primitive(jax.make_jaxpr(fn)(*args), "optimization_barrier")


def test_share_sizes_tvw_pieces_but_never_changes_the_mask():
    # 256 x 384 = 3 pieces of 32k elements when the matrix is all that is selected
    # (share 1); a 1% share is selected in one. Coarse scores: ties across pieces.
    sc = jnp.round(scores_for((256, 384)) * 2) / 2
    p = tw.TVW(tile=32)
    masks = {share: np.asarray(p.mask(sc, 0.75, share=share)) for share in (1.0, 0.2, 0.01)}
    for share, m in masks.items():
        np.testing.assert_array_equal(m, masks[1.0], err_msg=str(share))
    tw.check(masks[1.0], p, 0.75)  # the independent checker: TVW, kept count included
    assert _barriers(lambda x: p.mask(x, 0.75, share=1.0), sc) == 2  # between 3 pieces
    assert _barriers(lambda x: p.mask(x, 0.75, share=0.2), sc) == 2  # ceil(0.2 * 16) > 3
    assert _barriers(lambda x: p.mask(x, 0.75, share=0.1), sc) == 1  # ceil(0.1 * 16) = 2
    assert _barriers(lambda x: p.mask(x, 0.75, share=0.01), sc) == 0
