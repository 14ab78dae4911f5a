"""Tile-vector-wise (TVW) sparse matmul ``y = x @ W`` as a Pallas kernel (Triton backend).

TVW = tile-wise row pruning, then 2:4 along the kept (compact) rows of every tile. The kernel
reads each tile's 2:4-compressed values (half the compact block) and its packed 2-bit
metadata (1/8 byte per value), decodes them in registers with
:func:`pallas_kernels.nm_codec.unpack_plane` and feeds dense ``dot``\\ s; only half the weight
values are read from memory.

Decoding without reshapes (Triton lowers them poorly). In one step of ``block_k`` compact rows
the value rows are ``block_k / 2`` and the metadata byte rows ``block_k / 8``; byte row ``r``
holds the indices of value rows ``4r + p`` (plane ``p = 0..3``). Value row ``4r + p`` is the
``(p % 2)``-th kept value of group ``2r + p // 2``, so it lands on compact row
``8r + 4 * (p // 2) + idx``. For ``h = 0, 1`` and ``j = 0..3`` the dense compact rows
``8r + 4h + j`` (a stride-8 slice) are therefore

    D[h, j] = where(idx[2h] == j, v[2h], 0) + where(idx[2h + 1] == j, v[2h + 1], 0)

(the two kept positions of a group differ, so at most one term is non-zero), with ``v[p]`` the
stride-4 slice of value rows and ``idx[p] = unpack_plane(meta, p)``. Each ``D[h, j]`` is
multiplied with the matching stride-8 gather of ``x^T`` rows: 8 ``dot``\\ s of contraction
``block_k / 8`` per step, the same MACs as one dense ``dot`` over ``block_k`` rows.

:func:`tvw_matmul` is differentiable with respect to ``x`` and the compressed ``values``: the
backward decodes the compact blocks (:func:`pallas_kernels.layout.tvw_compact_blocks`), runs
the TW backward :func:`pallas_kernels.tile_vjp.tile_matmul_vjp` on them and maps the
compact-block gradient back to the 2:4 values through the VJP of the linear decode.

Ampere/Hopper have no sparse MMA reachable from the Triton backend (see the design notes), so
the win is the halved weight traffic; the Blackwell sparse tensor core is used by the Mosaic
GPU kernel :func:`pallas_kernels.tvw_matmul_blackwell`.

Reference: Guo et al., "Accelerating Sparse DNNs Based on Tiled GEMM", IEEE TC 2024.
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
    default_block_config,
    gather_xt_rows,
    launch_tile_kernel,
    num_k_steps,
    prepare_call,
    validate_tiles,
    validate_weight,
)
from pallas_kernels.layout import tvw_compact_blocks
from pallas_kernels.nm_codec import PLANES, unpack_plane
from pallas_kernels.tile_vjp import tvw_custom_vjp
from pallas_kernels.tw_matmul import tw_matmul_reference

Array = jax.Array

_GROUP = 4  # the M of 2:4
#: Compact rows covered by one byte row of TVW metadata (4 value rows = 2 groups of 4 rows).
ROWS_PER_META = PLANES * _GROUP // 2
#: Smallest ``block_k`` of the TVW kernel: each of its 8 sub-products contracts over
#: ``block_k / 8`` rows, which must be at least 16.
MIN_BLOCK_K = MIN_DOT * ROWS_PER_META


def tvw_block_config(m: int, kp: int, g: int) -> BlockConfig:
    """Per-shape launch defaults of :func:`tvw_matmul` for ``x`` with ``m`` rows, ``kp``
    compact rows per tile and tiles ``g`` wide (after padding to a power of two).

    ``block_k``: 128 (each step runs 8 sub-products with a contraction of ``block_k / 8``,
    which must be >= 16); 256 when ``kp`` is a multiple of 256 and ``m <= 64`` (decode-like
    calls are bound by the weight bytes: fewer, longer steps). The other fields:
    :func:`pallas_kernels.common.default_block_config`.
    """
    block_k = 2 * MIN_BLOCK_K if (kp % (2 * MIN_BLOCK_K) == 0 and m <= 64) else MIN_BLOCK_K
    return default_block_config(m, g, block_k)


def tvw_matmul_kernel(
    xt_ref, values_ref, meta_ref, rows_ref, counts_ref, o_ref, *, block_k: int
) -> None:
    """Kernel body: one ``(block_m, G)`` output block of one TVW tile.

    Args:
      xt_ref: ``(K, block_m)`` block of ``x^T``.
      values_ref: ``(Kp // 2, G)`` 2:4-compressed values of the current tile.
      meta_ref: ``(Kp // 8, G)`` uint8 packed 2-bit positions of the current tile.
      rows_ref: ``(Kp,)`` original K row of each compact row.
      counts_ref: ``(T,)`` kept rows per tile, or ``None`` (loop over all of ``Kp``).
      o_ref: ``(block_m, G)`` output block.
      block_k: compact rows per loop step (a power of two >= 128).
    """
    kp = rows_ref.shape[0]
    sub = block_k // ROWS_PER_META  # metadata byte rows per step = rows per sub-product
    steps = num_k_steps(counts_ref, pl.program_id(1), kp, block_k)
    dtype = o_ref.dtype

    def body(step, acc):
        start = pl.multiple_of(step * block_k, block_k)
        v_start = pl.multiple_of(step * (block_k // 2), block_k // 2)
        meta = meta_ref[pl.ds(pl.multiple_of(step * sub, sub), sub), :]
        for h in range(2):
            planes = []
            for p in (2 * h, 2 * h + 1):
                v = values_ref[pl.ds(v_start + p, sub, stride=PLANES), :].astype(dtype)
                planes.append((v, unpack_plane(meta, p)))
            for j in range(_GROUP):
                (v0, i0), (v1, i1) = planes
                w = jnp.where(i0 == j, v0, 0) + jnp.where(i1 == j, v1, 0)
                xt = gather_xt_rows(
                    xt_ref, rows_ref, start + _GROUP * h + j, sub, stride=ROWS_PER_META
                ).astype(dtype)
                acc = acc + plgpu.dot(xt, w, trans_a=True)
        return acc

    acc = jnp.zeros(o_ref.shape, jnp.float32)
    acc = lax.fori_loop(0, steps, body, acc)
    o_ref[...] = acc.astype(dtype)


def _weights(values: Array, meta: Array) -> list[tuple[str, Array, int, jnp.dtype | None]]:
    return [("values", values, 2, None), ("meta", meta, ROWS_PER_META, jnp.dtype(jnp.uint8))]


@functools.partial(jax.jit, static_argnames=["n_out", "config", "interpret"])
def tvw_matmul(x: Array, values: Array, meta: Array, rows: Array, cols: Array, *, n_out: int,
               counts: Array | None = None, config: BlockConfig | None = None,
               interpret: bool = False) -> Array:
    """Tile-vector-wise sparse ``x @ W`` from TVW (2:4) tile data.

    Differentiable with respect to ``x`` and the compressed ``values`` (``meta`` and the
    integer tables get no cotangent).

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp // 2, G)`` 2:4-compressed compact blocks
        (:func:`pallas_kernels.nm_codec.nm_compress` of each tile's compact block along its
        rows).
      meta: ``(T, Kp // 8, G)`` uint8, :func:`pallas_kernels.nm_codec.pack_index` of the
        positions.
      rows: ``(T, Kp)`` int original K row of each compact row (``Kp`` a multiple of 8;
        padding rows point at 0).
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile; when given, each tile loops only over
        its own ``ceil(k_t / block_k)`` steps, and padding rows get a zero gradient.
      config: static launch parameters; its ``None`` fields (all, by default) take the
        per-shape default of :func:`tvw_block_config` (``block_k`` must be a power of two
        >= 128 here).
      interpret: run the kernel in Pallas interpret mode (CPU, slow; for tests).

    The arrays are padded to the block sizes as
    :func:`pallas_kernels.common.launch_tile_kernel` says (``Kp`` a multiple of 128 avoids a
    copy of the weights).

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values``, accumulated in float32.
      float32 operands follow ``jax.default_matmul_precision``, as XLA's own float32
      dots do: by default the GPU may multiply in TF32 (about 1e-3 relative error);
      ``with jax.default_matmul_precision("float32")`` gives IEEE float32 products.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: on inputs that break the layout
        contract (:mod:`pallas_kernels.errors`).
    """
    call = prepare_call(
        "tvw_matmul", x, _weights(values, meta), rows, cols, counts, n_out=n_out,
        default_config=tvw_block_config, min_block_k=MIN_BLOCK_K, config=config,
        interpret=interpret,
    )
    return _tvw_matmul(x, values, meta, rows, cols, counts, call)


def _launch(x, values, meta, rows, cols, counts, call: TileCall) -> Array:
    return launch_tile_kernel(tvw_matmul_kernel, x, [values, meta], rows, cols, counts, call)


_tvw_matmul = tvw_custom_vjp(_launch)


@functools.partial(jax.jit, static_argnames=["n_out"])
def tvw_matmul_reference(x: Array, values: Array, meta: Array, rows: Array, cols: Array, *,
                         n_out: int, counts: Array | None = None) -> Array:
    """Plain-jnp reference of :func:`tvw_matmul`: the compact blocks decoded by
    :func:`pallas_kernels.layout.tvw_compact_blocks`, then :func:`tw_matmul_reference`.
    Its ``jax.grad`` is the reference of the kernel's VJP."""
    _, _, t, kp, g = validate_tiles(x, rows, cols, counts, n_out)
    for name, arr, div, dtype in _weights(values, meta):
        validate_weight(name, arr, t, kp, g, div, dtype)
    return tw_matmul_reference(x, tvw_compact_blocks(values, meta), rows, cols, n_out=n_out,
                               counts=counts)


__all__ = ["MIN_BLOCK_K", "ROWS_PER_META", "tvw_block_config", "tvw_matmul",
           "tvw_matmul_kernel", "tvw_matmul_reference"]
