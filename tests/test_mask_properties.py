"""Property-based tests (hypothesis): random shapes, tiles and sparsities for every pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_patterns import kept_count

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
    assert m.sum() == kept_count(s, k * n)
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


# -- eager == jit (static) == jit (traced) == prune(OneShot) ----------------------------------
ALL_PATTERNS = [tw.EW(), tw.BW(3, 5), tw.VW(5), tw.NM(), tw.TW(4), tw.TW(6, column_share=0.5),
                tw.TW(4, row_block=2), tw.TEW(4, delta=0.05), tw.TVW(4),
                tw.TVW(8, column_share=0.5)]
any_sparsity = st.one_of(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.75, 0.9]),
                         st.floats(0.0, 0.95).map(lambda x: round(x, 3)))


def _valid(p, s):
    try:
        p.validate_sparsity(s)
    except tw.ConfigError:
        return False
    return True


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb, strict=True))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(pi=st.integers(0, len(ALL_PATTERNS) - 1), k=st.integers(1, 9).map(lambda g: 4 * g),
       n=st.integers(1, 30), k2=st.integers(1, 6).map(lambda g: 4 * g),
       s=any_sparsity, scope=st.sampled_from(["layer", "global"]), seed=seeds)
def test_eager_jit_traced_and_prune_agree(pi, k, n, k2, s, scope, seed):
    p = ALL_PATTERNS[pi]
    assume(_valid(p, s) and (scope == "layer" or p.supports_global))
    assume(k >= getattr(p, "row_block", 1) and k2 >= getattr(p, "row_block", 1))
    rng = np.random.default_rng(seed)
    # Coarse values: many exact ties (the tie rule) and both signs of zero.
    params = {"a": {"kernel": jnp.asarray(rng.integers(-3, 4, (k, n)) / 2, jnp.float32),
                    "bias": jnp.zeros((n,))},
              "b": {"kernel": jnp.asarray(rng.integers(-3, 4, (k2, 7)) / 2, jnp.float32)}}
    params["a"]["kernel"] = params["a"]["kernel"].at[0].multiply(-0.0)
    eager = tw.masks(params, p, s, scope=scope)
    static = jax.jit(lambda q: tw.masks(q, p, s, scope=scope))(params)
    traced = jax.jit(lambda q, t: tw.masks(q, p, t, scope=scope))(params, s)
    assert _same(eager, static) and _same(eager, traced)
    # Eager Pattern.mask on one leaf, and traced inside jit.
    sc = jnp.abs(params["a"]["kernel"])
    one = p.mask(sc, s)
    if scope == "layer":
        assert bool(jnp.array_equal(one, eager["a"]["kernel"]))
        tw.check_tree(eager, p, s)
    # The optax transform computes the same masks at its one-shot step.
    tx = optax.chain(optax.sgd(0.0), tw.prune(p, tw.OneShot(s), scope=scope))
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    assert _same(tw.get_masks(state), jax.tree.map(lambda m: m, eager))
