"""``compress`` / ``decompress``: a dense weight and its mask to a compressed format and back."""

from __future__ import annotations

from typing import Any

import jax

from tvwjax.errors import ConfigError
from tvwjax.formats._base import CompressedWeight
from tvwjax.formats.nm import NMSparse
from tvwjax.formats.tiles import BlockSparse, TileVectorWise, TileWise
from tvwjax.patterns import Pattern

Array = jax.Array

#: The format classes by name, as :attr:`tvwjax.Pattern.format` refers to them.
FORMATS: dict[str, type[CompressedWeight]] = {
    cls.__name__: cls for cls in (TileWise, TileVectorWise, NMSparse, BlockSparse)}


def compress(w: Any, mask: Any, pattern: Pattern) -> CompressedWeight:
    """Compress a dense ``(K, N)`` weight ``w`` with its keep-``mask`` into ``pattern``'s format.

    Eager, not jit-able: the output's shapes (tiles, kept rows per tile) depend on the mask's
    values. Call it once after training; the result is a pytree usable under ``jax.jit``.
    Pruned weights are dropped (the result decompresses to ``where(mask, w, 0)``).
    The format is ``pattern.format`` (``None``: the pattern has none):

    ============================  ============================================
    pattern                       format
    ============================  ============================================
    ``TW`` (1-D or 2-D)           :class:`TileWise` (tile = ``pattern.tile``)
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

    >>> import jax, jax.numpy as jnp, tvwjax
    >>> w = jax.random.normal(jax.random.key(0), (64, 48))
    >>> pattern = tvwjax.TW(tile=16, column_share=0.0)
    >>> mask = pattern.mask(jnp.abs(w), 0.5)
    >>> cw = tvwjax.compress(w, mask, pattern)
    >>> type(cw).__name__, bool((tvwjax.decompress(cw) == jnp.where(mask, w, 0)).all())
    ('TileWise', True)
    """
    if not isinstance(pattern, Pattern):
        raise ConfigError(f"pattern must be a tvwjax Pattern (TW(), TVW(), NM(), BW()), got "
                          f"{pattern!r}")
    if pattern.format is None:
        raise ConfigError(f"pattern: {pattern.name} has no compressed format here (only TW, "
                          "TVW, NM and BW); use jax.experimental.sparse.BCSR.fromdense(w * mask)"
                          " (TEW: compress its TW part with TW(...) and keep the residual as "
                          "jax.experimental.sparse.BCOO)")
    return FORMATS[pattern.format].from_dense(w, mask, **pattern.format_args())


def decompress(cw: CompressedWeight) -> Array:
    """The dense ``(K, N)`` weight of a compressed one (zeros where pruned; jit-able)."""
    if not isinstance(cw, CompressedWeight):
        raise ConfigError(f"cw must be a compressed weight (TileWise, TileVectorWise, "
                          f"NMSparse, BlockSparse), got {type(cw).__name__}")
    return cw._decompress()


__all__ = ["FORMATS", "compress", "decompress"]
