"""N:M (2:4) compressed weight along the contraction axis K (the PyTorch/CUTLASS layout)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.nm_codec import nm_compress, nm_decompress, pack_index, unpack_index
from tvwjax._validate import nm_pair
from tvwjax.errors import FormatError, PatternViolationError, ShapeError
from tvwjax.formats._base import CompressedWeight, check_dense_and_mask
from tvwjax.formats._tables import nm_static, positions_follow_contract, shape_is

Array = jax.Array


class NMSparse(CompressedWeight):
    """N:M sparse weight: ``values`` ``(K*n/m, N)`` and ``meta`` ``(ceil(K*n/m/4), N)`` uint8,
    the packed 2-bit position of each value inside its group of ``m`` rows (see
    :mod:`pallas_kernels.nm_codec`, whose :func:`~pallas_kernels.nm_codec.nm_decompress`
    is the one decoder). ``meta`` is a static table; ``values`` the only leaf.
    """

    table_fields = ("meta",)
    static_fields = ("shape", "nm")
    table_dtypes = {"meta": np.uint8}

    @classmethod
    def _check_fields(cls, tables, statics):
        """``K`` divisible by ``m``, ``meta`` ``(ceil(K*n/m/4), N)`` whose positions are
        ``< m`` and distinct within each group of ``n`` values."""
        fixed = super()._check_fields(tables, statics)
        where = cls.__name__
        k, nn = fixed["shape"]
        n, m = fixed["nm"] = nm_static(statics["nm"], where)
        if k % m:
            raise FormatError(f"{where}: shape {(k, nn)} has K={k}, expected a multiple of "
                              f"m={m}")
        vr = k * n // m
        shape_is(tables["meta"], (-(-vr // 4), nn), where, "meta",
                 f" (ceil(K*n/m/4), N) for shape {(k, nn)}, nm={(n, m)}")
        positions_follow_contract(tables["meta"], vr, n, m, where)
        return fixed

    @classmethod
    def _leaf_shapes(cls, tables, statics):
        (k, nn), (n, m) = statics["shape"], statics["nm"]
        return {"values": (k * n // m, nn)}

    @classmethod
    def from_dense(cls, w, mask, n: int = 2, m: int = 4) -> NMSparse:
        """Compress ``w * mask`` (eager). Every group of ``m`` rows may keep at most ``n``
        entries per column (fewer are stored as explicit zeros).

        Raises:
          ConfigError: ``n``, ``m`` are not integers with ``1 <= n < m <= 4``.
          ShapeError: ``K`` is not divisible by ``m``.
          PatternViolationError: a group keeps more than ``n``.
        """
        n, m = nm_pair(n, m, "nm", max_m=4)
        w, mask = check_dense_and_mask(w, mask)
        k, nn = w.shape
        if k % m:
            raise ShapeError(f"w: {n}:{m} compression needs K (axis 0) divisible by {m}, "
                             f"got K={k}")
        per_group = mask.reshape(k // m, m, nn).sum(axis=1)
        bad = np.argwhere(per_group > n)
        if bad.size:
            g, c = (int(v) for v in bad[0])
            raise PatternViolationError(
                f"mask: not {n}:{m} along K: rows {g * m}..{g * m + m - 1} keep "
                f"{int(per_group[g, c])} entries of column {c} ({len(bad)} such groups)")
        v, idx = nm_compress(jnp.asarray(np.where(mask, w, 0).astype(w.dtype)),
                             jnp.asarray(mask), n, m)
        return cls(values=v, meta=np.asarray(pack_index(idx)), shape=(k, nn),
                   nm=(n, m))

    def _decompress(self) -> Array:
        n, m = self.nm
        idx = unpack_index(jnp.asarray(self.meta), int(np.shape(self.values)[0]))
        return nm_decompress(self.values, idx, n, m)


__all__ = ["NMSparse"]
