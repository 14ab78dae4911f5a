"""Data-aware importance scores built from calibration statistics.

Magnitude ``|w|`` ignores the inputs a weight multiplies. In pretrained transformers a few
input features carry activations many times the median, and some are read through small
weights; row-segment and block scores built from ``|w|`` then drop them across whole tiles.
The activation-aware score of Wanda (Sun et al., 2023) weighs each weight by the norm of
its input feature over calibration data:

    score[k, n] = |W[k, n]| * ||x_k||_2

(Flax layout: ``k`` is the input feature / contraction axis). The result is an ordinary
scores pytree for :func:`tvwjax.masks` (``scores=...``). Unit scores of the structured
patterns -- row segments and columns (TW, TVW), blocks (BW), 2:4 groups (NM) -- are built by
the pattern builders from these element scores, so every pattern uses them consistently.

:func:`data_scores` applies any user function ``fn(w, stats) -> scores`` in the same way
(e.g. the one-step OBS saliency ``w^2 / [H^-1]_kk`` from the Gram matrix, see
:func:`obs_saliency`); the first-order Taylor score lives in :mod:`tvwjax.scores`. Masks
chosen by second-order selection with weight updates (group OBS for TW / TVW, SparseGPT for
EW / N:M) come from :mod:`tvwjax.obs` (``one_shot(..., selection="obs")``).

References:
  M. Sun, Z. Liu, A. Bair and J. Z. Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models" (Wanda), arXiv:2306.11695, 2023.
  B. Hassibi and D. G. Stork, "Second order derivatives for network pruning: Optimal Brain
  Surgeon", NeurIPS 1992.
  E. Frantar and D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from tvwjax._tree import as_matrix, n_in_for, path_str
from tvwjax.calibration import LayerStats, feature_norm
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.masking import default_where
from tvwjax.obs import damped_hessian

PyTree = Any
ScoreFn = Callable[[jax.Array, LayerStats], jax.Array]


def wanda(w: jax.Array, stats: LayerStats) -> jax.Array:
    """Wanda score ``|w[k, n]| * ||x_k||_2`` of a ``(K, N)`` kernel (Sun et al., 2023).

    Args:
      w: the kernel, ``(K, N)`` (Flax ``(in, out)`` layout).
      stats: the layer's input statistics (only ``sumsq`` is used).

    Returns:
      float32 scores ``(K, N)``.
    """
    return jnp.abs(w.astype(jnp.float32)) * feature_norm(stats)[:, None]


def obs_saliency(w: jax.Array, stats: LayerStats, damping: float = 0.01) -> jax.Array:
    """OBS saliency ``w^2 / [H^-1]_kk`` with ``H = X^T X + lambda I`` (Hassibi & Stork).

    The error increase of removing one weight alone with optimal compensation by the other
    weights of its column (the score SparseGPT uses for its masks). Needs ``stats.gram``.

    Args:
      w: the kernel ``(K, N)``.
      stats: input statistics with a Gram matrix.
      damping: ``lambda`` relative to the mean of ``diag(X^T X)``.

    Returns:
      float32 scores ``(K, N)`` (square roots of the saliency, so they scale like ``|w|``).
    """
    if stats.gram is None:
        raise ConfigError("obs_saliency: stats has no Gram matrix (collect with gram=True)")
    h, _ = damped_hessian(stats.gram, damping)
    hinv_diag = jnp.diag(jnp.linalg.inv(h))
    return jnp.abs(w.astype(jnp.float32)) / jnp.sqrt(jnp.maximum(hinv_diag, 1e-30))[:, None]


def data_scores(params: PyTree, stats: Mapping[str, LayerStats], fn: ScoreFn = wanda, *,
                where: Callable[[str, Any], bool] | None = None) -> PyTree:
    """Scores pytree for :func:`tvwjax.masks` from a per-layer score function.

    Args:
      params: the parameter pytree (Linen variables, a params dict or an ``nnx.State``).
      stats: ``{kernel_path: LayerStats}`` from :func:`tvwjax.calibration.collect`, keyed by
        the same path strings as ``params``.
      fn: ``fn(w2d, stats) -> scores2d`` on the ``(K, N)`` view of each kernel; must return
        non-negative values of the same shape. Default :func:`wanda`.
      where: the leaves that get data-aware scores (default :func:`tvwjax.default_where`);
        pass the same predicate to :func:`tvwjax.masks`.

    Returns:
      A pytree shaped like ``params``: ``fn`` scores on selected leaves, ``|w|`` elsewhere.

    Raises:
      ConfigError: a selected leaf has no statistics (names the path).
      ShapeError: the statistics or ``fn``'s output do not fit the kernel.
    """
    where = where or default_where
    if not callable(fn):
        raise ConfigError(f"data_scores: fn must be callable, got {fn!r}")

    def one(kp, leaf):
        path = path_str(kp)
        if not (hasattr(leaf, "ndim") and where(path, leaf)):
            return jnp.abs(leaf).astype(jnp.float32) if hasattr(leaf, "dtype") else leaf
        if path not in stats:
            raise ConfigError(f"{path}: no calibration statistics for this leaf (have "
                              f"{len(stats)} layers, e.g. {sorted(stats)[:3]}); capture it or "
                              "exclude it with where=")
        st = stats[path]
        n_in = n_in_for(tuple(leaf.shape), int(st.sumsq.shape[0]))
        if st.sumsq.ndim != 1 or n_in is None:
            raise ShapeError(f"{path}: statistics have {st.sumsq.shape} input features, no "
                             f"GEMM view of the kernel {tuple(leaf.shape)} has that K")
        w2 = as_matrix(leaf, n_in)
        s = jnp.asarray(fn(w2, st), jnp.float32)
        if s.shape != w2.shape:
            raise ShapeError(f"{path}: score function returned shape {s.shape}, expected "
                             f"{w2.shape}")
        return s.reshape(leaf.shape)

    return jax.tree_util.tree_map_with_path(one, params)


__all__ = ["data_scores", "obs_saliency", "wanda"]
