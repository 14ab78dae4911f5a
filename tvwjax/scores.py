"""Importance scores as pure functions of parameter (and gradient) pytrees.

* :func:`magnitude` -- ``|w|`` (the VGG / NMT experiments of the paper).
* :func:`taylor_init` / :func:`taylor_accumulate` -- the first-order Taylor score used for
  BERT: per element ``(dL/dw * w)^2`` summed over mini-batches ("sum of squares beats square
  of sum"). Accumulate over ~100 batches before each pruning step.

Every function maps a pytree to a pytree of the same structure and is jit-able.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tvwjax._tree import check_same_leaves

PyTree = Any


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def magnitude(params: PyTree) -> PyTree:
    """Magnitude scores ``|w|`` (float32) for every array leaf of ``params``."""
    return jax.tree.map(lambda w: jnp.abs(w).astype(jnp.float32) if _is_array(w) else w, params)


def taylor_init(params: PyTree) -> PyTree:
    """A zero Taylor-score accumulator shaped like ``params`` (float32)."""
    return jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)


def taylor_accumulate(acc: PyTree, grads: PyTree, params: PyTree) -> PyTree:
    """Add one mini-batch's ``(grad * w)^2`` to the accumulator ``acc``.

    Args:
      acc: the running sum (from :func:`taylor_init` or a previous call).
      grads: gradients of the loss on this mini-batch, same structure as ``params``.
      params: current parameters.

    Returns:
      The updated accumulator (float32).
    """
    for name, tree in (("grads", grads), ("acc", acc)):
        check_same_leaves(tree, params, f"taylor_accumulate: {name}", none_ok=False)
    return jax.tree.map(
        lambda a, g, w: a + jnp.square(g.astype(jnp.float32) * w.astype(jnp.float32)),
        acc, grads, params)


def taylor_scores(grad_fn, params: PyTree, batches) -> PyTree:
    """Taylor scores summed over an iterable of batches.

    Args:
      grad_fn: ``grad_fn(params, batch) -> grads`` (e.g. ``jax.jit(jax.grad(loss))``).
      params: parameters to score.
      batches: an iterable of batches.

    Returns:
      The summed ``(grad * w)^2`` pytree.
    """
    acc = taylor_init(params)
    step = jax.jit(taylor_accumulate)
    for batch in batches:
        acc = step(acc, grad_fn(params, batch), params)
    return acc


__all__ = ["magnitude", "taylor_accumulate", "taylor_init", "taylor_scores"]
