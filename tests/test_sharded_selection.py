"""The selection primitives that let masks be computed on sharded scores (issue 19).

Single-device checks of what makes the sharded selection exact: the order-independent sum,
the chunked counts and the sort-free prefix selection, each against a NumPy reference.
The multi-device comparison itself is in ``tests/test_sharding.py``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from tvwjax import _select as sel
from tvwjax.errors import ShapeError


def _reference_prefix(scores: np.ndarray, sizes: np.ndarray, budget: int) -> np.ndarray:
    """Units in (score desc, flat index asc) order while the running size fits ``budget``
    (the documented rule, with a stable sort and a prefix sum)."""
    flat, z = scores.reshape(-1), sizes.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, bool)
    keep[order] = np.cumsum(z[order]) <= budget
    keep &= z > 0
    if budget > 0 and not keep.any():
        keep[order[np.argmax(z[order] > 0)]] = True
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("shape", [(37,), (64, 96), (33, 7)])
def test_exact_sum_is_order_independent_and_accurate(shape):
    rng = np.random.default_rng(0)
    x = (np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-4, 4, shape)).astype(
        np.float32)
    total = float(sel.exact_sum(jnp.asarray(x)))
    shuffled = rng.permutation(x.reshape(-1)).reshape(shape)
    assert float(sel.exact_sum(jnp.asarray(shuffled))) == total  # bit for bit
    assert total == pytest.approx(math.fsum(x.reshape(-1).tolist()), rel=1e-6)
    if len(shape) == 2:
        cols = np.asarray(sel.exact_sum(jnp.asarray(x), 0))
        rows_permuted = np.asarray(sel.exact_sum(jnp.asarray(x[rng.permutation(shape[0])]), 0))
        np.testing.assert_array_equal(cols, rows_permuted)
        np.testing.assert_allclose(cols, x.astype(np.float64).sum(0), rtol=1e-6)


def test_exact_sum_of_zeros_and_one_value():
    assert float(sel.exact_sum(jnp.zeros((4, 64)))) == 0.0
    assert float(sel.exact_sum(jnp.asarray([0.0, 3.5, 0.0]))) == 3.5


@pytest.mark.parametrize("shape", [(5, 64), (3, 96), (7, 5), (40,)])
def test_size_where_counts_exactly(shape):
    rng = np.random.default_rng(1)
    pred = rng.random(shape) < 0.7
    assert int(sel.size_where(jnp.asarray(pred), None)) == int(pred.sum())
    sizes = rng.integers(0, 9, shape)
    assert int(sel.size_where(jnp.asarray(pred), jnp.asarray(sizes))) == int(sizes[pred].sum())


@pytest.mark.parametrize("seed", range(6))
def test_prefix_selection_matches_the_sorted_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 20)), int(rng.integers(1, 70)))
    # Coarse values: many exact ties at the threshold, broken by the flat index.
    scores = (rng.integers(0, 5, shape) / 2).astype(np.float32)
    ones = np.ones(shape, np.int64)
    for k in (0, 1, scores.size // 3, scores.size - 1, scores.size):
        np.testing.assert_array_equal(np.asarray(sel.topk_mask(jnp.asarray(scores), k)),
                                      _reference_prefix(scores, ones, k))
    sizes = rng.integers(0, 6, shape)
    for budget in (0, 3, int(sizes.sum()) // 2, int(sizes.sum())):
        got = sel.budget_mask(jnp.asarray(scores), jnp.asarray(sizes), budget)
        np.testing.assert_array_equal(np.asarray(got), _reference_prefix(scores, sizes, budget))


def test_group_rank_breaks_ties_by_row_and_signed_zeros_tie():
    scores = jnp.asarray([[1.0, -0.0], [2.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    np.testing.assert_array_equal(np.asarray(sel.group_rank(scores, 4)),
                                  [[1, 0], [0, 1], [2, 2], [3, 3]])
    with pytest.raises(ShapeError, match="divisible by m=4"):
        sel.group_rank(jnp.ones((6, 2)), 4)
