"""Calibration: per-layer input statistics of a Flax model, streamed over batches.

Data-aware pruning needs, for every linear layer ``y = x @ W`` being pruned, statistics of
the inputs ``x`` it sees on real data:

* ``sumsq`` -- the per-feature sum of squares ``sum_rows x_k^2`` (``K,``); its square root
  is the feature norm ``||x_k||`` of Wanda (Sun et al., 2023), divided by the row count it is
  the squared feature RMS;
* ``gram`` -- the Gram matrix ``X^T X`` (``K x K``), the Hessian of the layer's squared
  reconstruction error used by :mod:`tvwjax.reconstruction` (SparseGPT, Frantar & Alistarh, 2023);
* ``count`` -- the number of input rows (tokens) accumulated.

Everything here is a pure function of ``(params, batch)``. Layer inputs are captured by an
*inputs function* ``inputs_fn(params, batch) -> {kernel_path: [x, ...]}``:

* :func:`linen_inputs` builds one for a Linen module with :func:`flax.linen.intercept_methods`:
  every module with a 2-D ``kernel`` parameter whose ``__call__`` is given ``(..., K)`` inputs
  (``nn.Dense`` and Dense-like wrappers) is captured;
* :func:`nnx_inputs` builds one for an NNX graph definition: on a merged copy of the model,
  every module with a 2-D ``kernel`` :class:`~flax.nnx.Param` (``nnx.Linear`` and the like)
  records its input.

Keys are the path strings of the kernel leaves in the parameter pytree given to the function
(:func:`tvwjax.path_str`: ``"params/layer_0/query/kernel"`` for Linen variables,
``"layers/0/kernel"`` for an ``nnx.State``), so they line up with :func:`tvwjax.masks`.

:func:`collect` streams over an iterable of batches with one jit-compiled step per batch
shape, adding each batch's statistics into a running float32 sum: memory is bounded by the
statistics (``K^2`` per layer), never by the number of batches. Padding rows (e.g. padding
tokens) are excluded with ``row_mask(batch)``, an array shaped like the inputs' leading axes
(``(batch, seq)`` for a transformer).

References:
  M. Sun, Z. Liu, A. Bair and J. Z. Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models" (Wanda), arXiv:2306.11695, 2023.
  E. Frantar and D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvwjax._tree import path_str
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.masking import default_where

PyTree = Any
Batch = Any
InputsFn = Callable[[PyTree, Batch], dict[str, list[jax.Array]]]
RowMaskFn = Callable[[Batch], jax.Array]
WherePredicate = Callable[[str, Any], bool]


class LayerStats(NamedTuple):
    """Input statistics of one linear layer (float32 sums over calibration rows).

    Attributes:
      count: number of (unmasked) input rows accumulated, a scalar.
      sumsq: per-feature sum of squares ``sum_rows x_k^2``, shape ``(K,)``.
      gram: ``X^T X``, shape ``(K, K)``, or ``None`` when not collected.
    """

    count: jax.Array
    sumsq: jax.Array
    gram: jax.Array | None


def layer_stats(x: jax.Array, row_mask: jax.Array | None = None, *, gram: bool = True,
                name: str = "x") -> LayerStats:
    """Statistics of one batch of layer inputs.

    Args:
      x: inputs ``(..., K)``; all leading axes are rows.
      row_mask: optional weights (0/1 or bool) shaped like ``x.shape[:-1]``; rows with 0
        are left out (padding tokens).
      gram: also compute ``X^T X`` (``K^2`` memory).
      name: what error messages call ``x`` (e.g. a kernel path).

    Returns:
      A :class:`LayerStats` with float32 sums (``HIGHEST`` matmul precision).
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"{name}: layer inputs must have a feature axis, got a scalar")
    k = x.shape[-1]
    rows = x.reshape(-1, k).astype(jnp.float32)
    if row_mask is None:
        w = jnp.ones((rows.shape[0],), jnp.float32)
    else:
        row_mask = jnp.asarray(row_mask)
        if row_mask.shape != x.shape[:-1]:
            raise ShapeError(f"{name}: row_mask has shape {row_mask.shape}, expected the "
                             f"inputs' leading shape {x.shape[:-1]} (inputs {x.shape})")
        w = row_mask.reshape(-1).astype(jnp.float32)
    xw = rows * w[:, None]
    sumsq = jnp.sum(xw * rows, axis=0)
    g = None
    if gram:
        g = jnp.matmul(xw.T, rows, precision=jax.lax.Precision.HIGHEST)
    return LayerStats(jnp.sum(w), sumsq, g)


