"""Compressed formats: exact round trips at ragged shapes, storage, pytree behaviour, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pallas_kernels.nm_codec import nm_compress, pack_index
from tvwjax.errors import ConfigError, DTypeError, PatternViolationError, ShapeError
from tvwjax.formats import (
    BlockSparse,
    NMSparse,
    TileVectorWise,
    TileWise,
    compress,
    decompress,
)
from tvwjax.patterns import BW, EW, NM, TEW, TVW, TW, VW

CASES = [
    (TW(tile=32), 0.75, TileWise),
    (TW(tile=32), 0.6, TileWise),
    (TW(tile=16, column_share=0.3), 0.9, TileWise),
    (TVW(tile=32), 0.75, TileVectorWise),
    (TVW(tile=16), 0.5, TileVectorWise),
    (NM(), 0.5, NMSparse),
    (BW(32, 32), 0.7, BlockSparse),
    (BW(8, 16), 0.5, BlockSparse),
]


def _masked(shape, pattern, s, seed=0, dtype=np.float32):
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    m = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w, jnp.float32)), s))
    return w, m


@pytest.mark.parametrize("pattern,s,cls", CASES, ids=lambda v: repr(v)[:24])
@pytest.mark.parametrize("shape", [(96, 200), (72, 77)])
def test_round_trip_exact(pattern, s, cls, shape):
    w, m = _masked(shape, pattern, s)
    cw = compress(w, m, pattern)
    assert type(cw) is cls
    np.testing.assert_array_equal(np.asarray(decompress(cw)), np.where(m, w, 0))
    np.testing.assert_array_equal(np.asarray(jax.jit(decompress)(cw)), np.where(m, w, 0))


@pytest.mark.parametrize("pattern,s", [(p, s) for p, s, _ in CASES]
                         + [(EW(), 0.5), (VW(), 0.5), (TEW(tile=32, delta=0.02), 0.75)],
                         ids=lambda v: repr(v)[:24])
def test_pattern_format_agrees_with_compress(pattern, s):
    w, m = _masked((64, 96), pattern, s)
    if pattern.format is not None:
        assert isinstance(compress(w, m, pattern), TileWise | TileVectorWise | NMSparse
                          | BlockSparse)
    else:
        with pytest.raises(ConfigError, match="pattern"):
            compress(w, m, pattern)
    assert (pattern.format is not None) == (type(pattern) not in (EW, VW, TEW))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_round_trip_low_precision(dtype):
    w, m = _masked((64, 130), TVW(tile=32), 0.75)
    w = np.asarray(jnp.asarray(w, dtype))
    cw = compress(w, m, TVW(tile=32))
    assert cw.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(decompress(cw)), np.where(m, w, 0))


def test_tile_layout_contract():
    """rows/cols/counts/values as documented for the Pallas kernels (ragged N, K_t differ)."""
    w, m = _masked((64, 100), TW(tile=32), 0.7, seed=3)
    cw = compress(w, m, TW(tile=32))
    t, kp, g = cw.values.shape
    assert (t, g) == (4, 32) and cw.rows.shape == (t, kp) and cw.cols.shape == (t, g)
    assert cw.rows.dtype == cw.cols.dtype == cw.counts.dtype == np.int32
    assert len(set(cw.counts.tolist())) > 1, "test wants K_t differing per tile"
    assert kp == cw.counts.max()
    for i in range(t):
        k_t = cw.counts[i]
        cols = cw.cols[i][cw.cols[i] < 100]
        assert np.all(cw.cols[i][cols.size:] == 100)            # padding columns = N
        assert np.all(np.diff(cw.rows[i, :k_t]) > 0)             # increasing original order
        assert np.all(cw.rows[i, k_t:] == 0)                     # padding rows -> row 0
        np.testing.assert_array_equal(np.asarray(cw.values[i, :k_t, :cols.size]),
                                      w[np.ix_(cw.rows[i, :k_t], cols)])
        assert not np.asarray(cw.values[i, k_t:]).any()


def test_tvw_layout_contract():
    w, m = _masked((64, 70), TVW(tile=32), 0.75, seed=1)
    cw = compress(w, m, TVW(tile=32))
    t, kp = cw.rows.shape
    assert kp % 8 == 0
    assert cw.values.shape == (t, kp // 2, 32) and cw.meta.shape == (t, kp // 8, 32)
    assert cw.meta.dtype == np.uint8
    for i in range(t):
        ok = cw.cols[i] < 70
        block = np.zeros((kp, 32), np.float32)
        bmask = np.zeros((kp, 32), bool)
        k_t = cw.counts[i]
        block[:k_t][:, ok] = np.where(m, w, 0)[np.ix_(cw.rows[i, :k_t], cw.cols[i][ok])]
        bmask[:k_t][:, ok] = m[np.ix_(cw.rows[i, :k_t], cw.cols[i][ok])]
        v, idx = nm_compress(jnp.asarray(block), jnp.asarray(bmask))
        np.testing.assert_array_equal(np.asarray(cw.values[i]), np.asarray(v))
        np.testing.assert_array_equal(cw.meta[i], np.asarray(pack_index(idx)))


def test_tw_tiles_match_pattern_tiling():
    """For a TW-2D mask the inferred tiles are the pattern's tiles (surviving columns)."""
    w, m = _masked((128, 256), TW(tile=32), 0.75, seed=2)
    cw = compress(w, m, TW(tile=32))
    kept = np.flatnonzero(m.any(0))
    flat = cw.cols.reshape(-1)
    np.testing.assert_array_equal(flat[flat < 256], kept)


