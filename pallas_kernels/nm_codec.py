"""N:M value/metadata codec: the layout shared by the CPU path and the Pallas kernels.

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
works on whole arrays on the CPU and on loaded blocks inside a Pallas kernel. The encoders
(:func:`nm_compress`, :func:`pack_index`) compute with NumPy when given NumPy arrays (a
format built once on the host: nothing to compile, whatever the shape) and with
``jax.numpy`` otherwise; both give the same bits.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.errors import KernelConfigError, KernelShapeError

Array = jax.Array

#: Bits per packed position index.
INDEX_BITS = 2
#: Packed position indices per metadata byte (the "planes" of a byte).
PLANES = 8 // INDEX_BITS


def _xp(*arrays) -> ModuleType:
    """NumPy when every argument is a NumPy array, else ``jax.numpy``."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def nm_compress(dense: Array, mask: Array, n: int = 2, m: int = 4) -> tuple[Array, Array]:
    """Compress an N:M-sparse ``(R, N)`` array into ``(values, index)``.

    ``mask`` must keep at most ``n`` entries of every group of ``m`` rows in every column
    (fewer are stored as explicit zeros; this function does not re-check).

    Args:
      dense: ``(R, N)`` array, ``R`` divisible by ``m``.
      mask: ``(R, N)`` boolean keep-mask.
      n, m: the N:M pattern.

    Returns:
      ``values`` ``(R*n/m, N)`` with the dtype of ``dense`` and ``index`` ``(R*n/m, N)`` uint8
      (NumPy arrays when ``dense`` and ``mask`` are).

    Raises:
      KernelShapeError: ``R`` is not divisible by ``m``.
    """
    xp = _xp(dense, mask)
    rows, cols = dense.shape
    if rows % m:
        raise KernelShapeError(f"dense: N:M compression needs axis 0 ({rows}) divisible by "
                               f"m={m}")
    g_mask = mask.reshape(rows // m, m, cols)
    # Kept positions first, in increasing order (stable sort of "not kept").
    pos = xp.argsort(~g_mask, axis=1, stable=True)[:, :n, :]
    vals = xp.take_along_axis(dense.reshape(rows // m, m, cols), pos, axis=1)
    return vals.reshape(rows // m * n, cols), pos.reshape(rows // m * n, cols).astype(xp.uint8)


def nm_decompress(values: Array, index: Array, n: int = 2, m: int = 4) -> Array:
    """Inverse of :func:`nm_compress`: the dense ``(R, N)`` array (zeros where pruned).

    Raises:
      KernelShapeError: the rows of ``values`` are not divisible by ``n``.
    """
    vrows, cols = values.shape
    if vrows % n:
        raise KernelShapeError(f"values: rows ({vrows}) must be divisible by n={n}")
    groups = vrows // n
    v = values.reshape(groups, n, cols)
    idx = index.reshape(groups, n, cols).astype(jnp.int32)
    onehot = idx[:, :, None, :] == jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
    dense = jnp.sum(jnp.where(onehot, v[:, :, None, :], jnp.zeros((), values.dtype)), axis=1)
    return dense.reshape(groups * m, cols)


def pack_index(index: Array) -> Array:
    """Pack 2-bit indices four per byte along axis 0 (rows padded with zeros to a multiple
    of 4); returns ``(ceil(R / 4), ...)`` uint8 (a NumPy array for a NumPy ``index``).

    Raises:
      KernelShapeError: ``index`` is 0-d.
    """
    if index.ndim < 1:
        raise KernelShapeError("index must have at least one dimension, got a 0-d array")
    xp = _xp(index)
    rows = index.shape[0]
    pad = (-rows) % PLANES
    idx = xp.asarray(index, xp.uint8)
    if pad:
        idx = xp.concatenate([idx, xp.zeros((pad,) + idx.shape[1:], xp.uint8)], axis=0)
    idx = idx.reshape((idx.shape[0] // PLANES, PLANES) + idx.shape[1:])
    out = xp.zeros((idx.shape[0],) + idx.shape[2:], xp.uint8)
    for i in range(PLANES):
        out = out | (idx[:, i] << xp.uint8(INDEX_BITS * i))
    return out


def unpack_plane(meta: Array, i: int) -> Array:
    """Indices of value rows ``4r + i`` from packed ``meta`` (works on arrays and on blocks
    loaded inside a kernel).

    Raises:
      KernelConfigError: ``i`` is not a plane ``0 .. 3``.
    """
    if not 0 <= i < PLANES:
        raise KernelConfigError(f"i: the plane must be in [0, {PLANES}), got {i}")
    return (meta >> jnp.uint8(INDEX_BITS * i)) & jnp.uint8((1 << INDEX_BITS) - 1)


def unpack_index(meta: Array, rows: int) -> Array:
    """Inverse of :func:`pack_index`: the first ``rows`` indices, ``(rows, ...)`` uint8."""
    planes = jnp.stack([unpack_plane(meta, i) for i in range(PLANES)], axis=1)
    full = planes.reshape((meta.shape[0] * PLANES,) + meta.shape[1:])
    return full[:rows]


__all__ = [
    "INDEX_BITS",
    "PLANES",
    "nm_compress",
    "nm_decompress",
    "pack_index",
    "unpack_index",
    "unpack_plane",
]