def add_stats(a: LayerStats, b: LayerStats) -> LayerStats:
    """Sum of two :class:`LayerStats` of the same layer."""
    g = None if a.gram is None or b.gram is None else a.gram + b.gram
    return LayerStats(a.count + b.count, a.sumsq + b.sumsq, g)


def feature_norm(stats: LayerStats) -> jax.Array:
    """``||x_k||_2`` over the calibration rows (Wanda's input norm), shape ``(K,)``."""
    return jnp.sqrt(jnp.maximum(stats.sumsq, 0.0))


def feature_rms(stats: LayerStats) -> jax.Array:
    """Root-mean-square of each input feature over the calibration rows, shape ``(K,)``."""
    return jnp.sqrt(jnp.maximum(stats.sumsq, 0.0) / jnp.maximum(stats.count, 1.0))


def _call_args(batch: Batch) -> tuple[tuple, dict]:
    """A batch as call arguments: tuple/list -> positional, dict -> keywords, else one arg."""
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    return (batch,), {}


def _gemm_rows(mod: Any, x: Any, kernel: Any) -> jax.Array | None:
    """The inputs of a dense layer as ``(..., K)`` rows of its GEMM, or None if ``mod`` is not
    a dense layer fed ``x``: a 2-D kernel reading the last axis (``Dense``, ``Linear`` and
    Dense-like wrappers), or ``DenseGeneral`` / ``LinearGeneral`` (attention projections),
    whose contracted axes of ``x`` are flattened into ``K`` in the kernel's order."""
    from flax import nnx

    if not hasattr(x, "shape") or not hasattr(kernel, "shape") or x.ndim < 1:
        return None
    if len(kernel.shape) == 2 and not isinstance(mod, nn.DenseGeneral | nnx.LinearGeneral):
        return x if x.shape[-1] == kernel.shape[0] else None
    if isinstance(mod, nn.DenseGeneral | nnx.LinearGeneral):
        if getattr(mod, "batch_dims", ()) or getattr(mod, "batch_axis", None):
            return None
        axis = mod.axis if isinstance(mod.axis, tuple | list) else (mod.axis,)
        axes = tuple(a % x.ndim for a in axis)
        k = math.prod(x.shape[a] for a in axes)
        if k != math.prod(kernel.shape[:len(axes)]):
            return None
        rest = [a for a in range(x.ndim) if a not in axes]
        return jnp.transpose(x, (*rest, *axes)).reshape(*(x.shape[a] for a in rest), k)
    return None


# -- Linen -----------------------------------------------------------------------------------
def linen_inputs(model: nn.Module, *, method: str | Callable | None = None,
                 where: WherePredicate | None = None,
                 collection: str = "params") -> InputsFn:
    """Inputs function for a Linen module: captures the inputs of its Dense-like layers.

    A submodule is captured when it has a 2-D ``kernel`` variable in ``collection`` and its
    ``__call__`` receives an array whose last axis equals the kernel's first dimension, and
    ``where(path, kernel)`` (default :func:`tvwjax.default_where`) accepts its kernel path.
    A layer called more than once contributes every call.

    Args:
      model: the (unbound) Linen module.
      method: the method ``model.apply`` runs (default ``__call__``), e.g.
        ``MiniLMEncoder.token_states``.
      where: predicate on ``(kernel_path, kernel)``.
      collection: the variable collection holding the kernels.

    Returns:
      ``inputs_fn(variables, batch) -> {kernel_path: [x, ...]}`` where ``batch`` is a tuple
      of positional arguments (or a dict of keyword arguments, or a single array) for
      ``model.apply(variables, ...)``, and ``kernel_path`` is e.g.
      ``"params/layer_0/query/kernel"``.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"linen_inputs: model must be a flax.linen Module, got {model!r}")
    where = where or default_where

    def inputs_fn(variables: PyTree, batch: Batch) -> dict[str, list[jax.Array]]:
        found: dict[str, list[jax.Array]] = {}

        def interceptor(next_fun, args, kwargs, context):
            mod = context.module
            if (context.method_name == "__call__" and args
                    and mod.has_variable(collection, "kernel")):
                kernel = mod.get_variable(collection, "kernel")
                kernel = kernel.unbox() if isinstance(kernel, nn.meta.AxisMetadata) else kernel
                x = _gemm_rows(mod, args[0], kernel)
                if x is not None:
                    path = "/".join((collection, *mod.path, "kernel"))
                    if where(path, kernel):
                        found.setdefault(path, []).append(x)
            return next_fun(*args, **kwargs)

        args, kwargs = _call_args(batch)
        with nn.intercept_methods(interceptor):
            model.apply(variables, *args, method=method, **kwargs)
        return found

    return inputs_fn


# -- NNX -------------------------------------------------------------------------------------
@functools.cache
def _recording_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` records its first argument."""

    def __call__(self, x, *args, **kwargs):  # noqa: N807
        self._tvw_record(x)
        return cls.__call__(self, x, *args, **kwargs)

    return type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})


