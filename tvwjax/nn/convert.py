"""Dense params + masks (as returned by :func:`tvwjax.masks`) -> compressed params."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tvwjax import _validate as val
from tvwjax._tree import as_matrix, check_same_leaves, leaves_with_paths, view_of
from tvwjax.errors import ConfigError
from tvwjax.formats import TileVectorWise, compress
from tvwjax.patterns import Pattern

PyTree = Any


def compress_params(params: PyTree, mask_tree: PyTree, pattern: Pattern, *,
                    keep_dense_if_full: bool = True, decode_nm: bool = False,
                    views: Any = None) -> PyTree:
    """Replace every masked leaf of ``params`` by its compressed weight (eager).

    Args:
      params: dense params (dict / Linen ``params`` / ``nnx.State``).
      mask_tree: masks like ``tvwjax.masks(params, pattern, s)`` returns: bool masks on the
        pruned leaves, ``None`` (or all-True masks) elsewhere.
      pattern: the pattern the masks follow (picks the format, see :func:`tvwjax.compress`).
      keep_dense_if_full: leave leaves whose mask keeps everything dense.
      decode_nm: hold TVW weights as their decoded TW compact blocks
        (:meth:`~tvwjax.TileVectorWise.to_tile_wise`): how TVW runs fastest on a CPU, which
        has no 2:4 hardware (memory: TW at twice the TVW density). Keep ``False`` for the
        GPU kernels and for storage.
      views: GEMM views as in :func:`tvwjax.masks` (the same ``views`` the masks were
        made with); a kernel is compressed in that view.

    Returns:
      ``params`` with each pruned kernel replaced by a compressed ``(K, N)`` weight (kernels
      with more than two dims, e.g. conv, are compressed as their im2col matrix
      :func:`tvwjax.as_matrix`). Use it with :class:`~tvwjax.nn.SparseDense` /
      :class:`~tvwjax.nn.SparseLinear` under ``jax.jit``.

    Raises:
      ConfigError: ``pattern`` not a Pattern, ``views`` not a mapping, a flag not a bool,
        or a traced leaf (it runs eagerly: the index tables are static).
      TreeMismatchError: the trees differ or a mask's shape differs from its leaf's.
      PatternViolationError etc.: from :func:`tvwjax.compress`, prefixed with the leaf path.

    >>> import jax, jax.numpy as jnp, tvwjax
    >>> from tvwjax.nn import SparseDense, compress_params
    >>> model, x = SparseDense(32), jnp.ones((4, 64))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> pattern = tvwjax.TVW(tile=16, column_share=0.0)
    >>> masks = tvwjax.masks(params, pattern, 0.75)
    >>> small = compress_params(params, masks, pattern)
    >>> type(small["kernel"]).__name__
    'TileVectorWise'
    >>> y = jax.jit(model.apply)({"params": small}, x)
    >>> bool(jnp.allclose(y, model.apply({"params": tvwjax.apply_masks(params, masks)}, x),
    ...                   atol=1e-5))
    True
    """
    _check_pattern(pattern, "compress_params")
    views = val.mapping_or_none(views, "compress_params: views")
    keep_dense_if_full = val.flag(keep_dense_if_full, "compress_params: keep_dense_if_full")
    decode_nm = val.flag(decode_nm, "compress_params: decode_nm")
    check_same_leaves(mask_tree, params, "mask_tree", none_ok=True)
    p_flat, p_def = leaves_with_paths(params)
    masks_by_path = dict(leaves_with_paths(mask_tree, none_leaves=True)[0])
    out = []
    for path, leaf in p_flat:
        mask = masks_by_path.get(path)
        if mask is None:
            out.append(leaf)
            continue
        if val.is_traced(mask) or val.is_traced(leaf):
            raise ConfigError(f"compress_params: {path}: got a traced value; compression "
                              "builds static index tables, so call it outside jax.jit")
        m = val.bool_mask(np.asarray(mask), f"mask_tree: {path}")
        if keep_dense_if_full and m.all():
            out.append(leaf)
            continue
        n_in, reason = view_of(path, tuple(np.shape(leaf)), views)
        if n_in is None:
            raise ConfigError(f"{path}: {reason}")
        try:
            cw = compress(as_matrix(leaf, n_in), as_matrix(m, n_in), pattern)
        except ValueError as e:
            raise type(e)(f"{path}: {e}") from e
        if decode_nm and isinstance(cw, TileVectorWise):
            cw = cw.to_tile_wise()
        out.append(cw)
    return jax.tree_util.tree_unflatten(p_def, out)


def _check_pattern(pattern: Any, who: str) -> None:
    if not isinstance(pattern, Pattern):
        raise ConfigError(f"{who}: pattern must be a tvwjax Pattern (TW(), TVW(), NM(), BW()), "
                          f"got {pattern!r}")


def compress_model(model: Any, mask_state: PyTree, pattern: Pattern, *, views: Any = None,
                   decode_nm: bool = False, backend: str = "auto") -> Any:
    """NNX: compress the pruned kernels of ``model`` in place and return it.

    Works on the user's own model: stock ``nnx.Linear``, ``nnx.LinearGeneral`` (so
    ``nnx.MultiHeadAttention``) and ``nnx.Conv`` layers holding a compressed kernel run it
    through :func:`tvwjax.matmul` (see :mod:`tvwjax.nn.stock`), as do
    :class:`~tvwjax.nn.SparseLinear` layers; call the model as before, under ``nnx.jit``.

    Args:
      model: an NNX module.
      mask_state: ``tvwjax.masks(nnx.state(model, nnx.Param), pattern, s, views=views)``.
      pattern: the pattern the masks follow.
      views: the GEMM views the masks were made with (``tvwjax.gemm_views(model)``).
      decode_nm, backend: see :func:`compress_params` and :func:`tvwjax.matmul`.

    Raises:
      ConfigError: ``model`` not an NNX module, an unknown ``backend``, or a compressed
        kernel in a layer kind that cannot run it; and the errors of
        :func:`compress_params`.
    """
    from flax import nnx

    from tvwjax.matmul import BACKENDS
    from tvwjax.nn.stock import swap_nnx_layers

    if not isinstance(model, nnx.Module):
        raise ConfigError(f"compress_model: model must be an NNX module (use "
                          f"compress_params for Linen params), got {type(model).__name__}")
    val.choice(backend, "compress_model: backend", BACKENDS)
    _check_pattern(pattern, "compress_model")

    state = nnx.state(model, nnx.Param)
    nnx.update(model, compress_params(state, mask_state, pattern, views=views,
                                      decode_nm=decode_nm))
    swap_nnx_layers(model, backend)
    return model


__all__ = ["compress_model", "compress_params"]
