"""The backward pass of a tile matmul ``y = x @ W(values)``, in the compact tile form.

Plain jnp, no dense ``K x N`` expansion of the weight. For tile ``t`` with kept rows
``rows_t`` and output columns ``cols_t``:

* ``dvalues[t] = x[:, rows_t]^T @ dy[:, cols_t]``, zero on padding rows (``>= counts[t]``)
  and padding columns (``cols == N``);
* ``dx = sum_t scatter_add(rows_t, dy[:, cols_t] @ values[t]^T)``.

Both are batched over tiles: one row gather of ``x^T`` (``(T, Kp, M)``), one gather of
``dy^T`` (``(T, G, M)``), two batched GEMMs accumulating in float32, one row scatter-add.
Memory: the gathered activations, ``T * Kp * M`` elements (the forward kernel's gather,
materialised once). TVW reuses it on its decoded compact blocks and maps ``dvalues`` back to
the 2:4 values through the VJP of the (linear) decode.

Every kernel (Triton, Mosaic GPU Hopper and Blackwell) gets its ``custom_vjp`` from
:func:`tw_custom_vjp` or :func:`tvw_custom_vjp`, so they all share this one backward.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.layout import kept_row_index, tvw_compact_blocks

Array = jax.Array


def tile_matmul_vjp(x: Array, values: Array, rows: Array, cols: Array, counts: Array | None,
                    dy: Array) -> tuple[Array, Array]:
    """Cotangents ``(dx, dvalues)`` of ``y = x @ W`` for TW tile data.

    Args:
      x: ``(M, K)`` activations.
      values: ``(T, Kp, G)`` compact tile blocks.
      rows: ``(T, Kp)`` int original K row of each compact row.
      cols: ``(T, G)`` int original output column of each tile column (padding = ``N``).
      counts: optional ``(T,)`` kept rows per tile; without it every compact row counts as
        kept (padding rows then receive the gradient of row ``rows[t, j]``, i.e. row 0).
      dy: ``(M, N)`` cotangent of the output.

    Returns:
      ``dx`` ``(M, K)`` in ``x``'s dtype and ``dvalues`` ``(T, Kp, G)`` in ``values``' dtype.
    """
    m, k = x.shape
    dtype = jnp.result_type(x.dtype, values.dtype, dy.dtype)
    r = kept_row_index(rows, counts, k)  # padding rows: out of range, read as 0 / dropped
    xg = x.astype(dtype).T.at[r].get(mode="fill", fill_value=0)             # (T, Kp, M)
    dyg = dy.astype(dtype).T.at[cols.astype(jnp.int32)].get(mode="fill", fill_value=0)  # (T, G, M)
    batched = (((2,), (2,)), ((0,), (0,)))
    dvalues = lax.dot_general(xg, dyg, batched, preferred_element_type=jnp.float32)
    contrib = lax.dot_general(values.astype(dtype), dyg, (((2,), (1,)), ((0,), (0,))),
                              preferred_element_type=jnp.float32)            # (T, Kp, M)
    dxt = jnp.zeros((k, m), jnp.float32).at[r].add(contrib, mode="drop")
    return dxt.T.astype(x.dtype), dvalues.astype(values.dtype)


TWForward = Callable[[Array, Array, Array, Array, "Array | None", Hashable], Array]
TVWForward = Callable[[Array, Array, Array, Array, Array, "Array | None", Hashable], Array]


def tw_custom_vjp(forward: TWForward) -> TWForward:
    """Make ``forward(x, values, rows, cols, counts, static)`` differentiable with respect to
    ``x`` and ``values`` through :func:`tile_matmul_vjp` (``static``: a hashable,
    non-differentiable launch description; the integer tables get no cotangent)."""
    fn = jax.custom_vjp(forward, nondiff_argnums=(5,))

    def fwd(x, values, rows, cols, counts, static):
        return fn(x, values, rows, cols, counts, static), (x, values, rows, cols, counts)

    def bwd(static, res, dy):
        del static
        dx, dvalues = tile_matmul_vjp(*res, dy)
        return dx, dvalues, None, None, None

    fn.defvjp(fwd, bwd)
    return fn


def tvw_custom_vjp(forward: TVWForward) -> TVWForward:
    """Make ``forward(x, values, meta, rows, cols, counts, static)`` (TVW 2:4 tile data)
    differentiable with respect to ``x`` and the compressed ``values``: the compact blocks
    are decoded (:func:`pallas_kernels.layout.tvw_compact_blocks`), :func:`tile_matmul_vjp`
    runs on them and the block gradient goes back to the values through the VJP of the
    linear decode."""
    fn = jax.custom_vjp(forward, nondiff_argnums=(6,))

    def fwd(x, values, meta, rows, cols, counts, static):
        y = fn(x, values, meta, rows, cols, counts, static)
        return y, (x, values, meta, rows, cols, counts)

    def bwd(static, res, dy):
        del static
        x, values, meta, rows, cols, counts = res
        blocks, decode_vjp = jax.vjp(lambda v: tvw_compact_blocks(v, meta), values)
        dx, dblocks = tile_matmul_vjp(x, blocks, rows, cols, counts, dy)
        (dvalues,) = decode_vjp(dblocks)
        return dx, dvalues, None, None, None, None

    fn.defvjp(fwd, bwd)
    return fn


__all__ = ["tile_matmul_vjp", "tvw_custom_vjp", "tw_custom_vjp"]