def nnx_inputs(graphdef: Any, *, where: WherePredicate | None = None,
               call: Callable[..., Any] | None = None) -> InputsFn:
    """Inputs function for an NNX model: captures the inputs of its Linear-like layers.

    Use with ``graphdef, state = nnx.split(model)``; the function merges a fresh copy of the
    model from ``(graphdef, state)`` (the caller's model is never modified), turns every
    submodule that has a 2-D ``kernel`` :class:`flax.nnx.Variable` (and whose kernel path
    passes ``where``) into a recording subclass, and runs it.

    Args:
      graphdef: the graph definition from ``nnx.split(model)``.
      where: predicate on ``(kernel_path, kernel)`` (default :func:`tvwjax.default_where`).
      call: ``call(model, *args, **kwargs)`` running the model on a batch (default
        ``model(*args, **kwargs)``).

    Returns:
      ``inputs_fn(state, batch) -> {kernel_path: [x, ...]}`` with paths like those of
      :func:`tvwjax.masks` on the state (``"layers/0/kernel"``).
    """
    from flax import nnx

    where = where or default_where
    call = call or (lambda m, *a, **k: m(*a, **k))

    def inputs_fn(state: PyTree, batch: Batch) -> dict[str, list[jax.Array]]:
        model = nnx.merge(graphdef, state)
        found: dict[str, list[jax.Array]] = {}
        for path, node in list(nnx.iter_graph(model)):
            if not isinstance(node, nnx.Module):
                continue
            kernel = getattr(node, "kernel", None)
            if not isinstance(kernel, nnx.Variable) or getattr(kernel, "ndim", 0) < 2:
                continue
            kpath = path_str(tuple(jax.tree_util.DictKey(p) for p in path) + (
                jax.tree_util.DictKey("kernel"),))
            if not where(kpath, kernel[...]):
                continue
            def record(x, _path=kpath, _node=node, _kernel=kernel[...]):
                rows = _gemm_rows(_node, x, _kernel)
                if rows is not None:
                    found.setdefault(_path, []).append(rows)

            object.__setattr__(node, "_tvw_record", record)
            object.__setattr__(node, "__class__", _recording_class(type(node)))
        args, kwargs = _call_args(batch)
        call(model, *args, **kwargs)
        return found

    return inputs_fn


# -- streaming collection -------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _stats_step(inputs_fn: InputsFn, paths: tuple[str, ...] | None, gram: bool,
                row_mask: RowMaskFn | None):
    """A jit-compiled ``(params, batch, acc) -> acc`` for one capture configuration."""

    def step(params, batch, acc):
        found = inputs_fn(params, batch)
        rm = None if row_mask is None else row_mask(batch)
        out = dict(acc) if acc is not None else {}
        keys = list(found) if paths is None else list(paths)
        for p in keys:
            if p not in found:
                raise ConfigError(f"calibration: no inputs were captured for {p!r}; captured "
                                  f"layers: {sorted(found)[:8]}")
            for x in found[p]:
                s = layer_stats(x, rm, gram=gram, name=p)
                out[p] = s if p not in out else add_stats(out[p], s)
        return out

    return jax.jit(step)


def collect(inputs_fn: InputsFn, params: PyTree, batches: Iterable[Batch], *,
            row_mask: RowMaskFn | None = None, paths: Sequence[str] | None = None,
            gram: bool = True) -> dict[str, LayerStats]:
    """Stream calibration batches through the model and sum each layer's input statistics.

    Args:
      inputs_fn: from :func:`linen_inputs` or :func:`nnx_inputs` (or any function
        ``(params, batch) -> {path: [x, ...]}``).
      params: the parameters the inputs are computed with (Linen variables or NNX state).
      batches: an iterable of batches (each a tuple of model arguments).
      row_mask: ``row_mask(batch)`` -> weights shaped like the inputs' leading axes; rows with
        weight 0 (padding tokens) are excluded.
      paths: only these layers (others are not computed; XLA drops the unused rest of the
        forward pass). Default: every captured layer.
      gram: also accumulate ``X^T X``.

    Returns:
      ``{kernel_path: LayerStats}`` summed over all batches (float32).

    Raises:
      ConfigError: ``batches`` is empty, or a requested path is never captured.
    """
    key_paths = None if paths is None else tuple(paths)
    step = _stats_step(inputs_fn, key_paths, bool(gram), row_mask)
    acc = None
    for batch in batches:
        acc = step(params, batch, acc)
    if acc is None:
        raise ConfigError("calibration: batches is empty; give at least one batch")
    return acc


