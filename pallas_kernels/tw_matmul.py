"""Tile-wise (TW) sparse matmul ``y = x @ W`` as a Pallas kernel (Triton backend).

Each program computes one ``block_m x G`` block of the compact output: for its tile it reads the
tile's row table, gathers the matching rows of ``x^T`` (a leading-dimension gather, the one
Triton lowers), and runs a dense ``dot`` against the tile's compact ``K_t x G`` block, ``block_k``
compact rows per step, accumulating in float32. The compact ``(M, T*G)`` result is scattered to
the original output columns after the kernel (pruned columns zero, padding columns dropped).

Reference: Guo et al., "Accelerating Sparse DNN Models without Hardware-Support via Tile-Wise
Sparsity", SC 2020 (the per-tile gather-then-GEMM design of their CUTLASS kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.common import (
    check_counts,
    compute_dtype,
    gather_xt_rows,
    launch_tile_kernel,
    num_k_steps,
    pad_axis,
    padded_tile_width,
    prepare_tables,
    resolve_block_config,
    round_up,
    tiles_to_dense,
    validate_tiles,
)
from tvwjax.errors import ShapeError

Array = jax.Array


def tw_matmul_kernel(xt_ref, values_ref, rows_ref, counts_ref, o_ref, *, block_k: int) -> None:
    """Kernel body: one ``(block_m, G)`` output block of one tile.

    Args:
      xt_ref: ``(K, block_m)`` block of ``x^T``.
      values_ref: ``(Kp, G)`` compact block of the current tile.
      rows_ref: ``(Kp,)`` original K row of each compact row.
      counts_ref: ``(T,)`` kept rows per tile, or ``None`` (loop over all of ``Kp``).
      o_ref: ``(block_m, G)`` output block.
      block_k: compact rows per loop step.
    """
    kp = values_ref.shape[0]
    steps = num_k_steps(counts_ref, pl.program_id(1), kp, block_k)

    def body(step, acc):
        start = pl.multiple_of(step * block_k, block_k)
        xt = gather_xt_rows(xt_ref, rows_ref, start, block_k).astype(o_ref.dtype)
        w = values_ref[pl.ds(start, block_k), :].astype(o_ref.dtype)
        return acc + plgpu.dot(xt, w, trans_a=True)

    acc = jnp.zeros(o_ref.shape, jnp.float32)
    acc = lax.fori_loop(0, steps, body, acc)
    o_ref[...] = acc.astype(o_ref.dtype)


@functools.partial(
    jax.jit,
    static_argnames=["n_out", "block_m", "block_k", "num_warps", "num_stages", "interpret"],
)
def tw_matmul(
    x: Array,
    values: Array,
    rows: Array,
    cols: Array,
    *,
    n_out: int,
    counts: Array | None = None,
    block_m: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> Array:
    """Tile-wise sparse ``x @ W`` from TW tile data.

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp, G)`` compact tile blocks (kept rows first, zeros after).
      rows: ``(T, Kp)`` int original K row of each compact row (padding rows point at 0).
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile; when given, each tile loops only over
        its own ``ceil(k_t / block_k)`` steps instead of all of ``Kp``.
      block_m, block_k, num_warps, num_stages: static launch parameters; ``None`` picks the
        per-shape default of :func:`pallas_kernels.common.default_block_config`.
      interpret: run the kernel in Pallas interpret mode (CPU, slow; for tests).

    Padding: a ``G`` that is not a power of two >= 16, or a ``Kp`` that is not a multiple
    of ``block_k`` (pass ``Kp`` a multiple of 16 to avoid it), is zero-padded on every
    call, a copy of the weight arrays; ``rows`` entries must lie in ``[0, K)`` (they
    cannot be checked under jit; out-of-range rows read garbage on a GPU).

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values`` (float32, bfloat16 or
      float16), accumulated in float32.

    Raises:
      ShapeError, DTypeError, ConfigError: on inputs that break the layout contract.
    """
    m, _, t, kp, g = validate_tiles(x, rows, cols, n_out)
    if values.ndim != 3 or tuple(values.shape) != (t, kp, g):
        raise ShapeError(
            f"values must have shape (T, Kp, G) = {(t, kp, g)} to match rows/cols, "
            f"got {tuple(values.shape)}"
        )
    check_counts(counts, t)
    dtype = compute_dtype(x, values)
    gp = padded_tile_width(g)
    cfg = resolve_block_config(
        m, kp, gp, tvw=False, block_m=block_m, block_k=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    kp_to = round_up(kp, cfg.block_k)
    values = pad_axis(pad_axis(values, 1, kp_to), 2, gp)
    rows, cols, counts = prepare_tables(rows, cols, counts, kp_to, gp, n_out)
    kernel = functools.partial(tw_matmul_kernel, block_k=cfg.block_k)
    return launch_tile_kernel(
        kernel, x, [values], rows, cols, counts, n_out=n_out, cfg=cfg, dtype=dtype,
        interpret=interpret, name="tw_matmul",
    )


@functools.partial(jax.jit, static_argnames=["n_out"])
def tw_matmul_reference(
    x: Array, values: Array, rows: Array, cols: Array, *, n_out: int
) -> Array:
    """Plain-jnp reference of :func:`tw_matmul`: ``x @ W`` with ``W`` expanded to dense by
    :func:`pallas_kernels.common.tiles_to_dense`, float32 accumulation."""
    validate_tiles(x, rows, cols, n_out)
    dtype = compute_dtype(x, values)
    w = tiles_to_dense(values.astype(dtype), rows, cols, x.shape[1], n_out)
    y = jnp.dot(x.astype(dtype), w, precision=lax.Precision.HIGHEST,
                preferred_element_type=jnp.float32)
    return y.astype(dtype)


__all__ = ["tw_matmul", "tw_matmul_kernel", "tw_matmul_reference"]
