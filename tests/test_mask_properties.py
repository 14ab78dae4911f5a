"""Property-based tests (hypothesis): random shapes, tiles and sparsities for every pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tvwjax as tw

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

dims = st.integers(min_value=1, max_value=40)
sparsities = st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9])
seeds = st.integers(0, 2**16)


def scores(k, n, seed):
    return jnp.abs(jax.random.normal(jax.random.key(seed), (k, n)))


@SETTINGS
@given(k=dims, n=dims, s=sparsities, seed=seeds)
def test_ew_exact_count(k, n, s, seed):
    m = np.asarray(tw.EW().mask(scores(k, n, seed), s))
    assert m.sum() == int(np.floor((1 - s) * k * n + 0.5))
    tw.check(m, tw.EW(), s)


@SETTINGS
@given(k=dims, n=dims, r=st.integers(1, 9), c=st.integers(1, 9), s=sparsities, seed=seeds)
def test_bw_valid(k, n, r, c, s, seed):
    p = tw.BW(r, c)
    tw.check(p.mask(scores(k, n, seed), s), p, s)


@SETTINGS
@given(k=dims, n=dims, ln=st.integers(1, 20), s=sparsities, seed=seeds)
def test_vw_valid(k, n, ln, s, seed):
    p = tw.VW(ln)
    tw.check(p.mask(scores(k, n, seed), s), p, s)


@SETTINGS
@given(groups=st.integers(1, 12), n=dims, seed=seeds)
def test_nm_valid(groups, n, seed):
    m = tw.NM().mask(scores(4 * groups, n, seed), 0.5)
    tw.check(m, tw.NM(), 0.5)
    assert int(m.sum()) == m.size // 2


@SETTINGS
@given(k=dims, n=dims, tile=st.integers(2, 24), share=st.sampled_from([0.0, 0.5, 1.0]),
       rb=st.sampled_from([1, 2, 4]), s=sparsities, seed=seeds)
def test_tw_valid(k, n, tile, share, rb, s, seed):
    assume(k >= rb)  # smaller K is rejected with a ShapeError (test_patterns)
    p = tw.TW(tile, column_share=share, row_block=rb)
    m = np.asarray(p.mask(scores(k, n, seed), s))
    tw.check(m, p, s)


@SETTINGS
@given(k=dims, n=dims, tile=st.integers(2, 24), s=st.sampled_from([0.5, 0.75, 0.9]),
       seed=seeds)
def test_tew_exact_count(k, n, tile, s, seed):
    p = tw.TEW(tile, delta=0.05)
    m = np.asarray(p.mask(scores(k, n, seed), s))
    tw.check(m, p, s)


@SETTINGS
@given(k=st.integers(4, 40), n=dims, tile=st.integers(2, 24),
       share=st.sampled_from([0.0, 0.5]), s=st.sampled_from([0.0, 0.5, 0.75, 0.9]), seed=seeds)
def test_tvw_valid(k, n, tile, share, s, seed):
    p = tw.TVW(tile, column_share=share)
    m = np.asarray(p.mask(scores(k, n, seed), s))
    tw.check(m, p, s)
    # Its TW part is the TW mask at twice the density, rows rounded to 4.
    if s > 0:
        base = np.asarray(tw.TW(tile, column_share=share, row_block=4).mask(
            scores(k, n, seed), 1 - 2 * (1 - s)))
        assert not (m & ~base).any()
