"""Tile-vector-wise (TVW) sparse matmul ``y = x @ W`` as a Pallas kernel (Triton backend).

TVW = tile-wise row pruning, then 2:4 along the kept (compact) rows of every tile. The kernel
reads each tile's 2:4-compressed values (half the compact block) and its packed 2-bit
metadata (1/8 byte per value), decodes them in registers with
:func:`tvwjax.nm_codec.unpack_plane` and feeds dense ``dot``\\ s; only half the weight values
are read from memory.

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

Ampere/Hopper have no sparse MMA reachable from the Triton backend (see the design notes), so
the win is the halved weight traffic; the Blackwell sparse tensor core needs Mosaic GPU.

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
    TVW_ROWS_PER_META,
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
    tvw_compact_blocks,
    validate_tiles,
)
from pallas_kernels.tw_matmul import tw_matmul_reference
from tvwjax.errors import DTypeError, ShapeError
from tvwjax.nm_codec import unpack_plane

Array = jax.Array

_PLANES = 4  # 2-bit indices per metadata byte
_GROUP = 4  # the M of 2:4


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
    sub = block_k // TVW_ROWS_PER_META  # metadata byte rows per step = rows per sub-product
    steps = num_k_steps(counts_ref, pl.program_id(1), kp, block_k)
    dtype = o_ref.dtype

    def body(step, acc):
        start = pl.multiple_of(step * block_k, block_k)
        v_start = pl.multiple_of(step * (block_k // 2), block_k // 2)
        meta = meta_ref[pl.ds(pl.multiple_of(step * sub, sub), sub), :]
        for h in range(2):
            planes = []
            for p in (2 * h, 2 * h + 1):
                v = values_ref[pl.ds(v_start + p, sub, stride=_PLANES), :].astype(dtype)
                planes.append((v, unpack_plane(meta, p)))
            for j in range(_GROUP):
                (v0, i0), (v1, i1) = planes
                w = jnp.where(i0 == j, v0, 0) + jnp.where(i1 == j, v1, 0)
                xt = gather_xt_rows(
                    xt_ref, rows_ref, start + _GROUP * h + j, sub, stride=TVW_ROWS_PER_META
                ).astype(dtype)
                acc = acc + plgpu.dot(xt, w, trans_a=True)
        return acc

    acc = jnp.zeros(o_ref.shape, jnp.float32)
    acc = lax.fori_loop(0, steps, body, acc)
    o_ref[...] = acc.astype(dtype)


def _check_tvw(values: Array, meta: Array, t: int, kp: int, g: int) -> None:
    if kp % TVW_ROWS_PER_META:
        raise ShapeError(
            f"TVW rows must have Kp (axis 1) a multiple of {TVW_ROWS_PER_META}, got {kp}"
        )
    want_v = (t, kp // 2, g)
    if values.ndim != 3 or tuple(values.shape) != want_v:
        raise ShapeError(
            f"values must have shape (T, Kp // 2, G) = {want_v} to match rows/cols, "
            f"got {tuple(values.shape)}"
        )
    want_m = (t, kp // TVW_ROWS_PER_META, g)
    if meta.ndim != 3 or tuple(meta.shape) != want_m:
        raise ShapeError(
            f"meta must have shape (T, Kp // 8, G) = {want_m} to match rows/cols, "
            f"got {tuple(meta.shape)}"
        )
    if jnp.dtype(meta.dtype) != jnp.uint8:
        raise DTypeError(f"meta must be uint8 (packed 2-bit indices), got {meta.dtype}")


@functools.partial(
    jax.jit,
    static_argnames=["n_out", "block_m", "block_k", "num_warps", "num_stages", "interpret"],
)
def tvw_matmul(
    x: Array,
    values: Array,
    meta: Array,
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
    """Tile-vector-wise sparse ``x @ W`` from TVW tile data.

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp // 2, G)`` 2:4-compressed compact blocks (:func:`tvwjax.nm_codec.
        nm_compress` of each tile's compact block along its rows).
      meta: ``(T, Kp // 8, G)`` uint8, :func:`tvwjax.nm_codec.pack_index` of the positions.
      rows: ``(T, Kp)`` int original K row of each compact row (``Kp`` a multiple of 8;
        padding rows point at 0).
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile; when given, each tile loops only over
        its own ``ceil(k_t / block_k)`` steps.
      block_m, block_k, num_warps, num_stages: static launch parameters; ``None`` picks the
        per-shape default of :func:`pallas_kernels.common.default_block_config`
        (``block_k`` must be a power of two >= 128 here).
      interpret: run the kernel in Pallas interpret mode (CPU, slow; for tests).

    Padding: a ``G`` that is not a power of two >= 16, or a ``Kp`` that is not a multiple
    of ``block_k`` (pass ``Kp`` a multiple of 128 to avoid it), is zero-padded on every
    call, a copy of the weight arrays; ``rows`` entries must lie in ``[0, K)`` (they
    cannot be checked under jit; out-of-range rows read garbage on a GPU).

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values``, accumulated in float32.

    Raises:
      ShapeError, DTypeError, ConfigError: on inputs that break the layout contract.
    """
    m, _, t, kp, g = validate_tiles(x, rows, cols, n_out)
    _check_tvw(values, meta, t, kp, g)
    check_counts(counts, t)
    dtype = compute_dtype(x, values)
    gp = padded_tile_width(g)
    cfg = resolve_block_config(
        m, kp, gp, tvw=True, block_m=block_m, block_k=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    kp_to = round_up(kp, cfg.block_k)
    values = pad_axis(pad_axis(values, 1, kp_to // 2), 2, gp)
    meta = pad_axis(pad_axis(meta, 1, kp_to // TVW_ROWS_PER_META), 2, gp)
    rows, cols, counts = prepare_tables(rows, cols, counts, kp_to, gp, n_out)
    kernel = functools.partial(tvw_matmul_kernel, block_k=cfg.block_k)
    return launch_tile_kernel(
        kernel, x, [values, meta], rows, cols, counts, n_out=n_out, cfg=cfg, dtype=dtype,
        interpret=interpret, name="tvw_matmul",
    )


@functools.partial(jax.jit, static_argnames=["n_out"])
def tvw_matmul_reference(
    x: Array, values: Array, meta: Array, rows: Array, cols: Array, *, n_out: int
) -> Array:
    """Plain-jnp reference of :func:`tvw_matmul`: the compact blocks decoded by
    :func:`tvwjax.nm_codec.nm_decompress`, then :func:`tw_matmul_reference`."""
    _, _, t, kp, g = validate_tiles(x, rows, cols, n_out)
    _check_tvw(values, meta, t, kp, g)
    return tw_matmul_reference(x, tvw_compact_blocks(values, meta), rows, cols, n_out=n_out)


__all__ = ["tvw_matmul", "tvw_matmul_kernel", "tvw_matmul_reference"]
