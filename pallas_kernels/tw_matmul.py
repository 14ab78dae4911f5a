"""Tile-wise (TW) sparse matmul ``y = x @ W`` as a Pallas kernel (Triton backend).

Each program computes one ``block_m x G`` block of the compact output: for its tile it reads the
tile's row table, gathers the matching rows of ``x^T`` (a leading-dimension gather, the one
Triton lowers), and runs a dense ``dot`` against the tile's compact ``K_t x G`` block, ``block_k``
compact rows per step, accumulating in float32. The compact ``(M, T*G)`` result is scattered to
the original output columns after the kernel (pruned columns zero, padding columns dropped).

:func:`tw_matmul` is differentiable with respect to ``x`` and ``values`` (a ``custom_vjp``
whose backward is :func:`pallas_kernels.tile_vjp.tile_matmul_vjp`, plain jnp in the compact
tile form); :func:`tw_matmul_reference` is the plain-jnp reference the tests compare with.

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
    MIN_DOT,
    BlockConfig,
    TileCall,
    compute_dtype,
    default_block_config,
    gather_xt_rows,
    launch_tile_kernel,
    next_pow2,
    num_k_steps,
    prepare_call,
    validate_tiles,
    validate_weight,
)
from pallas_kernels.layout import tiles_to_dense
from pallas_kernels.tile_vjp import tw_custom_vjp

Array = jax.Array

#: Smallest ``block_k`` of the TW kernel (one ``dot`` over ``block_k`` compact rows).
MIN_BLOCK_K = MIN_DOT


def tw_block_config(m: int, kp: int, g: int) -> BlockConfig:
    """Per-shape launch defaults of :func:`tw_matmul` for ``x`` with ``m`` rows, ``kp``
    compact rows per tile and tiles ``g`` wide (after padding to a power of two).

    ``block_k``: the largest of 64, 32, 16 that divides ``kp`` (so no padding copy of the
    weights is made); if none does, ``min(64, next_pow2(kp))``. The other fields:
    :func:`pallas_kernels.common.default_block_config`.
    """
    divisors = [b for b in (64, 32, 16) if kp % b == 0]
    block_k = divisors[0] if divisors else min(64, max(MIN_DOT, next_pow2(kp)))
    return default_block_config(m, g, block_k)


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


@functools.partial(jax.jit, static_argnames=["n_out", "config", "interpret"])
def tw_matmul(x: Array, values: Array, rows: Array, cols: Array, *, n_out: int,
              counts: Array | None = None, config: BlockConfig | None = None,
              interpret: bool = False) -> Array:
    """Tile-wise sparse ``x @ W`` from TW tile data (layout: :mod:`pallas_kernels.layout`).

    Differentiable with respect to ``x`` and ``values`` (the integer tables get no
    cotangent); the backward runs :func:`pallas_kernels.tile_vjp.tile_matmul_vjp`.

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp, G)`` compact tile blocks (kept rows first, zeros after).
      rows: ``(T, Kp)`` int original K row of each compact row (padding rows point at 0).
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile; when given, each tile loops only over
        its own ``ceil(k_t / block_k)`` steps instead of all of ``Kp``, and padding rows get
        a zero gradient (without it they get row 0's).
      config: static launch parameters; its ``None`` fields (all, by default) take the
        per-shape default of :func:`tw_block_config`.
      interpret: run the kernel in Pallas interpret mode (CPU, slow; for tests).

    The arrays are padded to the block sizes as
    :func:`pallas_kernels.common.launch_tile_kernel` says (``Kp`` a multiple of 16 and ``G``
    a power of two >= 16 avoid a copy of the weights).

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values`` (float32, bfloat16 or
      float16), accumulated in float32.
      float32 operands follow ``jax.default_matmul_precision``, as XLA's own float32
      dots do: by default the GPU may multiply in TF32 (about 1e-3 relative error);
      ``with jax.default_matmul_precision("float32")`` gives IEEE float32 products.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: on inputs that break the layout
        contract (:mod:`pallas_kernels.errors`).
    """
    call = prepare_call(
        "tw_matmul", x, [("values", values, 1, None)], rows, cols, counts, n_out=n_out,
        default_config=tw_block_config, min_block_k=MIN_BLOCK_K, config=config,
        interpret=interpret,
    )
    return _tw_matmul(x, values, rows, cols, counts, call)


def _launch(x, values, rows, cols, counts, call: TileCall) -> Array:
    return launch_tile_kernel(tw_matmul_kernel, x, [values], rows, cols, counts, call)


_tw_matmul = tw_custom_vjp(_launch)


@functools.partial(jax.jit, static_argnames=["n_out"])
def tw_matmul_reference(x: Array, values: Array, rows: Array, cols: Array, *, n_out: int,
                        counts: Array | None = None) -> Array:
    """Plain-jnp reference of :func:`tw_matmul`: ``x @ W`` with ``W`` expanded to dense by
    :func:`pallas_kernels.layout.tiles_to_dense` (padding rows dropped when ``counts`` is
    given), float32 accumulation. Its ``jax.grad`` is the reference of the kernel's VJP."""
    _, k, t, kp, g = validate_tiles(x, rows, cols, counts, n_out)
    validate_weight("values", values, t, kp, g, 1)
    dtype = compute_dtype(x, values)
    w = tiles_to_dense(values.astype(dtype), rows, cols, k, n_out, counts)
    y = jnp.dot(x.astype(dtype), w, precision=lax.Precision.HIGHEST,
                preferred_element_type=jnp.float32)
    return y.astype(dtype)


__all__ = ["MIN_BLOCK_K", "tw_block_config", "tw_matmul", "tw_matmul_kernel",
           "tw_matmul_reference"]
