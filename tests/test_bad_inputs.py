"""Malformed input across the public API: every case must raise a *documented* error type.

Each case names the exception class from :mod:`tvwjax.errors` it must raise and substrings the
message must contain: the parameter or leaf path, and what was expected. None may end in an
XLA error, a bare ``TypeError`` / ``IndexError``, or a silently wrong result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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


def _only_kernel(path, leaf):
    return path.endswith("kernel")


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
]

def test_enough_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 30


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