def layer_groups(inputs_fn: InputsFn, params: PyTree, batch: Batch) -> list[list[str]]:
    """Captured layers in execution order, grouped by shared input.

    Layers that read the same array (the query, key and value projections of an attention
    block) form one group; pruning one of them does not change the others' inputs, so
    sequential reconstruction handles a group with one calibration pass.

    Args:
      inputs_fn: an inputs function.
      params: parameters (only shapes matter; nothing is computed).
      batch: one example batch.

    Returns:
      A list of groups (lists of kernel paths), in the order the layers first run.
    """
    groups: list[list[str]] = []

    def trace(p, b):
        found = inputs_fn(p, b)
        seen: list[tuple[Any, list[str]]] = []
        for path, xs in found.items():
            x = xs[0]
            for obj, grp in seen:
                if obj is x:
                    grp.append(path)
                    break
            else:
                seen.append((x, [path]))
        groups.extend(g for _, g in seen)
        return 0

    jax.eval_shape(trace, params, batch)
    return groups




class PairStats(NamedTuple):
    """Statistics of a layer's inputs in two models over the same calibration rows.

    ``a`` is the model being reconstructed (e.g. already-pruned earlier layers), ``b`` the
    reference (the dense model).

    Attributes:
      count: number of (unmasked) rows.
      gram_a: ``X_a^T X_a`` ``(K, K)``.
      cross: ``X_a^T X_b`` ``(K, K)``.
      gram_b: ``X_b^T X_b`` ``(K, K)``.
    """

    count: jax.Array
    gram_a: jax.Array
    cross: jax.Array
    gram_b: jax.Array


@functools.lru_cache(maxsize=256)
def _pair_step(inputs_fn: InputsFn, paths: tuple[str, ...], row_mask: RowMaskFn | None):
    def step(params_a, params_b, batch, acc):
        fa, fb = inputs_fn(params_a, batch), inputs_fn(params_b, batch)
        rm = None if row_mask is None else row_mask(batch)
        out = dict(acc) if acc is not None else {}
        hi = jax.lax.Precision.HIGHEST
        for p in paths:
            if p not in fa:
                raise ConfigError(f"calibration: no inputs were captured for {p!r}")
            for xa, xb in zip(fa[p], fb[p], strict=True):
                k = xa.shape[-1]
                ra = xa.reshape(-1, k).astype(jnp.float32)
                rb = xb.reshape(-1, k).astype(jnp.float32)
                if rm is None:
                    w = jnp.ones((ra.shape[0],), jnp.float32)
                else:
                    if rm.shape != xa.shape[:-1]:
                        raise ShapeError(f"{p}: row_mask has shape {rm.shape}, expected the "
                                         f"inputs' leading shape {xa.shape[:-1]}")
                    w = rm.reshape(-1).astype(jnp.float32)
                raw = ra * w[:, None]
                s = PairStats(jnp.sum(w), jnp.matmul(raw.T, ra, precision=hi),
                              jnp.matmul(raw.T, rb, precision=hi),
                              jnp.matmul((rb * w[:, None]).T, rb, precision=hi))
                out[p] = s if p not in out else jax.tree.map(jnp.add, out[p], s)
        return out

    return jax.jit(step)


def collect_pair(inputs_fn: InputsFn, params_a: PyTree, params_b: PyTree,
                 batches: Iterable[Batch], paths: Sequence[str], *,
                 row_mask: RowMaskFn | None = None) -> dict[str, PairStats]:
    """Stream batches through two parameter sets and sum Gram and cross-Gram matrices.

    Used to refit a layer of a partly pruned model (inputs ``X_a``) towards the dense
    model's outputs (inputs ``X_b``): ``min ||X_b W - X_a W'||^2`` needs ``X_a^T X_a`` and
    ``X_a^T X_b``.

    Args:
      inputs_fn: an inputs function (:func:`linen_inputs`, :func:`nnx_inputs`).
      params_a: parameters of the model being reconstructed.
      params_b: parameters of the reference model (same structure).
      batches: an iterable of batches.
      paths: the layers to collect.
      row_mask: as in :func:`collect`.

    Returns:
      ``{kernel_path: PairStats}``.
    """
    step = _pair_step(inputs_fn, tuple(paths), row_mask)
    acc = None
    for batch in batches:
        acc = step(params_a, params_b, batch, acc)
    if acc is None:
        raise ConfigError("calibration: batches is empty; give at least one batch")
    return acc


__all__ = [
    "LayerStats", "PairStats", "add_stats", "collect", "collect_pair", "feature_norm",
    "feature_rms", "layer_groups", "layer_stats", "linen_inputs", "nnx_inputs",
]
