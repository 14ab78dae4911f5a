"""TVW 2:4 tile data as the sparse ``A`` operand of Blackwell's ``tcgen05`` MMA.

The Blackwell kernel computes ``y_t^T = W_t^T x_t^T`` per tile: the compact weight block
``W_t`` (``Kp x G``, 2:4 along its compact rows) transposed is the sparse left operand,
``(G, Kp)`` stored as ``(G, Kp / 2)`` values plus, for every group of four, the two kept
positions. The tensor core wants those positions

* as **increasing pairs** (``p0 < p1``: the hardware's six valid 2:4 codes). The TVW codec
  (:mod:`pallas_kernels.nm_codec`) stores a group's kept positions in increasing order but
  fills a group with fewer than two kept values with other positions (``(3, 0)`` for one
  value at position 3), so each pair is sorted here and its two values swapped with it:
  value ``v_j`` still lands at position ``p_j``, so the decoded matrix is unchanged;
* as 2-bit ``uint2`` entries in the tiled order of
  :func:`jax.experimental.pallas.mosaic_gpu.format_tcgen05_sparse_metadata` (blocks of 128
  rows x 128 compact rows, which is why ``G`` and ``Kp`` are padded to multiples of 128
  here; padding groups hold zero values at positions ``(0, 1)``).

:func:`tcgen05_operands` does that conversion once per weight (XLA, elementwise and
transposes; its cost is timed by the GPU check). The TVW reference decoder
(:func:`pallas_kernels.layout.tvw_compact_blocks`) stays the one definition of the format;
the tests check the conversion against an independent decoder of the tcgen05 layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import pad_axis, round_up
from pallas_kernels.nm_codec import PLANES, unpack_plane

Array = jax.Array

#: Rows (of ``W_t^T``, i.e. tile columns) and compact rows per metadata block.
META_BLOCK = 128


def tcgen05_operands(values: Array, meta: Array, dtype: jnp.dtype) -> tuple[Array, Array]:
    """Convert TVW 2:4 tile data to the ``tcgen05`` sparse-operand layout.

    Args:
      values: ``(T, Kp / 2, G)`` 2:4-compressed compact blocks.
      meta: ``(T, Kp / 8, G)`` uint8 packed positions (:func:`~pallas_kernels.nm_codec.pack_index`).
      dtype: the MMA operand dtype (bfloat16 or float16), the dtype of the values returned.

    Returns:
      ``(a_values, a_meta)``: ``a_values`` ``(T, G_pad, Kp_pad / 2)`` in ``dtype`` (row ``c``
      = tile column ``c``, its kept values in increasing K order) and ``a_meta``
      ``(T, G_pad / 128, Kp_pad / 128, 128, 64)`` ``uint2`` positions, formatted by
      ``plgpu.format_tcgen05_sparse_metadata``; ``G_pad``, ``Kp_pad`` are ``G``, ``Kp``
      rounded up to multiples of 128.
    """
    t, vr, g = values.shape
    g_pad = round_up(g, META_BLOCK)
    v_pad = round_up(vr, META_BLOCK // 2)
    idx = jnp.stack([unpack_plane(meta, i) for i in range(PLANES)], axis=2)
    idx = idx.reshape(t, -1, g)[:, :vr].astype(jnp.int32)
    # Padding groups: zero values at positions (0, 1).
    pad_pos = jnp.tile(jnp.arange(2, dtype=jnp.int32), v_pad // 2)[:, None]     # (v_pad, 1)
    idx = pad_axis(idx, 1, v_pad, -1)
    idx = jnp.where(idx < 0, pad_pos[None], idx)
    idx = jnp.where(jnp.arange(g_pad)[None, None, :] < g, pad_axis(idx, 2, g_pad, 0),
                    pad_pos[None])
    vals = pad_axis(pad_axis(values.astype(dtype), 1, v_pad), 2, g_pad)
    p = idx.reshape(t, v_pad // 2, 2, g_pad)
    v = vals.reshape(t, v_pad // 2, 2, g_pad)
    swap = p[:, :, 0] > p[:, :, 1]
    lo = jnp.where(swap, p[:, :, 1], p[:, :, 0])
    hi = jnp.where(swap, p[:, :, 0], p[:, :, 1])
    v0 = jnp.where(swap, v[:, :, 1], v[:, :, 0])
    v1 = jnp.where(swap, v[:, :, 0], v[:, :, 1])
    a_values = jnp.stack([v0, v1], axis=2).reshape(t, v_pad, g_pad).transpose(0, 2, 1)
    pairs = jnp.stack([lo, hi], axis=-1).transpose(0, 2, 1, 3)            # (T, G_pad, Kp/4, 2)
    fmt = jax.vmap(lambda a: plgpu.format_tcgen05_sparse_metadata(a, dtype))
    return a_values, fmt(pairs.astype(jnp.uint2))


__all__ = ["META_BLOCK", "tcgen05_operands"]
