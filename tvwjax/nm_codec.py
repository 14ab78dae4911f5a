"""N:M value/metadata codec shared by the CPU path and the Pallas kernels.

Layout (the PyTorch/CUTLASS convention, along the contraction axis 0):

* a dense ``(R, N)`` operand that is N:M sparse along axis 0 (``R % m == 0``) is stored as
  ``values`` of shape ``(R * n // m, N)``: for each group ``g`` of ``m`` consecutive rows, its
  ``n`` kept values in increasing row order at rows ``g*n .. g*n + n - 1``;
* ``index`` of the same shape as ``values`` (``uint8``): the position (``0 .. m-1``) of each
  kept value inside its group;
* for ``m <= 4`` the indices are 2 bits each and are packed **four per byte along axis 0**:
  byte ``r`` of ``meta`` (shape ``(ceil(V / 4), N)``, V = rows of values) holds the indices of
  value rows ``4r .. 4r + 3`` in bits ``[0,2), [2,4), [4,6), [6,8)``.

Only elementwise integer ops are used to decode (:func:`unpack_plane`), so the same function
works on whole arrays on the CPU and on loaded blocks inside a Pallas kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tvwjax._select import nm_select  # noqa: F401 (moved; kept until the codec moves)
from tvwjax.errors import ConfigError, ShapeError

_BITS = 2
_PER_BYTE = 8 // _BITS


def nm_compress(dense: jax.Array, mask: jax.Array, n: int = 2, m: int = 4):
    """Compress an N:M-sparse ``(R, N)`` array into ``(values, index)``.

    ``mask`` must keep exactly ``n`` entries of every group of ``m`` rows in every column
    (validate with :func:`tvwjax.check` first; this function does not re-check).

    Returns:
      ``values`` ``(R*n/m, N)`` with the dtype of ``dense`` and ``index`` ``(R*n/m, N)`` uint8.
    """
    rows, cols = dense.shape
    if rows % m:
        raise ShapeError(f"N:M compression needs axis 0 ({rows}) divisible by m={m}")
    g_mask = mask.reshape(rows // m, m, cols)
    # Kept positions first, in increasing order (stable sort of "not kept").
    pos = jnp.argsort(~g_mask, axis=1, stable=True)[:, :n, :]
    vals = jnp.take_along_axis(dense.reshape(rows // m, m, cols), pos, axis=1)
    return vals.reshape(rows // m * n, cols), pos.reshape(rows // m * n, cols).astype(jnp.uint8)


def nm_decompress(values: jax.Array, index: jax.Array, n: int = 2, m: int = 4) -> jax.Array:
    """Inverse of :func:`nm_compress`: the dense ``(R, N)`` array (zeros where pruned)."""
    vrows, cols = values.shape
    if vrows % n:
        raise ShapeError(f"values rows ({vrows}) must be divisible by n={n}")
    groups = vrows // n
    v = values.reshape(groups, n, cols)
    idx = index.reshape(groups, n, cols).astype(jnp.int32)
    onehot = idx[:, :, None, :] == jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
    dense = jnp.sum(jnp.where(onehot, v[:, :, None, :], jnp.zeros((), values.dtype)), axis=1)
    return dense.reshape(groups * m, cols)


def pack_index(index: jax.Array) -> jax.Array:
    """Pack 2-bit indices four per byte along axis 0 (rows padded with zeros to a multiple of 4)."""
    if index.ndim < 1:
        raise ShapeError("index must have at least one dimension")
    rows = index.shape[0]
    pad = (-rows) % _PER_BYTE
    idx = jnp.asarray(index, jnp.uint8)
    if pad:
        idx = jnp.concatenate([idx, jnp.zeros((pad,) + idx.shape[1:], jnp.uint8)], axis=0)
    idx = idx.reshape((idx.shape[0] // _PER_BYTE, _PER_BYTE) + idx.shape[1:])
    out = jnp.zeros((idx.shape[0],) + idx.shape[2:], jnp.uint8)
    for i in range(_PER_BYTE):
        out = out | (idx[:, i] << jnp.uint8(_BITS * i))
    return out


def unpack_plane(meta: jax.Array, i: int) -> jax.Array:
    """Indices of value rows ``4r + i`` from packed ``meta`` (works on arrays and kernel blocks)."""
    if not 0 <= i < _PER_BYTE:
        raise ConfigError(f"plane i must be in [0, {_PER_BYTE}), got {i}")
    return (meta >> jnp.uint8(_BITS * i)) & jnp.uint8(3)


def unpack_index(meta: jax.Array, rows: int) -> jax.Array:
    """Inverse of :func:`pack_index`: ``(rows, ...)`` uint8 indices."""
    planes = jnp.stack([unpack_plane(meta, i) for i in range(_PER_BYTE)], axis=1)
    full = planes.reshape((meta.shape[0] * _PER_BYTE,) + meta.shape[1:])
    return full[:rows]


__all__ = [
    "nm_compress",
    "nm_decompress",
        "pack_index",
    "unpack_index",
    "unpack_plane",
]
