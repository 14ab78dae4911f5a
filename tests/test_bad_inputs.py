"""Malformed input across the public API: every case must raise a *documented* error type.

Each case names the exception class from :mod:`tvwjax.errors` it must raise and substrings the
message must contain: the parameter or leaf path, and what was expected. None may end in an
XLA error, a bare ``TypeError`` / ``IndexError``, or a silently wrong result.

``EDGE_CASES`` holds *valid* edge inputs (no rows, NumPy input, bfloat16 / float16, pytrees
with ``None`` and integer leaves, ``FrozenDict``, NNX state, shapes that are not a multiple
of the tile): each must give the result a NumPy computation gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict

import tvwjax
from tvwjax import errors

ConfigError, DTypeError, ShapeError = errors.ConfigError, errors.DTypeError, errors.ShapeError
ScoreError, TreeMismatchError = errors.ScoreError, errors.TreeMismatchError
PatternViolationError = errors.PatternViolationError

REPO = Path(__file__).resolve().parents[1]
K, N = 16, 8


def _w(shape=(K, N), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _params(**extra):
    p = {"dense": {"kernel": jnp.asarray(_w()), "bias": jnp.zeros((N,))}}
    p.update(extra)
    return p


def _nan_w():
    w = _w()
    w[2, 5] = np.nan
    return w


def _tw_mask(tile=4):
    return tvwjax.TW(tile=tile).mask(jnp.abs(jnp.asarray(_w())), 0.5)


def _random_mask(seed=3):
    return np.random.default_rng(seed).random((K, N)) < 0.5


def _prune_update(tx, params, updates=None):
    state = tx.init(params)
    return tx.update(params if updates is None else updates, state, params)


def _sparse_dense_apply(features, inputs_dim):
    w = tvwjax.compress(jnp.asarray(_w()), _tw_mask(), tvwjax.TW(tile=4))
    layer = tvwjax.nn.SparseDense(features=features, use_bias=False)
    return layer.apply({"params": {"kernel": w}}, jnp.ones((2, inputs_dim)))


def _sparse_linear_call(inputs_dim):
    layer = tvwjax.nn.SparseLinear(K, N, rngs=nnx.Rngs(0))
    w = tvwjax.compress(jnp.asarray(_w()), _tw_mask(), tvwjax.TW(tile=4))
    layer.kernel.set_value(w)
    return layer(jnp.ones((2, inputs_dim)))


def _emptied_tile():
    """A TW(tile=4) mask at 87.5% whose second tile keeps no row (breaks min_rows=1)."""
    m = np.zeros((K, N), bool)
    m[0:4, 0:4] = True
    return m


def _only_kernel(path, leaf):
    return path.endswith("kernel")


def _cw(pattern=None, w=None, sparsity=0.5):
    """A compressed ``(K, N)`` weight (TW tile 4 by default) and its dense masked NumPy form."""
    pattern = tvwjax.TW(tile=4) if pattern is None else pattern
    w = _w() if w is None else w
    mask = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w, jnp.float32)), sparsity))
    return tvwjax.compress(w, mask, pattern), np.where(mask, w, 0).astype(w.dtype)


def _sparse_dense(features, **kw):
    return tvwjax.nn.SparseDense(features=features, **kw)


def _sparse_linear(i, o, **kw):
    return tvwjax.nn.SparseLinear(i, o, rngs=nnx.Rngs(0), **kw)


def _dense_init(layer, x):
    return layer.init(jax.random.key(0), x)


def _compressed_linen_apply(x, backend="cpu"):
    w, _ = _cw()
    layer = tvwjax.nn.SparseDense(N, backend=backend)
    return layer.apply({"params": {"kernel": w, "bias": jnp.ones((N,))}}, x)


def _compressed_linear(features=N, backend="cpu"):
    layer = tvwjax.nn.SparseLinear(K, features, backend=backend, rngs=nnx.Rngs(0))
    layer.kernel.set_value(_cw()[0])
    return layer


def _stock_dense_compressed(x):
    model = nn.Dense(N)
    params = model.init(jax.random.key(0), jnp.ones((2, K)))["params"]
    pattern = tvwjax.TW(tile=4)
    small = tvwjax.nn.compress_params(params, tvwjax.masks(params, pattern, 0.5), pattern)
    with tvwjax.nn.compressed_kernels(backend="cpu"):
        return model.apply({"params": small}, x)


def _kernel_masks(params=None, pattern=None):
    pattern = tvwjax.TW(tile=4) if pattern is None else pattern
    return tvwjax.masks(_params() if params is None else params, pattern, 0.5)


class _TwoLinear(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(K, N, rngs=nnx.Rngs(0))
        self.b = tvwjax.nn.SparseLinear(N, 4, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.b(self.a(x))


def _nnx_masks(model):
    return tvwjax.masks(nnx.state(model, nnx.Param), tvwjax.TW(tile=4), 0.5)


def _ew_prune():
    return tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5))


def _prune_with_scores(scores, tx=None, jit=False):
    tx = _ew_prune() if tx is None else tx
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    return update(params, state, params, scores=scores)


def _prune_other_params(tx, state_params, params):
    return tx.update(params, tx.init(state_params), params)


def _wide_params():
    return {"dense": {"kernel": jnp.ones((K, 2 * N)), "bias": jnp.zeros((2 * N,))}}


def _fixed(mask_tree):
    return tvwjax.fixed_masks(mask_tree)


def _full_mask_tree():
    return {"dense": {"kernel": np.ones((K, N), bool), "bias": None}}


@dataclass(frozen=True)
class Case:
    """One malformed input: the call, the error type it must raise, message fragments."""

    id: str
    call: Callable[[], object]
    error: type[errors.TvwError]
    needles: tuple[str, ...]


CASES = [
    # -- patterns: unknown or inconsistent parameters --------------------------------------------
    Case("tw-tile-zero", lambda: tvwjax.TW(tile=0), ConfigError, ("tile", "positive")),
    Case("tw-tile-float", lambda: tvwjax.TW(tile=2.5), ConfigError, ("tile", "integer")),
    Case("tw-column-share", lambda: tvwjax.TW(column_share=1.5), ConfigError,
         ("column_share", "[0, 1]")),
    Case("nm-n-ge-m", lambda: tvwjax.NM(n=4, m=4), ConfigError, ("n must be smaller", "m=4")),
    Case("tvw-row-block", lambda: tvwjax.TVW(row_block=6), ConfigError,
         ("row_block", "multiple of m=4")),
    Case("tew-delta", lambda: tvwjax.TEW(delta=0.0), ConfigError, ("delta", "(0, 1)")),
    Case("bw-rows-negative", lambda: tvwjax.BW(rows=-2), ConfigError, ("rows", "positive")),
    Case("pattern-mask-nan-scores",
         lambda: tvwjax.TW(tile=4).mask(jnp.ones((K, N)).at[1, 1].set(jnp.nan), 0.5),
         ScoreError, ("scores", "NaN or Inf", "finite")),
    Case("pattern-mask-negative-scores",
         lambda: tvwjax.TW(tile=4).mask(jnp.asarray(_w()), 0.5, name="layer/kernel"),
         ScoreError, ("layer/kernel", "non-negative")),
    Case("pattern-mask-3d", lambda: tvwjax.EW().mask(jnp.ones((2, 2, 2)), 0.5), ShapeError,
         ("scores", "2-D")),
    Case("pattern-mask-share-zero",
         lambda: tvwjax.TVW(tile=4).mask(jnp.ones((8, 8)), 0.75, name="fc/kernel", share=0.0),
         ConfigError, ("fc/kernel", "share", "(0, 1]")),
    Case("pattern-mask-share-array",
         lambda: tvwjax.TVW(tile=4).mask(jnp.ones((8, 8)), 0.75, share=jnp.ones(2)),
         ConfigError, ("share", "number")),
    # -- masks: sparsity out of range, wrong pattern, bad scope ---------------------------------
    Case("masks-sparsity-above-1", lambda: tvwjax.masks(_params(), tvwjax.EW(), 1.5),
         ConfigError, ("sparsity", "[0, 1)")),
    Case("masks-sparsity-negative", lambda: tvwjax.masks(_params(), tvwjax.EW(), -0.1),
         ConfigError, ("sparsity", "[0, 1)")),
    Case("masks-sparsity-nan", lambda: tvwjax.masks(_params(), tvwjax.EW(), float("nan")),
         ConfigError, ("sparsity", "[0, 1)")),
    Case("masks-sparsity-string", lambda: tvwjax.masks(_params(), tvwjax.EW(), "0.5"),
         ConfigError, ("sparsity", "number")),
    Case("masks-pattern-string", lambda: tvwjax.masks(_params(), "TW", 0.5), ConfigError,
         ("pattern", "Pattern")),
    Case("masks-scope", lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, scope="model"),
         ConfigError, ("scope", "'layer' or 'global'")),
    Case("masks-layer-bounds", lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5,
                                                    scope="global", layer_bounds=(0.8, 0.2)),
         ConfigError, ("layer_bounds", "min <= max")),
    Case("masks-nm-wrong-sparsity", lambda: tvwjax.masks(_params(), tvwjax.NM(), 0.3),
         ConfigError, ("dense/kernel", "fixed at 0.5")),
    Case("masks-tvw-below-floor", lambda: tvwjax.masks(_params(), tvwjax.TVW(tile=4), 0.2),
         ConfigError, ("dense/kernel", "at least 0.5")),
    Case("masks-override-out-of-range",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, overrides={"dense/*": 1.2}),
         ConfigError, ("dense/kernel", "override", "[0, 1)")),
    Case("masks-tew-sparsity-plus-delta",
         lambda: tvwjax.masks(_params(), tvwjax.TEW(tile=4, delta=0.3), 0.8),
         ConfigError, ("dense/kernel", "sparsity + delta < 1")),
    # -- masks: shapes, dtypes, NaN/Inf, pytrees -------------------------------------------------
    Case("masks-nm-k-not-divisible",
         lambda: tvwjax.masks({"kernel": jnp.ones((6, 8))}, tvwjax.NM(), 0.5,
                              where=lambda p, leaf: p == "kernel"),
         ShapeError, ("kernel", "divisible by m=4", "K=6")),
    Case("masks-3d-kernel-without-view",
         lambda: tvwjax.masks({"kernel": jnp.ones((6, 2, 8))}, tvwjax.EW(), 0.5,
                              where=lambda p, leaf: p == "kernel"),
         ShapeError, ("kernel", "GEMM layout", "views=")),
    Case("masks-view-out-of-range",
         lambda: tvwjax.masks({"kernel": jnp.ones((6, 2, 8))}, tvwjax.EW(), 0.5,
                              views={"kernel": 3}),
         ConfigError, ("views", "kernel", "n_in")),
    Case("masks-empty-kernel",
         lambda: tvwjax.masks({"kernel": jnp.ones((0, 8))}, tvwjax.EW(), 0.5),
         ShapeError, ("kernel", "empty", "(0, 8)")),
    Case("masks-1d-leaf-selected",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, where=lambda p, x: True),
         ShapeError, ("dense/bias", "ndim >= 2")),
    Case("masks-integer-kernel",
         lambda: tvwjax.masks({"kernel": jnp.ones((K, N), jnp.int32)}, tvwjax.EW(), 0.5,
                              where=_only_kernel),
         DTypeError, ("kernel", "floating", "int32")),
    Case("masks-complex-kernel",
         lambda: tvwjax.masks({"kernel": jnp.ones((K, N), jnp.complex64)}, tvwjax.EW(), 0.5,
                              where=_only_kernel),
         DTypeError, ("kernel", "floating", "complex64")),
    Case("masks-nan-weight",
         lambda: tvwjax.masks({"a": {"kernel": jnp.asarray(_w()).at[3, 2].set(jnp.nan)}},
                              tvwjax.TW(tile=4), 0.5),
         ScoreError, ("a/kernel", "NaN or Inf", "finite")),
    Case("masks-inf-score",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, scores=jax.tree.map(
             lambda x: jnp.full(x.shape, jnp.inf), _params())),
         ScoreError, ("dense/kernel", "NaN or Inf")),
    Case("masks-negative-score",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, scores=jax.tree.map(
             lambda x: -jnp.ones(x.shape), _params())),
         ScoreError, ("dense/kernel", "non-negative")),
    Case("masks-scores-tree-mismatch",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, scores={"dense": {
             "kernel": jnp.ones((K, N))}}),
         TreeMismatchError, ("scores", "structure of params")),
    Case("masks-scores-leaf-shape",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.5, scores={"dense": {
             "kernel": jnp.ones((N, K)), "bias": jnp.ones((N,))}}),
         TreeMismatchError, ("dense/kernel", "expected the leaf's shape")),
    Case("apply-masks-tree-mismatch",
         lambda: tvwjax.apply_masks(_params(), {"dense": {"kernel": np.ones((K, N), bool)}}),
         TreeMismatchError, ("mask_tree", "structure of params", "dense/bias")),
    Case("apply-masks-broadcastable-shape",
         lambda: tvwjax.apply_masks(_params(), {"dense": {"kernel": np.ones((1, N), bool),
                                                         "bias": None}}),
         TreeMismatchError, ("mask_tree", "dense/kernel", "shape", f"({K}, {N})")),
    # -- schedules and the prune transform -------------------------------------------------------
    Case("polynomial-final-out-of-range",
         lambda: tvwjax.Polynomial(1.2, 0, 10), ConfigError, ("final_sparsity", "[0, 1)")),
    Case("polynomial-end-before-begin",
         lambda: tvwjax.Polynomial(0.5, 10, 5), ConfigError, ("end_step", "greater")),
    Case("staged-decreasing",
         lambda: tvwjax.Staged((0.5, 0.25), 10), ConfigError, ("levels", "non-decreasing")),
    Case("prune-schedule-not-schedule",
         lambda: tvwjax.prune(tvwjax.EW(), 0.5), ConfigError, ("schedule", "Schedule")),
    Case("prune-pattern-string",
         lambda: tvwjax.prune("TW", tvwjax.OneShot(0.5)), ConfigError, ("pattern", "Pattern")),
    Case("prune-nm-schedule-inconsistent",
         lambda: tvwjax.prune(tvwjax.NM(), tvwjax.Polynomial(0.75, 0, 10)), ConfigError,
         ("Polynomial", "fixed at 0.5")),
    Case("prune-pattern-none",
         lambda: tvwjax.prune(None, tvwjax.OneShot(0.5)), ConfigError,
         ("pattern", "Pattern")),
    Case("fixed-masks-shape",
         lambda: tvwjax.fixed_masks({
             "dense": {"kernel": jnp.ones((N, K), bool), "bias": None}}).init(_params()),
         TreeMismatchError, ("mask_tree", "dense/kernel", "mask shape")),
    Case("fixed-masks-extra-path",
         lambda: tvwjax.fixed_masks({
             "other": {"kernel": jnp.ones((K, N), bool)}}).init(_params()),
         TreeMismatchError, ("mask_tree", "other/kernel")),
    Case("fixed-masks-float-mask",
         lambda: tvwjax.fixed_masks({
             "dense": {"kernel": jnp.full((K, N), 0.3), "bias": None}}).init(_params()),
         errors.DTypeError, ("mask_tree", "dense/kernel", "0 and 1")),
    Case("prune-update-without-params",
         lambda: tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5)).update(
             _params(), tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5)).init(_params())),
         ConfigError, ("params", "update")),
    Case("prune-updates-tree-mismatch",
         lambda: _prune_update(tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5)), _params(),
                               updates={"dense": {"kernel": jnp.ones((K, N))}}),
         TreeMismatchError, ("updates", "structure of params")),
    Case("prune-updates-leaf-shape",
         lambda: _prune_update(tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5)), _params(),
                               updates={"dense": {"kernel": jnp.ones((N, K)),
                                                  "bias": jnp.ones((N,))}}),
         TreeMismatchError, ("updates", "dense/kernel", "shape")),
    Case("prune-init-integer-kernel",
         lambda: tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5), where=_only_kernel).init(
             {"kernel": jnp.ones((K, N), jnp.int32)}),
         DTypeError, ("kernel", "floating")),
    Case("prune-nm-k-not-divisible",
         lambda: tvwjax.prune(tvwjax.NM(), tvwjax.OneShot(0.5),
                              where=lambda p, leaf: p == "kernel").init(
             {"kernel": jnp.ones((6, N))}),
         ShapeError, ("kernel", "divisible by m=4")),
    # -- compress / decompress -------------------------------------------------------------------
    Case("compress-ew-no-format",
         lambda: tvwjax.compress(_w(), _random_mask(), tvwjax.EW()), ConfigError,
         ("pattern", "EW", "no compressed format")),
    Case("compress-pattern-string",
         lambda: tvwjax.compress(_w(), _random_mask(), "TW"), ConfigError,
         ("pattern", "Pattern")),
    Case("compress-3d-weight",
         lambda: tvwjax.compress(_w((2, K, N)), np.ones((2, K, N), bool), tvwjax.TW(tile=4)),
         ShapeError, ("w", "2-D", "as_matrix")),
    Case("compress-mask-shape",
         lambda: tvwjax.compress(_w(), np.ones((N, K), bool), tvwjax.TW(tile=4)),
         ShapeError, ("mask", "weight's shape")),
    Case("compress-integer-weight",
         lambda: tvwjax.compress(np.ones((K, N), np.int32), np.ones((K, N), bool),
                                 tvwjax.TW(tile=4)),
         DTypeError, ("w", "floating", "int32")),
    Case("compress-complex-weight",
         lambda: tvwjax.compress(_w().astype(np.complex64), np.ones((K, N), bool),
                                 tvwjax.TW(tile=4)),
         DTypeError, ("w", "floating", "complex64")),
    Case("compress-float-mask",
         lambda: tvwjax.compress(_w(), np.full((K, N), 0.5, np.float32), tvwjax.TW(tile=4)),
         DTypeError, ("mask", "boolean")),
    Case("compress-empty-weight",
         lambda: tvwjax.compress(np.ones((0, N), np.float32), np.ones((0, N), bool),
                                 tvwjax.TW(tile=4)),
         ShapeError, ("w", "empty")),
    Case("compress-nan-weight",
         lambda: tvwjax.compress(_nan_w(), np.ones((K, N), bool), tvwjax.TW(tile=4)),
         ScoreError, ("w", "NaN or Inf", "finite")),
    Case("compress-ew-mask-as-tw",
         lambda: tvwjax.compress(_w(), _random_mask(), tvwjax.TW(tile=4)),
         PatternViolationError, ("mask", "tile-wise", "row segment")),
    Case("compress-ew-mask-as-nm",
         lambda: tvwjax.compress(_w(), _random_mask(), tvwjax.NM()),
         PatternViolationError, ("mask", "2:4", "column")),
    Case("compress-ew-mask-as-tvw",
         lambda: tvwjax.compress(_w(), _random_mask(), tvwjax.TVW(tile=4)),
         PatternViolationError, ("mask", "tile-vector-wise", "2:4")),
    Case("compress-ew-mask-as-bw",
         lambda: tvwjax.compress(_w(), _random_mask(), tvwjax.BW(rows=4, cols=4)),
         PatternViolationError, ("mask", "block", "4x4")),
    Case("compress-nm-k-not-divisible",
         lambda: tvwjax.compress(_w((6, N)), np.ones((6, N), bool), tvwjax.NM()),
         ShapeError, ("w", "divisible by 4", "K=6")),
    Case("decompress-not-compressed",
         lambda: tvwjax.decompress(_w()), ConfigError, ("cw", "compressed weight")),
    # -- matmul ----------------------------------------------------------------------------------
    Case("matmul-backend",
         lambda: tvwjax.matmul(jnp.ones((2, K)), jnp.asarray(_w()), backend="tpu"),
         ConfigError, ("backend", "'cpu'")),
    Case("matmul-k-mismatch",
         lambda: tvwjax.matmul(jnp.ones((2, K + 1)), jnp.asarray(_w())), ShapeError,
         ("x", "last dimension", f"K = {K}")),
    Case("matmul-k-mismatch-compressed",
         lambda: tvwjax.matmul(jnp.ones((2, N)), tvwjax.compress(_w(), _tw_mask(),
                                                                  tvwjax.TW(tile=4))),
         ShapeError, ("x", "last dimension", f"K = {K}")),
    Case("matmul-scalar-x",
         lambda: tvwjax.matmul(jnp.float32(1.0), jnp.asarray(_w())), ShapeError,
         ("x", "last dimension")),
    Case("matmul-integer-x",
         lambda: tvwjax.matmul(jnp.ones((2, K), jnp.int32), jnp.asarray(_w())), DTypeError,
         ("x", "floating", "int32")),
    Case("matmul-complex-x",
         lambda: tvwjax.matmul(jnp.ones((2, K), jnp.complex64), jnp.asarray(_w())),
         DTypeError, ("x", "floating", "complex64")),
    Case("matmul-integer-w",
         lambda: tvwjax.matmul(jnp.ones((2, K)), jnp.ones((K, N), jnp.int32)), DTypeError,
         ("w", "floating", "int32")),
    Case("matmul-3d-w",
         lambda: tvwjax.matmul(jnp.ones((2, K)), jnp.ones((2, K, N))), ShapeError,
         ("w", "2-D")),
    Case("matmul-w-not-array",
         lambda: tvwjax.matmul(jnp.ones((2, K)), "weights"), ConfigError,
         ("w", "compressed weight")),
    Case("matmul-empty-w",
         lambda: tvwjax.matmul(jnp.ones((2, 0)), jnp.ones((0, N))), ShapeError,
         ("w", "empty", "K >= 1")),
    # -- Flax modules and conversion -------------------------------------------------------------
    Case("sparse-dense-features-mismatch", lambda: _sparse_dense_apply(N + 1, K), ShapeError,
         ("features", f"{N} output features")),
    Case("sparse-dense-inputs-mismatch", lambda: _sparse_dense_apply(N, K + 3), ShapeError,
         ("inputs", f"{K + 3} features", f"expects {K}")),
    Case("sparse-linear-inputs-mismatch", lambda: _sparse_linear_call(K - 1), ShapeError,
         ("SparseLinear", "inputs", f"expects {K}")),
    Case("compress-params-tree-mismatch",
         lambda: tvwjax.nn.compress_params(_params(), {"dense": {"kernel": None}},
                                           tvwjax.TW(tile=4)),
         TreeMismatchError, ("mask_tree", "structure of params")),
    Case("compress-params-mask-shape",
         lambda: tvwjax.nn.compress_params(_params(), {"dense": {
             "kernel": np.ones((N, K), bool), "bias": None}}, tvwjax.TW(tile=4)),
         TreeMismatchError, ("dense/kernel", "differs from the parameter")),
    Case("compress-params-mask-breaks-pattern",
         lambda: tvwjax.nn.compress_params(_params(), {"dense": {
             "kernel": _random_mask(), "bias": None}}, tvwjax.TW(tile=4)),
         PatternViolationError, ("dense/kernel", "mask", "tile-wise")),
    Case("compress-params-fractional-mask",
         lambda: tvwjax.nn.compress_params(_params(), {"dense": {
             "kernel": np.full((K, N), 0.5), "bias": None}}, tvwjax.TW(tile=4)),
         DTypeError, ("dense/kernel", "boolean", "float64")),
    Case("get-masks-no-prune-state",
         lambda: tvwjax.get_masks(optax.adam(1e-3).init(_params())), ConfigError,
         ("opt_state", "PruneState")),
    # -- validators ------------------------------------------------------------------------------
    Case("check-1d-mask", lambda: tvwjax.check(np.ones(8, bool), tvwjax.EW()), ShapeError,
         ("mask", "ndim >= 2")),
    Case("check-tw-mask-violation",
         lambda: tvwjax.check_tree({"w": {"kernel": _random_mask()}}, tvwjax.TW(tile=4)),
         PatternViolationError, ("w/kernel", "row segment")),
    # -- matmul: what x and w may be (Python, NumPy and JAX alike) -------------------------------
    Case("matmul-x-none-compressed", lambda: tvwjax.matmul(None, _cw()[0]), ConfigError,
         ("x", "must be an array", "NoneType")),
    Case("matmul-x-none-dense", lambda: tvwjax.matmul(None, _w()), ConfigError,
         ("x", "must be an array")),
    Case("matmul-x-string", lambda: tvwjax.matmul("x", _cw()[0]), ConfigError,
         ("x", "must be an array", "str")),
    Case("matmul-x-dict", lambda: tvwjax.matmul({"x": np.ones((2, K))}, _w()), ConfigError,
         ("x", "must be an array", "dict")),
    Case("matmul-x-ragged-list", lambda: tvwjax.matmul([[1.0] * K, [1.0]], _w()),
         ConfigError, ("x", "must be an array", "ragged")),
    Case("matmul-x-string-array", lambda: tvwjax.matmul(np.full((2, K), "a"), _w()),
         DTypeError, ("x", "numeric", "<U1")),
    Case("matmul-x-numpy-int-compressed",
         lambda: tvwjax.matmul(np.ones((2, K), np.int64), _cw()[0]), DTypeError,
         ("x", "floating", "int")),
    Case("matmul-x-python-int-list", lambda: tvwjax.matmul([[1] * K], _cw()[0]), DTypeError,
         ("x", "floating", "int32")),
    Case("matmul-x-bool", lambda: tvwjax.matmul(np.ones((2, K), bool), _cw()[0]), DTypeError,
         ("x", "floating", "bool")),
    Case("matmul-x-int-interpret",
         lambda: tvwjax.matmul(jnp.ones((2, K), jnp.int32), _cw()[0], backend="interpret"),
         DTypeError, ("x", "floating", "int32")),
    Case("matmul-x-numpy-k-mismatch-compressed",
         lambda: tvwjax.matmul(np.ones((3, K + 1), np.float32), _cw()[0]), ShapeError,
         ("x", "last dimension", f"K = {K}", f"(3, {K + 1})")),
    Case("matmul-x-python-scalar", lambda: tvwjax.matmul(1.0, _w()), ShapeError,
         ("x", "last dimension", "()")),
    Case("matmul-x-numpy-scalar", lambda: tvwjax.matmul(np.float32(1.0), _cw()[0]),
         ShapeError, ("x", "last dimension")),
    Case("matmul-x-zero-rows-k-mismatch",
         lambda: tvwjax.matmul(jnp.ones((0, K - 1)), _cw()[0]), ShapeError,
         ("x", "last dimension", f"K = {K}")),
    Case("matmul-backend-none", lambda: tvwjax.matmul(jnp.ones((2, K)), _cw()[0], backend=None),
         ConfigError, ("backend", "'interpret'", "None")),
    Case("matmul-backend-int", lambda: tvwjax.matmul(jnp.ones((2, K)), _w(), backend=0),
         ConfigError, ("backend", "got 0")),
    Case("matmul-w-none", lambda: tvwjax.matmul(jnp.ones((2, K)), None), ConfigError,
         ("w", "compressed weight", "NoneType")),
    Case("matmul-w-numpy-int", lambda: tvwjax.matmul(jnp.ones((2, K)), np.ones((K, N), np.int32)),
         DTypeError, ("w", "floating", "int32")),
    Case("matmul-w-numpy-bool", lambda: tvwjax.matmul(jnp.ones((2, K)), np.ones((K, N), bool)),
         DTypeError, ("w", "floating", "bool")),
    Case("matmul-w-numpy-1d", lambda: tvwjax.matmul(jnp.ones((2, K)), np.ones(K, np.float32)),
         ShapeError, ("w", "2-D", f"({K},)")),
    Case("matmul-w-ragged-list", lambda: tvwjax.matmul(jnp.ones((2, K)), [[1.0] * N, [1.0]]),
         ConfigError, ("w", "compressed weight", "list")),
    # -- SparseDense / SparseLinear: sizes at construction, inputs when called -------------------
    Case("sparse-dense-features-zero", lambda: _sparse_dense(0), ConfigError,
         ("SparseDense", "features", "positive integer", "got 0")),
    Case("sparse-dense-features-numpy-negative", lambda: _sparse_dense(np.int64(-2)),
         ConfigError, ("SparseDense", "features", "positive integer", "-2")),
    Case("sparse-dense-features-jax-zero", lambda: _sparse_dense(jnp.int32(0)), ConfigError,
         ("SparseDense", "features", "positive integer")),
    Case("sparse-dense-features-float", lambda: _sparse_dense(4.0), ConfigError,
         ("SparseDense", "features", "positive integer", "4.0")),
    Case("sparse-dense-features-bool", lambda: _sparse_dense(True), ConfigError,
         ("SparseDense", "features", "True")),
    Case("sparse-dense-features-none", lambda: _sparse_dense(None), ConfigError,
         ("SparseDense", "features", "None")),
    Case("sparse-dense-features-array", lambda: _sparse_dense(np.array([4])), ConfigError,
         ("SparseDense", "features", "positive integer")),
    Case("sparse-dense-backend", lambda: _sparse_dense(N, backend="tpu"), ConfigError,
         ("SparseDense", "backend", "'cpu'", "'tpu'")),
    Case("sparse-dense-use-bias-string", lambda: _sparse_dense(N, use_bias="no"), ConfigError,
         ("SparseDense", "use_bias", "True or False", "'no'")),
    Case("sparse-dense-inputs-none", lambda: _compressed_linen_apply(None), ConfigError,
         ("inputs", "must be an array", "NoneType")),
    Case("sparse-dense-inputs-string", lambda: _compressed_linen_apply("x"), ConfigError,
         ("inputs", "must be an array", "str")),
    Case("sparse-dense-init-scalar-inputs",
         lambda: _dense_init(_sparse_dense(N), jnp.float32(1.0)), ShapeError,
         ("inputs", "(..., K)", "shape ()")),
    Case("sparse-dense-init-zero-features-inputs",
         lambda: _dense_init(_sparse_dense(N), np.ones((2, 0), np.float32)), ShapeError,
         ("inputs", "K >= 1", "(2, 0)")),
    Case("sparse-linear-in-zero", lambda: _sparse_linear(0, 3), ConfigError,
         ("SparseLinear", "in_features", "positive integer", "got 0")),
    Case("sparse-linear-out-zero", lambda: _sparse_linear(3, 0), ConfigError,
         ("SparseLinear", "out_features", "positive integer", "got 0")),
    Case("sparse-linear-in-float", lambda: _sparse_linear(3.5, 2), ConfigError,
         ("SparseLinear", "in_features", "3.5")),
    Case("sparse-linear-out-numpy-negative", lambda: _sparse_linear(3, np.int32(-1)),
         ConfigError, ("SparseLinear", "out_features", "-1")),
    Case("sparse-linear-out-jax-zero", lambda: _sparse_linear(3, jnp.int32(0)), ConfigError,
         ("SparseLinear", "out_features", "positive integer")),
    Case("sparse-linear-backend", lambda: _sparse_linear(K, N, backend="cuda"), ConfigError,
         ("SparseLinear", "backend", "'cuda'")),
    Case("sparse-linear-use-bias-int", lambda: _sparse_linear(K, N, use_bias=1), ConfigError,
         ("SparseLinear", "use_bias", "True or False")),
    Case("sparse-linear-inputs-none", lambda: _compressed_linear()(None), ConfigError,
         ("SparseLinear", "inputs", "must be an array")),
    Case("sparse-linear-inputs-scalar", lambda: _compressed_linear()(np.float32(2.0)),
         ShapeError, ("SparseLinear", "inputs", "(..., K)")),
    Case("sparse-linear-inputs-numpy-k-mismatch",
         lambda: _compressed_linear()(np.ones((2, K + 1), np.float32)), ShapeError,
         ("SparseLinear", "inputs", f"expects {K}")),
    Case("sparse-linear-kernel-features-mismatch",
         lambda: _compressed_linear(features=N + 1)(jnp.ones((2, K))), ShapeError,
         ("SparseLinear", f"{N} output features", f"features={N + 1}")),
    # -- compress_params / compress_model / compressed_kernels -----------------------------------
    Case("compress-params-pattern-none",
         lambda: tvwjax.nn.compress_params(_params(), _kernel_masks(), None), ConfigError,
         ("compress_params", "pattern", "Pattern", "None")),
    Case("compress-params-pattern-string-all-none-masks",
         lambda: tvwjax.nn.compress_params(_params(), {"dense": {"kernel": None, "bias": None}},
                                           "TW"),
         ConfigError, ("compress_params", "pattern", "'TW'")),
    Case("compress-params-views-int",
         lambda: tvwjax.nn.compress_params(_params(), _kernel_masks(), tvwjax.TW(tile=4),
                                           views=3),
         ConfigError, ("compress_params: views", "mapping", "int")),
    Case("compress-params-keep-dense-string",
         lambda: tvwjax.nn.compress_params(_params(), _kernel_masks(), tvwjax.TW(tile=4),
                                           keep_dense_if_full="no"),
         ConfigError, ("keep_dense_if_full", "True or False")),
    Case("compress-params-decode-nm-int",
         lambda: tvwjax.nn.compress_params(_params(), _kernel_masks(), tvwjax.TW(tile=4),
                                           decode_nm=1),
         ConfigError, ("decode_nm", "True or False")),
    Case("compress-params-under-jit",
         lambda: jax.jit(lambda p, m: tvwjax.nn.compress_params(p, m, tvwjax.TW(tile=4)))(
             _params(), _kernel_masks()),
         ConfigError, ("dense/kernel", "traced", "outside jax.jit")),
    Case("compress-params-mask-tree-none",
         lambda: tvwjax.nn.compress_params(_params(), None, tvwjax.TW(tile=4)),
         TreeMismatchError, ("mask_tree", "structure of params", "dense/kernel")),
    Case("compress-params-frozendict-mask-shape",
         lambda: tvwjax.nn.compress_params(FrozenDict(_params()), FrozenDict({"dense": {
             "kernel": np.ones((K, N - 1), bool), "bias": None}}), tvwjax.TW(tile=4)),
         TreeMismatchError, ("dense/kernel", "differs from the parameter", f"({K}, {N})")),
    Case("compress-params-nnx-state-extra-mask",
         lambda: tvwjax.nn.compress_params(nnx.state(_TwoLinear(), nnx.Param), {
             "zz": np.ones((K, N), bool)}, tvwjax.TW(tile=4)),
         TreeMismatchError, ("mask_tree", "structure of params", "a/kernel", "zz")),
    Case("compress-params-integer-kernel-masked",
         lambda: tvwjax.nn.compress_params({"kernel": jnp.ones((K, N), jnp.int32)}, {
             "kernel": np.asarray(_tw_mask())}, tvwjax.TW(tile=4)),
         DTypeError, ("kernel", "floating", "int32")),
    Case("compress-params-ew-pattern",
         lambda: tvwjax.nn.compress_params(_params(), _kernel_masks(pattern=tvwjax.EW()),
                                           tvwjax.EW()),
         ConfigError, ("dense/kernel", "EW", "no compressed format")),
    Case("compress-model-not-a-module",
         lambda: tvwjax.nn.compress_model({"kernel": jnp.ones((K, N))}, {}, tvwjax.TW(tile=4)),
         ConfigError, ("compress_model", "NNX module", "dict")),
    Case("compress-model-backend",
         lambda: tvwjax.nn.compress_model(_TwoLinear(), {}, tvwjax.TW(tile=4), backend="tpu"),
         ConfigError, ("compress_model: backend", "'tpu'")),
    Case("compress-model-pattern-none",
         lambda: tvwjax.nn.compress_model(_TwoLinear(), {}, None), ConfigError,
         ("compress_model", "pattern", "None")),
    Case("compress-model-mask-tree-mismatch",
         lambda: tvwjax.nn.compress_model(_TwoLinear(), {"zz": np.ones((K, N), bool)},
                                          tvwjax.TW(tile=4)),
         TreeMismatchError, ("mask_tree", "structure of params", "b/kernel")),
    Case("compressed-kernels-backend",
         lambda: tvwjax.nn.compressed_kernels("tpu").__enter__(), ConfigError,
         ("compressed_kernels: backend", "'tpu'")),
    Case("compressed-kernels-inputs-none", lambda: _stock_dense_compressed(None), ConfigError,
         ("kernel", "inputs", "must be an array")),
    Case("compressed-kernels-inputs-scalar", lambda: _stock_dense_compressed(np.float32(1)),
         ShapeError, ("kernel", "inputs", "scalar")),
    # -- prune / fixed_masks / pruned / get_masks: trees, states, scores -------------------------
    Case("prune-scores-tree-mismatch",
         lambda: _prune_with_scores({"dense": {"kernel": jnp.ones((K, N))}}),
         TreeMismatchError, ("prune: scores", "structure of params", "dense/bias")),
    Case("prune-scores-leaf-shape",
         lambda: _prune_with_scores({"dense": {"kernel": np.ones((N, K), np.float32),
                                               "bias": np.ones(N, np.float32)}}),
         TreeMismatchError, ("prune: scores", "dense/kernel", f"({N}, {K})", f"({K}, {N})")),
    Case("prune-scores-scalar",
         lambda: _prune_with_scores(3.0), TreeMismatchError,
         ("prune: scores", "structure of params")),
    Case("prune-scores-frozendict-missing-leaf",
         lambda: _prune_with_scores(FrozenDict({"dense": {"kernel": jnp.ones((K, N))}})),
         TreeMismatchError, ("prune: scores", "dense/bias")),
    Case("prune-scores-tree-mismatch-under-jit",
         lambda: _prune_with_scores({"dense": {"kernel": jnp.ones((K, N))}}, jit=True),
         TreeMismatchError, ("prune: scores", "dense/bias")),
    Case("prune-scores-nan-eager",
         lambda: _prune_with_scores(jax.tree.map(lambda x: jnp.full(x.shape, jnp.nan),
                                                 _params())),
         ScoreError, ("dense/kernel", "NaN or Inf")),
    Case("prune-scores-negative-numpy",
         lambda: _prune_with_scores(jax.tree.map(lambda x: -np.ones(x.shape, np.float32),
                                                 _params())),
         ScoreError, ("dense/kernel", "non-negative")),
    Case("prune-nan-weights-eager",
         lambda: _prune_update(_ew_prune(), _params(dense={"kernel": jnp.asarray(_nan_w()),
                                                           "bias": jnp.zeros(N)})),
         ScoreError, ("dense/kernel", "NaN or Inf")),
    Case("prune-score-fn-wrong-tree",
         lambda: _prune_update(tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5),
                                            score_fn=lambda p: {"x": 1.0}), _params()),
         TreeMismatchError, ("prune: scores", "unexpected ['x']")),
    Case("prune-score-fn-not-callable",
         lambda: tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5), score_fn="abs"), ConfigError,
         ("score_fn", "callable")),
    Case("prune-views-not-mapping",
         lambda: tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.5), views=[("kernel", 1)]),
         ConfigError, ("prune: views", "mapping", "list")),
    Case("prune-state-other-shape",
         lambda: _prune_other_params(_ew_prune(), _params(), _wide_params()),
         TreeMismatchError, ("prune: state.masks", "dense/kernel", f"({K}, {2 * N})")),
    Case("prune-state-other-structure",
         lambda: _prune_other_params(_ew_prune(), _params(), {"other": {
             "kernel": jnp.ones((K, N))}}),
         TreeMismatchError, ("prune: state.masks", "structure of params", "other/kernel")),
    Case("prune-chain-state-other-shape",
         lambda: _prune_other_params(optax.chain(optax.sgd(0.1), _ew_prune()), _params(),
                                     _wide_params()),
         TreeMismatchError, ("prune: state.masks", "dense/kernel")),
    Case("prune-state-none",
         lambda: _ew_prune().update(_params(), None, _params()), ConfigError,
         ("prune", "state", "PruneState", "NoneType")),
    Case("prune-state-of-another-transform",
         lambda: _ew_prune().update(_params(), optax.sgd(0.1).init(_params()), _params()),
         ConfigError, ("prune", "state", "PruneState")),
    Case("prune-updates-numpy-leaf-shape",
         lambda: _prune_update(_ew_prune(), _params(), updates={"dense": {
             "kernel": np.ones((K, N - 1), np.float32), "bias": np.ones(N, np.float32)}}),
         TreeMismatchError, ("prune: updates", "dense/kernel", f"({K}, {N - 1})")),
    Case("fixed-masks-state-none",
         lambda: _fixed(_full_mask_tree()).update(_params(), None, _params()), ConfigError,
         ("fixed_masks", "state", "PruneState")),
    Case("fixed-masks-state-other-shape",
         lambda: _prune_other_params(_fixed(_full_mask_tree()), _params(), _wide_params()),
         TreeMismatchError, ("fixed_masks: state.masks", "dense/kernel")),
    Case("fixed-masks-update-without-params",
         lambda: _fixed(_full_mask_tree()).update(_params(), _fixed(_full_mask_tree()).init(
             _params())),
         ConfigError, ("fixed_masks", "params")),
    Case("fixed-masks-nested-list-mask",
         lambda: _fixed({"dense": {"kernel": [[True] * N] * K, "bias": None}}).init(_params()),
         TreeMismatchError, ("mask_tree", "nested list", "dense/kernel")),
    Case("fixed-masks-scalar-mask",
         lambda: _fixed({"dense": {"kernel": True, "bias": None}}).init(_params()),
         TreeMismatchError, ("mask_tree", "dense/kernel", "mask shape ()")),
    Case("fixed-masks-all-none",
         lambda: _fixed({"dense": {"kernel": None, "bias": None}}).init(_params()),
         ConfigError, ("mask_tree", "no mask matches")),
    Case("fixed-masks-numpy-int-mask-with-2",
         lambda: _fixed({"dense": {"kernel": np.full((K, N), 2, np.int64), "bias": None}}).init(
             _params()),
         DTypeError, ("mask_tree", "dense/kernel", "0 and 1")),
    Case("fixed-masks-frozendict-shape",
         lambda: _fixed(FrozenDict({"dense": {"kernel": np.ones((N, K), bool),
                                              "bias": None}})).init(FrozenDict(_params())),
         TreeMismatchError, ("mask_tree", "dense/kernel", "mask shape")),
    Case("pruned-inner-none",
         lambda: tvwjax.pruned(None, tvwjax.EW(), tvwjax.OneShot(0.5)), ConfigError,
         ("pruned: inner", "GradientTransformation", "NoneType")),
    Case("pruned-inner-learning-rate",
         lambda: tvwjax.pruned(1e-3, tvwjax.EW(), tvwjax.OneShot(0.5)), ConfigError,
         ("pruned: inner", "GradientTransformation", "float")),
    Case("pruned-schedule-float",
         lambda: tvwjax.pruned(optax.sgd(0.1), tvwjax.EW(), 0.5), ConfigError,
         ("schedule", "Schedule")),
    Case("get-masks-none", lambda: tvwjax.get_masks(None), ConfigError,
         ("opt_state", "PruneState")),
    Case("get-masks-params-tree", lambda: tvwjax.get_masks(_params()), ConfigError,
         ("opt_state", "PruneState")),
    # -- schedules: Python, NumPy and JAX scalars are checked alike ------------------------------
    Case("oneshot-sparsity-numpy-one", lambda: tvwjax.OneShot(np.float32(1.0)), ConfigError,
         ("OneShot: sparsity", "[0, 1)", "1.0")),
    Case("oneshot-sparsity-jax-negative", lambda: tvwjax.OneShot(jnp.float32(-0.25)),
         ConfigError, ("OneShot: sparsity", "[0, 1)", "-0.25")),
    Case("oneshot-sparsity-string", lambda: tvwjax.OneShot("0.5"), ConfigError,
         ("OneShot: sparsity", "number", "str")),
    Case("oneshot-sparsity-none", lambda: tvwjax.OneShot(None), ConfigError,
         ("OneShot: sparsity", "None")),
    Case("oneshot-sparsity-bool", lambda: tvwjax.OneShot(True), ConfigError,
         ("OneShot: sparsity", "True")),
    Case("oneshot-sparsity-array", lambda: tvwjax.OneShot(np.full(2, 0.5)), ConfigError,
         ("OneShot: sparsity", "scalar", "(2,)")),
    Case("oneshot-step-negative", lambda: tvwjax.OneShot(0.5, step=-1), ConfigError,
         ("OneShot: step", "integer >= 0", "-1")),
    Case("oneshot-step-float", lambda: tvwjax.OneShot(0.5, step=2.5), ConfigError,
         ("OneShot: step", "integer", "2.5")),
    Case("polynomial-final-jax-nan", lambda: tvwjax.Polynomial(jnp.float32(jnp.nan), 0, 10),
         ConfigError, ("Polynomial: final_sparsity", "[0, 1)", "nan")),
    Case("polynomial-initial-above-final",
         lambda: tvwjax.Polynomial(0.5, 0, 10, initial_sparsity=np.float64(0.75)),
         ConfigError, ("initial_sparsity", "<= final_sparsity", "0.75")),
    Case("polynomial-initial-numpy-one",
         lambda: tvwjax.Polynomial(0.5, 0, 10, initial_sparsity=np.float64(1.0)),
         ConfigError, ("Polynomial: initial_sparsity", "[0, 1)")),
    Case("polynomial-frequency-zero", lambda: tvwjax.Polynomial(0.5, 0, 10, frequency=0),
         ConfigError, ("Polynomial: frequency", "positive integer", "0")),
    Case("polynomial-frequency-numpy-negative",
         lambda: tvwjax.Polynomial(0.5, 0, 10, frequency=np.int64(-3)), ConfigError,
         ("Polynomial: frequency", "positive integer", "-3")),
    Case("polynomial-begin-negative", lambda: tvwjax.Polynomial(0.5, -1, 10), ConfigError,
         ("Polynomial: begin_step", "integer >= 0")),
    Case("polynomial-end-equals-begin", lambda: tvwjax.Polynomial(0.5, 5, 5), ConfigError,
         ("end_step", "greater than begin_step", "begin_step=5")),
    Case("polynomial-power-zero", lambda: tvwjax.Polynomial(0.5, 0, 10, power=0.0),
         ConfigError, ("Polynomial: power", "positive number", "0.0")),
    Case("polynomial-power-nan", lambda: tvwjax.Polynomial(0.5, 0, 10, power=float("nan")),
         ConfigError, ("Polynomial: power", "positive number", "nan")),
    Case("polynomial-power-string", lambda: tvwjax.Polynomial(0.5, 0, 10, power="3"),
         ConfigError, ("Polynomial: power", "number", "'3'")),
    Case("staged-empty-levels", lambda: tvwjax.Staged((), 3), ConfigError,
         ("Staged: levels", "non-empty")),
    Case("staged-levels-scalar", lambda: tvwjax.Staged(0.5, 3), ConfigError,
         ("Staged: levels", "tuple", "0.5")),
    Case("staged-level-jax-above-one",
         lambda: tvwjax.Staged((0.25, jnp.float32(1.5)), 3), ConfigError,
         ("Staged: levels[1]", "[0, 1)", "1.5")),
    Case("staged-finetune-length", lambda: tvwjax.Staged((0.25, 0.5), (2,)), ConfigError,
         ("Staged: finetune_steps", "one entry per level (2)", "got 1")),
    Case("staged-finetune-zero", lambda: tvwjax.Staged((0.25, 0.5), 0), ConfigError,
         ("Staged: finetune_steps", "positive integer", "0")),
    Case("staged-finetune-entry-float", lambda: tvwjax.Staged((0.25, 0.5), (2, 2.5)),
         ConfigError, ("Staged: finetune_steps[1]", "positive integer", "2.5")),
    Case("staged-begin-negative", lambda: tvwjax.Staged((0.5,), 3, begin_step=np.int64(-1)),
         ConfigError, ("Staged: begin_step", "integer >= 0", "-1")),
    # -- masks and patterns: a value is checked alike whatever its Python type -----------------
    Case("masks-sparsity-jax-above-1", lambda: tvwjax.masks(_params(), tvwjax.EW(),
                                                            jnp.float32(1.5)),
         ConfigError, ("sparsity", "[0, 1)", "1.5")),
    Case("masks-sparsity-numpy-nan", lambda: tvwjax.masks(_params(), tvwjax.EW(),
                                                          np.float64(np.nan)),
         ConfigError, ("sparsity", "[0, 1)", "nan")),
    Case("masks-sparsity-jax-negative", lambda: tvwjax.masks(_params(), tvwjax.EW(),
                                                             jnp.float32(-0.5)),
         ConfigError, ("sparsity", "[0, 1)", "-0.5")),
    Case("masks-sparsity-array", lambda: tvwjax.masks(_params(), tvwjax.EW(),
                                                      np.array([0.3, 0.4])),
         ConfigError, ("sparsity", "scalar", "(2,)")),
    Case("masks-sparsity-none", lambda: tvwjax.masks(_params(), tvwjax.EW(), None),
         ConfigError, ("sparsity", "None")),
    Case("masks-sparsity-bool", lambda: tvwjax.masks(_params(), tvwjax.EW(), True),
         ConfigError, ("sparsity", "True")),
    Case("pattern-mask-nm-jax-0.3", lambda: tvwjax.NM().mask(jnp.ones((8, 4)), jnp.float32(0.3)),
         ConfigError, ("scores", "fixed at 0.5")),
    Case("pattern-mask-nm-numpy-0.75",
         lambda: tvwjax.NM().mask(jnp.ones((8, 4)), np.float32(0.75), name="fc/kernel"),
         ConfigError, ("fc/kernel", "fixed at 0.5", "0.75")),
    Case("pattern-mask-tvw-numpy-below-floor",
         lambda: tvwjax.TVW(tile=4).mask(jnp.ones((8, 8)), np.float64(0.25)),
         ConfigError, ("scores", "at least 0.5")),
    Case("masks-global-tvw-below-floor",
         lambda: tvwjax.masks(_params(other={"kernel": jnp.ones((16, 8))}),
                              tvwjax.TVW(tile=4), 0.3, scope="global"),
         ConfigError, ("sparsity", "at least 0.5", "0.3")),
    Case("masks-global-bounds-above-target",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, scope="global",
                              layer_bounds=(0.5, 0.9)),
         ConfigError, ("layer_bounds", "exclude the target", "0.3")),
    Case("masks-global-bounds-below-target",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), np.float32(0.8), scope="global",
                              layer_bounds=(0.1, 0.6)),
         ConfigError, ("layer_bounds", "exclude the target")),
    Case("selection-global-bounds-exclude",
         lambda: tvwjax.selection(_params(), tvwjax.EW(), 0.3, scope="global",
                                  layer_bounds=(0.5, 0.9)),
         ConfigError, ("layer_bounds", "exclude the target")),
    Case("prune-global-bounds-exclude",
         lambda: tvwjax.prune(tvwjax.EW(), tvwjax.OneShot(0.3), scope="global",
                              layer_bounds=(0.5, 0.9)),
         ConfigError, ("prune: layer_bounds", "exclude the target")),
    Case("prune-global-tvw-below-floor",
         lambda: tvwjax.prune(tvwjax.TVW(tile=4), tvwjax.OneShot(0.3), scope="global"),
         ConfigError, ("sparsity", "at least 0.5")),
    Case("masks-layer-bounds-strings",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, scope="global",
                              layer_bounds=("a", "b")),
         ConfigError, ("layer_bounds[0]", "number", "'a'")),
    Case("masks-layer-bounds-one-number",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, scope="global",
                              layer_bounds=(0.1,)),
         ConfigError, ("layer_bounds", "pair", "(0.1,)")),
    Case("masks-layer-bounds-jax-reversed",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, scope="global",
                              layer_bounds=(jnp.float32(0.9), 0.1)),
         ConfigError, ("layer_bounds", "min <= max")),
    Case("masks-overrides-list",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, overrides=[("dense/*", 0.5)]),
         ConfigError, ("overrides", "mapping", "list")),
    Case("masks-overrides-int-key",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, overrides={1: 0.5}),
         ConfigError, ("overrides", "glob strings", "1")),
    Case("masks-override-jax-above-1",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, overrides={"dense/*": jnp.float32(1.5)}),
         ConfigError, ("dense/kernel", "override", "[0, 1)")),
    Case("masks-override-glob-typo",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, overrides={"dnese/*": 0.5}),
         ConfigError, ("overrides", "dnese/*", "match no leaf")),
    Case("masks-where-string",
         lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, where="kernel"),
         ConfigError, ("where", "predicate", "'kernel'")),
    Case("masks-views-int", lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, views=3),
         ConfigError, ("views", "mapping", "3")),
    Case("masks-scope-none", lambda: tvwjax.masks(_params(), tvwjax.EW(), 0.3, scope=None),
         ConfigError, ("scope", "'layer' or 'global'", "None")),
    Case("check-sparsity-2", lambda: tvwjax.check(np.ones((K, N), bool), tvwjax.EW(), 2.0),
         ConfigError, ("sparsity", "[0, 1)", "2.0")),
    Case("check-sparsity-jax-negative",
         lambda: tvwjax.check(np.ones((K, N), bool), tvwjax.EW(), jnp.float32(-0.1)),
         ConfigError, ("sparsity", "[0, 1)")),
    Case("check-float-mask",
         lambda: tvwjax.check(np.full((K, N), 0.3), tvwjax.EW(), 0.5),
         DTypeError, ("mask", "0.3")),
    Case("check-ew-wrong-count",
         lambda: tvwjax.check(np.ones((K, N), bool), tvwjax.EW(), 0.5, name="fc/kernel"),
         PatternViolationError, ("fc/kernel", "keeps 64 entries")),
    Case("check-tw-tile-below-min-rows",
         lambda: tvwjax.check(_emptied_tile(), tvwjax.TW(tile=4), 0.875),
         PatternViolationError, ("tile 1", "min_rows")),
    Case("tw-tile-jax-float", lambda: tvwjax.TW(tile=jnp.float32(4.0)), ConfigError,
         ("TW: tile", "positive integer")),
    Case("tw-tile-array", lambda: tvwjax.TW(tile=np.array([4])), ConfigError,
         ("TW: tile", "positive integer")),
    Case("tw-tile-bool", lambda: tvwjax.TW(tile=True), ConfigError, ("TW: tile", "True")),
    Case("tw-column-share-numpy", lambda: tvwjax.TW(column_share=np.float32(1.5)), ConfigError,
         ("column_share", "[0, 1]", "1.5")),
    Case("tw-column-share-string", lambda: tvwjax.TW(column_share="0.5"), ConfigError,
         ("TW: column_share", "number")),
    Case("tw-min-rows-negative", lambda: tvwjax.TW(min_rows=np.int64(-1)), ConfigError,
         ("TW: min_rows", "integer >= 0", "-1")),
    Case("tew-delta-jax-one", lambda: tvwjax.TEW(delta=jnp.float32(1.0)), ConfigError,
         ("TEW: delta", "(0, 1)")),
    Case("vw-length-zero", lambda: tvwjax.VW(length=0), ConfigError,
         ("VW: length", "positive integer", "0")),
    Case("nm-numpy-n-equals-m", lambda: tvwjax.NM(n=np.int64(4), m=4), ConfigError,
         ("n must be smaller", "n=4", "m=4")),
    Case("tvw-m-above-4", lambda: tvwjax.TVW(n=2, m=8, row_block=8), ConfigError,
         ("TVW: m must be at most 4",)),
    Case("bw-cols-float", lambda: tvwjax.BW(cols=8.0), ConfigError,
         ("BW: cols", "positive integer", "8.0")),
    Case("schedule-step-string", lambda: tvwjax.OneShot(0.5)("3"), ConfigError,
         ("schedule step", "integer", "'3'")),
    Case("schedule-step-float", lambda: tvwjax.Polynomial(0.5, 0, 10)(2.5), ConfigError,
         ("schedule step", "integer", "2.5")),
    Case("schedule-step-negative", lambda: tvwjax.OneShot(0.5)(-1), ConfigError,
         ("schedule step", "integer >= 0", "-1")),
    Case("schedule-step-traced-float",
         lambda: jax.jit(tvwjax.OneShot(0.5))(jnp.float32(2.0)), ConfigError,
         ("schedule step", "integer scalar", "float32")),
    Case("polynomial-power-numpy-negative",
         lambda: tvwjax.Polynomial(0.5, 0, 10, power=np.float32(-1)), ConfigError,
         ("Polynomial: power", "positive number")),
]

def test_enough_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 240


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_documented_error(case: Case):
    with pytest.raises(errors.TvwError) as info:
        case.call()
    err = info.value
    # Exactly the documented class (not a sibling), and never an XLA runtime error.
    assert isinstance(err, case.error), f"{case.id}: got {type(err).__name__}: {err}"
    assert type(err).__module__ == "tvwjax.errors"
    msg = str(err)
    for needle in case.needles:
        assert needle in msg, f"{case.id}: {needle!r} not in message {msg!r}"


def test_every_error_type_is_exercised():
    used = {c.error for c in CASES}
    documented = {ConfigError, DTypeError, PatternViolationError, ScoreError, ShapeError,
                  TreeMismatchError}
    assert documented <= used


def test_errors_keep_builtin_bases():
    # ``except ValueError`` handlers keep working; dtype errors are also TypeErrors.
    assert issubclass(errors.TvwError, ValueError)
    assert issubclass(DTypeError, TypeError)


# -- valid edge inputs: exact results, checked against NumPy ----------------------------------


@dataclass(frozen=True)
class Edge:
    """A valid edge input: ``run() -> (result, expected)``, ``expected`` computed with NumPy
    (a pytree of the same structure, types and dtypes); values equal within ``rtol`` /
    ``atol`` (exactly when both are 0)."""

    id: str
    run: Callable[[], tuple[object, object]]
    rtol: float = 0.0
    atol: float = 0.0


BF16_RTOL, F16_RTOL = 2.0**-7, 2.0**-10   # twice the unit roundoff of the output dtype


def _x(shape, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ref(x, w_masked, dtype):
    """``x @ w`` in float64 NumPy, rounded once to ``dtype`` (the library's float32
    accumulation is far more precise than a bfloat16 / float16 output)."""
    y = np.asarray(x, np.float64) @ np.asarray(w_masked, np.float64)
    return y.astype(dtype)


def _mm_edge(x_shape, pattern=None, backend="cpu", dtype=np.float32, numpy_x=True,
             w_shape=(K, N), sparsity=0.5):
    w = _w(w_shape, dtype)
    cw, wm = _cw(pattern, w, sparsity)
    x = _x((*x_shape, w_shape[0]), dtype)
    y = tvwjax.matmul(x if numpy_x else jnp.asarray(x), cw, backend=backend)
    return y, _ref(x, wm, dtype)


def _mm_dense_edge(x_shape, x_kind="numpy"):
    w, x = _w(), _x((*x_shape, K))
    arg = {"numpy": x, "list": x.tolist(), "float64": x.astype(np.float64)}[x_kind]
    return tvwjax.matmul(arg, w, backend="cpu"), _ref(x, w, np.float32)


def _mm_vmap_edge():
    cw, wm = _cw(tvwjax.TVW(tile=4))
    x = _x((3, 5, K))
    return jax.vmap(lambda xb: tvwjax.matmul(xb, cw, backend="cpu"))(jnp.asarray(x)), \
        _ref(x, wm, np.float32)


def _mm_all_pruned_edge():
    cw = tvwjax.compress(_w(), np.zeros((K, N), bool), tvwjax.TW(tile=4))
    return tvwjax.matmul(_x((3, K)), cw, backend="cpu"), np.zeros((3, N), np.float32)


def _linen_edge(x_rows, numpy_x=True, backend="cpu"):
    cw, wm = _cw()
    x = _x((x_rows, K))
    y = tvwjax.nn.SparseDense(N, backend=backend).apply(
        {"params": {"kernel": cw, "bias": jnp.ones((N,))}}, x if numpy_x else jnp.asarray(x))
    return y, _ref(x, wm, np.float32) + np.float32(1)


def _nnx_edge(x_rows, numpy_x=True, backend="cpu"):
    layer = _compressed_linear(backend=backend)
    wm = _cw()[1]
    x = _x((x_rows, K))
    y = layer(x if numpy_x else jnp.asarray(x))
    return y, _ref(x, wm, np.float32) + np.asarray(layer.bias.get_value())


def _features_kind_edge():
    """``features`` given as NumPy / JAX integers builds the layer ``features=4`` builds."""
    x = jnp.asarray(_x((2, K)))
    shapes = [jax.tree.map(np.shape, _dense_init(_sparse_dense(f), x))
              for f in (4, np.int64(4), jnp.int32(4))]
    return shapes, [{"params": {"kernel": (K, 4), "bias": (4,)}}] * 3


def _compress_model_edge():
    model = _TwoLinear()
    masks = _nnx_masks(model)
    state = nnx.state(model, nnx.Param)
    wa = np.where(masks["a"]["kernel"], state["a"]["kernel"].get_value(), 0)
    wb = np.where(masks["b"]["kernel"], state["b"]["kernel"].get_value(), 0)
    ba, bb = (np.asarray(state[k]["bias"].get_value()) for k in ("a", "b"))
    tvwjax.nn.compress_model(model, masks, tvwjax.TW(tile=4), backend="cpu")
    x0, x = np.ones((0, K), np.float32), _x((3, K))
    ref = _ref(_ref(x, wa, np.float32) + ba, wb, np.float32) + bb
    return [model(x0), model(x)], [np.zeros((0, 4), np.float32), ref]


def _compress_params_tree_edge(kind):
    """compress_params leaves None / integer / unmasked leaves as they are (FrozenDict stays
    a FrozenDict, NNX state works); the compressed kernel decompresses to ``w * mask``."""
    w = _w()
    mask = np.asarray(_tw_mask())
    step, idx = jnp.int32(7), np.arange(3)
    params = {"dense": {"kernel": jnp.asarray(w), "bias": None}, "step": step, "idx": idx}
    masks = {"dense": {"kernel": mask, "bias": None}, "step": None, "idx": None}
    if kind == "frozendict":
        params, masks = FrozenDict(params), FrozenDict(masks)
    out = tvwjax.nn.compress_params(params, masks, tvwjax.TW(tile=4))
    got = {"kernel": tvwjax.decompress(out["dense"]["kernel"]), "bias": out["dense"]["bias"],
           "step": out["step"], "idx": out["idx"], "type": type(out).__name__}
    want = {"kernel": np.where(mask, w, 0), "bias": None, "step": np.int32(7),
            "idx": np.arange(3), "type": type(params).__name__}
    return got, want


def _compress_params_nnx_state_edge():
    model = _TwoLinear()
    state = nnx.state(model, nnx.Param)
    masks = _nnx_masks(model)
    out = tvwjax.nn.compress_params(state, masks, tvwjax.TW(tile=4))
    got = [tvwjax.decompress(out["a"]["kernel"].get_value()), out["a"]["bias"].get_value()]
    want = [np.where(masks["a"]["kernel"], state["a"]["kernel"].get_value(), 0),
            np.asarray(state["a"]["bias"].get_value())]
    return got, want


def _compress_params_low_precision_edge(dtype):
    w = _w(dtype=dtype)
    mask = np.asarray(_tw_mask())
    out = tvwjax.nn.compress_params({"kernel": jnp.asarray(w)}, {"kernel": mask},
                                    tvwjax.TW(tile=4))
    return tvwjax.decompress(out["kernel"]), np.where(mask, w, np.zeros((), dtype))


def _distinct_kernel(dtype):
    """Weights ``(33..160) / 64`` in a fixed shuffle: exact in bfloat16 and float16, and
    ``w - 0.5`` (one SGD step of 0.5 on gradient 1) has distinct magnitudes, so the EW 50%
    mask is unambiguous."""
    k = np.random.default_rng(5).permutation(np.arange(33, 33 + K * N)).reshape(K, N)
    return (k / 64).astype(dtype)


def _prune_low_precision_edge(dtype, fixed=False, frozen=False):
    kernel = _distinct_kernel(dtype)
    params = {"dense": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros((N,), dtype)}}
    cand = (kernel.astype(np.float64) - 0.5)
    if fixed:
        keep = np.eye(K, N, dtype=bool)
        last = _fixed({"dense": {"kernel": keep, "bias": None}})
    else:
        keep = cand >= np.median(cand)
        last = _ew_prune()
    if frozen:
        params = FrozenDict(params)
    tx = optax.chain(optax.sgd(0.5), last)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    want = {"dense": {"kernel": np.where(keep, cand, 0).astype(dtype),
                      "bias": np.full((N,), -0.5, dtype)}}
    got_masks = tvwjax.get_masks(state)["dense"]["kernel"]
    return ([new, got_masks, type(new).__name__],
            [FrozenDict(want) if frozen else want, keep, type(params).__name__])


def _prune_none_int_leaves_edge(jit):
    """prune leaves ``None`` and integer leaves (and their updates) untouched."""
    kernel = _distinct_kernel(np.float32)
    params = {"dense": {"kernel": jnp.asarray(kernel), "bias": None},
              "step": jnp.int32(3), "idx": jnp.arange(4)}
    updates = {"dense": {"kernel": jnp.full((K, N), -0.5), "bias": None},
               "step": jnp.int32(1), "idx": jnp.ones(4, jnp.int32)}
    tx = _ew_prune()
    update = jax.jit(tx.update) if jit else tx.update
    out, _ = update(updates, tx.init(params), params)
    cand = kernel - 0.5
    keep = cand >= np.median(cand)
    want = {"dense": {"kernel": np.where(keep, np.float32(-0.5), -kernel), "bias": None},
            "step": np.int32(1), "idx": np.ones(4, np.int32)}
    return out, want


def _prune_numpy_scores_edge():
    params = _params()
    scores = jax.tree.map(lambda x: np.asarray(_x(x.shape, seed=9)) ** 2, params)
    tx = _ew_prune()
    out, state = tx.update(params, tx.init(params), params, scores=scores)
    s = scores["dense"]["kernel"]
    keep = s >= np.median(s)
    return tvwjax.get_masks(state)["dense"]["kernel"], keep


def _prune_nnx_state_edge():
    model = _TwoLinear()
    opt = nnx.Optimizer(model, optax.chain(optax.sgd(0.0), _fixed(_nnx_masks(model))),
                        wrt=nnx.Param)
    masks = _nnx_masks(model)
    before = np.asarray(model.a.kernel.get_value())
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    return model.a.kernel.get_value(), np.where(masks["a"]["kernel"], before, 0)


def _schedule_scalar_kinds_edge():
    """Python, NumPy and JAX scalars give the same schedule."""
    steps = jnp.arange(15)
    got = [tvwjax.Polynomial(f, b, 12, frequency=5)(steps)
           for f, b in ((0.75, 2), (np.float32(0.75), np.int64(2)), (jnp.float32(0.75), 2))]
    got += [tvwjax.OneShot(s, step=3)(steps) for s in (0.5, np.float64(0.5), jnp.float32(0.5))]
    t = np.arange(15)
    prog = np.clip((t - 2) / 10, 0, 1)
    poly = np.where(t < 2, 0, 0.75 * (1 - (1 - prog) ** 3)).astype(np.float32)
    poly_upd = (t >= 2) & (t <= 12) & (((t - 2) % 5 == 0) | (t == 12))
    one = (np.where(t >= 3, 0.5, 0).astype(np.float32), t == 3)
    return got, [(poly, poly_upd)] * 3 + [one] * 3


def _staged_list_edge():
    sched = tvwjax.Staged([0.25, np.float32(0.5), jnp.float32(0.75)], [2, np.int64(3), 4],
                          begin_step=1)
    t = np.arange(12)
    starts = np.array([1, 3, 6])
    idx = (t[:, None] >= starts).sum(1) - 1
    levels = np.where(idx >= 0, np.array([0.25, 0.5, 0.75])[np.maximum(idx, 0)], 0)
    return jax.vmap(sched)(jnp.arange(12)), (levels.astype(np.float32), np.isin(t, starts))


def _np_ew(w, s):
    """NumPy EW mask: keep the README's count of the largest |w| (-0.0 == +0.0), ties to
    the lower flat index."""
    a = np.abs(np.asarray(w, np.float32)).reshape(-1)
    d = np.float32(1) - np.float32(s)
    k = min(a.size, max(1, int(np.floor(float(d * np.float32(a.size)) + 0.5))))
    order = np.lexsort((np.arange(a.size), -a))  # by -|w|, then index
    keep = np.zeros(a.size, bool)
    keep[order[:k]] = True
    return keep.reshape(np.shape(w))


def _mask_tree_edge(kind):
    w = _w((12, 6))
    if kind == "signed-zero":
        w[:, :3] = 0.0
        w[::2, :3] = -0.0
        got = tvwjax.EW().mask(jnp.abs(jnp.asarray(w)), 0.6)
        return got, _np_ew(w, 0.6)
    if kind == "none-int":
        params = {"fc": {"kernel": jnp.asarray(w), "bias": None},
                  "step": jnp.asarray(3), "table": jnp.arange(12).reshape(3, 4)}
        got = tvwjax.masks(params, tvwjax.EW(), 0.6)
        return (got["fc"]["kernel"], got["fc"]["bias"], got["step"], got["table"]), \
            (_np_ew(w, 0.6), None, None, None)
    if kind == "frozen":
        got = tvwjax.masks(FrozenDict({"fc": {"kernel": jnp.asarray(w)}}), tvwjax.EW(), 0.6)
        return (type(got).__name__, got["fc"]["kernel"]), ("FrozenDict", _np_ew(w, 0.6))
    if kind == "nnx":
        layer = nnx.Linear(12, 6, rngs=nnx.Rngs(0))
        layer.kernel.set_value(jnp.asarray(w))
        got = tvwjax.masks(nnx.state(layer, nnx.Param), tvwjax.EW(), 0.6)
        return list(jax.tree.leaves(got)), [_np_ew(w, 0.6)]
    if kind in ("bf16", "f16", "numpy"):
        dtype = {"bf16": jnp.bfloat16, "f16": np.float16, "numpy": np.float32}[kind]
        wl = w if kind == "numpy" else np.asarray(jnp.asarray(w, dtype))
        leaf = wl if kind == "numpy" else jnp.asarray(wl)
        got = tvwjax.masks({"fc": {"kernel": leaf}}, tvwjax.EW(), 0.6)["fc"]["kernel"]
        return got, _np_ew(np.asarray(wl, np.float32), 0.6)
    if kind == "sparsity-kinds":
        p = {"fc": {"kernel": jnp.asarray(w)}}
        got = [tvwjax.masks(p, tvwjax.EW(), v)["fc"]["kernel"]
               for v in (0.3, np.float64(0.3), jnp.float32(0.3), np.array(0.3))]
        got.append(jax.jit(lambda q, t: tvwjax.masks(q, tvwjax.EW(), t))(p, 0.3)["fc"]["kernel"])
        return got, [_np_ew(w, 0.3)] * 5
    raise AssertionError(kind)


def _small_leaf_keeps_a_unit_edge():
    """BW(64, 64) at 75% on 128 x 10: the budget (320) is smaller than one block (640); the
    block with the larger RMS is kept (before: nothing was)."""
    w = _w((128, 10))
    got = tvwjax.masks({"k": {"kernel": jnp.asarray(w)}}, tvwjax.BW(64, 64), 0.75)
    rms = [np.sqrt(np.mean(w[i:i + 64] ** 2)) for i in (0, 64)]
    want = np.zeros((128, 10), bool)
    best = int(np.argmax(rms))
    want[64 * best:64 * best + 64] = True
    return got["k"]["kernel"], want


EDGE_CASES = [
    # matmul: no rows, on every backend and format, and through the layers
    Edge("matmul-zero-rows-tw-cpu", lambda: _mm_edge((0,))),
    Edge("matmul-zero-rows-batch-tvw-cpu", lambda: _mm_edge((2, 0), tvwjax.TVW(tile=4))),
    Edge("matmul-zero-rows-bw-cpu", lambda: _mm_edge((0,), tvwjax.BW(rows=4, cols=4))),
    Edge("matmul-zero-rows-nm-cpu", lambda: _mm_edge((0,), tvwjax.NM())),
    Edge("matmul-zero-rows-tw-interpret", lambda: _mm_edge((0,), backend="interpret")),
    Edge("matmul-zero-rows-tvw-interpret",
         lambda: _mm_edge((3, 0), tvwjax.TVW(tile=4), backend="interpret")),
    Edge("matmul-zero-rows-bf16", lambda: _mm_edge((0,), dtype=jnp.bfloat16)),
    Edge("matmul-zero-rows-dense", lambda: _mm_dense_edge((0,))),
    Edge("sparse-dense-zero-rows", lambda: _linen_edge(0)),
    Edge("sparse-dense-zero-rows-interpret", lambda: _linen_edge(0, backend="interpret")),
    Edge("sparse-linear-zero-rows", lambda: _nnx_edge(0, numpy_x=False)),
    # matmul: NumPy and list inputs behave as JAX inputs
    Edge("matmul-numpy-x-tw-cpu", lambda: _mm_edge((5,)), atol=1e-5),
    Edge("matmul-numpy-x-tvw-cpu", lambda: _mm_edge((5,), tvwjax.TVW(tile=4)), atol=1e-5),
    Edge("matmul-numpy-x-tw-interpret", lambda: _mm_edge((5,), backend="interpret"),
         atol=1e-5),
    Edge("matmul-numpy-x-and-w-dense", lambda: _mm_dense_edge((4,)), atol=1e-5),
    Edge("matmul-list-x-dense", lambda: _mm_dense_edge((2,), "list"), atol=1e-5),
    Edge("matmul-float64-numpy-x", lambda: _mm_dense_edge((3,), "float64"), atol=1e-5),
    Edge("sparse-dense-numpy-inputs", lambda: _linen_edge(3), atol=1e-5),
    Edge("sparse-linear-numpy-inputs", lambda: _nnx_edge(3), atol=1e-5),
    # matmul: low precision, M = 1, 1-D x, shapes off the tile grid, vmap, nothing kept
    Edge("matmul-bf16-tw-cpu", lambda: _mm_edge((7,), dtype=jnp.bfloat16, numpy_x=False),
         rtol=BF16_RTOL, atol=1e-2),
    Edge("matmul-bf16-tvw-interpret",
         lambda: _mm_edge((7,), tvwjax.TVW(tile=4), "interpret", jnp.bfloat16),
         rtol=BF16_RTOL, atol=1e-2),
    Edge("matmul-f16-tw-cpu", lambda: _mm_edge((7,), dtype=np.float16), rtol=F16_RTOL,
         atol=1e-3),
    Edge("matmul-f16-nm-cpu", lambda: _mm_edge((7,), tvwjax.NM(), dtype=np.float16),
         rtol=F16_RTOL, atol=1e-3),
    Edge("matmul-one-row", lambda: _mm_edge((1,), numpy_x=False), atol=1e-5),
    Edge("matmul-1d-x", lambda: _mm_edge((), tvwjax.TVW(tile=4)), atol=1e-5),
    Edge("matmul-k-n-off-tile-grid", lambda: _mm_edge((3,), w_shape=(18, 10)), atol=1e-5),
    Edge("matmul-k-n-off-tile-grid-bucketed", lambda: _mm_edge((70,), w_shape=(21, 9)),
         atol=1e-5),
    Edge("matmul-vmap-batch-axis", _mm_vmap_edge, atol=1e-5),
    Edge("matmul-all-pruned", _mm_all_pruned_edge),
    # layers and conversion
    Edge("sparse-dense-features-numpy-and-jax-int", _features_kind_edge),
    Edge("compress-model-zero-rows-and-numpy", _compress_model_edge, atol=1e-5),
    Edge("compress-params-none-and-int-leaves", lambda: _compress_params_tree_edge("dict")),
    Edge("compress-params-frozendict", lambda: _compress_params_tree_edge("frozendict")),
    Edge("compress-params-nnx-state", _compress_params_nnx_state_edge),
    Edge("compress-params-bf16", lambda: _compress_params_low_precision_edge(jnp.bfloat16)),
    Edge("compress-params-f16", lambda: _compress_params_low_precision_edge(np.float16)),
    # prune / fixed_masks: low precision, None / int leaves, FrozenDict, NumPy scores, NNX
    Edge("prune-bf16-exact-zeros", lambda: _prune_low_precision_edge(jnp.bfloat16)),
    Edge("prune-f16-exact-zeros", lambda: _prune_low_precision_edge(np.float16)),
    Edge("fixed-masks-bf16-exact-zeros",
         lambda: _prune_low_precision_edge(jnp.bfloat16, fixed=True)),
    Edge("fixed-masks-f16-exact-zeros",
         lambda: _prune_low_precision_edge(np.float16, fixed=True)),
    Edge("prune-frozendict-params",
         lambda: _prune_low_precision_edge(np.float32, frozen=True)),
    Edge("prune-none-and-int-leaves-eager", lambda: _prune_none_int_leaves_edge(False)),
    Edge("prune-none-and-int-leaves-jit", lambda: _prune_none_int_leaves_edge(True)),
    Edge("prune-numpy-scores", _prune_numpy_scores_edge),
    Edge("fixed-masks-nnx-optimizer", _prune_nnx_state_edge),
    # schedules
    Edge("schedules-python-numpy-jax-scalars", _schedule_scalar_kinds_edge, atol=1e-6),
    Edge("staged-list-and-mixed-scalars", _staged_list_edge),
    # masks: the tie rule, trees with None / int leaves, FrozenDict, NNX state, low precision
    Edge("masks-ew-signed-zero-ties", lambda: _mask_tree_edge("signed-zero")),
    Edge("masks-none-and-int-leaves", lambda: _mask_tree_edge("none-int")),
    Edge("masks-frozendict", lambda: _mask_tree_edge("frozen")),
    Edge("masks-nnx-state", lambda: _mask_tree_edge("nnx")),
    Edge("masks-bf16-kernel", lambda: _mask_tree_edge("bf16")),
    Edge("masks-f16-kernel", lambda: _mask_tree_edge("f16")),
    Edge("masks-numpy-kernel", lambda: _mask_tree_edge("numpy")),
    Edge("masks-sparsity-python-numpy-jax-traced", lambda: _mask_tree_edge("sparsity-kinds")),
    Edge("masks-bw-budget-below-one-block", _small_leaf_keeps_a_unit_edge),
]


def _as_tree(x):
    """Leaves of a result pytree as NumPy (Python scalars and strings kept)."""
    return jax.tree.map(lambda a: a if isinstance(a, str) else np.asarray(a), x)


@pytest.mark.parametrize("case", EDGE_CASES, ids=[c.id for c in EDGE_CASES])
def test_edge_input_gives_the_numpy_result(case: Edge):
    got, want = case.run()
    got, want = _as_tree(got), _as_tree(want)
    assert jax.tree.structure(got) == jax.tree.structure(want), case.id
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if isinstance(w, str):
            assert g == w, case.id
            continue
        assert g.shape == w.shape, f"{case.id}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{case.id}: dtype {g.dtype} != {w.dtype}"
        if case.rtol == case.atol == 0.0 or w.dtype == np.bool_:
            np.testing.assert_array_equal(g, w, err_msg=case.id)
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64),
                                       rtol=case.rtol, atol=case.atol, err_msg=case.id)


def test_enough_edge_cases():
    assert len({c.id for c in EDGE_CASES}) == len(EDGE_CASES) >= 40


# -- the demo CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "needle"), [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "-0.2"], "--sparsity"),
    (["--sparsity", "abc"], "--sparsity"),
    (["--pattern", "XYZ"], "--pattern"),
    (["--pattern", "NM", "--sparsity", "0.3"], "--sparsity"),
    (["--tile", "0"], "tile"),
], ids=["sparsity-above-1", "sparsity-negative", "sparsity-not-a-number", "unknown-pattern",
        "nm-inconsistent-sparsity", "tile-zero"])
def test_demo_cli_rejects_bad_flags(argv, needle):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "examples/demo.py", *argv], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
