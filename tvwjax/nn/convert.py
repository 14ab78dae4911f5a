"""Dense params + masks (as returned by :func:`tvwjax.masks`) -> compressed params."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tvwjax.errors import DTypeError, TreeMismatchError
from tvwjax.formats import TileVectorWise, compress
from tvwjax.masking import as_matrix, path_str
from tvwjax.patterns import Pattern

PyTree = Any


def compress_params(params: PyTree, mask_tree: PyTree, pattern: Pattern, *,
                    keep_dense_if_full: bool = True, decode_nm: bool = False) -> PyTree:
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

    Returns:
      ``params`` with each pruned kernel replaced by a compressed ``(K, N)`` weight (kernels
      with more than two dims, e.g. conv, are compressed as their im2col matrix
      :func:`tvwjax.as_matrix`). Use it with :class:`~tvwjax.nn.SparseDense` /
      :class:`~tvwjax.nn.SparseLinear` under ``jax.jit``.

    Raises:
      TreeMismatchError: the trees differ or a mask's shape differs from its leaf's.
      PatternViolationError etc.: from :func:`tvwjax.compress`, prefixed with the leaf path.
    """
    p_flat, p_def = jax.tree_util.tree_flatten_with_path(params)
    m_flat, m_def = jax.tree_util.tree_flatten_with_path(mask_tree, is_leaf=lambda x: x is None)
    if len(p_flat) != len(m_flat):
        raise TreeMismatchError(f"mask_tree must have the structure of params: {len(m_flat)} "
                                f"mask leaves for {len(p_flat)} param leaves")
    out = []
    for (kp, leaf), (mkp, mask) in zip(p_flat, m_flat, strict=True):
        path = path_str(kp)
        if path_str(mkp) != path:
            raise TreeMismatchError(f"mask_tree must have the structure of params: mask leaf "
                                    f"{path_str(mkp)!r} where params have {path!r}")
        if mask is None:
            out.append(leaf)
            continue
        if np.shape(mask) != np.shape(leaf):
            raise TreeMismatchError(f"{path}: mask shape {np.shape(mask)} differs from the "
                                    f"leaf's {np.shape(leaf)}")
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
                raise DTypeError(f"{path}: mask must be boolean (or 0/1 integer), got dtype "
                                 f"{m.dtype}")
            m = m.astype(bool)
        if keep_dense_if_full and m.all():
            out.append(leaf)
            continue
        try:
            cw = compress(as_matrix(leaf), as_matrix(m), pattern)
        except ValueError as e:
            raise type(e)(f"{path}: {e}") from e
        if decode_nm and isinstance(cw, TileVectorWise):
            cw = cw.to_tile_wise()
        out.append(cw)
    return jax.tree_util.tree_unflatten(p_def, out)


def compress_model(model: Any, mask_state: PyTree, pattern: Pattern) -> Any:
    """NNX: compress the pruned kernels of ``model`` in place and return it.

    ``mask_state`` is ``tvwjax.masks(nnx.state(model, nnx.Param), pattern, s)``.
    """
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    nnx.update(model, compress_params(state, mask_state, pattern))
    return model


__all__ = ["compress_model", "compress_params"]