def test_storage_bytes():
    w, m = _masked((512, 512), TVW(tile=128), 0.75)
    w16 = w.astype(np.float16)
    cw = compress(w16, m, TVW(tile=128))
    expect = cw.values.size * 2 + cw.meta.nbytes + cw.rows.nbytes + cw.cols.nbytes \
        + cw.counts.nbytes
    assert cw.nbytes == expect
    # Unpadded: 25% of the values, 2 bits per value, int32 row/column indices.
    g_t = (cw.cols < 512).sum(axis=1)
    vals = (-(-cw.counts // 4) * 2) @ g_t
    assert vals >= int(m.sum())
    assert cw.storage_bytes() == vals * 2 + (-(-(-(-cw.counts // 4) * 2) // 4)) @ g_t \
        + 4 * (cw.counts.sum() + g_t.sum()) + 4 * cw.num_tiles
    assert cw.storage_bytes() <= cw.nbytes
    assert cw.storage_bytes() / cw.dense_bytes() <= 0.30
    tw = compress(w16, np.asarray(TW(tile=128).mask(jnp.abs(jnp.asarray(w)), 0.75)),
                  TW(tile=128))
    assert tw.storage_bytes() == int(tw.counts @ (tw.cols < 512).sum(1)) * 2 \
        + 4 * int(tw.counts.sum() + (tw.cols < 512).sum() + tw.num_tiles)
    nm = compress(w16, np.asarray(NM().mask(jnp.abs(jnp.asarray(w)), 0.5)), NM())
    assert nm.storage_bytes() / nm.dense_bytes() == pytest.approx(9 / 16)


def test_pytree_leaves_are_values_only():
    w, m = _masked((64, 64), TW(tile=16), 0.75)
    cw = compress(w, m, TW(tile=16))
    leaves = jax.tree.leaves(cw)
    assert len(leaves) == 1 and leaves[0] is cw.values
    doubled = jax.tree.map(lambda v: 2 * v, cw)
    assert type(doubled) is TileWise
    np.testing.assert_array_equal(np.asarray(decompress(doubled)), 2 * np.where(m, w, 0))
    assert jax.tree.structure(cw) == jax.tree.structure(compress(w, m, TW(tile=16)))
    with pytest.raises(AttributeError, match="immutable"):
        cw.values = None


@settings(max_examples=5, deadline=None)  # every format's round trip: test_format_properties
@given(k=st.integers(8, 80), n=st.integers(1, 90), tile=st.sampled_from([4, 8, 16]),
       s=st.sampled_from([0.5, 0.75, 0.9]), seed=st.integers(0, 10**6),
       share=st.sampled_from([0.0, 0.5]))
def test_property_tw_round_trip(k, n, tile, s, seed, share):
    pattern = TW(tile=tile, column_share=share)
    w, m = _masked((k, n), pattern, s, seed=seed)
    np.testing.assert_array_equal(np.asarray(decompress(compress(w, m, pattern))),
                                  np.where(m, w, 0))


@settings(max_examples=4, deadline=None)
@given(k=st.integers(2, 20).map(lambda v: 4 * v), n=st.integers(1, 70),
       tile=st.sampled_from([8, 16]), seed=st.integers(0, 10**6))
def test_property_tvw_round_trip(k, n, tile, seed):
    pattern = TVW(tile=tile)
    w, m = _masked((k, n), pattern, 0.75, seed=seed)
    np.testing.assert_array_equal(np.asarray(decompress(compress(w, m, pattern))),
                                  np.where(m, w, 0))


# -- errors --------------------------------------------------------------------------------------
def test_mask_breaking_tw_raises():
    w, m = _masked((32, 64), TW(tile=16), 0.5)
    m = m.copy()
    r, c = np.argwhere(m)[0]
    m[r, c] = False
    with pytest.raises(PatternViolationError, match="mask: not tile-wise"):
        compress(w, m, TW(tile=16))


def test_mask_breaking_tvw_and_nm_raises():
    w = np.ones((16, 8), np.float32)
    with pytest.raises(PatternViolationError, match="mask: not tile-vector-wise 2:4"):
        compress(w, np.ones((16, 8), bool), TVW(tile=8))
    with pytest.raises(PatternViolationError, match="mask: not 2:4"):
        compress(w, np.ones((16, 8), bool), NM())


def test_mask_breaking_blocks_raises():
    m = np.zeros((64, 64), bool)
    m[:32, :31] = True
    with pytest.raises(PatternViolationError, match="block"):
        compress(np.ones((64, 64), np.float32), m, BW(32, 32))


def test_bad_inputs_name_the_parameter():
    w = np.ones((8, 8), np.float32)
    m = np.ones((8, 8), bool)
    with pytest.raises(ShapeError, match="mask"):
        compress(w, m[:4], TW(tile=4))
    with pytest.raises(ShapeError, match="w:"):
        compress(np.ones(8, np.float32), np.ones(8, bool), TW(tile=4))
    with pytest.raises(DTypeError, match="w:"):
        compress(np.ones((8, 8), np.int32), m, TW(tile=4))
    with pytest.raises(DTypeError, match="mask"):
        compress(w, np.full((8, 8), 0.5), TW(tile=4))
    with pytest.raises(ShapeError, match="K"):
        compress(np.ones((6, 8), np.float32), np.ones((6, 8), bool), NM())
    with pytest.raises(ConfigError, match="pattern"):
        compress(w, m, EW())
    with pytest.raises(ConfigError, match="pattern"):
        compress(w, m, TEW(tile=4))
    with pytest.raises(ConfigError, match="pattern"):
        compress(w, m, "TW")
    with pytest.raises(ConfigError, match="cw"):
        decompress(w)
    with pytest.raises(TypeError, match="eager"):
        jax.jit(lambda w: compress(w, m, TW(tile=4)))(w)


def test_all_pruned_mask():
    cw = compress(np.ones((8, 8), np.float32), np.zeros((8, 8), bool), TW(tile=4))
    assert cw.num_tiles == 0
    np.testing.assert_array_equal(np.asarray(decompress(cw)), np.zeros((8, 8)))
