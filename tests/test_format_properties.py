"""Property-based tests (hypothesis) over random shapes, dtypes, sparsities and weights:

* every pattern's mask is valid (:func:`tvwjax.check`, kept count included);
* ``decompress(compress(w, mask)) == where(mask, w, 0)`` exactly, for every format;
* ``matmul(x, compress(w, mask)) == x @ where(mask, w, 0)`` within the dtype's rounding.

Shapes come from a small set and the sparsity is passed traced, so each (pattern, shape)
compiles once; sparsities lie on a 1/8 grid (the checker's counting rule, the same float32
rule as the builders', is tested at other sparsities in ``test_mask_properties.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tvwjax

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
SHAPES = [(16, 16), (32, 24), (24, 40)]       # K divisible by 4 and 8 (N:M, TVW)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
GRID = [i / 8 for i in range(1, 8)]

MASK_PATTERNS = {
    "EW": tvwjax.EW(), "BW": tvwjax.BW(rows=4, cols=8), "VW": tvwjax.VW(length=8),
    "NM": tvwjax.NM(), "TW-1D": tvwjax.TW(tile=8), "TW-2D": tvwjax.TW(tile=8, column_share=0.5),
    "TW-rb4": tvwjax.TW(tile=8, row_block=4), "TEW": tvwjax.TEW(tile=8, delta=0.05),
    "TVW": tvwjax.TVW(tile=8), "TVW-1D": tvwjax.TVW(tile=4, column_share=0.0),
}
FORMAT_PATTERNS = ["BW", "NM", "TW-1D", "TW-2D", "TW-rb4", "TVW", "TVW-1D"]


@functools.partial(jax.jit, static_argnums=2)
def _mask(scores, sparsity, pattern):
    return pattern.mask(scores, sparsity)


def _sparsity(name: str, draw_grid: float) -> float:
    if name == "NM":
        return 0.5
    if name.startswith("TVW"):
        return max(draw_grid, 0.5)
    return draw_grid


def _weights(shape, dtype, seed: int, ties: bool) -> jax.Array:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if ties:  # a coarse grid: many exact ties and exact zeros
        w = np.round(w * 2) / 2
    return jnp.asarray(w, dtype)


def _case(data, names):
    name = data.draw(st.sampled_from(names), label="pattern")
    shape = data.draw(st.sampled_from(SHAPES), label="shape")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    s = _sparsity(name, data.draw(st.sampled_from(GRID), label="sparsity"))
    w = _weights(shape, dtype, data.draw(st.integers(0, 2**16), label="seed"),
                 data.draw(st.booleans(), label="ties"))
    pat = MASK_PATTERNS[name]
    mask = _mask(jnp.abs(w).astype(jnp.float32), jnp.float32(s), pat)
    return name, pat, s, w, np.asarray(mask)


@pytest.mark.slow
@SETTINGS
@given(st.data())
def test_masks_follow_their_pattern(data):
    name, pat, s, w, mask = _case(data, list(MASK_PATTERNS))
    assert mask.shape == w.shape and mask.dtype == np.bool_
    tvwjax.check(mask, pat, s, name=name)
    # Traced and static sparsity give the same mask.
    np.testing.assert_array_equal(mask, np.asarray(pat.mask(jnp.abs(w).astype(jnp.float32), s)))


@pytest.mark.slow
@SETTINGS
@given(st.data())
def test_compress_decompress_round_trip(data):
    name, pat, s, w, mask = _case(data, FORMAT_PATTERNS)
    cw = tvwjax.compress(w, mask, pat)
    assert cw.shape == w.shape and cw.dtype == np.dtype(w.dtype)
    dense = np.asarray(tvwjax.decompress(cw))
    want = np.asarray(jnp.where(mask, w, jnp.zeros((), w.dtype)))
    assert dense.dtype == want.dtype
    np.testing.assert_array_equal(dense, want)
    # Recompressing the decompressed weight gives the same tables and values.
    again = tvwjax.compress(dense, mask, pat)
    assert jax.tree.structure(again) == jax.tree.structure(cw)
    np.testing.assert_array_equal(np.asarray(again.values), np.asarray(cw.values))


@SETTINGS
@given(st.data(), st.sampled_from([(1,), (5,), (2, 3)]))
def test_matmul_equals_masked_dense(data, lead):
    name, pat, s, w, mask = _case(data, FORMAT_PATTERNS)
    cw = tvwjax.compress(w, mask, pat)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((*lead, w.shape[0])), w.dtype)
    y = tvwjax.matmul(x, cw, backend="cpu")
    assert y.shape == (*lead, w.shape[1]) and y.dtype == w.dtype
    ref = np.asarray(x, np.float32) @ np.where(mask, np.asarray(w, np.float32), 0)
    tol = 1e-4 if w.dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("name", ["TW-1D", "TVW"])
def test_interpret_backend_matches_on_a_drawn_case(name):
    """One fixed draw through the Pallas interpret kernels (slow: not property-driven)."""
    pat = MASK_PATTERNS[name]
    w = _weights((32, 24), jnp.float32, 3, ties=True)
    mask = np.asarray(_mask(jnp.abs(w), jnp.float32(0.75), pat))
    cw = tvwjax.compress(w, mask, pat)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 32)), jnp.float32)
    np.testing.assert_allclose(np.asarray(tvwjax.matmul(x, cw, backend="interpret")),
                               np.asarray(x) @ np.where(mask, np.asarray(w), 0),
                               rtol=1e-5, atol=1e-5)
