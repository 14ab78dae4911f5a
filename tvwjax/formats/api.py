"""``compress`` / ``decompress``: a dense weight and its mask to a compressed format and back."""

from __future__ import annotations

from typing import Any

import jax

from tvwjax.errors import ConfigError
from tvwjax.formats._base import CompressedWeight
from tvwjax.formats.nm import NMSparse
from tvwjax.formats.tiles import BlockSparse, TileVectorWise, TileWise
from tvwjax.patterns import BW, NM, TEW, TVW, TW, Pattern

Array = jax.Array


def has_format(pattern: Pattern) -> bool:
    """Whether :func:`compress` has a format for ``pattern`` (TW, TW1D, TVW, NM, BW).

    EW, VW and TEW have none (EW / VW: use ``jax.experimental.sparse.BCSR``; TEW: compress
    its TW part and keep the residual sparse).
    """
    return isinstance(pattern, TW | NM | BW) and not isinstance(pattern, TEW)


def compress(w: Any, mask: Any, pattern: Pattern) -> CompressedWeight:
    """Compress a dense ``(K, N)`` weight ``w`` with its keep-``mask`` into ``pattern``'s format.

    Eager, not jit-able: the output's shapes (tiles, kept rows per tile) depend on the mask's
    values. Call it once after training; the result is a pytree usable under ``jax.jit``.
    Pruned weights are dropped (the result decompresses to ``where(mask, w, 0)``).

    ============================  ============================================
    pattern                       format
    ============================  ============================================
    ``TW``, ``TW1D``              :class:`TileWise` (tile = ``pattern.tile``)
    ``TVW``                       :class:`TileVectorWise`
    ``NM``                        :class:`NMSparse`
    ``BW``                        :class:`BlockSparse`
    ============================  ============================================

    Args:
      w: ``(K, N)`` floating weight (view conv kernels with :func:`tvwjax.as_matrix`).
      mask: ``(K, N)`` boolean keep-mask following ``pattern`` (e.g. from ``pattern.mask``).
      pattern: the :class:`~tvwjax.patterns.Pattern` the mask follows.

    Returns:
      The compressed weight.

    Raises:
      ConfigError: ``pattern`` has no compressed format (EW, VW, TEW).
      ShapeError, DTypeError: bad ``w`` / ``mask``.
      PatternViolationError: ``mask`` does not follow ``pattern``.
    """
    if isinstance(pattern, TEW):
        raise ConfigError("pattern: TEW needs a sparse residual; compress its TW part with "
                          "TW(...) and keep the residual as jax.experimental.sparse.BCOO")
    if isinstance(pattern, TVW):
        return TileVectorWise.from_dense(w, mask, tile=pattern.tile, n=pattern.n, m=pattern.m)
    if isinstance(pattern, TW):
        return TileWise.from_dense(w, mask, tile=pattern.tile)
    if isinstance(pattern, NM):
        return NMSparse.from_dense(w, mask, n=pattern.n, m=pattern.m)
    if isinstance(pattern, BW):
        return BlockSparse.from_dense(w, mask, block=(pattern.rows, pattern.cols))
    if isinstance(pattern, Pattern):  # not has_format(pattern)
        raise ConfigError(f"pattern: {pattern.name} has no compressed format here (only TW, "
                          "TVW, NM and BW); use jax.experimental.sparse.BCSR.fromdense(w * mask)")
    raise ConfigError(f"pattern must be a tvwjax Pattern (TW(), TVW(), NM(), BW()), got "
                      f"{pattern!r}")


def decompress(cw: CompressedWeight) -> Array:
    """The dense ``(K, N)`` weight of a compressed one (zeros where pruned; jit-able)."""
    if not isinstance(cw, CompressedWeight):
        raise ConfigError(f"cw must be a compressed weight (TileWise, TileVectorWise, "
                          f"NMSparse, BlockSparse), got {type(cw).__name__}")
    return cw.decompress()


__all__ = ["compress", "decompress"]
